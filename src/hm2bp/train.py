"""A plain-PyTorch training step and epoch for spiking networks (MLP or CNN) on static images (no Lightning needed).

The step is what the authors' loop does per sample (docs/algorithm.md §3, §7), vectorised over a batch: encode →
forward with
labels → count loss (boosted) + regulariser → HM2-BP backward → optimizer step; the training prediction is taken
from the forward pass before the update, as the authors record it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hm2bp.augment import Augmentation
from hm2bp.encoding import bernoulli_encode
from hm2bp.layers import SpikingNet
from hm2bp.loss import (
    REG_BETA,
    REG_LAMBDA,
    REG_LIMIT,
    BoostingWeights,
    SpikeCountLoss,
    predict,
    weight_regularizer,
)
from hm2bp.neuron import mark_spikes
from hm2bp.spsp import spike_sums


def inverse_sqrt_lr(epoch: int) -> float:
    """Learning-rate multiplier ``1/√max(e, 1)`` of the MLP configs (docs/algorithm.md §7): epochs 0 and 1 use the base
    rate."""
    return 1.0 / math.sqrt(max(epoch, 1))


def inverse_sqrt_plus_one_lr(epoch: int) -> float:
    """Learning-rate multiplier ``1/√(e + 1)``, the variant the authors' CNN log shows (docs/algorithm.md §7)."""
    return 1.0 / math.sqrt(epoch + 1)


# Learning-rate schedules by config name: epoch → multiplier of the base rate.
LR_SCHEDULES = {"inverse_sqrt": inverse_sqrt_lr, "inverse_sqrt_plus_one": inverse_sqrt_plus_one_lr,
                "constant": lambda epoch: 1.0}


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
    """Bernoulli encoding settings of a run (see :func:`hm2bp.encoding.bernoulli_encode`)."""

    steps: int
    seed: int = 0
    fixed: bool = True

    def __call__(self, pixels: torch.Tensor, keys: torch.Tensor, epoch: int) -> torch.Tensor:
        return bernoulli_encode(pixels, self.steps, seed=self.seed, indices=keys, epoch=epoch, fixed=self.fixed)


# Fixed trains of a split are kept as bytes when they fit: digits' 1,437 training images take 37 MB at T = 400.
TRAIN_CACHE_BYTES = 1 << 30


