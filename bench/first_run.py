"""`make run` on a fresh checkout, phase by phase: ``python bench/first_run.py [--installers uv pip]``.

For each installer, a fresh checkout of the working tree (a clone of HEAD with the working tree's changes on top)
runs ``make run INSTALLER=<installer> ARGS=trainer.max_epochs=1`` with no venv, an empty kernel cache
(``HM2BP_EXTENSIONS_DIR``) and empty pip and uv caches, and every line it prints is timed as it arrives. The phases
are the lines the Makefile and hm2bp print: ``installing …`` (the venv, torch, the project and its runtime
dependencies), ``hm2bp: compiling the CPU kernels once …``, ``training: …``, then hm2bp's ``kernels run on the
compiled CPU path`` (the first training step's first kernel) and the end of the one epoch.

Writes bench/results/first_run.json and the ``first-run`` section of BENCHMARKS.md. The numbers are wall-clock
seconds on whatever else the machine runs at the time, and they depend on the network: run it alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, machine, update_section
from hm2bp.io import atomic_write_json

# The lines that start each phase (substrings, in the order they appear).
MARKS = {"installing": "installing hm2bp", "compiling": "hm2bp: compiling the CPU kernels once",
         "training": "training: python src/run.py", "first_step": "kernels run on the compiled CPU path",
         "epoch_done": "final test acc"}


def fresh_checkout(where: Path) -> Path:
    """A clone of HEAD with the working tree's uncommitted changes (tracked and new files, deletions) on top."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(where)], check=True)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, dst = ROOT / rel, where / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.exists():  # deleted in the working tree
            dst.unlink()
    return where


def _clean_env(tmp: Path) -> dict[str, str]:
    """This environment as a fresh shell would have it: no active venv, empty caches."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "HM2BP_EXTENSIONS_DIR")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep) if d != venv_bin)
    env.update(HM2BP_EXTENSIONS_DIR=str(tmp / "extensions"), PIP_CACHE_DIR=str(tmp / "pip-cache"),
               UV_CACHE_DIR=str(tmp / "uv-cache"), PYTHONUNBUFFERED="1")
    return env


def time_first_run(installer: str, tmp: Path) -> dict:
    """Run ``make run`` in a fresh checkout under ``tmp``; the seconds at which each phase's line appeared."""
    tree = fresh_checkout(tmp / "checkout")
    cmd = ["make", "run", f"INSTALLER={installer}", "ARGS=trainer.max_epochs=1"]
    seen: dict[str, float] = {}
    lines: list[str] = []
    start = time.perf_counter()
    with subprocess.Popen(cmd, cwd=tree, env=_clean_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - start
            lines.append(f"{now:7.1f}  {line.rstrip()}")
            print(lines[-1], flush=True)
            for phase, mark in MARKS.items():
                if phase not in seen and mark in line:
                    seen[phase] = now
    total = time.perf_counter() - start
    if proc.returncode != 0 or "first_step" not in seen:
        raise SystemExit(f"make run ({installer}) failed or never trained (exit {proc.returncode}):\n"
                         + "\n".join(lines[-40:]))
    training = seen["training"]
    compiled = "compiling" in seen
    return {"installer": installer, "phases_s": seen, "total_s": total,
            "install_s": (seen["compiling"] if compiled else training) - seen.get("installing", 0.0),
            "kernel_build_s": training - seen["compiling"] if compiled else 0.0,
            "first_step_s": seen["first_step"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--installers", nargs="+", default=["uv", "pip"], choices=["uv", "pip"])
    ap.add_argument("--repeat", type=int, default=1, help="runs per installer (default: %(default)s)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    runs = []
    for installer in [i for i in args.installers for _ in range(args.repeat)]:
        with tempfile.TemporaryDirectory(prefix=f"firstrun-{installer}-") as tmp:
            runs.append(time_first_run(installer, Path(tmp)))
        r = runs[-1]
        print(f"{installer}: install {r['install_s']:.0f} s, kernels {r['kernel_build_s']:.0f} s, "
              f"first training step at {r['first_step_s']:.0f} s", flush=True)
    m = machine()
    caches = ("none: fresh venv, kernel cache, PIP_CACHE_DIR and UV_CACHE_DIR; the torch==2.13.0 CPU wheel from this "
              "machine's disk (pip's find-links), everything else from PyPI")
    atomic_write_json(RESULTS / "first_run.json", {"benchmark": "first_run", "machine": m, "caches": caches,
                                                   "runs": runs})
    rows = "\n".join(f"| {r['installer']} | {r['install_s']:.0f} | {r['kernel_build_s']:.0f} | "
                     f"**{r['first_step_s']:.0f}** | {r['total_s']:.0f} |" for r in runs)
    update_section("first-run", f"""## First run: `make run` on a fresh checkout

`python bench/first_run.py` — `make run` in a fresh checkout with no `.venv`, an empty kernel cache and empty pip and
uv caches, its output lines timed as they arrive (one epoch: `ARGS=trainer.max_epochs=1`). Install:
from the `installing …` line to the `compiling …` line (venv, torch, hm2bp and its runtime dependencies; the dev
extra is `make test`'s); kernel build: from there to `training: …`; first training step: from the command's start
to hm2bp's `kernels run on the compiled CPU path` line, logged at the first kernel call. Wall-clock seconds on
{m['cores']} cores (the script run alone: other work on the machine slows every phase), and over the network
(PyPI) except for torch: the CPU wheel
`torch==2.13.0` lay on this machine's disk, where pip finds it; elsewhere pip downloads it (about 190 MB), which
these numbers leave out. Noisy: a second run can differ by tens of seconds.

| installer | install s | kernel build s | first training step s | `make run` done (1 epoch) s |
|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
