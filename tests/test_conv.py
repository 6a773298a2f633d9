"""Spiking conv and pooling layers: forward and HM2-BP backward against the literal per-pair references."""

import numpy as np
import pytest
import torch

from conftest import refractory_trains
from hm2bp.conv import hm2bp_conv2d, hm2bp_pool2d
from hm2bp.functional import HM2BPRule, LayerSetup, hm2bp_linear
from hm2bp.layers import CONV_THRESHOLD_EPS, SpikingConv2d, SpikingPool2d
from hm2bp.neuron import LIFParams
from hm2bp.ops import local_spsp
from hm2bp.ops.torch_kernels import LOCAL_CHUNK_ELEMS, conv_index, pool_index
from hm2bp.reference import (
    conv_forward_reference,
    hm2bp_conv_reference,
    hm2bp_pool_reference,
    lif_reference,
)
from hm2bp.spsp import TRACE_CHUNK_BYTES, spsp

FLAG_SETS = {
    "authors": {},
    "no_fallbacks": dict(silent_post_psp=0.0, silent_post_rho=0.0, silent_effect_ratio=0.0),
    "no_effect_ratio": dict(effect_ratio=False),
    "no_side_effect": dict(side_effect=False),
    "no_window": dict(psp_window_taus=None),
}


def _conv_setup(rule: HM2BPRule, threshold: float = 1.2) -> LayerSetup:
    return LayerSetup(lif=LIFParams(threshold, threshold_eps=CONV_THRESHOLD_EPS), rule=rule)


def _conv_inputs(rng, batch=2, steps=120, c_in=2, size=5, c_out=3, k=3):
    pre = (torch.from_numpy(rng.random((batch, steps, c_in, size, size))) < 0.15).double()
    pre[:, 0] = 0
    pre[0, :, 1, :2, :] = 0  # silent inputs
    weight = torch.from_numpy(rng.uniform(-0.5, 1.2, size=(c_out, c_in, k, k)))
    weight[-1] = -weight[-1].abs()  # a silent output map
    return pre.requires_grad_(), weight.requires_grad_()


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("convention", ["original", "exact"])
@pytest.mark.parametrize("flags", list(FLAG_SETS))
def test_conv_backward_equals_per_pair_reference(convention, flags, backend, rng, ops_backend):
    """Both paths (triton: the local S-PSPs from the Triton event matrix and traces) against the literal loops."""
    ops_backend(backend)
    rule = HM2BPRule(convention=convention, **FLAG_SETS[flags])
    steps = 300 if flags == "authors" else 100  # T > 256 exercises the original convention's window
    pre, weight = _conv_inputs(rng, steps=steps, size=4 if steps > 256 else 5)
    setup = _conv_setup(rule)
    post = hm2bp_conv2d(pre, weight, setup)
    counts = post.detach().sum(1)
    assert (counts == 0).any() and (counts > 0).any()  # silent and active neurons both occur
    delta = torch.from_numpy(rng.normal(size=tuple(counts.shape)))
    (post.sum(1) * delta).sum().backward()
    dw = np.zeros(tuple(weight.shape))
    for b in range(pre.shape[0]):
        d, below = hm2bp_conv_reference(pre[b].detach().numpy(), post[b].detach().numpy(),
                                        weight.detach().numpy(), delta[b].numpy(), setup)
        dw += d
        for t in (0, steps - 1):  # the error below is the same at every step
            np.testing.assert_allclose(pre.grad[b, t].numpy(), below, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weight.grad.numpy(), dw, rtol=1e-9, atol=1e-9)


def test_conv_forward_equals_scalar_loops(rng):
    pre, weight = _conv_inputs(rng, steps=80)
    setup = _conv_setup(HM2BPRule())
    post = hm2bp_conv2d(pre.detach(), weight.detach(), setup)
    for b in range(pre.shape[0]):
        ref = conv_forward_reference(pre[b].detach().numpy(), weight.detach().numpy(), setup.lif)
        np.testing.assert_array_equal(post[b].numpy(), ref)


@pytest.mark.parametrize("convention", ["original", "exact"])
@pytest.mark.parametrize("chunks", [(TRACE_CHUNK_BYTES, LOCAL_CHUNK_ELEMS), (5000, 7)])
def test_local_spsp_equals_full_spsp(convention, chunks, rng):
    """Local S-PSPs are the full closed form's entries at each neuron's inputs, whatever the chunking."""
    pre = refractory_trains(rng, 2, 300, 2 * 5 * 5, 0.1)
    post = refractory_trains(rng, 2, 300, 3 * 3 * 3, 0.06)
    kernel = LayerSetup(LIFParams(1.0), HM2BPRule(convention=convention)).kernel
    index = conv_index((2, 5, 5), 3, 3)
    local = local_spsp(post.transpose(0, 1), pre.transpose(0, 1), kernel, index, None, *chunks)
    full = spsp(pre, post, convention=convention)
    torch.testing.assert_close(local, full.gather(2, index.expand(2, -1, -1)), rtol=1e-12, atol=1e-12)


