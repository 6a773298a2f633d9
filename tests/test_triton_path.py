"""The Triton path's GEMMs in split TF32 keep float32 accuracy (against float64), and the backend is decided in one
place that imports nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="Triton is a dev dependency on Linux")  # conftest: TRITON_INTERPRET

from hm2bp.ops import triton_kernels as tk
from hm2bp.ops.triton_path import spike_mm, tf32_parts, weight_grad_into

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


def test_scaled_tf32_parts_kernel_equals_the_definition_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(5, 3, 70, generator=g) * 40  # 1,050 elements: two programs, a masked tail
    coef = torch.randn(3, 70, generator=g)
    coef[0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    hi, lo = tk.scaled_tf32_parts(y.to(DEVICE), coef.to(DEVICE))
    want_hi, want_lo = tf32_parts(y * coef)
    assert torch.equal(hi.cpu(), want_hi) and torch.equal(lo.cpu(), want_lo)


def test_split_tf32_weight_gradient_keeps_float32_accuracy():
    """``acc += (coef·Y)ᵀ x`` in split TF32 against float64, within 2⁻²¹ per product plus float32 summation."""
    g = torch.Generator().manual_seed(3)
    steps, batch, n_out, n_in = 30, 4, 20, 50
    y = (torch.randn(steps, batch, n_out, generator=g) * 3).to(DEVICE)
    coef = torch.randn(batch, n_out, generator=g).to(DEVICE)
    spikes = (torch.rand(steps * batch, n_in, generator=g) < 0.3).float().to(DEVICE)
    acc = torch.full((n_out, n_in), 0.5, device=DEVICE)
    got = weight_grad_into(acc.clone(), y, coef, spikes, split=True)
    scaled = (y.double() * coef.double()).flatten(0, 1).t()
    exact = 0.5 + scaled @ spikes.double()
    bound = (scaled.abs() @ spikes.double()) * (2.0**-21 + steps * batch * 2.0**-24) + 2.0**-24
    assert ((got.double() - exact).abs() <= bound).all()
    assert not ((weight_grad_into(acc.clone(), y, coef, spikes, split=False).double() - exact).abs() > bound).any()


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
