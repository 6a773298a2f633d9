"""Cost against the number of time steps T, HM2-BP beside BPTT: ``python bench/t_sweep.py``.

The default job's network (64-800-10 on scikit-learn digits, batch 64, 2 threads) trained by :func:`hm2bp.train.fit`
for ``--epochs`` epochs at T ∈ {25, 50, 100, 200, 400}, by each rule (``rule=hm2bp``, ``rule=bptt``), every
(rule, T) in its own process so that peak RSS is its own. Per point: seconds per training epoch (after the first,
which pays the warm-up), peak RSS, test accuracy. HM2-BP's backward works on spike counts and S-PSPs, BPTT's walks
every step back, so their costs grow differently with T. Writes bench/results/t_sweep.json and the ``t-sweep``
section of BENCHMARKS.md. Run it alone on the machine: these are wall-clock rates.

    python bench/t_sweep.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

STEPS = (25, 50, 100, 200, 400)
RULES = ("hm2bp", "bptt")


def child(rule: str, steps: int, epochs: int) -> dict:
    """One (rule, T) point: ``fit`` on digits; the targets scale with T (35/5 spikes at T = 400)."""
    from hm2bp import SpikingMLP
    from hm2bp.bptt import BPTTRule
    from hm2bp.data.digits import load_digits_split
    from hm2bp.data.static import Encoder, StaticSplit
    from hm2bp.loss import Regularizer, SpikeCountLoss
    from hm2bp.train import fit

    torch.set_num_threads(2)
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    train = StaticSplit(x_tr, y_tr, Encoder(steps, seed=0))
    test = StaticSplit(x_te, y_te, Encoder(steps, seed=0), key_offset=len(x_tr))
    k = steps / 400
    desired = max(2, round(35 * k))
    net = SpikingMLP([64, 800, 10], [10.0, 8.0], target_count=desired,
                     **({"rule": BPTTRule()} if rule == "bptt" else {}))
    loss_fn = SpikeCountLoss(desired, round(5 * k), max(1, round(5 * k)))
    history = fit(net, train, test, epochs=epochs, batch_size=64, lr=1e-2, seed=0, regularizer=Regularizer(),
                  loss_fn=loss_fn)
    timed = history[1:] or history
    return {"rule": rule, "steps": steps, "seconds_per_epoch": sum(h["train_seconds"] for h in timed) / len(timed),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "test_acc": history[-1]["test_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("RULE", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.epochs)))
        return

    from common import RESULTS, machine, update_section
    from hm2bp.io import atomic_write_json

    points = []
    for steps in STEPS:
        for rule in RULES:
            out = subprocess.run([sys.executable, __file__, "--child", rule, str(steps), "--epochs", str(args.epochs)],
                                 check=True, capture_output=True, text=True).stdout
            points.append(json.loads(out.strip().splitlines()[-1]))
            print(points[-1], flush=True)
    m = machine()
    atomic_write_json(RESULTS / "t_sweep.json", {"benchmark": "t_sweep", "epochs": args.epochs, "machine": m,
                                                 "points": points})
    at = {(p["rule"], p["steps"]): p for p in points}
    rows = [f"| {t} | {at['hm2bp', t]['seconds_per_epoch']:.2f} | {at['bptt', t]['seconds_per_epoch']:.2f} | "
            f"**{at['bptt', t]['seconds_per_epoch'] / at['hm2bp', t]['seconds_per_epoch']:.2f}×** | "
            f"{at['hm2bp', t]['peak_rss_mib']:.0f} | {at['bptt', t]['peak_rss_mib']:.0f} | "
            f"{100 * at['hm2bp', t]['test_acc']:.1f} | {100 * at['bptt', t]['test_acc']:.1f} |" for t in STEPS]
    update_section("t-sweep", f"""## Cost against T: HM2-BP and BPTT (same run)

`python bench/t_sweep.py --epochs {args.epochs}` — 64-800-10 on scikit-learn digits, batch 64, `hm2bp.train.fit`
with each rule, {m['threads']} threads ({m['cpu_capability']}), torch {m['torch']}; targets scaled with T; each
point its own process. Seconds per training epoch (after the first), peak RSS, test accuracy after
{args.epochs} epochs.

| T | HM2-BP s/epoch | BPTT s/epoch | BPTT / HM2-BP | HM2-BP peak MiB | BPTT peak MiB | HM2-BP acc % | BPTT acc % |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}""")


if __name__ == "__main__":
    main()
