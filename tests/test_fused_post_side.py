"""The fused, time-parallel post side of the anticausal contraction (:func:`hm2bp.ops.triton_kernels.post_side`)
equals the two sequential kernels it replaces, ``anticausal_traces(post_event_matrix(post))`` and
``Σ_s Y(s)·drive(s)``, to float rounding: on CPU tensors through Triton's interpreter (conftest), on CUDA tensors
where a GPU is present."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is a dev dependency on Linux")  # conftest: TRITON_INTERPRET

from conftest import refractory_trains  # noqa: E402
from hm2bp.ops import triton_kernels as tk  # noqa: E402
from hm2bp.spsp import PSPKernel  # noqa: E402
from test_triton import _filling_torch, _kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _all_kernels() -> list[PSPKernel]:
    """Every kernel of ``test_triton._kernels`` plus the window with t_ref = 0 and the shortest window (span 1)."""
    return [*_kernels(), PSPKernel(convention="original", window=4, t_ref=0),
            PSPKernel(convention="original", window=3, t_ref=2)]


def _raster(rng: np.random.Generator, kernel: PSPKernel, steps: int, batch: int, neurons: int,
            rate: float) -> torch.Tensor:
    """A time-major refractory raster ``(T, B, N)`` float64 with a silent neuron, neurons spiking at t = 0, at t = 1
    and at the last step (each still refractory), and many spikes closer together than the short windows."""
    post = refractory_trains(rng, batch, steps, neurons, rate, t_ref=kernel.t_ref).transpose(0, 1).contiguous()
    gap = kernel.t_ref + 1  # the refractory raster keeps spikes at least this far apart
    post[:, 0, 0] = 0  # silent
    post[: gap + 1, 0, 1] = 0
    post[0, 0, 1] = 1  # at t = 0
    post[: gap + 2, 0, 2] = 0
    post[1, 0, 2] = 1  # at t = 1
    post[-gap:, -1, :] = 0
    post[-1, -1, :] = 1  # every neuron of the last sample at t = T − 1
    return post


def _reference(post: torch.Tensor, kernel: PSPKernel, drive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = tk.anticausal_traces(tk.post_event_matrix(post, kernel), kernel)
    return y, (y * drive).sum(0)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, scale: float) -> None:
    """float64: 1e-12 relative; float32: a few ulp of the largest value (the scans sum in another order)."""
    tol = 1e-12 if expected.dtype == torch.float64 else 16 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(got.cpu(), expected.cpu(), rtol=tol, atol=tol * scale)


def _check(post: torch.Tensor, kernel: PSPKernel, seed: int) -> None:
    T, B, N = post.shape
    drive = torch.randn(T, B, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    post, drive = post.to(DEVICE), drive.to(post.dtype).to(DEVICE)
    expected_y, expected_side = _reference(post, kernel, drive)
    y, none = tk.post_side(post, kernel)
    y_d, side = tk.post_side(post, kernel, drive)
    assert none is None and side.shape == (B, N) and y.shape == (T, B, N)
    scale = float(expected_y.abs().max())
    assert scale > 0
    _assert_close(y, expected_y, scale)
    _assert_close(y_d, expected_y, scale)
    _assert_close(side, expected_side, float((expected_y * drive).abs().sum(0).max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", range(8))
def test_post_side_equals_anticausal_traces_of_the_event_matrix(k, dtype):
    kernel = _all_kernels()[k]
    rng = np.random.default_rng(10 + k)
    post = _raster(rng, kernel, 37, 3, 7, 0.3).to(dtype)
    _check(post, kernel, k)


@pytest.mark.parametrize("k", [0, 4, 6])
def test_post_side_over_several_programs_with_a_masked_tail(k, monkeypatch):
    """20 neurons in blocks of 8: three programs per sample, the last one masked."""
    monkeypatch.setattr(tk, "POST_SIDE_MAX_BLOCK", 8)
    kernel = _all_kernels()[k]
    post = _raster(np.random.default_rng(k), kernel, 23, 2, 20, 0.25)
    _check(post, kernel, k)


def test_post_side_with_the_default_window_passed():
    """T = 300 with the default window (256 steps): the window events occur, also for spikes whose previous spike
    lies inside the window (the reset's share kept) and outside it (dropped), and for spikes before step span − 1."""
    kernel = PSPKernel(convention="original")
    span = kernel.window - kernel.t_ref
    rng = np.random.default_rng(3)
    post = refractory_trains(rng, 2, 300, 3, 0.02, t_ref=kernel.t_ref).transpose(0, 1).contiguous()
    post[:, 1, 0] = 0
    post[[5, 270], 1, 0] = 1  # previous spike outside the window
    post[:, 1, 1] = 0
    post[[20, 40, 290], 1, 1] = 1  # inside
    times = post[:, 0, 2].nonzero().squeeze(1)
    assert (times >= span).any() and len(times) > 3
    _check(post, kernel, 0)
    _check(post.float(), kernel, 1)


@pytest.mark.parametrize("k", [0, 1, 2, 7])
def test_post_side_writes_every_element(k, monkeypatch):
    """``y`` and ``side`` from ``torch.empty`` have the same bits over zeros as over NaN, also for T below the delay
    (Y all 0), T = 1 and T = 2."""
    kernel = _all_kernels()[k]
    rng = np.random.default_rng(k)
    for T in (17, 2, 1):
        post = refractory_trains(rng, 2, T, 3, 0.3, t_ref=kernel.t_ref).transpose(0, 1).contiguous().float()
        drive = torch.rand(T, 2, 3, generator=torch.Generator().manual_seed(k))
        outputs = []
        for fill in (0.0, float("nan")):
            monkeypatch.setattr(tk, "torch", _filling_torch(fill))
            outputs.append([t.cpu() for t in tk.post_side(post.to(DEVICE), kernel, drive.to(DEVICE))])
            monkeypatch.undo()
        for zeroed, garbage in zip(*outputs, strict=True):
            assert torch.equal(zeroed, garbage)  # NaN ≠ NaN: every element written
        expected_y, expected_side = _reference(post, kernel, drive)
        torch.testing.assert_close(outputs[0][0], expected_y, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(outputs[0][1], expected_side, rtol=1e-6, atol=1e-6)


def test_post_side_degenerate_shapes_and_bad_input():
    kernel = PSPKernel()
    for shape in [(0, 2, 3), (5, 0, 3), (5, 2, 0)]:
        post = torch.zeros(shape, device=DEVICE)
        y, side = tk.post_side(post, kernel, torch.zeros(shape, device=DEVICE))
        assert y.shape == shape and side.shape == shape[1:] and (side == 0).all()
    with pytest.raises(TypeError, match=r"post must be one of \['torch.float32', 'torch.float64'\]"):
        tk.post_side(torch.zeros(3, 1, 1, dtype=torch.float16), kernel)
    with pytest.raises(ValueError, match="post must be contiguous"):
        tk.post_side(torch.zeros(3, 2, 4).transpose(1, 2), kernel)
    with pytest.raises(ValueError, match=r"post must be \(T, batch, neurons\)"):
        tk.post_side(torch.zeros(3, 4), kernel)
    with pytest.raises(TypeError, match="drive must be one of"):
        tk.post_side(torch.zeros(3, 2, 4), kernel, torch.zeros(3, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"drive must be \(T, batch, neurons\)"):
        tk.post_side(torch.zeros(3, 2, 4), kernel, torch.zeros(2, 2, 4))


def test_post_side_kernel_has_no_loop():
    """Time-parallel: no ``for`` loop in the kernel or the ``@triton.jit`` helpers it calls (the GPU cost model
    charges 0.6 µs per dependent load per loop iteration)."""
    fns = [tk._post_side_kernel, tk._spikes_at, tk._decay_combine, tk._min_combine, tk._max_combine, tk._decays,
           tk._column_block]
    for fn in fns:
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(fn, "fn", fn))))
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))], fn


