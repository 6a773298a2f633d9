"""The pure-PyTorch kernels of :mod:`hm2bp.ops`: what runs where neither the C++ nor the Triton kernels do (and the
definitions the fast kernels are tested against).

* Linear layers' HM2-BP contractions (:func:`linear_backward`): every sum over ``(i, j)`` pairs is a contraction of
  the event matrix ``A`` and trace ``X`` of :mod:`hm2bp.spsp`, done by one of three strategies (chosen by
  :func:`hm2bp.backend.get_strategy`; ``"auto"``: :func:`choose_strategy`): ``pairs`` forms ``e (B, N_out, N_in)`` a
  few samples at a time (at most :data:`PAIRS_CHUNK_BYTES`), ``dense`` runs GEMMs over time·batch, ``sparse`` gathers
  trace rows at the events. All give the same result up to rounding; memory stays ``O(B·T·N)``.
* Conv and pooling layers' local S-PSPs from the event list (:func:`local_spsp`), and their HM2-BP pair by pair
  (:func:`conv_backward`, :func:`pool_backward`; receptive fields: :func:`conv_index`, :func:`pool_index`).
* The Bernoulli encoder's counter-based hash (:func:`hashed_spikes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hm2bp.spsp import (
    AnticausalSPSP,
    CausalSPSP,
    Events,
    PSPKernel,
    contract,
    gathered_traces,
    post_events,
    pre_traces,
    spike_sums,
    trace_chunks,
)
from hm2bp.workspace import BufferPool

if TYPE_CHECKING:
    from hm2bp.functional import HM2BPRule

# Relative cost of one gathered element against one multiply-add inside a GEMM on the project's CPU machines: used
# only to choose between "dense" and "sparse" where "pairs" is not allowed.
SPARSE_ELEMENT_COST = 20.0


def traces_narrow_side(n_in: int, n_out: int) -> bool:
    """Whether the pairs strategy traces the pre side (:class:`~hm2bp.spsp.CausalSPSP`, when ``N_in ≤ N_out``) rather
    than the post side (:class:`~hm2bp.spsp.AnticausalSPSP`, which indexes the wide pre raster instead)."""
    return n_in <= n_out


# The pairs strategy forms e for a few samples at a time, at most this many bytes (never the batch's whole e when it
# is larger): memory stays O(B·T·N) plus this constant.
PAIRS_CHUNK_BYTES = 8 << 20
CoefFor = Callable[[torch.Tensor | None, slice], torch.Tensor]


class _SideThenGrads:
    """``contract`` for strategies that compute the side-effect sums of the whole batch, then the gradients."""

    def side(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def grads(self, coef: torch.Tensor, g: torch.Tensor, w: torch.Tensor,
              below: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def contract(self, w: torch.Tensor, g: torch.Tensor, coef_for: CoefFor, need_side: bool,
                 below: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(coef, Σ_b coef ⊗ e, Σ_i g w e or None)`` with ``coef = coef_for(Σ_j w e or None, samples)``."""
        coef = coef_for(self.side(w) if need_side else None, slice(None))
        return (coef, *self.grads(coef, g, w, below))


