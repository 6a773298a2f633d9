import torch

from hm2bp import HM2BPRule, SpikeCountLoss, SpikingMLP
from hm2bp.data.digits import load_digits_split
from hm2bp.data.static import Encoder, StaticSplit
from hm2bp.loss import Regularizer
from hm2bp.train import fit, inverse_sqrt_lr
from hm2bp.workspace import BufferPool


def _synthetic(n: int = 96, n_in: int = 20, classes: int = 3, seed: int = 0):
    """Three classes, each lighting up its own third of the inputs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    pixels = torch.rand(n, n_in, generator=g) * 40
    block = n_in // classes
    for c in range(classes):
        pixels[labels == c, c * block:(c + 1) * block] += 200
    return pixels.clamp(max=255), labels


def test_two_layer_count_loss_falls():
    torch.manual_seed(0)
    pixels, labels = _synthetic()
    split = StaticSplit(pixels, labels, Encoder(steps=120, seed=0))
    net = SpikingMLP([20, 40, 3], [4.0, 4.0], target_count=10)
    loss_fn = SpikeCountLoss(desired=10, undesired=1, margin=1)
    history = fit(net, split, split, epochs=6, batch_size=16, lr=1e-2, loss_fn=loss_fn)
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < 0.5 * losses[0]
    assert history[-1]["train_acc"] > 0.9


def test_same_seed_same_metrics():
    pixels, labels = _synthetic(n=48)

    def once():
        torch.manual_seed(3)
        split = StaticSplit(pixels, labels, Encoder(steps=80, seed=3))
        net = SpikingMLP([20, 30, 3], [4.0, 4.0], target_count=10)
        history = fit(net, split, split, epochs=2, batch_size=16, lr=1e-2, seed=3, regularizer=Regularizer(),
                      loss_fn=SpikeCountLoss(10, 1, 1))
        return [(h["train_loss"], h["test_acc"]) for h in history], [p.clone() for p in net.parameters()]

    (h1, w1), (h2, w2) = once(), once()
    assert h1 == h2
    assert all(torch.equal(a, b) for a, b in zip(w1, w2, strict=True))


def test_digits_short_run_learns():
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    assert x_tr.shape == (1437, 64) and x_te.shape == (360, 64)
    assert float(x_tr.max()) == 255.0
    enc = Encoder(steps=100, seed=0)
    net = SpikingMLP([64, 100, 10], [5.0, 4.0], rule=HM2BPRule(), target_count=10)
    history = fit(net, StaticSplit(x_tr[:400], y_tr[:400], enc), StaticSplit(x_te, y_te, enc, key_offset=5000),
                  epochs=2, batch_size=50, lr=1e-2, loss_fn=SpikeCountLoss(10, 1, 1))
    assert history[-1]["test_acc"] > 0.5  # chance is 0.1


def test_schedule():
    assert inverse_sqrt_lr(0) == inverse_sqrt_lr(1) == 1.0
    assert abs(inverse_sqrt_lr(199) - 1 / 199**0.5) < 1e-12


def test_buffer_pool_never_aliases_live_tensors():
    pool = BufferPool(2)
    like = torch.zeros(1)
    a = pool.get((3, 4), like)
    a.fill_(1)
    b = pool.get((3, 4), like)
    b.fill_(2)
    assert torch.all(a == 1)  # a is alive: b must be another buffer
    view = b[1:]
    del b
    c = pool.get((3, 4), like)
    c.fill_(3)
    assert torch.all(view == 2)  # a view keeps the buffer busy
    ptr = c.data_ptr()
    del c
    assert pool.get((3, 4), like).data_ptr() == ptr  # released buffers are reused


def test_layer_and_split_input_errors():
    import pytest

    net = SpikingMLP([8, 6, 3], [1.0, 1.0], target_count=10)
    x = torch.zeros(2, 60, 8)
    with pytest.raises(ValueError, match=r"expected input spikes \(batch, time, 8\), got \(2, 60, 7\)"):
        net.layers[0](torch.zeros(2, 60, 7))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        net(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="T = 20 is too short for target_count 10"):
        net(torch.zeros(2, 20, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one threshold per layer"):
        SpikingMLP([8, 6, 3], [1.0])
    with pytest.raises(ValueError, match=r"need pixels \(n, N\) and labels \(n,\)"):
        StaticSplit(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), Encoder(steps=10))
