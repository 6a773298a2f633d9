"""Spike-count loss, prediction rule, boosting weights and the weight regulariser (docs/algorithm.md §3, §7)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Provenance: docs/algorithm.md §3 [CODE configs, all datasets except TI46].
DESIRED_LEVEL = 35  # y⁺: spikes wanted from the label neuron
UNDESIRED_LEVEL = 5  # y⁻: spikes wanted from every other output neuron
MARGIN = 5  # dead zone: no error while |o − y| ≤ M
BOOST_RATE = 20.0  # boosting: misclassified a_n ← a_n·exp(ε_c/20) (`net_spiking.cu:314-372`)


def count_targets(labels: torch.Tensor, n_classes: int, desired: float = DESIRED_LEVEL,
                  undesired: float = UNDESIRED_LEVEL, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Target counts ``y (B, C)``: ``desired`` at the label, ``undesired`` elsewhere."""
    y = torch.full((labels.shape[0], n_classes), float(undesired), dtype=dtype or torch.get_default_dtype(),
                   device=labels.device)
    return y.scatter_(1, labels.view(-1, 1), float(desired))  # a scalar, not a host tensor


class SpikeCountLoss(torch.nn.Module):
    """``L = mean_b a_b · ½ Σ_i (o_bi − y_bi)² · 1[|o_bi − y_bi| > M]``, so that ``∂L/∂o = a·(o − y)·1[·]/B``.

    ``∂L/∂o`` is the authors' output error δ (docs/algorithm.md §3: the plain difference with a dead zone, times the
    boosting
    weight). The authors' E has no ½; we keep it so the gradient is δ itself. The batch mean makes a batch of one
    equal the authors' per-sample update.
    """

    def __init__(self, desired: float = DESIRED_LEVEL, undesired: float = UNDESIRED_LEVEL,
                 margin: float = MARGIN) -> None:
        super().__init__()
        if not (desired >= 0 and undesired >= 0 and margin >= 0):
            raise ValueError(f"targets and margin must be >= 0, got {desired}, {undesired}, {margin}")
        self.desired, self.undesired, self.margin = float(desired), float(undesired), float(margin)

    def forward(self, counts: torch.Tensor, labels: torch.Tensor,
                sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        y = count_targets(labels, counts.shape[1], self.desired, self.undesired, counts.dtype)
        diff = counts - y
        outside = (diff.detach().abs() > self.margin).to(counts.dtype)
        per_sample = 0.5 * (diff.square() * outside).sum(1)
        if sample_weights is not None:
            per_sample = per_sample * sample_weights.to(counts.dtype)
        return per_sample.mean()


def predict(counts: torch.Tensor) -> torch.Tensor:
    """Argmax of output counts; ties and all-silent outputs go to the lowest class index (docs/algorithm.md §3, P11)."""
    return counts.argmax(dim=1)  # torch.argmax returns the first maximal index


def silent_outputs(counts: torch.Tensor) -> torch.Tensor:
    """Number of samples whose output layer did not spike at all (a 0-d tensor on ``counts``' device)."""
    return (counts.sum(1) == 0).sum()


class BoostingWeights:
    """Per-sample boosting weights ``a_n`` (docs/algorithm.md §7, ``BOOST_METHOD``).

    After each epoch, per class ``c``: ``ε_c = Σ_{n∈c, wrong} a_n / Σ_{n∈c} a_n`` and every misclassified ``n`` gets
    ``a_n ← a_n·exp(ε_c/rate)``. Never renormalised.
    """

    def __init__(self, n_samples: int, rate: float = BOOST_RATE) -> None:
        if n_samples <= 0 or not rate > 0:
            raise ValueError(f"need n_samples > 0 and rate > 0, got {n_samples}, {rate}")
        self.rate = rate
        self.weights = torch.ones(n_samples, dtype=torch.float64)
        self._wrong = torch.zeros(n_samples, dtype=torch.bool)
        self._labels = torch.full((n_samples,), -1, dtype=torch.long)

    def to(self, device: torch.device | str) -> BoostingWeights:
        """Keep weights and record on ``device`` (the training device: no host copies in a step)."""
        self.weights, self._wrong, self._labels = (t.to(device) for t in (self.weights, self._wrong, self._labels))
        return self

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.weights[indices.to(self.weights.device)]

    def record(self, indices: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor) -> None:
        """Remember the training prediction of these samples (made before their update)."""
        dev = self.weights.device
        idx = indices.to(dev)
        self._labels[idx] = labels.to(dev)
        self._wrong[idx] = ~correct.to(dev)

    def end_epoch(self) -> None:
        """Apply the per-class boosting update and clear the record."""
        seen = self._labels >= 0
        for c in self._labels[seen].unique().tolist():
            members = seen & (self._labels == c)
            wrong = members & self._wrong
            eps = float(self.weights[wrong].sum() / self.weights[members].sum())
            self.weights[wrong] *= math.exp(eps / self.rate)
        self._wrong.zero_()
        self._labels.fill_(-1)

    def merge(self, reduce_max: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Combine the current epoch's records of processes that trained disjoint shards (DDP): a sample is seen
        if any process saw it, and wrong if it was wrong anywhere; ``reduce_max`` is the element-wise maximum over
        the processes."""
        self._labels = reduce_max(self._labels)
        self._wrong = reduce_max(self._wrong.to(torch.int64)) > 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights and the not yet applied record of the current epoch (so a resumed run continues exactly)."""
        return {"weights": self.weights.clone(), "wrong": self._wrong.clone(), "labels": self._labels.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["weights"].shape != self.weights.shape:
            raise ValueError(f"boosting state has {state['weights'].numel()} samples, expected {self.weights.numel()}")
        dev = self.weights.device
        self.weights = state["weights"].to(dev, copy=True)
        self._wrong = state["wrong"].to(dev, copy=True)
        self._labels = state["labels"].to(dev, copy=True)


# Regulariser settings per config (docs/algorithm.md §7): MNIST λ=10, β=0.04; N-MNIST λ=10, β=0.01; CNN λ=0; L =
# WEIGHT_LIMIT = 8.
REG_LAMBDA = 10.0
REG_BETA = 0.04
REG_LIMIT = 8.0


def weight_regularizer(weight: torch.Tensor, lam: float = REG_LAMBDA, beta: float = REG_BETA,
                       limit: float = REG_LIMIT) -> torch.Tensor:
    """``R(W) = Σ_i (λ·N_in·L/2)·exp(β(Q_i − 1))`` with ``Q_i = mean_j (w_ij/L)²`` (row ``i`` = one output neuron).

    Its gradient is the authors' ``R'(w_ij) = λβ (w_ij/L) exp(β(Q_i − 1))`` (`Spiking.cu:390-477`). For conv weights
    ``(C_out, …)`` the rows are output maps.
    """
    if not (lam >= 0 and beta >= 0 and limit > 0):
        raise ValueError(f"need lambda >= 0, beta >= 0, limit > 0, got {lam}, {beta}, {limit}")
    w = weight.flatten(1)
    q = (w / limit).square().mean(1)
    return (lam * w.shape[1] * limit / 2.0 * torch.exp(beta * (q - 1.0))).sum()


@dataclass(frozen=True)
class Regularizer:
    """The authors' exponential weight regulariser, ``Σ_layers R(W)`` (:func:`weight_regularizer`), added to the loss
    of every training step; ``lam = 0`` disables it."""

    lam: float = REG_LAMBDA
    beta: float = REG_BETA
    limit: float = REG_LIMIT

    def __post_init__(self) -> None:
        if not (self.lam >= 0 and self.beta >= 0 and self.limit > 0):
            raise ValueError(f"regularizer needs lam >= 0, beta >= 0, limit > 0, got {self.lam}, {self.beta}, "
                             f"{self.limit}")

    def __call__(self, model: torch.nn.Module) -> torch.Tensor | None:
        """``R`` summed over the model's weights, or None when disabled."""
        if self.lam == 0:
            return None
        return sum(weight_regularizer(p, self.lam, self.beta, self.limit)
                   for name, p in model.named_parameters() if name.endswith("weight"))
