"""The spike-train level post-synaptic potential (S-PSP) ``e_ij`` of HM2-BP, in closed form (docs/algorithm.md §4, §10,
§13).

``e_ij`` sums, over every post spike ``t_k`` of neuron ``i``, the part of ``i``'s membrane at ``t_k`` that pre neuron
``j`` contributed with unit weight since ``i``'s last reset. Because the membrane is linear and the reset only zeroes
``v`` (not the synaptic current), the post-reset contribution is a reset-free trace ``P_j`` minus its decayed value at
the reset: ``e_ij = Σ_k [P_j(t_k) − decay^{t_k − r_k} P_j(r_k)]``. Writing the post side as an *event matrix* ``A``
(+1 at each spike, −decay at each reset) and the pre side as traces ``X``, every S-PSP is one contraction over time,

    e[b] = A[b]ᵀ · X[b]          A: (2T, B, N_out),  X: (2T, B, N_in)  (time-major, row 2t + k),

where ``X`` holds the two raw exponential traces (membrane, synaptic) of the pre train and ``A`` the events weighted
by the kernel coefficients ``c_k``; the training path keeps ``A`` as a sparse event list (:class:`Events`) and
never forms ``X`` in full (:func:`trace_chunks`, :func:`gathered_traces`),

so no ``(B, N_out, N_in)`` tensor is needed on the training path: every quantity HM2-BP needs is a contraction of
``A``, ``X``, the error and ``W`` over (batch, time).

Two conventions:

``"exact"`` (docs/algorithm.md §13)
    Consistent with the discrete forward pass of :mod:`hm2bp.neuron`: kernel ``p(k) = (d_m^k − d_s^k)/(1 − κ)`` with
    Euler decays ``d = 1 − 1/τ``, reset reference ``r_k = t_{k−1} + t_ref`` (``r_1 = 0``), decay ``d_m^{t_k − r_k}``.
    Then ``Σ_j w_ij e_ij`` equals the sum of ``i``'s membrane values at its spike times, exactly.
``"original"`` (docs/algorithm.md §4, authors' ``common/cuBase.cu:41-81``)
    The authors' pairwise kernel ``K(σ, Δ)`` with continuous exponentials, pre spikes shifted by ``t_ref``
    (docs/algorithm.md P1), ``r_1 = 1``, and only pre spikes with ``max(1, t_k − L) ≤ t_pre < t_k`` counted,
    ``L = 4·τm``.
    ``K(σ, Δ) = ε(Δ) − e^{−σ/τm} ε(Δ − σ)`` with ``ε(x) = (e^{−x/τm} − e^{−x/τs})/(1 − κ)`` for ``x > 0``, else 0.
    The window makes the kernel depend on ``t_k`` as well, so the post side gets extra events at ``t_k − L + t_ref``
    that read the two exponential traces separately and subtract what left the window.

No silent-neuron fallbacks live here (see :mod:`hm2bp.functional`): ``e_ij = 0`` whenever either train is empty.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from hm2bp.neuron import T_REF, TAU_M, TAU_S, check_spikes
from hm2bp.workspace import BufferPool, derived

Convention = Literal["original", "exact"]
CONVENTIONS: tuple[str, ...] = ("original", "exact")
# Authors' S-PSP counts pre spikes at most 4·τm steps before the post spike (`common/cuBase.cu:59`).
PSP_WINDOW_TAUS = 4.0


@dataclass(frozen=True)
class PSPKernel:
    """How S-PSPs are computed: time constants, convention and (``"original"`` only) the window ``L`` in steps."""

    tau_m: float = TAU_M
    tau_s: float = TAU_S
    t_ref: int = T_REF
    convention: Convention = "original"
    window: int | None = int(PSP_WINDOW_TAUS * TAU_M)

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if not (self.tau_s > 1 and self.tau_m > self.tau_s):
            raise ValueError(f"need tau_m > tau_s > 1, got tau_m={self.tau_m!r}, tau_s={self.tau_s!r}")
        if not (isinstance(self.t_ref, int) and self.t_ref >= 0):
            raise ValueError(f"t_ref must be an int >= 0, got {self.t_ref!r}")
        if self.window is not None and not (isinstance(self.window, int) and self.window > self.t_ref):
            raise ValueError(f"window must be None or an int > t_ref, got {self.window!r}")

    @classmethod
    def for_layer(cls, tau_m: float, tau_s: float, t_ref: int, convention: Convention,
                  window_taus: float | None = PSP_WINDOW_TAUS) -> PSPKernel:
        """Kernel with the window given in units of τm (``None``: no window)."""
        window = None if window_taus is None else round(window_taus * tau_m)
        return cls(tau_m=tau_m, tau_s=tau_s, t_ref=t_ref, convention=convention, window=window)

    @property
    def split(self) -> bool:
        """Whether the kernel has the original convention's window (extra events reading one trace each)."""
        return self.convention == "original" and self.window is not None

    @property
    def decays(self) -> tuple[float, float]:
        """Per-step decay of the (membrane, synaptic) exponential: ``e^{−1/τ}`` (original) or ``1 − 1/τ`` (exact)."""
        if self.convention == "original":
            return math.exp(-1.0 / self.tau_m), math.exp(-1.0 / self.tau_s)
        return 1.0 - 1.0 / self.tau_m, 1.0 - 1.0 / self.tau_s

    @property
    def coeffs(self) -> tuple[float, float]:
        """Weights of the (membrane, synaptic) traces in the kernel ``Σ_τ c_τ · decay_τ^k``."""
        one_minus_kappa = 1.0 - self.tau_s / self.tau_m
        if self.convention == "original":
            # Pre spike at t_m acts from q = t_m + t_ref; e^{−(t−q)/τ} = e^{−1/τ}·decay^{t − (t_m + t_ref + 1)}.
            dm, ds = self.decays
            return dm / one_minus_kappa, -ds / one_minus_kappa
        return 1.0 / one_minus_kappa, -1.0 / one_minus_kappa

    @property
    def delay(self) -> int:
        """Steps by which the pre train is delayed before tracing (``t_ref + 1`` original, 0 exact)."""
        return self.t_ref + 1 if self.convention == "original" else 0


