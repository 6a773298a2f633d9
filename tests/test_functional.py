import dataclasses

import numpy as np
import pytest
import torch

from conftest import refractory_trains
from hm2bp.functional import HM2BPRule, LayerSetup, hm2bp_linear, lateral_factor, patch_silent_target
from hm2bp.neuron import LIFParams
from hm2bp.ops import torch_kernels
from hm2bp.ops.torch_kernels import choose_strategy
from hm2bp.reference import hm2bp_layer_reference, spsp_reference
from hm2bp.spsp import post_events

FLAG_SETS = {
    "authors": {},
    "no_fallbacks": dict(silent_post_psp=0.0, silent_post_rho=0.0, silent_effect_ratio=0.0,
                         silent_target_patch=False),
    "no_effect_ratio": dict(effect_ratio=False),
    "no_side_effect_no_lateral": dict(side_effect=False, lateral_factor=False),
    "unclamped": dict(lateral_min_denominator=None),
    "no_window": dict(psp_window_taus=None),
}


def _run_layer(rng, rule, output, steps=300, batch=4, n_in=7, n_out=5, lateral=1.0):
    pre = (torch.from_numpy(rng.random((batch, steps, n_in))) < 0.12).double()
    pre[:, 0] = 0
    pre[0, :, 3] = 0  # a silent input
    weight = torch.from_numpy(rng.uniform(-0.6, 1.4, size=(n_out, n_in)))
    weight[-1] = -weight[-1].abs()  # a silent post neuron (and, at the output, a silent target)
    weight.requires_grad_()
    pre.requires_grad_()
    setup = LayerSetup(lif=LIFParams(threshold=1.5), rule=rule, lateral_w0=lateral if output else 0.0,
                       is_output=output, target_count=10)
    labels = torch.tensor([0, n_out - 1, 1, n_out - 1])[:batch] if output else None
    post = hm2bp_linear(pre, weight, setup, labels)
    delta = torch.from_numpy(rng.normal(size=(batch, n_out)))
    (post.sum(1) * delta).sum().backward()
    return pre, weight, post, delta, setup, labels


def _reference(pre, weight, post, delta, setup, labels):
    dw = np.zeros(tuple(weight.shape))
    below = []
    for b in range(pre.shape[0]):
        d, bl = hm2bp_layer_reference(pre[b].detach().numpy(), post[b].detach().numpy(), weight.detach().numpy(),
                                      delta[b].numpy(), setup, None if labels is None else int(labels[b]))
        dw += d
        below.append(bl)
    return dw, np.stack(below)


# the Triton path's wide-layer form (forced on these small layers) with and without the side effect and Λ
WIDE_FLAGS = ("authors", "no_side_effect_no_lateral", "no_effect_ratio")


@pytest.mark.parametrize("path, flags", [(p, f) for p in ("pairs", "dense", "sparse", "auto", "fused", "triton")
                                         for f in FLAG_SETS] + [("triton_wide", f) for f in WIDE_FLAGS])
