"""Backpropagation through time (BPTT) with a surrogate spike derivative, for the same LIF neurons as HM2-BP.

The forward pass is the scan of :mod:`hm2bp.neuron` (same spikes, bit for bit); only the gradient differs. Per step
``t = 1 .. T−1`` of the scan, with input currents ``I``, drive ``d_t = I[t−1]/τs``, lateral term ``L = w0/τs`` and
threshold ``θ``:

* ``c_t = (1 − 1/τs)·c_{t−1} + d_t − L·(Σ_m s_{t−1,m} − s_{t−1})``  (current synapse, lateral inhibition)
* ``u_t = (1 − 1/τm)·v_{t−1} + c_t``                                  (membrane before the refractory hold)
* ``v̂_t = u_t·(1 − h_t)``, ``h_t = Σ_{k=1}^{min(t_ref, t)} s_{t−k}``   (hold and reset; ``v̂_t = u_t`` if ``t_ref = 0``)
* ``s_t = H(v̂_t − θ)``;  ``v_t = v̂_t`` (``t_ref ≥ 1``: the hold resets it next step) or ``v̂_t·(1 − s_t)``
  (``t_ref = 0``).

BPTT differentiates this recursion with ``∂s_t/∂v̂_t := 1/(1 + slope·|v̂_t − θ|)²`` (the fast sigmoid). Where the
reset multiplies by ``1 − h_t`` (or ``1 − s_t``) its gradient flows only when ``BPTTRule.reset_grad`` is set.

:func:`bptt_scan` is the fast path (one custom autograd function, its backward one reverse-time recursion);
:func:`bptt_scan_reference` is the literal autograd-through-the-time-loop it is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hm2bp import ops
from hm2bp.neuron import LIFParams, lif_scan
from hm2bp.ops.torch_kernels import bptt_surrogate

# Provenance: snnTorch's defaults (`snntorch.surrogate.fast_sigmoid(slope=25)`; its neurons detach the reset term,
# `reset = self.spike_grad(mem - threshold).clone().detach()` in `SpikingNeuron.mem_reset`).
SURROGATE_SLOPE = 25.0


@dataclass(frozen=True)
class BPTTRule:
    """Train by BPTT with the fast-sigmoid surrogate instead of the HM2-BP rule.

    Attributes:
        slope: steepness ``k`` of the surrogate derivative ``1/(1 + k·|v − θ|)²`` (snnTorch's default 25).
        reset_grad: let gradient flow through the reset and refractory hold (snnTorch: no, the reset is detached).
    """

    slope: float = SURROGATE_SLOPE
    reset_grad: bool = False

    def __post_init__(self) -> None:
        if not self.slope > 0:
            raise ValueError(f"bptt.slope must be > 0, got {self.slope!r}")


class _BPTTScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, currents: torch.Tensor, params: LIFParams, lateral_w0: float, rule: BPTTRule) -> torch.Tensor:
        args = (1.0 / params.tau_s, *params.scan_args(lateral_w0))
        spikes, u = ops.bptt_forward(currents.detach(), *args)
        ctx.save_for_backward(spikes, u)
        ctx.args, ctx.rule = args, rule
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):
        spikes, u = ctx.saved_tensors
        rule: BPTTRule = ctx.rule
        return ops.bptt_backward(grad_spikes, spikes, u, *ctx.args, rule.slope, rule.reset_grad), None, None, None


def bptt_scan(currents: torch.Tensor, params: LIFParams, lateral_w0: float, rule: BPTTRule) -> torch.Tensor:
    """Spikes ``(T, B, N)`` of the LIF scan driven by time-major ``currents (T, B, N)`` (step ``t`` reads
    ``I[t−1]/τs``), differentiable by BPTT with ``rule``'s surrogate (see the module docstring)."""
    return _BPTTScan.apply(currents, params, lateral_w0, rule)


class _Heaviside(torch.autograd.Function):
    """``H(x)`` forward, the fast-sigmoid derivative backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * bptt_surrogate(x, ctx.slope), None


def bptt_scan_reference(currents: torch.Tensor, params: LIFParams, lateral_w0: float,
                        rule: BPTTRule) -> torch.Tensor:
    """:func:`bptt_scan` written literally from the module docstring's equations, one autograd node per operation
    and step (slow: the reference the fast path is tested against)."""
    fire_at, decay_m, decay_s, t_ref, lateral = params.scan_args(lateral_w0)
    spikes = [torch.zeros_like(currents[0])]
    c = v = torch.zeros_like(currents[0])
    for t in range(1, currents.shape[0]):
        prev = spikes[t - 1]
        c = decay_s * c + currents[t - 1] * (1.0 / params.tau_s) - lateral * (prev.sum(dim=-1, keepdim=True) - prev)
        u = decay_m * v + c
        if t_ref:
            h = sum(spikes[t - k] for k in range(1, min(t_ref, t) + 1))
            v_hat = u * (1.0 - (h if rule.reset_grad else h.detach()))
        else:
            v_hat = u
        s = _Heaviside.apply(v_hat - fire_at, rule.slope)
        v = v_hat if t_ref else v_hat * (1.0 - (s if rule.reset_grad else s.detach()))
        spikes.append(s)
    return torch.stack(spikes)


def bptt_layer(currents: torch.Tensor, params: LIFParams, lateral_w0: float, rule: BPTTRule) -> torch.Tensor:
    """A layer's spikes ``(B, T, ...)`` (a view of time-major storage, as every layer returns) from its time-major
    input currents ``I (T, B, ...)``: any differentiable function of the layer's input and weights (a GEMM, a
    convolution, a pooling sum), trained by BPTT."""
    T, B = currents.shape[:2]
    flat = currents.reshape(T, B, -1)
    if torch.is_grad_enabled() and currents.requires_grad:
        spikes = bptt_scan(flat, params, lateral_w0, rule)
    else:  # nothing to differentiate: the plain scan, the same spikes without recording the membrane
        spikes = lif_scan(flat.transpose(0, 1), params, lateral_w0).transpose(0, 1)
    return spikes.reshape(currents.shape).transpose(0, 1)