def exp_traces(x: torch.Tensor, decays: tuple[float, float], delay: int = 0) -> torch.Tensor:
    """Two exponential traces of time-major ``x (T, B, N)``: ``D_τ(t) = decay_τ·D_τ(t−1) + x(t − delay)``.

    Returns ``(T, 2, B, N)`` (index 1: membrane, synaptic decay), zero for ``t < delay``.
    """
    T = x.shape[0]
    out = x.new_empty(T, 2, *x.shape[1:])
    out[:delay].zero_()
    if delay >= T:
        return out
    out[delay] = x[0].unsqueeze(0)
    xs, mem, syn = x.unbind(0), out[:, 0].unbind(0), out[:, 1].unbind(0)
    for t in range(delay + 1, T):  # two scalar multiply-adds: several times faster than one broadcast addcmul
        torch.add(xs[t - delay], mem[t - 1], alpha=decays[0], out=mem[t])
        torch.add(xs[t - delay], syn[t - 1], alpha=decays[1], out=syn[t])
    return out


def _traced_input(pre: torch.Tensor, kernel: PSPKernel) -> torch.Tensor:
    x = pre if pre.is_floating_point() else pre.to(torch.get_default_dtype())
    if kernel.convention == "original" and x.shape[0] > 0 and bool(x[0].any()):
        # The authors' window starts at max(1, ·): pre spikes at t = 0 never count (`cuBase.cu:59`).
        x = x.clone()
        x[0] = 0
    return x


def pre_traces(pre: torch.Tensor, kernel: PSPKernel) -> torch.Tensor:
    """Pre-synaptic side ``X`` of ``e = Aᵀ X`` from time-major ``pre (T, B, N)``: the raw traces ``(2T, B, N)``,
    row ``2t + k`` holding ``D_k(t)`` (k = 0 membrane, 1 synaptic decay). The kernel weights ``c_k`` live in ``A``.
    """
    return exp_traces(_traced_input(pre, kernel), kernel.decays, kernel.delay).flatten(0, 1)


# Event kinds: which traces an event reads. KERNEL reads P = c_m D_m + c_s D_s; the other two read one weighted
# exponential trace (the original convention's window correction).
KERNEL, MEMBRANE, SYNAPTIC = 0, 1, 2


