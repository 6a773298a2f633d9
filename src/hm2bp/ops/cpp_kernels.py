"""The C++ kernels of :mod:`hm2bp.ops` as PyTorch custom ops (built on first use: :func:`hm2bp.backend.load_extension`).

``torch.ops.hm2bp.lif_scan_(buf, fire_at, decay_m, decay_s, t_ref, lateral)`` runs the scan of
:func:`hm2bp.neuron.scan_core` in place. ``torch.ops.hm2bp.linear_forward_`` and ``torch.ops.hm2bp.linear_backward``
are the whole spiking fully-connected layer (:func:`linear_forward`, :func:`linear_backward`): an event-driven input
current fused with the scan, and the HM2-BP contractions from per-sample S-PSP rows that never leave the cache. They
compute what the pure-PyTorch path computes; only the order of floating-point sums differs (the input current adds
weight rows spike by spike instead of a GEMM). ``torch.ops.hm2bp.spsp`` gives per-sample S-PSPs,
``torch.ops.hm2bp.bernoulli_hash_`` the Bernoulli encoder's spikes.
"""

from __future__ import annotations

import torch

from hm2bp.backend import cpu_kernels
from hm2bp.neuron import LIFParams
from hm2bp.spsp import PSPKernel


@torch.library.custom_op("hm2bp::lif_scan_", mutates_args=("buf",))
def lif_scan_(buf: torch.Tensor, fire_at: float, decay_m: float, decay_s: float, t_ref: int,
              lateral: float) -> None:
    """In-place LIF scan of the ``(T + 1, B, N)`` work buffer (see :func:`hm2bp.neuron.scan_inplace`)."""
    cpu_kernels().lif_scan_cpu(buf, fire_at, decay_m, decay_s, t_ref, lateral)


@lif_scan_.register_fake
def _(buf, fire_at, decay_m, decay_s, t_ref, lateral) -> None:  # shapes do not change: nothing to compute
    return None


@torch.library.custom_op("hm2bp::linear_forward_", mutates_args=("out",))
def linear_forward_(pre: torch.Tensor, weight_t: torch.Tensor, out: torch.Tensor, fire_at: float, decay_m: float,
                    decay_s: float, t_ref: int, lateral: float) -> None:
    """Spikes ``out (T, B, N_out)`` of a spiking linear layer from time-major ``pre (T, B, N_in)`` and
    ``weight_t = Wᵀ/τs``: per step ``c ← c·decay_s + Σ_{j: pre_j[t−1]≠0} pre_j[t−1]·weight_t[j]`` (adds of the rows
    of the inputs that spiked), then :func:`scan_core`."""
    cpu_kernels().linear_forward_cpu(pre, weight_t, out, fire_at, decay_m, decay_s, t_ref, lateral)


@linear_forward_.register_fake
def _(pre, weight_t, out, fire_at, decay_m, decay_s, t_ref, lateral) -> None:
    return None


