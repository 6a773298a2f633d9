"""GPU cost model measured on CPU: trace one warm training step of each paper row on the Triton path and estimate
H200 time from fixed constants.

    python bench/gpu_model.py [--rows mnist_mlp,nmnist_mlp,mnist_cnn] [--baseline REV] [--benchmarks]
                              [--out bench/results/gpu_model.json]

**The trace.** A worker process (``PYTHONPATH=<tree>/src``, ``TRITON_INTERPRET=1``, ``HM2BP_OPS=triton``; with
``--baseline`` the same script code traces that revision's exported tree too) builds each row's network on CPU
tensors and runs one warm-up step, then records a second one: Bernoulli encoding on the device
(:func:`hm2bp.encoding.bernoulli_encode`), ``net.forward_all(x, labels)``, :class:`hm2bp.SpikeCountLoss` on the output
counts, backward, and ``torch.optim.Adam(fused=True)`` (what ``HM2BPModule.configure_optimizers`` picks on GPUs). A
``TorchDispatchMode`` sees every ATen op (custom ``hm2bp::`` ops are entered, so the ops inside them are seen); every
``@triton.jit`` launch (``kernel[grid](...)``) is recorded with its grid and arguments and **not run** (its cost
comes from the model; the Triton path reads no value on the host, so the unwritten outputs change no op sequence).

**Batch.** The row's real batch would take too long on 2 cores, so the step is traced at small batches (default 2
and 3: at batch 1 some ops see size-1 dimensions and take other paths) and every count is extrapolated to the real
batch along the line through the two: GEMM FLOPs and elementwise bytes are per-sample work (∝ B) plus weight-sized
work (Adam, weight gradients; constant), so the line is exact; launch counts and Triton loop time are constant in B
except where a chunk loop's trip count depends on B (the engine's memory budget per chunk, e.g. the wide layers'
sample chunks): ``batch_dependent_launches`` flags such
rows, whose launch counts are then a linear estimate of a step function.

**Counts.** *ATen launches*: ``aten::`` ops except :data:`NO_LAUNCH` (views, metadata, allocations, scalar reads);
*host reads*: :data:`HOST_READS` by name plus ``Tensor.tolist``/``numpy``/``cpu`` calls (on CPU tensors a copy to the
host cannot be told apart from a no-op ``.to(x.device)``, so ``.to("cpu")`` is not seen); ``lift_fresh`` is a
host-to-device copy (a tensor made from host data). torch.optim's non-capturable step counters live on the host by
design (on CUDA too): ops whose tensor inputs are all such host tensors, and ``lift_fresh`` inside the optimizer step,
are host work, neither launches nor reads. *GEMM FLOPs*: 2·M·N·K of :data:`GEMMS` (convolutions: 2·outputs·C_in·k²
per computed tensor), by precision at the time of the op: ``tf32`` for float32 when
``torch.backends.cuda.matmul.allow_tf32`` or ``torch.get_float32_matmul_precision() != "highest"`` (convolutions:
``torch.backends.cudnn.allow_tf32``), else ``fp32``/``fp64``; the engine's split-TF32 GEMMs are switched on as on a GPU
(``hm2bp.ops.triton_path.SPLIT_TF32 = True``), so each TF32 product is its own op and is counted.
*Elementwise bytes*: tensor inputs plus outputs of every other launching op (``out=`` counted once, the destination of
``copy_``/``fill_``/``zero_`` not read). *Triton loops*: per ``for`` loop of a kernel (and of the ``@triton.jit``
helpers it calls), its trip count (from the launch's constexprs and integer arguments) and the **dependent global
loads per iteration**: the longest chain of load round trips in one iteration. A ``tl.load`` whose operands (address,
mask) depend on the loop (the loop variable, or a name assigned from it or from a load, loop-carried to a fixpoint)
ends one round trip after its operands are known and after the operands of every earlier ``tl.store`` of the
iteration (a GPU issues in order: a load placed after a store waits until the store's value exists); loads that
depend on nothing in the loop are hoisted (0). Loads issued together count once, so a scan (load, compute, store)
is 1, and a load that needs a loaded value is 2. Helpers are followed; constexpr ``if``s take the launch's branch
(unknown conditions: both branches).

**Model** (:data:`MODEL`, fixed so estimates stay comparable across sessions): GEMMs at 50 TFLOP/s (fp32, fp64) or
400 (tf32), elementwise at 3.3 TB/s, 5 µs per launch (ATen and Triton) outside a captured CUDA graph and 0 inside,
0.6 µs per dependent load per loop iteration of a Triton launch (its programs run in parallel). Terms add up (no
overlap); Triton kernels are charged their loop latency and, at the elementwise rate, their DRAM traffic (each tensor
argument read or written once: *Triton GB*).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

MODEL = {"gemm_flops_per_s": {"fp32": 50e12, "tf32": 400e12, "fp64": 50e12}, "elementwise_bytes_per_s": 3.3e12,
         "launch_s": 5e-6, "launch_s_in_graph": 0.0, "dependent_load_s": 0.6e-6, "seeds": 5}


@dataclass(frozen=True)
class Row:
    arch: str
    input_shape: tuple[int, ...]
    thresholds: tuple[float, ...]
    steps: int  # T
    batch: int
    targets: tuple[float, float, float] = (35.0, 5.0, 5.0)  # y⁺, y⁻, margin (conf/model/base_mlp.yaml)
    protocol: str = ""  # the hm2bp.paper.PROTOCOL row whose epochs × samples it prices (default: its own name)


# conf/model/<row>.yaml (arch, thresholds) and conf/dataset/{mnist,nmnist}.yaml (T); the batches are the GPU runs'.
ROWS = {
    "mnist_mlp": Row("800-10", (784,), (20.0, 8.0), 400, 128),
    "nmnist_mlp": Row("800-10", (2312,), (15.0, 15.0), 540, 128),
    "mnist_cnn": Row("15C5-P2-40C5-P2-300-10", (1, 28, 28), (5.0, 2.0, 12.0, 4.0, 10.0, 10.0), 400, 32),
    "emnist_mlp_200_200": Row("200-200-47", (784,), (20.0, 20.0, 8.0), 400, 128),
    "emnist_mlp_400_400": Row("400-400-47", (784,), (20.0, 20.0, 8.0), 400, 128),
    # conf/model/base_ti46.yaml's targets; the 78 Lyon-ear channels stand in as Bernoulli-coded inputs
    "ti46_alpha_mlp": Row("800-26", (78,), (20.0, 5.0), 1000, 128, (45.0, 15.0, 5.0)),
    "ti46_alpha_mlp_400_400": Row("400-400-26", (78,), (20.0, 20.0, 5.0), 1000, 128, (45.0, 15.0, 5.0)),
    "ti46_alpha_mlp_800_800": Row("800-800-26", (78,), (20.0, 20.0, 5.0), 1000, 128, (45.0, 15.0, 5.0)),
    # the authors' protocol, one sample per step (trainer=paper): latency-bound
    "mnist_mlp_batch1": Row("800-10", (784,), (20.0, 8.0), 400, 1, protocol="mnist_mlp"),
}

# ATen ops that launch no kernel: views and metadata, allocations (uninitialised memory), and scalar reads (a copy,
# counted as host reads instead).
NO_LAUNCH = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "transpose", "permute", "expand", "expand_as",
    "as_strided", "t", "unsqueeze", "squeeze", "select", "slice", "narrow", "detach", "alias", "unbind", "split",
    "split_with_sizes", "chunk", "diagonal", "unfold", "movedim", "_conj", "_neg_view", "resize_", "set_",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
    "_local_scalar_dense", "item", "is_nonzero",
})
# ATen ops whose result reaches the host (the host waits for the device).
HOST_READS = frozenset({"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "_unique2", "bincount",
                        "masked_select"})
# Python-level Tensor methods that read values on the host without an ATen op on CPU tensors.
HOST_METHODS = ("tolist", "numpy", "cpu")
GEMMS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "convolution", "convolution_backward"})
# In-place ops that write their first argument without reading it.
WRITE_ONLY_SELF = frozenset({"copy_", "fill_", "zero_", "uniform_", "normal_", "random_", "bernoulli_"})
def _precision(name: str, dtype: torch.dtype) -> str:
    if dtype == torch.float64:
        return "fp64"
    if dtype != torch.float32:
        return str(dtype).removeprefix("torch.")
    if name.startswith("convolution"):
        tf32 = torch.backends.cudnn.allow_tf32
    else:
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return "tf32" if tf32 else "fp32"


def _conv_flops(out_numel: int, weight: torch.Tensor, transposed: bool, in_numel: int) -> int:
    """2·(output elements)·(C_in/groups)·k² of a convolution (transposed: per input element and output channel)."""
    per = math.prod(weight.shape[1:])
    return 2 * (in_numel if transposed else out_numel) * per


def gemm_flops(name: str, args: tuple, out: object) -> int:
    """2·M·N·K of one GEMM-like ATen op (0 for a shape it does not know)."""
    if name == "mm":
        (m, k), n = args[0].shape, args[1].shape[1]
        return 2 * m * n * k
    if name == "addmm":
        (m, k), n = args[1].shape, args[2].shape[1]
        return 2 * m * n * k
    if name in ("bmm", "baddbmm", "addbmm"):
        a, b = (args[0], args[1]) if name == "bmm" else (args[1], args[2])
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    if name == "matmul":
        a, b = args[0], args[1]
        return 2 * out.numel() * a.shape[-1]
    if name == "convolution":
        return _conv_flops(out.numel(), args[1], bool(args[6]), args[0].numel())
    if name == "convolution_backward":
        grad_out, inp, weight, transposed, mask = args[0], args[1], args[2], bool(args[7]), args[10]
        one = _conv_flops(grad_out.numel(), weight, transposed, inp.numel())
        return one * (int(mask[0]) + int(mask[1]))
    return 0


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@dataclass
class TritonLaunch:
    kernel: str
    grid: tuple[int, ...]
    loops: list[dict]  # {"line", "trips", "dependent_loads"}
    bytes: int = 0  # its tensor arguments, each read or written once

    @property
    def loop_us(self) -> float:
        return sum((lp["trips"] or 0) * lp["dependent_loads"] for lp in self.loops) * MODEL["dependent_load_s"] * 1e6


@dataclass
class Trace:
    """What one traced step did (see the module docstring for the rules)."""

    aten: Counter = field(default_factory=Counter)  # launching ATen ops by name
    phases: Counter = field(default_factory=Counter)  # launches (ATen + Triton) by phase of the step
    host_reads: Counter = field(default_factory=Counter)
    h2d_copies: int = 0
    gemm_flops: Counter = field(default_factory=Counter)  # by precision
    elementwise_bytes: int = 0
    triton: list[TritonLaunch] = field(default_factory=list)

    def summary(self) -> dict:
        kernels: dict[str, dict] = {}
        for launch in self.triton:
            k = kernels.setdefault(launch.kernel, {"launches": 0, "programs": 0, "loop_us": 0.0, "loops": []})
            k["launches"] += 1
            k["programs"] += math.prod(launch.grid)
            k["loop_us"] += launch.loop_us
            if launch.loops not in k["loops"]:
                k["loops"].append(launch.loops)
        return {"aten_launches": sum(self.aten.values()), "triton_launches": len(self.triton),
                "host_reads": sum(self.host_reads.values()), "host_reads_by_op": dict(self.host_reads),
                "h2d_copies": self.h2d_copies, "gemm_flops": dict(self.gemm_flops),
                "elementwise_bytes": self.elementwise_bytes,
                "triton_loop_us": sum(t.loop_us for t in self.triton),
                "triton_bytes": sum(t.bytes for t in self.triton),
                "launches_by_phase": dict(self.phases), "aten_by_op": dict(self.aten.most_common()),
                "triton_kernels": kernels}


class Recorder(TorchDispatchMode):
    """Counts the ATen ops of a step into :attr:`trace`; :meth:`host_tensors` names tensors kept on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.trace = Trace()
        self.phase = "step"
        self._host: set[int] = set()
        self._held: list[torch.Tensor] = []

    def host_tensors(self, tensors: list[torch.Tensor]) -> None:
        self._held += tensors  # held, so that no other tensor takes their memory (the key) during the trace
        self._host.update(_storage_key(t) for t in tensors)

    def _is_host(self, t: torch.Tensor) -> bool:
        return _storage_key(t) in self._host

    def host_read(self, name: str) -> None:
        self.trace.host_reads[name] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "hm2bp":  # a custom op: run its Python body where this mode sees the ops inside
            from torch._library.custom_ops import OPDEFS

            opdef = OPDEFS.get(func._schema.name)
            if opdef is not None:
                with self:
                    return opdef._init_fn(*args, **kwargs)
        out = func(*args, **kwargs)
        if func.namespace != "aten":
            return out
        self._count(func.overloadpacket.__name__, args, kwargs, out)
        return out

    def _count(self, name: str, args: tuple, kwargs: dict, out: object) -> None:
        inputs = [t for t in tree_flatten((args, {k: v for k, v in kwargs.items() if k != "out"}))[0]
                  if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if (inputs and all(self._is_host(t) for t in inputs)) or (name == "lift_fresh" and self.phase == "optimizer"):
            self.host_tensors(outputs)  # host work of torch.optim (its step counters)
            return
        if name in HOST_READS:
            self.trace.host_reads[name] += 1
        if name == "lift_fresh":
            self.trace.h2d_copies += 1
        if name in NO_LAUNCH:
            return
        self.trace.aten[name] += 1
        self.trace.phases[self.phase] += 1
        if name.removesuffix("_") in GEMMS:  # in-place forms too (addmm_, baddbmm_)
            name = name.removesuffix("_")
            dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)
            self.trace.gemm_flops[_precision(name, dtype)] += gemm_flops(name, args, out)
            return
        if name in WRITE_ONLY_SELF and inputs:
            inputs = inputs[1:]
        self.trace.elementwise_bytes += sum(t.numel() * t.element_size() for t in inputs + outputs)


