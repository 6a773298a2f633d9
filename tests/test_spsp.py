import numpy as np
import pytest
import torch

from conftest import refractory_trains
from hm2bp.neuron import LIFParams, lif_scan
from hm2bp.reference import spsp_reference
from hm2bp.spsp import (
    AnticausalSPSP,
    CausalSPSP,
    PSPKernel,
    cached_spike_index,
    indexed_matmul,
    post_events,
    spike_index,
    spike_sums,
    spsp,
)

CASES = [("original", 4.0), ("original", None), ("exact", None)]


def _reference(pre, post, convention, window_taus):
    kernel = PSPKernel.for_layer(64.0, 8.0, 2, convention, window_taus)
    return np.stack([spsp_reference(pre[b].numpy(), post[b].numpy(), kernel) for b in range(pre.shape[0])])


def _special_trains(rng, steps):
    pre = (torch.from_numpy(rng.random((3, steps, 6))) < 0.08).double()
    post = refractory_trains(rng, 3, steps, 5, 0.03)
    pre[0, :, 0] = 0  # silent pre
    post[1, :, 1] = 0  # silent post
    pre[2, 0, 2] = 1  # a pre spike at t = 0 (the original kernel ignores it)
    # refractory-adjacent: pre spikes 1, 2 and 3 steps before a post spike, and at the same step
    post[2, :, 3] = 0
    post[2, 40, 3] = 1
    pre[2, 37:41, 4] = 1
    if steps > 300:  # window edge: pre exactly 256 and 257 steps before a post spike, long post gaps
        post[0, :, 2] = 0
        post[0, [5, 300, 560], 2] = 1
        pre[0, :, 3] = 0
        pre[0, [44, 303, 304], 3] = 1
    return pre, post