@pytest.mark.parametrize("convention", ["original", "exact"])
@pytest.mark.parametrize("output", [True, False])
def test_batched_rule_equals_per_sample_reference(path, convention, output, flags, rng, ops_backend, contraction,
                                                   monkeypatch):
    """Every contraction strategy of the pure-PyTorch path, the fused C++ layer, and the Triton path (its kernels
    interpreted on CPU tensors: scan, traces, event matrix; narrow layers through explicit S-PSPs, and with
    ``triton_wide`` through the wide layers' form) against the literal reference."""
    ops_backend({"fused": "compiled", "triton": "triton", "triton_wide": "triton"}.get(path, "torch"))
    if path == "triton_wide":
        from hm2bp.ops import triton_path

        monkeypatch.setattr(triton_path, "EXPLICIT_MAX_POST", 0)
    contraction("auto" if path in ("fused", "triton", "triton_wide") else path)
    rule = HM2BPRule(convention=convention, **FLAG_SETS[flags])
    steps = 300 if flags == "authors" else 100  # T > 256 exercises the original convention's window
    pre, weight, post, delta, setup, labels = _run_layer(rng, rule, output, steps=steps)
    counts = post.detach().sum(1)
    assert (counts == 0).any() and (counts > 0).any()  # silent and active neurons both occur
    dw, below = _reference(pre, weight, post, delta, setup, labels)
    np.testing.assert_allclose(weight.grad.numpy(), dw, rtol=1e-9, atol=1e-9)
    # the error to the layer below is the same at every time step
    for t in (0, steps // 2, steps - 1):
        np.testing.assert_allclose(pre.grad[:, t].numpy(), below, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("output", [True, False])
@pytest.mark.parametrize("n_in, n_out", [(7, 5), (4, 6)])  # pairs traces the post side, then the pre side
def test_pairs_in_sample_chunks_equals_reference(output, n_in, n_out, ops_backend, contraction, monkeypatch):
    """The pairs strategy gives the literal reference's gradients whether e is formed for the whole batch at once or
    one sample at a time."""
    ops_backend("torch")
    contraction("pairs")
    for chunk_bytes in (1 << 30, 1):
        monkeypatch.setattr(torch_kernels, "PAIRS_CHUNK_BYTES", chunk_bytes)
        rng = np.random.default_rng(7)
        pre, weight, post, delta, setup, labels = _run_layer(rng, HM2BPRule(), output, n_in=n_in,
                                                             n_out=n_out)
        dw, below = _reference(pre, weight, post, delta, setup, labels)
        np.testing.assert_allclose(weight.grad.numpy(), dw, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(pre.grad[:, 0].numpy(), below, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "compiled"])
def test_float32_matches_float64(backend, rng, ops_backend):
    ops_backend(backend)
    rule = HM2BPRule()
    pre, weight, post, delta, setup, labels = _run_layer(rng, rule, True)
    setup32 = dataclasses.replace(setup)
    w32 = weight.detach().float().requires_grad_()
    pre32 = pre.detach().float().requires_grad_()
    post32 = hm2bp_linear(pre32, w32, setup32, labels)
    assert torch.equal(post32.double(), post.detach())
    (post32.sum(1) * delta.float()).sum().backward()
    np.testing.assert_allclose(w32.grad.double().numpy(), weight.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_silent_target_patch():
    post = torch.zeros(400, 2, 3)
    post[50, 0, 1] = 1  # sample 0: label 1 is active; sample 1: label 2 is silent
    patched = patch_silent_target(post, torch.tensor([1, 2]), 35)
    assert torch.equal(patched[:, 0], post[:, 0])
    times = patched[:, 1, 2].nonzero().squeeze(1)
    assert times.tolist() == list(range(11, 400, 11))  # docs/algorithm.md §5: t = 11, 22, …, 396 (36 spikes)
    assert post[:, 1, 2].sum() == 0  # the input is not modified


def _lateral_denominators(post: np.ndarray, label: int, setup: LayerSetup) -> np.ndarray:
    """Unclamped ``1 − w0² Σ_{l≠i} d_i d_l r_{l←i} r_{i←l}`` of one sample, literally from the definition."""
    o = post.sum(0)
    e = spsp_reference(post, post, setup.kernel)  # e[l, i]: output i onto output l
    n = post.shape[1]
    d = [(1.0 / setup.lif.threshold) if (o[x] > 0 or x == label) else 0.0 for x in range(n)]

    def r(l_: int, i_: int) -> float:
        return e[l_, i_] / o[i_] if (o[l_] > 0 and o[i_] > 0) else 1.0

    return np.array([1.0 - setup.lateral_w0**2 * sum(d[i] * d[l_] * r(l_, i) * r(i, l_) for l_ in range(n) if l_ != i)
                     for i in range(n)])


@pytest.mark.parametrize("floor", [0.1, 0.5])
def test_lateral_clamp_counts_and_bounds(rng, floor):
    """Λ = 1/max(denominator, floor) against the literal reference, and the clamp count is exactly the number of
    denominators below the floor (some are, some are not)."""
    rule = HM2BPRule(lateral_min_denominator=floor)
    post = torch.cat([refractory_trains(rng, 1, 200, 4, rate) for rate in (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)])
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    setup = LayerSetup(lif=LIFParams(threshold=1.0), rule=rule, lateral_w0=1.0, is_output=True, target_count=10)
    lam = lateral_factor(post.transpose(0, 1), labels, setup)
    denom = np.stack([_lateral_denominators(post[b].numpy(), int(labels[b]), setup) for b in range(6)])
    assert 0 < (denom < floor).sum() < denom.size
    assert setup.stats.lateral_clamped == int((denom < floor).sum())
    torch.testing.assert_close(lam, torch.from_numpy(1.0 / np.maximum(denom, floor)), rtol=1e-9, atol=0)


def test_lateral_clamp_keeps_gradients_finite(rng):
    # Strong lateral coupling and small thresholds drive Λ's denominator below the clamp.
    rule = HM2BPRule(lateral_min_denominator=0.1)
    pre = (torch.from_numpy(rng.random((6, 200, 10))) < 0.3).double()
    weight = torch.full((4, 10), 1.0, dtype=torch.float64, requires_grad=True)
    setup = LayerSetup(lif=LIFParams(threshold=0.3), rule=rule, lateral_w0=3.0, is_output=True, target_count=10)
    post = hm2bp_linear(pre, weight, setup, torch.zeros(6, dtype=torch.long))
    post.sum().backward()
    assert setup.stats.lateral_clamped > 0
    assert torch.isfinite(weight.grad).all()


def test_auto_strategy_prefers_pairs_then_sparse_for_sparse_wide_layers():
    post = torch.zeros(400, 64, 800)
    post[100, :, :5] = 1  # almost silent
    kernel = LayerSetup(LIFParams(1.0), HM2BPRule()).kernel
    assert choose_strategy(post_events(post, kernel), 64) == "pairs"  # e (B, 800, 64) is smaller than the traces
    short = torch.zeros(8, 64, 800)
    short[3, :, :5] = 1
    assert choose_strategy(post_events(short, kernel), 784) == "sparse"  # e would be 40× the traces


def test_input_gradient_not_computed_when_not_needed(rng):
    rule = HM2BPRule()
    pre = (torch.from_numpy(rng.random((2, 100, 5))) < 0.2).double()
    weight = torch.from_numpy(rng.uniform(0, 1, size=(3, 5))).requires_grad_()
    setup = LayerSetup(lif=LIFParams(threshold=1.0), rule=rule)
    hm2bp_linear(pre, weight, setup).sum().backward()
    assert pre.grad is None and weight.grad is not None


@pytest.mark.parametrize("kwargs, message", [
    (dict(convention="paper"), "convention"),
    (dict(silent_post_psp=-1.0), "silent_post_psp"),
    (dict(lateral_min_denominator=0.0), "lateral_min_denominator"),
    (dict(psp_window_taus=0.0), "psp_window_taus"),
])
def test_bad_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HM2BPRule(**kwargs)


@pytest.mark.parametrize("n_in, n_out", [(6, 4), (3, 8)])
@pytest.mark.parametrize("output", [True, False])
def test_empty_batch_gives_zero_gradients(n_in, n_out, output, ops_backend, contraction):
    ops_backend("torch")
    contraction("pairs")
    pre = torch.zeros(0, 50, n_in, requires_grad=True)
    weight = torch.rand(n_out, n_in, requires_grad=True)
    setup = LayerSetup(lif=LIFParams(1.0), rule=HM2BPRule(), is_output=output,
                       lateral_w0=1.0 if output else 0.0)
    labels = torch.zeros(0, dtype=torch.long) if output else None
    hm2bp_linear(pre, weight, setup, labels).sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and pre.grad.shape == pre.shape