# ------------------------------------------------------------------------------------------------ Triton kernels


def python_function(kernel: object) -> Callable:
    """The Python function under a ``@triton.jit`` (or autotuned/heuristics) kernel object."""
    while not inspect.isfunction(kernel):
        kernel = kernel.fn
    return kernel


@functools.cache
def _function_def(fn: Callable) -> ast.FunctionDef:
    return ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]


def snapshot_kernel_sources() -> None:
    """Parse every ``@triton.jit`` function of the loaded hm2bp modules now: :func:`inspect.getsource` reads the file
    as it is on disk, which others may edit while a trace runs."""
    import importlib

    from triton.runtime.jit import KernelInterface

    with contextlib.suppress(ImportError):
        importlib.import_module("hm2bp.ops.triton_kernels")
    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] == "hm2bp":
            for obj in list(vars(mod).values()):
                if isinstance(obj, KernelInterface):
                    _function_def(python_function(obj))


_UNKNOWN = object()


@dataclass
class _Chain:
    """Round trips of global loads within one loop iteration: behind each name (``depth``), behind the latest
    store's operands (``frontier``), the longest chain so far, and behind a helper's return value."""

    depth: dict[str, int] = field(default_factory=dict)
    frontier: int = 0
    longest: int = 0
    returned: int = 0


