"""The Triton path's layer-level ops: the kernels of :mod:`hm2bp.ops.triton_kernels` composed with GEMMs on the same
device, with no host synchronisation (so a training step never waits for the device).

Linear layers contract in the anticausal form: per chunk of samples the event matrix ``A`` and its anticausal traces
``Y (T, b, N_out)`` from Triton kernels, then ``e[b] = Y[b]ᵀ·pre[b]`` as GEMMs over (time·batch) with the 0/1 pre
raster itself (``Σ_t A·X = Σ_s Y·x``, :func:`hm2bp.ops.triton_kernels.anticausal_traces`): half the rows of the causal
form and no pre-wide trace tensor.

**Split TF32** (:func:`spike_mm`, :func:`mm_spikes`): the large GEMMs multiply a 0/1 raster, which TF32 holds
exactly, by a float operand. That operand is split into two TF32 numbers ``hi + lo`` (``hi`` its leading 11
significant bits, ``lo`` the next 11 of the rest), so two TF32 GEMMs (8× the fp32 rate each on an H100/H200) give
each product to ``2⁻²¹`` relative instead of ``2⁻²⁴``, with fp32 accumulation. Float32 GEMMs are split where
:data:`SPLIT_TF32` says: by default on CUDA tensors only (elsewhere TF32 does not exist).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hm2bp.ops import triton_kernels as tk
from hm2bp.ops.torch_kernels import CoefFor, coef_rule
from hm2bp.spsp import PSPKernel, spike_sums
from hm2bp.workspace import derived

if TYPE_CHECKING:
    from hm2bp.functional import HM2BPRule

# The wide layers' form holds, per chunk of samples, Y, the chunk's currents and Y's two TF32 parts (T rows each,
# post-neuron wide), plus the chunk's pre raster: at most this many bytes.
GPU_CHUNK_BYTES = 2 << 30
SPLIT_TF32: bool | None = None  # None: on CUDA tensors; True: everywhere (the GPU cost model's trace); False: never
# Smaller GEMMs stay in one fp32 pass: the split's extra launches (~3 × 5 µs) cost more than TF32's rate saves below
# ~1 GFLOP (at 50 vs 400 TFLOP/s, the constants of bench/gpu_model.py).
SPLIT_MIN_FLOPS = 1e9
_TF32_MASK = -(1 << 13)  # clears the 13 low mantissa bits float32 has beyond TF32's 10


def tf32_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)``, both exact TF32 values, with ``|x − hi − lo| ≤ 2⁻²¹·|x|``: ``hi`` is ``x`` truncated to TF32,
    ``lo`` the rest (exact in float32) truncated to TF32."""
    hi = (x.view(torch.int32) & _TF32_MASK).view(torch.float32)
    lo = x - hi
    return hi, (lo.view(torch.int32) & _TF32_MASK).view(torch.float32)


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _split(x: torch.Tensor, split: bool | None, flops: float) -> bool:
    if split is None:
        split = (x.is_cuda if SPLIT_TF32 is None else SPLIT_TF32) and flops >= SPLIT_MIN_FLOPS
    return split and x.dtype == torch.float32


def spike_mm(spikes: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None,
             split: bool | None = None) -> torch.Tensor:
    """``spikes @ w`` for a 0/1 ``spikes``, split TF32 (module docstring) on CUDA float32 (GEMMs of at least
    :data:`SPLIT_MIN_FLOPS`) or where ``split``."""
    if not _split(w, split, 2.0 * spikes.shape[0] * spikes.shape[1] * w.shape[1]):
        return torch.mm(spikes, w, out=out)
    hi, lo = tf32_parts(w.contiguous())
    with _tf32():
        result = torch.mm(spikes, hi, out=out)
        return result.addmm_(spikes, lo)