@dataclass(frozen=True)
class Events:
    """Sparse post-synaptic side ``A`` of ``e = Aᵀ X``: entry ``val`` at (time ``t``, sample ``b``, neuron ``n``)
    reading the traces of kind ``kind`` (:data:`KERNEL`, :data:`MEMBRANE` or :data:`SYNAPTIC`)."""

    t: torch.Tensor
    kind: torch.Tensor
    b: torch.Tensor
    n: torch.Tensor
    val: torch.Tensor
    steps: int
    batch: int
    neurons: int

    def weights(self, coeffs: tuple[float, float]) -> torch.Tensor:
        """``(E, 2)``: what each event puts on the two raw traces, ``val·(c_m, c_s)`` masked by its kind."""
        return _kind_weights(coeffs, self.val)[self.kind] * self.val[:, None]

    def dense(self, coeffs: tuple[float, float]) -> torch.Tensor:
        """``A`` as a dense ``(2T, B, N_out)`` tensor matching :func:`pre_traces` (row ``2t + k``)."""
        a = self.val.new_zeros(self.steps, 2, self.batch, self.neurons)
        w = self.weights(coeffs)
        for k in (0, 1):
            a[:, k].index_put_((self.t, self.b, self.n), w[:, k], accumulate=True)
        return a.flatten(0, 1)


def _kind_weights(coeffs: tuple[float, float], like: torch.Tensor) -> torch.Tensor:
    """``(3, 2)``: the weights of the two raw traces read by each event kind."""
    cm, cs = coeffs
    return torch.tensor([[cm, cs], [cm, 0.0], [0.0, cs]], dtype=like.dtype, device=like.device)


