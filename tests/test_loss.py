import math

import pytest
import torch

from hm2bp.loss import BoostingWeights, SpikeCountLoss, count_targets, predict, silent_outputs, weight_regularizer


def test_loss_gradient_is_the_authors_output_error():
    counts = torch.tensor([[40.0, 9.0, 5.0], [0.0, 2.0, 12.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    weights = torch.tensor([1.0, 2.0])
    SpikeCountLoss()(counts, labels, weights).backward()
    # δ = a·(o − y)·1[|o − y| > 5] / B with y⁺ = 35, y⁻ = 5 (docs/algorithm.md §3)
    expected = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0 * (12 - 35)]]) / 2
    expected[0, 0] = 0.0  # |40 − 35| = 5 is inside the dead zone
    assert torch.equal(counts.grad, expected)


def test_targets():
    y = count_targets(torch.tensor([1]), 3)
    assert y.tolist() == [[5.0, 35.0, 5.0]]


def test_prediction_ties_and_silence_go_to_lowest_index():
    counts = torch.tensor([[0.0, 0.0, 0.0], [3.0, 7.0, 7.0], [1.0, 0.0, 2.0]])
    assert predict(counts).tolist() == [0, 1, 2]
    assert silent_outputs(counts) == 1


def test_boosting_update():
    boost = BoostingWeights(4)
    labels = torch.tensor([0, 0, 0, 1])
    boost.record(torch.arange(4), labels, torch.tensor([True, False, True, True]))
    boost.end_epoch()
    eps = 1 / 3  # class 0: one of three (unit) weights misclassified
    assert boost.weights.tolist() == pytest.approx([1.0, math.exp(eps / 20), 1.0, 1.0])
    state = boost.state_dict()
    other = BoostingWeights(4)
    other.load_state_dict(state)
    assert torch.equal(other.weights, boost.weights)
    with pytest.raises(ValueError, match="samples"):
        BoostingWeights(3).load_state_dict(state)


def test_regularizer_gradient_matches_authors_formula():
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    lam, beta, limit = 10.0, 0.04, 8.0
    weight_regularizer(w, lam, beta, limit).backward()
    q = ((w.detach() / limit) ** 2).mean(1, keepdim=True)
    expected = lam * beta * (w.detach() / limit) * torch.exp(beta * (q - 1))  # docs/algorithm.md §7
    torch.testing.assert_close(w.grad, expected)


def test_bad_loss_settings():
    with pytest.raises(ValueError, match=">= 0"):
        SpikeCountLoss(margin=-1)
    with pytest.raises(ValueError, match="limit"):
        weight_regularizer(torch.zeros(2, 2), limit=0)