def weight_grad_into(acc: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, spikes: torch.Tensor,
                     split: bool | None = None) -> torch.Tensor:
    """``acc += Σ_{s,b} coef[b, i] y[s, b, i] spikes[(s, b), j]`` for ``y (T, B, N_out)``, ``coef (B, N_out)`` and 0/1
    ``spikes (T·B, N_in)``: split TF32 (module docstring) on CUDA float32 (GEMMs of at least :data:`SPLIT_MIN_FLOPS`)
    or where ``split``, the scaled operand's two parts made in one pass."""
    if not _split(y, split, 2.0 * spikes.shape[0] * spikes.shape[1] * acc.shape[0]):
        return acc.addmm_((y * coef).flatten(0, 1).t(), spikes)
    hi, lo = tk.scaled_tf32_parts(y.contiguous(), coef.contiguous())
    with _tf32():
        return acc.addmm_(hi.flatten(0, 1).t(), spikes).addmm_(lo.flatten(0, 1).t(), spikes)


@dataclass(frozen=True)
class _PostSide:
    """The anticausal traces ``Y`` of a raster, kept (in :data:`hm2bp.workspace.derived`) for the other reader."""

    y: torch.Tensor


def post_side(post: torch.Tensor, kernel: PSPKernel, keep: bool = False) -> torch.Tensor:
    """``Y (T, B, N)`` of time-major ``post``: the anticausal traces of its event matrix, made once per raster when
    ``keep`` (the output layer's lateral factor keeps them for its contraction)."""
    known = derived.get(post)
    if isinstance(known, _PostSide):
        return known.y
    y, _ = tk.post_side(post.contiguous(), kernel)  # A and its anticausal traces in one time-parallel launch
    if keep:
        derived.put(post, _PostSide(y))
    return y


def self_spsp(post: torch.Tensor, kernel: PSPKernel, events: torch.Tensor) -> torch.Tensor:
    """``e[b, l, i] = Σ_s Y_l(s) post_i(s)`` with ``Y`` from ``events`` (``post`` with a silent label neuron's train
    patched, or ``post`` itself: the lateral factor masks every pair with a silent neuron, so the patched column
    never counts)."""
    y = post_side(events, kernel, keep=True)
    return torch.bmm(y.permute(1, 2, 0), post.permute(1, 0, 2))


# Layers with at most this many post neurons form each sample's S-PSPs ``e[b] = Y[b]ᵀ x[b]`` in one batched GEMM and
# take every sum from them: by the cost model's constants its 2·T·B·N_out·N_in fp32 FLOPs cost less than the ~3
# passes over T·B·N_in floats that the error below otherwise takes while N_out ≲ 90.
EXPLICIT_MAX_POST = 64


