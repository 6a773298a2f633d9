"""The README's measured figures, from fresh runs: ``python bench/readme_figures.py [--suite | --kernels]``.

Runs the default job exactly as ``make run`` does (``python src/run.py``, into a temporary output folder so no
earlier run is skipped), times it from the command to the figures, copies its two figures to ``docs/figures/`` and
rewrites the README's ``default-job`` block with its numbers and settings. ``--suite`` also times a from-scratch
build of the CPU kernels and the default test suite (``python -m pytest``) and rewrites the ``timings`` block;
``--kernels`` re-times only the kernel build (after a kernel change) and keeps the other timings of the last results.
Results: ``bench/results/readme_figures.json``. Run it alone on the machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, machine, update_section
from hm2bp.io import atomic_write_json

README = ROOT / "README.md"


def default_job() -> dict:
    """Run ``python src/run.py`` in a fresh output folder; its metrics, settings and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), f"output_root={tmp}",
                        "trainer.progress_bar=false"], cwd=ROOT, env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        [metrics_file] = Path(tmp).rglob("metrics.json")
        metrics = json.loads(metrics_file.read_text())
        figures = ROOT / "docs" / "figures"
        shutil.copy(metrics_file.parent / "learning_curves.png", figures / "digits_learning_curves.png")
        shutil.copy(metrics_file.parent / "raster.png", figures / "digits_raster.png")
    return {"seconds": seconds, "metrics": metrics}


def kernel_build() -> float:
    """Seconds to compile the CPU kernels from scratch (what the first run pays), in an empty extension cache."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HM2BP_EXTENSIONS_DIR": tmp}
        start = time.perf_counter()
        probe = "from hm2bp import backend; assert backend.load_extension('cpu') is not None"
        subprocess.run([sys.executable, "-c", probe],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def suite() -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=25"],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the test suite failed, no timing written:\n{proc.stdout[-4000:]}")
    seconds = time.perf_counter() - start
    print(proc.stdout[proc.stdout.find("slowest"):])  # which tests to mark slow when the suite outgrows CI's budget
    return seconds


def describe(job: dict) -> str:
    m, config = job["metrics"], job["metrics"]["config"]
    model, tr, ds = config["model"], config["trainer"], config["dataset"]
    trains = "training trains drawn once (the authors' fixed trains)" if ds["fixed_trains"] else \
        "training trains redrawn every epoch"
    return (f"The default job, seed {m['seed']} ({'-'.join(map(str, model['sizes']))}, thresholds "
            f"{'/'.join(f'{t:g}' for t in model['thresholds'])}, Adam lr {tr['lr']:g}, batch {tr['batch_size']}, "
            f"{trains}, {m['epochs']} epochs) reached {100 * m['test_acc']:.2f} % final test accuracy, "
            f"{100 * m['best_test_acc']:.2f} % best and {100 * m['last10_test_acc']:.2f} % mean over the last 10 "
            f"epochs, in {job['seconds']:.0f} s from the command to the figures on {machine()['cores']} cores "
            f"(`bench/readme_figures.py`):")


def timings(result: dict) -> str:
    return (f"Measured on {result['machine']['cores']} cores (`bench/readme_figures.py --suite`): `make run` "
            f"{result['default_job_seconds']:.0f} s once installed, plus {result['kernel_build_seconds']:.0f} s the "
            f"first time to compile the CPU kernels; `make test` {result['suite_seconds'] / 60:.0f} minutes.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--suite", action="store_true", help="also time the kernel build and the default test suite")
    what.add_argument("--kernels", action="store_true", help="only re-time the kernel build")
    args = ap.parse_args()
    if args.kernels:
        result = {**json.loads((RESULTS / "readme_figures.json").read_text()), "kernel_build_seconds": kernel_build()}
    else:
        job = default_job()
        result = {"machine": machine(), "default_job_seconds": job["seconds"],
                  "default_job": {k: job["metrics"][k] for k in ("seed", "test_acc", "best_test_acc",
                                                                   "last10_test_acc", "epochs", "fingerprint")}}
        update_section("default-job", describe(job), README)
        if args.suite:
            result.update(kernel_build_seconds=kernel_build(), suite_seconds=suite())
    if "suite_seconds" in result:
        update_section("timings", timings(result), README)
    atomic_write_json(RESULTS / "readme_figures.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
