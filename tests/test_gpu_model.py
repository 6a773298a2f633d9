"""bench/gpu_model.py counts what it must: host reads, GEMM FLOPs, Triton launches, dependent loads of a kernel's loop,
and a tiny engine step on the Triton path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is a dev dependency on Linux")  # conftest: TRITON_INTERPRET
import triton.language as tl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import gpu_model as gm  # noqa: E402


@triton.jit
def _toy_kernel(x_ptr, y_ptr, T: tl.constexpr, EXTRA: tl.constexpr):
    for t in range(1, T):
        a = tl.load(x_ptr)  # loop-invariant address: hoisted, no round trip in the loop
        b = tl.load(x_ptr + t)  # one round trip
        c = tl.load(x_ptr + b.to(tl.int32))  # needs b: a second round trip
        d = tl.load(y_ptr + t)  # issued beside b: no round trip of its own
        tl.store(y_ptr + t, a + c + d)
        if EXTRA:
            e = tl.load(y_ptr + t + 1)  # placed after a store of c's value: a third round trip
            tl.store(x_ptr + t, e)


@triton.jit
def _bump(ptr):
    return tl.load(ptr) + 1


@triton.jit
def _carried_kernel(x_ptr, N, T: tl.constexpr):
    last = 0
    for t in range(T):
        v = tl.load(x_ptr + last)  # `last` is assigned from t below: a round trip from the second iteration on
        w = _bump(x_ptr + v.to(tl.int32))  # a helper's load at an address that needs v: a second one
        last = t
        tl.store(x_ptr + N, v + w)


def _loops(kernel, **env):
    return gm.LoopAnalysis(gm.python_function(kernel), env).loops()


def test_dependent_loads_of_toy_kernels():
    assert [(lp["trips"], lp["dependent_loads"]) for lp in _loops(_toy_kernel, T=20, EXTRA=False)] == [(19, 2)]
    assert [(lp["trips"], lp["dependent_loads"]) for lp in _loops(_toy_kernel, T=20, EXTRA=True)] == [(19, 3)]
    assert [(lp["trips"], lp["dependent_loads"]) for lp in _loops(_carried_kernel, T=7)] == [(7, 2)]


def test_triton_launches_are_counted_per_launch_with_their_loops():
    x = torch.zeros(64)
    with gm.recording() as rec:
        for _ in range(3):
            _toy_kernel[(4, 2)](x, x, T=20, EXTRA=True)
        _carried_kernel[lambda meta: (meta["N"],)](x, 5, T=7)
    s = rec.trace.summary()
    assert s["triton_launches"] == 4
    assert s["triton_kernels"]["_toy_kernel"]["launches"] == 3 and s["triton_kernels"]["_toy_kernel"]["programs"] == 24
    assert s["triton_kernels"]["_carried_kernel"]["programs"] == 5
    assert s["triton_loop_us"] == pytest.approx((3 * 19 * 3 + 7 * 2) * 0.6)
    assert s["aten_launches"] == 0


def test_host_reads_and_host_to_device_copies_are_counted():
    x = torch.arange(6.0)
    with gm.recording() as rec:
        y = (x * 2).sum()
    assert rec.trace.summary()["host_reads"] == 0 and rec.trace.h2d_copies == 0
    with gm.recording() as rec:
        y = (x * 2).sum()
        y.item()
        x.tolist()
        torch.tensor([1.0, 2.0])
    s = rec.trace.summary()
    assert s["host_reads_by_op"] == {"_local_scalar_dense": 1, "tolist": 1}
    assert s["h2d_copies"] == 1


def test_gemm_flops_by_precision():
    a, b = torch.rand(5, 7), torch.rand(7, 3)
    c, d = torch.zeros(5, 3), torch.zeros(5, 3)
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32  # a property of torch's cuBLAS settings object (monkeypatch cannot restore it)
    try:
        matmul.allow_tf32 = False
        with gm.recording() as rec:
            torch.mm(a, b)
            torch.bmm(a.expand(4, 5, 7), b.expand(4, 7, 3))
            torch.mm(a.double(), b.double())
        assert dict(rec.trace.gemm_flops) == {"fp32": 2 * 5 * 3 * 7 * 5, "fp64": 2 * 5 * 3 * 7}
        matmul.allow_tf32 = True
        with gm.recording() as rec:
            torch.addmm(c, a, b)
            d.addmm_(a, b)
    finally:
        matmul.allow_tf32 = before
    assert dict(rec.trace.gemm_flops) == {"tf32": 2 * 2 * 5 * 3 * 7}
    assert rec.trace.elementwise_bytes == 0  # a GEMM is not elementwise work


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton path on CPU tensors needs the "
                    "interpreter, chosen only where no GPU exists")
def test_tiny_engine_step_on_the_triton_path():
    row = gm.Row("16-4", (10,), (0.8, 0.8), 20, 3, targets=(6.0, 1.0, 1.0))
    with gm.triton_backend():
        step, opt = gm.training_step(row, 3)
        s = gm.trace_step(step).summary()
    assert s["host_reads"] == 0 and s["h2d_copies"] == 0  # Adam's host-side step counters are not reads
    assert s["aten_launches"] > 50 and s["launches_by_phase"]["optimizer"] > 0
    assert s["triton_launches"] >= 2  # at least the two layers' scans
    loops = [lp for k in s["triton_kernels"].values() for launch in k["loops"] for lp in launch]
    assert any(lp["trips"] in (19, 20) and lp["dependent_loads"] >= 1 for lp in loops)  # time loops over T
    # the forward GEMM of the hidden layer (T·B × 10 → 16) is among the counted FLOPs
    assert sum(s["gemm_flops"].values()) >= 2 * 20 * 3 * 10 * 16
    assert all(opt.state[p]["step"] == 2 for p in opt.state)  # warm-up and traced step both ran Adam
