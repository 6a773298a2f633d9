"""The Triton path's conv and pooling backward (anticausal traces + convolutions, :func:`hm2bp.ops.conv_backward` /
:func:`hm2bp.ops.pool_backward`) against the pure-PyTorch path's local S-PSPs, pair by pair, under every rule flag.

tests/test_conv.py checks both paths against the literal per-pair references through autograd; here the ops are
called directly on one pair of rasters (the same spikes for both paths), so every flag combination is cheap."""

import itertools

import numpy as np
import pytest
import torch

from hm2bp import ops
from hm2bp.conv import hm2bp_conv2d, hm2bp_pool2d
from hm2bp.functional import HM2BPRule, LayerSetup
from hm2bp.layers import CONV_THRESHOLD_EPS
from hm2bp.neuron import LIFParams
from hm2bp.reference import hm2bp_conv_reference

FLAGS = [dict(effect_ratio=er, side_effect=se, **({} if fallbacks else dict(
    silent_post_psp=0.0, silent_post_rho=0.0, silent_effect_ratio=0.0)))
    for er, se, fallbacks in itertools.product((True, False), repeat=3)]
FLAG_IDS = [f"er{int(er)}-se{int(se)}-fb{int(fb)}" for er, se, fb in itertools.product((1, 0), repeat=3)]


def _conv_case(rng, convention: str, steps: int = 100):
    """2×6×6 input maps → 3 maps, k 3 (float64): rasters with silent inputs, a silent output map and active pairs."""
    pre = (torch.from_numpy(rng.random((2, steps, 2, 6, 6))) < 0.15).double()
    pre[:, 0] = 0
    pre[0, :, 1, :2, :] = 0  # silent inputs
    weight = torch.from_numpy(rng.uniform(-0.5, 1.2, size=(3, 2, 3, 3)))
    weight[-1] = -weight[-1].abs()  # a silent output map
    setup = LayerSetup(lif=LIFParams(1.2, threshold_eps=CONV_THRESHOLD_EPS), rule=HM2BPRule(convention=convention))
    with torch.no_grad():
        post = hm2bp_conv2d(pre, weight, setup)  # (B, T, C', H', W')
    counts, pre_counts = post.sum(1), pre.sum(1)
    assert (counts == 0).any() and (counts > 0).any()  # silent and firing posts
    assert (pre_counts == 0).any() and (pre_counts > 1).any()  # silent pres, and o_pre > 1 (the division shows)
    g = torch.from_numpy(rng.normal(size=(2, 3, 16)))
    return pre.transpose(0, 1).contiguous(), post.transpose(0, 1).reshape(steps, 2, -1).contiguous(), weight, g


def _conv_grads(backend_name, ops_backend, pre, post, weight, g, rule, need_below=True):
    ops_backend(backend_name)
    kernel = LayerSetup(LIFParams(1.2), rule).kernel
    return ops.conv_backward(pre, post, weight, g, rule, kernel, 1.2, need_below)