def test_post_side_compiles_for_sm90_without_spills_at_1024_rows():
    """The largest tile (T = 1000 → 1024 rows, float32 and float64, window and drive) fits in registers: ptxas
    reports no spill stores or loads for sm_90 (in a fresh process without the interpreter)."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("Triton's bundled ptxas is missing")
    code = textwrap.dedent(f"""
        import subprocess, sys, tempfile, os
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from hm2bp.ops import triton_kernels as tk
        for ty in ("fp32", "fp64"):
            sig = {{**{{p: "*" + ty for p in ("post_ptr", "y_ptr", "pow_m_ptr", "pow_s_ptr", "coef_ptr", "decay_ptr",
                                             "drive_ptr", "side_ptr")}}, "B": "i32", "N": "i32"}}
            block, warps = tk._post_side_block(1024, 800)
            const = {{"T": 1000, "T_PAD": 1024, "T_REF": 2, "DELAY": 3, "ZERO_FIRST": True, "SPLIT": True,
                     "WINDOW": 256, "HAS_DRIVE": True, "BLOCK": block}}
            sig.update({{c: "constexpr" for c in const}})
            k = triton.compile(ASTSource(tk._post_side_kernel, sig, constexprs=const),
                               target=GPUTarget("cuda", 90, 32), options={{"num_warps": warps}})
            with tempfile.TemporaryDirectory() as d:
                open(os.path.join(d, "k.ptx"), "w").write(k.asm["ptx"])
                r = subprocess.run([{ptxas!r}, "-v", "--gpu-name=sm_90a", os.path.join(d, "k.ptx"), "-o",
                                    os.path.join(d, "k.cubin")], capture_output=True, text=True)
            print(ty, r.returncode, r.stderr.replace(chr(10), " "))
        """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().split("\n")
    assert len(lines) == 2, proc.stdout
    for line in lines:
        assert " 0 " in line[:10] and "0 bytes spill stores, 0 bytes spill loads" in line, line
