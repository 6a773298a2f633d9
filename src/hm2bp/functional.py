"""HM2-BP as a custom autograd rule for a spiking fully-connected layer (docs/algorithm.md §4–§6, §13).

Forward: input currents for all T in one GEMM, then the LIF scan (or, with the compiled kernels on CPUs, the fused
layer of :mod:`hm2bp.ops`: event-driven currents inside the scan). Backward receives ``∂L/∂s`` of a loss that depends
on spike *counts*, so ``δ_i = mean_t ∂L/∂s_i[t] = ∂L/∂o_i``; with ``g_i = δ_i/ν`` it returns

* weight gradient  ``∂L/∂w_ij = Σ_b g_i (1 + S_i) Λ_i ê_ij`` with ``ê_ij = e_ij`` (or ``silent_post_psp`` when
  ``o_i = 0 < o_j``), side effect ``S_i = (1/ν) Σ_l w_il ρ_il`` (``ρ_il = e_il/o_i``, or ``silent_post_rho`` when
  ``o_i = 0``) and lateral factor ``Λ_i`` (output layer only);
* error to the layer below ``δ_j = Σ_i g_i w_ij r_ij`` with effect ratio ``r_ij = e_ij/o_j`` (or
  ``silent_effect_ratio`` when ``o_i = 0`` or ``o_j = 0``), broadcast over time.

Every sum over ``(i, j)`` pairs is a contraction of the event matrix ``A`` and trace ``X`` of :mod:`hm2bp.spsp`,
computed by :func:`hm2bp.ops.linear_backward` with the kernels the backend picks (:mod:`hm2bp.backend`); no
``(B, N_out, N_in)`` tensor is formed, and memory stays ``O(B·T·N)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hm2bp import backend, ops
from hm2bp.bptt import BPTTRule
from hm2bp.neuron import LIFParams
from hm2bp.spsp import CONVENTIONS, PSP_WINDOW_TAUS, Convention, PSPKernel, spike_sums
from hm2bp.workspace import BufferPool

# Provenance of the defaults: docs/algorithm.md §4–§5 [CODE]; each is a flag so it can be ablated
# (docs/algorithm.md P3).
SILENT_POST_PSP = 0.1  # e_ij used when o_i = 0 < o_j (`common/cuBase.cu:77-78`)
SILENT_POST_RHO = 0.5  # ρ in the side effect when o_i = 0, summed over all inputs ("se=0.5"; `Spiking.cu:1615`)
SILENT_EFFECT_RATIO = 1.0  # r_ij when o_i = 0 or o_j = 0 (`Spiking.cu:661-671`)
# Our departure (docs/algorithm.md P4): the authors never clip the lateral factor's denominator 1 − w0²Σ…; we clamp
# it at 0.1 (Λ ≤ 10) and count how often that happens. Set to None for the authors' unclipped behaviour.
LATERAL_MIN_DENOMINATOR = 0.1
# Spiking pooling passes δ_p/k² down (`PoolingSpiking.cu:443-450, 504-510`, docs/algorithm.md P5); "threshold"
# uses δ_p/ν_pool, the chain rule of the linear layer (the two agree when ν_pool = k², as for the paper's pool2).
POOL_ERROR_SCALES = ("window", "threshold")


@dataclass(frozen=True)
class HM2BPRule:
    """Switches of the HM2-BP gradient rule; the defaults are the authors' behaviour (except the Λ clamp,
    docs/algorithm.md P4).

    Attributes:
        convention: S-PSP convention, ``"original"`` (authors' kernel) or ``"exact"`` (matches the forward pass).
        psp_window_taus: original convention's look-back window in units of τm (authors: 4); None: no window.
        effect_ratio: propagate errors with ``w·e/o_pre`` (authors' ``EFFECT_RATIO``); False: plain ``w``.
        side_effect: multiply weight gradients by ``(1 + S_i)``.
        silent_post_psp: ``e_ij`` used in the weight gradient when the post neuron is silent and the pre is not.
        silent_post_rho: ``ρ`` used in the side effect when the post neuron is silent.
        silent_effect_ratio: ``r_ij`` used when either neuron is silent.
        silent_target_patch: give a silent target output neuron regular spikes every ⌊T/y⁺⌋ steps before the
            S-PSPs are computed (`Spiking.cu:1438-1463`).
        lateral_factor: scale output-layer weight gradients by ``Λ_i`` when lateral inhibition is on.
        lateral_min_denominator: clamp of Λ's denominator (None: unclipped, as the authors).
        pool_error_scale: spiking pooling divides the error it passes down by ``"window"`` (k², authors) or
            ``"threshold"`` (ν_pool, chain rule).
    """

    convention: Convention = "original"
    psp_window_taus: float | None = PSP_WINDOW_TAUS
    effect_ratio: bool = True
    side_effect: bool = True
    silent_post_psp: float = SILENT_POST_PSP
    silent_post_rho: float = SILENT_POST_RHO
    silent_effect_ratio: float = SILENT_EFFECT_RATIO
    silent_target_patch: bool = True
    lateral_factor: bool = True
    lateral_min_denominator: float | None = LATERAL_MIN_DENOMINATOR
    pool_error_scale: str = "window"

    def __post_init__(self) -> None:
        if self.pool_error_scale not in POOL_ERROR_SCALES:
            raise ValueError(f"rule.pool_error_scale={self.pool_error_scale!r}; valid choices: "
                             f"{list(POOL_ERROR_SCALES)}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"rule.convention={self.convention!r}; valid choices: {list(CONVENTIONS)}")
        if self.psp_window_taus is not None and not self.psp_window_taus > 0:
            raise ValueError(f"rule.psp_window_taus must be > 0 or None, got {self.psp_window_taus!r}")
        for name in ("silent_post_psp", "silent_post_rho", "silent_effect_ratio"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"rule.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lateral_min_denominator is not None and not 0 < self.lateral_min_denominator <= 1:
            raise ValueError(
                f"rule.lateral_min_denominator must be in (0, 1] or None, got {self.lateral_min_denominator!r}")


@dataclass
class LayerStats:
    """Counters a layer accumulates across steps (read and reset by the training loop)."""

    # output neurons whose Λ denominator hit the clamp: a 0-d tensor on the device once counted (no host read)
    lateral_clamped: int | torch.Tensor = 0


@dataclass
class LayerSetup:
    """Everything about a layer that the autograd rule needs besides tensors."""

    lif: LIFParams
    rule: HM2BPRule | BPTTRule  # BPTT layers use lif, rule and lateral_w0 only
    lateral_w0: float = 0.0
    is_output: bool = False
    target_count: int = 35
    stats: LayerStats = field(default_factory=LayerStats)
    buffers: BufferPool = field(default_factory=lambda: BufferPool(4), repr=False, compare=False)

    @property
    def kernel(self) -> PSPKernel:
        return PSPKernel.for_layer(self.lif.tau_m, self.lif.tau_s, self.lif.t_ref, self.rule.convention,
                                   self.rule.psp_window_taus)


def patch_silent_target(post: torch.Tensor, labels: torch.Tensor, target_count: int) -> torch.Tensor:
    """Give each sample's silent label neuron regular spikes at ``k·⌊T/y⁺⌋``, ``k ≥ 1`` (docs/algorithm.md §5).

    ``post`` is time-major ``(T, B, N)``; returns a patched copy, or ``post`` itself when no target is silent.
    """
    T, B, _ = post.shape
    index = labels.view(1, B, 1).expand(T, B, 1)
    target = post.gather(2, index)  # (T, B, 1): each sample's label train
    silent = target.sum(0) == 0
    if backend.host_reads_allowed(post) and not bool(silent.any()):  # (Triton path: no look at values, same ops)
        return post
    return post.clone().scatter_(2, index, torch.where(silent, _regular_train(T, target_count, post), target))


_REGULAR: dict[tuple, torch.Tensor] = {}


def _regular_train(steps: int, target_count: int, like: torch.Tensor) -> torch.Tensor:
    """``(T, 1, 1)`` spikes at ``k·⌊T/y⁺⌋``, ``k ≥ 1``, made once per (T, y⁺, dtype, device): no per-step launches,
    and no tensor from host data in a warm step."""
    key = (steps, target_count, like.dtype, like.device)
    if key not in _REGULAR:
        period = steps // target_count
        regular = torch.zeros(steps, 1, 1, dtype=like.dtype, device=like.device)
        regular[period::period] = 1
        _REGULAR[key] = regular
    return _REGULAR[key]


_ONES: dict[tuple, torch.Tensor] = {}


def _one(like: torch.Tensor) -> torch.Tensor:
    """A 0-d 1 on ``like``'s device, made once (a Python 1 would be a tensor from host data in every step)."""
    key = (like.dtype, like.device)
    if key not in _ONES:
        _ONES[key] = torch.ones((), dtype=like.dtype, device=like.device)
    return _ONES[key]


def lateral_factor(post: torch.Tensor, labels: torch.Tensor | None, setup: LayerSetup,
                   patched: torch.Tensor | None = None) -> torch.Tensor:
    """``Λ_i = 1/(1 − w0² Σ_{l≠i} d_i d_l r_{l←i} r_{i←l})`` (docs/algorithm.md §4, §13) from the unpatched output
    trains.

    ``post`` is time-major ``(T, B, N)``. ``d_x = 1/ν`` if ``o_x > 0`` or ``x`` is the label, else 0;
    ``r_{l←i} = e_{l|i}/o_i`` (S-PSP of output ``i`` onto output ``l``), 1 if either count is 0. The denominator is
    clamped at ``rule.lateral_min_denominator`` and the clamp hits are counted in ``setup.stats``. ``patched``: the
    trains after :func:`patch_silent_target`, whose event side the kernels may share with the contraction (every pair
    of a silent neuron has ``r = 1`` whichever trains are read).
    """
    o = spike_sums(post)
    e = ops.self_spsp(post, setup.kernel, patched)  # [b, l (post), i (pre)]
    fired = o > 0
    r = torch.where(fired[:, :, None] & fired[:, None, :], e / o[:, None, :].clamp(min=1), 1.0)
    active = fired if labels is None else fired.scatter(1, labels.view(-1, 1), True)
    d = active.to(post.dtype)  # d·ν ∈ {0, 1}; the 1/ν² goes into the constant below
    pair = r * r.transpose(1, 2)  # r_{l←i} r_{i←l}
    pair.diagonal(dim1=1, dim2=2).zero_()  # l ≠ i
    reach = torch.bmm(d.unsqueeze(1), pair).squeeze(1)  # Σ_l d_l r_{l←i} r_{i←l}
    denom = torch.addcmul(_one(post), d, reach, value=-(setup.lateral_w0 / setup.lif.threshold) ** 2)
    floor = setup.rule.lateral_min_denominator
    if floor is not None:
        setup.stats.lateral_clamped += (denom < floor).sum()  # kept on the device: the epoch's meter reads it
        denom = denom.clamp(min=floor)
    return 1.0 / denom



class HM2BPLinearFunction(torch.autograd.Function):
    """Spiking linear layer: forward = GEMM + LIF scan, backward = HM2-BP (see the module docstring)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None,
                setup: LayerSetup, training: bool) -> torch.Tensor:
        pre_tm = pre.transpose(0, 1).contiguous()  # free when pre is itself a view of a time-major tensor
        post_tm, currents = ops.linear_forward(pre_tm, weight, setup.lif, setup.lateral_w0, setup.buffers, training,
                                               keep_currents=training and setup.rule.side_effect)
        ctx.setup = setup
        ctx.save_for_backward(pre_tm, weight, post_tm, labels, currents)
        return post_tm.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_post: torch.Tensor):
        pre, weight, post, labels, currents = ctx.saved_tensors  # time-major (T, B, N)
        setup: LayerSetup = ctx.setup
        rule = setup.rule
        kernel = setup.kernel
        nu = setup.lif.threshold
        T, B, n_in = pre.shape
        g = grad_post.mean(1) / nu  # δ/ν, δ = ∂L/∂o

        patched = post
        if setup.is_output and rule.silent_target_patch and labels is not None:
            patched = patch_silent_target(post, labels, setup.target_count)
        lam = None
        if setup.is_output and rule.lateral_factor and setup.lateral_w0 > 0:
            lam = lateral_factor(post, labels, setup, patched)  # from the unpatched trains (docs/algorithm.md §13)

        rho_silent = rule.silent_post_rho * weight.sum(1) if rule.side_effect else None
        need_below = ctx.needs_input_grad[0] and rule.effect_ratio
        coef, grad_w, gwe, o, o_pre = ops.linear_backward(pre, patched, weight, g, lam, rho_silent, nu, need_below,
                                                          kernel, setup.buffers, currents, setup.lif.tau_s)
        fired = o > 0
        if rule.silent_post_psp:  # ê = silent_post_psp where o_i = 0 < o_j (counts are whole numbers: min(o, 1))
            grad_w.addmm_(coef.masked_fill(fired, 0).t(), o_pre.clamp(max=1), alpha=rule.silent_post_psp)

        grad_pre = None
        if ctx.needs_input_grad[0]:
            if gwe is not None:  # Σ_i g_i w_ij e_ij
                pre_fired = o_pre > 0
                delta = torch.where(pre_fired, gwe / o_pre.clamp(min=1), 0.0)
                if rule.silent_effect_ratio:
                    # pairs with a silent neuron use r = silent_effect_ratio
                    silent_pairs = g @ weight - pre_fired * ((g * fired) @ weight)
                    delta = delta + rule.silent_effect_ratio * silent_pairs
            else:
                delta = g @ weight
            grad_pre = delta.unsqueeze(1).expand(B, T, n_in)
        return grad_pre, grad_w, None, None, None


def hm2bp_linear(pre: torch.Tensor, weight: torch.Tensor, setup: LayerSetup,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
    """Spiking linear layer with the HM2-BP backward; ``pre (B, T, N_in)`` 0/1, ``weight (N_out, N_in)``."""
    training = torch.is_grad_enabled() and (weight.requires_grad or pre.requires_grad)
    return HM2BPLinearFunction.apply(pre, weight, labels, setup, training)
