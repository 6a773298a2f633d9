"""Aggregate run directories into a paper-vs-ours summary.

    python -m hm2bp.report outputs/ [more paths ...] [--out DIR] [--curves DIR] [--readme README.md]

Finds every complete ``metrics.json`` under the given paths, groups runs by config (fingerprint: one row per
distinct config, named by its experiment; an experiment run with several configs gets one row each, named
``<experiment>-<fingerprint>`` with the keys that differ shown) and writes
``summary.json``, ``summary.md`` and ``summary.png`` (ours vs the paper, with error bars) to ``--out``
(default: the first path). ``--curves DIR`` writes ``DIR/<experiment>.csv``: per epoch, test and train accuracy
(%) as mean and std over seeds (the DVC pipeline's plots). ``--readme FILE`` rewrites the block between
``<!-- summary:start -->`` and ``<!-- summary:end -->`` in FILE with the paper-vs-ours table of every paper row,
with measured training time and a GPU-hours estimate: from the authors' Titan Xp speed at batch 1, or, with
``--gpu-timing FILE`` (the JSON ``bench/gpu_app_epoch.py`` writes on a GPU), from our measured seconds per sample.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import statistics
from pathlib import Path

from hm2bp.io import atomic_write_json, atomic_write_text
from hm2bp.metrics import flatten, metrics_complete, rule_of
from hm2bp.paper import PAPER, PROTOCOL, TITAN_XP_SECONDS_PER_SAMPLE

README_START, README_END = "<!-- summary:start -->", "<!-- summary:end -->"


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


def _name(runs: list[dict]) -> str:
    """The experiment name of one config's runs. Equivalent commands (``dataset=emnist`` and
    ``experiment=emnist_mlp_400_400``) share a run folder, so one config's seeds may carry several names: a paper
    row's wins (its numbers are the comparison), then the most frequent, then the first in order."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["experiment"]] = counts.get(r["experiment"], 0) + 1
    return min(counts, key=lambda e: (e not in PAPER and e not in PROTOCOL, -counts[e], e))


def _label(runs: list[dict]) -> str:
    """A config's row name: its :func:`_name`, with ``+bptt`` for runs trained by BPTT (``rule=bptt``)."""
    rule = rule_of(runs[0].get("config", {}))
    return _name(runs) + ("" if rule == "hm2bp" else f"+{rule}")


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by config (fingerprint), sorted by seed, each run's ``experiment`` set to its config's :func:`_name`:
    the key is the config's :func:`_label` (``+bptt`` for BPTT runs), or ``<label>-<fingerprint>`` where one label
    holds several configs. Raises ``ValueError`` for two runs of one config with the same seed."""
    by_fp: dict[str, list[dict]] = {}
    for r in runs:
        by_fp.setdefault(r["fingerprint"], []).append(r)
    named = {(_label(rs), fp): [{**r, "experiment": _name(rs)} for r in rs] for fp, rs in by_fp.items()}
    per_experiment: dict[str, int] = {}
    for experiment, _ in named:
        per_experiment[experiment] = per_experiment.get(experiment, 0) + 1
    out = {}
    for (experiment, fp), rs in sorted(named.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        for a, b in itertools.pairwise(rs):
            if a["seed"] == b["seed"]:
                raise ValueError(f"seed {a['seed']} of {experiment} (config {fp}) appears twice: {a['run_dir']} and "
                                 f"{b['run_dir']}; pass only one of them")
        out[experiment if per_experiment[experiment] == 1 else f"{experiment}-{fp}"] = rs
    return out


def _settings(groups: dict[str, list[dict]]) -> dict[str, str]:
    """Per group: the config keys whose values differ between the groups of its experiment (``k=v, …``)."""
    flat = {name: flatten(rs[0].get("config", {})) for name, rs in groups.items()}
    out = {}
    for name, rs in groups.items():
        siblings = [flat[n] for n, other in groups.items() if other[0]["experiment"] == rs[0]["experiment"]]
        keys = sorted({k for f in siblings for k in f if any(g.get(k) != f.get(k) for g in siblings)})
        out[name] = ", ".join(f"{k}={json.dumps(flat[name].get(k))}" for k in keys)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_runs(runs: list[dict]) -> dict[str, dict]:
    """Per config (:func:`group_runs`): seeds, mean ± std of final, best and last-10 accuracy (%), best of bests,
    the paper's row, the fingerprint and the keys that set it apart from other configs of its experiment."""
    groups = group_runs(runs)
    settings = _settings(groups)
    out = {}
    for name, rs in groups.items():
        final = _mean_std([100 * r["test_acc"] for r in rs])
        best = _mean_std([100 * r["best_test_acc"] for r in rs])
        last10 = _mean_std([100 * r["last10_test_acc"] for r in rs])
        rule = rule_of(rs[0].get("config", {}))
        paper = PAPER.get(rs[0]["experiment"]) if rule == "hm2bp" else None  # the paper's rows are HM2-BP's
        out[name] = {
            "experiment": rs[0]["experiment"], "rule": rule, "fingerprint": rs[0]["fingerprint"],
            "settings": settings[name],
            "dataset": rs[0]["dataset"], "model": rs[0]["model"], "n_seeds": len(rs),
            "seeds": [r["seed"] for r in rs], "epochs": [r["epochs"] for r in rs],
            "final_mean": final[0], "final_std": final[1], "best_mean": best[0], "best_std": best[1],
            "last10_mean": last10[0], "last10_std": last10[1],
            "best_of_best": max(100 * r["best_test_acc"] for r in rs),
            "train_samples_per_second": statistics.mean(r["train_samples_per_second"] for r in rs),
            "train_seconds_total": sum(r["train_seconds"] for r in rs),
            "train_samples_per_epoch": round(rs[0]["train_seconds"] * rs[0]["train_samples_per_second"]
                                             / rs[0]["epochs"]),
            "paper": None if paper is None else vars(paper),
            # cost, where the runs recorded it (metrics.json files from before these keys lack them)
            **{key: _mean_of(rs, key) for key in COST_KEYS},
        }
    return out


