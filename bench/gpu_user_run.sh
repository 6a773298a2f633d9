#!/usr/bin/env bash
# The user's command on a GPU machine: `python src/run.py trainer=gpu dataset=mnist` on the 5,000 real MNIST digits
# (4,000 train, 1,000 test, written as IDX files), twice into two folders with the same seed (are the metrics
# equal?), then the first command again (it must skip: finished). Run on the device as `bash bench/gpu_user_run.sh`
# with carry [".whl"], after `make gpu-user-kit` here: .whl/ (git-ignored) brings Hydra, which the GPU image lacks,
# matplotlib's wheels (installed there only where the image lacks it) and the digits. Its figures are in docs/gpu.md.
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
R=${OUT:-/tmp/out}; mkdir -p "$R" /tmp/site
cp -r .whl/site/* /tmp/site/
python3 -c "import matplotlib" 2>/dev/null || { echo "installing matplotlib"; python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/mpl/*.whl; }
export PYTHONPATH=/tmp/site
python3 -c "import hydra, omegaconf, matplotlib, lightning, torch; print('imports ok', torch.__version__, hydra.__version__)"
ARGS=(trainer=gpu dataset=mnist data_dir=.whl/data trainer.max_epochs=8 logger=csv trainer.progress_bar=false)
s=$(date +%s); timeout 80 python3 src/run.py "${ARGS[@]}" output_root=/tmp/runs/a > "$R/run_a.log" 2>&1; echo "run a rc $? $(( $(date +%s) - s )) s"
s=$(date +%s); timeout 70 python3 src/run.py "${ARGS[@]}" output_root=/tmp/runs/b > "$R/run_b.log" 2>&1; echo "run b rc $? $(( $(date +%s) - s )) s"
s=$(date +%s); timeout 30 python3 src/run.py "${ARGS[@]}" output_root=/tmp/runs/a > "$R/run_a_again.log" 2>&1; echo "run a again rc $? $(( $(date +%s) - s )) s"
python3 - <<'PY'
import json, pathlib
for m in sorted(pathlib.Path("/tmp/runs").rglob("metrics.json")):
    d = json.loads(m.read_text()); print(m.parent, {k: d.get(k) for k in ("test_acc", "best_test_acc", "epochs", "train_seconds")})
hs = [json.loads(p.read_text()) for p in sorted(pathlib.Path("/tmp/runs").rglob("history.json"))]
keys = ("train_loss", "train_acc", "test_loss", "test_acc", "test_synops")
for h in hs:
    print([round(e["test_acc"], 4) for e in h], [round(e["train_seconds"], 2) for e in h])
print("same seed, same metrics:", len(hs) == 2 and [[e[k] for k in keys] for e in hs[0]] == [[e[k] for k in keys] for e in hs[1]])
PY
tail -n 4 "$R"/run_a_again.log
tar czf "$R/runs.tgz" -C /tmp runs
