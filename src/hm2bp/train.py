"""One training step and epoch for spiking networks (MLP or CNN), shared by :func:`fit` (plain PyTorch) and the
Lightning app (:mod:`hm2bp.app.module`).

The step is what the authors' loop does per sample (docs/algorithm.md §3, §7), vectorised over a batch: forward with
labels → count loss (boosted) + regulariser → the caller's backward and optimizer step; the training prediction is
taken from the forward pass before the update, as the authors record it. :class:`~hm2bp.metrics.EpochMeter` sums
what the steps measured and :func:`~hm2bp.metrics.history_row` makes the epoch's history row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from hm2bp.data.order import sampler
from hm2bp.data.static import StaticSplit
from hm2bp.layers import SpikingNet
from hm2bp.loss import BoostingWeights, Regularizer, SpikeCountLoss, predict
from hm2bp.metrics import EpochMeter, history_row, peak_memory_mib


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


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """The authors' Adam (β = (0.9, 0.999), ε = 1e-8, docs/algorithm.md §7). On GPUs the fused kernel: one launch for
    all parameters and step counters on the device (same update up to rounding)."""
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def start_epoch(optimizer: torch.optim.Optimizer, lr: float, schedule: Callable[[int], float], epoch: int,
                boosting: BoostingWeights | None = None) -> float:
    """Before epoch ``epoch``: apply the previous epoch's boosting record and set every group's rate to
    ``lr · schedule(epoch)`` (a function of the epoch alone, so resumed runs follow it); returns that rate."""
    if boosting is not None:
        boosting.end_epoch()
    rate = lr * schedule(epoch)
    for group in optimizer.param_groups:
        group["lr"] = rate
    return rate


@dataclass
class StepResult:
    """What one step computed, all on the model's device (nothing read back on the host)."""

    outs: list[torch.Tensor]  # every layer's spike trains (B, T, N_k)
    loss: torch.Tensor  # the count loss (boosting-weighted in training)
    objective: torch.Tensor  # loss + regulariser: what backward differentiates
    pred: torch.Tensor  # (B,) predicted classes


def step(model: SpikingNet, spikes: torch.Tensor, labels: torch.Tensor, loss_fn: SpikeCountLoss, *,
         train: bool, indices: torch.Tensor | None = None, boosting: BoostingWeights | None = None,
         regularizer: Regularizer | None = None) -> StepResult:
    """One batch: forward (with ``labels`` when training: silent-target patch, Λ), count loss, prediction.

    Training also weights the loss by ``boosting(indices)``, adds ``regularizer(model)`` to the objective and records
    the predictions for the boosting update; evaluation uses neither. The caller runs ``objective.backward()`` and
    the optimizer step.
    """
    outs = model.forward_all(spikes, labels if train else None)
    counts = outs[-1].sum(1)
    weights = boosting(indices).to(counts) if (train and boosting is not None) else None
    loss = loss_fn(counts, labels, weights)
    objective = loss
    if train and regularizer is not None:
        reg = regularizer(model)
        if reg is not None:
            objective = loss + reg
    pred = predict(counts.detach())
    if train and boosting is not None:
        boosting.record(indices, labels, pred == labels)
    return StepResult(outs, loss, objective, pred)


def take_lateral_clamped(model: SpikingNet) -> int | torch.Tensor:
    """The output layers' Λ-clamp hits counted since the last call (the counters are reset)."""
    total: int | torch.Tensor = 0
    for layer in model.layers:
        stats = layer.setup.stats
        total = total + stats.lateral_clamped
        stats.lateral_clamped = 0
    return total


def run_epoch(model: SpikingNet, split: StaticSplit, order: Sequence[int], *, epoch: int, batch_size: int,
              loss_fn: SpikeCountLoss, optimizer: torch.optim.Optimizer | None = None,
              boosting: BoostingWeights | None = None, regularizer: Regularizer | None = None) -> dict:
    """Train (``optimizer`` given) or evaluate over ``split`` in ``order``; returns the pass's
    :meth:`EpochMeter.compute`."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    train = optimizer is not None
    order = torch.as_tensor(list(order), dtype=torch.long)
    meter = EpochMeter(len(model.layers), [spec.fan_out() for spec in model.specs])
    model.train(train)
    take_lateral_clamped(model)
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        x, y = split.spikes(idx, epoch), split.labels[idx]
        with torch.set_grad_enabled(train):
            r = step(model, x, y, loss_fn, train=train, indices=idx, boosting=boosting, regularizer=regularizer)
        if train:
            optimizer.zero_grad(set_to_none=True)
            r.objective.backward()
            optimizer.step()
        meter.update(r.outs, r.loss, r.pred, y, take_lateral_clamped(model), inputs=x)
    return meter.compute()


def fit(model: SpikingNet, train: StaticSplit, test: StaticSplit, *, epochs: int, batch_size: int, lr: float,
        seed: int = 0, boosting: bool = True, regularizer: Regularizer | None = None,
        loss_fn: SpikeCountLoss | None = None, schedule: Callable[[int], float] = inverse_sqrt_lr,
        shuffle: str = "permutation", log: bool = False) -> list[dict[str, float]]:
    """Train with Adam and the ``1/√max(e, 1)`` schedule (or ``schedule``: epoch → multiplier of ``lr``),
    evaluating on ``test`` after every epoch (docs/algorithm.md §7).

    The training order is ``shuffle`` (:mod:`hm2bp.data.order`) seeded by ``seed``; the encoders' seeds are part of
    the splits. Returns the per-epoch history (:func:`~hm2bp.metrics.history_row`, :func:`~hm2bp.metrics.summarize`),
    the same rows the app writes for the same settings.
    """
    if epochs <= 0 or not lr > 0:
        raise ValueError(f"need epochs > 0 and lr > 0, got {epochs}, {lr}")
    loss_fn = loss_fn or SpikeCountLoss()
    optimizer = make_optimizer(model.parameters(), lr)
    device = next(model.parameters(), torch.empty(0)).device
    boost = BoostingWeights(len(train)) if boosting else None
    orders = sampler(shuffle, len(train), seed)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        rate = start_epoch(optimizer, lr, schedule, epoch, boost)
        orders.set_epoch(epoch)
        start = time.perf_counter()
        tr = run_epoch(model, train, list(orders), epoch=epoch, batch_size=batch_size, loss_fn=loss_fn,
                       optimizer=optimizer, boosting=boost, regularizer=regularizer)
        seconds = time.perf_counter() - start
        te = run_epoch(model, test, range(len(test)), epoch=epoch, batch_size=batch_size, loss_fn=loss_fn)
        history.append(history_row(epoch, tr, te, seconds, rate, peak_memory_mib(device)))
        if log:
            print(f"epoch {epoch:3d}  train acc {tr['acc']:.4f}  test acc {te['acc']:.4f}  "
                  f"loss {tr['loss']:.2f}  {tr['samples'] / seconds:.0f} samples/s", flush=True)
    return history