def _as_bits(x: torch.Tensor) -> torch.Tensor:
    """0/1 floats viewed as same-size integers (nonzero() on them is ~1.7× faster on CPU); 0.0 ↔ 0."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return x.view(ints[x.element_size()]) if x.is_floating_point() and x.element_size() in ints else x


@dataclass(frozen=True)
class SpikeIndex:
    """Where the non-zero entries of a time-major raster ``(T, B, N)`` are, in two orders.

    ``t, b, n`` list them grouped by neuron (sorted by ``(b, n, t)``; ``row = b·N + n``), ``t_time, b_time, n_time``
    in time order (sorted by ``(t, b, n)``); ``v`` and ``v_time`` are the values there (1 for spikes).
    """

    row: torch.Tensor
    t: torch.Tensor
    b: torch.Tensor
    n: torch.Tensor
    v: torch.Tensor
    t_time: torch.Tensor
    b_time: torch.Tensor
    n_time: torch.Tensor
    v_time: torch.Tensor
    steps: int
    batch: int
    neurons: int

    def sums(self) -> torch.Tensor:
        """``Σ_t x`` as ``(B, N)`` (the spike counts)."""
        flat = torch.zeros(self.batch * self.neurons, dtype=self.v.dtype, device=self.v.device)
        return flat.index_add_(0, self.row, self.v).view(self.batch, self.neurons)


def cached_spike_index(x: torch.Tensor) -> SpikeIndex | None:
    """The index of ``x`` if :func:`spike_index` built it and ``x`` was not written since, else None."""
    index = derived.get(x)
    return index if isinstance(index, SpikeIndex) else None


def spike_index(x: torch.Tensor) -> SpikeIndex:
    """The :class:`SpikeIndex` of time-major ``x (T, B, N)``, kept in :data:`hm2bp.workspace.derived` for reuse."""
    index = cached_spike_index(x)
    if index is not None:
        return index
    T, B, N = x.shape
    flat_x = x.contiguous().view(-1)
    flat = _as_bits(flat_x).nonzero().squeeze(1)  # ascending: sorted by (t, b, n)
    v = flat_x.index_select(0, flat)
    t = flat // (B * N)
    row = flat - t * (B * N)  # b·N + n
    b = row // N
    n = row - b * N
    # One sort of the unique key (b·N + n)·T + t groups the spikes by neuron in time order; the fields are decoded
    # from the sorted key (cheaper than gathering each through the permutation).
    key = row * T + t
    key, order = torch.sort(key.to(torch.int32) if B * N * T < 2**31 else key)
    key = key.to(torch.int64)
    row_n = key // T
    b_n = row_n // N
    index = SpikeIndex(row_n, key - row_n * T, b_n, row_n - b_n * N, v.index_select(0, order), t, b, n, v, T, B, N)
    derived.put(x, index)
    return index


@dataclass(frozen=True)
class SpikeSums:
    """``Σ_t x`` of a raster, as a kernel that read the raster anyway returned it (see :func:`remember_sums`)."""

    sums: torch.Tensor


def remember_sums(x: torch.Tensor, sums: torch.Tensor) -> None:
    """Record ``sums = Σ_t x`` of time-major ``x`` for :func:`spike_sums` (until ``x`` is written)."""
    if cached_spike_index(x) is None:
        derived.put(x, SpikeSums(sums))


def spike_sums(x: torch.Tensor) -> torch.Tensor:
    """``Σ_t x`` of time-major ``x (T, B, ...)``: from its cached spike index or recorded sums when there are any
    (no pass over ``x``), else summed."""
    known = derived.get(x)
    if isinstance(known, SpikeIndex):
        return known.sums()
    if isinstance(known, SpikeSums):
        return known.sums
    return x.sum(0)


def post_events(post: torch.Tensor, kernel: PSPKernel) -> Events:
    """Post-synaptic side of ``e = Aᵀ X`` from time-major ``post (T, B, N)``, as a sparse event list.

    Each post spike ``k`` of neuron ``i`` (at ``t_k``, previous reset ``r_k = t_{k−1} + t_ref``, ``σ_k = t_k − r_k``)
    reads ``P`` with +1 at ``t_k`` and ``−decay_m^{σ_k}`` at ``r_k`` (``k ≥ 2``). With the original window ``L`` the
    reset event only counts when ``σ_k ≤ L − t_ref − 1``, and trace τ gets
    ``−(d_τ^{L−t_ref} − [reset counts]·d_m^{σ_k} d_τ^{L−t_ref−σ_k})`` at ``t_k − L + t_ref``, removing pre spikes
    older than the window. The list holds the KERNEL events, then the window events; in each part the events of one
    neuron are contiguous, by sample and neuron, and in time order.
    """
    x = post if post.is_floating_point() else post.to(torch.get_default_dtype())
    T, B, N = x.shape
    idx = spike_index(x)
    t, b, n = idx.t, idx.b, idx.n
    prev_t = torch.full_like(t, -1)
    prev_t[1:] = torch.where(idx.row[1:] == idx.row[:-1], t[:-1], -1)
    r = prev_t + kernel.t_ref
    sigma = (t - r).to(x.dtype)
    dm, ds = kernel.decays
    decay_m_sigma = torch.pow(torch.tensor(dm, dtype=x.dtype, device=x.device), sigma)
    resets = prev_t >= 0
    if kernel.split:
        assert kernel.window is not None
        resets = resets & (t - r <= kernel.window - kernel.t_ref - 1)
    # Two lists, each grouped by neuron and in column order within a neuron (so each is a valid CSR matrix): the
    # KERNEL events (reset r_k, then spike t_k, for every spike: r_k < t_k < r_{k+1}), then the window events.
    keep = torch.stack([resets, torch.ones_like(resets)], 1).view(-1).nonzero().squeeze(1)
    spike = keep // 2
    ts = [torch.stack([r, t], 1).view(-1).index_select(0, keep)]
    vals = [torch.stack([-decay_m_sigma, torch.ones_like(sigma)], 1).view(-1).index_select(0, keep)]
    bs, ns = [b.index_select(0, spike)], [n.index_select(0, spike)]
    kinds = [torch.full_like(ts[0], KERNEL)]
    if kernel.split:
        assert kernel.window is not None
        u = t - kernel.window + kernel.t_ref
        far = (u >= 0).nonzero().squeeze(1)
        span = float(kernel.window - kernel.t_ref)
        parts = []
        for dk in (dm, ds):
            # span − σ ≥ 1 wherever the reset event counts; elsewhere the term is 0 (masked before the power).
            kept = torch.where(resets, decay_m_sigma * torch.pow(
                torch.tensor(dk, dtype=x.dtype, device=x.device), torch.where(resets, span - sigma, 0.0)), 0.0)
            parts.append((kept - dk**span).index_select(0, far))
        u_far = u.index_select(0, far)
        ts.append(torch.stack([u_far, u_far], 1).view(-1))  # (MEMBRANE, SYNAPTIC) per far spike
        vals.append(torch.stack(parts, 1).view(-1))
        bs.append(b.index_select(0, far).repeat_interleave(2))
        ns.append(n.index_select(0, far).repeat_interleave(2))
        kinds.append(torch.tensor([MEMBRANE, SYNAPTIC], dtype=t.dtype, device=t.device).repeat(far.numel()))
    return Events(torch.cat(ts), torch.cat(kinds), torch.cat(bs), torch.cat(ns), torch.cat(vals), T, B, N)


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Sparse CSR matrix from entries grouped by ascending ``rows``, columns ascending and distinct within a row."""
    itype = torch.int32 if max(shape) < 2**31 and vals.numel() < 2**31 else torch.int64  # MKL's index type
    crow = torch.zeros(shape[0] + 1, dtype=itype, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0, out=crow[1:])
    cols = cols.to(itype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(crow, cols, vals, shape)  # invariants checked only where enabled (tests)


def indexed_matmul(index: SpikeIndex, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` for the indexed raster ``x`` seen as ``(T·B, N)``: ``O(spikes·w.shape[1])``, ``(T·B, w.shape[1])``."""
    rows = index.t_time * index.batch + index.b_time
    x = _csr(rows, index.n_time, index.v_time, (index.steps * index.batch, index.neurons))
    return x @ w


def _sample_range(b: torch.Tensor, b0: int, b1: int) -> tuple[int, int]:
    """Positions ``lo, hi`` of the entries of samples ``b0 .. b1 − 1`` in the ascending sample list ``b``."""
    lo, hi = torch.searchsorted(b, torch.tensor([b0, b1], dtype=b.dtype, device=b.device)).tolist()
    return lo, hi


class CausalSPSP:
    """``e (b1 − b0, N_out, N_in)`` of any range of samples, from the post events (as :func:`post_events` lists them)
    and the traces of time-major ``pre``: sparse-dense products ``A_P @ P + A_D @ [D_m; D_s]`` with CSR matrices whose
    rows are (sample, post neuron): the KERNEL events read ``P = c_m D_m + c_s D_s``, the window events one trace
    each. Cost ``O(events·N_in)`` plus the traces ``O(T·B·N_in)``, computed once; meant for narrow ``pre``."""

    def __init__(self, events: Events, pre: torch.Tensor, kernel: PSPKernel) -> None:
        T, B, n_in = pre.shape
        d = exp_traces(_traced_input(pre, kernel), kernel.decays, kernel.delay)  # (T, 2, B, N_in)
        cm, cs = kernel.coeffs
        p = torch.mul(d[:, 0], cm).add_(d[:, 1], alpha=cs)  # P = c_m D_m + c_s D_s, (T, B, N_in)
        ev, n_p = events, int((events.kind == KERNEL).sum())  # KERNEL events first, then the window events
        kind = ev.kind[n_p:]
        weight = torch.tensor([cm, cs], dtype=p.dtype, device=p.device).index_select(0, kind - MEMBRANE)
        # (samples, neurons, trace row, value, traces): P at row tB + b; c_k D_k at row (2t + k)B + b
        self.parts = [(ev.b[:n_p], ev.n[:n_p], ev.t[:n_p] * B + ev.b[:n_p], ev.val[:n_p], p.view(T * B, n_in)),
                      (ev.b[n_p:], ev.n[n_p:], (2 * ev.t[n_p:] + kind - MEMBRANE) * B + ev.b[n_p:],
                       ev.val[n_p:] * weight, d.view(2 * T * B, n_in))]
        self.neurons, self.n_in = ev.neurons, n_in

    def __call__(self, b0: int, b1: int) -> torch.Tensor:
        rows = (b1 - b0) * self.neurons
        e = self.parts[0][4].new_zeros(rows, self.n_in)
        for b, n, cols, vals, x in self.parts:
            lo, hi = _sample_range(b, b0, b1)
            if hi > lo:
                a = _csr((b[lo:hi] - b0) * self.neurons + n[lo:hi], cols[lo:hi], vals[lo:hi], (rows, x.shape[0]))
                e = torch.sparse.addmm(e, a, x)
        return e.view(b1 - b0, self.neurons, self.n_in)


class AnticausalSPSP:
    """``e (b1 − b0, N_out, N_in)`` of any range of samples, from the pre spikes and the backward traces of the post
    events: ``e_bij = Σ_s x_bj(s) G_bi(s)`` with ``G = Σ_τ Ã_τ``, ``Ã_τ(s) = A_τ(s + delay) + d_τ Ã_τ(s + 1)`` (the
    traces of ``X`` moved onto ``A``); one sparse-dense product ``x_csr (samples·N_in, T·B) @ G``. Cost
    ``O(pre spikes·N_out)`` plus ``O(T·B·N_out)``, computed once; meant for narrow ``post`` and a pre raster that is
    indexed anyway."""

    def __init__(self, events: Events, pre: torch.Tensor, kernel: PSPKernel) -> None:
        T, B, n_in = pre.shape
        n_out = events.neurons
        a = events.dense(kernel.coeffs).view(T, 2, B, n_out)
        acc = a.new_zeros(T + 1, 2, B, n_out)  # row T stays 0
        for k, decay in enumerate(kernel.decays):
            src, dst = a[:, k].unbind(0), acc[:, k].unbind(0)
            for s in range(T - 1 - kernel.delay, -1, -1):
                torch.add(src[s + kernel.delay], dst[s + 1], alpha=decay, out=dst[s])
        self.g = torch.add(acc[:T, 0], acc[:T, 1]).view(T * B, n_out)
        idx = spike_index(pre)  # grouped by sample
        vals = idx.v.to(a.dtype)
        if kernel.convention == "original":  # pre spikes at t = 0 never count (see _traced_input)
            vals = vals * (idx.t > 0)
        self.b, self.n, self.cols, self.vals = idx.b, idx.n, idx.t * B + idx.b, vals
        self.n_in, self.n_out = n_in, n_out

    def __call__(self, b0: int, b1: int) -> torch.Tensor:
        lo, hi = _sample_range(self.b, b0, b1)
        x = _csr((self.b[lo:hi] - b0) * self.n_in + self.n[lo:hi], self.cols[lo:hi], self.vals[lo:hi],
                 ((b1 - b0) * self.n_in, self.g.shape[0]))
        return (x @ self.g).view(b1 - b0, self.n_in, self.n_out).transpose(1, 2)


# Time steps per chunk of the trace computation are chosen so one chunk stays under this size; small temporaries
# are reused by the allocator, while large fresh ones cost page faults (BENCHMARKS.md).
TRACE_CHUNK_BYTES = 8 << 20


def trace_chunks(pre: torch.Tensor, kernel: PSPKernel, chunk_bytes: int = TRACE_CHUNK_BYTES,
                 pool: BufferPool | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(t0, t1, D)``: the raw traces ``D (t1 − t0, 2, B, N)`` of time-major ``pre`` on steps ``t0 .. t1−1``.

    All chunks live in one reused buffer (never the full ``(T, 2, B, N)``): ``D`` is valid until the next chunk.
    """
    x = _traced_input(pre, kernel)
    T, B, n = x.shape
    step = max(1, min(T, chunk_bytes // max(1, 2 * B * n * x.element_size())))
    shape = (step, 2, B, n)
    buf = pool.get(shape, x) if pool is not None else x.new_empty(shape)
    dec = torch.tensor(kernel.decays, dtype=x.dtype, device=x.device).view(2, 1, 1)
    xs = x.unsqueeze(1)
    carry = x.new_zeros(2, B, n)  # the state before the chunk's first step
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        prev = carry
        for t in range(t0, t1):
            row = buf[t - t0]
            if t < kernel.delay:
                row.zero_()
            else:
                torch.addcmul(xs[t - kernel.delay], prev, dec, out=row)
            prev = row
        carry.copy_(prev)
        yield t0, t1, buf[: t1 - t0]


def gathered_traces(pre: torch.Tensor, kernel: PSPKernel, events: Events,
                    pool: BufferPool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted trace rows that ``events`` read, without forming the full traces.

    Returns ``(rows (U, N_in), index (E,))`` with ``val[e]·rows[index[e]]`` = event ``e``'s term of ``A[b]ᵀ X[b]``;
    only the ``U`` distinct (time, kind, sample) rows are kept.
    """
    B, n_in = pre.shape[1], pre.shape[2]
    key = (events.t * 3 + events.kind) * B + events.b
    uniq, index = torch.unique(key, return_inverse=True)
    ut = uniq // (3 * B)
    ub = uniq % B
    pick = _kind_weights(kernel.coeffs, pre)[(uniq // B) % 3]
    rows = pre.new_empty(uniq.numel(), n_in)
    other = pre.new_empty(uniq.numel(), n_in)
    bounds = torch.searchsorted(ut, torch.arange(pre.shape[0] + 1, device=pre.device)).tolist()
    for t0, t1, d in trace_chunks(pre, kernel, pool=pool):
        lo, hi = bounds[t0], bounds[t1]
        if hi > lo:
            flat = d.reshape(-1, n_in)  # row (t·2 + k)·B + b
            base = (ut[lo:hi] - t0) * (2 * B) + ub[lo:hi]
            torch.index_select(flat, 0, base, out=rows[lo:hi])
            torch.index_select(flat, 0, base + B, out=other[lo:hi])
    return rows.mul_(pick[:, :1]).addcmul_(other, pick[:, 1:]), index


def contract(events: Events, x: torch.Tensor, kernel: PSPKernel) -> torch.Tensor:
    """``e[b] = A[b]ᵀ X[b]`` with ``X = pre_traces(pre)`` ``(2T, B, N_in)`` → ``(B, N_out, N_in)``."""
    return torch.bmm(events.dense(kernel.coeffs).permute(1, 2, 0), x.permute(1, 0, 2))


def check_refractory(name: str, post: torch.Tensor, t_ref: int) -> None:
    """Raise unless every neuron's inter-spike intervals exceed ``t_ref`` (as the LIF forward pass guarantees)."""
    idx = post.transpose(1, 2).nonzero()
    if idx.shape[0] < 2:
        return
    same = (idx[1:, 0] == idx[:-1, 0]) & (idx[1:, 1] == idx[:-1, 1])
    gaps = idx[1:, 2] - idx[:-1, 2]
    if bool((same & (gaps <= t_ref)).any()):
        raise ValueError(f"{name} has spikes closer than t_ref + 1 = {t_ref + 1} steps; "
                         "post-synaptic trains must respect the refractory period")


def spsp(pre: torch.Tensor, post: torch.Tensor, *, tau_m: float = TAU_M, tau_s: float = TAU_S,
         t_ref: int = T_REF, convention: Convention = "original",
         window_taus: float | None = PSP_WINDOW_TAUS) -> torch.Tensor:
    """S-PSP ``e (B, N_out, N_in)`` of every (post ``i``, pre ``j``) pair, by the pure definition (no fallbacks).

    Args:
        pre: ``(B, T, N_in)`` 0/1 pre-synaptic spike trains.
        post: ``(B, T, N_out)`` 0/1 post-synaptic spike trains; inter-spike intervals must exceed ``t_ref``.
        tau_m: membrane time constant (steps).
        tau_s: synaptic time constant (steps).
        t_ref: refractory period (steps).
        convention: ``"original"`` (authors' kernel, docs/algorithm.md §4) or ``"exact"`` (discrete forward pass,
            docs/algorithm.md §13).
        window_taus: original convention only: pre spikes older than ``window_taus·τm`` steps before a post spike
            are ignored (authors: 4); ``None`` disables the window.

    Example:
        >>> pre = torch.zeros(1, 50, 1); pre[0, 5, 0] = 1
        >>> post = torch.zeros(1, 50, 1); post[0, 20, 0] = 1
        >>> spsp(pre, post, convention="exact").shape
        torch.Size([1, 1, 1])
    """
    check_spikes("pre", pre)
    check_spikes("post", post)
    if pre.shape[:2] != post.shape[:2]:
        raise ValueError(f"pre and post must share (batch, time), got {tuple(pre.shape)} and {tuple(post.shape)}")
    kernel = PSPKernel.for_layer(tau_m, tau_s, t_ref, convention, window_taus)
    check_refractory("post", post, t_ref)
    dtype = pre.dtype if pre.is_floating_point() else torch.get_default_dtype()
    pre_tm, post_tm = pre.to(dtype).transpose(0, 1), post.to(dtype).transpose(0, 1)
    return contract(post_events(post_tm, kernel), pre_traces(pre_tm, kernel), kernel)
