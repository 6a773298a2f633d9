"""A plain-PyTorch training step and epoch for spiking MLPs on static images (no Lightning needed).

The step is what the authors' loop does per sample (spec §3, §7), vectorised over a batch: encode → forward with
labels → count loss (boosted) + regulariser → HM2-BP backward → optimizer step; the training prediction is taken
from the forward pass before the update, as the authors record it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from hm2bp.encoding import bernoulli_encode
from hm2bp.layers import SpikingMLP
from hm2bp.loss import REG_BETA, REG_LAMBDA, REG_LIMIT, BoostingWeights, SpikeCountLoss, predict, weight_regularizer

LR_AUTHORS = 1e-3  # Adam at batch 1 (spec §7)


def inverse_sqrt_lr(epoch: int) -> float:
    """Learning-rate multiplier ``1/√max(e, 1)`` of the MLP configs (spec §7): epochs 0 and 1 use the base rate."""
    return 1.0 / math.sqrt(max(epoch, 1))


@dataclass(frozen=True)
class Regularizer:
    """The authors' exponential weight regulariser, applied to every layer (λ = 0 disables it)."""

    lam: float = REG_LAMBDA
    beta: float = REG_BETA
    limit: float = REG_LIMIT

    def __call__(self, model: torch.nn.Module) -> torch.Tensor | None:
        if self.lam == 0:
            return None
        return sum(weight_regularizer(p, self.lam, self.beta, self.limit)
                   for name, p in model.named_parameters() if name.endswith("weight"))


@dataclass
class EpochStats:
    """What one pass over a split measured."""

    loss: float = 0.0
    accuracy: float = 0.0
    samples: int = 0
    seconds: float = 0.0
    silent_outputs: int = 0
    firing_rates: list[float] = field(default_factory=list)  # mean spikes per neuron per step, per layer
    silent_fraction: list[float] = field(default_factory=list)  # fraction of neurons with no spike, per layer


@dataclass(frozen=True)
class Encoder:
    """Bernoulli encoding settings of a run."""

    steps: int
    seed: int = 0
    fixed: bool = True

    def __call__(self, pixels: torch.Tensor, indices: torch.Tensor, epoch: int, split_offset: int = 0) -> torch.Tensor:
        return bernoulli_encode(pixels, self.steps, seed=self.seed, indices=indices + split_offset, epoch=epoch,
                                fixed=self.fixed)


def run_epoch(model: SpikingMLP, pixels: torch.Tensor, labels: torch.Tensor, *, encoder: Encoder, epoch: int,
              batch_size: int, loss_fn: SpikeCountLoss, optimizer: torch.optim.Optimizer | None = None,
              boosting: BoostingWeights | None = None, regularizer: Regularizer | None = None,
              generator: torch.Generator | None = None, split_offset: int = 0) -> EpochStats:
    """Train (``optimizer`` given) or evaluate over ``pixels (n, N)``; returns mean loss, accuracy and activity.

    ``split_offset`` keeps encoder keys of different splits apart (test index ``k`` → key ``offset + k``).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    n = pixels.shape[0]
    train = optimizer is not None
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    stats = EpochStats()
    n_layers = len(model.layers)
    spike_sums = [0.0] * n_layers
    silent_sums = [0.0] * n_layers
    correct = 0
    start = time.perf_counter()
    model.train(train)
    for lo in range(0, n, batch_size):
        idx = order[lo:lo + batch_size]
        x = encoder(pixels[idx], idx, epoch, split_offset)
        y = labels[idx]
        with torch.set_grad_enabled(train):
            outs = model.forward_all(x, y if train else None)
            counts = outs[-1].sum(1)
            weights = boosting(idx) if (train and boosting is not None) else None
            loss = loss_fn(counts, y, weights)
            total = loss
            if train and regularizer is not None:
                reg = regularizer(model)
                if reg is not None:
                    total = loss + reg
        pred = predict(counts.detach())
        hit = pred == y
        if train:
            if boosting is not None:
                boosting.record(idx, y, hit)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
        correct += int(hit.sum())
        stats.loss += float(loss.detach()) * len(idx)
        stats.silent_outputs += int((counts.sum(1) == 0).sum())
        for k, s in enumerate(outs):
            c = s.detach().sum(1)
            spike_sums[k] += float(c.sum()) / (s.shape[1] * s.shape[2])
            silent_sums[k] += float((c == 0).to(torch.float32).mean(1).sum())
    if train and boosting is not None:
        boosting.end_epoch()
    stats.samples = n
    stats.seconds = time.perf_counter() - start
    stats.loss /= max(n, 1)
    stats.accuracy = correct / max(n, 1)
    stats.firing_rates = [s / max(n, 1) for s in spike_sums]
    stats.silent_fraction = [s / max(n, 1) for s in silent_sums]
    return stats
