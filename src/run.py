"""Main job: train HM2-BP 64-800-10 on scikit-learn's digits (offline) and write metrics.json to outputs/."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from hm2bp import SpikingMLP
from hm2bp.data.digits import load_digits_split
from hm2bp.train import Encoder, Regularizer, StaticSplit, fit


def main(seed: int = 0, epochs: int = 20) -> dict:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    encoder = Encoder(steps=400, seed=seed)
    model = SpikingMLP([64, 800, 10], [20.0, 8.0])
    start = time.perf_counter()
    result = fit(model, StaticSplit(x_tr, y_tr, encoder), StaticSplit(x_te, y_te, encoder, key_offset=len(x_tr)),
                 epochs=epochs, batch_size=64, lr=1e-2, seed=seed, regularizer=Regularizer(), log=True)
    metrics = {"dataset": "digits", "model": "64-800-10", "seed": seed, "epochs": epochs,
               "test_acc": result.test_acc, "best_test_acc": result.best_test_acc, "best_epoch": result.best_epoch,
               "last10_test_acc": result.last10_test_acc, "train_seconds": time.perf_counter() - start,
               "train_samples_per_second": result.train_samples_per_second}
    out = Path("outputs") / f"digits_seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out / "metrics.json")
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
