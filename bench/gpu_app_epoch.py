"""Training epochs through the Lightning app's pieces (SpikeData + HM2BPModule + Trainer, data encoded on the device)
on synthetic data in the real layouts, held in memory, and the GPU-hours of the whole 5-seed paper table they imply.

    python bench/gpu_app_epoch.py [--device cuda] [--scale 1.0] [--rows ...] [--max-seconds S]
                                  [--out bench/results/gpu_app_epoch.json] [--row-dir DIR] [--run-id ID]

Rows (``--scale 1``): ``mnist_mlp`` 784-800-10, T 400, batch 128, one whole 60,000-sample epoch; ``mnist_cnn``
15C5-P2-40C5-P2-300-10, T 400, batch 32, 2,048 samples; ``nmnist_mlp`` 2312-800-10, T 540, batch 128, 6,144 samples;
``emnist_mlp_400_400`` 784-400-400-47, T 400, batch 128, 12,800 samples. Each row trains one short warm-up epoch
(kernel compilation) and then one timed epoch (without the test pass) with the paper row's network and thresholds;
``--max-seconds`` ends the timed epoch early (the samples trained so far count, and the row says ``capped``).
The data are what the registered loaders return, made in memory: IDX-like uint8 images and labels (MNIST,
EMNIST-balanced) and N-MNIST event records ``(x, y, p, t µs)`` stabilized and binned by :mod:`hm2bp.data.nmnist`'s
functions (no tonic, no files). The estimate multiplies each row's measured seconds per sample by its protocol
(``hm2bp.paper.PROTOCOL``: epochs × training samples) × 5 seeds; rows without a measurement (EMNIST 200-200, the
TI46 MLPs) take the measured MLP row of the same input size scaled by their neurons × T, and are marked so. Hydra,
wandb and the CLI are not needed.

The combined JSON (``--out``) is rewritten after every row; ``--row-dir`` also writes each row alone as
``gpu_app_<row>.json``. With ``--run-id`` (bench/gpu_check.sh runs one row per process) the rows already in ``--out``
under the same id are kept, so the file grows row by row and the estimate appears with the last one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from common import BENCHMARKS_MD, RESULTS, machine, update_section
from hm2bp import backend
from hm2bp.app.data import SpikeData
from hm2bp.app.finite import FiniteCheck
from hm2bp.app.module import HM2BPModule
from hm2bp.data.events import EventSplit
from hm2bp.data.nmnist import N_INPUTS, SENSOR, bin_events, stabilize
from hm2bp.data.registry import get_dataset
from hm2bp.io import atomic_write_json
from hm2bp.loss import DESIRED_LEVEL, MARGIN, UNDESIRED_LEVEL
from hm2bp.paper import PROTOCOL

# row → (dataset, arch, thresholds of conf/model/<row's model>.yaml, T, batch, samples at scale 1)
ROWS = {
    "mnist_mlp": ("mnist", "800-10", [20.0, 8.0], 400, 128, 60_000),
    "mnist_cnn": ("mnist", "15C5-P2-40C5-P2-300-10", [5.0, 2.0, 12.0, 4.0, 10.0, 10.0], 400, 32, 2_048),
    "nmnist_mlp": ("nmnist", "800-10", [15.0, 15.0], 540, 128, 6_144),
    "emnist_mlp_400_400": ("emnist", "400-400-47", [20.0, 20.0, 8.0], 400, 128, 12_800),
}
# unmeasured rows: (measured row to scale, neurons of the row, T of the row)
SCALED = {"emnist_mlp_200_200": ("emnist_mlp_400_400", 200 + 200 + 47, 400),
          "ti46_alpha_mlp": ("mnist_mlp", 800 + 26, 1000),
          "ti46_alpha_mlp_400_400": ("mnist_mlp", 400 + 400 + 26, 1000),
          "ti46_alpha_mlp_800_800": ("mnist_mlp", 800 + 800 + 26, 1000)}
NEURONS = {"mnist_mlp": 810, "emnist_mlp_400_400": 847}


# tonic's N-MNIST event layout, which hm2bp.data.nmnist's stabilize() and bin_events() read
EVENT_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])


def nmnist_events(rng: np.random.Generator, count: int = 4000) -> np.ndarray:
    """One N-MNIST-like sample: ``count`` events (~4,000 in the real data) over 300 ms, sorted by time."""
    ev = np.empty(count, EVENT_DTYPE)
    ev["x"], ev["y"] = rng.integers(0, SENSOR, count), rng.integers(0, SENSOR, count)
    ev["t"], ev["p"] = np.sort(rng.integers(0, 300_000, count)), rng.integers(0, 2, count)
    return ev


def make_splits(dataset: str, n_train: int, n_test: int, steps: int, rng: np.random.Generator) -> tuple:
    """What the registered loader of ``dataset`` returns, from synthetic data in its real layout: MNIST-like
    28×28 uint8 images (EMNIST-balanced: 47 classes) as float pixels, or N-MNIST events converted as
    :mod:`hm2bp.data.nmnist` converts the files' events. Sample ``k`` has label ``k % classes``."""
    classes = get_dataset(dataset).n_classes
    if dataset in ("mnist", "emnist"):
        out = []
        for n in (n_train, n_test):
            images = ((rng.random((n, 28, 28)) < 0.2) * rng.integers(0, 256, (n, 28, 28))).astype(np.uint8)  # ink
            out += [torch.from_numpy(images.reshape(n, -1).astype(np.float32)), torch.arange(n) % classes]
        return tuple(out)
    return tuple(EventSplit.from_samples([bin_events(stabilize(nmnist_events(rng)), steps) for _ in range(n)],
                                         list(np.arange(n) % classes), steps, N_INPUTS) for n in (n_train, n_test))