# Per-run costs averaged over a config's seeds: time, memory and the test pass's work per sample.
COST_KEYS = ("seconds_per_epoch", "peak_memory_mib", "test_spikes_per_sample", "test_synops_per_sample",
             "test_energy_uj_per_sample")


def _mean_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.mean(values) if values else None


def to_markdown(summary: dict[str, dict]) -> str:
    lines = ["| experiment | rule | config | seeds | final % | best % (paper's metric) | best of bests % | last-10 % | "
             "s/epoch | peak MiB | synops/sample | paper mean ± std | paper best | paper source |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cost(value: float | None, digits: int) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    for name, s in summary.items():
        p = s["paper"]
        paper_mean = "—" if not p or p["mean"] is None else f"{p['mean']:.2f} ± {p['std']:.2f}"
        paper_best = "—" if not p or p["best"] is None else f"{p['best']:.2f}"
        source = "—" if not p else p["source"] + ("" if p["verified"] else " (unverified)")
        config = s["fingerprint"] + (f" ({s['settings']})" if s["settings"] else "")
        lines.append(f"| {name} | {s['rule']} | {config} | {s['n_seeds']} | {s['final_mean']:.2f} ± "
                     f"{s['final_std']:.2f} | {s['best_mean']:.2f} ± {s['best_std']:.2f} | {s['best_of_best']:.2f} | "
                     f"{s['last10_mean']:.2f} ± {s['last10_std']:.2f} | {cost(s['seconds_per_epoch'], 1)} | "
                     f"{cost(s['peak_memory_mib'], 0)} | {cost(s['test_synops_per_sample'], 0)} | {paper_mean} | "
                     f"{paper_best} | {source} |")
    return "\n".join(lines) + "\n"


def curves(runs: list[dict]) -> dict[str, list[dict]]:
    """Per config (:func:`group_runs`) and epoch: mean and std over seeds of test and train accuracy (%), from each
    history.json. Epochs are cut to the shortest history of the config, so every row averages the same seeds."""
    groups: dict[str, list[list[dict]]] = {}
    for name, rs in group_runs(runs).items():
        for r in rs:
            path = Path(r["run_dir"]) / "history.json"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: the run at {r['run_dir']} has metrics.json but no "
                                        f"history")
            groups.setdefault(name, []).append(json.loads(path.read_text()))
    out = {}
    for name, histories in groups.items():
        rows = []
        for epoch in range(min(len(h) for h in histories)):
            test = _mean_std([100 * h[epoch]["test_acc"] for h in histories])
            train = _mean_std([100 * h[epoch]["train_acc"] for h in histories])
            rows.append({"epoch": epoch, "test_acc": test[0], "test_acc_std": test[1], "train_acc": train[0],
                         "train_acc_std": train[1], "n_seeds": len(histories)})
        out[name] = rows
    return out