@pytest.mark.parametrize("convention", ["original", "exact"])
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
def test_conv_gpu_form_equals_pairs(convention, flags, rng, ops_backend):
    pre, post, weight, g = _conv_case(rng, convention)
    rule = HM2BPRule(convention=convention, **flags)
    dw_t, below_t = _conv_grads("triton", ops_backend, pre, post, weight, g, rule)
    dw_p, below_p = _conv_grads("torch", ops_backend, pre, post, weight, g, rule)
    assert below_t.shape == below_p.shape == (2, 2, 6, 6)
    torch.testing.assert_close(dw_t, dw_p, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(below_t, below_p, rtol=1e-9, atol=1e-12)
    assert dw_t.abs().max() > 0 and below_t.abs().max() > 0


@pytest.mark.parametrize("flags", [FLAGS[0], FLAGS[-1]], ids=[FLAG_IDS[0], FLAG_IDS[-1]])
def test_conv_gpu_form_equals_reference(flags, rng, ops_backend):
    """The Triton form against the literal loops of :func:`hm2bp.reference.hm2bp_conv_reference`."""
    pre, post, weight, g = _conv_case(rng, "exact", steps=100)
    rule = HM2BPRule(convention="exact", **flags)
    dw, below = _conv_grads("triton", ops_backend, pre, post, weight, g, rule)
    setup = LayerSetup(lif=LIFParams(1.2), rule=rule)
    T, B = pre.shape[:2]
    dw_ref = np.zeros(tuple(weight.shape))
    for b in range(B):
        d, below_ref = hm2bp_conv_reference(pre[:, b].numpy(), post[:, b].reshape(T, 3, 4, 4).numpy(),
                                            weight.numpy(), g[b].reshape(3, 4, 4).numpy() * 1.2, setup)
        dw_ref += d
        np.testing.assert_allclose(below[b].numpy(), below_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dw.numpy(), dw_ref, rtol=1e-9, atol=1e-9)


def test_conv_gpu_form_first_layer_forms_no_error(rng, ops_backend):
    pre, post, weight, g = _conv_case(rng, "original")
    rule = HM2BPRule()
    dw, below = _conv_grads("triton", ops_backend, pre, post, weight, g, rule, need_below=False)
    assert below is None
    torch.testing.assert_close(dw, _conv_grads("torch", ops_backend, pre, post, weight, g, rule)[0],
                               rtol=1e-9, atol=1e-12)


def _pool_case(rng, steps=120):
    pre = (torch.from_numpy(rng.random((2, steps, 2, 4, 4))) < 0.2).double()
    pre[:, 0] = 0
    pre[0, :, 0, :2, :2] = 0  # a window with no input: its pooling neuron is silent
    pre[1, :, 1, 2, 3] = 0  # one silent input in an active window
    with torch.no_grad():
        post = hm2bp_pool2d(pre, 2, LayerSetup(lif=LIFParams(2.0), rule=HM2BPRule()))
    assert (post.sum(1) == 0).any() and (post.sum(1) > 0).any()
    g = torch.from_numpy(rng.normal(size=(2, 8)))
    return pre.transpose(0, 1).contiguous(), post.transpose(0, 1).reshape(steps, 2, -1).contiguous(), g


@pytest.mark.parametrize("convention", ["original", "exact"])
@pytest.mark.parametrize("flags", [f for f in FLAGS if f["side_effect"]], ids=[i for i in FLAG_IDS if "se1" in i])
def test_pool_gpu_form_equals_pairs(convention, flags, rng, ops_backend):
    pre, post, g = _pool_case(rng)
    rule = HM2BPRule(convention=convention, **flags)
    kernel = LayerSetup(LIFParams(2.0), rule).kernel
    below = {}
    for name in ("triton", "torch"):
        ops_backend(name)
        below[name] = ops.pool_backward(pre, post, g, 2, rule, kernel)
    assert below["triton"].shape == (2, 2, 4, 4)
    torch.testing.assert_close(below["triton"], below["torch"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("convention", ["original", "exact"])
def test_conv_gpu_form_reads_forward_currents(convention, rng, ops_backend):
    """Given the forward's ``currents = (x ⊛ W)/τs``, the side effect reads them (×τs) instead of convolving again."""
    pre, post, weight, g = _conv_case(rng, convention)
    rule = HM2BPRule(convention=convention)
    tau_s = LIFParams(1.2).tau_s
    T, B, C, H, W = pre.shape
    currents = torch.nn.functional.conv2d(pre.view(T * B, C, H, W), weight / tau_s).view(T, B, -1)
    kernel = LayerSetup(LIFParams(1.2), rule).kernel
    ops_backend("triton")
    dw, below = ops.conv_backward(pre, post, weight, g, rule, kernel, 1.2, True, None, currents, tau_s)
    dw_p, below_p = _conv_grads("torch", ops_backend, pre, post, weight, g, rule)
    torch.testing.assert_close(dw, dw_p, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(below, below_p, rtol=1e-9, atol=1e-12)
