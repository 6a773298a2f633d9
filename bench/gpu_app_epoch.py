"""Training epochs through the Lightning app's pieces (SpikeData + HM2BPModule + Trainer, data encoded on the device)
on synthetic data in the real file formats, and the GPU-hours of the whole 5-seed paper table they imply.

    python bench/gpu_app_epoch.py [--device cuda] [--scale 1.0] [--out bench/results/gpu_app_epoch.json]

Rows (``--scale 1``): ``mnist_mlp`` 784-800-10, T 400, batch 128, one whole 60,000-sample epoch; ``mnist_cnn``
15C5-P2-40C5-P2-300-10, T 400, batch 32, 2,048 samples; ``nmnist_mlp`` 2312-800-10, T 540, batch 128, 6,144 samples;
``emnist_mlp_400_400`` 784-400-400-47, T 400, batch 128, 12,800 samples. Each row trains one short warm-up epoch
(kernel compilation) and then one timed epoch (without the test pass) with the paper row's network and thresholds.
The estimate multiplies each row's measured seconds per sample by its protocol (``hm2bp.paper.PROTOCOL``: epochs ×
training samples) × 5 seeds; rows without a measurement (EMNIST 200-200, the TI46 MLPs) take the measured MLP row
of the same input size scaled by their neurons × T, and are marked so. Hydra, wandb and the CLI are not needed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from common import RESULTS, machine, update_section
from hm2bp import ops
from hm2bp.app.data import SpikeData
from hm2bp.app.module import HM2BPModule
from hm2bp.data.idx import write_idx
from hm2bp.data.nmnist import encode_events
from hm2bp.io import atomic_write_json
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


def write_data(root: Path, dataset: str, n_train: int, n_test: int, rng: np.random.Generator) -> None:
    """MNIST-like digits (IDX), EMNIST-balanced (IDX, 47 classes) or N-MNIST (event files) under ``root``."""
    if dataset in ("mnist", "emnist"):
        classes = 10 if dataset == "mnist" else 47
        names = ({"train": "train", "test": "t10k"} if dataset == "mnist"
                 else {"train": "emnist-balanced-train", "test": "emnist-balanced-test"})
        for split, n in (("train", n_train), ("test", n_test)):
            images = (rng.random((n, 28, 28)) < 0.2) * rng.integers(0, 256, (n, 28, 28))  # ~MNIST's ink density
            write_idx(root / dataset / f"{names[split]}-images-idx3-ubyte", images)
            write_idx(root / dataset / f"{names[split]}-labels-idx1-ubyte", np.arange(n) % classes)
        return
    for split, n in (("Train", n_train), ("Test", n_test)):
        for k in range(n):
            folder = root / "NMNIST" / split / str(k % 10)
            folder.mkdir(parents=True, exist_ok=True)
            count = 4000  # N-MNIST samples hold ~4,000 events over 300 ms
            ev = np.stack([rng.integers(0, 34, count), rng.integers(0, 34, count), rng.integers(0, 2, count),
                           np.sort(rng.integers(0, 300_000, count))], 1)
            (folder / f"{k:05d}.bin").write_bytes(encode_events(ev))


class _Timer(L.Callback):
    def __init__(self, sync) -> None:
        self.sync, self.seconds, self.samples = sync, [], []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.sync()
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sync()
        self.seconds.append(time.perf_counter() - self._start)
        self.samples.append(pl_module.samples_this_epoch)


def time_row(name: str, device: torch.device, scale: float, folder: Path) -> dict:
    dataset, arch, thresholds, steps, batch, samples = ROWS[name]
    n_train = max(batch, int(samples * scale) // batch * batch)
    rng = np.random.default_rng(0)
    write_data(folder, dataset, n_train, batch, rng)
    data = SpikeData(dataset, folder, steps, batch, seed=0, device_encoding=device.type == "cuda",
                     num_workers=2 if device.type == "cuda" else 0, pin_memory=device.type == "cuda")
    data.setup()
    module = HM2BPModule(arch, data.info.shape, thresholds, n_train=data.n_train, lr=1e-2)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timer = _Timer(sync)
    warm = max(1, min(4, n_train // batch))
    common = {"accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": 1, "logger": False,
              "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
              "num_sanity_val_steps": 0, "limit_val_batches": 0}  # training time only: no test pass
    L.Trainer(max_epochs=1, limit_train_batches=warm, **common).fit(module, datamodule=data)  # compiles the kernels
    L.Trainer(max_epochs=1, callbacks=[timer], **common).fit(module, datamodule=data)
    seconds, trained = timer.seconds[-1], timer.samples[-1]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"dataset": dataset, "arch": arch, "steps": steps, "batch": batch, "samples": trained,
            "epoch_seconds": seconds, "seconds_per_sample": seconds / trained,
            "samples_per_second": trained / seconds, "peak_gpu_gib": peak}


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
             "device-side encoding, synthetic data in the real file formats.", "",
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
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_app_epoch.json")
    ap.add_argument("--benchmarks", action="store_true", help="write the gpu-app section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("highest")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            rows[name] = time_row(name, device, args.scale, Path(tmp) / name)
            print(name, json.dumps(rows[name]), flush=True)
    result = {"machine": machine(), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "kernels": ops.kernels_for(torch.empty(0, device=device)),
              "scale": args.scale, "rows": rows}
    if set(ROWS) <= set(rows):
        result["estimate"] = estimate(rows)
        result["total_gpu_hours"] = sum(e["gpu_hours"] for e in result["estimate"].values())
        if args.benchmarks:
            update_section("gpu-app", table(result))
    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
