"""HM2-BP as a custom autograd rule for a spiking fully-connected layer (docs/algorithm.md §4–§6, §13).

Forward: input currents for all T in one GEMM, then the LIF scan (or, with the compiled kernels on CPUs, the fused
layer of :mod:`hm2bp.ops`: event-driven currents inside the scan). Backward receives ``∂L/∂s`` of a loss that depends
on spike *counts*, so ``δ_i = mean_t ∂L/∂s_i[t] = ∂L/∂o_i``; with ``g_i = δ_i/ν`` it returns

* weight gradient  ``∂L/∂w_ij = Σ_b g_i (1 + S_i) Λ_i ê_ij`` with ``ê_ij = e_ij`` (or ``silent_post_psp`` when
  ``o_i = 0 < o_j``), side effect ``S_i = (1/ν) Σ_l w_il ρ_il`` (``ρ_il = e_il/o_i``, or ``silent_post_rho`` when
  ``o_i = 0``) and lateral factor ``Λ_i`` (output layer only);
* error to the layer below ``δ_j = Σ_i g_i w_ij r_ij`` with effect ratio ``r_ij = e_ij/o_j`` (or
  ``silent_effect_ratio`` when ``o_i = 0`` or ``o_j = 0``), broadcast over time.

Every sum over ``(i, j)`` pairs is a contraction of the event matrix ``A`` and trace ``X`` of :mod:`hm2bp.spsp`, so no
``(B, N_out, N_in)`` tensor is formed (the ``pairs`` strategy forms ``e`` a few samples at a time, at most
:data:`PAIRS_CHUNK_BYTES`); memory stays ``O(B·T·N)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from hm2bp import ops
from hm2bp.neuron import LIFParams
from hm2bp.spsp import (
    CONVENTIONS,
    PSP_WINDOW_TAUS,
    AnticausalSPSP,
    CausalSPSP,
    Convention,
    Events,
    PSPKernel,
    contract,
    gathered_traces,
    indexed_matmul,
    post_events,
    pre_traces,
    remember_sums,
    spike_index,
    spike_sums,
    trace_chunks,
)
from hm2bp.workspace import BufferPool

# Provenance of the defaults: docs/algorithm.md §4–§5 [CODE]; each is a flag so it can be ablated
# (docs/algorithm.md P3).
SILENT_POST_PSP = 0.1  # e_ij used when o_i = 0 < o_j (`common/cuBase.cu:77-78`)
SILENT_POST_RHO = 0.5  # ρ in the side effect when o_i = 0, summed over all inputs ("se=0.5"; `Spiking.cu:1615`)
SILENT_EFFECT_RATIO = 1.0  # r_ij when o_i = 0 or o_j = 0 (`Spiking.cu:661-671`)
# Our departure (docs/algorithm.md P4): the authors never clip the lateral factor's denominator 1 − w0²Σ…; we clamp
# it at 0.1 (Λ ≤ 10) and count how often that happens. Set to None for the authors' unclipped behaviour.
LATERAL_MIN_DENOMINATOR = 0.1
# Relative cost of one gathered element against one multiply-add inside a GEMM on the project's CPU machines: used
# only to choose between "dense" and "sparse" where "pairs" is not allowed.
SPARSE_ELEMENT_COST = 20.0
STRATEGIES = ("auto", "pairs", "dense", "sparse")
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
        strategy: how the pure-PyTorch path contracts the S-PSPs of linear layers: ``"pairs"`` (``e`` from one
            sparse-dense product per event kind, tracing the narrow side), ``"dense"`` (GEMMs over time·batch),
            ``"sparse"`` (trace rows gathered at events), or ``"auto"`` (:func:`choose_strategy`: ``pairs`` where
            :func:`pairs_allowed`, else the cheaper of the other two). All give the same result up to rounding.
            Where the compiled kernels run (:mod:`hm2bp.ops`, the default on CPUs), linear layers use the
            fused C++ layer instead, which forms each sample's S-PSP rows in cache. Conv and pooling layers gather
            receptive-field traces (:mod:`hm2bp.conv`).
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
    strategy: str = "auto"
    pool_error_scale: str = "window"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"rule.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.pool_error_scale not in POOL_ERROR_SCALES:
            raise ValueError(f"rule.pool_error_scale must be one of {POOL_ERROR_SCALES}, got {self.pool_error_scale!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"rule.convention must be one of {CONVENTIONS}, got {self.convention!r}")
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

    lateral_clamped: int | torch.Tensor = 0  # output neurons whose Λ denominator hit the clamp (0-d on Triton)
    lateral_evaluated: int = 0  # output neurons whose Λ was computed


@dataclass
class LayerSetup:
    """Everything about a layer that the autograd rule needs besides tensors."""

    lif: LIFParams
    rule: HM2BPRule
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
    rows = torch.arange(B, device=post.device)
    target = post[:, rows, labels]  # (T, B): each sample's label train
    silent = target.sum(0) == 0
    if ops.host_reads_allowed(post) and not bool(silent.any()):  # (Triton path: no look at values, same ops)
        return post
    period = T // target_count
    regular = torch.zeros(T, dtype=post.dtype, device=post.device)
    regular[period::period].fill_(1)  # fill_ takes a scalar: no tensor made from host data
    patched = post.clone()
    patched[:, rows, labels] = torch.where(silent, regular[:, None], target)
    return patched


def lateral_factor(post: torch.Tensor, labels: torch.Tensor | None, setup: LayerSetup) -> torch.Tensor:
    """``Λ_i = 1/(1 − w0² Σ_{l≠i} d_i d_l r_{l←i} r_{i←l})`` (docs/algorithm.md §4, §13) from the unpatched output
    trains.

    ``post`` is time-major ``(T, B, N)``. ``d_x = 1/ν`` if ``o_x > 0`` or ``x`` is the label, else 0;
    ``r_{l←i} = e_{l|i}/o_i`` (S-PSP of output ``i`` onto output ``l``), 1 if either count is 0. The denominator is
    clamped at ``rule.lateral_min_denominator`` and the clamp hits are counted in ``setup.stats``.
    """
    kernel = setup.kernel
    o = post.sum(0)
    family = ops.kernels_for(post) if post.dtype in (torch.float32, torch.float64) else "torch"
    if family == "triton":
        tk = ops.triton_module(post.device)  # both sides on the device, no event list
        a, x = tk.post_event_matrix(post.contiguous(), kernel), tk.pre_traces(post.contiguous(), kernel)
        e = torch.bmm(a.permute(1, 2, 0), x.permute(1, 0, 2))  # [b, l (post), i (pre)]
    elif family == "cpp":
        e = ops.spsp(post, post, kernel)
    else:
        e = contract(post_events(post, kernel), pre_traces(post, kernel), kernel)
    both = (o[:, :, None] > 0) & (o[:, None, :] > 0)
    r = torch.where(both, e / o[:, None, :].clamp(min=1), torch.ones_like(e))
    active = o > 0
    if labels is not None:
        active = active.clone().scatter_(1, labels.view(-1, 1), True)
    d = active.to(post.dtype) / setup.lif.threshold
    pair = d[:, :, None] * d[:, None, :] * r * r.transpose(1, 2)
    pair.diagonal(dim1=1, dim2=2).zero_()
    denom = 1.0 - setup.lateral_w0**2 * pair.sum(1)
    floor = setup.rule.lateral_min_denominator
    if floor is not None:
        clamped = (denom < floor).sum()  # a device tensor on the Triton path: read at the epoch's end
        setup.stats.lateral_clamped += int(clamped) if ops.host_reads_allowed(post) else clamped
        denom = denom.clamp(min=floor)
    setup.stats.lateral_evaluated += denom.numel()
    return 1.0 / denom


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


# The GPU form holds, per chunk of samples, the event matrix (2T rows), its anticausal traces and two GEMM results
# (T rows each), all post-neuron wide, plus the chunk's pre raster: at most this many bytes.
GPU_CHUNK_BYTES = 2 << 30


class _Anticausal:
    """The Triton path's contractions (no host synchronisation): per chunk of samples the event matrix ``A`` and its
    anticausal traces ``Y (T, b, N_out)`` from Triton kernels, then ``e[b] = Y[b]ᵀ·pre[b]`` as GEMMs over (time·batch)
    with the 0/1 pre raster itself. Against the causal dense form (:class:`_Dense`: traces ``X (2T, B, N_in)``) the
    GEMMs have half the rows and no pre-wide trace tensor exists; ``Σ_t A·X = Σ_s Y·x`` is the same sum reordered
    (``hm2bp.ops.triton_kernels.anticausal_traces``). Chunks: :data:`GPU_CHUNK_BYTES`."""

    def __init__(self, pre: torch.Tensor, post: torch.Tensor, kernel: PSPKernel) -> None:
        self.pre, self.post, self.kernel = pre, post, kernel
        self.tk = ops.triton_module(pre.device)
        T, B, n_in = pre.shape
        per_sample = T * (5 * post.shape[2] + n_in) * pre.element_size()
        self.batch, self.step = B, max(1, GPU_CHUNK_BYTES // max(1, per_sample))

    def contract(self, w: torch.Tensor, g: torch.Tensor, coef_for: CoefFor, need_side: bool,
                 below: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As :meth:`_SideThenGrads.contract`: ``Σ_j w e = Σ_s Y ⊙ (x Wᵀ)``, ``Σ_b coef e = (coef·Y)ᵀ x`` and
        ``Σ_i g w e = Σ_s x ⊙ ((g·Y) W)``, summed over steps s."""
        grad_w = w.new_zeros(w.shape)
        coefs, lower = [], []
        for b0 in range(0, max(1, self.batch), self.step):  # one (empty) chunk for an empty batch
            rows = slice(b0, min(self.batch, b0 + self.step))
            x = self.pre[:, rows]
            y = self.tk.anticausal_traces(self.tk.post_event_matrix(self.post[:, rows].contiguous(), self.kernel),
                                          self.kernel)
            flat = x.reshape(-1, x.shape[2])  # a view when one chunk holds the batch
            side = (y * (flat @ w.t()).view_as(y)).sum(0) if need_side else None
            coef = coef_for(side, rows)
            grad_w.addmm_((y * coef).flatten(0, 1).t(), flat)
            if below:
                lower.append((((y * g[rows]).flatten(0, 1) @ w).view_as(x) * x).sum(0))
            coefs.append(coef)
        return torch.cat(coefs), grad_w, (torch.cat(lower) if below else None)


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