def test_one_by_one_conv_equals_linear_layer(rng, contraction):
    """A 1×1 kernel on 1×1 maps is a fully-connected layer: same spikes, same gradients."""
    n_in, n_out, steps, batch = 7, 5, 200, 3
    pre = (torch.from_numpy(rng.random((batch, steps, n_in))) < 0.12).double()
    pre[:, 0] = 0
    pre[0, :, 2] = 0
    weight = torch.from_numpy(rng.uniform(-0.6, 1.4, size=(n_out, n_in)))
    weight[-1] = -weight[-1].abs()
    contraction("dense")
    setup = LayerSetup(lif=LIFParams(1.5), rule=HM2BPRule())
    delta = torch.from_numpy(rng.normal(size=(batch, n_out)))

    p_lin, w_lin = pre.clone().requires_grad_(), weight.clone().requires_grad_()
    out_lin = hm2bp_linear(p_lin, w_lin, setup)
    (out_lin.sum(1) * delta).sum().backward()

    p_conv = pre.clone().view(batch, steps, n_in, 1, 1).requires_grad_()
    w_conv = weight.clone().view(n_out, n_in, 1, 1).requires_grad_()
    out_conv = hm2bp_conv2d(p_conv, w_conv, setup)
    (out_conv.sum(1).view(batch, n_out) * delta).sum().backward()

    assert torch.equal(out_conv.reshape(batch, steps, n_out), out_lin)
    torch.testing.assert_close(w_conv.grad.view(n_out, n_in), w_lin.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p_conv.grad.view(batch, steps, n_in), p_lin.grad, rtol=1e-12, atol=1e-12)


def _pool_inputs(rng, batch=2, steps=120, channels=2, size=4):
    pre = (torch.from_numpy(rng.random((batch, steps, channels, size, size))) < 0.2).double()
    pre[:, 0] = 0
    pre[0, :, 0, :2, :2] = 0  # a window with no input: its pooling neuron is silent
    pre[1, :, 1, 2, 3] = 0  # one silent input in an active window
    return pre.requires_grad_()


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("scale", ["window", "threshold"])
@pytest.mark.parametrize("convention", ["original", "exact"])
@pytest.mark.parametrize("flags", ["authors", "no_fallbacks", "no_effect_ratio"])
def test_pool_backward_equals_per_pair_reference(scale, convention, flags, backend, rng, ops_backend):
    ops_backend(backend)
    rule = HM2BPRule(convention=convention, pool_error_scale=scale, **FLAG_SETS[flags])
    pre = _pool_inputs(rng)
    setup = LayerSetup(lif=LIFParams(2.0), rule=rule)
    post = hm2bp_pool2d(pre, 2, setup)
    counts = post.detach().sum(1)
    assert (counts == 0).any() and (counts > 0).any()
    delta = torch.from_numpy(rng.normal(size=tuple(counts.shape)))
    (post.sum(1) * delta).sum().backward()
    for b in range(pre.shape[0]):
        below = hm2bp_pool_reference(pre[b].detach().numpy(), post[b].detach().numpy(), delta[b].numpy(), 2, setup)
        np.testing.assert_allclose(pre.grad[b, 5].numpy(), below, rtol=1e-9, atol=1e-12)


def test_pool_forward_is_lif_on_window_sums(rng):
    pre = _pool_inputs(rng).detach()
    lif = LIFParams(2.0)
    post = hm2bp_pool2d(pre, 2, LayerSetup(lif=lif, rule=HM2BPRule()))
    for b in range(2):
        sums = pre[b].view(120, 2, 2, 2, 2, 2).sum((3, 5)).reshape(120, -1).numpy()
        np.testing.assert_array_equal(post[b].reshape(120, -1).numpy(), lif_reference(sums, lif))


def test_pool_scales_agree_when_threshold_is_window_area(rng):
    """docs/algorithm.md §6: for pool2 (ν = 4 = 2²) the authors' δ/k² and the chain rule's δ/ν coincide."""
    grads = []
    spikes = _pool_inputs(rng).detach()
    for scale in ("window", "threshold"):
        pre = spikes.clone().requires_grad_()
        post = hm2bp_pool2d(pre, 2, LayerSetup(lif=LIFParams(4.0), rule=HM2BPRule(pool_error_scale=scale)))
        post.sum().backward()
        grads.append(pre.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_field_indices():
    idx = conv_index((2, 4, 4), 3, 3)
    assert idx.shape == (3 * 2 * 2, 2 * 3 * 3)
    assert idx[0].tolist()[:3] == [0, 1, 2] and idx[0, 9] == 16  # (c=1, u=0, v=0) of the first field
    assert idx[3, 0] == 1 * 4 + 1  # field at (y=1, x=1)
    assert torch.equal(idx[:4], idx[4:8])  # every output map has the same fields
    win = pool_index((2, 4, 4), 2)
    assert win.shape == (2 * 2 * 2, 4) and win[1].tolist() == [2, 3, 6, 7]
    assert sorted(win.flatten().tolist()) == list(range(32))  # windows tile the input


def test_layers_shapes_and_errors():
    conv = SpikingConv2d(2, 3, 3, threshold=1.0)
    assert conv.weight.abs().max() <= 0.5  # U(−0.5, 0.5), docs/algorithm.md §7
    assert conv(torch.zeros(1, 20, 2, 5, 5)).shape == (1, 20, 3, 3, 3)
    with pytest.raises(ValueError, match="expects input spikes"):
        conv(torch.zeros(1, 20, 3, 5, 5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv(torch.zeros(1, 20, 2, 2, 2))
    pool = SpikingPool2d(2, threshold=2.0)
    assert pool(torch.zeros(1, 20, 3, 4, 4)).shape == (1, 20, 3, 2, 2)
    with pytest.raises(ValueError, match="not divisible"):
        pool(torch.zeros(1, 20, 3, 5, 4))
    with pytest.raises(ValueError, match="pool_error_scale"):
        HM2BPRule(pool_error_scale="mean")


def test_first_conv_layer_propagates_nothing(rng):
    """docs/algorithm.md §6: conv1's input is the data layer; no error is formed for it."""
    pre, weight = _conv_inputs(rng, steps=60)
    post = hm2bp_conv2d(pre.detach(), weight, _conv_setup(HM2BPRule()))
    post.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
