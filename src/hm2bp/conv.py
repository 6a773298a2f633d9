"""HM2-BP for spiking convolution and spiking pooling layers (docs/algorithm.md §6), as custom autograd functions.

A conv layer is a linear layer whose weight matrix is sparse and shared, so its HM2-BP quantities are those of
:mod:`hm2bp.functional` restricted to the (output pixel ``p``, input pixel ``q``) pairs of each receptive field. The
backward pass forms these *local* S-PSPs ``e[b, p, m] = e_{p, q_m(p)}`` (``O(B·N_out·C·K²)`` numbers, never
``(B, N_out, N_in)``) by reading, at each post-synaptic event of :mod:`hm2bp.spsp`, the pre-synaptic traces of the
event's receptive field (:func:`local_spsp`), and then applies docs/algorithm.md §6 pair by pair, vectorised:

* side effect ``S_p = (1/ν) Σ_m w_m ρ_pm`` and weight gradient ``∂L/∂w_m = Σ_{b, p} g_p ê_pm (1 + S_p)``, summed over
  the output pixels of the map (weight sharing), with ``g_p = δ_p/ν``;
* error below ``δ_q = Σ_{p ∋ q} g_p w_m r_pm``, summed over every field holding ``q`` (``F.fold``).

Pooling neurons have one fixed input window (weight 1) each and the same local S-PSPs; they pass the error
``δ_q = (δ_p/k²)·r_pq`` down as the authors code it, or ``(δ_p/ν_pool)·r_pq`` (the chain rule of the linear layer),
per :attr:`HM2BPRule.pool_error_scale`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from hm2bp import ops
from hm2bp.functional import LayerSetup
from hm2bp.spsp import PSPKernel, post_events, trace_chunks
from hm2bp.workspace import BufferPool

# Gathered trace values per piece of the event list (bounds the temporaries of :func:`local_spsp`).
LOCAL_CHUNK_ELEMS = 1 << 22
# Traces of up to this size are formed in one piece (reused through the layer's buffer pool), which spares sorting
# the events by time; larger ones are walked in chunks of time steps.
LOCAL_TRACE_BYTES = 256 << 20


def local_spsp(post: torch.Tensor, pre: torch.Tensor, kernel: PSPKernel, index: torch.Tensor,
               pool: BufferPool | None = None, chunk_bytes: int = LOCAL_TRACE_BYTES,
               chunk_elems: int = LOCAL_CHUNK_ELEMS) -> torch.Tensor:
    """S-PSPs of each post neuron with its own inputs only: ``out[b, p, m] = e_{p, index[p, m]}``.

    ``post (T, B, N_out)`` and ``pre (T, B, N_in)`` are time-major; ``index (N_out, M)`` lists each post neuron's
    inputs (a receptive field or pooling window). Every post event reads its inputs' trace values at its own time
    step, so the cost is ``O(events·M)`` and the memory ``O(B·N_out·M)`` plus one chunk of traces (``chunk_bytes``)
    and of gathered values (``chunk_elems``).
    """
    T, B, n_in = pre.shape
    n_out, m = index.shape
    if ops.kernels_for(post) == "triton" and pre.dtype == post.dtype in (torch.float32, torch.float64):
        return _local_spsp_dense(post, pre, kernel, index, chunk_bytes)
    ev = post_events(post, kernel)
    t, b, n, w = ev.t, ev.b, ev.n, ev.weights(kernel.coeffs)
    if 2 * B * n_in * pre.element_size() * T > chunk_bytes:  # several chunks of time: events in time order
        order = torch.argsort(t, stable=True)
        t, b, n, w = t[order], b[order], n[order], w[order]
        bounds = torch.searchsorted(t, torch.arange(T + 1, device=pre.device)).tolist()
    else:
        bounds = [0] * T + [t.numel()]
    out = pre.new_zeros(B * n_out, m)
    plane = B * n_in  # distance between the membrane and synaptic trace of one step in a chunk
    step = max(1, chunk_elems // max(1, m))
    for t0, _, d in trace_chunks(pre, kernel, chunk_bytes, pool):
        flat = d.reshape(-1)  # element ((t − t0)·2 + k)·B·N_in + b·N_in + j
        lo, hi = bounds[t0], bounds[t0 + d.shape[0]]
        for s in range(lo, hi, step):
            e = slice(s, min(hi, s + step))
            cols = (((t[e] - t0) * 2 * B + b[e]) * n_in)[:, None] + index[n[e]]
            vals = flat[cols].mul_(w[e, :1]).addcmul_(flat[cols + plane], w[e, 1:])
            out.index_add_(0, b[e] * n_out + n[e], vals)
    return out.view(B, n_out, m)


def _local_spsp_dense(post: torch.Tensor, pre: torch.Tensor, kernel: PSPKernel, index: torch.Tensor,
                      chunk_bytes: int) -> torch.Tensor:
    """:func:`local_spsp` on the Triton path: ``Σ_r A[r, b, p] X[r, b, index[p, m]]`` over the ``2T`` rows of the
    dense event matrix and the traces (both from Triton kernels), a few rows at a time (``chunk_bytes`` of gathered
    traces); no event list, so no host synchronisation."""
    tk = ops.triton_module(post.device)
    a = tk.post_event_matrix(post.contiguous(), kernel)  # (2T, B, N_out)
    x = tk.pre_traces(pre.contiguous(), kernel)  # (2T, B, N_in)
    rows, B, n_out = a.shape
    out = a.new_zeros(B, n_out, index.shape[1])
    step = max(1, chunk_bytes // max(1, out.numel() * out.element_size()))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        out += torch.einsum("rbp,rbpm->bpm", a[r0:r1], x[r0:r1][:, :, index])
    return out


def conv_index(in_shape: tuple[int, int, int], c_out: int, k: int, device: torch.device | None = None
               ) -> torch.Tensor:
    """``(C'·H'·W', C·k·k)``: flat input indices of each output pixel's receptive field, in ``(c, u, v)`` order
    (the order of ``weight.view(C', -1)`` and of :func:`torch.nn.functional.unfold`)."""
    C, H, W = in_shape
    ho, wo = H - k + 1, W - k + 1
    ar = partial(torch.arange, device=device)
    offsets = (ar(C)[:, None, None] * (H * W) + ar(k)[None, :, None] * W + ar(k)[None, None, :]).reshape(-1)
    corner = (ar(ho)[:, None] * W + ar(wo)[None, :]).reshape(-1)
    return (corner[:, None] + offsets[None, :]).repeat(c_out, 1)


def pool_index(in_shape: tuple[int, int, int], k: int, device: torch.device | None = None) -> torch.Tensor:
    """``(C·(H/k)·(W/k), k·k)``: flat input indices of each pooling window (non-overlapping, stride ``k``)."""
    C, H, W = in_shape
    ar = partial(torch.arange, device=device)
    corner = (ar(C)[:, None, None] * (H * W) + ar(H // k)[None, :, None] * (k * W)
              + ar(W // k)[None, None, :] * k).reshape(-1)
    return corner[:, None] + (ar(k)[:, None] * W + ar(k)[None, :]).reshape(-1)[None, :]


class HM2BPConv2dFunction(torch.autograd.Function):
    """Spiking conv layer ("valid" cross-correlation, stride 1, no bias): forward = conv over all (t, b) + LIF
    scan; backward = HM2-BP per docs/algorithm.md §6 (see the module docstring)."""

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
        c_out, _, K, _ = weight.shape
        L, M = (H - K + 1) * (W - K + 1), C * K * K
        pre = pre.view(T, B, -1)
        index = conv_index((C, H, W), c_out, K, pre.device)
        e = local_spsp(post, pre, kernel, index, setup.buffers).view(B, c_out, L, M)  # e_pq, q in p's field
        w = weight.view(c_out, 1, M)
        g = grad_post.mean(1).reshape(B, c_out, L) / nu  # δ/ν, δ = ∂L/∂o
        o = post.sum(0).view(B, c_out, L)
        fired = o > 0
        o_pre = pre.sum(0)[:, index].view(B, c_out, L, M)  # each pair's pre count
        pre_on = o_pre > 0

        coef = g
        if rule.side_effect:  # S_p = (1/ν) Σ_q w ρ_pq, ρ = e/o_p, or silent_post_rho for a silent p
            side = torch.where(fired, (e * w).sum(-1) / o.clamp(min=1), rule.silent_post_rho * w.sum(-1))
            coef = coef * (1.0 + side / nu)
        silent_pair = ~fired[..., None] & pre_on  # silent post, active pre: ê = silent_post_psp
        e_hat = torch.where(silent_pair, rule.silent_post_psp, e)
        grad_w = torch.einsum("bcl,bclm->cm", coef, e_hat).view_as(weight)

        grad_pre = None
        if ctx.needs_input_grad[0]:
            if rule.effect_ratio:  # r = e/o_pre, or silent_effect_ratio when either neuron is silent
                ratio = torch.where(fired[..., None] & pre_on, e / o_pre.clamp(min=1), rule.silent_effect_ratio)
            else:
                ratio = torch.ones_like(e)
            terms = (g[..., None] * w * ratio).sum(1)  # (B, L, M): Σ_{c'} g_p w_pq r_pq
            delta = F.fold(terms.transpose(1, 2), (H, W), K)  # adds each pixel's terms over the fields holding it
            grad_pre = delta.view(B, 1, C, H, W).expand(B, T, C, H, W)
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
        g = grad_post.mean(1).reshape(B, -1, 1) / scale  # (B, N_out, 1)
        pre_flat = pre.view(T, B, -1)
        index = pool_index((C, H, W), k, pre.device)
        if rule.effect_ratio:  # r = e/o_pre, or silent_effect_ratio when either neuron is silent
            e = local_spsp(post, pre_flat, setup.kernel, index, setup.buffers)
            o_pre = pre_flat.sum(0)[:, index]
            both = (post.sum(0) > 0)[..., None] & (o_pre > 0)
            terms = g * torch.where(both, e / o_pre.clamp(min=1), rule.silent_effect_ratio)
        else:
            terms = g.expand(B, index.shape[0], index.shape[1])
        # each input lies in exactly one window: scatter the window terms back to input positions
        delta = g.new_zeros(B, C * H * W).scatter_(1, index.reshape(1, -1).expand(B, -1), terms.reshape(B, -1))
        return delta.view(B, 1, C, H, W).expand(B, T, C, H, W), None, None


def hm2bp_conv2d(pre: torch.Tensor, weight: torch.Tensor, setup: LayerSetup) -> torch.Tensor:
    """Spiking conv layer with the HM2-BP backward; ``pre (B, T, C, H, W)`` 0/1, ``weight (C', C, K, K)``."""
    return HM2BPConv2dFunction.apply(pre, weight, setup)


def hm2bp_pool2d(pre: torch.Tensor, size: int, setup: LayerSetup) -> torch.Tensor:
    """Spiking ``size×size`` pooling with the HM2-BP backward; ``pre (B, T, C, H, W)`` with H, W divisible by size."""
    return HM2BPPool2dFunction.apply(pre, size, setup)