class StaticSplit:
    """One split of a static-image dataset and its spike encoding.

    Args:
        pixels: ``(n, N)`` intensities in [0, 255]; labels: ``(n,)`` class indices.
        encoder: how images become spikes.
        key_offset: added to sample indices to form encoder keys, so different splits draw different trains.
        cache_bytes: with ``encoder.fixed``, trains are drawn once and kept (as bool) when they fit in this budget;
            otherwise they are re-derived from the hash for every batch (same values either way).
        augment: training-time augmentation of the images (the CNN's, docs/algorithm.md §2), with ``image_shape``
            ``(C, H, W)``: every use of a sample augments it afresh and encodes the result with fresh trains (keyed
            by the epoch).
    """

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, encoder: Encoder, key_offset: int = 0,
                 cache_bytes: int = TRAIN_CACHE_BYTES, augment: Augmentation | None = None,
                 image_shape: tuple[int, ...] | None = None) -> None:
        if pixels.dim() != 2 or labels.shape != pixels.shape[:1]:
            raise ValueError(f"need pixels (n, N) and labels (n,), got {tuple(pixels.shape)}, {tuple(labels.shape)}")
        if augment is not None and (image_shape is None or len(image_shape) != 3
                                    or math.prod(image_shape) != pixels.shape[1]):
            raise ValueError(f"augmentation needs image_shape (C, H, W) matching {pixels.shape[1]} inputs, "
                             f"got {image_shape}")
        self.pixels, self.labels, self.encoder, self.key_offset = pixels, labels, encoder, key_offset
        self.augment, self.image_shape = augment, image_shape
        self._trains: torch.Tensor | None = None
        n, n_in = pixels.shape
        if augment is None and encoder.fixed and n * encoder.steps * n_in <= cache_bytes:
            self._trains = torch.empty(encoder.steps, n, n_in, dtype=torch.bool)
            for lo in range(0, n, 256):
                idx = torch.arange(lo, min(n, lo + 256))
                self._trains[:, lo:lo + len(idx)] = encoder(pixels[idx], idx + key_offset, 0).transpose(0, 1) > 0

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def spikes(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """``(B, T, N)`` spike trains (a view of time-major storage) of the samples ``idx``."""
        if self._trains is not None:
            return mark_spikes(self._trains[:, idx].to(torch.get_default_dtype()).transpose(0, 1))
        return self.encode(self.pixels[idx], idx, epoch)

    def encode(self, pixels: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """The trains of :meth:`spikes` from the samples' ``pixels (B, N)`` on any device (no cache): what a GPU
        run computes on the device from the pixels the data loader sends (same spikes as on the CPU)."""
        keys = idx + self.key_offset
        if self.augment is not None:
            assert self.image_shape is not None
            images = self.augment(pixels.view(len(idx), *self.image_shape), keys, epoch)
            fresh = Encoder(self.encoder.steps, self.encoder.seed, fixed=False)
            return fresh(images.reshape(len(idx), -1).clamp(0, 255), keys, epoch)
        return self.encoder(pixels, keys, epoch)


def run_epoch(model: SpikingNet, split: StaticSplit, *, epoch: int, batch_size: int, loss_fn: SpikeCountLoss,
              optimizer: torch.optim.Optimizer | None = None, boosting: BoostingWeights | None = None,
              regularizer: Regularizer | None = None, generator: torch.Generator | None = None) -> EpochStats:
    """Train (``optimizer`` given) or evaluate over one split; returns mean loss, accuracy and activity."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    n = len(split)
    train = optimizer is not None
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    stats = EpochStats()
    n_layers = len(model.layers)
    rate_sums = [0.0] * n_layers
    silent_sums = [0.0] * n_layers
    correct = 0
    start = time.perf_counter()
    model.train(train)
    for lo in range(0, n, batch_size):
        idx = order[lo:lo + batch_size]
        x = split.spikes(idx, epoch)
        y = split.labels[idx]
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
            c = spike_sums(s.detach().transpose(0, 1))  # (B, N), from the backward's spike index if it has one
            rate_sums[k] += float(c.sum()) / (s.shape[1] * s.shape[2])
            silent_sums[k] += float((c == 0).to(torch.float32).mean(1).sum())
    if train and boosting is not None:
        boosting.end_epoch()
    stats.samples = n
    stats.seconds = time.perf_counter() - start
    stats.loss /= max(n, 1)
    stats.accuracy = correct / max(n, 1)
    stats.firing_rates = [s / max(n, 1) for s in rate_sums]
    stats.silent_fraction = [s / max(n, 1) for s in silent_sums]
    return stats


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Final, best (max over epochs: the paper's "best", selected on the test set, docs/algorithm.md P6) and
    mean-of-last-10 test
    accuracy of a per-epoch history, with training throughput."""
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


def fit(model: SpikingNet, train: StaticSplit, test: StaticSplit, *, epochs: int, batch_size: int, lr: float,
        seed: int = 0, boosting: bool = True, regularizer: Regularizer | None = None,
        loss_fn: SpikeCountLoss | None = None, schedule: Callable[[int], float] = inverse_sqrt_lr,
        log: bool = False) -> list[dict[str, float]]:
    """Train with Adam and the ``1/√max(e, 1)`` schedule (or ``schedule``: epoch → multiplier of ``lr``),
    evaluating on ``test`` after every epoch (docs/algorithm.md §7).

    The shuffle order comes from ``seed``; the encoders' seeds are part of the splits. Returns the per-epoch
    history (see :func:`summarize`).
    """
    if epochs <= 0 or not lr > 0:
        raise ValueError(f"need epochs > 0 and lr > 0, got {epochs}, {lr}")
    loss_fn = loss_fn or SpikeCountLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    boost = BoostingWeights(len(train)) if boosting else None
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        tr = run_epoch(model, train, epoch=epoch, batch_size=batch_size, loss_fn=loss_fn, optimizer=optimizer,
                       boosting=boost, regularizer=regularizer, generator=generator)
        te = run_epoch(model, test, epoch=epoch, batch_size=batch_size, loss_fn=loss_fn)
        scheduler.step()
        row = {"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.accuracy, "test_loss": te.loss,
               "test_acc": te.accuracy, "train_seconds": tr.seconds, "train_samples": tr.samples,
               "test_silent_outputs": te.silent_outputs}
        row.update({f"rate_layer{k}": r for k, r in enumerate(tr.firing_rates)})
        row.update({f"silent_layer{k}": r for k, r in enumerate(tr.silent_fraction)})
        history.append(row)
        if log:
            print(f"epoch {epoch:3d}  train acc {tr.accuracy:.4f}  test acc {te.accuracy:.4f}  "
                  f"loss {tr.loss:.2f}  {tr.samples / tr.seconds:.0f} samples/s", flush=True)
    return history
