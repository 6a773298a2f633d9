"""Static-image splits and their spike encoding: pixels in, ``(B, T, N)`` Bernoulli trains out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hm2bp.augment import Augmentation
from hm2bp.encoding import bernoulli_encode
from hm2bp.neuron import mark_spikes


@dataclass(frozen=True)
class Encoder:
    """Bernoulli encoding settings of a run (see :func:`hm2bp.encoding.bernoulli_encode`)."""

    steps: int
    seed: int = 0
    fixed: bool = True

    def __call__(self, pixels: torch.Tensor, keys: torch.Tensor, epoch: int) -> torch.Tensor:
        return bernoulli_encode(pixels, self.steps, seed=self.seed, indices=keys, epoch=epoch, fixed=self.fixed)


# Fixed trains of a split are kept as bytes when they fit: digits' 1,437 training images take 37 MB at T = 400.
TRAIN_CACHE_BYTES = 1 << 30


class StaticSplit:
    """One split of a static-image dataset and its spike encoding.

    Args:
        pixels: ``(n, N)`` intensities in [0, 255]; labels: ``(n,)`` class indices.
        encoder: how images become spikes.
        key_offset: added to sample indices to form encoder keys, so different splits draw different trains.
        cache_bytes: with ``encoder.fixed``, trains are drawn once and kept (as bool) when they fit in this budget;
            otherwise they are re-derived from the hash for every batch (same values either way).
        augment: training-time augmentation of the images (the CNN's, docs/algorithm.md §2), with ``image_shape``
            ``(C, H, W)``: every use of a sample augments it afresh and encodes the result with fresh trains (keyed
            by the epoch).
    """

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, encoder: Encoder, key_offset: int = 0,
                 cache_bytes: int = TRAIN_CACHE_BYTES, augment: Augmentation | None = None,
                 image_shape: tuple[int, ...] | None = None) -> None:
        if pixels.dim() != 2 or labels.shape != pixels.shape[:1]:
            raise ValueError(f"need pixels (n, N) and labels (n,), got {tuple(pixels.shape)}, {tuple(labels.shape)}")
        if augment is not None and (image_shape is None or len(image_shape) != 3
                                    or math.prod(image_shape) != pixels.shape[1]):
            raise ValueError(f"augmentation needs image_shape (C, H, W) matching {pixels.shape[1]} inputs, "
                             f"got {image_shape}")
        self.pixels, self.labels, self.encoder, self.key_offset = pixels, labels, encoder, key_offset
        self.augment, self.image_shape = augment, image_shape
        self._trains: torch.Tensor | None = None
        n, n_in = pixels.shape
        if augment is None and encoder.fixed and n * encoder.steps * n_in <= cache_bytes:
            self._trains = torch.empty(encoder.steps, n, n_in, dtype=torch.bool)
            for lo in range(0, n, 256):
                idx = torch.arange(lo, min(n, lo + 256))
                self._trains[:, lo:lo + len(idx)] = encoder(pixels[idx], idx + key_offset, 0).transpose(0, 1) > 0

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def spikes(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """``(B, T, N)`` spike trains (a view of time-major storage) of the samples ``idx``."""
        if self._trains is not None:
            return mark_spikes(self._trains[:, idx].to(torch.get_default_dtype()).transpose(0, 1))
        return self.encode(self.pixels[idx], idx, epoch)

    def encode(self, pixels: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """The trains of :meth:`spikes` from the samples' ``pixels (B, N)`` on any device (no cache): what a GPU
        run computes on the device from the pixels the data loader sends (same spikes as on the CPU)."""
        keys = idx + self.key_offset
        if self.augment is not None:
            assert self.image_shape is not None
            images = self.augment(pixels.view(len(idx), *self.image_shape), keys, epoch)
            fresh = Encoder(self.encoder.steps, self.encoder.seed, fixed=False)
            return fresh(images.reshape(len(idx), -1).clamp(0, 255), keys, epoch)
        return self.encoder(pixels, keys, epoch)