@pytest.mark.parametrize("convention, window", CASES)
@pytest.mark.parametrize("steps", [80, 600])
def test_closed_form_equals_literal_reference(convention, window, steps, rng):
    pre, post = _special_trains(rng, steps)
    e = spsp(pre, post, convention=convention, window_taus=window)
    ref = _reference(pre, post, convention, window)
    np.testing.assert_allclose(e.numpy(), ref, rtol=1e-5, atol=1e-9)
    assert np.abs(ref).max() > 1.0
    # float32 on the same trains stays within 1e-5 relative of the float64 reference (absolute floor 1e-4)
    e32 = spsp(pre.float(), post.float(), convention=convention, window_taus=window)
    np.testing.assert_allclose(e32.double().numpy(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("convention, window", CASES)
@pytest.mark.parametrize("steps", [80, 600])
@pytest.mark.parametrize("form", [CausalSPSP, AnticausalSPSP])
def test_sparse_forms_equal_literal_reference(form, convention, window, steps, rng):
    """The two sparse-dense products of the pairs strategy (tracing the pre or the post side) give every S-PSP, for
    the whole batch and for any range of samples."""
    pre, post = _special_trains(rng, steps)
    kernel = PSPKernel.for_layer(64.0, 8.0, 2, convention, window)
    pre_tm, post_tm = pre.transpose(0, 1).contiguous(), post.transpose(0, 1).contiguous()
    ref = _reference(pre, post, convention, window)
    with torch.sparse.check_sparse_tensor_invariants():  # every CSR matrix is valid (sorted, distinct columns)
        e_of = form(post_events(post_tm, kernel), pre_tm, kernel)
        np.testing.assert_allclose(e_of(0, 3).numpy(), ref, rtol=1e-9, atol=1e-12)
        for b0, b1 in ((0, 1), (1, 3), (2, 3)):
            np.testing.assert_allclose(e_of(b0, b1).numpy(), ref[b0:b1], rtol=1e-9, atol=1e-12)


def test_spike_index_orders_sums_and_cache(rng):
    x = (torch.from_numpy(rng.random((30, 3, 7))) < 0.2).double()
    x[4, 1, 2] = 0.5  # a graded entry keeps its value
    index = spike_index(x)
    t, b, n = x.nonzero().unbind(1)
    assert torch.equal(index.t_time, t) and torch.equal(index.b_time, b) and torch.equal(index.n_time, n)
    assert torch.equal(index.v_time, x[t, b, n])
    key = (index.b * 7 + index.n) * 30 + index.t
    assert torch.equal(key, key.sort().values)  # grouped by (sample, neuron), in time order
    assert torch.equal(spike_sums(x), x.sum(0))
    w = torch.from_numpy(rng.normal(size=(7, 4)))
    with torch.sparse.check_sparse_tensor_invariants():
        np.testing.assert_allclose(indexed_matmul(index, w).numpy(), (x.view(-1, 7) @ w).numpy(), rtol=1e-12)
    assert spike_index(x) is index  # cached
    assert spike_index(x.transpose(0, 1).transpose(0, 1)) is index  # another view of the same memory
    x[0, 0, 0] = 1 - x[0, 0, 0]  # an in-place write invalidates it
    assert cached_spike_index(x) is None
    assert torch.equal(spike_sums(x), x.sum(0))
    assert spike_index(x).t_time.numel() == x.count_nonzero()
    with torch.inference_mode():
        y = torch.ones(3, 1, 2)
        assert spike_index(y).t.numel() == 6 and cached_spike_index(y) is None  # inference tensors: not cached


@pytest.mark.parametrize("convention, window", CASES)
def test_silent_trains_give_zero(convention, window, rng):
    pre, post = _special_trains(rng, 120)
    e = spsp(pre, post, convention=convention, window_taus=window)
    assert torch.all(e[0, :, 0] == 0)  # silent pre
    assert torch.all(e[1, 1, :] == 0)  # silent post
    assert torch.all(e >= -1e-12)  # the S-PSP is a sum of non-negative kernels


def test_window_changes_little_but_something(rng):
    pre = (torch.from_numpy(rng.random((2, 700, 8))) < 0.1).double()
    post = refractory_trains(rng, 2, 700, 4, 0.02)
    with_window = spsp(pre, post, window_taus=4.0)
    without = spsp(pre, post, window_taus=None)
    rel = ((without - with_window).abs().sum() / without.abs().sum()).item()
    assert 0 < rel < 0.02  # docs/algorithm.md §10: the window changes e by well under 1 %


def _membrane_at_spikes(currents: np.ndarray, params: LIFParams) -> np.ndarray:
    """Σ over each neuron's spikes of its membrane value at the firing step (before the reset)."""
    T, N = currents.shape
    total = np.zeros(N)
    for i in range(N):
        v = c = 0.0
        ref = 0
        for t in range(1, T):
            c = c * (1 - 1 / params.tau_s) + currents[t - 1, i]
            v = v * (1 - 1 / params.tau_m) + c / params.tau_s
            if ref > 0:
                v, ref = 0.0, ref - 1
            if v > params.threshold - params.threshold_eps:
                total[i] += v
                v, ref = 0.0, params.t_ref
    return total


def test_exact_convention_reproduces_the_membrane(rng):
    # docs/algorithm.md §13: with the exact convention, Σ_j w_ij e_ij equals the sum of the membrane at i's spike times.
    pre = (torch.from_numpy(rng.random((2, 300, 20))) < 0.1).double()
    w = torch.from_numpy(rng.uniform(-0.3, 1.0, size=(6, 20)))
    params = LIFParams(threshold=2.0)
    currents = pre @ w.t()
    post = lif_scan(currents, params)
    assert post.sum() > 20
    e = spsp(pre, post, convention="exact")
    for b in range(2):
        np.testing.assert_allclose((e[b] * w).sum(1).numpy(), _membrane_at_spikes(currents[b].numpy(), params),
                                   rtol=1e-10)


def test_bad_inputs():
    good = torch.zeros(1, 10, 3)
    with pytest.raises(ValueError, match="3 dims"):
        spsp(torch.zeros(10, 3), good)
    with pytest.raises(ValueError, match="0/1"):
        spsp(good + 0.5, good)
    with pytest.raises(ValueError, match="share"):
        spsp(torch.zeros(1, 11, 3), good)
    with pytest.raises(ValueError, match="convention"):
        spsp(good, good, convention="exactly")
    close = torch.zeros(1, 10, 1)
    close[0, [3, 4], 0] = 1
    with pytest.raises(ValueError, match="refractory"):
        spsp(good, close)
    with pytest.raises(TypeError, match="bool or floating"):
        spsp(good.long(), good)


def test_buffer_pool_reuses_a_buffer_whose_index_is_cached():
    """The cache's hold on a raster does not keep a layer's pool from reusing it, and reuse forgets the index."""
    from hm2bp.workspace import BufferPool, derived

    pool = BufferPool(2)
    like = torch.zeros(1)
    buf = pool.get((20, 2, 3), like)
    buf.zero_()
    buf[5, 1, 2] = 1
    index = spike_index(buf)
    assert derived.holds(buf) == 1 and cached_spike_index(buf) is index
    del buf
    again = pool.get((20, 2, 3), like)  # only the cache still held it: reused, and the entry is dropped
    assert derived.holds(again) == 0 and cached_spike_index(again) is None
    other = pool.get((20, 2, 3), like)  # `again` is alive: a different buffer
    assert other.data_ptr() != again.data_ptr()
