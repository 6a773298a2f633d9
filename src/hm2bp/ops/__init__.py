"""Custom ops and the one backend table that decides which kernels run: C++ on CPUs, Triton on GPUs.

``torch.ops.hm2bp.lif_scan_(buf, fire_at, decay_m, decay_s, t_ref, lateral)`` runs the scan of
:func:`hm2bp.neuron.scan_core` in place; :func:`scan` is the dispatching twin of :func:`hm2bp.neuron.scan_inplace`.

``torch.ops.hm2bp.linear_forward_`` and ``torch.ops.hm2bp.linear_backward`` are the whole spiking fully-connected
layer on the CPU (:func:`linear_forward`, :func:`linear_backward`): an event-driven input current fused with the scan,
and the HM2-BP contractions from per-sample S-PSP rows that never leave the cache. They compute what the
pure-PyTorch path of :class:`hm2bp.functional.HM2BPLinearFunction` computes; only the order of floating-point sums
differs (the input current adds weight rows spike by spike instead of a GEMM).

**The backend table** (:func:`kernels_for`), chosen by :func:`set_backend` or ``HM2BP_OPS``:

=============  ===========================  ======================================================
``HM2BP_OPS``  CPU tensors                  CUDA tensors
=============  ===========================  ======================================================
``auto``       C++ kernels, else PyTorch    Triton kernels (:mod:`hm2bp.ops.triton_kernels`), else PyTorch
``compiled``   C++ kernels, or an error     Triton kernels, or an error
``triton``     Triton through its           Triton kernels, or an error
               interpreter (needs
               ``TRITON_INTERPRET=1``; CI)
``torch``      pure PyTorch                 pure PyTorch
=============  ===========================  ======================================================

Triton kernels exist for the LIF scan, the Bernoulli encoder and the sides of the HM2-BP contractions (pre traces,
post-event matrix, its anticausal traces); the GEMMs and the rest of a layer run in PyTorch on the same device.
C++ kernels are compiled on first use with ``torch.utils.cpp_extension`` (cached under ``$HM2BP_EXTENSIONS_DIR``,
default ``~/.cache/hm2bp/extensions``). One log line says which path runs, and why when it falls back.

Measured on the project's 2-core CPU machines (``bench/ops_scan.py``, ``bench/engine_digits.py``): the fused linear
layer is ~3× faster than GEMM + scan + sparse contractions; the C++ scan beats the pure-PyTorch scan at every size
(most at small B·N, where the latter's 400 × 6 op launches dominate).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from hm2bp.neuron import LIFParams, scan_core
from hm2bp.spsp import PSPKernel

log = logging.getLogger("hm2bp.ops")
CSRC = Path(__file__).resolve().parent / "csrc"
BACKENDS = ("auto", "torch", "compiled", "triton")
_backend = os.environ.get("HM2BP_OPS", "auto")
_lock = threading.Lock()
_built: dict[str, ModuleType | None] = {}
_announced: set[str] = set()


def set_backend(name: str) -> None:
    """Choose the kernels (see the module docstring): ``"auto"``, ``"torch"``, ``"compiled"`` or ``"triton"``."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "hm2bp" / "extensions"


