"""Fidelity study: which of the authors' behaviours matter, and what batching costs (docs/fidelity.md).

    python bench/fidelity.py [--part runs|gradients|all] [--datasets mnist5k digits] [--seeds 0 1 2] [--docs]

``runs``: every variant of :data:`VARIANTS` × seed through the app (``python src/run.py``, the user's command),
equal epochs per dataset (:data:`DATASETS`), into ``outputs/fidelity/<dataset>/<variant>/seed<s>`` (a rerun skips
finished runs: the app's own resume rules). Per variant: final / best / last-10 test accuracy (mean ± std over
seeds) and training seconds. ``gradients``: on a small digits network, the cosine similarity of each rule
variant's HM2-BP weight gradient with a central finite-difference estimate of the gradient of the *expected*
count loss (averaged over input noise), per layer; the finite difference's own noise ceiling is the cosine of two
estimates from disjoint noise draws. Results: ``bench/results/fidelity.json``; ``--docs`` fills the tables of
``docs/fidelity.md``. Run it alone on the machine (the times are wall-clock).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import RESULTS, ROOT, machine, update_section
from hm2bp.io import atomic_write_json

DOCS = ROOT / "docs" / "fidelity.md"
OUT = RESULTS / "fidelity.json"
# Per dataset: the baseline command (the paper's network and thresholds, batch 64, lr 1e-2) and its epochs.
DATASETS = {
    "mnist5k": ["experiment=mnist5k_mlp", "trainer.max_epochs=3"],
    "digits": ["dataset=digits", "trainer.max_epochs=10"],
}
BATCH_LR = 1.25e-3  # learning-rate rule across batch sizes: lr = 1.25e-3·√B (batch 64 → the presets' 1e-2)


def _batch(b: int) -> list[str]:
    return [f"trainer.batch_size={b}", f"trainer.lr={BATCH_LR * math.sqrt(b):.6g}"]


# (name, what changes against the baseline, overrides). The baseline is every authors' behaviour (the defaults)
# at batch 64, with our Λ clamp and full permutation.
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("baseline", "defaults: authors' rule, Λ clamp 0.1, batch 64, lr 1e-2, fixed trains, permutation", []),
    ("batch1", "batch 1 (authors), lr 1.25e-3", _batch(1)),
    ("batch16", "batch 16, lr 5e-3", _batch(16)),
    ("batch128", "batch 128, lr 1.41e-2", _batch(128)),
    ("exact_spsp", "S-PSP convention `exact` (matches the discrete forward) instead of `original`",
     ["model.rule.convention=exact"]),
    ("no_silent_post_psp", "silent post neuron: e = 0 instead of 0.1", ["model.rule.silent_post_psp=0"]),
    ("no_silent_post_rho", "silent post neuron's side effect: ρ = 0 instead of 0.5", ["model.rule.silent_post_rho=0"]),
    ("no_side_effect", "no side-effect factor (1 + S_i)", ["model.rule.side_effect=false"]),
    ("no_effect_ratio", "errors propagate through w (r = 1) instead of w·e/o", ["model.rule.effect_ratio=false"]),
    ("no_lateral", "no output lateral inhibition (and so no Λ)", ["model.lateral_w0=0"]),
    ("no_lateral_factor", "lateral inhibition kept, Λ = 1", ["model.rule.lateral_factor=false"]),
    ("unclipped_lambda", "Λ's denominator unclipped (authors) instead of clamped at 0.1",
     ["model.rule.lateral_min_denominator=null"]),
    ("no_target_patch", "no regular spikes for a silent target neuron", ["model.rule.silent_target_patch=false"]),
    ("no_boosting", "no boosting of misclassified samples", ["trainer.boosting=false"]),
    ("no_regularizer", "no weight regulariser (λ = 0)", ["trainer.regularizer.lam=0"]),
    ("redrawn_trains", "input trains redrawn every epoch instead of fixed", ["dataset.fixed_trains=false"]),
    ("authors_swaps", "authors' 5000 random swaps per epoch instead of a full permutation", ["trainer.shuffle=swaps"]),
]
RULE_VARIANTS = {  # the gradient study: rule switches only (the others change the loss or the data, not the rule)
    "baseline": {}, "exact_spsp": {"convention": "exact"}, "no_silent_post_psp": {"silent_post_psp": 0.0},
    "no_silent_post_rho": {"silent_post_rho": 0.0}, "no_side_effect": {"side_effect": False},
    "no_effect_ratio": {"effect_ratio": False}, "no_lateral_factor": {"lateral_factor": False},
    "unclipped_lambda": {"lateral_min_denominator": None}, "no_target_patch": {"silent_target_patch": False},
}


def run_dir(dataset: str, variant: str, seed: int) -> Path:
    return ROOT / "outputs" / "fidelity" / dataset / variant / f"seed{seed}"


def one_run(dataset: str, variant: str, overrides: list[str], seed: int) -> dict:
    """Train (or find finished) one run; its metrics.json plus the wall seconds of this call."""
    where = run_dir(dataset, variant, seed)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), *DATASETS[dataset], *overrides, f"seed={seed}",
                    "logger=none", "trainer.progress_bar=false", "resume=auto", f"hydra.run.dir={where}"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    metrics = json.loads((where / "metrics.json").read_text())
    return {**metrics, "wall_seconds": time.perf_counter() - start}


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def study_runs(datasets: list[str], seeds: list[int], results: dict) -> None:
    for dataset in datasets:
        rows = results.setdefault("runs", {}).setdefault(dataset, {})
        for name, what, overrides in VARIANTS:
            runs = [one_run(dataset, name, overrides, s) for s in seeds]
            rows[name] = {"what": what, "overrides": overrides, "seeds": seeds,
                          "epochs": runs[0]["epochs"], "batch_size": runs[0]["config"]["trainer"]["batch_size"],
                          "final": _ms([100 * r["test_acc"] for r in runs]),
                          "best": _ms([100 * r["best_test_acc"] for r in runs]),
                          "last10": _ms([100 * r["last10_test_acc"] for r in runs]),
                          "train_seconds": _ms([r["train_seconds"] for r in runs])}
            print(dataset, name, json.dumps(rows[name]["final"]), flush=True)
            atomic_write_json(OUT, results)


# ---------------------------------------------------------------------------------------------------------- gradients
GRAD_NET = {"sizes": [64, 30, 10], "thresholds": [5.0, 4.0], "steps": 100, "targets": (9.0, 1.0, 1.0)}
GRAD_SAMPLES, GRAD_DRAWS, GRAD_H = 48, 32, 0.05  # samples, noise draws per finite-difference half, weight step


def _loss(net, pixels: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor, loss_fn) -> torch.Tensor:
    from hm2bp.encoding import bernoulli_encode

    x = bernoulli_encode(pixels, GRAD_NET["steps"], seed=11, indices=keys)
    return loss_fn(net(x, labels).sum(1), labels)


def _noise(draws: range, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per draw d the samples 0..n−1 with encoder keys d·n + i: (sample index, key) for a batch of all draws."""
    rows = torch.arange(n).repeat(len(draws))
    keys = torch.cat([torch.arange(n) + d * n for d in draws])
    return rows, keys


