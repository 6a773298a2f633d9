"""HM2-BP for spiking convolution and spiking pooling layers (spec §6), as custom autograd functions.

A conv layer is a linear layer whose weight matrix is sparse and shared, so its HM2-BP quantities are those of
:mod:`hm2bp.functional` restricted to the (output pixel ``p``, input pixel ``q``) pairs of each receptive field:
``e_pq = Σ_r A[r, p] X[r, q]`` with the post-side event matrix ``A`` and the pre-side traces ``X`` of
:mod:`hm2bp.spsp`. Every sum over pairs then becomes a convolution over the ``2T·B`` trace images:

* side effect ``a_p = Σ_q w_pq e_pq = Σ_r A[r, p]·(X[r] ⋆ W)_p``                           (``conv2d``)
* weight gradient ``∂L/∂w_{c',c,u,v} = Σ_{b,p∈c'} coef_p e_{p, p+(u,v)} = Σ_r ∇_W[X[r] ⋆ W](A[r]·coef)``
  (``conv2d_weight``), with ``coef_p = g_p (1 + S_p)`` and ``g_p = δ_p/ν``
* error below ``Σ_p g_p w_pq e_pq = Σ_r X[r, q]·(W ⋆ᵀ (A[r]·g))_q``                        (``conv_transpose2d``)

computed in chunks of time steps, so memory stays ``O(B·T·N)``. Pooling neurons have one fixed input window
(weight 1) each; their error to the layer below is ``δ_q = (δ_p/k²)·r_pq`` as the authors code it, or
``(δ_p/ν_pool)·r_pq`` (the chain rule of the linear layer), per :attr:`HM2BPRule.pool_error_scale`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from hm2bp import ops
from hm2bp.functional import LayerSetup
from hm2bp.spsp import Events, PSPKernel, post_events, trace_chunks
from hm2bp.workspace import BufferPool

# One chunk of (event matrix + traces) over time stays under this size: big enough for efficient convolutions over
# many (time, sample) images, small enough that the chunk buffers are reused rather than page-faulted in.
CONV_CHUNK_BYTES = 32 << 20


class _TimeChunks:
    """The dense event matrix ``A`` and the traces ``X`` of a layer, one chunk of time steps at a time.

    Yields ``(A (2·steps, B, N_out), X (2·steps, B, N_in))`` with row ``2t + k`` as in :mod:`hm2bp.spsp`; both live
    in reused buffers that stay valid until the next chunk.
    """

    def __init__(self, ev: Events, pre: torch.Tensor, kernel: PSPKernel, pool: BufferPool | None) -> None:
        T, B, n_in = pre.shape
        self.pre, self.kernel, self.pool, self.n_out = pre, kernel, pool, ev.neurons
        size = 2 * B * (n_in + ev.neurons) * pre.element_size()
        self.step = max(1, min(T, CONV_CHUNK_BYTES // max(1, size)))
        order = torch.argsort(ev.t, stable=True)
        self.t, self.b, self.n = ev.t[order], ev.b[order], ev.n[order]
        self.w = ev.weights(kernel.coeffs)[order]
        self.bounds = torch.searchsorted(self.t, torch.arange(T + 1, device=pre.device)).tolist()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _, B, n_in = self.pre.shape
        shape = (self.step, 2, B, self.n_out)
        abuf = self.pool.get(shape, self.pre) if self.pool is not None else self.pre.new_empty(shape)
        chunk_bytes = self.step * 2 * B * n_in * self.pre.element_size()
        for t0, t1, d in trace_chunks(self.pre, self.kernel, chunk_bytes=chunk_bytes, pool=self.pool):
            a = abuf[: t1 - t0]
            a.zero_()
            lo, hi = self.bounds[t0], self.bounds[t1]
            for k in (0, 1):
                a[:, k].index_put_((self.t[lo:hi] - t0, self.b[lo:hi], self.n[lo:hi]), self.w[lo:hi, k],
                                   accumulate=True)
            yield a.view(2 * (t1 - t0), B, self.n_out), d.view(2 * (t1 - t0), B, n_in)


def _images(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(R, B, N)`` → ``(R·B, C, H, W)``."""
    return x.reshape(-1, *shape)


