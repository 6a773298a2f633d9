"""The Triton path's GEMMs in split TF32 keep float32 accuracy (against float64), and the backend is decided in one
place that imports nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="Triton is a dev dependency on Linux")  # conftest: TRITON_INTERPRET

from hm2bp.ops.triton_path import mm_spikes_into, spike_mm, tf32_parts

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TF32_DROPPED_BITS = 13  # float32 has 23 explicit mantissa bits, TF32 10


def _is_tf32(x: torch.Tensor) -> bool:
    return bool(((x.view(torch.int32) & ((1 << TF32_DROPPED_BITS) - 1)) == 0).all())


def test_tf32_parts_are_tf32_and_sum_to_x_within_2_pow_minus_21():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g) * torch.exp2(torch.randint(-30, 30, (10_000,), generator=g).float())
    x[:3] = torch.tensor([0.0, -1.0, 1.0 + 2**-23])
    hi, lo = tf32_parts(x)
    assert _is_tf32(hi) and _is_tf32(lo)
    err = (x.double() - hi.double() - lo.double()).abs()
    assert (err <= 2.0**-21 * x.double().abs()).all()
    assert (lo != 0).any()  # the second part carries bits


def _operands(rows: int, inner: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    spikes = (torch.rand(rows, inner, generator=g) < 0.3).float()
    w = torch.randn(inner, cols, generator=g) * 3
    return spikes.to(DEVICE), w.to(DEVICE)


def _bound(spikes: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Split error ≤ 2⁻²¹ per product plus float32 summation over the inner dimension."""
    return (spikes.double().abs() @ w.double().abs()) * (2.0**-21 + spikes.shape[1] * 2.0**-24)


def test_split_tf32_spike_gemm_keeps_float32_accuracy():
    spikes, w = _operands(64, 784, 50)
    exact = spikes.double() @ w.double()
    got = spike_mm(spikes, w, split=True)
    assert ((got.double() - exact).abs() <= _bound(spikes, w)).all()
    hi, _ = tf32_parts(w)  # one TF32 pass alone is ~2⁻¹¹ off: the bound must see that
    assert not (((spikes @ hi).double() - exact).abs() <= _bound(spikes, w)).all()


def test_split_tf32_weight_gradient_gemm_keeps_float32_accuracy():
    spikes, x = _operands(300, 400, 20)  # acc += xᵀ (20 × 400) @ spikes (400 × 300)
    xt = x.t().contiguous()
    acc = torch.full((20, 300), 0.5, device=DEVICE)
    got = mm_spikes_into(acc.clone(), xt, spikes.t().contiguous(), split=True)
    exact = 0.5 + xt.double() @ spikes.t().double()
    assert ((got.double() - exact).abs() <= _bound(spikes, x).t() + 2.0**-24).all()


def test_neuron_imports_no_kernels_and_there_is_no_import_circle():
    """``import hm2bp.neuron`` (as a spike check does) loads no op module, so it can never start the C++ build; each
    engine module imports on its own in a fresh interpreter."""
    code = ("import sys, hm2bp.neuron, hm2bp.backend\n"
            "print(sorted(m for m in sys.modules if m.startswith('hm2bp')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['hm2bp', 'hm2bp.backend', 'hm2bp.neuron']"
    for module in ("hm2bp.ops", "hm2bp.spsp", "hm2bp.functional", "hm2bp.conv", "hm2bp.encoding", "hm2bp.layers",
                   "hm2bp.ops.torch_kernels", "hm2bp.ops.cpp_kernels"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
