"""Training-time image augmentation of the spiking CNN (docs/algorithm.md §2), batched on tensors.

As the authors' ``dataAugmentation/cuTransformation.cu`` does it, each image gets a displacement field made of

* an elastic part (Simard et al. 2003): uniform noise in [−1, 1] per pixel and axis, convolved (zero padding) with
  the authors' 21×21 Gaussian ``exp(−r²/2σ²)/(2πσ)`` (their normalisation, which sums to ≈ σ rather than 1) and
  scaled by the amplitude α;
* a scaling part ``s_x·(col − mid)``, ``s_y·(row − mid)`` with ``s ~ U(−scale, scale)`` per axis;
* a rotation by ``θ ~ U(−rotation, rotation)`` degrees about the image centre;

and each output pixel reads the input bilinearly at ``(row − d_v, col − d_h)``; pixels whose 2×2 source leaves the
frame become 0 (a neighbour of weight 0 may lie outside, so no displacement is the identity). Draws are a pure
function of ``(seed, epoch, sample key)``, so runs are reproducible and resumable.

Departure (docs/fidelity.md, "Deliberate departures"): the authors' kernel clamps the scaling draws to ≥ 0 whenever
rotation is on (so images only shrink) and reuses the elastic noise as the scale/rotation draws; we draw them
independently and scale both ways, as docs/algorithm.md §2's "scale ±12 %" reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Provenance: docs/algorithm.md §2 [CODE `dataAugmentation/cuTransformation.cu:15,27`; config SCALE/ROTATION/
# DISTORTION].
SCALE = 0.12
ROTATION_DEG = 12.0
ELASTIC_ALPHA = 3.4
ELASTIC_SIGMA = 4.0
GAUSSIAN_FIELD = 21


def _key_seed(seed: int, epoch: int, key: int) -> int:
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + key * 0xC2B2AE3D) & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Augmentation:
    """Random elastic distortion + scaling + rotation of ``(B, C, H, W)`` images (channels share one field).

    Attributes:
        scale: maximum relative scaling per axis (authors: 0.12).
        rotation: maximum rotation in degrees (authors: 12).
        elastic_alpha: elastic amplitude α (authors: 3.4); 0 disables the elastic part.
        elastic_sigma: σ of the smoothing Gaussian in pixels (authors: 4).
        seed: the run's seed.
    """

    scale: float = SCALE
    rotation: float = ROTATION_DEG
    elastic_alpha: float = ELASTIC_ALPHA
    elastic_sigma: float = ELASTIC_SIGMA
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.scale < 1 and 0 <= self.rotation <= 180 and self.elastic_alpha >= 0
                and self.elastic_sigma > 0):
            raise ValueError(f"need 0 <= scale < 1, 0 <= rotation <= 180, elastic_alpha >= 0, elastic_sigma > 0; "
                             f"got {self}")

    def _gaussian(self, dtype: torch.dtype) -> torch.Tensor:
        mid = GAUSSIAN_FIELD // 2
        r = torch.arange(GAUSSIAN_FIELD, dtype=dtype) - mid
        r2 = r[:, None] ** 2 + r[None, :] ** 2
        return torch.exp(-r2 / (2 * self.elastic_sigma**2)) / (2 * math.pi * self.elastic_sigma)

    def displacements(self, keys: torch.Tensor, epoch: int, size: tuple[int, int]) -> torch.Tensor:
        """``(B, 2, H, W)`` displacement fields ``(d_v, d_h)`` for the samples ``keys``."""
        h, w = size
        draws, noise = [], []
        for key in keys.tolist():
            g = torch.Generator().manual_seed(_key_seed(self.seed, epoch, int(key)))
            draws.append(torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1)
            noise.append(torch.rand(2, h, w, generator=g, dtype=torch.float64) * 2 - 1)
        u = torch.stack(draws)  # (B, 3): s_y, s_x, θ in [−1, 1]
        field = torch.stack(noise)
        if self.elastic_alpha > 0:
            kern = self._gaussian(torch.float64).expand(2, 1, GAUSSIAN_FIELD, GAUSSIAN_FIELD)
            field = self.elastic_alpha * F.conv2d(field, kern, padding=GAUSSIAN_FIELD // 2, groups=2)
        else:
            field = torch.zeros_like(field)
        rows = (torch.arange(h, dtype=torch.float64) - h // 2)[:, None].expand(h, w)  # xx of the authors
        cols = (torch.arange(w, dtype=torch.float64) - w // 2)[None, :].expand(h, w)  # yy
        sy, sx = (self.scale * u[:, 0]).view(-1, 1, 1), (self.scale * u[:, 1]).view(-1, 1, 1)
        theta = torch.deg2rad(self.rotation * u[:, 2]).view(-1, 1, 1)
        cos, sin = torch.cos(theta), torch.sin(theta)
        dv = field[:, 0] + sy * rows + rows - rows * cos + cols * sin
        dh = field[:, 1] + sx * cols + cols - cols * cos - rows * sin
        return torch.stack([dv, dh], 1)

    def __call__(self, images: torch.Tensor, keys: torch.Tensor, epoch: int) -> torch.Tensor:
        """Augmented copy of ``images (B, C, H, W)``; ``keys (B,)`` identify the samples (e.g. dataset indices)."""
        if images.dim() != 4 or keys.shape != images.shape[:1]:
            raise ValueError(f"need images (B, C, H, W) and keys (B,), got {tuple(images.shape)}, {tuple(keys.shape)}")
        B, C, H, W = images.shape
        d = self.displacements(keys, epoch, (H, W))
        src_r = torch.arange(H, dtype=torch.float64).view(1, H, 1) - d[:, 0]
        src_c = torch.arange(W, dtype=torch.float64).view(1, 1, W) - d[:, 1]
        r0, c0 = torch.floor(src_r), torch.floor(src_c)
        fr, fc = src_r - r0, src_c - c0
        # a pixel whose (weighted) 2×2 source leaves the frame becomes 0 (docs/algorithm.md §2)
        inside = (r0 >= 0) & (c0 >= 0) & ((r0 + 1 < H) | (fr == 0)) & ((c0 + 1 < W) | (fc == 0))
        r0, c0 = r0.long().clamp(0, H - 1), c0.long().clamp(0, W - 1)
        flat = images.to(torch.float64).reshape(B, C, H * W)

        def at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            idx = (r * W + c).view(B, 1, H * W).expand(B, C, H * W)
            return flat.gather(2, idx).view(B, C, H, W)

        r1, c1 = (r0 + 1).clamp(max=H - 1), (c0 + 1).clamp(max=W - 1)
        fr, fc = fr[:, None], fc[:, None]
        out = ((1 - fr) * (1 - fc) * at(r0, c0) + (1 - fr) * fc * at(r0, c1)
               + fr * (1 - fc) * at(r1, c0) + fr * fc * at(r1, c1))
        out = torch.where(inside[:, None], out, torch.zeros_like(out))
        return out.to(images.dtype)
