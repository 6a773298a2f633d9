"""Helpers shared by the benchmark scripts: machine description, atomic JSON, and BENCHMARKS.md sections."""

from __future__ import annotations

import io
import os
import platform
import re
import statistics
import subprocess
import tarfile
from pathlib import Path

import torch

from hm2bp.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


# The last commit before the work of issue "CPU speed at the paper's sizes": the before/after benchmarks' baseline.
CPU_BASELINE = "57ed9be"


def export_tree(rev: str, where: Path) -> Path:
    """The source tree (src/ and conf/) of git revision ``rev``, unpacked under ``where``: run code from it with
    ``PYTHONPATH=where/src`` and its own ``HM2BP_EXTENSIONS_DIR``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src", "conf"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(where, filter="data")
    return where


def short_rev(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True,
                          text=True).stdout.strip()


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path`` (BENCHMARKS.md; the
    block is appended when missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)


SUMMARY_KEYS = ("test_acc", "best_test_acc", "last10_test_acc", "train_samples_per_second", "peak_rss_mib")


def summarize_seeds(runs: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean and sample std (0 for one run) over seeds of every key in :data:`SUMMARY_KEYS`."""
    def ms(key: str) -> tuple[float, float]:
        vals = [r[key] for r in runs]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return {k: ms(k) for k in SUMMARY_KEYS}


def seed_table(runs: list[dict], summary: dict[str, tuple[float, float]], rate_digits: int = 0) -> str:
    """Markdown table of the per-seed runs (final/best accuracy, samples/s, peak RSS) and their mean ± std row."""
    rate = f".{rate_digits}f"
    rows = "\n".join(
        f"| {r['seed']} | {100 * r['test_acc']:.2f} | {100 * r['best_test_acc']:.2f} | "
        f"{r['train_samples_per_second']:{rate}} | {r['peak_rss_mib']:.0f} |" for r in runs)
    return f"""| seed | final test acc % | best test acc % | train samples/s | peak RSS MiB |
|---|---|---|---|---|
{rows}
| **mean ± std** | **{100 * summary['test_acc'][0]:.2f} ± {100 * summary['test_acc'][1]:.2f}** | \
{100 * summary['best_test_acc'][0]:.2f} ± {100 * summary['best_test_acc'][1]:.2f} | \
**{summary['train_samples_per_second'][0]:{rate}} ± {summary['train_samples_per_second'][1]:{rate}}** | \
{summary['peak_rss_mib'][0]:.0f} |"""
