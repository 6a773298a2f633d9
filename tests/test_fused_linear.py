"""The fused C++ spiking linear layer (hm2bp.ops.cpp_kernels.linear_forward / linear_backward) against the pure-PyTorch
path.

Whole-layer gradients against the literal per-sample reference are in test_functional.py (path "fused").
"""

from __future__ import annotations

import pytest
import torch

from hm2bp import backend
from hm2bp.functional import HM2BPRule, LayerSetup, hm2bp_linear
from hm2bp.neuron import LIFParams, scan_inplace
from hm2bp.ops import cpp_kernels
from hm2bp.spsp import PSPKernel, SpikeSums, contract, post_events, pre_traces, spike_sums
from hm2bp.workspace import derived


@pytest.fixture(autouse=True)
def _compiled(ops_backend):
    ops_backend("compiled")


def _dyadic_weight(n_out, n_in, dtype, seed):
    """Weights on a 2⁻¹⁰ grid: every partial sum of ≤ 2¹³ of them is exact in float32, so the event-driven input
    current equals the GEMM's whatever the order of the additions."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-1024, 1536, (n_out, n_in), generator=g).to(dtype) / 1024)


def _gemm_scan(pre_tm, weight, params, w0):
    T, B, n_in = pre_tm.shape
    buf = pre_tm.new_empty(T + 1, B, weight.shape[0])
    torch.mm(pre_tm.reshape(T * B, n_in), weight.t() / params.tau_s, out=buf[1:].view(T * B, -1))
    return scan_inplace(buf, params, w0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("w0", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(400, 64, 40, 30), (30, 1, 7, 5), (2, 3, 4, 6), (1, 2, 3, 4), (60, 200, 3, 2)])
def test_forward_equals_gemm_and_scan(dtype, w0, shape):
    T, B, n_in, n_out = shape
    g = torch.Generator().manual_seed(T + B)
    pre = (torch.rand(T, B, n_in, generator=g) < 0.3).to(dtype)
    pre[T // 2] = 1  # a step where every input fires
    weight = _dyadic_weight(n_out, n_in, dtype, seed=B)
    params = LIFParams(threshold=1.0, t_ref=2)
    expected = _gemm_scan(pre, weight, params, w0)
    got = cpp_kernels.linear_forward(pre, weight, params, w0)
    assert torch.equal(got, expected)
    if T > 10:
        assert expected.sum() > 0


def test_forward_weighs_inputs_as_a_gemm():
    """Graded inputs (not spikes) weigh their weight rows, as the GEMM of the pure-PyTorch path does."""
    g = torch.Generator().manual_seed(5)
    pre = (torch.rand(200, 4, 10, generator=g) < 0.3).double() * torch.tensor([0.5, 2.0]).repeat(5).double()
    weight = _dyadic_weight(6, 10, torch.float64, seed=5)
    params = LIFParams(threshold=1.0)
    expected = _gemm_scan(pre, weight, params, 0.0)
    assert expected.sum() > 0
    assert torch.equal(cpp_kernels.linear_forward(pre, weight, params), expected)


def test_forward_random_weights_agree_with_gemm_path():
    """With arbitrary float32 weights the sums are rounded in another order, so a spike may move where the membrane
    sits within rounding of the threshold; that must stay rare."""
    g = torch.Generator().manual_seed(0)
    pre = (torch.rand(400, 32, 64, generator=g) < 0.06).float()
    weight = torch.rand(300, 64, generator=g) * 2 - 1
    params = LIFParams(threshold=2.0)
    expected = _gemm_scan(pre, weight, params, 0.0)
    got = cpp_kernels.linear_forward(pre, weight, params)
    assert expected.sum() > 1000
    assert (got != expected).sum() <= 1e-4 * expected.numel()


def _backward_args(seed=0, dtype=torch.float64, B=6, T=300, n_in=9, n_out=7):
    g = torch.Generator().manual_seed(seed)
    pre = (torch.rand(T, B, n_in, generator=g) < 0.15).to(dtype)
    weight = (torch.rand(n_out, n_in, generator=g, dtype=dtype) * 2 - 0.6)
    post = cpp_kernels.linear_forward(pre, weight, LIFParams(threshold=1.5))
    grad = torch.randn(B, n_out, generator=g, dtype=dtype)
    return pre, post, weight, grad


def test_backward_does_not_depend_on_the_thread_count():
    pre, post, weight, g = _backward_args(B=37, dtype=torch.float32)
    kernel = PSPKernel()
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(cpp_kernels.linear_backward(pre, post, weight, g, None, weight.sum(1) * 0.5, 1.5, True,
                                                       kernel))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_backward_counts_and_disabled_factors():
    pre, post, weight, g = _backward_args()
    coef, grad_w, gwe, o, o_pre = cpp_kernels.linear_backward(pre, post, weight, g, None, None, 1.5, False, PSPKernel())
    assert gwe is None
    assert torch.equal(o, post.sum(0)) and torch.equal(o_pre, pre.sum(0))
    assert torch.equal(coef, g)  # no side effect, no lateral factor: coef = g
    lam = torch.full_like(g, 2.0)
    coef2, grad_w2, *_ = cpp_kernels.linear_backward(pre, post, weight, g, lam, None, 1.5, False, PSPKernel())
    torch.testing.assert_close(coef2, 2 * g)
    torch.testing.assert_close(grad_w2, 2 * grad_w)


@pytest.mark.parametrize("convention", ["original", "exact"])
@pytest.mark.parametrize("output", [True, False])
def test_layer_gradients_equal_torch_path_float32(convention, output, ops_backend):
    """Float32, a batch of 64 and T = 400 with many spikes per neuron (windows, resets), fused vs pure PyTorch."""
    g = torch.Generator().manual_seed(3)
    pre = (torch.rand(64, 400, 30, generator=g) < 0.1).float()
    weight0 = torch.rand(12, 30, generator=g) * 2 - 0.7
    labels = torch.randint(0, 12, (64,), generator=g) if output else None
    grads = []
    for kernels in ("torch", "compiled"):
        ops_backend(kernels)
        weight = weight0.clone().requires_grad_()
        x = pre.clone().requires_grad_()
        setup = LayerSetup(lif=LIFParams(threshold=1.0), rule=HM2BPRule(convention=convention),
                           lateral_w0=1.0 if output else 0.0, is_output=output, target_count=35)
        post = hm2bp_linear(x, weight, setup, labels)
        (post.sum(1) * torch.linspace(-1, 1, 12)).sum().backward()
        grads.append((post.detach(), weight.grad, x.grad))
    (p_t, w_t, x_t), (p_c, w_c, x_c) = grads
    assert torch.equal(p_t, p_c)
    assert p_t.sum(1).max() > 20  # several spikes per neuron: resets and the 256-step window are exercised
    torch.testing.assert_close(w_c, w_t, rtol=2e-5, atol=1e-5)
    # the two paths sum e in different orders; terms reach ~10, so float32 resolution is ~1e-6 absolute
    torch.testing.assert_close(x_c, x_t, rtol=2e-5, atol=4e-6)


@pytest.mark.parametrize("backend", ["torch", "compiled"])
def test_backward_leaves_the_spike_sums_for_the_statistics(backend, ops_backend):
    """After a backward pass the per-neuron spike sums of both rasters come without another pass over them."""
    ops_backend(backend)
    g = torch.Generator().manual_seed(5)
    pre_tm = (torch.rand(60, 4, 70, generator=g) < 0.2).float()  # time-major storage, as layers pass it on
    weight = (torch.rand(6, 70, generator=g) * 0.6).requires_grad_()
    setup = LayerSetup(lif=LIFParams(threshold=1.0), rule=HM2BPRule())
    post = hm2bp_linear(pre_tm.transpose(0, 1), weight, setup)
    post.sum().backward()
    post_tm = post.detach().transpose(0, 1)
    for raster in (pre_tm, post_tm):
        assert derived.get(raster) is not None  # a spike index (torch) or the kernel's sums (compiled)
        assert torch.equal(spike_sums(raster), raster.sum(0))
    if backend == "compiled":
        assert isinstance(derived.get(pre_tm), SpikeSums)
    pre_tm[1, 0, 0] = 1 - pre_tm[1, 0, 0]  # written: recomputed
    assert derived.get(pre_tm) is None and torch.equal(spike_sums(pre_tm), pre_tm.sum(0))


def test_ops_schema_and_fake_implementations():
    pre = (torch.rand(20, 3, 4) < 0.3).float()
    weight = torch.rand(5, 4)
    out = torch.empty(20, 3, 5)
    torch.library.opcheck(torch.ops.hm2bp.linear_forward_.default,
                          (pre, (weight.t() / 8).contiguous(), out, 0.5, 0.9, 0.8, 2, 0.0),
                          test_utils=("test_schema", "test_faketensor"))
    post = cpp_kernels.linear_forward(pre, weight, LIFParams(0.2))
    args = (pre, post, weight, torch.rand(3, 5), torch.empty(0), torch.rand(5), 1.0, True, 0.98, 0.88, 1.0, -1.0,
            3, 2, 256, True)
    torch.library.opcheck(torch.ops.hm2bp.linear_backward.default, args, test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.hm2bp.spsp.default, (pre, post, 0.98, 0.88, 1.0, -1.0, 3, 2, 256, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_tensors_are_refused():
    pre = torch.zeros(10, 2, 4)
    with pytest.raises(RuntimeError, match="weight_t must be"):
        torch.ops.hm2bp.linear_forward_(pre, torch.zeros(3, 5), torch.empty(10, 2, 5), 1.0, 0.9, 0.8, 2, 0.0)
    with pytest.raises(RuntimeError, match="out must be"):
        torch.ops.hm2bp.linear_forward_(pre, torch.zeros(4, 5), torch.empty(10, 2, 6), 1.0, 0.9, 0.8, 2, 0.0)
    with pytest.raises(RuntimeError, match="share a dtype"):
        torch.ops.hm2bp.linear_forward_(pre, torch.zeros(4, 5, dtype=torch.float64), torch.empty(10, 2, 5), 1.0, 0.9,
                                        0.8, 2, 0.0)
    with pytest.raises(RuntimeError, match="share \\(T, B\\)"):
        cpp_kernels.linear_backward(pre, torch.zeros(9, 2, 5), torch.zeros(5, 4), torch.zeros(2, 5), None, None, 1.0,
                                    True, PSPKernel())
    post, w, g = torch.zeros(10, 2, 5), torch.zeros(5, 4), torch.zeros(2, 5)
    for args, message in (((pre, post, torch.zeros(4, 5), g, None, None), "weight must be \\(N_out, N_in\\)"),
                          ((pre, post, w, torch.zeros(3, 5), None, None), "g must be \\(B, N_out\\)"),
                          ((pre, post, w, g, torch.zeros(2, 4), None), "lam must be empty or"),
                          ((pre, post, w, g, None, torch.zeros(4)), "rho must be empty or")):
        with pytest.raises(RuntimeError, match=message):
            cpp_kernels.linear_backward(*args, 1.0, True, PSPKernel())


def test_pure_pytorch_path_when_the_build_is_impossible(monkeypatch, ops_backend):
    ops_backend("auto")
    monkeypatch.setitem(backend._built, "cpu", None)  # as if the build had failed
    pre = (torch.rand(50, 2, 4) < 0.3).float()
    assert backend.kernels_for(pre) == "torch"
    setup = LayerSetup(lif=LIFParams(threshold=0.3), rule=HM2BPRule())
    weight = torch.rand(3, 4, requires_grad=True)
    hm2bp_linear(pre, weight, setup).sum().backward()
    assert weight.grad is not None
    backend.set_backend("compiled")  # the fixture resets it
    with pytest.raises(RuntimeError, match="could not be built"):
        backend.kernels_for(pre)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("convention", ["original", "exact"])
@pytest.mark.parametrize("rate", [0.01, 0.3])  # sparse pre rasters take the event-list form, dense ones the rows
def test_spsp_rows_equal_the_event_contraction(dtype, convention, rate):
    """``cpp_kernels.spsp`` (the lateral factor's S-PSPs on the compiled path) against
    ``contract(post_events, pre_traces)``, with silent post neurons and silent pre columns in the same samples."""
    g = torch.Generator().manual_seed(7)
    pre = (torch.rand(400, 5, 40, generator=g) < rate).to(dtype)
    pre[:, :, :7] = 0  # columns that never fire
    weight = torch.rand(9, 40, generator=g, dtype=dtype) * (3.0 if rate < 0.1 else 0.3)
    weight[:2] = 0  # post neurons that never fire
    post = cpp_kernels.linear_forward(pre, weight, LIFParams(threshold=1.0))
    kernel = PSPKernel(convention=convention)
    expected = contract(post_events(post, kernel), pre_traces(pre, kernel), kernel)
    assert post.sum(0)[:, 2:].min() > 3 and post[:, :, :2].sum() == 0
    got = cpp_kernels.spsp(pre, post, kernel)
    assert torch.equal(got[:, :, :7], torch.zeros_like(got[:, :, :7])) and torch.equal(got[:, :2], got[:, :2] * 0)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 2e-5}
    torch.testing.assert_close(got, expected, **tol)


def test_backward_forms_give_the_same_numbers():
    """A sample's pre side is held as an event list over its active columns after a sparse sample, as whole rows
    after a dense one (the kernel picks the form from the previous sample of its thread); both give the same bits."""
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(300, 1, 40, generator=g) < 0.05).double()
    x[:, :, ::3] = 0  # some silent columns
    sparse = torch.zeros_like(x)
    sparse[5:200:7, :, :3] = 1
    dense = (torch.rand(300, 1, 40, generator=g) < 0.5).double()
    weight = torch.rand(6, 40, generator=g, dtype=torch.float64) * 1.5
    lif, kernel = LIFParams(threshold=1.0), PSPKernel()
    grad = torch.randn(1, 6, generator=g, dtype=torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(1)
        for first in (sparse, dense, sparse):
            for pre in (first, x):
                post = cpp_kernels.linear_forward(pre, weight, lif)
                out = cpp_kernels.linear_backward(pre, post, weight, grad, None, weight.sum(1), 1.0, True, kernel)
            results.append((out, cpp_kernels.spsp(x, post, kernel)))
    finally:
        torch.set_num_threads(threads)
    assert post.sum() > 10
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0][0], other[0], strict=True))
        assert torch.equal(results[0][1], other[1])


def test_sparse_backward_does_not_depend_on_the_thread_count():
    """Samples whose pre sides take the event-list form (most columns silent, a different set per sample), float32,
    through the group buffers kept between calls: the same bits with 1, 2 and 3 threads."""
    g = torch.Generator().manual_seed(13)
    pre = (torch.rand(300, 37, 120, generator=g) < 0.08).float()
    pre *= (torch.rand(1, 37, 120, generator=g) < 0.2).float()  # ~80 % of the columns silent in each sample
    weight = torch.rand(9, 120, generator=g) * 3.0
    post = cpp_kernels.linear_forward(pre, weight, LIFParams(threshold=1.5))
    grad = torch.randn(37, 9, generator=g)
    assert post.sum() > 100
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(cpp_kernels.linear_backward(pre, post, weight, grad, None, weight.sum(1) * 0.5, 1.5, True,
                                               PSPKernel()))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))
