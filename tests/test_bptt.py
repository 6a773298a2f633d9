"""BPTT's fast scan against the literal autograd-through-time reference, and its forward against the HM2-BP scan."""

from __future__ import annotations

import pytest
import torch

from hm2bp.bptt import BPTTRule, bptt_scan, bptt_scan_reference
from hm2bp.neuron import LIFParams, lif_scan


@pytest.fixture(params=["compiled", "torch", "triton"])
def kernels(request, ops_backend):
    """Each test runs on the C++ kernels, the pure-PyTorch path and the Triton kernels (interpreted on CPU)."""
    ops_backend(request.param)
    return request.param


def _currents(seed: int, T: int = 80, B: int = 3, N: int = 6, scale: float = 2.4) -> torch.Tensor:
    """Time-major ``I (T, B, N)`` for neurons with τs = 4."""
    g = torch.Generator().manual_seed(seed)
    currents = torch.randn(T, B, N, generator=g, dtype=torch.float64) * scale + 0.6
    currents[:, 0, 1] = -4.0  # a neuron that never fires
    currents[-4:, 1] += 20.0  # spikes (and refractory holds) at the last steps
    return currents


@pytest.mark.parametrize("t_ref", [0, 1, 2, 3])
@pytest.mark.parametrize("lateral_w0", [0.0, 1.0])
@pytest.mark.parametrize("reset_grad", [False, True])
def test_fast_bptt_equals_autograd_through_time(kernels, t_ref, lateral_w0, reset_grad):
    params = LIFParams(threshold=1.0, tau_m=16.0, tau_s=4.0, t_ref=t_ref)
    rule = BPTTRule(slope=5.0, reset_grad=reset_grad)
    currents = _currents(t_ref + 10 * int(lateral_w0))
    upstream = torch.randn(currents.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads, outs = [], []
    for fn in (bptt_scan, bptt_scan_reference):
        x = currents.clone().requires_grad_(True)
        s = fn(x, params, lateral_w0, rule)
        (s * upstream).sum().backward()
        grads.append(x.grad)
        outs.append(s.detach())
    expected = lif_scan(currents.transpose(0, 1), params, lateral_w0).transpose(0, 1)
    assert torch.equal(outs[0], expected) and torch.equal(outs[1], expected)  # the HM2-BP scan's spikes
    fired = expected.sum((0, 2))
    assert expected[:, 0, 1].sum() == 0 and fired.min() > 0 and expected[-3:, 1].sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)
    assert grads[0].abs().max() > 1e-3  # a gradient that is there to compare


def _literal_net_forward(net, x: torch.Tensor, rule: BPTTRule) -> torch.Tensor:
    """The network's BPTT forward written out with plain autograd ops and the reference scan."""
    import torch.nn.functional as F

    from hm2bp.layers import SpikingConv2d, SpikingLinear, SpikingPool2d

    B, T = x.shape[:2]
    for spec, layer in zip(net.specs, net.layers, strict=True):
        x = x.reshape(B, T, *spec.in_shape)
        if isinstance(layer, SpikingLinear):
            currents = torch.einsum("btj,ij->tbi", x.reshape(B, T, -1), layer.weight)
        elif isinstance(layer, SpikingConv2d):
            currents = torch.stack([F.conv2d(x[:, t], layer.weight) for t in range(T)])
        else:
            assert isinstance(layer, SpikingPool2d)
            k = layer.size
            currents = torch.stack([F.avg_pool2d(x[:, t], k) * k * k for t in range(T)])
        x = bptt_scan_reference(currents.reshape(T, B, -1), layer.setup.lif, layer.setup.lateral_w0,
                                rule).transpose(0, 1)
    return x.reshape(B, T, -1)


@pytest.mark.parametrize("arch, shape, thresholds", [
    ("12-5", (10,), [1.0, 1.0]),
    ("3C3-P2-6", (1, 8, 8), [0.8, 0.5, 1.0]),
])
def test_bptt_networks_match_the_literal_reference_and_spike_as_hm2bp(kernels, arch, shape, thresholds):
    """An MLP and a CNN (conv, pooling, output lateral inhibition) trained by BPTT: the forward spikes are the
    HM2-BP network's, the weight gradients the literal reference's to 1e-10 (float64)."""
    from hm2bp.layers import SpikingNet

    rule = BPTTRule(slope=4.0)
    torch.manual_seed(0)
    net = SpikingNet(arch, shape, thresholds, rule=rule, tau_m=16.0, tau_s=4.0).double()
    hm2bp = SpikingNet(arch, shape, thresholds, tau_m=16.0, tau_s=4.0).double()
    hm2bp.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(2, 50, net.n_inputs, generator=g, dtype=torch.float64) < 0.3).double()
    upstream = torch.randn(2, 50, net.specs[-1].size, generator=g, dtype=torch.float64)
    out = net(x)
    assert out.sum() > 0 and torch.equal(out, hm2bp(x).detach())
    (out * upstream).sum().backward()
    fast = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    (_literal_net_forward(net, x, rule) * upstream).sum().backward()
    for a, b in zip(fast, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        assert a.abs().max() > 1e-3


def test_surrogate_is_snntorchs_fast_sigmoid():
    """The surrogate derivative is snnTorch's ``fast_sigmoid(slope)`` gradient, whose defaults BPTTRule takes."""
    import inspect

    from snntorch import surrogate

    from hm2bp.bptt import SURROGATE_SLOPE
    from hm2bp.ops.torch_kernels import bptt_surrogate

    assert inspect.signature(surrogate.fast_sigmoid).parameters["slope"].default == SURROGATE_SLOPE
    x = torch.linspace(-2, 2, 101, dtype=torch.float64, requires_grad=True)
    surrogate.fast_sigmoid(slope=7.0)(x).sum().backward()
    torch.testing.assert_close(x.grad, bptt_surrogate(x.detach(), 7.0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["compiled", "triton"])
def test_kernels_record_the_same_membrane(ops_backend, name):
    """The C++ and Triton forwards' spikes are the PyTorch path's exactly and their recorded membranes equal them
    (float32), row 0 included."""
    from hm2bp import ops
    from hm2bp.ops import torch_kernels

    ops_backend(name)
    currents = _currents(3, N=130).float()  # 130: two Triton programs and a masked tail without lateral inhibition
    for lateral_w0 in (0.0, 1.0):
        args = (0.25, *LIFParams(threshold=1.0, tau_m=16.0, tau_s=4.0, t_ref=2).scan_args(lateral_w0))
        spikes, u = ops.bptt_forward(currents, *args)
        ref_spikes, ref_u = torch_kernels.bptt_forward(currents, *args)
        assert torch.equal(spikes, ref_spikes) and spikes.sum() > 0
        torch.testing.assert_close(u, ref_u, rtol=1e-6, atol=1e-6)


def test_inference_uses_the_plain_scan_with_the_same_spikes(kernels):
    """Without gradients a BPTT layer runs the plain scan (no membranes recorded): the same spikes."""
    from hm2bp.layers import SpikingNet

    torch.manual_seed(0)
    net = SpikingNet("12-5", (10,), [1.0, 1.0], rule=BPTTRule(), tau_m=16.0, tau_s=4.0)
    x = (torch.rand(3, 40, 10, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    with torch.no_grad():
        plain = net(x)
    assert plain.sum() > 0 and torch.equal(plain, net(x).detach())