class LoopAnalysis:
    """The ``for`` loops of a ``@triton.jit`` function with their trip counts and dependent loads per iteration
    (rule in the module docstring), for one launch's constexpr and integer arguments ``env``."""

    def __init__(self, fn: Callable, env: dict[str, object]) -> None:
        import triton.language as tl

        self.tl = tl
        self.fn, self.glb = fn, fn.__globals__
        consts = {k: v.value for k, v in self.glb.items() if isinstance(v, tl.constexpr)}
        self.env = {**consts, **{k: getattr(v, "value", v) for k, v in env.items()}}

    def loops(self) -> list[dict]:
        out: list[dict] = []
        self._find(_function_def(self.fn).body, out)
        return out

    def _const(self, node: ast.AST) -> object:
        """The value of ``node`` from constants alone (arithmetic, comparisons, min/max/cdiv), else ``_UNKNOWN``;
        nothing else is called."""
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and not ((isinstance(sub.func, ast.Name) and sub.func.id in ("min", "max"))
                                                  or (isinstance(sub.func, ast.Attribute) and sub.func.attr == "cdiv")):
                return _UNKNOWN
        try:
            return eval(compile(ast.Expression(node), "<triton>", "eval"), dict(self.glb), dict(self.env))
        except Exception:
            return _UNKNOWN

    def _branches(self, node: ast.If | ast.IfExp) -> list:
        test = self._const(node.test)
        both = [node.body, node.orelse]
        return both if test is _UNKNOWN else [both[0] if test else both[1]]

    def _helper(self, call: ast.Call) -> Callable | None:
        from triton.runtime.jit import KernelInterface

        obj = self.glb.get(call.func.id) if isinstance(call.func, ast.Name) else None
        return python_function(obj) if isinstance(obj, KernelInterface) else None

    def _is_load(self, call: ast.Call) -> bool:
        f = call.func
        return (isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name)
                and self.glb.get(f.value.id) is self.tl)

    def _sub(self, call: ast.Call, fn: Callable) -> LoopAnalysis:
        """The analysis of helper ``fn`` called as ``call``, with the arguments that are constants bound."""
        params = list(inspect.signature(fn).parameters)
        env = {p: v for p, a in zip(params, call.args, strict=False) if (v := self._const(a)) is not _UNKNOWN}
        return LoopAnalysis(fn, env)

    def _trips(self, loop: ast.For) -> int | None:
        it = loop.iter
        f = it.func if isinstance(it, ast.Call) else None
        if (isinstance(f, ast.Name) and f.id == "range") or (isinstance(f, ast.Attribute)
                                                             and f.attr in ("range", "static_range")):
            bounds = [self._const(a) for a in it.args]
            if all(isinstance(b, int) for b in bounds):
                return len(range(*bounds))
        return None

    def _find(self, stmts: list[ast.stmt], out: list[dict]) -> None:
        """Collect the loops of ``stmts`` (outside any loop: loads here run once per program)."""
        for st in stmts:
            if isinstance(st, ast.If):
                for body in self._branches(st):
                    self._find(body, out)
            elif isinstance(st, ast.Assign | ast.AnnAssign) and st.value is not None:
                target = st.targets[0] if isinstance(st, ast.Assign) else st.target
                if isinstance(target, ast.Name) and (value := self._const(st.value)) is not _UNKNOWN:
                    self.env[target.id] = value  # a local constant, e.g. a constexpr a loop bound uses
                self._find_in_calls(st, out)
            elif isinstance(st, ast.For):
                for name in (n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)):
                    self.env.pop(name, None)  # a name the loop assigns is no constant inside it
                out.append({"line": st.lineno, "kernel": self.fn.__name__, "trips": self._trips(st),
                            "dependent_loads": self.per_iteration(st, set())})
            else:
                self._find_in_calls(st, out)

    def _find_in_calls(self, st: ast.stmt, out: list[dict]) -> None:
        """The loops of the ``@triton.jit`` helpers that ``st`` calls."""
        for call in (n for n in ast.walk(st) if isinstance(n, ast.Call)):
            if (helper := self._helper(call)) is not None:
                out.extend(self._sub(call, helper).loops())

    def per_iteration(self, loop: ast.For, tainted: set[str]) -> int:
        """Dependent loads per iteration of ``loop``: its longest chain of global-load round trips (rule in the
        module docstring); ``tainted``: names that depend on an enclosing loop."""
        names = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
        tainted = tainted | names
        while True:  # loop-carried dependences: repeat until no new name depends on the loop
            before = set(tainted)
            chain = _Chain()
            self._walk(loop.body, tainted, chain)
            if tainted == before:
                return chain.longest

    def _walk(self, stmts: list[ast.stmt], tainted: set[str], chain: _Chain) -> None:
        for st in stmts:
            if isinstance(st, ast.If):
                for body in self._branches(st):
                    self._walk(body, tainted, chain)
            elif isinstance(st, ast.For):  # an inner loop's iterations run one after another
                chain.longest = max(chain.longest, (self._trips(st) or 0) * self.per_iteration(st, tainted))
            elif isinstance(st, ast.Return) and st.value is not None:
                chain.returned = max(chain.returned, self._depth(st.value, tainted, chain))
            else:
                value = st.value if isinstance(st, ast.Assign | ast.AugAssign | ast.AnnAssign) else None
                d = self._depth(value if value is not None else st, tainted, chain)
                if value is not None:
                    targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                    for name in (n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                        chain.depth[name] = max(d, chain.depth.get(name, 0) if isinstance(st, ast.AugAssign) else 0)
                    if self._depends(value, tainted):
                        tainted.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))

    def _is_tl(self, call: ast.Call, attr: str) -> bool:
        f = call.func
        return (isinstance(f, ast.Attribute) and f.attr == attr and isinstance(f.value, ast.Name)
                and self.glb.get(f.value.id) is self.tl)

    def _depth(self, node: ast.AST, tainted: set[str], chain: _Chain) -> int:
        """Round trips before ``node``'s value is known; a loop-dependent ``tl.load`` adds one to its operands' and
        to every earlier store's of the iteration (issue is in order: a load after a store waits for its value)."""
        if isinstance(node, ast.Name):
            return chain.depth.get(node.id, 0)
        if isinstance(node, ast.IfExp):
            return max(self._depth(n, tainted, chain) for n in [node.test, *self._branches(node)])
        children = list(ast.iter_child_nodes(node))
        if not isinstance(node, ast.Call):
            return max((self._depth(c, tainted, chain) for c in children), default=0)
        operands = [*node.args, *(k.value for k in node.keywords)]
        inner = max((self._depth(a, tainted, chain) for a in operands), default=0)
        if self._is_load(node):
            if not any(self._depends(a, tainted) for a in operands):
                return inner  # loop-invariant: hoisted out of the loop
            d = 1 + max(inner, chain.frontier)
            chain.longest = max(chain.longest, d)
            return d
        if self._is_tl(node, "store"):
            chain.frontier = max(chain.frontier, inner)
            return inner
        if (helper := self._helper(node)) is not None:
            params = list(inspect.signature(helper).parameters)
            sub = self._sub(node, helper)
            inside = _Chain(depth={p: self._depth(a, tainted, chain) for p, a in zip(params, node.args,
                                                                                       strict=False)},
                            frontier=chain.frontier, longest=chain.longest)
            sub._walk(_function_def(helper).body, {p for p, a in zip(params, node.args, strict=False)
                                                   if self._depends(a, tainted)}, inside)
            chain.frontier, chain.longest = inside.frontier, inside.longest
            return max(inner, inside.returned)
        return max(inner, self._depth(node.func, tainted, chain))

    def _depends(self, node: ast.AST, tainted: set[str]) -> bool:
        """Whether ``node``'s value depends on the loop (a tainted name, a load, or a helper that loads)."""
        for sub in self._visible(node):
            if isinstance(sub, ast.Name) and sub.id in tainted:
                return True
            if isinstance(sub, ast.Call) and (self._is_load(sub) or (
                    (h := self._helper(sub)) is not None and any(self._is_load(c) for c in ast.walk(_function_def(h))
                                                                 if isinstance(c, ast.Call)))):
                return True
        return False

    def _visible(self, node: ast.AST) -> Iterator[ast.AST]:
        """The sub-nodes of ``node`` that run: of a constexpr conditional expression, only the taken side."""
        yield node
        if isinstance(node, ast.IfExp):
            for side in self._branches(node):
                yield from self._visible(side)
            return
        for child in ast.iter_child_nodes(node):
            yield from self._visible(child)


