"""Custom ops: the fused LIF scan as a ``torch.library`` op with C++ (CPU) and CUDA kernels.

``torch.ops.hm2bp.lif_scan_(buf, fire_at, decay_m, decay_s, t_ref, lateral)`` runs the scan of
:func:`hm2bp.neuron.scan_core` in place; :func:`scan` is the dispatching twin of :func:`hm2bp.neuron.scan_inplace`.
Kernels are compiled on first use with ``torch.utils.cpp_extension``
(cached under ``$HM2BP_EXTENSIONS_DIR``, default ``~/.cache/hm2bp/extensions``); when a build is impossible (no
compiler, no CUDA toolkit) the op falls back to the pure-PyTorch scan. One log line says which path runs.

Backend selection: :func:`set_backend` or the environment variable ``HM2BP_OPS``: ``"auto"`` (the CUDA kernel on
GPUs when it builds, the pure-PyTorch scan on CPUs), ``"torch"`` (always the pure-PyTorch scan) or ``"compiled"``
(the compiled kernel for the tensor's device, or an error).

Measured on the project's 2-core CPU machines (``bench/ops_scan.py``): the pure-PyTorch scan, six vectorised ops per
step on contiguous time-major rows, is faster than this C++ kernel, so ``"auto"`` keeps it on CPUs. The CUDA kernel
replaces 400 × 6 kernel launches per layer with one launch.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import ModuleType

import torch

from hm2bp.neuron import LIFParams, scan_core, scan_inplace

log = logging.getLogger("hm2bp.ops")
CSRC = Path(__file__).resolve().parent / "csrc"
BACKENDS = ("auto", "torch", "compiled")
_backend = os.environ.get("HM2BP_OPS", "auto")
_lock = threading.Lock()
_built: dict[str, ModuleType | None] = {}
_announced: set[str] = set()


def set_backend(name: str) -> None:
    """Choose how :func:`lif_scan_` runs: ``"auto"``, ``"torch"`` or ``"compiled"``."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


def _build_dir() -> Path:
    root = Path(os.environ.get("HM2BP_EXTENSIONS_DIR", Path.home() / ".cache" / "hm2bp" / "extensions"))
    tag = torch.__version__.replace("+", "_")
    return root / tag


def load_extension(device: str) -> ModuleType | None:
    """The compiled extension for ``"cpu"`` or ``"cuda"``, building it on first call; None when it cannot build."""
    with _lock:
        if device in _built:
            return _built[device]
        from torch.utils import cpp_extension

        build = _build_dir() / device
        build.mkdir(parents=True, exist_ok=True)
        sources = [str(CSRC / "lif_scan.cpp")]
        # PyTorch's vectorised add-with-alpha uses fused multiply-adds on AVX2/AVX-512 CPUs; the kernel must too
        # (in hardware: without -mfma, std::fma is a slow library call) to give the same spikes.
        fma = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        flags = ["-O3", *(["-mfma", "-mavx2", "-DHM2BP_FMA=1"] if fma else ["-DHM2BP_FMA=0"])]
        if device == "cuda":
            sources.append(str(CSRC / "lif_scan.cu"))
            flags.append("-DHM2BP_WITH_CUDA")
        try:
            module = cpp_extension.load(name=f"hm2bp_ops_{device}", sources=sources, extra_cflags=flags,
                                        extra_cuda_cflags=["-O3"], extra_include_paths=[str(CSRC)],
                                        build_directory=str(build), verbose=False)
        except Exception as err:
            log.warning("hm2bp: compiled LIF scan for %s unavailable (%s: %s); using the pure-PyTorch scan",
                        device, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            module = None
        _built[device] = module
        return module


def _announce(path: str) -> None:
    if path not in _announced:
        _announced.add(path)
        log.info("hm2bp: LIF scan runs on the %s path", path)


@torch.library.custom_op("hm2bp::lif_scan_", mutates_args=("buf",))
def lif_scan_(buf: torch.Tensor, fire_at: float, decay_m: float, decay_s: float, t_ref: int,
              lateral: float) -> None:
    """In-place LIF scan of the ``(T + 1, B, N)`` work buffer (see :func:`hm2bp.neuron.scan_inplace`)."""
    device = "cuda" if buf.is_cuda else "cpu"
    wanted = _backend == "compiled" or (_backend == "auto" and device == "cuda")
    module = load_extension(device) if wanted else None
    if module is None:
        if _backend == "compiled":
            raise RuntimeError(f"HM2BP_OPS=compiled but the {device} kernel could not be built (see the log)")
        _announce("pure-PyTorch")
        scan_core(buf, fire_at, decay_m, decay_s, t_ref, lateral)
        return
    _announce(f"compiled {device}")
    getattr(module, f"lif_scan_{device}")(buf, fire_at, decay_m, decay_s, t_ref, lateral)


@lif_scan_.register_fake
def _(buf, fire_at, decay_m, decay_s, t_ref, lateral) -> None:  # shapes do not change: nothing to compute
    return None


def scan(buf: torch.Tensor, params: LIFParams, lateral_w0: float = 0.0) -> torch.Tensor:
    """Dispatching version of :func:`hm2bp.neuron.scan_inplace` (same contract: returns ``buf[:T]``)."""
    if lateral_w0 < 0:
        raise ValueError(f"lateral_w0 must be >= 0, got {lateral_w0}")
    if _backend == "torch" or (_backend == "auto" and not buf.is_cuda):
        return scan_inplace(buf, params, lateral_w0)
    torch.ops.hm2bp.lif_scan_(buf, params.threshold - params.threshold_eps, 1.0 - 1.0 / params.tau_m,
                              1.0 - 1.0 / params.tau_s, params.t_ref, lateral_w0 / params.tau_s)
    return buf[: buf.shape[0] - 1]
