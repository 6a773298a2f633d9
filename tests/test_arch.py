"""The compact architecture notation, SpikingNet, and the CNN's training-time augmentation."""

import pytest
import torch

from hm2bp.arch import ArchError, parse_arch
from hm2bp.augment import Augmentation
from hm2bp.layers import SpikingConv2d, SpikingLinear, SpikingMLP, SpikingNet, SpikingPool2d


def test_paper_cnn_shapes():
    specs = parse_arch("15C5-P2-40C5-P2-300-10", (1, 28, 28))
    assert [s.kind for s in specs] == ["conv", "pool", "conv", "pool", "linear", "linear"]
    assert [s.out_shape for s in specs] == [(15, 24, 24), (15, 12, 12), (40, 8, 8), (40, 4, 4), (300,), (10,)]
    net = SpikingNet("15C5-P2-40C5-P2-300-10", (1, 28, 28), [5, 2, 12, 4, 10, 10])
    kinds = [type(layer) for layer in net.layers]
    assert kinds == [SpikingConv2d, SpikingPool2d, SpikingConv2d, SpikingPool2d, SpikingLinear, SpikingLinear]
    assert net.layers[4].in_features == 640  # 4²×40 (docs/algorithm.md §6)
    assert net.layers[0].weight.abs().max() <= 0.5 < net.layers[4].weight.abs().max()  # U(±.5) conv, U(±1) FC
    assert net.layers[0].setup.lif.threshold_eps == 0 and net.layers[1].setup.lif.threshold_eps > 0
    assert net.layers[-1].setup.is_output and not net.layers[-2].setup.is_output


@pytest.mark.parametrize("arch, shape, message", [
    ("15C5-X2-10", (1, 28, 28), "token 2 \\('X2'\\).*is not a layer"),
    ("15C9-10", (1, 8, 8), "kernel 9×9 does not fit the 8×8 maps"),
    ("4C3-P4-10", (1, 8, 8), "pooling 4×4 does not divide the 6×6 maps"),
    ("100-4C3-10", (1, 8, 8), "needs image-shaped input .*after a fully-connected layer"),
    ("4C3-10", (64,), "needs image-shaped input"),
    ("4C3-P2", (1, 8, 8), "last layer .* must be fully connected"),
    ("", (1, 8, 8), "empty"),
    ("0C3-10", (1, 8, 8), "size of 0"),
])
def test_bad_arch(arch, shape, message):
    with pytest.raises(ArchError, match=message):
        parse_arch(arch, shape)


def test_flattening_is_channel_major():
    """docs/algorithm.md §6: the first FC layer reads pooled maps at c·(H·W) + y·W + x."""
    net = SpikingNet("3C1-4", (1, 2, 2), [0.5, 1.0])
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1))  # only map 0 sees the input
    x = torch.zeros(1, 30, 4)
    x[0, 1:, 3] = 1  # pixel (y=1, x=1) of the 2×2 input
    conv_out = net.forward_all(x)[0][0].sum(0)
    assert conv_out.nonzero().flatten().tolist() == [0 * 4 + 1 * 2 + 1]


def test_mlp_is_the_all_linear_net():
    torch.manual_seed(0)
    mlp = SpikingMLP([10, 7, 3], [1.0, 1.0], target_count=5)
    torch.manual_seed(0)
    net = SpikingNet("7-3", (10,), [1.0, 1.0], target_count=5)
    x = (torch.rand(2, 60, 10) < 0.3).float()
    assert torch.equal(mlp(x), net(x)) and mlp.sizes == [10, 7, 3]


def test_net_trains_through_conv_and_pool():
    torch.manual_seed(0)
    net = SpikingNet("4C3-P2-10", (1, 8, 8), [1.0, 1.0, 2.0], target_count=10)
    x = (torch.rand(3, 120, 64) < 0.2).float()
    out = net(x, torch.tensor([0, 1, 2]))
    (out.sum(1) * torch.randn(3, 10)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="one threshold per layer"):
        SpikingNet("4C3-P2-10", (1, 8, 8), [1.0, 1.0])
    with pytest.raises(ValueError, match="expected input spikes"):
        net(torch.zeros(1, 10, 63))


def test_augmentation_is_seeded_and_keeps_shapes():
    images = torch.rand(5, 1, 28, 28) * 255
    keys = torch.arange(5)
    aug = Augmentation(seed=3)
    a, b = aug(images, keys, epoch=1), aug(images, keys, epoch=1)
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, aug(images, keys, epoch=2))  # fresh draws each epoch
    assert not torch.equal(a, Augmentation(seed=4)(images, keys, epoch=1))
    assert torch.equal(aug(images[2:3], keys[2:3], 1), a[2:3])  # per sample, independent of the batch
    assert a.min() >= 0 and a.max() <= 255  # bilinear: stays in the pixel range


def test_augmentation_geometry():
    off = Augmentation(scale=0.0, rotation=0.0, elastic_alpha=0.0)
    images = torch.rand(2, 1, 9, 9)
    assert torch.equal(off(images, torch.arange(2), 0), images)  # no displacement: identity
    dot = torch.zeros(4, 1, 9, 9)
    dot[:, :, 4, 4] = 1.0
    spin = Augmentation(scale=0.12, rotation=12.0, elastic_alpha=0.0)
    out = spin(dot, torch.arange(4), 0)
    assert torch.allclose(out[:, :, 4, 4], torch.ones(4, 1))  # scaling and rotation fix the centre
    edge = torch.ones(1, 1, 9, 9)
    far = Augmentation(scale=0.0, rotation=0.0, elastic_alpha=200.0)(edge, torch.arange(1), 0)
    assert (far == 0).any()  # sources outside the frame give 0 (docs/algorithm.md §2)
    with pytest.raises(ValueError, match="scale"):
        Augmentation(scale=1.5)


def test_augmented_split_redraws_images_and_trains_per_epoch():
    from hm2bp.data.digits import load_digits_split
    from hm2bp.data.static import Encoder, StaticSplit

    x, y, _, _ = load_digits_split()
    x, y = x[:20], y[:20]
    split = StaticSplit(x, y, Encoder(50, seed=1), augment=Augmentation(seed=1), image_shape=(1, 8, 8))
    idx = torch.tensor([3, 7, 11])
    a = split.spikes(idx, epoch=0)
    assert a.shape == (3, 50, 64) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, split.spikes(idx, epoch=0))  # seeded: a pure function of (seed, epoch, sample)
    assert not torch.equal(a, split.spikes(idx, epoch=1))  # fresh distortion and fresh trains every epoch
    assert torch.equal(split.labels[idx], y[idx])  # labels untouched
    with pytest.raises(ValueError, match="image_shape"):
        StaticSplit(x, y, Encoder(50), augment=Augmentation(), image_shape=(1, 8, 7))
