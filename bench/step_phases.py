"""Where one training step goes, phase by phase, for the pure-PyTorch path and the compiled CPU kernels.

Digits 64-800-10 (or, ``--dataset mnist5k``, the paper's MNIST 784-800-10 with its thresholds on the 5,000 real
MNIST digits), T = 400, batch 64, 2 threads, training trains redrawn: each backend runs in its own process, warms
up for 6 batches, then times 40 batches (median and minimum per phase; this machine's speed drifts by ±20 % between
runs, so both backends are measured in the same invocation). The output layer's backward ends when the gradient
reaches the hidden spikes (a tensor hook). Writes bench/results/step_phases[-mnist5k].json and the
``step-phases[-mnist5k]`` section of BENCHMARKS.md.

    python bench/step_phases.py [--batches 40] [--dataset digits|mnist5k]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from common import RESULTS, machine, update_section
from hm2bp.io import atomic_write_json

PHASES = ("encode", "forward hidden", "forward output", "loss", "backward output", "backward hidden",
          "Adam + statistics", "total")
WARMUP = 6


# dataset → (network sizes, thresholds): the default digits network, and the paper's MNIST one
NETWORKS = {"digits": ([64, 800, 10], [10.0, 8.0]), "mnist5k": ([784, 800, 10], [20.0, 8.0])}


def run(batches: int, dataset: str) -> dict[str, dict[str, float]]:
    from hm2bp import HM2BPRule, SpikingMLP
    from hm2bp.data.digits import load_digits_split
    from hm2bp.data.mnist5k import load_mnist5k_split
    from hm2bp.loss import SpikeCountLoss
    from hm2bp.spsp import spike_sums
    from hm2bp.train import Encoder, Regularizer, StaticSplit

    torch.set_num_threads(2)
    torch.manual_seed(0)
    x_tr, y_tr, _, _ = load_digits_split() if dataset == "digits" else load_mnist5k_split()
    split = StaticSplit(x_tr, y_tr, Encoder(400, seed=0, fixed=False))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--dataset", choices=list(NETWORKS), default="digits")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.batches, args.dataset)))
        return
    results = {}
    for backend in ("torch", "compiled"):
        out = subprocess.run([sys.executable, __file__, "--child", "--batches", str(args.batches), "--dataset",
                              args.dataset], check=True, capture_output=True, text=True,
                             env={**os.environ, "HM2BP_OPS": backend}).stdout
        results[backend] = json.loads(out.strip().splitlines()[-1])
    suffix = "" if args.dataset == "digits" else f"-{args.dataset}"
    sizes, _ = NETWORKS[args.dataset]
    data = {"benchmark": "step_phases", "dataset": args.dataset, "sizes": sizes, "batches": args.batches,
            "warmup": WARMUP, "machine": machine(), "phases": results}
    atomic_write_json(RESULTS / f"step_phases{suffix}.json", data)
    t, c = results["torch"], results["compiled"]
    rows = "\n".join(
        f"| {p} | {t[p]['median_ms']:.1f} | {t[p]['min_ms']:.1f} | {c[p]['median_ms']:.1f} | {c[p]['min_ms']:.1f} |"
        for p in PHASES)
    rate = {k: 64e3 / v["total"]["median_ms"] for k, v in results.items()}
    network = "-".join(map(str, sizes))
    what = "digits" if args.dataset == "digits" else "5,000 real MNIST digits (the paper's MNIST network)"
    title = "One training step, phase by phase" + ("" if not suffix else ": MNIST size")
    update_section(f"step-phases{suffix}", f"""## {title}

`python bench/step_phases.py{'' if not suffix else ' --dataset ' + args.dataset}` — {what} {network}, T = 400,
batch 64, training trains redrawn, 2 threads
({data['machine']['cpu_capability']}), torch {data['machine']['torch']}; {args.batches} batches after {WARMUP}
warm-up batches, both backends in the same run. Milliseconds per batch.

| phase | pure PyTorch median | min | compiled median | min |
|---|---|---|---|---|
{rows}

From the medians: {rate['torch']:.0f} samples/s in pure PyTorch, {rate['compiled']:.0f} with the compiled kernels
(a step here excludes the epoch loop's bookkeeping, so `engine_digits.py`'s rates are a little lower).""")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
