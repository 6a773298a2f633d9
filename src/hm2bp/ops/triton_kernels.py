"""Triton kernels of the engine's GPU path: the LIF scan (recording the membrane for BPTT), the Bernoulli encoder,
the sides of the HM2-BP contraction (pre traces, the dense post-event matrix and its anticausal traces), and BPTT's
reverse-time recursion.

The scan and the encoder compute, bit for bit, what their pure-PyTorch definitions compute
(:func:`hm2bp.neuron.scan_core`, :func:`hm2bp.encoding.bernoulli_encode`); the BPTT backward equals the literal
autograd-through-time reference to 1e-10 in float64 (``tests/test_bptt.py``); none synchronises with the host. The same
source runs on CUDA tensors (compiled) and, with ``TRITON_INTERPRET=1`` set before this module is imported, on CPU
tensors: that is how the CPU test suite proves them (``tests/test_triton.py``), and :func:`compile_for` builds each one
for an NVIDIA architecture without a GPU, so a compile error shows there too.

Loop bounds are compile-time constants (``tl.constexpr``): one compiled variant per T, which also keeps Triton 3.6's
interpreter working beside NumPy ≥ 2.4. Element offsets are int64 (a ``(2T, B, N)`` tensor passes 2³¹ elements at
T = 400 from B·N ≈ 2.7·10⁶, e.g. a paper-size CNN layer at batch ≈ 311). Each launch gets as many warps as its block
fills (:func:`_warps`). Time loops issue each step's loads together, from addresses and masks known before the step,
and then its stores: one memory round trip per step.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Triton 3.6's interpreter evaluates tl.fma as a rounded product plus a rounded sum; interpreted, float32 fused
# multiply-adds are therefore formed in float64 (the product of two float32 is exact there), as GPUs and PyTorch's
# vectorised CPU kernels fuse them. Compiled kernels use the hardware FMA.
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")

# Compile options beyond the warps, per kernel of KERNELS (the launch and compile_for both read them). No fused
# multiply-add in the TF32 split: fused, ``v − hi`` became fma(y, coef, −hi), which skips the rounding of
# ``v = y·coef`` that hi was cut from, so lo differed from tf32_parts(y·coef) (seen on the first GPU run).
_OPTIONS: dict[str, dict] = {"scaled_tf32_parts": {"enable_fp_fusion": False}}

SCAN_BLOCK = 128  # neurons per program of the scan (all of them when lateral inhibition couples a sample's neurons)
ENCODE_BLOCK = 256  # inputs per program of the encoder


def _warps(block: int) -> int:
    """Warps for a program of ``block`` lanes: one thread per lane up to 4 warps (a 32-lane warp on a 16-lane block
    still holds each lane twice; more than 4 warps would not shorten these latency-bound time loops)."""
    return max(1, min(4, block // 32))


@triton.jit
def _fma(a, b, c):
    """``a·b + c`` with one rounding (see ``_INTERPRETED``)."""
    if _INTERPRETED and c.dtype == tl.float32:
        return (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(tl.float32)
    return tl.fma(a, b, c)


@triton.jit
def _column_block(B, N, BLOCK: tl.constexpr):
    """This program's neurons ``[pid_n·BLOCK, …)`` of sample ``pid_b``: their mask, their offsets ``b·N + n`` in a
    ``(…, B, N)`` time-major tensor, and its per-step stride ``B·N``, both int64 so that ``t·B·N`` cannot wrap.
    ``tl.cast``, not ``B.to``: the JIT passes an integer argument equal to 1 as a plain int (``compile_for``'s
    ``ones``)."""
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return offs < N, tl.program_id(0).to(tl.int64) * N + offs, tl.cast(B, tl.int64) * N


@triton.jit
def _lif_scan_kernel(buf_ptr, drive_ptr, counts_ptr, params_ptr, u_ptr, B, N, T: tl.constexpr, SHIFT: tl.constexpr,
                     T_REF: tl.constexpr, LATERAL: tl.constexpr, RECORD: tl.constexpr, BLOCK: tl.constexpr):
    """One program: neurons ``[pid_n·BLOCK, …)`` of sample ``pid_b``, all T steps: spikes into rows ``0..T−1`` of
    ``buf``, step t driven by row ``t − SHIFT`` of ``drive`` (``buf`` itself with ``SHIFT = 0``, the ``(T + 1, B, N)``
    work buffer of ``scan_core``; a separate ``(T, B, N)`` tensor of ``I[t]/τs`` with ``SHIFT = 1``, whose loads then
    wait on no store).

    ``params_ptr`` holds ``(fire_at, decay_m, decay_s, lateral)`` in the buffer's dtype (Python floats would reach
    the kernel as float32). Per step, as ``scan_core``: ``c ← I + decay_s·c`` (− ``lateral``·(other neurons fired
    at t−1)), ``v ← c + decay_m·v``, held at 0 while the refractory counter runs, fire at ``v > fire_at``. With
    ``RECORD`` the membrane before the hold (``u_t`` of :mod:`hm2bp.bptt`) goes into row t of ``u`` (row 0: 0).
    """
    mask, col, step = _column_block(B, N, BLOCK)
    ptrs = buf_ptr + col
    drives = drive_ptr + col
    fire_at = tl.load(params_ptr)
    decay_m = tl.load(params_ptr + 1)
    decay_s = tl.load(params_ptr + 2)
    lateral = tl.load(params_ptr + 3)
    dtype = buf_ptr.dtype.element_ty
    c = tl.zeros([BLOCK], dtype=dtype)
    v = tl.zeros([BLOCK], dtype=dtype)
    prev = tl.zeros([BLOCK], dtype=dtype)  # s[t − 1]
    hold = tl.zeros([BLOCK], dtype=tl.int32)  # refractory steps left
    count = tl.zeros([BLOCK], dtype=dtype)
    tl.store(ptrs, prev, mask=mask)  # no spike at t = 0
    if RECORD:
        tl.store(u_ptr + col, prev, mask=mask)
    for t in range(1, T):
        drive = tl.load(drives + (t - SHIFT) * step, mask=mask, other=0.0)
        c = _fma(c, decay_s, drive)
        if LATERAL:
            others = tl.sum(prev, axis=0) - prev  # exact: sums of 0/1
            c = _fma(others, -lateral, c)
        v = _fma(v, decay_m, c)
        if RECORD:
            tl.store(u_ptr + col + t * step, v, mask=mask)
        if T_REF > 0:
            v = tl.where(hold > 0, 0.0, v)
            hold = tl.where(hold > 0, hold - 1, hold)
        spike = v > fire_at
        s = spike.to(dtype)
        if T_REF > 0:
            hold = tl.where(spike, T_REF, hold)
        else:
            v = tl.where(spike, 0.0, v)
        tl.store(ptrs + t * step, s, mask=mask)
        count += s
        prev = s
    tl.store(counts_ptr + col, count, mask=mask)


@triton.jit
def _bptt_backward_kernel(gs_ptr, spikes_ptr, u_ptr, out_ptr, params_ptr, B, N, T: tl.constexpr,
                          T_REF: tl.constexpr, LATERAL: tl.constexpr, RESET_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """One program: neurons ``[pid_n·BLOCK, …)`` of sample ``pid_b`` (all N with ``LATERAL``), the reverse-time
    recursion of :func:`hm2bp.ops.torch_kernels.bptt_backward` from ``∂L/∂s (T, B, N)`` (``gs``), the forward's
    spikes and ``u``: ``∂L/∂I`` into ``out (T, B, N)`` (row T−1: 0).

    ``params_ptr`` holds ``(inv_tau_s, fire_at, decay_m, decay_s, lateral, slope)`` in the rasters' dtype. The
    lateral share that step t sends to ``∂L/∂s_{t−1}`` is carried in registers to the next iteration; with
    ``RESET_GRAD`` and a refractory period, the hold's shares to ``∂L/∂s_{t−k}`` (k ≤ T_REF) are added into ``gs``
    itself (a scratch copy; this program alone reads and writes its neurons' rows).
    """
    mask, col, step = _column_block(B, N, BLOCK)
    inv_tau_s = tl.load(params_ptr)
    fire_at = tl.load(params_ptr + 1)
    decay_m = tl.load(params_ptr + 2)
    decay_s = tl.load(params_ptr + 3)
    lateral = tl.load(params_ptr + 4)
    slope = tl.load(params_ptr + 5)
    dtype = out_ptr.dtype.element_ty
    gc = tl.zeros([BLOCK], dtype=dtype)  # ∂L/∂c_t through c_{t+1}
    gv = tl.zeros([BLOCK], dtype=dtype)  # ∂L/∂v_t through u_{t+1}
    carry = tl.zeros([BLOCK], dtype=dtype)  # lateral share of ∂L/∂s_t from step t + 1
    tl.store(out_ptr + (T - 1) * step + col, gc, mask=mask)  # I[T−1] drives no step
    for i in range(T - 1):
        t = T - 1 - i
        g_s = tl.load(gs_ptr + t * step + col, mask=mask, other=0.0) + carry
        u = tl.load(u_ptr + t * step + col, mask=mask, other=0.0)
        s = tl.load(spikes_ptr + t * step + col, mask=mask, other=0.0)
        keep = tl.full([BLOCK], 1.0, dtype)  # 1 − h_t, h_t = Σ_{k ≤ min(T_REF, t)} s_{t−k}
        for k in range(1, T_REF + 1):
            keep -= tl.load(spikes_ptr + (t - k) * step + col, mask=mask & (t - k >= 0), other=0.0)
        v_hat = u * keep
        x = 1.0 + slope * tl.abs(v_hat - fire_at)
        sur = 1.0 / (x * x)
        if T_REF == 0:  # v_t = v̂_t (1 − s_t)
            if RESET_GRAD:
                g_s = g_s - gv * v_hat
            g_vhat = g_s * sur + gv * (1.0 - s)
        else:  # v_t = v̂_t
            g_vhat = g_s * sur + gv
        g_u = g_vhat * keep
        if RESET_GRAD and T_REF > 0:  # v̂_t = u_t (1 − Σ_k s_{t−k})
            share = g_vhat * u
            for k in range(1, T_REF + 1):
                ok = mask & (t - k >= 0)
                row = gs_ptr + (t - k) * step + col
                tl.store(row, tl.load(row, mask=ok, other=0.0) - share, mask=ok)
        g_c = tl.where(mask, g_u + gc, 0.0)  # lanes past N stay 0: the lateral sum reads them
        tl.store(out_ptr + (t - 1) * step + col, g_c * inv_tau_s, mask=mask)
        if LATERAL:  # c_t ∋ −L (Σ_m s_{t−1,m} − s_{t−1})
            carry = -lateral * (tl.sum(g_c, axis=0) - g_c)
        gc = decay_s * g_c
        gv = decay_m * g_u


@triton.jit
def _hash32(x):
    """lowbias32 on uint32 (multiplies wrap modulo 2³², shifts are logical), as ``hm2bp.encoding._hash32``."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def _bernoulli_kernel(index_ptr, salt, q_ptr, out_ptr, B, N, BLOCK: tl.constexpr):
    """One program: inputs ``[pid_n·BLOCK, …)`` of sample ``pid_b`` at step ``pid_t`` of the ``(T, B, N)`` output:
    spike where ``hash(key_b + t·N + i) < ⌈q_bi·2³²⌉`` (never at t = 0), with the sample's key
    ``key_b = hash(hash(index_b mod 2³² ⊕ salt))`` (:func:`hm2bp.ops.torch_kernels.sample_keys`) made here."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_t = tl.program_id(2)
    offs = pid_n * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    salt32 = tl.cast(salt, tl.uint32)  # not salt.to: salt 1 comes as a plain int
    key = _hash32(_hash32(tl.load(index_ptr + pid_b.to(tl.int64)).to(tl.uint32) ^ salt32))
    cell = (pid_t * N + offs).to(tl.uint32)  # t·N + i modulo 2³², as the CPU encoder's int32 cells
    h = _hash32(key + cell).to(tl.int64)
    q = tl.load(q_ptr + (pid_b.to(tl.int64) * N + offs), mask=mask, other=0.0)
    bound = tl.ceil(q * 4294967296.0).to(tl.int64)  # exact in float64; q = 1 gives 2³², above every hash
    spike = (h < bound) & (pid_t > 0)
    row = pid_t.to(tl.int64) * B + pid_b  # int64: T·B·N may pass 2³¹
    tl.store(out_ptr + (row * N + offs), spike.to(out_ptr.dtype.element_ty), mask=mask)


def _check(name: str, tensor: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    if tensor.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]} for the Triton kernels, got {tensor.dtype}")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous for the Triton kernels")


SCAN_DTYPES = (torch.float32, torch.float64)
_PARAMS: dict[tuple, torch.Tensor] = {}


def _scan_params(buf: torch.Tensor, values: tuple[float, float, float, float]) -> torch.Tensor:
    """The scan's scalars as a device tensor of ``buf``'s dtype, made once per (device, dtype, values): no host
    copy in a training step (which CUDA-graph capture would also forbid)."""
    key = (buf.device, buf.dtype, values)
    if key not in _PARAMS:
        _PARAMS[key] = torch.tensor(values, dtype=buf.dtype, device=buf.device)
    return _PARAMS[key]


def _power_tables(like: torch.Tensor, decays: tuple[float, float], length: int) -> tuple[torch.Tensor, ...]:
    """``d^k`` for k < ``length`` per decay (the pure-PyTorch path's own ``torch.pow`` values) on ``like``'s device,
    made once per (device, dtype, decays, length), like :func:`_scan_params`."""
    key = (like.device, like.dtype, tuple(float(d) for d in decays), length)
    if key not in _PARAMS:
        k = torch.arange(length, dtype=like.dtype)
        _PARAMS[key] = torch.stack([torch.pow(torch.tensor(d, dtype=like.dtype), k) for d in decays]).to(like.device)
    return tuple(_PARAMS[key].unbind(0))


def lif_scan(buf: torch.Tensor, fire_at: float, decay_m: float, decay_s: float, t_ref: int,
             lateral: float, drive: torch.Tensor | None = None, u: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`hm2bp.neuron.scan_core` in place on a float32/float64 ``(T + 1, B, N)`` buffer, or, given ``drive``
    ``(T, B, N)`` (``I[t]/τs``, left as it is), the spikes into ``buf (T, B, N)``; returns the spike counts
    ``(B, N)`` in the buffer's dtype. With lateral inhibition one program holds all N neurons of a sample. Given
    ``u`` (with ``drive``; shaped like it), the membrane before the refractory hold goes there too (BPTT records it,
    :func:`hm2bp.ops.torch_kernels.bptt_forward`)."""
    if drive is None and (buf.dim() != 3 or buf.shape[0] < 1):
        raise ValueError(f"buf must be (T + 1, batch, neurons), got shape {tuple(buf.shape)}")
    _check("buf", buf, SCAN_DTYPES)
    if drive is not None:
        _check("drive", drive, (buf.dtype,))
        if drive.shape != buf.shape or buf.dim() != 3:
            raise ValueError(f"drive and buf must both be (T, batch, neurons), got {tuple(drive.shape)}, "
                             f"{tuple(buf.shape)}")
    if u is not None:
        if drive is None:
            raise ValueError("u records the membrane of a scan from a separate drive: pass drive too")
        _check("u", u, (buf.dtype,))
        if u.shape != buf.shape:
            raise ValueError(f"u must be shaped like buf {tuple(buf.shape)}, got {tuple(u.shape)}")
    rows, B, N = buf.shape
    steps = rows if drive is not None else rows - 1
    if steps <= 0 or B == 0 or N == 0:
        buf[: min(rows, 1 if drive is None else rows)].zero_()
        if u is not None:
            u.zero_()
        return torch.zeros(B, N, dtype=buf.dtype, device=buf.device)
    counts = torch.empty(B, N, dtype=buf.dtype, device=buf.device)  # every program writes all its counts
    block = triton.next_power_of_2(N) if lateral else min(SCAN_BLOCK, triton.next_power_of_2(N))
    if lateral and block > 4096:
        raise ValueError(f"lateral inhibition couples all {N} neurons of a sample; the Triton scan holds at most 4096")
    params = _scan_params(buf, (float(fire_at), float(decay_m), float(decay_s), float(lateral)))
    grid = (B, triton.cdiv(N, block))
    _lif_scan_kernel[grid](buf, buf if drive is None else drive, counts, params, buf if u is None else u, B, N,
                           T=steps, SHIFT=int(drive is not None), T_REF=int(t_ref), LATERAL=bool(lateral),
                           RECORD=u is not None, BLOCK=block, num_warps=_warps(block))
    return counts


def bptt_backward(grad_spikes: torch.Tensor, spikes: torch.Tensor, u: torch.Tensor, inv_tau_s: float,
                  fire_at: float, decay_m: float, decay_s: float, t_ref: int, lateral: float, slope: float,
                  reset_grad: bool, out: torch.Tensor) -> torch.Tensor:
    """:func:`hm2bp.ops.torch_kernels.bptt_backward` into ``out (T, B, N)``: ``∂L/∂currents`` from ``∂L/∂spikes``
    and the spikes and ``u`` that :func:`lif_scan` recorded, all float32 or all float64 and contiguous."""
    for name, x in (("grad_spikes", grad_spikes), ("spikes", spikes), ("u", u), ("out", out)):
        _check(name, x, (u.dtype,) if name != "u" else SCAN_DTYPES)
        if x.shape != u.shape or x.dim() != 3:
            raise ValueError(f"{name} must be (T, batch, neurons) like u {tuple(u.shape)}, got {tuple(x.shape)}")
    T, B, N = u.shape
    if T == 0 or B == 0 or N == 0:
        return out.zero_()
    block = triton.next_power_of_2(N) if lateral else min(SCAN_BLOCK, triton.next_power_of_2(N))
    if lateral and block > 4096:
        raise ValueError(f"lateral inhibition couples all {N} neurons of a sample; Triton takes 4096 at most")
    writes_gs = reset_grad and t_ref > 0
    params = _scan_params(u, (float(inv_tau_s), float(fire_at), float(decay_m), float(decay_s), float(lateral),
                              float(slope)))
    _bptt_backward_kernel[(B, triton.cdiv(N, block))](
        grad_spikes.clone() if writes_gs else grad_spikes, spikes, u, out, params, B, N, T=T, T_REF=int(t_ref),
        LATERAL=bool(lateral), RESET_GRAD=bool(reset_grad), BLOCK=block, num_warps=_warps(block))
    return out


def bernoulli_spikes(indices: torch.Tensor, salt: int, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Fill the time-major ``out (T, B, N)`` with the Bernoulli spikes of :func:`hm2bp.encoding.bernoulli_encode`
    for the samples' dataset ``indices (B,)`` (int64), the (seed, epoch) ``salt`` in ``[0, 2³²)`` of
    :func:`hm2bp.encoding.key_salt` and probabilities ``q (B, N)`` (float64); the keys are hashed in the kernel."""
    _check("indices", indices, (torch.int64,))
    _check("q", q, (torch.float64,))
    _check("out", out, (torch.float32, torch.float64, torch.bool, torch.uint8))
    steps, B, N = out.shape
    if q.shape != (B, N) or indices.shape != (B,):
        raise ValueError(f"need indices (B,) and q (B, N) for out {tuple(out.shape)}, got {tuple(indices.shape)}, "
                         f"{tuple(q.shape)}")
    if not 0 <= salt < 2**32:
        raise ValueError(f"salt must lie in [0, 2**32), got {salt}")
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(N, ENCODE_BLOCK), B, steps)
    _bernoulli_kernel[grid](indices, salt, q, out, B, N, BLOCK=ENCODE_BLOCK, num_warps=_warps(ENCODE_BLOCK))
    return out


@triton.jit
def _decays(decay_ptr):
    """The (membrane, synaptic) per-step decays a trace kernel is given on the device."""
    return tl.load(decay_ptr), tl.load(decay_ptr + 1)


@triton.jit
def _traces_kernel(pre_ptr, out_ptr, decay_ptr, B, N, T: tl.constexpr, DELAY: tl.constexpr,
                   ZERO_FIRST: tl.constexpr, BLOCK: tl.constexpr):
    """One program: inputs ``[pid_n·BLOCK, …)`` of sample ``pid_b``: the two exponential traces
    ``D_k(t) = decay_k·D_k(t−1) + x(t − DELAY)`` (0 before the delay; ``x(0)`` dropped with ``ZERO_FIRST``) into
    row ``2t + k`` of the ``(2T, B, N)`` output, as :func:`hm2bp.spsp.pre_traces`."""
    mask, col, step = _column_block(B, N, BLOCK)
    dm, ds = _decays(decay_ptr)
    dtype = out_ptr.dtype.element_ty
    m = tl.zeros([BLOCK], dtype=dtype)
    s = tl.zeros([BLOCK], dtype=dtype)
    for t in range(T):
        src = t - DELAY
        ok = mask & (src > 0) if ZERO_FIRST else mask & (src >= 0)
        x = tl.load(pre_ptr + src * step + col, mask=ok, other=0.0).to(dtype)
        m = _fma(m, dm, x)
        s = _fma(s, ds, x)
        tl.store(out_ptr + 2 * t * step + col, m, mask=mask)
        tl.store(out_ptr + (2 * t + 1) * step + col, s, mask=mask)


@triton.jit
def _post_events_kernel(post_ptr, a_ptr, pow_m_ptr, pow_s_ptr, coef_ptr, B, N, T: tl.constexpr,
                        T_REF: tl.constexpr, SPLIT: tl.constexpr, WINDOW: tl.constexpr, BLOCK: tl.constexpr):
    """One program: post neurons ``[pid_n·BLOCK, …)`` of sample ``pid_b``: the dense event matrix ``A (2T, B, N)``
    of :meth:`hm2bp.spsp.Events.dense` straight from the raster, every element written. Per spike ``k`` at ``t``:
    ``(c_m, c_s)`` at ``t``; ``−d_m^σ·(c_m, c_s)`` at the previous reset ``r = t_{k−1} + T_REF`` (``σ = t − r > 0``;
    with the window only for ``σ ≤ WINDOW − T_REF − 1``); with the window, ``(kept_τ − d_τ^{span})·c_τ`` on trace τ
    at ``u = t − WINDOW + T_REF ≥ 0`` (``span = WINDOW − T_REF``, ``kept_τ = d_m^σ·d_τ^{span − σ}`` where the reset
    counts, else 0). Terms on one element are summed in time order of their spikes, starting from 0. Powers come
    from tables ``pow_τ[k] = d_τ^k`` (the pure-PyTorch path's own ``torch.pow`` values).

    Step ``t`` stores row ``t`` whole (nothing lands on it earlier: ``r`` and ``u`` lie before the spike that adds
    there). Row ``r`` then holds only its own step's value when its reset lands, 0 for ``T_REF > 0`` (``r`` lies
    strictly between two consecutive spikes), ``c`` for ``T_REF = 0`` (``r`` is the previous spike), so the reset is
    a plain store of that sum; its window term comes later (``σ ≤ span − 1`` puts the reset before step ``r + span``).
    Row ``u`` may hold a reset, so its window term adds onto a load: issued at the step's start, as the spike
    (loaded a step ahead) already gives every address and mask, and no store of this step touches row ``u`` (a
    counted reset's ``r ≥ u + 1``)."""
    mask, col, step = _column_block(B, N, BLOCK)
    dtype = a_ptr.dtype.element_ty
    cm = tl.load(coef_ptr)
    cs = tl.load(coef_ptr + 1)
    zero = tl.zeros([BLOCK], dtype=dtype)
    spike_m = zero + cm  # a spike's own terms, as added onto the initial 0
    spike_s = zero + cs
    reset_m = spike_m if T_REF == 0 else zero  # what row r holds when its reset lands (see above)
    reset_s = spike_s if T_REF == 0 else zero
    if SPLIT:
        span = WINDOW - T_REF
        old_m = tl.load(pow_m_ptr + span)  # d_τ^{span}: the window's oldest term, loop-invariant
        old_s = tl.load(pow_s_ptr + span)
    last = tl.full([BLOCK], -1, dtype=tl.int32)  # the latest spike before t
    spk = mask & (tl.load(post_ptr + col, mask=mask, other=0.0) > 0)  # spike at t, loaded a step ahead
    for t in range(T):
        # Loads: every address and mask from registers, so they are in flight together.
        nxt = tl.load(post_ptr + (t + 1) * step + col, mask=mask & (t + 1 < T), other=0.0)
        r = last + T_REF
        sigma = t - r
        has_prev = spk & (last >= 0) & (sigma > 0)  # σ ≥ 1 in any refractory raster; keeps writes in bounds
        dms = tl.load(pow_m_ptr + sigma, mask=has_prev, other=0.0)
        reset = has_prev & (sigma <= WINDOW - T_REF - 1) if SPLIT else has_prev
        if SPLIT:
            u = t - WINDOW + T_REF
            far = spk & (u >= 0)
            rest = tl.where(reset, span - sigma, 0)
            pow_m_rest = tl.load(pow_m_ptr + rest, mask=far, other=0.0)
            pow_s_rest = tl.load(pow_s_ptr + rest, mask=far, other=0.0)
            row_um = tl.load(a_ptr + 2 * u * step + col, mask=far, other=0.0)
            row_us = tl.load(a_ptr + (2 * u + 1) * step + col, mask=far, other=0.0)
        # Stores: rows t, r and u are distinct wherever they are written.
        tl.store(a_ptr + 2 * t * step + col, tl.where(spk, spike_m, zero), mask=mask)
        tl.store(a_ptr + (2 * t + 1) * step + col, tl.where(spk, spike_s, zero), mask=mask)
        tl.store(a_ptr + 2 * r * step + col, reset_m + -dms * cm, mask=reset)
        tl.store(a_ptr + (2 * r + 1) * step + col, reset_s + -dms * cs, mask=reset)
        if SPLIT:
            kept_m = tl.where(reset, dms * pow_m_rest, 0.0)
            kept_s = tl.where(reset, dms * pow_s_rest, 0.0)
            tl.store(a_ptr + 2 * u * step + col, row_um + (kept_m - old_m) * cm, mask=far)
            tl.store(a_ptr + (2 * u + 1) * step + col, row_us + (kept_s - old_s) * cs, mask=far)
        last = tl.where(spk, t, last)
        spk = mask & (nxt > 0)


@triton.jit
def _anticausal_kernel(a_ptr, y_ptr, decay_ptr, B, N, T: tl.constexpr, DELAY: tl.constexpr,
                       ZERO_FIRST: tl.constexpr, BLOCK: tl.constexpr):
    """One program: post neurons ``[pid_n·BLOCK, …)`` of sample ``pid_b``: the anticausal traces of ``A (2T, B, N)``,
    ``R_k(u) = A(2u + k) + decay_k·R_k(u + 1)`` (``R_k(T) = 0``), summed over k and read ``DELAY`` steps later:
    ``Y(s) = R_0(s + DELAY) + R_1(s + DELAY)`` into every row of the ``(T, B, N)`` output (0 for
    ``s ≥ T − DELAY``, and ``Y(0) = 0`` with ``ZERO_FIRST``), so that ``Σ_t A(t)·X(t) = Σ_s Y(s)·x(s)`` for the
    traces ``X`` of :func:`pre_traces`."""
    mask, col, step = _column_block(B, N, BLOCK)
    dm, ds = _decays(decay_ptr)
    dtype = y_ptr.dtype.element_ty
    zero = tl.zeros([BLOCK], dtype=dtype)
    for i in range(DELAY):  # rows whose R lies past the end
        tl.store(y_ptr + (T - 1 - i) * step + col, zero, mask=mask & (T - 1 - i >= 0))
    FIRST: tl.constexpr = 1 if ZERO_FIRST else 0  # the first row the recurrence fills
    if ZERO_FIRST:
        tl.store(y_ptr + col, zero, mask=mask)
    m = zero
    s = zero
    for i in range(T - DELAY - FIRST):  # u = T − 1 … DELAY + FIRST: R(u) below is never read
        u = T - 1 - i
        a_m = tl.load(a_ptr + 2 * u * step + col, mask=mask, other=0.0)  # the loads in flight together
        a_s = tl.load(a_ptr + (2 * u + 1) * step + col, mask=mask, other=0.0)
        m = _fma(m, dm, a_m)
        s = _fma(s, ds, a_s)
        tl.store(y_ptr + (u - DELAY) * step + col, m + s, mask=mask)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


@triton.jit
def _decay_combine(a_m, x_m, a_s, x_s, b_m, y_m, b_s, y_s):
    """Compose two segments of the linear recurrences ``R ← x + a·R`` (membrane, synaptic): the first argument
    spans the rows before the second in scan order, so the second applies after it. Associative, not commutative:
    used only in a forward scan (see ``_post_side_kernel``)."""
    return a_m * b_m, b_m * x_m + y_m, a_s * b_s, b_s * x_s + y_s


@triton.jit
def _spikes_at(post_ptr, times, live, cols, step, T: tl.constexpr):
    """Whether the raster spikes at ``times`` (a ``[T_PAD, 1]`` tile of steps; False outside ``[0, T)`` and where
    ``live`` is False), for the columns ``cols`` (``[1, BLOCK]`` int64 offsets ``b·N + n``)."""
    ok = live & (times >= 0) & (times < T)
    return tl.load(post_ptr + times.to(tl.int64) * step + cols, mask=ok, other=0.0) > 0


@triton.jit
def _post_side_kernel(post_ptr, y_ptr, pow_m_ptr, pow_s_ptr, coef_ptr, decay_ptr, drive_ptr, side_ptr, B, N,
                      T: tl.constexpr, T_PAD: tl.constexpr, T_REF: tl.constexpr, DELAY: tl.constexpr,
                      ZERO_FIRST: tl.constexpr, SPLIT: tl.constexpr, WINDOW: tl.constexpr, HAS_DRIVE: tl.constexpr,
                      BLOCK: tl.constexpr):
    """One program: post neurons ``[pid_n·BLOCK, …)`` of sample ``pid_b``, all T steps at once (no loop over time):
    ``Y (T, B, N)`` of ``_anticausal_kernel`` applied to the event matrix ``A`` of ``_post_events_kernel``, without
    ``A`` ever leaving registers, and with ``HAS_DRIVE`` also ``side = Σ_s Y(s)·drive(s)``.

    The program holds a ``[T_PAD, BLOCK]`` tile whose row ``j`` is step ``v = T − 1 − j`` (rows with ``v < 0`` pad
    to the power of two and stay out of every store): running backward in time makes the anticausal recurrence a
    *forward* scan, the one direction in which Triton's scans compose a non-commutative operator in a documented
    order (reverse scans here only take max, which is commutative). Row ``v`` of ``A`` is, by trace τ,

    ``A_τ(v) = c_τ·p(v) − [reset at v]·c_τ·d_m^{σ_r} + [SPLIT, p(v + span)]·c_τ·(kept_τ − d_τ^{span})``

    **Requires a refractory raster** (inter-spike intervals > ``T_REF``, as the LIF scan makes them and as the
    engine's patched label trains keep them): then the reset of the spike after ``t_{k−1}`` lands at
    ``r = t_{k−1} + T_REF`` with no spike in ``(t_{k−1}, r]``, so each event kind is found without carried state:

    * spike: ``p(v)``, a load;
    * reset at ``v``: ``p(v − T_REF)`` (a shifted load) and a next spike ``t = nxt(v) = min{t > v: p(t)} < T``,
      ``σ_r = t − v ≥ 1``; ``nxt`` is a forward prefix-min scan of ``(p ? step : T)`` (inclusive: for ``T_REF > 0``
      no spike lies at ``v``; for ``T_REF = 0`` of ``p(v + 1)``, exclusive). With ``SPLIT`` only for
      ``σ_r ≤ span − 1``;
    * window (``SPLIT``, ``span = WINDOW − T_REF``): the spike at ``t = v + span`` (a shifted load) and its previous
      spike ``prv = max{t' < t: p(t')}``: a reverse prefix-max scan of ``(p(v + span − 1) ? v + span − 1 : −1)``
      (times down to ``span − 1`` at least, the earlier ones by a max-reduction of the tile); its reset counts where
      ``prv ≥ 0`` and ``σ = t − prv − T_REF ≤ span − 1``, then ``kept_τ = d_m^σ·d_τ^{span − σ}``, else 0.

    Powers are gathered from the tables ``pow_τ[k] = d_τ^k`` as in ``_post_events_kernel``. Then
    ``R_τ(v) = A_τ(v) + d_τ·R_τ(v + 1)`` for both traces in one forward scan of ``(d_τ, A_τ)`` pairs
    (``_decay_combine``), ``Y(s) = R_m(s + DELAY) + R_s(s + DELAY)`` stored from row ``v = s + DELAY`` for
    ``s ∈ [FIRST, T − DELAY)`` and 0 stored on the other rows ``s`` (``FIRST = 1`` with ``ZERO_FIRST``), so every
    element is written once; ``side`` is a sum over the tile of ``Y·drive`` (drive loaded ``DELAY`` steps back).
    The sums run in another order than the sequential kernels': equal to float rounding, not bit for bit."""
    mask, col, step = _column_block(B, N, BLOCK)
    dtype = y_ptr.dtype.element_ty
    cols = col[None, :]
    live = mask[None, :]
    v = T - 1 - tl.arange(0, T_PAD)[:, None]  # [T_PAD, 1] steps, backward in time
    live = live & (v >= 0)
    cm = tl.load(coef_ptr)
    cs = tl.load(coef_ptr + 1)
    dm, ds = _decays(decay_ptr)
    # Every load from the raster depends only on the row, so all are issued together.
    spike = _spikes_at(post_ptr, v, live, cols, step, T)
    if T_REF > 0:
        after_spike = _spikes_at(post_ptr, v - T_REF, live, cols, step, T)  # a reset lands at v
        nxt_key = tl.where(spike, v, T)  # no spike at a reset row: the inclusive min is the next spike after it
    else:
        after_spike = spike  # the reset lands on the previous spike itself
        nxt_key = tl.where(_spikes_at(post_ptr, v + 1, live, cols, step, T), v + 1, T)
    if SPLIT:
        span: tl.constexpr = WINDOW - T_REF
        far = _spikes_at(post_ptr, v + span, live, cols, step, T)  # the spike whose window event lands at v
        prv_key = tl.where(_spikes_at(post_ptr, v + span - 1, live, cols, step, T), v + span - 1, -1)
    nxt = tl.associative_scan(nxt_key, 0, _min_combine)  # rows before j = later steps: min{t ≥ v (+1)}
    sigma_r = nxt - v
    reset = after_spike & (nxt < T)
    if SPLIT:
        reset = reset & (sigma_r <= span - 1)
        # Spikes the shifted scan cannot see (steps < span − 1 when the tile's last row is later): their max.
        early = tl.max(tl.where(spike & (v < span - 1), v, -1), axis=0)
        prv = tl.maximum(tl.associative_scan(prv_key, 0, _max_combine, reverse=True), early[None, :])
        sigma_w = v + span - prv - T_REF  # σ of the spike at v + span
        counted = far & (prv >= 0) & (sigma_w <= span - 1)
        rest = span - sigma_w  # in [1, span − 1] where counted
        dms_w = tl.load(pow_m_ptr + sigma_w, mask=counted, other=0.0)
        kept_m = dms_w * tl.load(pow_m_ptr + rest, mask=counted, other=0.0)
        kept_s = dms_w * tl.load(pow_s_ptr + rest, mask=counted, other=0.0)
        old_m = tl.load(pow_m_ptr + span)
        old_s = tl.load(pow_s_ptr + span)
    dms = tl.load(pow_m_ptr + sigma_r, mask=reset, other=0.0)
    zero = tl.zeros([T_PAD, BLOCK], dtype=dtype)
    a_m = tl.where(spike, cm, zero) + tl.where(reset, -dms * cm, zero)
    a_s = tl.where(spike, cs, zero) + tl.where(reset, -dms * cs, zero)
    if SPLIT:
        a_m += tl.where(far, (kept_m - old_m) * cm, zero)
        a_s += tl.where(far, (kept_s - old_s) * cs, zero)
    _, r_m, _, r_s = tl.associative_scan((zero + dm, a_m, zero + ds, a_s), 0, _decay_combine)
    FIRST: tl.constexpr = 1 if ZERO_FIRST else 0
    y = r_m + r_s  # Y(v − DELAY)
    out = live & (v >= DELAY + FIRST)
    rows = (v - DELAY).to(tl.int64) * step + cols
    tl.store(y_ptr + rows, y, mask=out)
    tl.store(y_ptr + v.to(tl.int64) * step + cols, zero, mask=live & ((v < FIRST) | (v >= T - DELAY)))
    if HAS_DRIVE:
        d = tl.load(drive_ptr + rows, mask=out, other=0.0)
        tl.store(side_ptr + col, tl.sum(tl.where(out, y * d, zero), axis=0), mask=mask)


@triton.jit
def _scaled_tf32_parts_kernel(y_ptr, coef_ptr, hi_ptr, lo_ptr, total, plane, BLOCK: tl.constexpr):
    """One program: elements ``[pid·BLOCK, …)`` of float32 ``y (T, B, N)``: ``v = y·coef[b, n]`` (``coef (B, N)``,
    ``plane = B·N``), ``hi = v`` with its 13 low mantissa bits cleared, ``lo = v − hi`` likewise: both exact TF32
    values (:func:`hm2bp.ops.triton_path.tf32_parts` of ``y·coef``, in one pass)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    v = tl.load(y_ptr + offs, mask=mask, other=0.0) * tl.load(coef_ptr + offs % plane, mask=mask, other=0.0)
    hi = (v.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    lo = ((v - hi).to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    tl.store(hi_ptr + offs, hi, mask=mask)
    tl.store(lo_ptr + offs, lo, mask=mask)


def _grid(B: int, N: int) -> tuple[tuple[int, int], int]:
    """The (sample, neuron-block) grid of a trace kernel and its block."""
    block = min(SCAN_BLOCK, triton.next_power_of_2(max(1, N)))
    return (B, triton.cdiv(N, block)), block


def pre_traces(pre: torch.Tensor, kernel) -> torch.Tensor:
    """:func:`hm2bp.spsp.pre_traces` of time-major float ``pre (T, B, N)``: the raw traces ``(2T, B, N)``."""
    _check("pre", pre, SCAN_DTYPES)
    T, B, N = pre.shape
    out = pre.new_empty(2 * T, B, N)
    if out.numel() == 0:
        return out
    decays = _scan_params(pre, tuple(float(d) for d in kernel.decays))
    grid, block = _grid(B, N)
    _traces_kernel[grid](pre, out, decays, B, N, T=T, DELAY=int(kernel.delay),
                         ZERO_FIRST=kernel.convention == "original", BLOCK=block, num_warps=_warps(block))
    return out


def post_event_matrix(post: torch.Tensor, kernel) -> torch.Tensor:
    """``A`` of :meth:`hm2bp.spsp.Events.dense` for time-major float ``post (T, B, N)``: ``(2T, B, N)``, without
    listing the events (no host synchronisation)."""
    _check("post", post, SCAN_DTYPES)
    T, B, N = post.shape
    a = torch.empty(2 * T, B, N, dtype=post.dtype, device=post.device)  # the kernel writes every element
    if a.numel() == 0:
        return a
    window = int(kernel.window) if kernel.split else 0
    tables = _power_tables(post, kernel.decays, T + window + 1)
    coeffs = _scan_params(post, tuple(float(c) for c in kernel.coeffs))
    grid, block = _grid(B, N)
    _post_events_kernel[grid](post, a, tables[0], tables[1], coeffs, B, N, T=T, T_REF=int(kernel.t_ref),
                              SPLIT=bool(kernel.split), WINDOW=window, BLOCK=block, num_warps=_warps(block))
    return a


def anticausal_traces(a: torch.Tensor, kernel) -> torch.Tensor:
    """The post side ``Y (T, B, N)`` of the anticausal form ``e[b] = Y[b]ᵀ·pre[b]`` from the event matrix
    ``a (2T, B, N)`` of :func:`post_event_matrix` (see ``_anticausal_kernel``): one time row per step instead of the
    two trace rows of :func:`pre_traces`, and post-neuron wide."""
    _check("a", a, SCAN_DTYPES)
    if a.dim() != 3 or a.shape[0] % 2:
        raise ValueError(f"a must be (2T, batch, neurons), got shape {tuple(a.shape)}")
    T2, B, N = a.shape
    y = torch.empty(T2 // 2, B, N, dtype=a.dtype, device=a.device)  # the kernel writes every element
    if y.numel() == 0:
        return y
    decays = _scan_params(a, tuple(float(d) for d in kernel.decays))
    grid, block = _grid(B, N)
    _anticausal_kernel[grid](a, y, decays, B, N, T=T2 // 2, DELAY=int(kernel.delay),
                             ZERO_FIRST=kernel.convention == "original", BLOCK=block, num_warps=_warps(block))
    return y


POST_SIDE_TILE = 2048  # elements of the [T_PAD, BLOCK] tile per program of ``_post_side_kernel`` (see post_side)
POST_SIDE_MAX_BLOCK = 32  # neurons per program at most (short T)


def _post_side_block(t_pad: int, N: int) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of ``_post_side_kernel`` for ``t_pad`` rows and N neurons: at most
    :data:`POST_SIDE_TILE` elements per program, so that at ``t_pad = 1024`` the tile's live tensors stay in
    registers (8 elements per thread a tensor at 8 warps), one warp per 256 elements, at least one."""
    block = max(1, min(POST_SIDE_MAX_BLOCK, triton.next_power_of_2(max(1, N)), POST_SIDE_TILE // t_pad))
    return block, max(1, min(8, t_pad * block // 256))


def post_side(post: torch.Tensor, kernel, drive: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``Y = anticausal_traces(post_event_matrix(post, kernel), kernel)`` ``(T, B, N)`` of time-major float ``post``
    and, given a ``(T, B, N)`` ``drive`` of ``post``'s dtype, ``side = Σ_s Y(s)·drive(s)`` ``(B, N)``
    in one launch, time-parallel, with no ``(2T, B, N)`` event matrix in memory (see
    ``_post_side_kernel``). ``post`` must respect the refractory period (inter-spike intervals > ``kernel.t_ref``),
    as every raster of the engine does: the event positions are found from that. Equal to the two-kernel form to
    float rounding (sums in another order)."""
    _check("post", post, SCAN_DTYPES)
    if post.dim() != 3:
        raise ValueError(f"post must be (T, batch, neurons), got shape {tuple(post.shape)}")
    if drive is not None:
        _check("drive", drive, (post.dtype,))
        if drive.shape != post.shape:
            raise ValueError(f"drive must be (T, batch, neurons) = {tuple(post.shape)}, got {tuple(drive.shape)}")
    T, B, N = post.shape
    y = torch.empty(T, B, N, dtype=post.dtype, device=post.device)  # the kernel writes every element
    side = None if drive is None else torch.empty(B, N, dtype=post.dtype, device=post.device)
    if y.numel() == 0:
        return y, None if side is None else side.zero_()
    window = int(kernel.window) if kernel.split else 0
    tables = _power_tables(post, kernel.decays, T + window + 1)
    coeffs = _scan_params(post, tuple(float(c) for c in kernel.coeffs))
    decays = _scan_params(post, tuple(float(d) for d in kernel.decays))
    t_pad = triton.next_power_of_2(T)
    block, warps = _post_side_block(t_pad, N)
    _post_side_kernel[(B, triton.cdiv(N, block))](
        post, y, tables[0], tables[1], coeffs, decays, y if drive is None else drive, y if side is None else side,
        B, N, T=T, T_PAD=t_pad, T_REF=int(kernel.t_ref), DELAY=int(kernel.delay),
        ZERO_FIRST=kernel.convention == "original", SPLIT=bool(kernel.split), WINDOW=window,
        HAS_DRIVE=drive is not None, BLOCK=block, num_warps=warps)
    return y, side



ELEMENTWISE_BLOCK = 1024  # elements per program of the elementwise kernels


def scaled_tf32_parts(y: torch.Tensor, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` with ``hi + lo ≈ y·coef`` (``coef (B, N)`` broadcast over the T rows of float32 ``y (T, B, N)``),
    both exact TF32 values, in one pass (see ``_scaled_tf32_parts_kernel``)."""
    _check("y", y, (torch.float32,))
    _check("coef", coef, (torch.float32,))
    if y.dim() != 3 or coef.shape != y.shape[1:]:
        raise ValueError(f"need y (T, B, N) and coef (B, N), got {tuple(y.shape)}, {tuple(coef.shape)}")
    hi, lo = torch.empty_like(y), torch.empty_like(y)
    if y.numel():
        _scaled_tf32_parts_kernel[(triton.cdiv(y.numel(), ELEMENTWISE_BLOCK),)](
            y, coef, hi, lo, y.numel(), coef.numel(), BLOCK=ELEMENTWISE_BLOCK, **_OPTIONS["scaled_tf32_parts"])
    return hi, lo


KERNELS = {"lif_scan": _lif_scan_kernel, "bptt_backward": _bptt_backward_kernel, "bernoulli": _bernoulli_kernel,
           "traces": _traces_kernel,
           "post_events": _post_events_kernel, "anticausal": _anticausal_kernel,
           "scaled_tf32_parts": _scaled_tf32_parts_kernel, "post_side": _post_side_kernel}


def compile_for(name: str, capability: int, ones: bool = False) -> object:
    """Compile kernel ``name`` of :data:`KERNELS` for NVIDIA compute capability ``capability`` (e.g. 90, 80)
    without a GPU; raises on any compile error. Returns Triton's compiled kernel (``.asm`` holds PTX and cubin).

    ``ones``: every integer argument equal to 1 (a batch of one, one neuron, salt 1), which Triton's JIT passes as a
    constexpr (a Python int in the kernel, with no ``.to``); the interpreter never does, so only this sees it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = KERNELS[name]
    warps = None
    if name == "post_side":  # the largest tile: T = 1000 padded to 1024 rows, float32, the window, a drive
        signature = {"post_ptr": "*fp32", "y_ptr": "*fp32", "pow_m_ptr": "*fp32", "pow_s_ptr": "*fp32",
                     "coef_ptr": "*fp32", "decay_ptr": "*fp32", "drive_ptr": "*fp32", "side_ptr": "*fp32",
                     "B": "i32", "N": "i32", "T": "constexpr", "T_PAD": "constexpr", "T_REF": "constexpr",
                     "DELAY": "constexpr", "ZERO_FIRST": "constexpr", "SPLIT": "constexpr", "WINDOW": "constexpr",
                     "HAS_DRIVE": "constexpr", "BLOCK": "constexpr"}
        block, warps = _post_side_block(1024, 800)
        constexprs = {"T": 1000, "T_PAD": 1024, "T_REF": 2, "DELAY": 3, "ZERO_FIRST": True, "SPLIT": True,
                      "WINDOW": 256, "HAS_DRIVE": True, "BLOCK": block}
    elif name == "lif_scan":
        signature = {"buf_ptr": "*fp32", "drive_ptr": "*fp32", "counts_ptr": "*fp32", "params_ptr": "*fp32",
                     "u_ptr": "*fp32", "B": "i32", "N": "i32", "T": "constexpr", "SHIFT": "constexpr",
                     "T_REF": "constexpr", "LATERAL": "constexpr", "RECORD": "constexpr", "BLOCK": "constexpr"}
        constexprs = {"T": 400, "SHIFT": 1, "T_REF": 2, "LATERAL": True, "RECORD": True, "BLOCK": 16}
    elif name == "bptt_backward":
        signature = {"gs_ptr": "*fp32", "spikes_ptr": "*fp32", "u_ptr": "*fp32", "out_ptr": "*fp32",
                     "params_ptr": "*fp32", "B": "i32", "N": "i32", "T": "constexpr", "T_REF": "constexpr",
                     "LATERAL": "constexpr", "RESET_GRAD": "constexpr", "BLOCK": "constexpr"}
        constexprs = {"T": 400, "T_REF": 2, "LATERAL": True, "RESET_GRAD": True, "BLOCK": 16}
    elif name == "bernoulli":
        signature = {"index_ptr": "*i64", "salt": "i64", "q_ptr": "*fp64", "out_ptr": "*fp32", "B": "i32", "N": "i32",
                     "BLOCK": "constexpr"}
        constexprs = {"BLOCK": ENCODE_BLOCK}
    elif name == "anticausal":
        signature = {"a_ptr": "*fp32", "y_ptr": "*fp32", "decay_ptr": "*fp32", "B": "i32", "N": "i32",
                     "T": "constexpr", "DELAY": "constexpr", "ZERO_FIRST": "constexpr", "BLOCK": "constexpr"}
        constexprs = {"T": 400, "DELAY": 3, "ZERO_FIRST": True, "BLOCK": SCAN_BLOCK}
    elif name == "scaled_tf32_parts":
        signature = {"y_ptr": "*fp32", "coef_ptr": "*fp32", "hi_ptr": "*fp32", "lo_ptr": "*fp32", "total": "i64",
                     "plane": "i64", "BLOCK": "constexpr"}
        constexprs = {"BLOCK": ELEMENTWISE_BLOCK}
    elif name == "traces":
        signature = {"pre_ptr": "*fp32", "out_ptr": "*fp32", "decay_ptr": "*fp32", "B": "i32", "N": "i32",
                     "T": "constexpr", "DELAY": "constexpr", "ZERO_FIRST": "constexpr", "BLOCK": "constexpr"}
        constexprs = {"T": 400, "DELAY": 3, "ZERO_FIRST": True, "BLOCK": SCAN_BLOCK}
    else:
        signature = {"post_ptr": "*fp32", "a_ptr": "*fp32", "pow_m_ptr": "*fp32", "pow_s_ptr": "*fp32",
                     "coef_ptr": "*fp32", "B": "i32", "N": "i32", "T": "constexpr", "T_REF": "constexpr",
                     "SPLIT": "constexpr", "WINDOW": "constexpr", "BLOCK": "constexpr"}
        constexprs = {"T": 400, "T_REF": 2, "SPLIT": True, "WINDOW": 256, "BLOCK": SCAN_BLOCK}
    if ones:
        for arg in [a for a, kind in signature.items() if kind in ("i32", "i64")]:
            signature[arg], constexprs[arg] = "constexpr", 1
    return triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": warps or _warps(constexprs["BLOCK"]), **_OPTIONS.get(name, {})})
