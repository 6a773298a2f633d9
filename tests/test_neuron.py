import numpy as np
import pytest
import torch

from hm2bp import ops
from hm2bp.neuron import LIFParams, lif_scan, mark_spikes, scan_inplace
from hm2bp.ops import cpp_kernels
from hm2bp.reference import lif_reference


@pytest.mark.parametrize("t_ref", [0, 1, 2, 3])
@pytest.mark.parametrize("lateral", [0.0, 1.0])
@pytest.mark.parametrize("batch", [1, 5])
def test_scan_equals_scalar_reference(t_ref, lateral, batch, rng):
    currents = torch.from_numpy(rng.uniform(-0.1, 0.5, size=(batch, 150, 7)))
    params = LIFParams(threshold=1.0, t_ref=t_ref)
    out = lif_scan(currents, params, lateral)
    assert out.sum() > 0
    for b in range(batch):
        np.testing.assert_array_equal(out[b].numpy(), lif_reference(currents[b].numpy(), params, lateral))


def test_no_spike_at_t0_and_refractory_gap(rng):
    currents = torch.full((2, 60, 3), 50.0, dtype=torch.float64)  # drive far above threshold
    out = lif_scan(currents, LIFParams(threshold=1.0, t_ref=2))
    assert out[:, 0].sum() == 0
    times = out[0, :, 0].nonzero().squeeze(1)
    assert torch.all(times.diff() == 3)  # fires every t_ref + 1 steps when saturated
    assert out.sum(1).max() <= 60 / 3


def test_threshold_comparison_as_coded():
    # A single input of 8 at t = 0 gives c = 8 and v = c/τs = 1.0 exactly at t = 1.
    currents = torch.zeros(1, 5, 1, dtype=torch.float64)
    currents[0, 0, 0] = 8.0
    fc = lif_scan(currents, LIFParams(threshold=1.0))  # fires at v > ν − 1e-6
    conv = lif_scan(currents, LIFParams(threshold=1.0, threshold_eps=0.0))  # fires only at v > ν
    assert fc[0, 1, 0] == 1
    assert conv[0, 1, 0] == 0


def test_refractory_in_last_steps():
    currents = torch.full((1, 4, 1), 40.0, dtype=torch.float64)
    out = lif_scan(currents, LIFParams(threshold=1.0, t_ref=2))
    assert out[0, :, 0].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_lateral_inhibition_suppresses_rivals():
    currents = torch.zeros(1, 200, 2, dtype=torch.float64)
    currents[0, :, 0] = 0.6
    currents[0, :, 1] = 0.3
    free = lif_scan(currents, LIFParams(threshold=1.0), 0.0)
    inhibited = lif_scan(currents, LIFParams(threshold=1.0), 1.0)
    assert inhibited[0, :, 1].sum() < free[0, :, 1].sum()


def test_discrete_psp_peak():
    # docs/algorithm.md §1: one spike of weight 1 gives a discrete peak of 0.757 at k = 18 steps after arrival.
    currents = torch.zeros(1, 60, 1, dtype=torch.float64)
    currents[0, 0, 0] = 1.0
    v, c, trace = 0.0, 0.0, []
    for t in range(1, 60):
        c = c * (1 - 1 / 8) + currents[0, t - 1, 0].item()
        v = v * (1 - 1 / 64) + c / 8
        trace.append(v)
    k = int(np.argmax(trace)) + 1
    assert k == 18 and abs(max(trace) - 0.757) < 1e-3


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(threshold=1.0, tau_s=1.0), "tau_s"),
    (dict(threshold=1.0, tau_m=4.0, tau_s=8.0), "tau_m"),
    (dict(threshold=1.0, t_ref=-1), "t_ref"),
    (dict(threshold=1.0, threshold_eps=2.0), "threshold_eps"),
])
def test_bad_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LIFParams(**kwargs)


def test_bad_currents():
    with pytest.raises(ValueError, match="batch, time, neurons"):
        lif_scan(torch.zeros(4, 5), LIFParams(threshold=1.0))
    with pytest.raises(TypeError, match="floating"):
        lif_scan(torch.zeros(1, 4, 5, dtype=torch.long), LIFParams(threshold=1.0))
    with pytest.raises(ValueError, match="lateral_w0"):
        lif_scan(torch.zeros(1, 4, 5), LIFParams(threshold=1.0), -1.0)


def test_negative_lateral_inhibition_is_refused_by_every_scan_path():
    params = LIFParams(threshold=1.0)
    for run in (lambda: scan_inplace(torch.zeros(5, 1, 2), params, -1.0),
                lambda: ops.scan(torch.zeros(5, 1, 2), params, -1.0),
                lambda: cpp_kernels.linear_forward(torch.zeros(4, 1, 3), torch.zeros(2, 3), params, -1.0)):
        with pytest.raises(ValueError, match=r"lateral_w0 must be >= 0, got -1\.0"):
            run()


def test_marked_spikes_skip_the_value_check_until_written():
    from hm2bp.neuron import check_spikes

    x = (torch.rand(2, 30, 5) < 0.3).float()
    bad = x.clone()
    bad[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="only 0/1"):
        check_spikes("x", bad)
    check_spikes("x", mark_spikes(x))
    check_spikes("x", mark_spikes(bad.clone()))  # a marked tensor is not read: the mark is a promise
    x[0, 0, 0] = 0.5  # a write drops the mark: the values are read again
    with pytest.raises(ValueError, match="only 0/1"):
        check_spikes("x", x)


def test_encoded_trains_are_marked_without_being_kept_alive():
    import gc
    import weakref

    from hm2bp.encoding import bernoulli_encode
    from hm2bp.neuron import marked

    spikes = bernoulli_encode(torch.rand(3, 8) * 255, 20, seed=0, indices=torch.arange(3))
    assert marked(spikes) and not marked(spikes.clone())
    spikes[0, 5, 0] = 0.5
    assert not marked(spikes)
    other = mark_spikes(torch.zeros(4, 5, 6))
    alive = weakref.ref(other)
    del other
    gc.collect()
    assert alive() is None  # the mark holds no reference