@contextlib.contextmanager
def triton_launches(on_launch: Callable[[object, tuple, tuple, dict], None], run: bool = False) -> Iterator[None]:
    """Route every ``kernel[grid](...)`` launch of a ``@triton.jit`` kernel to ``on_launch(kernel, grid, args,
    kwargs)``; the kernel itself runs only with ``run``."""
    from triton.runtime.jit import KernelInterface

    original = KernelInterface.__getitem__

    def getitem(kernel, grid):
        launch = original(kernel, grid)

        def hooked(*args, **kwargs):
            on_launch(kernel, grid, args, kwargs)
            return launch(*args, **kwargs) if run else None
        return hooked

    KernelInterface.__getitem__ = getitem
    try:
        yield
    finally:
        KernelInterface.__getitem__ = original


_ANALYSES: dict[tuple, list[dict]] = {}


def analyse_launch(kernel: object, grid: object, args: tuple, kwargs: dict) -> TritonLaunch:
    """Grid and loops of one launch (analyses cached per kernel and constant arguments)."""
    fn = python_function(kernel)
    params = inspect.signature(fn).parameters  # other keywords are launch options (num_warps, …)
    bound = inspect.signature(fn).bind_partial(*args, **{k: v for k, v in kwargs.items() if k in params}).arguments
    env = {k: v for k, v in bound.items() if not isinstance(v, torch.Tensor)}
    if callable(grid):
        grid = grid(env)
    grid = tuple(int(g) for g in (grid if isinstance(grid, tuple | list) else (grid,)))
    key = (fn, tuple(sorted((k, repr(getattr(v, "value", v))) for k, v in env.items())))
    if key not in _ANALYSES:
        _ANALYSES[key] = LoopAnalysis(fn, env).loops()
    tensors = {v.data_ptr(): v for v in bound.values() if isinstance(v, torch.Tensor)}  # an alias counts once
    return TritonLaunch(fn.__name__, grid, _ANALYSES[key], sum(t.numel() * t.element_size()
                                                               for t in tensors.values()))


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Record the ATen ops, Triton launches (not run) and host reads of the code run inside; yields the
    :class:`Recorder`."""
    rec = Recorder()

    def on_launch(kernel, grid, args, kwargs):
        rec.trace.triton.append(analyse_launch(kernel, grid, args, kwargs))
        rec.trace.phases[rec.phase] += 1

    originals = {name: getattr(torch.Tensor, name) for name in HOST_METHODS}

    def reading(name: str) -> Callable:
        def method(self, *args, **kwargs):
            rec.host_read(name)
            return originals[name](self, *args, **kwargs)
        return method

    for name in HOST_METHODS:
        setattr(torch.Tensor, name, reading(name))
    try:
        with triton_launches(on_launch), rec:
            yield rec
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


# ------------------------------------------------------------------------------------------------ the training step


@contextlib.contextmanager
def triton_backend(scale: float = 1.0) -> Iterator[None]:
    """The engine's Triton path for the code inside, its GEMMs as on a GPU (the settings it had afterwards):
    split into TF32 parts where they would be at the real batch, ``scale`` = traced batch / real batch times
    smaller."""
    try:  # where the backend table lives moved between revisions
        from hm2bp.backend import get_backend, set_backend
    except ImportError:
        from hm2bp.ops import get_backend, set_backend
    try:  # GEMMs split into TF32 parts as on a GPU (revisions before the split have no such module)
        from hm2bp.ops import triton_path
    except ImportError:
        triton_path = None
    before = get_backend(), getattr(triton_path, "SPLIT_TF32", None), getattr(triton_path, "SPLIT_MIN_FLOPS", None)
    set_backend("triton")
    if triton_path is not None:
        triton_path.SPLIT_TF32 = True
        if before[2] is not None:
            triton_path.SPLIT_MIN_FLOPS = before[2] * scale
    try:
        yield
    finally:
        set_backend(before[0])
        if triton_path is not None:
            triton_path.SPLIT_TF32 = before[1]
            if before[2] is not None:
                triton_path.SPLIT_MIN_FLOPS = before[2]


def training_step(row: Row, batch: int) -> tuple[Callable[[Recorder | None], None], torch.optim.Optimizer]:
    """One training step of ``row`` at ``batch`` on CPU tensors (module docstring), phases marked on the recorder."""
    from hm2bp import SpikeCountLoss, SpikingNet
    from hm2bp.encoding import bernoulli_encode

    torch.manual_seed(0)
    net = SpikingNet(row.arch, row.input_shape, list(row.thresholds), target_count=int(row.targets[0]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)  # as the app's on GPUs
    loss_fn = SpikeCountLoss(*row.targets)
    pixels = torch.rand(batch, math.prod(row.input_shape)) * 255.0
    labels = torch.arange(batch) % 10
    indices = torch.arange(batch)

    def step(rec: Recorder | None) -> None:
        def phase(name: str) -> None:
            if rec is not None:
                rec.phase = name
        phase("encode")
        x = bernoulli_encode(pixels, row.steps, seed=0, indices=indices, dtype=torch.float32)
        phase("forward")
        loss = loss_fn(net.forward_all(x, labels)[-1].sum(1), labels)
        phase("backward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        phase("optimizer")
        if rec is not None:  # torch.optim keeps non-capturable step counters on the host, also for CUDA parameters
            rec.host_tensors([s["step"] for g in opt.param_groups if not (g["capturable"] or g.get("fused"))
                              for p in g["params"] if "step" in (s := opt.state.get(p, {}))])
        opt.step()

    return step, opt


def trace_step(step: Callable[[Recorder | None], None]) -> Trace:
    """Run ``step`` once to warm up (Triton launches stubbed), then record it once more."""
    with triton_launches(lambda *_: None):
        step(None)
    with recording() as rec:
        step(rec)
    return rec.trace


def worker(rows: list[str], batches: list[int]) -> dict:
    """Trace each row at each batch in this process (the tree on ``PYTHONPATH``)."""
    import hm2bp

    snapshot_kernel_sources()
    out: dict = {"hm2bp": str(Path(hm2bp.__file__).parent), "rows": {}}
    for name in rows:
        start = time.perf_counter()
        traced = {}
        for batch in batches:
            with triton_backend(batch / ROWS[name].batch):
                step, _ = training_step(ROWS[name], batch)
                traced[str(batch)] = trace_step(step).summary()
        out["rows"][name] = {"traced": traced, "trace_seconds": time.perf_counter() - start}
        print(f"  traced {name} at batches {batches} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------------ extrapolation, model

SCALED = ("aten_launches", "triton_launches", "host_reads", "h2d_copies", "elementwise_bytes", "triton_loop_us",
          "triton_bytes")


def extrapolate(traced: dict[str, dict], batch: int) -> dict:
    """The per-step counts at ``batch``: affine in the batch through the two smallest traced batches."""
    (b1, s1), (b2, s2) = sorted(((int(b), s) for b, s in traced.items()), key=lambda bs: bs[0])[:2]

    def line(v1: float, v2: float) -> float:
        return v1 + (v2 - v1) * (batch - b1) / (b2 - b1)

    out = {k: line(s1[k], s2[k]) for k in SCALED}
    precisions = sorted(set(s1["gemm_flops"]) | set(s2["gemm_flops"]))
    out["gemm_flops"] = {p: line(s1["gemm_flops"].get(p, 0), s2["gemm_flops"].get(p, 0)) for p in precisions}
    out["batch_dependent_launches"] = (s1["aten_launches"], s1["triton_launches"]) != (s2["aten_launches"],
                                                                                      s2["triton_launches"])
    out["host_reads_by_op"] = s2["host_reads_by_op"]
    out["launches_by_phase"] = s2["launches_by_phase"]
    return out


def estimate(counts: dict, row_name: str) -> dict:
    """H200 seconds of one step, one epoch and the paper protocol (5 seeds) from per-step counts (:data:`MODEL`)."""
    from hm2bp.paper import PROTOCOL

    row = ROWS[row_name]
    rates = MODEL["gemm_flops_per_s"]
    launches = counts["aten_launches"] + counts["triton_launches"]
    parts = {"gemm_s": sum(f / rates.get(p, rates["fp32"]) for p, f in counts["gemm_flops"].items()),
             "elementwise_s": counts["elementwise_bytes"] / MODEL["elementwise_bytes_per_s"],
             "triton_bytes_s": counts.get("triton_bytes", 0) / MODEL["elementwise_bytes_per_s"],
             "triton_loop_s": counts["triton_loop_us"] * 1e-6}
    work = sum(parts.values())
    step = {"no_graph": work + launches * MODEL["launch_s"], "graph": work + launches * MODEL["launch_s_in_graph"]}
    protocol = PROTOCOL[row.protocol or row_name]
    steps = math.ceil(protocol.n_train / row.batch)
    epoch = {k: v * steps for k, v in step.items()}
    hours = {k: v * protocol.epochs * MODEL["seeds"] / 3600 for k, v in epoch.items()}
    return {"launches": launches, **parts, "launch_s_no_graph": launches * MODEL["launch_s"],
            "est_h200_ms_per_step": {k: 1e3 * v for k, v in step.items()}, "steps_per_epoch": steps,
            "est_h200_seconds_per_epoch": epoch, "epochs": protocol.epochs,
            "est_h200_gpu_hours_5_seeds_paper_protocol": hours}


def trace_tree(src: Path, rows: list[str], batches: list[int]) -> dict:
    """Run :func:`worker` in a subprocess on the tree ``src`` (``PYTHONPATH=src``)."""
    env = {**os.environ, "PYTHONPATH": str(src), "TRITON_INTERPRET": "1", "HM2BP_OPS": "triton"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trace.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--rows", ",".join(rows),
                        "--trace-batches", ",".join(map(str, batches)), "--worker-out", str(out)],
                       env=env, check=True, cwd=tmp)
        return json.loads(out.read_text())


def report(traced: dict, rows: list[str]) -> dict:
    result = {}
    for name in rows:
        counts = extrapolate(traced["rows"][name]["traced"], ROWS[name].batch)
        result[name] = {"row": {**ROWS[name].__dict__}, "per_step": counts, **estimate(counts, name),
                        "traced": traced["rows"][name]["traced"]}
    return result


def _fmt_row(name: str, tag: str, r: dict) -> str:
    c = r["per_step"]
    gflop = "/".join(f"{p} {f / 1e9:.0f}" for p, f in sorted(c["gemm_flops"].items())) or "0"
    step, epoch = r["est_h200_ms_per_step"], r["est_h200_seconds_per_epoch"]
    flag = "*" if c["batch_dependent_launches"] else ""
    return (f"| {name} | {tag} | {c['aten_launches']:.0f}+{c['triton_launches']:.0f}{flag} | {c['host_reads']:.0f} | "
            f"{gflop} | {c['elementwise_bytes'] / 1e9:.2f} | {c.get('triton_bytes', 0) / 1e9:.2f} | "
            f"{c['triton_loop_us']:.0f} | "
            f"{step['no_graph']:.2f} / {step['graph']:.2f} | {epoch['no_graph']:.1f} / {epoch['graph']:.1f} | "
            f"{r['est_h200_gpu_hours_5_seeds_paper_protocol']['no_graph']:.2f} |")


def table(results: dict[str, dict], rows: list[str]) -> str:
    lines = ["| row | tree | launches (ATen+Triton) | host reads | GEMM GFLOP by precision | elementwise GB | "
             "Triton GB | Triton loop µs | est. ms/step (no graph / graph) | est. s/epoch (no graph / graph) | "
             "est. GPU-h, 5 seeds × paper epochs (no graph) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in rows:
        for tag, res in results.items():
            lines.append(_fmt_row(name, tag, res["rows"][name]))
    for tag, res in results.items():  # the paper table's rows (each its own protocol; not the batch-1 variant)
        table_rows = [n for n in rows if not ROWS[n].protocol]
        hours = sum(res["rows"][n]["est_h200_gpu_hours_5_seeds_paper_protocol"]["no_graph"] for n in table_rows)
        lines.append(f"\n{tag}: {hours:.1f} est. H200-hours for 5 seeds of the {len(table_rows)} paper rows above "
                     "(no graph)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--trace-batches", default="2,3", help="two small batches to trace at and extrapolate from")
    ap.add_argument("--baseline", default=None, help="also trace this git revision's tree (e.g. aad5d25)")
    ap.add_argument("--benchmarks", action="store_true", help="write the gpu-model section of BENCHMARKS.md")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_model.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    batches = [int(b) for b in args.trace_batches.split(",")]
    if args.worker:
        args.worker_out.write_text(json.dumps(worker(rows, batches)))
        return

    sys.path.insert(0, str(HERE))
    from common import export_tree, machine, short_rev, update_section
    from hm2bp.io import atomic_write_json

    start = time.perf_counter()
    trees = {"after": ("working tree", ROOT / "src")}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            trees = {"before": (short_rev(args.baseline), export_tree(args.baseline, Path(tmp)) / "src"), **trees}
        results = {}
        for tag, (rev, src) in trees.items():
            print(f"tracing {tag} ({rev}) …", file=sys.stderr)
            traced = trace_tree(src, rows, batches)
            results[tag] = {"rev": rev, "hm2bp": traced["hm2bp"], "rows": report(traced, rows)}
    seconds = time.perf_counter() - start
    out = {"model": MODEL, "trace_batches": batches, "machine": machine(), "run_seconds": seconds,
           "trees": results}
    atomic_write_json(args.out, out)
    body = table(results, rows)
    print(body)
    print(f"({seconds:.0f} s; {args.out})")
    if args.benchmarks:
        update_section("gpu-model", f"""### GPU cost model (H200 estimate from a CPU trace)

`python bench/gpu_model.py{f" --baseline {args.baseline}" if args.baseline else ""} --benchmarks` — one warm
training step per paper row (encode, forward, count loss, backward, Adam) traced on the Triton path on CPU tensors
at batches {"/".join(map(str, batches))} and extrapolated to the row's batch (mnist_mlp and nmnist_mlp 128, mnist_cnn
32; 60,000 samples per epoch); * marks launch counts that depend on the batch (chunk loops). Model: GEMMs 50 TFLOP/s
fp32/fp64, 400 tf32; elementwise 3.3 TB/s; 5 µs per launch outside a CUDA graph, 0 inside; 0.6 µs per dependent
load per Triton loop iteration. These are **estimates**, not measurements (rules: the script's docstring).

{body}
""")


if __name__ == "__main__":
    main()
