"""The one place that decides which kernels run (it imports nothing else from hm2bp, so any module may ask it).

**Kernel families**, chosen per tensor by :func:`kernels_for` under the backend (:func:`set_backend` or
``HM2BP_OPS``):

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

Each op of :mod:`hm2bp.ops` asks :func:`kernels_for` and picks its own kernel (falling back, with one log line,
where a kernel does not take a dtype). One log line says which path runs, and why when it falls back.

**Contraction strategy** (:func:`set_strategy` or ``HM2BP_STRATEGY``): how the pure-PyTorch path contracts the S-PSPs
of linear layers (``"auto"``, ``"pairs"``, ``"dense"``, ``"sparse"``; see :mod:`hm2bp.ops.torch_kernels`). Like the
backend it is a speed setting: every choice gives the same gradients up to rounding.

**Host reads** (:func:`host_reads_allowed`): engine code reads tensor values back on the host (a data-dependent
check or early exit) only where the Triton path does not run, whose training step never waits for the device.

The C++ kernels are compiled on first use (:func:`load_extension`, cached under ``$HM2BP_EXTENSIONS_DIR``, default
``~/.cache/hm2bp/extensions``, in one folder per torch version, checkout, interpreter and compiler flags); nothing
here builds them unless a CPU tensor's kernels are asked for. A build prints one line to stderr first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch

log = logging.getLogger("hm2bp.ops")
Family = Literal["cpp", "triton", "torch"]
BACKENDS = ("auto", "torch", "compiled", "triton")
STRATEGIES = ("auto", "pairs", "dense", "sparse")
CSRC = Path(__file__).resolve().parent / "ops" / "csrc"
DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "hm2bp" / "extensions"


def _valid(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


_backend = _valid("HM2BP_OPS", os.environ.get("HM2BP_OPS", "auto"), BACKENDS)
_strategy = _valid("HM2BP_STRATEGY", os.environ.get("HM2BP_STRATEGY", "auto"), STRATEGIES)
_lock = threading.Lock()
_built: dict[str, ModuleType | None] = {}
_announced: set[str] = set()


def set_backend(name: str) -> None:
    """Choose the kernels (see the module docstring): ``"auto"``, ``"torch"``, ``"compiled"`` or ``"triton"``."""
    global _backend
    _backend = _valid("backend", name, BACKENDS)


def get_backend() -> str:
    return _backend


def set_strategy(name: str) -> None:
    """Choose the pure-PyTorch path's contraction strategy (module docstring)."""
    global _strategy
    _strategy = _valid("strategy", name, STRATEGIES)


def get_strategy() -> str:
    return _strategy


SOURCES = ("bindings.cpp", "lif_scan.cpp", "linear.cpp", "encode.cpp", "bptt.cpp")
# A build's CPU time (from ninja's log of a build on 2 cores, GCC 12, -O3): ~80 CPU-seconds in all, of which
# bindings.cpp (the whole torch extension API) takes ~30 on its own, so more cores stop helping at about that. Only
# the estimate on screen comes from these.
_BUILD_CPU_SECONDS, _LONGEST_SOURCE_SECONDS = 80, 30


