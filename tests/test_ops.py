"""The fused LIF scan op: compiled kernels equal the pure-PyTorch path spike for spike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hm2bp import HM2BPRule, SpikeCountLoss, SpikingMLP, backend, ops
from hm2bp.neuron import LIFParams, scan_inplace
from hm2bp.paper import PROTOCOL


def _buffers(T, B, N, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    buf = (torch.rand(T + 1, B, N, generator=g, dtype=dtype) * 0.4 - 0.05).to(device)
    buf[1::7] = 0.125  # identical drive rows: many neurons reach the threshold on the same steps
    return buf, buf.clone()


def _compiled_equal(device):
    backend.set_backend("compiled")
    try:
        for dtype in (torch.float32, torch.float64):
            for w0 in (0.0, 1.0):
                for T, B, N in ((400, 64, 50), (30, 1, 7), (5, 200, 3)):
                    ref, fast = _buffers(T, B, N, dtype, device)
                    params = LIFParams(threshold=1.0, t_ref=2)
                    expected = scan_inplace(ref, params, w0)
                    got = ops.scan(fast, params, w0)
                    assert torch.equal(expected, got), (dtype, w0, T, B, N)
                    assert expected.sum() > 0
    finally:
        backend.set_backend("auto")


def test_cpu_kernel_equals_torch_path():
    if backend.load_extension("cpu") is None:
        pytest.skip("no C++ compiler on this machine: the op falls back to the pure-PyTorch scan")
    _compiled_equal("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU and a CUDA build of torch")
def test_cuda_kernel_equals_torch_path():
    _compiled_equal("cuda")  # HM2BP_OPS=compiled on CUDA tensors: the Triton scan


def test_fallback_when_the_build_is_impossible(monkeypatch, caplog):
    monkeypatch.setitem(backend._built, "cpu", None)  # as if the build had failed
    backend.set_backend("compiled")
    try:
        with pytest.raises(RuntimeError, match="could not be built"):
            ops.scan(torch.zeros(5, 1, 2), LIFParams(1.0))
        backend.set_backend("auto")
        buf = torch.rand(6, 2, 3)
        expected = scan_inplace(buf.clone(), LIFParams(1.0))
        assert torch.equal(ops.scan(buf, LIFParams(1.0)), expected)  # auto: the pure-PyTorch scan
    finally:
        backend.set_backend("auto")


def test_op_schema_and_fake_implementation():
    buf = torch.rand(8, 2, 3)
    torch.library.opcheck(torch.ops.hm2bp.lif_scan_.default, (buf, 0.5, 0.9, 0.8, 2, 0.0),
                          test_utils=("test_schema", "test_faketensor"))


def test_end_to_end_gradients_same_with_compiled_op(ops_backend):
    """The compiled kernels (fused linear layers on CPUs) give the spikes and, up to the order of float sums, the
    gradients of the pure-PyTorch path through a whole network."""
    runs = []
    for kernels in ("torch", "compiled"):
        ops_backend(kernels)
        torch.manual_seed(0)
        net = SpikingMLP([12, 30, 4], [2.0, 2.0], rule=HM2BPRule(), target_count=10)
        x = (torch.rand(5, 120, 12, generator=torch.Generator().manual_seed(1)) < 0.2).float()
        y = torch.tensor([0, 1, 2, 3, 0])
        outs = net.forward_all(x, y)
        SpikeCountLoss(10, 1, 1)(outs[-1].sum(1), y).backward()
        runs.append(([o.detach() for o in outs], [p.grad.clone() for p in net.parameters()]))
    (spikes_t, grads_t), (spikes_c, grads_c) = runs
    assert all(torch.equal(a, b) for a, b in zip(spikes_t, spikes_c, strict=True))
    assert all(s.sum() > 0 for s in spikes_t)
    for a, b in zip(grads_t, grads_c, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.set_backend("fastest")


def test_gpu_epoch_script_runs_on_cpu(tmp_path):
    """Keeps bench/gpu_epoch.py (the GPU check's timing script) from rotting where no GPU exists."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "epoch.json"
    subprocess.run([sys.executable, str(root / "bench" / "gpu_epoch.py"), "--device", "cpu",
                    "--samples", "8", "--batch", "4", "--steps", "120", "--out", str(out)], check=True,
                   capture_output=True)
    assert '"samples_per_second"' in out.read_text()


def test_gpu_app_epoch_script_runs_on_cpu(tmp_path):
    """bench/gpu_app_epoch.py (the GPU check's app-level timing and paper-table estimate) on a sliver of each row."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "app.json"
    subprocess.run([sys.executable, str(root / "bench" / "gpu_app_epoch.py"), "--device", "cpu", "--scale", "0.001",
                    "--out", str(out)], check=True, capture_output=True, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"mnist_mlp", "mnist_cnn", "nmnist_mlp", "emnist_mlp_400_400"}
    assert all(r["samples"] >= r["batch"] and r["epoch_seconds"] > 0 for r in result["rows"].values())
    assert set(result["estimate"]) == set(PROTOCOL)
    assert result["total_gpu_hours"] == pytest.approx(sum(e["gpu_hours"] for e in result["estimate"].values()))

    # The README's GPU-hours column takes this file (the report refuses it off a GPU or on a sliver).
    from hm2bp.report import gpu_timing, readme_table

    with pytest.raises(ValueError, match=r"measured on no GPU at scale 0.001: the README needs a GPU run at scale 1"):
        gpu_timing(out)
    out.write_text(json.dumps({**result, "gpu": "NVIDIA H200", "scale": 1.0}))
    gpu = gpu_timing(out)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in readme_table({}, gpu=gpu).splitlines()}
    assert "est. NVIDIA H200 hours, 5 seeds (measured s/sample)" in rows["experiment"]
    for name, e in result["estimate"].items():
        hours = 5 * e["epochs"] * e["n_train"] * e["seconds_per_sample"] / 3600
        want = "< 0.01" if hours < 0.005 else f"{hours:.2f}" if hours < 10 else f"{hours:,.0f}"
        assert rows[name].endswith(f"| {want} |")
