"""Time one training epoch of MNIST-sized synthetic data: 784-800-10, T = 400, batch 128 (default 60,000 samples).

    python bench/gpu_epoch.py [--device cuda] [--samples 60000] [--batch 128] [--max-seconds S] [--rule bptt]
                              [--out bench/results/gpu_epoch.json] [--profile FILE]

Inputs are Bernoulli trains at MNIST-like rates drawn on the device per batch; labels are random. Reports seconds
per epoch and samples/s (the authors' CUDA code: 600–780 s per MNIST epoch on a Titan Xp, docs/algorithm.md §7).
``--rule bptt`` trains the same network by BPTT (:class:`hm2bp.bptt.BPTTRule`, its defaults) instead of HM2-BP.
``--max-seconds`` ends the epoch early: the batches trained so far are timed, and the result says ``capped``.
``--profile FILE`` then traces 3 more steps with torch.profiler and writes its table of the operators and kernels
with the most device time (where the step's time goes; on CPU tensors, the CPU time).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hm2bp import SpikeCountLoss, SpikingMLP, backend
from hm2bp.bptt import BPTTRule
from hm2bp.io import atomic_write_bytes, atomic_write_json
from hm2bp.loss import DESIRED_LEVEL, MARGIN, UNDESIRED_LEVEL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--max-seconds", type=float, help="stop after the batch that passes this many seconds")
    ap.add_argument("--rule", choices=["hm2bp", "bptt"], default="hm2bp")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_epoch.json")
    ap.add_argument("--profile", type=Path, help="write a torch.profiler table of 3 more steps to this file")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    k = args.steps / 400  # the count targets are the paper's at T 400: a shorter T (a rehearsal) scales them down
    net = SpikingMLP([784, 800, 10], [20.0, 8.0], target_count=max(1, round(DESIRED_LEVEL * k)),
                     rule=BPTTRule() if args.rule == "bptt" else None).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = SpikeCountLoss(DESIRED_LEVEL * k, UNDESIRED_LEVEL * k, MARGIN * k)
    rate = torch.rand(784, device=dev) * 0.06  # mean ~0.03 spikes/step per pixel, like MNIST's q
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step() -> None:
        x = (torch.rand(args.batch, args.steps, 784, device=dev) < rate).float()
        x[:, 0] = 0
        y = torch.randint(0, 10, (args.batch,), device=dev)
        loss = loss_fn(net(x, y).sum(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: compiles the Triton kernels, fills caches
    sync()
    planned = max(1, args.samples // args.batch)
    start = time.perf_counter()
    batches = 0
    while batches < planned:
        step()
        batches += 1
        # a host sync per batch only when capped: the kernels are queued ahead otherwise
        if args.max_seconds is not None and batches < planned:
            sync()
            if time.perf_counter() - start > args.max_seconds:
                break
    sync()
    seconds = time.perf_counter() - start
    result = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
              "torch": torch.__version__, "ops_backend": backend.get_backend(), "rule": args.rule,
              "samples": batches * args.batch,
              "batch": args.batch, "steps": args.steps, "epoch_seconds": seconds,
              "samples_per_second": batches * args.batch / seconds,
              "capped": batches < planned}
    atomic_write_json(args.out, result)
    print(result)
    if args.profile is not None:
        cuda = dev.type == "cuda"
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                step()
            sync()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"  # kernels, not the ops around them
        table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
        head = f"{args.rule}: 3 steps of batch {args.batch}, T {args.steps}, sorted by {sort}"
        atomic_write_bytes(args.profile, f"{head}\n{table}\n".encode())


if __name__ == "__main__":
    main()
