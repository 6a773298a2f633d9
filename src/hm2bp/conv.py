"""HM2-BP for spiking convolution and spiking pooling layers (docs/algorithm.md §6), as custom autograd functions.

A conv layer is a linear layer whose weight matrix is sparse and shared, so its HM2-BP quantities are those of
:mod:`hm2bp.functional` restricted to the (output pixel ``p``, input pixel ``q``) pairs of each receptive field. The
backward pass forms these *local* S-PSPs ``e[b, p, m] = e_{p, q_m(p)}`` (``O(B·N_out·C·K²)`` numbers, never
``(B, N_out, N_in)``) by reading, at each post-synaptic event of :mod:`hm2bp.spsp`, the pre-synaptic traces of the
event's receptive field (:func:`hm2bp.ops.local_spsp`), and then applies docs/algorithm.md §6 pair by pair, vectorised:

* side effect ``S_p = (1/ν) Σ_m w_m ρ_pm`` and weight gradient ``∂L/∂w_m = Σ_{b, p} g_p ê_pm (1 + S_p)``, summed over
  the output pixels of the map (weight sharing), with ``g_p = δ_p/ν``;
* error below ``δ_q = Σ_{p ∋ q} g_p w_m r_pm``, summed over every field holding ``q`` (``F.fold``).

The pair-by-pair form lives in :func:`hm2bp.ops.conv_backward` / :func:`hm2bp.ops.pool_backward`, which on the
Triton path take the anticausal form instead, as linear layers do: with ``Y`` the post raster's anticausal traces and
``x`` the pre raster as ``T·B`` images, ``e_pm = Σ_s Y[s, p] x[s, q_m(p)]``, so every sum above is a convolution over
the ``T·B`` images (``Σ_m w_m e_pm = Σ_s Y·(x ⊛ W)``, ``Σ_{b,p} coef_p e_pm = conv2d_weight(x, coef·Y)``,
``Σ_{p ∋ q} g_p w_m e_pm = Σ_s x·conv2d_input(g·Y, W)``) and no local S-PSP is gathered.

Pooling neurons have one fixed input window (weight 1) each and the same local S-PSPs; they pass the error
``δ_q = (δ_p/k²)·r_pq`` down as the authors code it, or ``(δ_p/ν_pool)·r_pq`` (the chain rule of the linear layer),
per :attr:`HM2BPRule.pool_error_scale`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from hm2bp import ops
from hm2bp.functional import LayerSetup

# cuDNN runs float32 convolutions in TF32 by default (torch.backends.cudnn.allow_tf32, which
# torch.set_float32_matmul_precision does not cover): the currents would keep only 10 mantissa bits and the GPU's
# spikes would differ from the CPU's by more than rounding. Set True to trade that for speed.
CONV_TF32 = False


@contextlib.contextmanager
def _conv_precision() -> Iterator[None]:
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = CONV_TF32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


class HM2BPConv2dFunction(torch.autograd.Function):
    """Spiking conv layer ("valid" cross-correlation, stride 1, no bias): forward = conv over all (t, b) + LIF
    scan; backward = HM2-BP per docs/algorithm.md §6 (see the module docstring)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, weight: torch.Tensor, setup: LayerSetup) -> torch.Tensor:
        B, T, C, H, W = pre.shape
        c_out, _, K, _ = weight.shape
        out_shape = (c_out, H - K + 1, W - K + 1)
        pre_tm = pre.transpose(0, 1).contiguous()  # (T, B, C, H, W)
        with _conv_precision():
            currents = F.conv2d(pre_tm.view(T * B, C, H, W), weight / setup.lif.tau_s)
        # the side effect's Σ_m w_m e_pm reads the currents where the backward takes the anticausal form (Triton)
        post_tm, kept = ops.scan_currents(currents.view(T, B, -1), setup.lif, setup.buffers,
                                          keep=setup.rule.side_effect)
        ctx.setup, ctx.currents = setup, kept
        ctx.save_for_backward(pre_tm, weight, post_tm)
        return post_tm.view(T, B, *out_shape).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_post: torch.Tensor):
        pre, weight, post = ctx.saved_tensors  # (T, B, C, H, W), (C', C, K, K), (T, B, N_out)
        setup: LayerSetup = ctx.setup
        T, B, C, H, W = pre.shape
        nu = setup.lif.threshold
        g = grad_post.mean(1).reshape(B, weight.shape[0], -1) / nu  # δ/ν, δ = ∂L/∂o
        with _conv_precision():
            grad_w, delta = ops.conv_backward(pre, post, weight, g, setup.rule, setup.kernel, nu,
                                              ctx.needs_input_grad[0], setup.buffers, ctx.currents, setup.lif.tau_s)
        ctx.currents = None  # T·B·N_out floats: freed as soon as they are read
        grad_pre = None if delta is None else delta.view(B, 1, C, H, W).expand(B, T, C, H, W)
        return grad_pre, grad_w, None


class HM2BPPool2dFunction(torch.autograd.Function):
    """Spiking pooling: a LIF neuron per non-overlapping ``k×k`` window, driven by the sum of the window's spikes
    (weight 1, nothing trainable); backward ``δ_q = (δ_p/scale)·r_pq`` with ``scale = k²`` (authors) or ``ν``."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, size: int, setup: LayerSetup) -> torch.Tensor:
        B, T, C, H, W = pre.shape
        out_shape = (C, H // size, W // size)
        pre_tm = pre.transpose(0, 1).contiguous()
        buf = setup.buffers.get((T + 1, B, C * out_shape[1] * out_shape[2]), pre_tm)
        summed = pre_tm.view(T, B, C, out_shape[1], size, out_shape[2], size).sum((4, 6))
        torch.mul(summed.view(T, B, -1), 1.0 / setup.lif.tau_s, out=buf[1:])
        post_tm = ops.scan(buf, setup.lif)
        ctx.setup, ctx.size = setup, size
        ctx.save_for_backward(pre_tm, post_tm)
        return post_tm.view(T, B, *out_shape).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_post: torch.Tensor):
        pre, post = ctx.saved_tensors  # (T, B, C, H, W), (T, B, N_out)
        setup: LayerSetup = ctx.setup
        rule, k = setup.rule, ctx.size
        T, B, C, H, W = pre.shape
        if not ctx.needs_input_grad[0]:
            return None, None, None
        scale = float(k * k) if rule.pool_error_scale == "window" else setup.lif.threshold
        g = grad_post.mean(1).reshape(B, -1) / scale  # (B, N_out)
        delta = ops.pool_backward(pre, post, g, k, rule, setup.kernel, setup.buffers)
        return delta.view(B, 1, C, H, W).expand(B, T, C, H, W), None, None


def hm2bp_conv2d(pre: torch.Tensor, weight: torch.Tensor, setup: LayerSetup) -> torch.Tensor:
    """Spiking conv layer with the HM2-BP backward; ``pre (B, T, C, H, W)`` 0/1, ``weight (C', C, K, K)``."""
    return HM2BPConv2dFunction.apply(pre, weight, setup)


def hm2bp_pool2d(pre: torch.Tensor, size: int, setup: LayerSetup) -> torch.Tensor:
    """Spiking ``size×size`` pooling with the HM2-BP backward; ``pre (B, T, C, H, W)`` with H, W divisible by size."""
    return HM2BPPool2dFunction.apply(pre, size, setup)