def _cpu_flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags of the CPU extension."""
    # PyTorch's vectorised add-with-alpha uses fused multiply-adds on AVX2/AVX-512 CPUs; the kernel must too
    # (in hardware: without -mfma, std::fma is a slow library call) to give the same spikes. -fno-trapping-math
    # changes no value; it lets GCC turn the scan's selects into vector blends (without it no loop vectorises).
    fma = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    flags = ["-O3", "-fno-trapping-math", *(["-mfma", "-mavx2", "-DHM2BP_FMA=1"] if fma else ["-DHM2BP_FMA=0"])]
    # at::parallel_for is OpenMP compiled into the caller: without -fopenmp the kernels run on one thread. The
    # library resolves to the libgomp that torch itself loaded (same soname), so there is one OpenMP runtime.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") and torch.backends.openmp.is_available() else []
    return flags + openmp, openmp


def _build_dir(device: str, cflags: list[str]) -> Path:
    """The extension's build folder: one per torch version, and within it one per set of inputs that go into its
    build file (sources' folder, torch and Python headers, flags, compiler). Checkouts or environments that shared a
    folder would each rewrite the build file and recompile everything whenever the other had run (and could replace
    the library under a running process)."""
    root = Path(os.environ.get("HM2BP_EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR))
    inputs = (str(CSRC), str(Path(torch.__file__).parent), sysconfig.get_paths()["include"], cflags,
              os.environ.get("CXX", ""))
    key = hashlib.sha256(repr(inputs).encode()).hexdigest()[:12]
    return root / torch.__version__.replace("+", "_") / f"{device}-{key}"


def _package_ninja() -> Path | None:
    """The folder of the ``ninja`` package's binary (a dependency of hm2bp), or None where it is not installed."""
    try:
        import ninja
    except ImportError:
        return None
    folder = getattr(ninja, "BIN_DIR", None)
    return Path(folder) if folder and shutil.which("ninja", path=folder) else None


@contextlib.contextmanager
def _ninja_first_on_path() -> Iterator[str | None]:
    """Put the ``ninja`` package's binary first on PATH while the extension builds; yields the ninja that builds (None:
    none found). torch.utils.cpp_extension runs whichever ``ninja`` PATH finds, and ninja releases write build logs
    the others cannot read (1.13 writes v7, 1.11 v5): each then takes all objects as stale. A shell with the venv
    activated finds the package's ninja, ``make`` (which runs .venv/bin/python without the venv on PATH) the system
    one, so every switch between the two recompiled everything. Build with one ninja, whatever PATH says."""
    folder = _package_ninja()
    if folder is None:
        yield shutil.which("ninja")
        return
    old = os.environ.get("PATH")
    os.environ["PATH"] = str(folder) + (os.pathsep + old if old else "")
    try:
        yield shutil.which("ninja", path=str(folder))
    finally:
        if old is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = old


def _needs_build(build: Path, name: str, ninja: str) -> bool:
    """Whether loading the extension from ``build`` will compile: no library yet, or ``ninja`` has work to do (a dry
    run of the build file the last build wrote; the folder is keyed on everything that changes that file)."""
    if not (build / f"{name}.so").exists() or not (build / "build.ninja").exists():
        return True
    dry = subprocess.run([ninja, "-n"], cwd=build, capture_output=True, text=True)
    return dry.returncode != 0 or "no work to do" not in dry.stdout


def load_extension(device: str) -> ModuleType | None:
    """The compiled C++ extension for ``"cpu"``, building it on first call; None when it cannot build (or for any
    other device: GPU kernels are Triton, :func:`triton_kernels`)."""
    if device != "cpu":
        return None
    with _lock:
        if device in _built:
            return _built[device]
        from torch.utils import cpp_extension

        cflags, ldflags = _cpu_flags()
        build = _build_dir(device, cflags)
        build.mkdir(parents=True, exist_ok=True)
        name = f"hm2bp_ops_{device}"
        try:
            with _ninja_first_on_path() as ninja:
                if ninja is not None and _needs_build(build, name, ninja):  # else the load fails just below
                    cores = os.cpu_count() or 1
                    estimate = max(_LONGEST_SOURCE_SECONDS, _BUILD_CPU_SECONDS // min(cores, len(SOURCES)))
                    # A print, not a log record: nothing else is on screen for this long, and without logging set
                    # up (a plain script) an INFO record would not show.
                    print(f"hm2bp: compiling the CPU kernels once (~{estimate} s on {cores} cores; cached in {build})"
                          " …", file=sys.stderr, flush=True)
                module = cpp_extension.load(name=name, sources=[str(CSRC / s) for s in SOURCES], extra_cflags=cflags,
                                            extra_ldflags=ldflags, extra_include_paths=[str(CSRC)],
                                            build_directory=str(build), verbose=False)
        except Exception as err:
            log.warning("hm2bp: compiled kernels for %s unavailable (%s: %s); using the pure-PyTorch path",
                        device, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            module = None
        _built[device] = module
        return module


def cpu_kernels() -> ModuleType:
    """The built C++ extension, or an error (for ops that :func:`kernels_for` already sent to ``"cpp"``)."""
    module = load_extension("cpu")
    if module is None:
        raise RuntimeError("the hm2bp CPU kernels could not be built (see the log)")
    return module


def announce(path: str, why: str = "") -> None:
    """Log once which kernels run (``why``: the reason for a fallback, logged as a warning)."""
    if path not in _announced:
        _announced.add(path)
        (log.warning if why else log.info)("hm2bp: kernels run on the %s path%s", path, f" ({why})" if why else "")


def triton_kernels(device: torch.device) -> ModuleType | None:
    """:mod:`hm2bp.ops.triton_kernels` for tensors on ``device``, or None (logged) when Triton is unavailable there;
    raises instead where the backend demands Triton (``"triton"``, or ``"compiled"`` on a GPU)."""
    demanded = _backend == "triton" or (_backend == "compiled" and device.type == "cuda")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        why = "Triton runs on CPU tensors only through its interpreter: set TRITON_INTERPRET=1 before importing hm2bp"
    elif device.type not in ("cpu", "cuda"):
        why = f"no Triton kernels for {device.type} tensors"
    else:
        try:
            from hm2bp.ops import triton_kernels
        except ImportError as err:
            why = f"Triton is not importable ({err})"
        else:
            return triton_kernels
    if demanded:
        raise RuntimeError(f"HM2BP_OPS={_backend}: {why}")
    announce(f"pure-PyTorch {device.type}", why)
    return None


def _wants_triton(x: torch.Tensor) -> bool:
    return _backend != "torch" and (x.is_cuda or _backend == "triton")


def kernels_for(x: torch.Tensor) -> Family:
    """The kernel family that runs work on ``x``'s device under the current backend (module docstring). Logs the
    choice once, and why on a fallback."""
    if _backend == "torch":
        announce("pure-PyTorch")
        return "torch"
    if _wants_triton(x):
        if triton_kernels(x.device) is None:
            return "torch"
        announce(f"Triton {x.device.type}" + ("" if x.is_cuda else " (interpreted)"))
        return "triton"
    if load_extension("cpu") is None:
        if _backend == "compiled":
            raise RuntimeError("HM2BP_OPS=compiled but the cpu kernels could not be built (see the log)")
        announce("pure-PyTorch CPU", "the C++ kernels could not be built")
        return "torch"
    announce("compiled CPU")
    return "cpp"


def host_reads_allowed(x: torch.Tensor) -> bool:
    """Whether engine code may read values of ``x`` back on the host: not where the Triton kernels run on ``x``,
    whose training step must never wait for the device (and so can be captured in a CUDA graph); interpreted on CPU
    tensors it takes the same sync-free branches, which is how the tests prove them. Builds no C++ kernels."""
    return not (_wants_triton(x) and triton_kernels(x.device) is not None)
