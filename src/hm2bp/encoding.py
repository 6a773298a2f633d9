"""Input spike encoders (docs/algorithm.md §2).

The Bernoulli ("Poisson") rate code draws its uniforms from a counter-based hash of
``(seed, sample index, epoch, time, pixel)``, so a sample's train is a pure function of those keys: the authors'
"draw once at load time and reuse every epoch" behaviour (``fixed=True``) costs no memory even for MNIST
(60k × 400 × 784 spikes would be 19 GB as bytes), a redraw per epoch (``fixed=False``) is one flag away, and both are
identical on CPU and GPU and independent of batch size and order.
"""

from __future__ import annotations

import torch

from hm2bp import backend, ops
from hm2bp.neuron import mark_spikes
from hm2bp.ops import torch_kernels
from hm2bp.ops.torch_kernels import MASK32, hash32
from hm2bp.workspace import BufferPool

# Provenance: docs/algorithm.md §2 [CODE `readData/readMnistData.cpp:168-223`]: q = pixel / (5.5 · 255), at most
# 0.1818 per step.
PIXEL_MAX = 255.0
RATE_DIVISOR = 5.5
# The kernels' output rasters, reused once nothing refers to them any more: a fresh MNIST-batch raster pays more in
# page faults than the encoding itself costs (BENCHMARKS.md).
_rasters = BufferPool(2)


def _hash32_int(x: int) -> int:
    """:func:`hash32` of one Python int in [0, 2³²)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def key_salt(seed: int, epoch: int) -> int:
    """``hash((seed·0x9E3779B1 + epoch·0x85EBCA77) mod 2³²)``: the (seed, epoch) part of every sample's key, hashed
    on the host as a Python int, so no host tensor is copied to the device per batch."""
    return _hash32_int((seed * 0x9E3779B1 + epoch * 0x85EBCA77) & MASK32)


def sample_keys(seed: int, indices: torch.Tensor, epoch: int) -> torch.Tensor:
    """Per-sample hash keys ``(B,)`` (int64 in [0, 2³²)): the uniform of (t, input) is ``hash(key + t·N + input)``,
    ``key = hash(hash(index ⊕ key_salt(seed, epoch)))``."""
    return torch_kernels.sample_keys(indices, key_salt(seed, epoch))


def hashed_uniform(seed: int, indices: torch.Tensor, epoch: int, steps: int, n_inputs: int) -> torch.Tensor:
    """Uniforms in [0, 1), time-major ``(steps, B, n_inputs)``, a pure function of (seed, index, epoch, t, input).

    This is the definition; :func:`bernoulli_encode` compares the same hashes with integer thresholds instead.
    """
    keys = sample_keys(seed, indices, epoch)
    cell = torch.arange(steps * n_inputs, dtype=torch.int64, device=indices.device).view(steps, 1, n_inputs)
    h = hash32((cell + keys.view(1, -1, 1)) & MASK32)
    return h.to(torch.float64).div_(2.0**32)


def bernoulli_encode(pixels: torch.Tensor, steps: int, *, seed: int, indices: torch.Tensor, epoch: int = 0,
                     fixed: bool = True, pixel_max: float = PIXEL_MAX, rate_divisor: float = RATE_DIVISOR,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """Bernoulli rate code: spike at step ``t ≥ 1`` with probability ``q = p/(rate_divisor·pixel_max)``
    (docs/algorithm.md §2).

    Args:
        pixels: ``(B, N)`` intensities in ``[0, pixel_max]``.
        steps: T, number of time steps (``t = 0`` never spikes).
        seed: encoder seed; indices: ``(B,)`` dataset indices of the samples.
        epoch: current epoch, used only when ``fixed`` is False (fresh trains each epoch).
        fixed: authors' behaviour: one realisation per sample, reused in every epoch.

    Returns:
        ``(B, T, N)`` 0/1 spikes.
    """
    if pixels.dim() != 2:
        raise ValueError(f"pixels must be (batch, inputs), got shape {tuple(pixels.shape)}")
    if steps <= 0:
        raise ValueError(f"steps (T) must be > 0, got {steps}")
    if not (pixel_max > 0 and rate_divisor >= 1):
        raise ValueError(f"need pixel_max > 0 and rate_divisor >= 1, got {pixel_max}, {rate_divisor}")
    # the range check reads the pixels on the host: not on the Triton path (backend.host_reads_allowed)
    if backend.host_reads_allowed(pixels) and pixels.numel() and (float(pixels.min()) < 0
                                                                  or float(pixels.max()) > pixel_max):
        raise ValueError(f"pixels must lie in [0, {pixel_max}], got [{float(pixels.min())}, {float(pixels.max())}]")
    q = pixels.to(torch.float64) / (rate_divisor * pixel_max)
    salt = key_salt(seed, 0 if fixed else epoch)
    spikes = ops.bernoulli_spikes(indices.to(pixels.device), salt, q, steps, dtype or torch.get_default_dtype(),
                                  _rasters)
    return mark_spikes(spikes.transpose(0, 1))  # (B, T, N) view of time-major storage: the layers use it as it is
