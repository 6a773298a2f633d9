"""LIF neuron with a first-order current synapse, simulated as the authors' code does (docs/algorithm.md §1).

Per neuron, with synaptic state ``c`` and membrane ``v`` both 0 at ``t = 0``, for ``t = 1 .. T-1``:

1. leak (forward Euler):   ``v ← v·(1 − 1/τm)``,  ``c ← c·(1 − 1/τs)``
2. input, one-step delay:  ``c ← c + I[t−1]``  (minus ``w0`` for every *other* output neuron that spiked at ``t−1``
   when lateral inhibition is on)
3. integrate:              ``v ← v + c/τs``
4. refractory:             if the counter ``r > 0``: ``v ← 0``, ``r ← r − 1``
5. fire if ``v > ν − eps``: ``s[t] = 1``, ``r ← t_ref``, ``v ← 0``

No neuron spikes at ``t = 0``. The synaptic state is never reset.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from hm2bp.backend import host_reads_allowed

# Provenance of every default below: docs/algorithm.md §1 [CODE `layers/Spiking.cu:1470-1538`].
TAU_M = 64.0  # membrane time constant, in steps
TAU_S = 8.0  # synaptic time constant, in steps
T_REF = 2  # refractory period, in steps
FC_THRESHOLD_EPS = 1e-6  # FC and pooling layers fire at v > ν − 1e-6; conv layers compare with ν exactly


@dataclass(frozen=True)
class LIFParams:
    """Parameters of one layer of LIF neurons.

    Attributes:
        threshold: firing threshold ν (> 0).
        tau_m: membrane time constant τm in steps (> tau_s).
        tau_s: synaptic time constant τs in steps (> 1, so the Euler decay 1 − 1/τs is positive).
        t_ref: refractory period in steps (≥ 0): the membrane is held at 0 for ``t_ref`` steps after a spike.
        threshold_eps: a spike fires when ``v > threshold − threshold_eps``.
    """

    threshold: float
    tau_m: float = TAU_M
    tau_s: float = TAU_S
    t_ref: int = T_REF
    threshold_eps: float = FC_THRESHOLD_EPS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0, got {self.threshold!r}")
        if not (self.tau_s > 1):
            raise ValueError(f"tau_s must be > 1 step (Euler decay 1 - 1/tau_s > 0), got {self.tau_s!r}")
        if not (self.tau_m > self.tau_s):
            raise ValueError(f"tau_m must be > tau_s, got tau_m={self.tau_m!r}, tau_s={self.tau_s!r}")
        if not (isinstance(self.t_ref, int) and self.t_ref >= 0):
            raise ValueError(f"t_ref must be an int >= 0, got {self.t_ref!r}")
        if not (0 <= self.threshold_eps < self.threshold):
            raise ValueError(f"threshold_eps must be in [0, threshold), got {self.threshold_eps!r}")

    def scan_args(self, lateral_w0: float = 0.0) -> tuple[float, float, float, int, float]:
        """The scan kernels' primitive arguments ``(fire_at, decay_m, decay_s, t_ref, lateral)``: fire at
        ``v > ν − eps``, Euler decays ``1 − 1/τ``, ``lateral = w0/τs`` (the drive is ``I/τs``); ``w0 ≥ 0``."""
        if lateral_w0 < 0:
            raise ValueError(f"lateral_w0 must be >= 0, got {lateral_w0}")
        return (self.threshold - self.threshold_eps, 1.0 - 1.0 / self.tau_m, 1.0 - 1.0 / self.tau_s, self.t_ref,
                lateral_w0 / self.tau_s)


# Tensors known to hold only 0/1: id → (weak reference, version counter when marked). Weak: a mark keeps no raster
# alive; the version: any write to the tensor (or a view of it) drops the mark.
_marks: dict[int, tuple[weakref.ref, int]] = {}


def mark_spikes(x: torch.Tensor) -> torch.Tensor:
    """Record that ``x`` holds only 0/1 (it was made so, e.g. by an encoder), so that :func:`check_spikes` need not read
    it again while it is unchanged (the check reads the whole raster, a cost per batch comparable to a layer's GEMM:
    BENCHMARKS.md). Returns ``x``."""
    if not x.is_inference():  # inference tensors have no version counter
        key = id(x)
        _marks[key] = (weakref.ref(x, lambda _, k=key: _marks.pop(k, None)), x._version)
    return x


def marked(x: torch.Tensor) -> bool:
    """Whether ``x`` itself was marked by :func:`mark_spikes` and not written since."""
    entry = _marks.get(id(x))
    return entry is not None and entry[0]() is x and entry[1] == x._version


def check_spikes(name: str, x: torch.Tensor, ndim: int = 3) -> None:
    """Raise a clear error unless ``x`` is a floating or bool tensor of rank ``ndim`` holding only 0/1 (the values
    are not read on the Triton path: see :func:`hm2bp.backend.host_reads_allowed`, nor for a tensor :func:`mark_spikes`
    marked and nothing wrote since)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims (batch, time, neurons), got shape {tuple(x.shape)}")
    if not (x.dtype == torch.bool or x.is_floating_point()):
        raise TypeError(f"{name} must be bool or floating point, got {x.dtype}")
    if x.dtype == torch.bool or not host_reads_allowed(x) or marked(x):
        return
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{name} must hold only 0/1 spikes")
    mark_spikes(x)


