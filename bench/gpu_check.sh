#!/usr/bin/env bash
# GPU check, one script, for a machine with an NVIDIA GPU, a CUDA build of torch 2.11+, triton and Lightning, and no
# network. Budget: under 8 minutes on an H200. Results under $OUT (default bench/results):
#   cuda_tests.log      the Triton kernels' tests on CUDA tensors (bit-exact against the pure-PyTorch definitions),
#                       the CUDA dispatch tests
#   gpu_epoch.json      one 60k-sample 784-800-10 T 400 epoch at batch 128, engine only (random input trains)
#   gpu_app_epoch.json  through SpikeData + HM2BPModule + Lightning with device-side encoding: a whole MNIST-MLP
#                       epoch, fractions of paper-CNN, N-MNIST and EMNIST epochs, and the GPU-hours of the 5-seed paper
#                       table; also written as the gpu-app section of BENCHMARKS.md. Copied to bench/results/, it
#                       feeds the README's table: python -m hm2bp.report … --readme README.md --gpu-timing <it>
# hm2bp's pure-Python dependencies the GPU image lacks are installed from bench/wheels/ when present (fill it here
# with `pip download --no-deps -d bench/wheels pytest pluggy iniconfig` and carry it: pytest runs the CUDA tests).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HM2BP_OPS=auto
unset TRITON_INTERPRET
if [ -d bench/wheels ]; then python -m pip install --quiet --no-index --find-links bench/wheels bench/wheels/*; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu_info.csv"
python -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, triton.__version__)"
python -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_ops.py 2>&1 | tee "$OUT/cuda_tests.log"
python bench/gpu_epoch.py --device cuda --out "$OUT/gpu_epoch.json" 2>&1 | tee "$OUT/gpu_epoch.log"
python bench/gpu_app_epoch.py --device cuda --benchmarks --out "$OUT/gpu_app_epoch.json" 2>&1 | tee "$OUT/gpu_app.log"
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