def indexes_pre(rule: HM2BPRule, steps: int, n_in: int, n_out: int) -> bool:
    """Whether the pure-PyTorch backward of a linear layer indexes its pre raster (anti-causal pairs), so that the
    forward can take its currents from that index."""
    pairs = rule.strategy == "pairs" or (rule.strategy == "auto" and pairs_allowed(steps, n_in, n_out))
    return pairs and not traces_narrow_side(n_in, n_out)


def make_contraction(ev: Events, pre: torch.Tensor, kernel: PSPKernel, strategy: str,
                     pool: BufferPool | None = None) -> _Pairs | _Dense | _Sparse:
    """The contraction object for one layer's backward (``pre`` time-major)."""
    if strategy == "auto":
        strategy = choose_strategy(ev, pre.shape[-1])
    return {"pairs": _Pairs, "dense": _Dense, "sparse": _Sparse}[strategy](ev, pre, kernel, pool)


class HM2BPLinearFunction(torch.autograd.Function):
    """Spiking linear layer: forward = GEMM + LIF scan, backward = HM2-BP (see the module docstring)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None,
                setup: LayerSetup, training: bool) -> torch.Tensor:
        B, T, n_in = pre.shape
        n_out = weight.shape[0]
        pre_tm = pre.transpose(0, 1).contiguous()  # free when pre is itself a view of a time-major tensor
        family = ops.kernels_for(pre_tm)
        if family == "cpp":
            out = setup.buffers.get((T, B, n_out), pre_tm)
            post_tm = ops.linear_forward(pre_tm, weight, setup.lif, setup.lateral_w0, out=out)
        else:
            buf = setup.buffers.get((T + 1, B, n_out), pre_tm)  # row t + 1 ← I[t]/τs, then the spikes
            currents = buf[1:].view(T * B, n_out)
            if training and family == "torch" and indexes_pre(setup.rule, T, n_in, n_out):
                # The backward indexes the wide pre raster anyway: the currents from its spikes, not a GEMM over it.
                currents.copy_(indexed_matmul(spike_index(pre_tm), weight.t() / setup.lif.tau_s))
            else:
                torch.mm(pre_tm.view(T * B, n_in), weight.t() / setup.lif.tau_s, out=currents)
            post_tm = ops.scan(buf, setup.lif, setup.lateral_w0)
        ctx.setup = setup
        ctx.save_for_backward(pre_tm, weight, post_tm, labels)
        return post_tm.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_post: torch.Tensor):
        pre, weight, post, labels = ctx.saved_tensors  # time-major (T, B, N)
        setup: LayerSetup = ctx.setup
        rule = setup.rule
        kernel = setup.kernel
        nu = setup.lif.threshold
        T, B, n_in = pre.shape
        g = grad_post.mean(1) / nu  # δ/ν, δ = ∂L/∂o

        lam = None
        if setup.is_output and rule.lateral_factor and setup.lateral_w0 > 0:
            lam = lateral_factor(post, labels, setup)  # before the patch (docs/algorithm.md §13)
        if setup.is_output and rule.silent_target_patch and labels is not None:
            post = patch_silent_target(post, labels, setup.target_count)

        rho_silent = rule.silent_post_rho * weight.sum(1) if rule.side_effect else None
        need_below = ctx.needs_input_grad[0] and rule.effect_ratio
        family = ops.kernels_for(pre)
        if family == "cpp":
            coef, grad_w, gwe, o, o_pre = ops.linear_backward(pre, post, weight, g, lam, rho_silent, nu, need_below,
                                                              kernel)
            remember_sums(post, o)  # the firing statistics need not read the rasters again
            remember_sums(pre, o_pre)
            fired = o > 0
        else:
            o = spike_sums(post)
            o_pre = spike_sums(pre)
            fired = o > 0
            if family == "triton" and pre.dtype == post.dtype and pre.dtype in (torch.float32, torch.float64):
                contraction = _Anticausal(pre, post.contiguous(), kernel)
            else:
                contraction = make_contraction(post_events(post, kernel), pre, kernel, rule.strategy, setup.buffers)

            def coef_for(side_sum: torch.Tensor | None, rows: slice) -> torch.Tensor:
                coef = g[rows]
                if side_sum is not None:
                    side = torch.where(fired[rows], side_sum / o[rows].clamp(min=1), rho_silent) / nu
                    coef = coef * (1.0 + side)
                return coef if lam is None else coef * lam[rows]

            coef, grad_w, gwe = contraction.contract(weight, g, coef_for, rho_silent is not None, need_below)
        if rule.silent_post_psp:
            grad_w += rule.silent_post_psp * ((coef * (~fired)).t() @ (o_pre > 0).to(coef.dtype))

        grad_pre = None
        if ctx.needs_input_grad[0]:
            if gwe is not None:  # Σ_i g_i w_ij e_ij
                pre_fired = o_pre > 0
                delta = torch.where(pre_fired, gwe / o_pre.clamp(min=1), torch.zeros_like(gwe))
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