def write_curves(table: dict[str, list[dict]], folder: Path) -> None:
    """One CSV per experiment in ``folder`` (columns as :func:`curves`); stale CSVs of other experiments go."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.csv"):
        if old.stem not in table:
            old.unlink()
    for name, rows in table.items():
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(folder / f"{name}.csv", buf.getvalue())


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.2f}" if hours < 10 else f"{hours:,.0f}"


def gpu_timing(path: Path) -> tuple[str, dict[str, float]]:
    """``(GPU name, seconds per sample by row)`` from the JSON of ``bench/gpu_app_epoch.py``: its per-row estimate,
    plus ``"mlp"``/``"cnn"`` (the MNIST rows' speed) for experiments outside the paper's table. Refuses a file
    measured off a GPU or on a fraction of the rows' samples."""
    try:
        data = json.loads(path.read_text())
        gpu, scale, rows = data["gpu"], data["scale"], data["estimate"]
        per_sample = {name: float(r["seconds_per_sample"]) for name, r in rows.items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a timing file of bench/gpu_app_epoch.py ({type(err).__name__}: {err})") \
            from err
    if not gpu or scale != 1.0:
        raise ValueError(f"{path} was measured on {gpu or 'no GPU'} at scale {scale}: the README needs a GPU "
                         "run at scale 1 (bash bench/gpu_check.sh)")
    per_sample.update(mlp=per_sample["mnist_mlp"], cnn=per_sample["mnist_cnn"])
    return gpu, per_sample


def readme_table(summary: dict[str, dict], seeds: int = 5,
                 gpu: tuple[str, dict[str, float]] | None = None) -> str:
    """Markdown: every paper row (:data:`PROTOCOL`) and every experiment in ``summary``, paper numbers next to ours,
    with measured training time and an estimate of GPU-hours for ``seeds`` seeds of the full protocol (rows run
    only here: their own epochs and samples, at the MLP's or, for ``*_cnn`` experiments, the CNN's speed).
    The estimate is ``seeds × epochs × samples × s/sample``: the authors' Titan Xp range, or ``gpu``'s measured
    seconds per sample (:func:`gpu_timing`)."""
    column = (f"est. GPU-hours, {seeds} seeds" if gpu is None
              else f"est. {gpu[0]} hours, {seeds} seeds (measured s/sample)")
    lines = ["| experiment | paper mean ± std % | paper best % | ours: seeds | ours: best % (paper's metric) | "
             "ours: final % | ours: measured train time | protocol (epochs × train samples) | "
             f"{column} |", "|---|---|---|---|---|---|---|---|---|"]
    run_experiments = {s["experiment"] for s in summary.values()}
    for name in sorted({n for n in PROTOCOL if n not in run_experiments} | set(summary)):
        s = summary.get(name)
        experiment = name if s is None else s["experiment"]
        p = PAPER.get(experiment)
        paper_mean = "—" if not p or p.mean is None else f"{p.mean:.2f} ± {p.std:.2f}"
        paper_best = "—" if not p or p.best is None else f"{p.best:.2f}"
        if s is None:
            ours = ["not run here", "—", "—", "—"]
        else:
            ours = [str(s["n_seeds"]), f"{s['best_mean']:.2f} ± {s['best_std']:.2f}",
                    f"{s['final_mean']:.2f} ± {s['final_std']:.2f}",
                    f"{_hours(s['train_seconds_total'])} h CPU, {s['n_seeds']} seeds × {max(s['epochs'])} epochs"]
        if experiment in PROTOCOL:
            row = PROTOCOL[experiment]
            epochs, n_train, arch = row.epochs, row.n_train, row.arch
        else:
            epochs, n_train = max(s["epochs"]), s["train_samples_per_epoch"]
            arch = "cnn" if experiment.endswith("_cnn") else "mlp"
        work = seeds * epochs * n_train
        if gpu is None:
            lo, hi = TITAN_XP_SECONDS_PER_SAMPLE[arch]
            estimate = f"{_hours(work * lo)}–{_hours(work * hi)}"
        else:
            estimate = _hours(work * gpu[1].get(experiment, gpu[1][arch]))
        lines.append(f"| {name} | {paper_mean} | {paper_best} | {' | '.join(ours)} | {epochs} × {n_train:,} | "
                     f"{estimate} |")
    return "\n".join(lines) + "\n"


def _block(path: Path) -> tuple[str, int, int]:
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {README_START} … {README_END} block to fill")
    return text, start, end


def rewrite_readme(path: Path, table: str) -> None:
    """Replace the text between the summary markers in ``path`` with ``table`` (atomically)."""
    text, start, end = _block(path)
    atomic_write_text(path, text[:start + len(README_START)] + "\n" + table + text[end:])


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
    ap.add_argument("--curves", type=Path, help="folder for the per-epoch learning curves, one CSV per experiment")
    ap.add_argument("--readme", type=Path, help="markdown file whose summary block gets the paper-vs-ours table")
    ap.add_argument("--gpu-timing", type=Path, help="GPU timing JSON of bench/gpu_app_epoch.py for the README's "
                    "GPU-hours column (default: the authors' Titan Xp speed)")
    args = ap.parse_args(argv)
    gpu = None
    try:
        if args.readme:
            _block(args.readme)  # before any work: the file exists and has the block
        if args.gpu_timing:
            gpu = gpu_timing(args.gpu_timing)
    except (OSError, ValueError) as err:
        ap.error(str(err))
    runs = find_metrics(args.paths)
    if not runs:
        ap.error(f"no complete metrics.json under {', '.join(map(str, args.paths))}")
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent)
    try:
        summary = summarize_runs(runs)
    except ValueError as err:
        ap.error(str(err))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", to_markdown(summary))
    figure(summary, out / "summary.png")
    if args.curves:
        write_curves(curves(runs), args.curves)
    if args.readme:
        rewrite_readme(args.readme, readme_table(summary, gpu=gpu))
    print(to_markdown(summary), end="")
    return summary


if __name__ == "__main__":
    main()
