"""The engine's ops; each picks its own kernel (:func:`hm2bp.backend.kernels_for`) and checks what that kernel takes.

=====================  ==========================  ===========================  ===========================
op                     C++ (:mod:`.cpp_kernels`)   Triton (:mod:`.triton_path`)  PyTorch (:mod:`.torch_kernels`)
=====================  ==========================  ===========================  ===========================
:func:`scan`           in-place scan               scan kernel + spike counts   :func:`~hm2bp.neuron.scan_core`
:func:`scan_currents`  copy + in-place scan        scan kernel, currents kept   copy + scan
:func:`linear_forward` currents fused in the scan  split-TF32 GEMM + scan        GEMM (or indexed rows) + scan
:func:`linear_backward` per-sample S-PSP rows      post side + GEMMs             pairs / dense / sparse
:func:`self_spsp`      per-sample S-PSPs           post side + ``bmm``           event list + traces
:func:`local_spsp`     (PyTorch)                   event matrix + traces         event list + gathered traces
:func:`conv_backward`  (PyTorch)                   post side + convolutions      local S-PSPs, pair by pair
:func:`pool_backward`  (PyTorch)                   post side, upsampled          local S-PSPs, pair by pair
:func:`bernoulli_spikes` hashed thresholds         hashed thresholds             int32 hash
:func:`bptt_forward`   scan recording membranes    scan kernel recording them   scan recording membranes
:func:`bptt_backward`  reverse-time recursion      reverse-time kernel          reverse-time recursion
=====================  ==========================  ===========================  ===========================

Every kernel takes float32/float64 rasters; other dtypes run the PyTorch path (one log line says so). Measured on the
project's 2-core CPU machines (``bench/ops_scan.py``, ``bench/engine_digits.py``, BENCHMARKS.md): the fused linear
layer beats GEMM + scan + sparse contractions, and the C++ scan beats the pure-PyTorch scan at every size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hm2bp import backend
from hm2bp.backend import Family
from hm2bp.neuron import LIFParams, scan_core
from hm2bp.ops import cpp_kernels, torch_kernels
from hm2bp.spsp import PSPKernel, indexed_matmul, remember_sums, spike_index
from hm2bp.workspace import BufferPool

if TYPE_CHECKING:
    from hm2bp.functional import HM2BPRule

FLOATS = (torch.float32, torch.float64)


def _family(what: str, x: torch.Tensor, *others: torch.Tensor) -> Family:
    """The kernels for ``what`` on ``x``: the backend's, or PyTorch (logged once) where the tensors are not all
    float32 or all float64."""
    family = backend.kernels_for(x)
    if family != "torch" and not (x.dtype in FLOATS and all(t.dtype == x.dtype for t in others)):
        backend.announce(f"pure-PyTorch {what} for {x.dtype}", f"the {family} kernels take float32/float64")
        return "torch"
    return family


def _triton_path():
    from hm2bp.ops import triton_path  # imports Triton: only where its kernels run

    return triton_path


def scan(buf: torch.Tensor, params: LIFParams, lateral_w0: float = 0.0) -> torch.Tensor:
    """The LIF scan of :func:`hm2bp.neuron.scan_inplace` (same contract: ``buf (T + 1, B, N)`` holds ``I/τs`` in rows
    ``1..T``; returns the spikes ``buf[:T]``). Where the kernel counts the spikes (Triton) they are remembered for
    :func:`hm2bp.spsp.spike_sums`."""
    args = params.scan_args(lateral_w0)
    family = _family("scan", buf)
    spikes = buf[: buf.shape[0] - 1]
    if family == "triton" and buf.is_contiguous():
        counts = backend.triton_kernels(buf.device).lif_scan(buf, *args)
        remember_sums(spikes, counts)
    elif family == "cpp":
        torch.ops.hm2bp.lif_scan_(buf, *args)
    else:
        scan_core(buf, *args)
    return spikes


def scan_currents(currents: torch.Tensor, params: LIFParams, pool: BufferPool, keep: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Time-major spikes ``(T, B, N)`` of the LIF scan driven by ``currents = I/τs (T, B, N)`` (a conv or pooling
    layer's), and ``currents`` themselves where ``keep`` and the backward reads them (Triton path), else None.

    The Triton scan reads the currents where they lie (``drive``) and writes the spikes to their own buffer, so the
    currents survive for the backward's side effect and are not copied; the other paths copy them into rows
    ``1..T`` of one ``(T + 1, B, N)`` buffer that the scan overwrites with the spikes (:func:`scan`)."""
    T, B, N = currents.shape
    if _family("scan", currents) == "triton" and currents.is_contiguous():
        spikes = pool.get((T, B, N), currents)
        remember_sums(spikes, backend.triton_kernels(currents.device).lif_scan(spikes, *params.scan_args(0.0),
                                                                               drive=currents))
        return spikes, (currents if keep else None)
    buf = pool.get((T + 1, B, N), currents)
    buf[1:].copy_(currents)
    return scan(buf, params), None


