"""What training measures: the per-epoch meter both training loops use (:class:`EpochMeter`), the history row
built from it (:func:`history_row`), the run summary (:func:`summarize`), and the ``metrics.json`` every finished
run writes (its keys mark the run complete; ``fingerprint`` and ``config`` identify the config that produced it,
:mod:`hm2bp.app.identity`)."""

from __future__ import annotations

import json
import math
import resource
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchmetrics

from hm2bp.loss import silent_outputs
from hm2bp.spsp import spike_sums

# Energy of one synaptic operation (an accumulate) in 45 nm CMOS: 0.9 pJ for a 32-bit float add (M. Horowitz,
# "Computing's energy problem", ISSCC 2014), the figure SNN papers use for spike-driven accumulates. Counting synaptic
# operations leaves out memory traffic, which on real hardware often costs more than the arithmetic.
ENERGY_PER_SYNOP_PJ = 0.9
# History keys that measure the machine rather than the training: two runs that train alike differ only in these.
MACHINE_KEYS = ("train_seconds", "peak_memory_mib")


class EpochMeter(torchmetrics.Metric):
    """Sums over one pass of a split, kept on the training device (no host read per step) and, under DDP, summed
    over the processes by :meth:`compute`.

    Per step, of a batch of ``B`` samples with layer outputs ``s_k (B, T, N_k)`` and counts ``c_k = Σ_t s_k``:
    ``B``, ``B·loss``, correct predictions, all-silent outputs, the output layer's Λ-clamp hits, and per layer
    ``Σ_b mean_n c_k / T`` (firing rate), ``Σ_b mean_n 1[c_k = 0]`` (silent fraction), ``Σ_b Σ_n c_k`` (spikes) and,
    given the layers' ``fan_outs`` (:meth:`hm2bp.arch.LayerSpec.fan_out`) and the step's input trains, the synaptic
    operations ``Σ_b Σ_j c_{k−1,j}·fan_out_k[j]`` (every presynaptic spike reaches ``fan_out`` neurons; ``c_{−1}``:
    the input). :meth:`compute` divides by the samples.
    """

    full_state_update = False

    def __init__(self, n_layers: int, fan_outs: Sequence[torch.Tensor] | None = None) -> None:
        super().__init__(sync_on_compute=True)
        if n_layers <= 0:
            raise ValueError(f"n_layers must be > 0, got {n_layers}")
        if fan_outs is not None and len(fan_outs) != n_layers:
            raise ValueError(f"need one fan-out per layer ({n_layers}), got {len(fan_outs)}")
        for name in ("samples", "correct", "silent_outputs", "lateral_clamped"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("loss", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("rate", "silent", "spikes", "synops"):
            self.add_state(name, torch.zeros(n_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self._fan_outs = None if fan_outs is None else [f.to(torch.float64).flatten() for f in fan_outs]

    def update(self, outs: Sequence[torch.Tensor], loss: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor,
               lateral_clamped: int | torch.Tensor = 0, inputs: torch.Tensor | None = None) -> None:
        """Add one step: every layer's trains ``outs``, its count loss (boosting-weighted in training), predictions
        and labels, the Λ-clamp hits of its backward pass, and (for synaptic operations) the input trains."""
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
        self.spikes += torch.stack([c.sum(dtype=torch.float64) for c in counts])
        if self._fan_outs is not None:
            if inputs is None:
                raise ValueError("a meter with fan-outs needs the step's input trains")
            if self._fan_outs[0].device != self.synops.device:
                self._fan_outs = [f.to(self.synops.device) for f in self._fan_outs]
            pre = [spike_sums(inputs.detach().transpose(0, 1)).reshape(batch, -1), *counts[:-1]]
            self.synops += torch.stack([(c.to(torch.float64) @ f).sum() for c, f in zip(pre, self._fan_outs,
                                                                                        strict=True)])

    def compute(self) -> dict[str, Any]:
        """The pass's means as numbers (one host read): ``loss``, ``acc``, ``samples``, ``silent_outputs``,
        ``lateral_clamped``, and per layer lists ``rate``, ``silent``, ``spikes`` and ``synops`` (per sample)."""
        n = max(int(self.samples), 1)
        return {"loss": float(self.loss) / n, "acc": int(self.correct) / n, "samples": int(self.samples),
                "silent_outputs": int(self.silent_outputs), "lateral_clamped": int(self.lateral_clamped),
                "rate": (self.rate / n).tolist(), "silent": (self.silent / n).tolist(),
                "spikes": (self.spikes / n).tolist(), "synops": (self.synops / n).tolist()}


def peak_memory_mib(device: torch.device | str = "cpu") -> float:
    """The process's peak memory so far: the largest CUDA allocation on a GPU, the peak resident set elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def history_row(epoch: int, train: Mapping[str, Any], test: Mapping[str, Any], train_seconds: float,
                lr: float, peak_memory: float) -> dict[str, float]:
    """One epoch of a run's history from the train and test meters' :meth:`EpochMeter.compute`: accuracy, loss,
    activity of the training pass, and the cost of the test pass (inference) per sample: spikes per layer, synaptic
    operations and their energy at :data:`ENERGY_PER_SYNOP_PJ` (µJ); ``peak_memory`` in MiB."""
    row = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"], "test_loss": test["loss"],
           "test_acc": test["acc"], "test_silent_outputs": test["silent_outputs"], "train_samples": train["samples"],
           "train_seconds": train_seconds, "lr": lr, "lateral_clamped": train["lateral_clamped"],
           "test_synops": sum(test["synops"]), "test_energy_uj": sum(test["synops"]) * ENERGY_PER_SYNOP_PJ * 1e-6,
           "peak_memory_mib": peak_memory}
    row.update({f"rate_layer{k}": r for k, r in enumerate(train["rate"])})
    row.update({f"silent_layer{k}": r for k, r in enumerate(train["silent"])})
    row.update({f"test_spikes_layer{k}": r for k, r in enumerate(test["spikes"])})
    return row


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Final, best (max over epochs: the paper's "best", selected on the test set, docs/algorithm.md P6) and
    mean-of-last-10 test accuracy of a per-epoch history, with training throughput, seconds per epoch, peak memory
    and the last epoch's inference cost per sample (spikes, synaptic operations, energy)."""
    if not history:
        raise ValueError("no completed epoch to summarize")
    accs = [h["test_acc"] for h in history]
    best_epoch = max(range(len(accs)), key=accs.__getitem__)
    seconds = sum(h["train_seconds"] for h in history)
    samples = sum(h["train_samples"] for h in history)
    tail = accs[-10:]
    last = history[-1]
    return {"test_acc": accs[-1], "best_test_acc": accs[best_epoch], "best_epoch": best_epoch,
            "last10_test_acc": sum(tail) / len(tail), "epochs": len(history), "train_seconds": seconds,
            "train_samples_per_second": samples / seconds if seconds > 0 else math.nan,
            "seconds_per_epoch": seconds / len(history), "peak_memory_mib": max(h["peak_memory_mib"] for h in history),
            "test_synops_per_sample": last["test_synops"], "test_energy_uj_per_sample": last["test_energy_uj"],
            "test_spikes_per_sample": sum(v for k, v in last.items() if k.startswith("test_spikes_layer"))}

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