def lif_scan(currents: torch.Tensor, params: LIFParams, lateral_w0: float = 0.0) -> torch.Tensor:
    """Simulate one layer over time (docs/algorithm.md §1); the only sequential part of the engine.

    Args:
        currents: ``(B, T, N)`` input currents ``I[t] = W s_in[t]``.
        params: the layer's LIF parameters.
        lateral_w0: strength ``w0 ≥ 0`` of the fixed all-to-all lateral inhibition (output layer); 0 disables it.

    Returns:
        ``(B, T, N)`` spike trains (0/1) in the dtype of ``currents`` (a view of a time-major tensor).
    """
    if currents.dim() != 3:
        raise ValueError(f"currents must be (batch, time, neurons), got shape {tuple(currents.shape)}")
    if not currents.is_floating_point():
        raise TypeError(f"currents must be floating point, got {currents.dtype}")
    B, T, N = currents.shape
    buf = currents.new_empty(T + 1, B, N)
    torch.mul(currents.transpose(0, 1), 1.0 / params.tau_s, out=buf[1:])
    return scan_inplace(buf, params, lateral_w0).transpose(0, 1)


def scan_inplace(buf: torch.Tensor, params: LIFParams, lateral_w0: float = 0.0) -> torch.Tensor:
    """The LIF scan on a time-major work buffer, overwritten with the spikes.

    Args:
        buf: ``(T + 1, B, N)``; row ``t + 1`` holds ``I[t]/τs`` on entry (row 0 is ignored).
        params: the layer's LIF parameters; lateral_w0: lateral inhibition strength (≥ 0).

    Returns:
        ``buf[:T]``, now holding the spikes ``s[t]`` (0/1) at row ``t``.

    Row ``t`` is read (the drive for step ``t``) before spike ``s[t]`` is written into it, so one buffer serves
    the GEMM output and the spike trains. Steps 1–3 of the module docstring become two one-op updates of
    ``c̃ = c/τs`` and ``v``; refractory hold, firing and reset are float arithmetic on contiguous ``(B, N)`` rows
    (bool masks are several times slower on CPU).
    """
    return scan_core(buf, *params.scan_args(lateral_w0))


def scan_core(buf: torch.Tensor, fire_at: float, decay_m: float, decay_s: float, t_ref: int,
              lateral: float) -> torch.Tensor:
    """:func:`scan_inplace` on primitive arguments: fire at ``v > fire_at``, decays ``1 − 1/τ``, ``lateral = w0/τs``.

    This is the pure-PyTorch kernel that the compiled kernels of :mod:`hm2bp.ops` reproduce spike for spike.
    """
    if buf.dim() != 3 or buf.shape[0] < 1:
        raise ValueError(f"buf must be (T + 1, batch, neurons), got shape {tuple(buf.shape)}")
    T = buf.shape[0] - 1
    out = buf[:T]
    if T == 0:
        return out
    rows = buf.unbind(0)  # one call instead of several row views per step
    c = torch.zeros_like(rows[0])  # c/τs
    v = torch.zeros_like(c)
    held = torch.empty_like(c) if t_ref > 1 else None
    rows[0].zero_()  # no spike at t = 0
    for t in range(1, T):
        torch.add(rows[t], c, alpha=decay_s, out=c)  # steps 1–2: c ← c(1 − 1/τs) + I[t−1]
        if lateral:
            prev = rows[t - 1]
            c.sub_(prev.sum(dim=-1, keepdim=True) - prev, alpha=lateral)  # −w0 per other neuron fired at t−1
        torch.add(c, v, alpha=decay_m, out=v)  # steps 1, 3: v ← v(1 − 1/τm) + c/τs
        # step 4: held at 0 for t_ref steps after a spike. At most one of s[t−1..t−t_ref] is 1 (refractoriness), so
        # v·(1 − Σ_k s[t−k]) is exactly v or 0; it also performs step 5's reset, one step late but before v is used.
        k_max = min(t_ref, t)
        if k_max == 1:
            v.addcmul_(v, rows[t - 1], value=-1.0)
        elif k_max > 1:
            assert held is not None
            torch.add(rows[t - 1], rows[t - 2], out=held)
            for k in range(3, k_max + 1):
                held.add_(rows[t - k])
            v.addcmul_(v, held, value=-1.0)
        torch.gt(v, fire_at, out=rows[t])  # step 5: fire (and reset: above, or right here without refractoriness)
        if t_ref == 0:
            v.addcmul_(v, rows[t], value=-1.0)
    return out