def _build_dir() -> Path:
    root = Path(os.environ.get("HM2BP_EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR))
    tag = torch.__version__.replace("+", "_")
    return root / tag


def load_extension(device: str) -> ModuleType | None:
    """The compiled C++ extension for ``"cpu"``, building it on first call; None when it cannot build (or for any
    other device: GPU kernels are Triton, :func:`triton_module`)."""
    if device != "cpu":
        return None
    with _lock:
        if device in _built:
            return _built[device]
        from torch.utils import cpp_extension

        build = _build_dir() / device
        build.mkdir(parents=True, exist_ok=True)
        sources = [str(CSRC / name) for name in ("bindings.cpp", "lif_scan.cpp", "linear.cpp", "encode.cpp")]
        # PyTorch's vectorised add-with-alpha uses fused multiply-adds on AVX2/AVX-512 CPUs; the kernel must too
        # (in hardware: without -mfma, std::fma is a slow library call) to give the same spikes. -fno-trapping-math
        # changes no value; it lets GCC turn the scan's selects into vector blends (without it no loop vectorises).
        fma = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        flags = ["-O3", "-fno-trapping-math", *(["-mfma", "-mavx2", "-DHM2BP_FMA=1"] if fma else ["-DHM2BP_FMA=0"])]
        # at::parallel_for is OpenMP compiled into the caller: without -fopenmp the kernels run on one thread. The
        # library resolves to the libgomp that torch itself loaded (same soname), so there is one OpenMP runtime.
        openmp = ["-fopenmp"] if sys.platform.startswith("linux") and torch.backends.openmp.is_available() else []
        flags += openmp
        try:
            module = cpp_extension.load(name=f"hm2bp_ops_{device}", sources=sources, extra_cflags=flags,
                                        extra_ldflags=openmp,
                                        extra_include_paths=[str(CSRC)],
                                        build_directory=str(build), verbose=False)
        except Exception as err:
            log.warning("hm2bp: compiled kernels for %s unavailable (%s: %s); using the pure-PyTorch path",
                        device, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            module = None
        _built[device] = module
        return module


def _announce(path: str, why: str = "") -> None:
    if path not in _announced:
        _announced.add(path)
        (log.warning if why else log.info)("hm2bp: kernels run on the %s path%s", path, f" ({why})" if why else "")


_triton: ModuleType | None = None


def triton_module(device: torch.device) -> ModuleType | None:
    """:mod:`hm2bp.ops.triton_kernels` for tensors on ``device``, or None (logged) when Triton is unavailable there;
    raises instead where the backend demands Triton (``"triton"``, or ``"compiled"`` on a GPU)."""
    global _triton
    demanded = _backend == "triton" or (_backend == "compiled" and device.type == "cuda")
    why = None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        why = "Triton runs on CPU tensors only through its interpreter: set TRITON_INTERPRET=1 before importing hm2bp"
    elif device.type not in ("cpu", "cuda"):
        why = f"no Triton kernels for {device.type} tensors"
    else:
        try:
            from hm2bp.ops import triton_kernels as module
        except ImportError as err:
            why = f"Triton is not importable ({err})"
        else:
            _triton = module
            return module
    if demanded:
        raise RuntimeError(f"HM2BP_OPS={_backend}: {why}")
    _announce(f"pure-PyTorch {device.type}", why)
    return None


def host_reads_allowed(x: torch.Tensor) -> bool:
    """Whether engine code may read values of ``x`` back on the host (a data-dependent check or early exit): not on
    the Triton path, whose training step must never wait for the device (and so could be captured in a CUDA graph);
    interpreted on CPU tensors it takes the same sync-free branches, which is how the tests prove them."""
    return kernels_for(x) != "triton"


def kernels_for(x: torch.Tensor) -> str:
    """The backend table: ``"cpp"``, ``"triton"`` or ``"torch"``, the kernels that run work on ``x``'s device under
    the current backend (module docstring). Logs the choice once, and why on a fallback."""
    if _backend == "torch":
        _announce("pure-PyTorch")
        return "torch"
    if x.is_cuda or _backend == "triton":
        if triton_module(x.device) is None:
            return "torch"
        _announce(f"Triton {x.device.type}" + (" (interpreted)" if not x.is_cuda else ""))
        return "triton"
    if load_extension("cpu") is None:
        if _backend == "compiled":
            raise RuntimeError("HM2BP_OPS=compiled but the cpu kernels could not be built (see the log)")
        _announce("pure-PyTorch CPU", "the C++ kernels could not be built")
        return "torch"
    _announce("compiled CPU")
    return "cpp"


@torch.library.custom_op("hm2bp::lif_scan_", mutates_args=("buf",))
def lif_scan_(buf: torch.Tensor, fire_at: float, decay_m: float, decay_s: float, t_ref: int,
              lateral: float) -> None:
    """In-place LIF scan of the ``(T + 1, B, N)`` work buffer (see :func:`hm2bp.neuron.scan_inplace`)."""
    family = kernels_for(buf)
    if family == "triton" and buf.dtype in (torch.float32, torch.float64) and buf.is_contiguous():
        _triton.lif_scan(buf, fire_at, decay_m, decay_s, t_ref, lateral)
    elif family == "cpp":
        _cpu_module().lif_scan_cpu(buf, fire_at, decay_m, decay_s, t_ref, lateral)
    else:
        if family == "triton":
            _announce(f"pure-PyTorch scan for {buf.dtype}", "the Triton scan takes contiguous float32/float64")
        scan_core(buf, fire_at, decay_m, decay_s, t_ref, lateral)


@lif_scan_.register_fake
def _(buf, fire_at, decay_m, decay_s, t_ref, lateral) -> None:  # shapes do not change: nothing to compute
    return None


def scan(buf: torch.Tensor, params: LIFParams, lateral_w0: float = 0.0) -> torch.Tensor:
    """Dispatching version of :func:`hm2bp.neuron.scan_inplace` (same contract: returns ``buf[:T]``)."""
    args = params.scan_args(lateral_w0)
    if _backend == "torch":
        return scan_core(buf, *args)
    torch.ops.hm2bp.lif_scan_(buf, *args)
    return buf[: buf.shape[0] - 1]


def _cpu_module() -> ModuleType:
    module = load_extension("cpu")
    if module is None:
        raise RuntimeError("the hm2bp CPU kernels could not be built (see the log)")
    return module


@torch.library.custom_op("hm2bp::linear_forward_", mutates_args=("out",))
def linear_forward_(pre: torch.Tensor, weight_t: torch.Tensor, out: torch.Tensor, fire_at: float, decay_m: float,
                    decay_s: float, t_ref: int, lateral: float) -> None:
    """Spikes ``out (T, B, N_out)`` of a spiking linear layer from time-major ``pre (T, B, N_in)`` and
    ``weight_t = Wᵀ/τs``: per step ``c ← c·decay_s + Σ_{j: pre_j[t−1]≠0} pre_j[t−1]·weight_t[j]`` (adds of the rows
    of the inputs that spiked), then :func:`scan_core`."""
    _cpu_module().linear_forward_cpu(pre, weight_t, out, fire_at, decay_m, decay_s, t_ref, lateral)


@linear_forward_.register_fake
def _(pre, weight_t, out, fire_at, decay_m, decay_s, t_ref, lateral) -> None:
    return None


@torch.library.custom_op("hm2bp::linear_backward", mutates_args=())
def linear_backward_op(pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, g: torch.Tensor,
                       lam: torch.Tensor, rho: torch.Tensor, nu: float, need_below: bool, decay_m: float,
                       decay_s: float, coef_m: float, coef_s: float, delay: int, t_ref: int, window: int,
                       zero_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(coef, Σ_b coef ⊗ e, Σ_i g w e, o, o_pre)`` of :func:`linear_backward` (empty ``lam``/``rho``: factor off)."""
    return tuple(_cpu_module().linear_backward_cpu(pre, post, weight, g, lam, rho, nu, need_below, decay_m, decay_s,
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
    return _cpu_module().spsp_cpu(pre, post, decay_m, decay_s, coef_m, coef_s, delay, t_ref, window, zero_first)


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
    _cpu_module().bernoulli_hash_cpu(keys, q, out)


@bernoulli_hash_.register_fake
def _(keys, q, out) -> None:
    return None