def study_gradients(results: dict) -> None:
    """Cosine of HM2-BP's weight gradient (per rule variant) with central finite differences of the expected loss,
    at the weights reached after one epoch of HM2-BP training on digits."""
    from hm2bp import HM2BPRule, SpikeCountLoss, SpikingNet
    from hm2bp.data.digits import load_digits_split
    from hm2bp.data.static import Encoder, StaticSplit
    from hm2bp.train import fit

    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    desired, undesired, margin = GRAD_NET["targets"]
    loss_fn = SpikeCountLoss(desired, undesired, margin)
    arch = "-".join(map(str, GRAD_NET["sizes"][1:]))
    net = SpikingNet(arch, (GRAD_NET["sizes"][0],), GRAD_NET["thresholds"], target_count=int(desired))
    enc = Encoder(GRAD_NET["steps"], seed=0)
    fit(net, StaticSplit(x_tr, y_tr, enc), StaticSplit(x_te, y_te, enc, key_offset=len(x_tr)), epochs=1,
        batch_size=32, lr=1e-2, loss_fn=loss_fn)
    pixels, labels = x_te[:GRAD_SAMPLES], y_te[:GRAD_SAMPLES]
    halves = [_noise(range(0, GRAD_DRAWS), GRAD_SAMPLES), _noise(range(GRAD_DRAWS, 2 * GRAD_DRAWS), GRAD_SAMPLES)]
    weights = [layer.weight for layer in net.layers]
    start = time.perf_counter()
    fd = [[torch.zeros_like(w) for w in weights] for _ in halves]  # per half, per layer
    with torch.no_grad():
        for h, (rows, keys) in enumerate(halves):
            for w, out in zip(weights, fd[h], strict=True):
                flat, grad = w.view(-1), out.view(-1)
                for k in range(flat.numel()):
                    saved = float(flat[k])
                    flat[k] = saved + GRAD_H
                    up = float(_loss(net, pixels[rows], labels[rows], keys, loss_fn))
                    flat[k] = saved - GRAD_H
                    down = float(_loss(net, pixels[rows], labels[rows], keys, loss_fn))
                    flat[k] = saved
                    grad[k] = (up - down) / (2 * GRAD_H)
    fd_seconds = time.perf_counter() - start
    both = [(a + b) / 2 for a, b in zip(*fd, strict=True)]
    rows_all = torch.cat([halves[0][0], halves[1][0]])
    keys_all = torch.cat([halves[0][1], halves[1][1]])

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))

    out = {"network": GRAD_NET, "samples": GRAD_SAMPLES, "draws": 2 * GRAD_DRAWS, "h": GRAD_H,
           "fd_seconds": fd_seconds,
           "ceiling": [cos(a, b) for a, b in zip(*fd, strict=True)], "variants": {}}
    for name, change in RULE_VARIANTS.items():
        rule = HM2BPRule(**change)
        for layer in net.layers:
            layer.setup.rule = rule
        net.zero_grad()
        _loss(net, pixels[rows_all], labels[rows_all], keys_all, loss_fn).backward()
        out["variants"][name] = [cos(w.grad, g) for w, g in zip(weights, both, strict=True)]
        print("gradient", name, out["variants"][name], flush=True)
    for layer in net.layers:
        layer.setup.rule = HM2BPRule()
    results["gradients"] = out
    atomic_write_json(OUT, results)