class HM2BPConv2dFunction(torch.autograd.Function):
    """Spiking conv layer ("valid" cross-correlation, stride 1, no bias): forward = conv over all (t, b) + LIF
    scan; backward = HM2-BP per spec §6 (see the module docstring)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, weight: torch.Tensor, setup: LayerSetup) -> torch.Tensor:
        B, T, C, H, W = pre.shape
        c_out, _, K, _ = weight.shape
        out_shape = (c_out, H - K + 1, W - K + 1)
        pre_tm = pre.transpose(0, 1).contiguous()  # (T, B, C, H, W)
        n_out = out_shape[0] * out_shape[1] * out_shape[2]
        buf = setup.buffers.get((T + 1, B, n_out), pre_tm)
        buf[1:].view(T * B, *out_shape).copy_(F.conv2d(pre_tm.view(T * B, C, H, W), weight / setup.lif.tau_s))
        post_tm = ops.scan(buf, setup.lif)
        ctx.setup = setup
        ctx.save_for_backward(pre_tm, weight, post_tm)
        return post_tm.view(T, B, *out_shape).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_post: torch.Tensor):
        pre, weight, post = ctx.saved_tensors  # (T, B, C, H, W), (C', C, K, K), (T, B, N_out)
        setup: LayerSetup = ctx.setup
        rule, kernel, nu = setup.rule, setup.kernel, setup.lif.threshold
        T, B, C, H, W = pre.shape
        in_shape = (C, H, W)
        c_out, _, K, _ = weight.shape
        out_shape = (c_out, H - K + 1, W - K + 1)
        pre = pre.view(T, B, -1)
        g = grad_post.mean(1).reshape(B, -1) / nu  # δ/ν, δ = ∂L/∂o
        o, o_pre = post.sum(0), pre.sum(0)
        fired, pre_fired = o > 0, o_pre > 0
        chunks = _TimeChunks(post_events(post, kernel), pre, kernel, setup.buffers)
        need_below = ctx.needs_input_grad[0]
        need_gwe = need_below and rule.effect_ratio

        coef = g
        if rule.side_effect:
            side = g.new_zeros(B, post.shape[2])
            for a, x in chunks:
                side += (a * F.conv2d(_images(x, in_shape), weight).view_as(a)).sum(0)  # Σ_q w_pq e_pq
            # ρ = silent_post_rho for every input of a silent neuron: Σ over its (full) receptive field of w
            rho_silent = (rule.silent_post_rho * weight.sum((1, 2, 3))).repeat_interleave(out_shape[1] * out_shape[2])
            coef = coef * (1.0 + torch.where(fired, side / o.clamp(min=1), rho_silent) / nu)

        grad_w = torch.zeros_like(weight)
        gwe = g.new_zeros(B, pre.shape[2]) if need_gwe else None
        for a, x in chunks:
            xi = _images(x, in_shape)
            grad_w += conv2d_weight(xi, weight.shape, _images(a * coef, out_shape))
            if gwe is not None:  # Σ_p g_p w_pq e_pq
                gwe += (F.conv_transpose2d(_images(a * g, out_shape), weight).view_as(x) * x).sum(0)
        if rule.silent_post_psp:  # e = silent_post_psp for every (silent post, active pre) pair
            grad_w += rule.silent_post_psp * conv2d_weight(
                _images(pre_fired.to(g.dtype), in_shape), weight.shape, _images(coef * ~fired, out_shape))

        grad_pre = None
        if need_below:
            def back(err: torch.Tensor) -> torch.Tensor:  # Σ_p err_p w_pq
                return F.conv_transpose2d(_images(err, out_shape), weight).reshape(B, -1)

            if gwe is not None:
                delta = torch.where(pre_fired, gwe / o_pre.clamp(min=1), torch.zeros_like(gwe))
                if rule.silent_effect_ratio:  # pairs with a silent neuron use r = silent_effect_ratio
                    delta = delta + rule.silent_effect_ratio * (back(g) - pre_fired * back(g * fired))
            else:
                delta = back(g)
            grad_pre = delta.view(B, 1, *in_shape).expand(B, T, *in_shape)
        return grad_pre, grad_w, None


def _upsample(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(…, C, h, w)`` → ``(…, C, h·k, w·k)``: each pooling neuron's value copied over its window."""
    *lead, c, h, w = x.shape
    return x.reshape(*lead, c, h, 1, w, 1).expand(*lead, c, h, k, w, k).reshape(*lead, c, h * k, w * k)


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
        g_up = _upsample(grad_post.mean(1) / scale, k).reshape(B, -1)  # each input's pooling neuron's δ/scale
        if not rule.effect_ratio:
            delta = g_up
        else:
            pre_flat = pre.view(T, B, -1)
            o_pre = pre_flat.sum(0)
            fired_up = _upsample(post.sum(0).view(B, C, H // k, W // k) > 0, k).reshape(B, -1)
            e = g_up.new_zeros(B, pre_flat.shape[2])  # e_pq of each input q with its one pooling neuron p
            for a, x in _TimeChunks(post_events(post, setup.kernel), pre_flat, setup.kernel, setup.buffers):
                e += (_upsample(a.view(-1, B, C, H // k, W // k), k).reshape_as(x) * x).sum(0)
            both = fired_up & (o_pre > 0)
            ratio = torch.where(both, e / o_pre.clamp(min=1), torch.full_like(e, rule.silent_effect_ratio))
            delta = g_up * ratio
        return delta.view(B, 1, C, H, W).expand(B, T, C, H, W), None, None


def hm2bp_conv2d(pre: torch.Tensor, weight: torch.Tensor, setup: LayerSetup) -> torch.Tensor:
    """Spiking conv layer with the HM2-BP backward; ``pre (B, T, C, H, W)`` 0/1, ``weight (C', C, K, K)``."""
    return HM2BPConv2dFunction.apply(pre, weight, setup)


def hm2bp_pool2d(pre: torch.Tensor, size: int, setup: LayerSetup) -> torch.Tensor:
    """Spiking ``size×size`` pooling with the HM2-BP backward; ``pre (B, T, C, H, W)`` with H, W divisible by size."""
    return HM2BPPool2dFunction.apply(pre, size, setup)
