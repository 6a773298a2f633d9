"""Aggregate run directories into a paper-vs-ours summary, and each row's HM2-BP and BPTT runs side by side.

    python -m hm2bp.report outputs/ [more paths ...] [--out DIR] [--curves DIR] [--readme README.md]

Finds every complete ``metrics.json`` under the given paths, groups runs by config (fingerprint: one row per
distinct config, named by its experiment; an experiment run with several configs gets one row each, named
``<experiment>-<fingerprint>`` with the keys that differ shown) and writes
``summary.json``, ``summary.md`` and ``summary.png`` (ours vs the paper, with error bars) to ``--out``
(default: the first path). Where a row ran by both rules (``<row>`` and ``<row>+bptt``) it also writes
``compare.md`` (accuracy at equal epochs, time, memory and spikes per rule) and ``compare.png`` (test accuracy
against epochs and against training seconds, both rules on one axes). It prints the summary table and the path of
every file it wrote. ``--curves DIR`` writes ``DIR/<experiment>.csv``: per epoch, test and train accuracy (%) over
seeds and the cumulative training seconds (the DVC pipeline's plots). ``--readme FILE`` rewrites the block between
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
import math
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


# The config keys that only BPTT runs fill (HM2-BP runs hold null there): the rule column already tells them apart.
BPTT_KEY = "model.bptt"


def _settings(groups: dict[str, list[dict]]) -> dict[str, str]:
    """Per group: the config keys whose values differ between the groups of its experiment (``k=v, …``); keys under
    :data:`BPTT_KEY` only where they differ between groups of the same rule."""
    flat = {name: flatten(rs[0].get("config", {})) for name, rs in groups.items()}
    rule = {name: rule_of(rs[0].get("config", {})) for name, rs in groups.items()}

    def differs(key: str, names: list[str]) -> bool:
        return any(flat[n].get(key) != flat[names[0]].get(key) for n in names)

    out = {}
    for name, rs in groups.items():
        siblings = [n for n, other in groups.items() if other[0]["experiment"] == rs[0]["experiment"]]
        same_rule = [n for n in siblings if rule[n] == rule[name]]
        keys = sorted({k for n in siblings for k in flat[n]
                       if differs(k, same_rule if k.startswith(BPTT_KEY) else siblings)})
        out[name] = ", ".join(f"{k}={json.dumps(flat[name].get(k))}" for k in keys)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(mean: float, std: float, n: int) -> str:
    """``mean ± std`` (%, two decimals) over ``n`` seeds; the mean alone for one seed, whose std says nothing."""
    return f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {std:.2f}"


# The "last-10" accuracy is the mean over a run's last LAST_EPOCHS epochs; shorter runs have none (their metrics.json
# holds the mean of all their epochs, which is not the same number).
LAST_EPOCHS = 10


def summarize_runs(runs: list[dict]) -> dict[str, dict]:
    """Per config (:func:`group_runs`): seeds, mean ± std of final, best and last-10 accuracy (%; last-10 ``None``
    where a seed ran fewer than :data:`LAST_EPOCHS` epochs), best of bests, the paper's row, the fingerprint, the
    keys that set it apart from other configs of its experiment, and the costs (:data:`COST_KEYS`)."""
    groups = group_runs(runs)
    settings = _settings(groups)
    out = {}
    for name, rs in groups.items():
        final = _mean_std([100 * r["test_acc"] for r in rs])
        best = _mean_std([100 * r["best_test_acc"] for r in rs])
        last10 = (_mean_std([100 * r["last10_test_acc"] for r in rs])
                  if min(r["epochs"] for r in rs) >= LAST_EPOCHS else (None, None))
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


def _cost(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def to_markdown(summary: dict[str, dict]) -> str:
    """The summary table: one line per row (accuracy mean ± std over seeds, costs, the paper's numbers), with a note
    under it where a row has too few epochs for a last-10 mean."""
    lines = [f"| experiment | rule | config | seeds | epochs | final % | best % (paper's metric) | best of bests % | "
             f"last-{LAST_EPOCHS} % | s/epoch | peak MiB | synops/sample | paper mean ± std | paper best | "
             "paper source |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        p = s["paper"]
        paper_mean = "—" if not p or p["mean"] is None else f"{p['mean']:.2f} ± {p['std']:.2f}"
        paper_best = "—" if not p or p["best"] is None else f"{p['best']:.2f}"
        source = "—" if not p else p["source"] + ("" if p["verified"] else " (unverified)")
        config = s["fingerprint"] + (f" ({s['settings']})" if s["settings"] else "")
        n = s["n_seeds"]
        last = "—" if s["last10_mean"] is None else _pm(s["last10_mean"], s["last10_std"], n)
        lines.append(f"| {name} | {s['rule']} | {config} | {n} | {_epochs(s['epochs'])} | "
                     f"{_pm(s['final_mean'], s['final_std'], n)} | {_pm(s['best_mean'], s['best_std'], n)} | "
                     f"{s['best_of_best']:.2f} | {last} | {_cost(s['seconds_per_epoch'], 1)} | "
                     f"{_cost(s['peak_memory_mib'], 0)} | {_cost(s['test_synops_per_sample'], 0)} | {paper_mean} | "
                     f"{paper_best} | {source} |")
    notes = ["Mean ± std over seeds; a row of one seed shows its value alone."]
    if any(s["last10_mean"] is None for s in summary.values()):
        notes.append(f"last-{LAST_EPOCHS} % is the mean of the last {LAST_EPOCHS} epochs' test accuracy; — where a "
                     f"run has fewer than {LAST_EPOCHS} epochs: read its final % (the last epoch) instead.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _epochs(epochs: list[int]) -> str:
    """A row's epochs: one number, or the range where its seeds stopped at different epochs."""
    return str(epochs[0]) if min(epochs) == max(epochs) else f"{min(epochs)}–{max(epochs)}"


def curves(runs: list[dict]) -> dict[str, list[dict]]:
    """Per config (:func:`group_runs`) and epoch (from 0), from each history.json: mean, std, min and max over seeds
    of test accuracy, mean and std of train accuracy (%), and the mean over seeds of the training seconds up to the
    end of that epoch (the sum of ``train_seconds``: evaluation excluded). Epochs are cut to the shortest history of
    the config, so every row averages the same seeds."""
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
        seconds = [list(itertools.accumulate(e["train_seconds"] for e in h)) for h in histories]
        rows = []
        for epoch in range(min(len(h) for h in histories)):
            tests = [100 * h[epoch]["test_acc"] for h in histories]
            test = _mean_std(tests)
            train = _mean_std([100 * h[epoch]["train_acc"] for h in histories])
            rows.append({"epoch": epoch, "test_acc": test[0], "test_acc_std": test[1], "test_acc_min": min(tests),
                         "test_acc_max": max(tests), "train_acc": train[0], "train_acc_std": train[1],
                         "train_seconds": statistics.mean(s[epoch] for s in seconds), "n_seeds": len(histories)})
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


def _duration(seconds: float) -> str:
    """A measured time in the unit that shows it: seconds, minutes, then hours (never "0.00 h")."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"


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
            ours = [str(s["n_seeds"]), _pm(s["best_mean"], s["best_std"], s["n_seeds"]),
                    _pm(s["final_mean"], s["final_std"], s["n_seeds"]),
                    f"{_duration(s['train_seconds_total'])} CPU, {s['n_seeds']} seeds × {max(s['epochs'])} epochs"]
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
            seconds = work * gpu[1].get(experiment, gpu[1][arch])
            estimate = _hours(seconds) if seconds >= 18 else "< 0.01"  # 18 s: what rounds to 0.01 h
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def figure(summary: dict[str, dict], path: Path) -> Path:
    """Test accuracy per row, one line of the chart each (names on the y axis, so long ones fit): ours, best over
    epochs and final, mean ± std over seeds, beside the paper's mean ± std and best where the row has them."""
    plt = _pyplot()
    names = list(summary)
    # wide enough for the longest row name beside a plot of at least 5 inches; half an inch of height per row
    fig, ax = plt.subplots(figsize=(6 + 0.07 * max(map(len, names)), 1.9 + 0.55 * len(names)))
    ys = range(len(names))

    def series(offset: float, points: list[tuple[int, float | None, float | None]], **style) -> None:
        points = [(y, m, e) for y, m, e in points if m is not None]
        if points:
            ax.errorbar([m for _, m, _ in points], [y + offset for y, _, _ in points],
                        xerr=[e or 0.0 for _, _, e in points], capsize=3, linestyle="none", **style)

    rows = [summary[n] for n in names]
    series(-0.2, [(y, s["best_mean"], s["best_std"]) for y, s in zip(ys, rows, strict=True)], marker="o",
           label="ours: best over epochs (paper's metric)")
    series(-0.05, [(y, s["final_mean"], s["final_std"]) for y, s in zip(ys, rows, strict=True)], marker="s",
           label="ours: final epoch")
    papers = [(y, s["paper"]) for y, s in zip(ys, rows, strict=True) if s["paper"]]
    series(0.12, [(y, p["mean"], p["std"]) for y, p in papers], marker="D", color="black", label="paper: mean")
    series(0.25, [(y, p["best"], None) for y, p in papers], marker="*", markersize=9, color="dimgray",
           label="paper: best")
    seeds = [f"{n}\n{s['n_seeds']} seed{'s' if s['n_seeds'] > 1 else ''} × {_epochs(s['epochs'])} epochs"
             for n, s in zip(names, rows, strict=True)]
    ax.set_yticks(list(ys), seeds, fontsize=9)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first row on top, as in summary.md
    ax.set_xlabel("test accuracy (%); bars: ± std over seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Test accuracy per row" + (": ours and the paper's" if papers else ""))
    entries = len(ax.get_legend_handles_labels()[1])
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    # the bottom of the figure holds the legend: a quarter inch per line of two entries
    fig.tight_layout(rect=(0, (0.1 + 0.25 * math.ceil(entries / 2)) / fig.get_size_inches()[1], 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


RULE_NAMES = {"hm2bp": "HM2-BP", "bptt": "BPTT"}


def rule_pairs(summary: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """The rows trained by both rules, ``{hm2bp row: (hm2bp row, bptt row)}``: an experiment's one HM2-BP config and
    its one BPTT config (``<row>`` and ``<row>+bptt``, whatever else differs: the settings column shows it), or,
    where a rule has several configs, each HM2-BP config with the BPTT config of the same settings (a learning-rate
    sweep by both rules pairs each rate with its own)."""
    by_experiment: dict[str, dict[str, list[str]]] = {}
    for name, s in summary.items():
        by_experiment.setdefault(s["experiment"], {"hm2bp": [], "bptt": []})[s["rule"]].append(name)
    pairs = {}
    for rows in by_experiment.values():
        one_each = len(rows["hm2bp"]) == len(rows["bptt"]) == 1
        for name in rows["hm2bp"]:
            match = [b for b in rows["bptt"] if one_each or summary[b]["settings"] == summary[name]["settings"]]
            if len(match) == 1:
                pairs[name] = (name, match[0])
    return pairs


def compare_markdown(summary: dict[str, dict], table: dict[str, list[dict]],
                     pairs: dict[str, tuple[str, str]]) -> str:
    """Each pair of :func:`rule_pairs` side by side: test accuracy (%) after the same number of epochs (the fewer
    that both rules' runs completed; mean ± std over seeds from :func:`curves`), the training seconds to get there,
    and each rule's costs (:data:`COST_KEYS`, means over seeds)."""
    lines = ["## HM2-BP vs BPTT", "",
             "Per row trained by both rules: test accuracy after the same number of epochs for both (mean ± std over "
             "seeds; the value alone for one seed), the training seconds to reach it (mean over seeds, evaluation "
             "excluded), and each rule's seconds per epoch, peak memory, and spikes and synaptic operations per "
             "test sample (means over seeds).", "",
             "| row | rule | config | seeds | epochs | test % at equal epochs | train s to there | s/epoch | "
             "peak MiB | spikes/sample | synops/sample |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair, names in pairs.items():
        epochs = min(len(table[n]) for n in names)
        for name in names:
            s, at = summary[name], table[name][epochs - 1]
            config = s["fingerprint"] + (f" ({s['settings']})" if s["settings"] else "")
            lines.append(f"| {pair} | {RULE_NAMES[s['rule']]} | {config} | {at['n_seeds']} | {epochs} | "
                         f"{_pm(at['test_acc'], at['test_acc_std'], at['n_seeds'])} | {at['train_seconds']:,.1f} | "
                         f"{_cost(s['seconds_per_epoch'], 1)} | {_cost(s['peak_memory_mib'], 0)} | "
                         f"{_cost(s['test_spikes_per_sample'], 0)} | {_cost(s['test_synops_per_sample'], 0)} |")
    return "\n".join(lines) + "\n"


def compare_figure(summary: dict[str, dict], table: dict[str, list[dict]], pairs: dict[str, tuple[str, str]],
                   path: Path) -> Path:
    """One line of two panels per pair of :func:`rule_pairs`: test accuracy against epochs and against cumulative
    training seconds, both rules on the same axes (line: mean over seeds, band: min to max)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig = plt.figure(figsize=(10, 0.5 + 3.5 * len(pairs)), layout="constrained")
    # one sub-figure per pair: its row name once above its two panels, however long the name
    for panel, (pair, names) in zip(fig.subfigures(len(pairs), 1, squeeze=False)[:, 0], pairs.items(), strict=True):
        by_epoch, by_time = panel.subplots(1, 2)
        panel.suptitle(pair, fontsize=11)
        for name, color in zip(names, ("tab:blue", "tab:red"), strict=True):
            rows = table[name]
            n = rows[0]["n_seeds"]
            label = f"{RULE_NAMES[summary[name]['rule']]} ({n} seed{'s' if n > 1 else ''})"
            mean = [r["test_acc"] for r in rows]
            low, high = [r["test_acc_min"] for r in rows], [r["test_acc_max"] for r in rows]
            for ax, xs in ((by_epoch, [r["epoch"] + 1 for r in rows]), (by_time, [r["train_seconds"] for r in rows])):
                ax.plot(xs, mean, marker="o", markersize=3, color=color, label=label)
                ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
        by_epoch.set(xlabel="epochs trained", ylabel="test accuracy (%)", title="by epoch")
        by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
        by_time.set(xlabel="training seconds (cumulative, mean over seeds)", ylabel="test accuracy (%)",
                    title="by training time")
        for ax in (by_epoch, by_time):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("HM2-BP vs BPTT: test accuracy, mean over seeds (band: min to max)", fontweight="bold")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(prog="python -m hm2bp.report", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="run dirs, metrics.json files or folders holding them")
    ap.add_argument("--out", type=Path, help="where summary.{json,md,png} (and compare.{md,png} where a row ran by "
                    "both rules) go (default: the first path)")
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
    try:
        runs = find_metrics(args.paths)
    except FileNotFoundError as err:
        ap.error(str(err))
    if not runs:
        ap.error(f"no complete metrics.json under {', '.join(map(str, args.paths))}")
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent)
    try:
        summary = summarize_runs(runs)
        pairs = rule_pairs(summary)
        table = curves(runs) if args.curves or pairs else {}  # every history read before anything is written
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", to_markdown(summary))
    figure(summary, out / "summary.png")
    written = [out / "summary.json", out / "summary.md", out / "summary.png"]
    if pairs:
        atomic_write_text(out / "compare.md", compare_markdown(summary, table, pairs))
        compare_figure(summary, table, pairs, out / "compare.png")
        written += [out / "compare.md", out / "compare.png"]
    else:
        for stale in (out / "compare.md", out / "compare.png"):  # an earlier report's, not about these runs
            stale.unlink(missing_ok=True)
    if args.curves:
        write_curves(table, args.curves)
        written += [args.curves / f"{name}.csv" for name in table]
    if args.readme:
        rewrite_readme(args.readme, readme_table(summary, gpu=gpu))
        written.append(args.readme)
    print(to_markdown(summary) + ("\n" + compare_markdown(summary, table, pairs) if pairs else ""), end="")
    print("\n".join(f"wrote {path}" for path in written))
    return summary


if __name__ == "__main__":
    main()