# ------------------------------------------------------------------------------------------------------------ tables
def runs_table(rows: dict[str, dict]) -> str:
    base = rows["baseline"]["final"][0]
    lines = ["| variant | what changes | batch | epochs | final % | best % | last-10 % | Δ final vs baseline | "
             "train s / run |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        f, b, last, t = r["final"], r["best"], r["last10"], r["train_seconds"]
        delta = "—" if name == "baseline" else f"{f[0] - base:+.2f}"
        lines.append(f"| {name} | {r['what']} | {r['batch_size']} | {r['epochs']} | {f[0]:.2f} ± {f[1]:.2f} | "
                     f"{b[0]:.2f} ± {b[1]:.2f} | {last[0]:.2f} ± {last[1]:.2f} | {delta} | {t[0]:.0f} ± {t[1]:.0f} |")
    return "\n".join(lines)


def gradients_table(g: dict) -> str:
    net = g["network"]
    ceiling = g["ceiling"]
    perfect = [math.sqrt(2 * c / (1 + c)) if c > 0 else 0.0 for c in ceiling]
    lines = [f"Network {'-'.join(map(str, net['sizes']))}, T = {net['steps']}, thresholds {net['thresholds']}, after "
             f"one epoch of HM2-BP on digits; {g['samples']} test digits × {g['draws']} noise draws; central "
             f"differences with h = {g['h']} on every weight ({g['fd_seconds']:.0f} s).", "",
             "| variant | cosine, hidden layer | cosine, output layer |", "|---|---|---|",
             f"| *finite differences: two disjoint halves of the draws (c)* | {ceiling[0]:.3f} | {ceiling[1]:.3f} |",
             f"| *what the exact gradient would score, √(2c/(1+c))* | {perfect[0]:.3f} | {perfect[1]:.3f} |"]
    for name, (hidden, output) in g["variants"].items():
        lines.append(f"| {name} | {hidden:.3f} | {output:.3f} |")
    return "\n".join(lines)


def write_docs(results: dict) -> None:
    for dataset, rows in results.get("runs", {}).items():
        update_section(f"fidelity-{dataset}", runs_table(rows), path=DOCS)
    if "gradients" in results:
        update_section("fidelity-gradients", gradients_table(results["gradients"]), path=DOCS)
    runs = sum(r["train_seconds"][0] * len(r["seeds"]) for rows in results.get("runs", {}).values()
               for r in rows.values())
    parts = ", ".join(f"{part} {seconds / 60:.0f} min" for part, seconds in sorted(results.get("seconds", {}).items()))
    update_section("fidelity-budget", f"Wall time of the script's invocations: {parts}; of it, training inside the "
                   f"runs {runs / 60:.0f} min (the rest: process start, data loading, the test passes). Machine: "
                   f"{results['machine']['cpu']}, {results['machine']['threads']} threads, torch "
                   f"{results['machine']['torch']}.", path=DOCS)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["runs", "gradients", "all"], default="all")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--docs", action="store_true", help="fill docs/fidelity.md's tables from the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results["machine"] = machine()
    start = time.perf_counter()
    if args.part in ("gradients", "all"):
        study_gradients(results)
    if args.part in ("runs", "all"):
        study_runs(args.datasets, args.seeds, results)
    results.setdefault("seconds", {})[args.part] = time.perf_counter() - start
    atomic_write_json(OUT, results)
    if args.docs:
        write_docs(results)
    return results


if __name__ == "__main__":
    main()