class _Pairs:
    """Contractions through the explicit per-sample ``e``, formed a chunk of samples at a time
    (:data:`PAIRS_CHUNK_BYTES`) by sparse-dense products that trace the narrow side. ``coef`` depends only on its own
    sample's side-effect sum, so one pass over the chunks gives everything."""

    def __init__(self, ev: Events, pre: torch.Tensor, kernel: PSPKernel, pool: BufferPool | None = None) -> None:
        form = CausalSPSP if traces_narrow_side(pre.shape[2], ev.neurons) else AnticausalSPSP
        self.spsp = form(ev, pre, kernel)
        self.batch = ev.batch
        self.step = max(1, PAIRS_CHUNK_BYTES // max(1, ev.neurons * pre.shape[2] * pre.element_size()))

    def contract(self, w: torch.Tensor, g: torch.Tensor, coef_for: CoefFor, need_side: bool,
                 below: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As :meth:`_SideThenGrads.contract`."""
        grad_w = w.new_zeros(w.shape)
        coefs, lower = [], []
        for b0 in range(0, max(1, self.batch), self.step):  # one (empty) chunk for an empty batch
            rows = slice(b0, min(self.batch, b0 + self.step))
            e = self.spsp(rows.start, rows.stop)
            coef = coef_for((e * w).sum(2) if need_side else None, rows)  # side: a_bi = Σ_j w_ij e_bij
            grad_w += (e * coef.unsqueeze(2)).sum(0)  # Σ_b coef_bi e_bij (einsum would permute e into a bmm)
            if below:
                lower.append(torch.einsum("bi,ij,bij->bj", g[rows], w, e))  # Σ_i g w e
            coefs.append(coef)
        return torch.cat(coefs), grad_w, (torch.cat(lower) if below else None)


class _Dense(_SideThenGrads):
    """GEMMs over (time·batch) with a dense event matrix ``A (2T, B, N_out)``; two passes over the traces."""

    def __init__(self, ev: Events, pre: torch.Tensor, kernel: PSPKernel, pool: BufferPool | None = None) -> None:
        self.a, self.pre, self.kernel, self.pool = ev.dense(kernel.coeffs), pre, kernel, pool

    def _chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for t0, t1, d in trace_chunks(self.pre, self.kernel, pool=self.pool):
            yield self.a[2 * t0:2 * t1], d.flatten(0, 1)

    def side(self, w: torch.Tensor) -> torch.Tensor:
        out = w.new_zeros(self.a.shape[1:])
        for a, x in self._chunks():
            out += (a * (x.flatten(0, 1) @ w.t()).view_as(a)).sum(0)
        return out

    def grads(self, coef: torch.Tensor, g: torch.Tensor, w: torch.Tensor,
              below: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        grad_w = w.new_zeros(w.shape)
        out = g.new_zeros(g.shape[0], w.shape[1]) if below else None
        for a, x in self._chunks():
            grad_w.addmm_((a * coef).flatten(0, 1).t(), x.flatten(0, 1))
            if out is not None:
                out += (((a * g).flatten(0, 1) @ w).view_as(x) * x).sum(0)
        return grad_w, out



class _Sparse(_SideThenGrads):
    """Gathers of trace rows at the post-synaptic events only (``A`` is non-zero at spike and reset times)."""

    def __init__(self, ev: Events, pre: torch.Tensor, kernel: PSPKernel, pool: BufferPool | None = None,
                 chunk_elems: int = 1 << 20) -> None:
        self.ev = ev
        self.rows, self.index = gathered_traces(pre, kernel, ev, pool)
        n_in = self.rows.shape[1]
        step = max(1, min(ev.val.numel(), chunk_elems // max(1, n_in)))
        self.chunks = [slice(lo, lo + step) for lo in range(0, ev.val.numel(), step)]
        self.xbuf = self.rows.new_empty(step, n_in)
        self.wbuf = self.rows.new_empty(step, n_in)

    def _x(self, c: slice) -> torch.Tensor:
        idx = self.index[c]
        return torch.index_select(self.rows, 0, idx, out=self.xbuf[: idx.numel()])

    def _w(self, w: torch.Tensor, c: slice) -> torch.Tensor:
        idx = self.ev.n[c]
        return torch.index_select(w, 0, idx, out=self.wbuf[: idx.numel()])

    def side(self, w: torch.Tensor) -> torch.Tensor:
        ev = self.ev
        a = w.new_zeros(ev.batch, ev.neurons)
        for c in self.chunks:
            dots = self._x(c).mul_(self._w(w, c)).sum(1)
            a.index_put_((ev.b[c], ev.n[c]), ev.val[c] * dots, accumulate=True)
        return a

    def grads(self, coef: torch.Tensor, g: torch.Tensor, w: torch.Tensor,
              below: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        ev = self.ev
        grad_w = coef.new_zeros(w.shape)
        out = g.new_zeros(ev.batch, w.shape[1]) if below else None
        for c in self.chunks:
            x = self._x(c)
            if out is not None:
                out.index_add_(0, ev.b[c], x * self._w(w, c) * (g[ev.b[c], ev.n[c]] * ev.val[c])[:, None])
            grad_w.index_add_(0, ev.n[c], x.mul_((coef[ev.b[c], ev.n[c]] * ev.val[c])[:, None]))
        return grad_w, out


def pairs_allowed(steps: int, n_in: int, n_out: int) -> bool:
    """Whether ``e (B, N_out, N_in)`` is no larger than the traces ``(2T, B, N_in + N_out)``: then forming it (a chunk
    of samples at a time) costs no more than a pass over the traces."""
    return n_out * n_in <= 2 * steps * (n_in + n_out)


def choose_strategy(ev: Events, n_in: int) -> str:
    """Cheapest way to contract ``A`` with ``X`` for this layer and batch.

    ``pairs`` costs ``O(events·N_in)`` or ``O(pre spikes·N_out)`` plus ``O(B·N_out·N_in)``, never more than the others,
    and is taken whenever :func:`pairs_allowed`; otherwise ``dense`` or ``sparse`` by :data:`SPARSE_ELEMENT_COST`.
    """
    rows, batch, n_out = 2 * ev.steps, ev.batch, ev.neurons
    if pairs_allowed(ev.steps, n_in, n_out):
        return "pairs"
    gemm = float(rows) * batch * n_out * n_in
    costs = {"dense": 3.0 * gemm, "sparse": SPARSE_ELEMENT_COST * 3.0 * ev.val.numel() * n_in}
    return min(costs, key=costs.__getitem__)


def indexes_pre(strategy: str, steps: int, n_in: int, n_out: int) -> bool:
    """Whether the pure-PyTorch backward of a linear layer indexes its pre raster (anti-causal pairs), so that the
    forward can take its currents from that index."""
    pairs = strategy == "pairs" or (strategy == "auto" and pairs_allowed(steps, n_in, n_out))
    return pairs and not traces_narrow_side(n_in, n_out)


def make_contraction(ev: Events, pre: torch.Tensor, kernel: PSPKernel, strategy: str,
                     pool: BufferPool | None = None) -> _Pairs | _Dense | _Sparse:
    """The contraction object for one layer's backward (``pre`` time-major)."""
    if strategy == "auto":
        strategy = choose_strategy(ev, pre.shape[-1])
    return {"pairs": _Pairs, "dense": _Dense, "sparse": _Sparse}[strategy](ev, pre, kernel, pool)



def coef_rule(g: torch.Tensor, o: torch.Tensor, rho: torch.Tensor | None, nu: float,
              lam: torch.Tensor | None) -> CoefFor:
    """``coef[b, i] = g (1 + S) Λ`` for the samples ``rows``, from the side-effect sums ``a = Σ_j w_ij e_bij``:
    ``S = (a/o)/ν`` for a firing neuron, ``rho_i/ν`` for a silent one (``rho = None``: no side effect; ``lam = None``:
    ``Λ = 1``)."""
    fired = o > 0

    def coef_for(side_sum: torch.Tensor | None, rows: slice) -> torch.Tensor:
        coef = g[rows]
        if side_sum is not None:
            side = torch.where(fired[rows], side_sum / o[rows].clamp(min=1), rho)
            coef = torch.addcmul(coef, coef, side, value=1 / nu)  # g (1 + S)
        return coef if lam is None else coef * lam[rows]

    return coef_for


def linear_backward(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor,
                    lam: torch.Tensor | None, rho: torch.Tensor | None, nu: float, need_below: bool,
                    kernel: PSPKernel, pool: BufferPool | None = None, strategy: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """:func:`hm2bp.ops.linear_backward` by the contraction ``strategy`` (``"auto"``: :func:`choose_strategy`)."""
    o, o_pre = spike_sums(post), spike_sums(pre)
    contraction = make_contraction(post_events(post, kernel), pre, kernel, strategy, pool)
    coef, grad_w, gwe = contraction.contract(weight, g, coef_rule(g, o, rho, nu, lam), rho is not None, need_below)
    return coef, grad_w, gwe, o, o_pre


def self_spsp(post: torch.Tensor, kernel: PSPKernel) -> torch.Tensor:
    """S-PSPs of a layer's trains onto themselves, ``(B, N, N)`` (the lateral factor's), from the event list."""
    return contract(post_events(post, kernel), pre_traces(post, kernel), kernel)


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


def conv_backward(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor, rule: HM2BPRule,
                  kernel: PSPKernel, nu: float, need_below: bool, pool: BufferPool | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`hm2bp.ops.conv_backward` from the local S-PSPs (:func:`local_spsp`), pair by pair."""
    T, B, C, H, W = pre.shape
    c_out, _, K, _ = weight.shape
    L, M = (H - K + 1) * (W - K + 1), C * K * K
    pre = pre.view(T, B, -1)
    index = conv_index((C, H, W), c_out, K, pre.device)
    e = local_spsp(post, pre, kernel, index, pool).view(B, c_out, L, M)  # e_pq, q in p's field
    w = weight.view(c_out, 1, M)
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
    if not need_below:
        return grad_w, None
    if rule.effect_ratio:  # r = e/o_pre, or silent_effect_ratio when either neuron is silent
        ratio = torch.where(fired[..., None] & pre_on, e / o_pre.clamp(min=1), rule.silent_effect_ratio)
    else:
        ratio = torch.ones_like(e)
    terms = (g[..., None] * w * ratio).sum(1)  # (B, L, M): Σ_{c'} g_p w_pq r_pq
    return grad_w, F.fold(terms.transpose(1, 2), (H, W), K)  # adds each pixel's terms over the fields holding it


def pool_backward(pre: torch.Tensor, post: torch.Tensor, g: torch.Tensor, k: int, rule: HM2BPRule,
                  kernel: PSPKernel, pool: BufferPool | None) -> torch.Tensor:
    """:func:`hm2bp.ops.pool_backward` from the local S-PSPs (:func:`local_spsp`)."""
    T, B, C, H, W = pre.shape
    g = g.reshape(B, -1, 1)
    pre_flat = pre.view(T, B, -1)
    index = pool_index((C, H, W), k, pre.device)
    if rule.effect_ratio:  # r = e/o_pre, or silent_effect_ratio when either neuron is silent
        e = local_spsp(post, pre_flat, kernel, index, pool)
        o_pre = pre_flat.sum(0)[:, index]
        both = (post.sum(0) > 0)[..., None] & (o_pre > 0)
        terms = g * torch.where(both, e / o_pre.clamp(min=1), rule.silent_effect_ratio)
    else:
        terms = g.expand(B, index.shape[0], index.shape[1])
    # each input lies in exactly one window: scatter the window terms back to input positions
    delta = g.new_zeros(B, C * H * W).scatter_(1, index.reshape(1, -1).expand(B, -1), terms.reshape(B, -1))
    return delta.view(B, C, H, W)


MASK32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def sample_keys(indices: torch.Tensor, salt: int) -> torch.Tensor:
    """Per-sample hash keys ``hash(hash(index mod 2³² ⊕ salt))`` ``(B,)`` (int64 in [0, 2³²))."""
    return hash32(hash32((indices.to(torch.int64) & MASK32) ^ salt))


def _as_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2³²) → int32 tensors with the same bit patterns."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _hash32_int32(x: torch.Tensor) -> torch.Tensor:
    """:func:`hash32` on the bit patterns of an int32 tensor, in place: int32 multiplies wrap modulo 2³² and the
    masks turn the arithmetic shifts into logical ones, so every bit equals the int64 version (half the memory)."""
    x ^= (x >> 16) & 0xFFFF
    x *= 0x7FEB352D
    x ^= (x >> 15) & 0x1FFFF
    x *= 0x846CA68B - 2**32  # the same bits as a signed 32-bit constant
    x ^= (x >> 16) & 0xFFFF
    return x


def hashed_spikes(q: torch.Tensor, steps: int, keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Time-major spikes ``hash(key + t·N + i)/2³² < q`` (row 0 zero), as :func:`hm2bp.encoding.hashed_uniform`
    ``< q`` but in int32.

    ``h/2³² < q`` ⟺ ``h < ⌈q·2³²⌉`` (exact in float64); flipping the sign bit maps unsigned to signed order.
    """
    B, n = q.shape
    cell = torch.arange(steps * n, dtype=torch.int32, device=q.device).view(steps, 1, n)
    h = _hash32_int32(cell + _as_int32(keys).view(1, B, 1))
    h ^= -(2**31)
    bound = torch.ceil(q * 2.0**32).to(torch.int64)
    spikes = torch.lt(h, _as_int32(bound.clamp(max=2**32 - 1) ^ 2**31), out=q.new_empty(steps, B, n, dtype=dtype))
    if bool((bound > 2**32 - 1).any()):  # q = 1: every hash is below 2³², including 2³² − 1
        spikes[:, bound > 2**32 - 1] = 1
    spikes[0] = 0
    return spikes


# -- BPTT through the LIF scan (hm2bp.bptt has the equations) ----------------------------------------------------------
def bptt_surrogate(x: torch.Tensor, slope: float) -> torch.Tensor:
    """The fast-sigmoid derivative ``1/(1 + slope·|x|)²`` standing in for ``δ(x)``."""
    return (1.0 + slope * x.abs()).reciprocal().square()


def bptt_forward(currents: torch.Tensor, inv_tau_s: float, fire_at: float, decay_m: float, decay_s: float,
                 t_ref: int, lateral: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes and ``u_t`` (time-major ``(T, B, N)`` each) of the scan driven by ``currents`` (step ``t`` reads
    ``d_t = I[t−1]·inv_tau_s``), with the arithmetic of :func:`hm2bp.neuron.lif_scan` in its order, so the spikes are
    the same bit for bit."""
    T = currents.shape[0]
    drive = currents * inv_tau_s  # row t − 1 of it is d_t
    spikes = torch.zeros_like(drive)
    u = torch.zeros_like(drive)
    c = torch.zeros_like(drive[0])
    v = torch.zeros_like(c)
    held = torch.empty_like(c) if t_ref > 1 else None
    for t in range(1, T):
        torch.add(drive[t - 1], c, alpha=decay_s, out=c)
        if lateral:
            prev = spikes[t - 1]
            c.sub_(prev.sum(dim=-1, keepdim=True) - prev, alpha=lateral)
        torch.add(c, v, alpha=decay_m, out=v)
        u[t] = v
        k_max = min(t_ref, t)
        if k_max == 1:
            v.addcmul_(v, spikes[t - 1], value=-1.0)
        elif k_max > 1:
            assert held is not None
            torch.add(spikes[t - 1], spikes[t - 2], out=held)
            for k in range(3, k_max + 1):
                held.add_(spikes[t - k])
            v.addcmul_(v, held, value=-1.0)
        torch.gt(v, fire_at, out=spikes[t])
        if t_ref == 0:
            v.addcmul_(v, spikes[t], value=-1.0)
    return spikes, u


def _hold(spikes: torch.Tensor, t: int, t_ref: int) -> torch.Tensor | float:
    """``h_t = Σ_{k=1}^{min(t_ref, t)} s_{t−k}`` (0 without refractoriness)."""
    k_max = min(t_ref, t)
    return spikes[t - k_max:t].sum(0) if k_max > 0 else 0.0


def bptt_backward(grad_spikes: torch.Tensor, spikes: torch.Tensor, u: torch.Tensor, inv_tau_s: float, fire_at: float,
                  decay_m: float, decay_s: float, t_ref: int, lateral: float, slope: float,
                  reset_grad: bool) -> torch.Tensor:
    """``∂L/∂currents (T, B, N)`` from ``∂L/∂spikes`` and what :func:`bptt_forward` recorded: the recursion of
    :mod:`hm2bp.bptt` from the last step back, vectorised over samples and neurons."""
    T = spikes.shape[0]
    gs = grad_spikes.clone()  # ∂L/∂s_t, completed below by the paths through later steps
    grad_currents = torch.zeros_like(u)  # I[T−1] drives no step
    gc = torch.zeros_like(u[0])  # ∂L/∂c_t through c_{t+1}
    gv = torch.zeros_like(gc)  # ∂L/∂v_t through u_{t+1}
    for t in range(T - 1, 0, -1):
        keep = 1.0 - _hold(spikes, t, t_ref) if t_ref else 1.0  # 1 − h_t
        v_hat = u[t] * keep
        if t_ref == 0:  # v_t = v̂_t (1 − s_t)
            g_s = gs[t] - gv * v_hat if reset_grad else gs[t]
            g_vhat = g_s * bptt_surrogate(v_hat - fire_at, slope) + gv * (1.0 - spikes[t])
        else:  # v_t = v̂_t
            g_vhat = gs[t] * bptt_surrogate(v_hat - fire_at, slope) + gv
        g_u = g_vhat * keep
        if reset_grad and t_ref:
            for k in range(1, min(t_ref, t) + 1):  # v̂_t = u_t (1 − Σ_k s_{t−k})
                gs[t - k] -= g_vhat * u[t]
        g_c = g_u + gc
        grad_currents[t - 1] = g_c * inv_tau_s
        if lateral:  # c_t ∋ −L (Σ_m s_{t−1,m} − s_{t−1})
            gs[t - 1] -= lateral * (g_c.sum(dim=-1, keepdim=True) - g_c)
        gc = decay_s * g_c
        gv = decay_m * g_u
    return grad_currents