def linear_forward(pre: torch.Tensor, weight: torch.Tensor, params: LIFParams, lateral_w0: float, pool: BufferPool,
                   training: bool = False, keep_currents: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Time-major spikes ``(T, B, N_out)`` of a spiking linear layer, ``I[t] = W pre[t]`` then the scan, and the
    currents ``x Wᵀ/τs (T, B, N_out)`` where ``keep_currents`` and the backward reads them (Triton path), else None.

    Args:
        pre: contiguous time-major ``(T, B, N_in)`` 0/1 trains; weight: ``(N_out, N_in)``.
        params, lateral_w0: the layer's LIF parameters and output-layer lateral inhibition (≥ 0).
        pool: the layer's buffers (reused across steps).
        training: a backward will follow (the PyTorch path may then take the currents from the raster's index).
    """
    T, B, n_in = pre.shape
    n_out = weight.shape[0]
    family = _family("linear layer", pre, weight)
    if family == "cpp":
        out = pool.get((T, B, n_out), pre)
        return cpp_kernels.linear_forward(pre, weight, params, lateral_w0, out=out), None
    w = weight.t() / params.tau_s
    if family == "triton":  # currents and spikes in separate tensors: the backward may read the currents
        currents = pool.get((T, B, n_out), pre)
        _triton_path().spike_mm(pre.view(T * B, n_in), w, out=currents.view(T * B, n_out))
        spikes = pool.get((T, B, n_out), pre)
        remember_sums(spikes, backend.triton_kernels(pre.device).lif_scan(spikes, *params.scan_args(lateral_w0),
                                                                          drive=currents))
        return spikes, (currents if keep_currents else None)
    buf = pool.get((T + 1, B, n_out), pre)  # row t + 1 ← I[t]/τs, then the spikes
    currents = buf[1:].view(T * B, n_out)
    if training and torch_kernels.indexes_pre(backend.get_strategy(), T, n_in, n_out):
        # The backward indexes the wide pre raster anyway: the currents from its spikes, not a GEMM over it.
        currents.copy_(indexed_matmul(spike_index(pre), w))
    else:
        torch.mm(pre.view(T * B, n_in), w, out=currents)
    return scan(buf, params, lateral_w0), None


def linear_backward(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor,
                    lam: torch.Tensor | None, rho: torch.Tensor | None, nu: float, need_below: bool,
                    kernel: PSPKernel, pool: BufferPool | None = None, currents: torch.Tensor | None = None,
                    tau_s: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """HM2-BP contractions of one linear layer from time-major ``pre``/``post`` trains.

    With ``e`` the S-PSPs of :func:`hm2bp.spsp.spsp` (no fallbacks) and ``o`` the post counts, returns

    * ``coef[b, i] = g[b, i] (1 + S[b, i]) lam[b, i]``, ``S = (Σ_j w_ij e_bij)/(o_bi ν)`` for a firing neuron and
      ``rho_i/ν`` for a silent one (``rho = None``: no side effect; ``lam = None``: ``Λ = 1``);
    * ``Σ_b coef[b, i] e[b, i, j]``, the weight gradient before the silent-neuron terms;
    * ``Σ_i g[b, i] w_ij e[b, i, j]`` when ``need_below``, else None;
    * the spike counts ``o (B, N_out)`` and ``o_pre (B, N_in)``.

    ``currents`` (Triton path): the forward's ``x Wᵀ/τs``, which give the side effect's ``Σ_j w e`` without a GEMM.
    """
    family = _family("HM2-BP contraction", pre, post, weight, g)
    if family == "cpp":
        coef, grad_w, gwe, o, o_pre = cpp_kernels.linear_backward(pre, post, weight, g, lam, rho, nu, need_below,
                                                                  kernel)
        remember_sums(post, o)  # the firing statistics need not read the rasters again
        remember_sums(pre, o_pre)
        return coef, grad_w, gwe, o, o_pre
    if family == "triton":
        return _triton_path().linear_backward(pre, post, weight, g, lam, rho, nu, need_below, kernel, currents,
                                              tau_s)
    return torch_kernels.linear_backward(pre, post, weight, g, lam, rho, nu, need_below, kernel, pool,
                                         backend.get_strategy())


def self_spsp(post: torch.Tensor, kernel: PSPKernel, events: torch.Tensor | None = None) -> torch.Tensor:
    """S-PSPs ``e (B, N, N)`` of time-major ``post (T, B, N)`` onto itself, ``e[b, l, i]`` of neuron ``l``'s events
    on neuron ``i``'s train: the lateral factor's. ``events``: the same trains with a silent label neuron patched,
    which the Triton path reads for ``l`` (its event side is then made once for the contraction too; every pair of a
    silent neuron is masked by the caller)."""
    family = _family("S-PSP", post)
    if family == "cpp":
        return cpp_kernels.spsp(post, post, kernel)
    if family == "triton":
        return _triton_path().self_spsp(post, kernel, post if events is None else events)
    return torch_kernels.self_spsp(post, kernel)


def local_spsp(post: torch.Tensor, pre: torch.Tensor, kernel: PSPKernel, index: torch.Tensor,
               pool: BufferPool | None = None, chunk_bytes: int = torch_kernels.LOCAL_TRACE_BYTES,
               chunk_elems: int = torch_kernels.LOCAL_CHUNK_ELEMS) -> torch.Tensor:
    """S-PSPs of each post neuron with its own inputs only, ``out[b, p, m] = e_{p, index[p, m]}``, from time-major
    ``post (T, B, N_out)`` and ``pre (T, B, N_in)``; ``index (N_out, M)`` lists each post neuron's inputs (a receptive
    field or pooling window). Memory ``O(B·N_out·M)`` plus one chunk (``chunk_bytes`` of traces, ``chunk_elems``
    gathered values)."""
    if _family("local S-PSP", post, pre) == "triton":
        return _triton_path().local_spsp(post, pre, kernel, index, chunk_bytes)
    return torch_kernels.local_spsp(post, pre, kernel, index, pool, chunk_bytes, chunk_elems)


def conv_backward(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor, rule: HM2BPRule,
                  kernel: PSPKernel, nu: float, need_below: bool, pool: BufferPool | None = None,
                  currents: torch.Tensor | None = None, tau_s: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HM2-BP of a spiking conv layer (:class:`hm2bp.conv.HM2BPConv2dFunction`, docs/algorithm.md §6) from
    time-major ``pre (T, B, C, H, W)`` and ``post (T, B, C'·H'·W')``, ``weight (C', C, K, K)`` and
    ``g = δ/ν (B, C', H'·W')``: returns ``∂L/∂W`` and, when ``need_below``, the error below ``δ_q (B, C, H, W)``.

    With ``e_pm = e_{p, q_m(p)}`` the local S-PSPs (input ``q_m(p)`` of output pixel ``p``'s field, weight ``w_m``),
    ``o``/``o_pre`` the spike counts:

    * ``coef_p = g_p (1 + S_p/ν)``, ``S_p = Σ_m w_m e_pm/o_p`` (``silent_post_rho·Σ_m w_m`` for a silent ``p``),
      or ``g_p`` without the side effect;
    * ``∂L/∂w_m = Σ_{b, p} coef_p ê_pm``, ``ê = silent_post_psp`` for a silent post and active pre, else ``e``;
    * ``δ_q = Σ_{p ∋ q} g_p w_m r_pm``, ``r = e/o_pre`` where both neurons fire, else ``silent_effect_ratio``
      (``r = 1`` without the effect ratio).

    Triton path: the anticausal form with convolutions (:func:`hm2bp.ops.triton_path.conv_backward`), which reads
    the forward's ``currents = (x ⊛ W)/τs (T, B, N_out)`` (:func:`scan_currents`) where given; elsewhere the local
    S-PSPs (:func:`local_spsp`, memory ``O(B·N_out·C·K²)``) pair by pair."""
    if _family("conv HM2-BP", post, pre, weight, g) == "triton":
        return _triton_path().conv_backward(pre, post, weight, g, rule, kernel, nu, need_below, currents, tau_s)
    return torch_kernels.conv_backward(pre, post, weight, g, rule, kernel, nu, need_below, pool)


def pool_backward(pre: torch.Tensor, post: torch.Tensor, g: torch.Tensor, k: int, rule: HM2BPRule,
                  kernel: PSPKernel, pool: BufferPool | None = None) -> torch.Tensor:
    """Error below ``δ_q (B, C, H, W)`` of spiking ``k×k`` pooling (:class:`hm2bp.conv.HM2BPPool2dFunction`) from
    time-major ``pre (T, B, C, H, W)``, ``post (T, B, C·(H/k)·(W/k))`` and the scaled error ``g (B, N_out)``: each
    input ``q`` lies in one window ``p(q)``, ``δ_q = g_{p(q)}·r``, ``r = e_{p(q) q}/o_pre(q)`` where both neurons fire,
    else ``silent_effect_ratio`` (``r = 1`` without the effect ratio).

    Triton path: ``e`` from the anticausal traces upsampled by the window (:func:`hm2bp.ops.triton_path.pool_backward`);
    elsewhere the local S-PSPs (:func:`local_spsp`)."""
    if _family("pooling HM2-BP", post, pre, g) == "triton":
        return _triton_path().pool_backward(pre, post, g, k, rule, kernel)
    return torch_kernels.pool_backward(pre, post, g, k, rule, kernel, pool)


def bernoulli_spikes(indices: torch.Tensor, salt: int, q: torch.Tensor, steps: int, dtype: torch.dtype,
                     pool: BufferPool) -> torch.Tensor:
    """Time-major ``(steps, B, N)`` spikes ``hash(key_b + t·N + i)/2³² < q[b, i]`` (none at ``t = 0``) for float64
    probabilities ``q (B, N)``, with per-sample keys ``hash(hash(index_b ⊕ salt))``
    (:func:`hm2bp.ops.torch_kernels.sample_keys`; the Triton kernel hashes them itself); the C++ and Triton kernels
    write into ``pool``'s rasters."""
    family = backend.kernels_for(q)
    if family == "torch":
        return torch_kernels.hashed_spikes(q, steps, torch_kernels.sample_keys(indices, salt), dtype)
    spikes = pool.get((steps, *q.shape), q.new_empty(0, dtype=dtype))
    if family == "cpp":
        torch.ops.hm2bp.bernoulli_hash_(torch_kernels.sample_keys(indices, salt), q.contiguous(), spikes)
    else:
        backend.triton_kernels(q.device).bernoulli_spikes(indices.to(torch.int64).contiguous(), salt, q.contiguous(),
                                                          spikes)
    return spikes


# Spikes, recorded membranes and current gradients of BPTT layers, reused once autograd has let go of them: fresh
# rasters of this size pay more in page faults than the scan costs (BENCHMARKS.md).
_BPTT_BUFFERS = BufferPool(8)


def bptt_forward(currents: torch.Tensor, inv_tau_s: float, fire_at: float, decay_m: float, decay_s: float,
                 t_ref: int, lateral: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes and the membrane before the refractory hold ``u`` (both ``(T, B, N)``) of the LIF scan driven by
    time-major ``currents`` (step ``t`` reads ``I[t−1]·inv_tau_s``): :func:`hm2bp.neuron.lif_scan`'s spikes, spike
    for spike."""
    family = _family("BPTT scan", currents)
    if family == "cpp":
        currents = currents.contiguous()
        spikes, u = (_BPTT_BUFFERS.get(currents.shape, currents) for _ in range(2))
        torch.ops.hm2bp.bptt_forward_(currents, inv_tau_s, spikes, u, fire_at, decay_m, decay_s, t_ref, lateral)
        return spikes, u
    if family == "triton":
        drive = (currents * inv_tau_s).contiguous()  # the PyTorch path's product, so the spikes are its own
        spikes, u = (_BPTT_BUFFERS.get(drive.shape, drive) for _ in range(2))
        backend.triton_kernels(drive.device).lif_scan(spikes, fire_at, decay_m, decay_s, t_ref, lateral, drive=drive,
                                                      u=u)
        return spikes, u
    return torch_kernels.bptt_forward(currents, inv_tau_s, fire_at, decay_m, decay_s, t_ref, lateral)


def bptt_backward(grad_spikes: torch.Tensor, spikes: torch.Tensor, u: torch.Tensor, inv_tau_s: float,
                  fire_at: float, decay_m: float, decay_s: float, t_ref: int, lateral: float, slope: float,
                  reset_grad: bool) -> torch.Tensor:
    """``∂L/∂currents`` of :func:`bptt_forward` by BPTT with the fast-sigmoid surrogate (:mod:`hm2bp.bptt`)."""
    family = _family("BPTT backward", spikes, grad_spikes, u)
    if family != "torch":
        grad_currents = _BPTT_BUFFERS.get(u.shape, u)
        args = (grad_spikes.contiguous(), spikes.contiguous(), u.contiguous())
        scalars = (inv_tau_s, fire_at, decay_m, decay_s, t_ref, lateral, slope, reset_grad)
        if family == "cpp":
            torch.ops.hm2bp.bptt_backward_(*args, grad_currents, *scalars)
        else:
            backend.triton_kernels(u.device).bptt_backward(*args, *scalars, out=grad_currents)
        return grad_currents
    return torch_kernels.bptt_backward(grad_spikes, spikes, u, inv_tau_s, fire_at, decay_m, decay_s, t_ref, lateral,
                                       slope, reset_grad)
