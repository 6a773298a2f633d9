"""Scaling of one training step's time and peak memory with T and hidden width: HM2-BP vs snnTorch BPTT.

64-H-10 on scikit-learn digits, batch 64, 2 threads: T ∈ {100, 200, 400, 800} at H = 800, and H ∈ {200, 800, 3200}
at T = 400. Each (method, T, H) runs in its own process (peak RSS is its own) and reports the median of a few
training steps (forward + backward + Adam) after one warm-up step. Writes bench/results/scaling.json and the
``scaling`` section of BENCHMARKS.md.

    python bench/scaling.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from common import RESULTS, machine, update_section
from hm2bp.io import atomic_write_json

BATCH, LR = 64, 1e-2
THRESHOLDS = [10.0, 8.0]  # the digits settings of bench/engine_digits.py
CONFIGS = [(t, 800) for t in (100, 200, 400, 800)] + [(400, h) for h in (200, 3200)]


def _batch(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    from hm2bp.data.digits import load_digits_split
    from hm2bp.encoding import bernoulli_encode

    x, y, _, _ = load_digits_split()
    return bernoulli_encode(x[:BATCH], steps, seed=0, indices=torch.arange(BATCH)), y[:BATCH]


def hm2bp_step(steps: int, hidden: int):
    from hm2bp import SpikeCountLoss, SpikingMLP

    desired, undesired, margin = (max(1, round(c * steps / 400)) for c in (35, 5, 5))  # 35/5 ± 5 at T = 400
    net = SpikingMLP([64, hidden, 10], THRESHOLDS, target_count=desired)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    loss_fn = SpikeCountLoss(desired, undesired, margin)
    x, y = _batch(steps)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x, y).sum(1), y).backward()
        opt.step()
    return step


def bptt_step(steps: int, hidden: int):
    from snntorch import functional as SF

    from vs_bptt import bptt_peer

    params, forward = bptt_peer(64, hidden, THRESHOLDS)  # the same peer as bench/vs_bptt.py
    opt = torch.optim.Adam(params, lr=LR)
    loss_fn = SF.mse_count_loss(correct_rate=35 / 400, incorrect_rate=5 / 400)  # the same rates at every T
    x, y = _batch(steps)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(forward(x), y).backward()
        opt.step()
    return step


def measure(method: str, steps: int, hidden: int, repeats: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    step = (hm2bp_step if method == "hm2bp" else bptt_step)(steps, hidden)
    times = []
    for _ in range(repeats + 1):  # the first step warms up allocations
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    return {"method": method, "steps": steps, "hidden": hidden, "seconds_per_batch": seconds,
            "samples_per_second": BATCH / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, steps, hidden = args.child[0], int(args.child[1]), int(args.child[2])
        print(json.dumps(measure(method, steps, hidden, args.steps)))
        return
    rows = []
    for steps, hidden in CONFIGS:
        pair = {}
        for method in ("hm2bp", "bptt"):
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", method, str(steps),
                                  str(hidden)], check=True, capture_output=True, text=True).stdout
            pair[method] = json.loads(out.strip().splitlines()[-1])
        rows.append(pair)
        h, b = pair["hm2bp"], pair["bptt"]
        print(f"T {steps} H {hidden}: hm2bp {h['samples_per_second']:.0f}/s {h['peak_rss_mib']:.0f} MiB, "
              f"bptt {b['samples_per_second']:.0f}/s {b['peak_rss_mib']:.0f} MiB", flush=True)
    m = machine()
    atomic_write_json(RESULTS / "scaling.json", {"benchmark": "scaling", "batch": BATCH, "steps_timed": args.steps,
                                                 "machine": m, "rows": rows})
    table = "\n".join(
        f"| {p['hm2bp']['steps']} | {p['hm2bp']['hidden']} | {p['hm2bp']['samples_per_second']:.0f} | "
        f"{p['bptt']['samples_per_second']:.0f} | "
        f"**{p['hm2bp']['samples_per_second'] / p['bptt']['samples_per_second']:.2f}×** | "
        f"{p['hm2bp']['peak_rss_mib']:.0f} | {p['bptt']['peak_rss_mib']:.0f} | "
        f"{p['hm2bp']['peak_rss_mib'] / p['bptt']['peak_rss_mib']:.2f}× |" for p in rows)
    update_section("scaling", f"""## Scaling with T and hidden width (HM2-BP vs BPTT)

`python bench/scaling.py` — 64-H-10 on digits, batch {BATCH}, Adam, {m['threads']} threads, torch {m['torch']};
median of {args.steps} training steps (forward + backward + update) after a warm-up step, untrained weights,
each configuration in its own process (peak RSS includes the Python runtime and the data); target counts scale with
T (35/5 ± 5 at T = 400).

| T | hidden | HM2-BP samples/s | BPTT samples/s | speed ratio | HM2-BP peak MiB | BPTT peak MiB | memory ratio |
|---|---|---|---|---|---|---|---|
{table}
""")


if __name__ == "__main__":
    main()