@torch.library.custom_op("hm2bp::linear_backward", mutates_args=())
def linear_backward_op(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor,
                       lam: torch.Tensor, rho: torch.Tensor, nu: float, need_below: bool, decay_m: float,
                       decay_s: float, coef_m: float, coef_s: float, delay: int, t_ref: int, window: int,
                       zero_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(coef, Σ_b coef ⊗ e, Σ_i g w e, o, o_pre)`` of :func:`linear_backward` (empty ``lam``/``rho``: factor off)."""
    return tuple(cpu_kernels().linear_backward_cpu(pre, post, weight, g, lam, rho, nu, need_below, decay_m, decay_s,
                                                   coef_m, coef_s, delay, t_ref, window, zero_first))


@linear_backward_op.register_fake
def _(pre, post, weight, g, lam, rho, nu, need_below, decay_m, decay_s, coef_m, coef_s, delay, t_ref, window,
      zero_first):
    below = pre.new_empty(pre.shape[1], pre.shape[2]) if need_below else pre.new_empty(0)
    return (g.new_empty(g.shape), weight.new_empty(weight.shape), below, g.new_empty(g.shape),
            pre.new_empty(pre.shape[1], pre.shape[2]))


def linear_forward(pre: torch.Tensor, weight: torch.Tensor, params: LIFParams, lateral_w0: float = 0.0,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Time-major spikes ``(T, B, N_out)`` of a spiking linear layer (fused C++; same as GEMM + :func:`scan`).

    Args:
        pre: time-major ``(T, B, N_in)`` 0/1 input trains; weight: ``(N_out, N_in)``.
        params: the layer's LIF parameters; lateral_w0: output-layer lateral inhibition (≥ 0).
        out: optional ``(T, B, N_out)`` buffer to write the spikes into (reused across steps).
    """
    args = params.scan_args(lateral_w0)
    T, B, _ = pre.shape
    if out is None:
        out = pre.new_empty(T, B, weight.shape[0])
    weight_t = (weight.t() / params.tau_s).contiguous()  # the GEMM path scales W the same way
    torch.ops.hm2bp.linear_forward_(pre.contiguous(), weight_t, out, *args)
    return out


def linear_backward(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor,
                    lam: torch.Tensor | None, rho: torch.Tensor | None, nu: float, need_below: bool,
                    kernel: PSPKernel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                torch.Tensor]:
    """HM2-BP contractions of one linear layer (fused C++), from time-major ``pre``/``post`` trains.

    With ``e`` the S-PSPs of :func:`hm2bp.spsp.spsp` (no fallbacks) and ``o`` the post counts, returns

    * ``coef[b, i] = g[b, i] (1 + S[b, i]) lam[b, i]``, ``S = (Σ_j w_ij e_bij)/(o_bi ν)`` for a firing neuron and
      ``rho_i/ν`` for a silent one (``rho = None``: no side effect; ``lam = None``: ``Λ = 1``);
    * ``Σ_b coef[b, i] e[b, i, j]``, the weight gradient before the silent-neuron terms;
    * ``Σ_i g[b, i] w_ij e[b, i, j]`` when ``need_below``, else None;
    * the spike counts ``o (B, N_out)`` and ``o_pre (B, N_in)`` (so the caller need not sum the trains again).
    """
    empty = g.new_empty(0)
    coef, grad_w, gwe, o, o_pre = torch.ops.hm2bp.linear_backward(
        pre.contiguous(), post.contiguous(), weight.contiguous(), g.contiguous(),
        empty if lam is None else lam.contiguous(), empty if rho is None else rho.contiguous(), float(nu),
        need_below, *kernel.decays, *kernel.coeffs, kernel.delay, kernel.t_ref,
        kernel.window if kernel.split else -1, kernel.convention == "original")
    return coef, grad_w, (gwe if need_below else None), o, o_pre


@torch.library.custom_op("hm2bp::spsp", mutates_args=())
def spsp_op(pre: torch.Tensor, post: torch.Tensor, decay_m: float, decay_s: float, coef_m: float, coef_s: float,
            delay: int, t_ref: int, window: int, zero_first: bool) -> torch.Tensor:
    """The S-PSPs ``e (B, N_out, N_in)`` of :func:`spsp` (``window < 0``: none)."""
    return cpu_kernels().spsp_cpu(pre, post, decay_m, decay_s, coef_m, coef_s, delay, t_ref, window, zero_first)


@spsp_op.register_fake
def _(pre, post, decay_m, decay_s, coef_m, coef_s, delay, t_ref, window, zero_first):
    return pre.new_empty(pre.shape[1], post.shape[2], pre.shape[2])


def spsp(pre: torch.Tensor, post: torch.Tensor, kernel: PSPKernel) -> torch.Tensor:
    """Per-sample S-PSPs ``e[b, i, j]`` of post neuron ``i`` onto pre neuron ``j`` from time-major ``pre (T, B, N_in)``
    and ``post (T, B, N_out)`` (fused C++): ``hm2bp.spsp.contract(post_events(post), pre_traces(pre))``, the events of
    each post neuron read against the pre traces in cache; 0 for a silent neuron."""
    return torch.ops.hm2bp.spsp(pre.contiguous(), post.contiguous(), *kernel.decays, *kernel.coeffs, kernel.delay,
                                kernel.t_ref, kernel.window if kernel.split else -1, kernel.convention == "original")


@torch.library.custom_op("hm2bp::bernoulli_hash_", mutates_args=("out",))
def bernoulli_hash_(keys: torch.Tensor, q: torch.Tensor, out: torch.Tensor) -> None:
    """``out[t, b, i] = 1`` iff ``t ≥ 1`` and ``lowbias32(keys[b] + t·N + i)/2³² < q[b, i]`` (the pure-PyTorch
    :func:`hm2bp.encoding.hashed_uniform` draws the same uniforms)."""
    cpu_kernels().bernoulli_hash_cpu(keys, q, out)


@bernoulli_hash_.register_fake
def _(keys, q, out) -> None:
    return None


@torch.library.custom_op("hm2bp::bptt_forward_", mutates_args=("spikes", "u"))
def bptt_forward_(currents: torch.Tensor, inv_tau_s: float, spikes: torch.Tensor, u: torch.Tensor, fire_at: float,
                  decay_m: float, decay_s: float, t_ref: int, lateral: float) -> None:
    """The LIF scan driven by time-major ``currents (T, B, N)`` (step ``t`` reads ``I[t−1]·inv_tau_s``) into
    ``spikes``, recording the membrane before the refractory hold in ``u`` (what BPTT's backward needs)."""
    cpu_kernels().bptt_forward_cpu(currents, inv_tau_s, spikes, u, fire_at, decay_m, decay_s, t_ref, lateral)


@bptt_forward_.register_fake
def _(currents, inv_tau_s, spikes, u, fire_at, decay_m, decay_s, t_ref, lateral) -> None:
    return None


@torch.library.custom_op("hm2bp::bptt_backward_", mutates_args=("grad_currents",))
def bptt_backward_(grad_spikes: torch.Tensor, spikes: torch.Tensor, u: torch.Tensor, grad_currents: torch.Tensor,
                   inv_tau_s: float, fire_at: float, decay_m: float, decay_s: float, t_ref: int, lateral: float,
                   slope: float, reset_grad: bool) -> None:
    """BPTT's reverse-time recursion into ``grad_currents``."""
    cpu_kernels().bptt_backward_cpu(grad_spikes, spikes, u, grad_currents, inv_tau_s, fire_at, decay_m, decay_s,
                                    t_ref, lateral, slope, reset_grad)


@bptt_backward_.register_fake
def _(grad_spikes, spikes, u, grad_currents, inv_tau_s, fire_at, decay_m, decay_s, t_ref, lateral, slope,
      reset_grad) -> None:
    return None
