"""What training measures: the per-epoch meter both training loops use (:class:`EpochMeter`), the history row
built from it (:func:`history_row`), the run summary (:func:`summarize`), and the ``metrics.json`` every finished
run writes (its keys mark the run complete; ``fingerprint`` and ``config`` identify the config that produced it,
:mod:`hm2bp.app.identity`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchmetrics

from hm2bp.loss import silent_outputs
from hm2bp.spsp import spike_sums


class EpochMeter(torchmetrics.Metric):
    """Sums over one pass of a split, kept on the training device (no host read per step) and, under DDP, summed
    over the processes by :meth:`compute`.

    Per step, of a batch of ``B`` samples with layer outputs ``s_k (B, T, N_k)`` and counts ``c_k = Σ_t s_k``:
    ``B``, ``B·loss``, correct predictions, all-silent outputs, the output layer's Λ-clamp hits, and per layer
    ``Σ_b mean_n c_k / T`` (firing rate) and ``Σ_b mean_n 1[c_k = 0]`` (silent fraction). :meth:`compute` divides
    by the samples.
    """

    full_state_update = False

    def __init__(self, n_layers: int) -> None:
        super().__init__(sync_on_compute=True)
        if n_layers <= 0:
            raise ValueError(f"n_layers must be > 0, got {n_layers}")
        for name in ("samples", "correct", "silent_outputs", "lateral_clamped"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("loss", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rate", torch.zeros(n_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("silent", torch.zeros(n_layers, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, outs: Sequence[torch.Tensor], loss: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor,
               lateral_clamped: int | torch.Tensor = 0) -> None:
        """Add one step: every layer's trains ``outs``, its count loss (boosting-weighted in training), predictions
        and labels, and the Λ-clamp hits of its backward pass."""
        batch = len(labels)
        counts = [spike_sums(s.detach().transpose(0, 1)) for s in outs]  # (B, N), from the spike index if cached
        self.samples += batch
        self.loss += loss.detach().to(torch.float64) * batch
        self.correct += (pred == labels).sum()
        self.silent_outputs += silent_outputs(counts[-1])
        self.lateral_clamped += lateral_clamped
        self.rate += torch.stack([c.sum(dtype=torch.float64) / (s.shape[1] * s.shape[2])
                                  for c, s in zip(counts, outs, strict=True)])
        self.silent += torch.stack([(c == 0).to(torch.float64).mean(1).sum() for c in counts])

    def compute(self) -> dict[str, Any]:
        """The pass's means as numbers (one host read): ``loss``, ``acc``, ``samples``, ``silent_outputs``,
        ``lateral_clamped``, and per layer ``rate`` and ``silent`` lists."""
        n = max(int(self.samples), 1)
        return {"loss": float(self.loss) / n, "acc": int(self.correct) / n, "samples": int(self.samples),
                "silent_outputs": int(self.silent_outputs), "lateral_clamped": int(self.lateral_clamped),
                "rate": (self.rate / n).tolist(), "silent": (self.silent / n).tolist()}


def history_row(epoch: int, train: Mapping[str, Any], test: Mapping[str, Any], train_seconds: float,
                lr: float) -> dict[str, float]:
    """One epoch of a run's history from the train and test meters' :meth:`EpochMeter.compute`."""
    row = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"], "test_loss": test["loss"],
           "test_acc": test["acc"], "test_silent_outputs": test["silent_outputs"], "train_samples": train["samples"],
           "train_seconds": train_seconds, "lr": lr, "lateral_clamped": train["lateral_clamped"]}
    row.update({f"rate_layer{k}": r for k, r in enumerate(train["rate"])})
    row.update({f"silent_layer{k}": r for k, r in enumerate(train["silent"])})
    return row


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Final, best (max over epochs: the paper's "best", selected on the test set, docs/algorithm.md P6) and
    mean-of-last-10 test accuracy of a per-epoch history, with training throughput."""
    if not history:
        raise ValueError("no completed epoch to summarize")
    accs = [h["test_acc"] for h in history]
    best_epoch = max(range(len(accs)), key=accs.__getitem__)
    seconds = sum(h["train_seconds"] for h in history)
    samples = sum(h["train_samples"] for h in history)
    tail = accs[-10:]
    return {"test_acc": accs[-1], "best_test_acc": accs[best_epoch], "best_epoch": best_epoch,
            "last10_test_acc": sum(tail) / len(tail), "epochs": len(history), "train_seconds": seconds,
            "train_samples_per_second": samples / seconds if seconds > 0 else math.nan}

METRICS_KEYS = ("experiment", "dataset", "model", "seed", "fingerprint", "test_acc", "best_test_acc", "best_epoch",
                "last10_test_acc", "epochs", "train_seconds", "train_samples_per_second")


def rule_of(config: Mapping[str, Any]) -> str:
    """How a run config's network learns: ``"bptt"`` (``rule=bptt`` puts ``model.bptt`` in) or ``"hm2bp"``."""
    return "bptt" if config.get("model", {}).get("bptt") is not None else "hm2bp"


def metrics_complete(path: Path) -> bool:
    """Whether ``path`` is a finished run's metrics file (all :data:`METRICS_KEYS` present)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in METRICS_KEYS)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old → new`` for every dotted key whose value differs (missing keys show as ``<unset>``)."""
    a, b = flatten(old), flatten(new)
    unset = "<unset>"
    return [f"{k}: {json.dumps(a.get(k, unset))} → {json.dumps(b.get(k, unset))}"
            for k in sorted(set(a) | set(b)) if a.get(k, unset) != b.get(k, unset)]
