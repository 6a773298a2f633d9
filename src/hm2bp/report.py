"""Aggregate run directories into a paper-vs-ours summary.

    python -m hm2bp.report outputs/ [more paths ...] [--out DIR]

Finds every complete ``metrics.json`` under the given paths, groups runs by experiment and writes
``summary.json``, ``summary.md`` and ``summary.png`` (ours vs the paper, with error bars) to ``--out``
(default: the first path).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from hm2bp.io import atomic_write_json, atomic_write_text
from hm2bp.metrics import metrics_complete
from hm2bp.paper import PAPER


def find_metrics(paths: list[Path]) -> list[dict]:
    """Every complete metrics.json under ``paths`` (a file or a folder each), with its run dir added."""
    found = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        files = [root] if root.is_file() else sorted(root.rglob("metrics.json"))
        for f in files:
            if metrics_complete(f):
                found.append({**json.loads(f.read_text()), "run_dir": str(f.parent)})
    return found


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_runs(runs: list[dict]) -> dict[str, dict]:
    """Per experiment: seeds, mean ± std of final, best and last-10 accuracy (%), best of bests, the paper's row."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["experiment"], []).append(r)
    out = {}
    for name, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        final = _mean_std([100 * r["test_acc"] for r in rs])
        best = _mean_std([100 * r["best_test_acc"] for r in rs])
        last10 = _mean_std([100 * r["last10_test_acc"] for r in rs])
        paper = PAPER.get(name)
        out[name] = {
            "dataset": rs[0]["dataset"], "model": rs[0]["model"], "n_seeds": len(rs),
            "seeds": [r["seed"] for r in rs], "epochs": [r["epochs"] for r in rs],
            "final_mean": final[0], "final_std": final[1], "best_mean": best[0], "best_std": best[1],
            "last10_mean": last10[0], "last10_std": last10[1],
            "best_of_best": max(100 * r["best_test_acc"] for r in rs),
            "train_samples_per_second": statistics.mean(r["train_samples_per_second"] for r in rs),
            "paper": None if paper is None else vars(paper),
        }
    return out


def to_markdown(summary: dict[str, dict]) -> str:
    lines = ["| experiment | seeds | final % | best % (paper's metric) | best of bests % | last-10 % | "
             "paper mean ± std | paper best | paper source |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        p = s["paper"]
        paper_mean = "—" if not p or p["mean"] is None else f"{p['mean']:.2f} ± {p['std']:.2f}"
        paper_best = "—" if not p or p["best"] is None else f"{p['best']:.2f}"
        source = "—" if not p else p["source"] + ("" if p["verified"] else " (unverified)")
        lines.append(f"| {name} | {s['n_seeds']} | {s['final_mean']:.2f} ± {s['final_std']:.2f} | "
                     f"{s['best_mean']:.2f} ± {s['best_std']:.2f} | {s['best_of_best']:.2f} | "
                     f"{s['last10_mean']:.2f} ± {s['last10_std']:.2f} | {paper_mean} | {paper_best} | {source} |")
    return "\n".join(lines) + "\n"


def figure(summary: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names)), 3.6))
    ax.errorbar([x - 0.1 for x in xs], [summary[n]["best_mean"] for n in names],
                yerr=[summary[n]["best_std"] for n in names], fmt="o", capsize=4, label="ours (best over epochs)")
    ax.errorbar([x + 0.1 for x in xs], [summary[n]["final_mean"] for n in names],
                yerr=[summary[n]["final_std"] for n in names], fmt="s", capsize=4, label="ours (final epoch)")
    paper = [(x, summary[n]["paper"]) for x, n in zip(xs, names, strict=True) if summary[n]["paper"]]
    if paper:
        ax.errorbar([x + 0.3 for x, _ in paper], [p["mean"] for _, p in paper], yerr=[p["std"] for _, p in paper],
                    fmt="D", capsize=4, color="black", label="paper")
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(prog="python -m hm2bp.report", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="run dirs, metrics.json files or folders holding them")
    ap.add_argument("--out", type=Path, help="where summary.{json,md,png} go (default: the first path)")
    args = ap.parse_args(argv)
    runs = find_metrics(args.paths)
    if not runs:
        ap.error(f"no complete metrics.json under {', '.join(map(str, args.paths))}")
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent)
    summary = summarize_runs(runs)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", to_markdown(summary))
    figure(summary, out / "summary.png")
    print(to_markdown(summary), end="")
    return summary


if __name__ == "__main__":
    main()
