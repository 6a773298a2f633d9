"""Spiking CNN benchmarks on the CPU: the digits CNN (accuracy over seeds, samples/s) and the paper's MNIST CNN
(forward + backward time per sample at batch 32, for a GPU estimate).

Each digits seed runs in its own process so that its peak RSS is its own. Writes bench/results/cnn.json and the
``cnn`` section of BENCHMARKS.md.

    python bench/cnn.py [--seeds 0 1 2 3 4] [--epochs 20] [--paper-steps 3]
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

from common import RESULTS, machine, seed_table, summarize_seeds, update_section
from hm2bp.io import atomic_write_json

# The digits CNN preset (conf/model/digits_cnn.yaml, conf/experiment/digits_cnn.yaml).
DIGITS_ARCH, DIGITS_THRESHOLDS = "12C3-P2-100-10", [1.5, 1.0, 4.0, 5.0]
STEPS, BATCH, LR = 400, 64, 2e-2
# The paper's CNN (conf/model/mnist_cnn.yaml), timed at batch 32 on 28×28 inputs.
PAPER_ARCH, PAPER_THRESHOLDS, PAPER_BATCH = "15C5-P2-40C5-P2-300-10", [5.0, 2.0, 12.0, 4.0, 10.0, 10.0], 32


def run_seed(seed: int, epochs: int) -> dict:
    from hm2bp.data.digits import load_digits_split
    from hm2bp.data.static import Encoder, StaticSplit
    from hm2bp.layers import SpikingNet
    from hm2bp.metrics import summarize
    from hm2bp.train import fit, inverse_sqrt_plus_one_lr

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    encoder = Encoder(STEPS, seed=seed)
    model = SpikingNet(DIGITS_ARCH, (1, 8, 8), DIGITS_THRESHOLDS)
    start = time.perf_counter()
    history = fit(model, StaticSplit(x_tr, y_tr, encoder), StaticSplit(x_te, y_te, encoder, key_offset=len(x_tr)),
                  epochs=epochs, batch_size=BATCH, lr=LR, seed=seed, schedule=inverse_sqrt_plus_one_lr)
    return {"seed": seed, **summarize(history), "wall_seconds": time.perf_counter() - start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "history": history}


def paper_cnn_step_time(steps: int) -> dict:
    """Seconds per sample of one forward + HM2-BP backward of the paper CNN at batch 32, T = 400, on 28×28 images
    (scikit-learn digits upsampled, so the input has real strokes and realistic firing)."""
    import torch.nn.functional as F

    from hm2bp.data.digits import load_digits_split
    from hm2bp.encoding import bernoulli_encode
    from hm2bp.layers import SpikingNet
    from hm2bp.loss import SpikeCountLoss

    torch.set_num_threads(2)
    torch.manual_seed(0)
    x, y, _, _ = load_digits_split()
    images = F.interpolate(x[:PAPER_BATCH].view(-1, 1, 8, 8), size=(28, 28), mode="bilinear").clamp(0, 255)
    spikes = bernoulli_encode(images.view(PAPER_BATCH, -1), STEPS, seed=0, indices=torch.arange(PAPER_BATCH))
    labels = y[:PAPER_BATCH]
    net = SpikingNet(PAPER_ARCH, (1, 28, 28), PAPER_THRESHOLDS)
    loss_fn = SpikeCountLoss()
    times, rates = [], []
    for _ in range(steps + 1):  # the first step warms up allocations
        net.zero_grad(set_to_none=True)
        start = time.perf_counter()
        outs = net.forward_all(spikes, labels)
        loss_fn(outs[-1].sum(1), labels).backward()
        times.append(time.perf_counter() - start)
        rates = [float(o.detach().mean()) for o in outs]
    per_batch = statistics.median(times[1:])
    return {"batch": PAPER_BATCH, "steps_timed": steps, "seconds_per_batch": per_batch,
            "seconds_per_sample": per_batch / PAPER_BATCH, "firing_rates": rates,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--paper-steps", type=int, default=3)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--paper-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(run_seed(args.child, args.epochs)))
        return
    if args.paper_child:
        print(json.dumps(paper_cnn_step_time(args.paper_steps)))
        return
    runs = []
    for seed in args.seeds:
        runs.append(_child(["--child", str(seed), "--epochs", str(args.epochs)]))
        r = runs[-1]
        print(f"seed {seed}: final {r['test_acc']:.4f} best {r['best_test_acc']:.4f} "
              f"{r['train_samples_per_second']:.1f} samples/s peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    paper = _child(["--paper-child", "--paper-steps", str(args.paper_steps)])
    print(f"paper CNN: {paper['seconds_per_sample']:.3f} s/sample at batch {PAPER_BATCH}", flush=True)

    summary = summarize_seeds(runs)
    data = {"benchmark": "cnn", "digits_arch": DIGITS_ARCH, "digits_thresholds": DIGITS_THRESHOLDS, "steps": STEPS,
            "batch": BATCH, "lr": LR, "epochs": args.epochs, "machine": machine(), "summary": summary,
            "runs": runs, "paper_cnn": {"arch": PAPER_ARCH, "thresholds": PAPER_THRESHOLDS, **paper}}
    atomic_write_json(RESULTS / "cnn.json", data)
    m = machine()
    epochs_200 = 200 * 60000 * paper["seconds_per_sample"] / 3600
    body = f"""## Spiking CNN on the CPU

`python bench/cnn.py` — {m['threads']} threads on {m['cores']} cores ({m['cpu_capability']}), torch {m['torch']}.

Digits CNN `{DIGITS_ARCH}` (preset `experiment=digits_cnn`): T = {STEPS}, batch {BATCH}, Adam lr {LR} with
lr·1/√(epoch + 1), thresholds {DIGITS_THRESHOLDS}, no regulariser, {args.epochs} epochs.

{seed_table(runs, summary, rate_digits=1)}

Paper CNN `{PAPER_ARCH}` (preset `experiment=mnist_cnn`), one forward + HM2-BP backward at batch {PAPER_BATCH},
T = {STEPS}, on 28×28 inputs (digits upsampled), untrained weights, median of {args.paper_steps} steps:
**{paper['seconds_per_sample']:.3f} s per sample** ({paper['seconds_per_batch']:.1f} s per batch, peak RSS
{paper['peak_rss_mib']:.0f} MiB). Firing rates per layer (spikes per neuron per step):
{', '.join(f'{r:.4f}' for r in paper['firing_rates'])}; at initialization the upper layers are nearly silent, and the
backward cost grows with the number of post-synaptic spikes, so a trained network costs more per sample. At this
rate, 200 epochs of 60k MNIST images would take {epochs_200:.0f} CPU-hours on this machine.
"""
    update_section("cnn", body)


if __name__ == "__main__":
    main()
