#!/usr/bin/env bash
# GPU check, one script (run on a machine with an NVIDIA GPU, torch 2.11+ CUDA, triton, no network):
#   runs the Triton kernels' tests on CUDA tensors and the CUDA dispatch tests, times one MNIST-sized epoch;
#   results under $OUT (default bench/results). Budget: under 8 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HM2BP_OPS=auto
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu_info.csv"
python -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, triton.__version__)"
python -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_ops.py 2>&1 | tee "$OUT/cuda_tests.log"
python bench/gpu_epoch.py --device cuda --out "$OUT/gpu_epoch.json" 2>&1 | tee "$OUT/gpu_epoch.log"