def linear_backward(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor,
                    lam: torch.Tensor | None, rho: torch.Tensor | None, nu: float, need_below: bool,
                    kernel: PSPKernel, currents: torch.Tensor | None = None, tau_s: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """:func:`hm2bp.ops.linear_backward` in the anticausal form.

    Narrow layers (:data:`EXPLICIT_MAX_POST`): ``e[b] = Y[b]ᵀ x[b]`` by one batched GEMM, then ``Σ_j w e``,
    ``Σ_b coef e`` and ``Σ_i g w e`` from ``e``. Wide layers, a chunk of samples (:data:`GPU_CHUNK_BYTES`) at a time:
    ``Σ_j w e = Σ_s Y ⊙ (x Wᵀ)`` (summed in the kernel that makes ``Y``, from the forward's ``currents = x Wᵀ/τs``
    when given), ``Σ_b coef e = (coef·Y)ᵀ x`` and ``Σ_i g w e = Σ_s x ⊙ ((g·Y) W)``, summed over steps s."""
    T, B, n_in = pre.shape
    n_out = post.shape[2]
    o, o_pre = spike_sums(post), spike_sums(pre)
    coef_for: CoefFor = coef_rule(g, o, rho, nu, lam)
    known = derived.get(post)  # kept by the lateral factor
    if n_out <= EXPLICIT_MAX_POST:
        y = known.y if isinstance(known, _PostSide) else post_side(post, kernel)
        e = torch.bmm(y.permute(1, 2, 0), pre.permute(1, 0, 2))  # (B, N_out, N_in)
        coef = coef_for((e * weight).sum(2) if rho is not None else None, slice(None))
        gwe = torch.einsum("bi,ij,bij->bj", g, weight, e) if need_below else None
        return coef, torch.einsum("bi,bij->ij", coef, e), gwe, o, o_pre
    per_sample = T * (4 * n_out + n_in) * pre.element_size()
    step = max(1, GPU_CHUNK_BYTES // max(1, per_sample))
    grad_w = weight.new_zeros(weight.shape)
    coefs, lower = [], []
    for b0 in range(0, max(1, B), step):  # one (empty) chunk for an empty batch
        rows = slice(b0, min(B, b0 + step))
        x = pre[:, rows]
        flat = x.reshape(-1, n_in)  # a view when one chunk holds the batch
        chunk = post[:, rows].contiguous()
        if rho is None:
            y, side = tk.post_side(chunk, kernel)
        elif currents is not None:
            y, side = tk.post_side(chunk, kernel, currents[:, rows].contiguous())
            side = side * tau_s
        else:
            y, side = tk.post_side(chunk, kernel, spike_mm(flat, weight.t()).view(T, -1, n_out))
        coef = coef_for(side, rows)
        weight_grad_into(grad_w, y, coef, flat)
        if need_below:
            lower.append((((y * g[rows]).flatten(0, 1) @ weight).view_as(x) * x).sum(0))
        coefs.append(coef)
    return torch.cat(coefs), grad_w, (torch.cat(lower) if need_below else None), o, o_pre


def local_spsp(post: torch.Tensor, pre: torch.Tensor, kernel: PSPKernel, index: torch.Tensor,
               chunk_bytes: int) -> torch.Tensor:
    """:func:`hm2bp.ops.local_spsp` as ``Σ_r A[r, b, p] X[r, b, index[p, m]]`` over the ``2T`` rows of the dense
    event matrix and the traces (both from Triton kernels), a few rows at a time (``chunk_bytes`` of gathered
    traces); no event list, so no host synchronisation."""
    a = tk.post_event_matrix(post.contiguous(), kernel)  # (2T, B, N_out)
    x = tk.pre_traces(pre.contiguous(), kernel)  # (2T, B, N_in)
    rows, B, n_out = a.shape
    out = a.new_zeros(B, n_out, index.shape[1])
    step = max(1, chunk_bytes // max(1, out.numel() * out.element_size()))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        out += torch.einsum("rbp,rbpm->bpm", a[r0:r1], x[r0:r1][:, :, index])
    return out


def conv_backward(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor, rule: HM2BPRule,
                  kernel: PSPKernel, nu: float, need_below: bool, currents: torch.Tensor | None = None,
                  tau_s: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`hm2bp.ops.conv_backward` in the anticausal form, with convolutions over the ``T·B`` images in place of
    the local S-PSPs.

    With ``x`` the 0/1 pre raster as ``T·B`` images ``(T·B, C, H, W)``, ``Y`` the anticausal traces of the post
    raster as ``(T·B, C', H', W')`` (:func:`post_side`), ``e_pm = Σ_s Y[s, p]·x[s, q_m(p)]``, ``⊛`` the valid
    cross-correlation, ``⊛ᵀ`` its transpose (``conv2d_input``) and ``[·]`` 0/1 masks:

    * side effect ``Σ_m w_m e_pm = Σ_s Y[s, p]·(x ⊛ W)[s, p]``, summed against ``Y`` in the kernel that makes ``Y``:
      ``x ⊛ W = τs·currents`` from the forward's ``currents (T, B, N_out)`` where given, else one convolution;
    * weight gradient ``Σ_{b, p} coef_p ê_pm = conv2d_weight(x, coef·Y) + silent_post_psp·conv2d_weight([o_pre > 0],
      coef·[o = 0])`` (``ê`` is ``e`` except for a silent post and active pre, where it is ``silent_post_psp``; ``e``
      is 0 for a silent post, so the two terms add);
    * error below (effect ratio) ``δ_q = Σ_{p ∋ q} g_p w_m r_pm``, ``r = e/o_pre`` where both neurons fire, else
      ``silent_effect_ratio``: ``Σ_s x[s, q]·((g·Y) ⊛ᵀ W)[s, q] / max(o_pre(q), 1)`` (``e`` is 0 wherever either
      neuron is silent, so no mask) plus ``silent_effect_ratio·(g·[o = 0] ⊛ᵀ W)(q)`` for a firing ``q`` and
      ``silent_effect_ratio·(g ⊛ᵀ W)(q)`` for a silent one; without the effect ratio ``(g ⊛ᵀ W)(q)``.

    The caller sets cuDNN's precision (:mod:`hm2bp.conv` keeps it out of TF32, as in the forward)."""

    T, B, C, H, W = pre.shape
    c_out, _, K, _ = weight.shape
    ho, wo = H - K + 1, W - K + 1
    maps = (c_out, ho, wo)
    x = pre.reshape(T * B, C, H, W)
    o = spike_sums(post).view(B, *maps)
    o_pre = spike_sums(pre.view(T, B, -1)).view(B, C, H, W)
    fired, pre_on = o > 0, o_pre > 0
    g = g.reshape(B, *maps)
    if rule.side_effect:  # S_p = (1/ν) Σ_m w_m e_pm / o_p, or silent_post_rho·Σ_m w_m/ν for a silent p
        if currents is not None:
            y, side = tk.post_side(post.contiguous(), kernel, currents.contiguous())
            side = side * tau_s
        else:
            y, side = tk.post_side(post.contiguous(), kernel, F.conv2d(x, weight).view(T, B, -1))
        side = torch.where(fired, side.view(B, *maps) / o.clamp(min=1),
                           rule.silent_post_rho * weight.sum((1, 2, 3)).view(c_out, 1, 1))
        coef = g * (1.0 + side / nu)
    else:
        y, coef = post_side(post, kernel), g
    y = y.view(T, B, *maps)
    grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, (y * coef).view(T * B, *maps))
    if rule.silent_post_psp != 0.0:  # a rule constant, not a tensor value: no host read
        silent = torch.where(fired, 0.0, coef)
        grad_w += rule.silent_post_psp * torch.nn.grad.conv2d_weight(pre_on.to(x.dtype), weight.shape, silent)
    if not need_below:
        return grad_w, None
    if not rule.effect_ratio:
        return grad_w, torch.nn.grad.conv2d_input((B, C, H, W), weight, g)
    back = torch.nn.grad.conv2d_input((T * B, C, H, W), weight, (y * g).view(T * B, *maps))
    delta = (back.view(T, B, C, H, W) * pre).sum(0) / o_pre.clamp(min=1)
    if rule.silent_effect_ratio != 0.0:
        # the silent posts' terms and all terms in one call: a firing q takes the first, a silent q the second
        both = torch.nn.grad.conv2d_input((2 * B, C, H, W), weight, torch.cat([torch.where(fired, 0.0, g), g]))
        delta += rule.silent_effect_ratio * torch.where(pre_on, both[:B], both[B:])
    return grad_w, delta


def pool_backward(pre: torch.Tensor, post: torch.Tensor, g: torch.Tensor, k: int, rule: HM2BPRule,
                  kernel: PSPKernel) -> torch.Tensor:
    """:func:`hm2bp.ops.pool_backward` without local S-PSP gathers: each input ``q`` lies in exactly one window
    ``p(q)`` (weight 1), so ``e_{p(q) q} = Σ_s Y[s, p(q)]·x[s, q]`` is ``Y`` upsampled by the window times the pre
    raster, summed over steps; then ``δ_q = g_{p(q)}·r``, ``r = e/o_pre`` where both neurons fire, else
    ``silent_effect_ratio`` (or ``δ_q = g_{p(q)}`` without the effect ratio)."""
    T, B, C, H, W = pre.shape
    ho, wo = H // k, W // k
    g = g.reshape(B, C, ho, 1, wo, 1)
    if not rule.effect_ratio:
        return g.expand(B, C, ho, k, wo, k).reshape(B, C, H, W)
    y = post_side(post, kernel).view(T, B, C, ho, 1, wo, 1)
    e = (pre.view(T, B, C, ho, k, wo, k) * y).sum(0)  # (B, C, ho, k, wo, k): e of each input with its window
    o = spike_sums(post).view(B, C, ho, 1, wo, 1)
    o_pre = spike_sums(pre.view(T, B, -1)).view(B, C, ho, k, wo, k)
    both = (o > 0) & (o_pre > 0)
    return (g * torch.where(both, e / o_pre.clamp(min=1), rule.silent_effect_ratio)).reshape(B, C, H, W)