class _Timer(L.Callback):
    """Times each training epoch; past ``max_seconds`` it stops the epoch after the current batch."""

    def __init__(self, sync, max_seconds: float | None = None) -> None:
        self.sync, self.max_seconds, self.seconds, self.samples = sync, max_seconds, [], []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.max_seconds is not None and time.perf_counter() - self._start > self.max_seconds:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sync()
        self.seconds.append(time.perf_counter() - self._start)
        self.samples.append(pl_module.samples_this_epoch)


def time_row(name: str, device: torch.device, scale: float, steps: int | None = None, batch: int | None = None,
             max_seconds: float | None = None) -> dict:
    """One row's timed epoch (``steps``/``batch`` replace the paper row's T and batch size: a rehearsal's sliver)."""
    dataset, arch, thresholds, row_steps, row_batch, samples = ROWS[name]
    steps, batch = steps or row_steps, batch or row_batch
    n_train = max(batch, int(samples * scale) // batch * batch)
    splits = make_splits(dataset, n_train, batch, steps, np.random.default_rng(0))
    cuda = device.type == "cuda"
    data = SpikeData(dataset, ".", steps, batch, seed=0, device_encoding=True, num_workers=2 if cuda else 0,
                     pin_memory=cuda, splits=splits)
    data.setup()
    k = steps / row_steps  # a shorter T than the row's (a rehearsal) scales the spike-count targets down with it
    module = HM2BPModule(arch, data.info.shape, thresholds, n_train=data.n_train, lr=1e-2, lr_schedule="inverse_sqrt",
                         boosting=True, targets={"desired": max(1.0, DESIRED_LEVEL * k),
                                                 "undesired": UNDESIRED_LEVEL * k, "margin": MARGIN * k})
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timer = _Timer(sync, max_seconds)
    warm = max(1, min(4, n_train // batch))
    common = {"accelerator": "gpu" if cuda else "cpu", "devices": 1, "logger": False,
              "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
              "num_sanity_val_steps": 0, "limit_val_batches": 0}  # training time only: no test pass
    L.Trainer(max_epochs=1, limit_train_batches=warm, callbacks=[FiniteCheck()], **common).fit(
        module, datamodule=data)  # compiles the kernels
    L.Trainer(max_epochs=1, callbacks=[timer, FiniteCheck()], **common).fit(module, datamodule=data)  # as the app
    seconds, trained = timer.seconds[-1], timer.samples[-1]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return {"dataset": dataset, "arch": arch, "steps": steps, "batch": batch, "samples": trained,
            "epoch_seconds": seconds, "seconds_per_sample": seconds / trained,
            "samples_per_second": trained / seconds, "peak_gpu_gib": peak,
            "capped": trained < data.n_train}  # the cap cut the epoch short (not: its last batch ended late)


def estimate(rows: dict[str, dict], seeds: int = 5) -> dict[str, dict]:
    """GPU-hours of ``seeds`` seeds of each paper row's protocol from the measured seconds per sample."""
    out = {}
    for name, protocol in PROTOCOL.items():
        if name in rows:
            per_sample, how = rows[name]["seconds_per_sample"], "measured"
        else:
            base, neurons, steps = SCALED[name]
            b = rows[base]
            per_sample = b["seconds_per_sample"] * neurons / NEURONS[base] * steps / b["steps"]
            how = f"scaled from {base} (neurons × T)"
        hours = seeds * protocol.epochs * protocol.n_train * per_sample / 3600
        out[name] = {"seconds_per_sample": per_sample, "gpu_hours": hours, "how": how,
                     "epochs": protocol.epochs, "n_train": protocol.n_train}
    return out


def table(result: dict) -> str:
    lines = [f"Measured by `bench/gpu_app_epoch.py` on {result['gpu'] or result['device']} (torch "
             f"{result['torch']}, kernels: {result['kernels']}), through SpikeData + HM2BPModule + Lightning with "
             "device-side encoding, synthetic data in the real layouts (in memory).", "",
             "| row | network | T | batch | samples timed | epoch time (s) | samples/s | peak GPU memory (GiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        peak = "—" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
        lines.append(f"| {name} | {r['arch']} | {r['steps']} | {r['batch']} | {r['samples']:,} | "
                     f"{r['epoch_seconds']:.2f} | {r['samples_per_second']:,.0f} | {peak} |")
    lines += ["", "Estimated GPU-hours of the whole paper table, 5 seeds × each row's protocol:", "",
              "| row | epochs × samples | s/sample | GPU-hours | how |", "|---|---|---|---|---|"]
    for name, e in result["estimate"].items():
        lines.append(f"| {name} | {e['epochs']} × {e['n_train']:,} | {e['seconds_per_sample']:.2e} | "
                     f"{e['gpu_hours']:.2f} | {e['how']} |")
    lines.append(f"| **total** | | | **{result['total_gpu_hours']:.2f}** | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each row's samples (tests use ~0.002)")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--steps", type=int, help="T of every row instead of the paper row's (a rehearsal's sliver)")
    ap.add_argument("--batch", type=int, help="batch size of every row instead of the paper row's")
    ap.add_argument("--max-seconds", type=float, help="end each timed epoch after this many seconds")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_app_epoch.json")
    ap.add_argument("--row-dir", type=Path, help="also write each row as <row-dir>/gpu_app_<row>.json")
    ap.add_argument("--run-id", help="keep the rows already in --out that carry this id")
    ap.add_argument("--benchmarks", nargs="?", type=Path, const=BENCHMARKS_MD, metavar="MD",
                    help="write the gpu-app section of BENCHMARKS.md (or of MD) once every row is in")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("highest")
    head = {"machine": machine(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "kernels": backend.kernels_for(torch.empty(0, device=device)),
            "scale": args.scale, "run_id": args.run_id}
    earlier = json.loads(args.out.read_text()) if args.run_id and args.out.exists() else {}
    rows = dict(earlier.get("rows", {})) if earlier.get("run_id") == args.run_id else {}
    result = {**head, "rows": rows}
    for name in args.rows:
        rows[name] = time_row(name, device, args.scale, args.steps, args.batch, args.max_seconds)
        print(name, json.dumps(rows[name]), flush=True)
        if args.row_dir is not None:
            atomic_write_json(args.row_dir / f"gpu_app_{name}.json", {**head, "row": name, **rows[name]})
        if set(ROWS) <= set(rows):
            result["estimate"] = estimate(rows)
            result["total_gpu_hours"] = sum(e["gpu_hours"] for e in result["estimate"].values())
        atomic_write_json(args.out, result)  # after every row: a later row's failure loses nothing measured
    if "estimate" in result and args.benchmarks is not None:
        update_section("gpu-app", table(result), args.benchmarks)
    return result


if __name__ == "__main__":
    main()
