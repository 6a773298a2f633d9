import pytest
import torch

from hm2bp.encoding import bernoulli_encode
from hm2bp.train import Encoder, StaticSplit


def test_rate_and_no_spike_at_t0():
    pixels = torch.tensor([[0.0, 127.5, 255.0]]).repeat(200, 1)
    spikes = bernoulli_encode(pixels, 400, seed=3, indices=torch.arange(200))
    assert spikes.shape == (200, 400, 3)
    assert spikes[:, 0].sum() == 0
    assert spikes[..., 0].sum() == 0  # zero pixels never spike
    rate = spikes[:, 1:].mean((0, 1))
    assert abs(rate[2].item() - 1 / 5.5) < 0.005  # q = 255/(5.5·255) (spec §2)
    assert abs(rate[1].item() - 0.5 / 5.5) < 0.005


def test_fixed_trains_are_a_function_of_the_keys():
    pixels = torch.full((4, 10), 200.0)
    idx = torch.tensor([7, 3, 9, 1])
    a = bernoulli_encode(pixels, 50, seed=1, indices=idx, epoch=0)
    b = bernoulli_encode(pixels[[1, 0]], 50, seed=1, indices=idx[[1, 0]], epoch=5)  # order, batch, epoch: no effect
    assert torch.equal(a[[1, 0]], b)
    assert not torch.equal(a, bernoulli_encode(pixels, 50, seed=2, indices=idx))
    fresh = bernoulli_encode(pixels, 50, seed=1, indices=idx, epoch=1, fixed=False)
    assert not torch.equal(a, fresh)


def test_cached_split_equals_hashed_split():
    pixels = torch.rand(30, 12) * 255
    labels = torch.randint(0, 3, (30,))
    enc = Encoder(steps=40, seed=4)
    cached = StaticSplit(pixels, labels, enc, key_offset=100)
    uncached = StaticSplit(pixels, labels, enc, key_offset=100, cache_bytes=0)
    idx = torch.tensor([5, 0, 29])
    assert torch.equal(cached.spikes(idx, 3), uncached.spikes(idx, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(pixels=torch.zeros(2, 3, 4)), "batch, inputs"),
    (dict(steps=0), "steps"),
    (dict(pixels=torch.full((2, 3), 300.0)), "lie in"),
])
def test_bad_encoder_input(kwargs, message):
    args = dict(pixels=torch.zeros(2, 3), steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        bernoulli_encode(args["pixels"], args["steps"], seed=0, indices=torch.arange(2))
