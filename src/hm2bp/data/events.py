"""Spike-train datasets kept sparse: flat ``(time, channel)`` arrays with per-sample offsets, cached as ``.npz``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from hm2bp.io import atomic_write_bytes
from hm2bp.neuron import mark_spikes
from hm2bp.workspace import BufferPool

_rasters = BufferPool(2)


class EventSplit:
    """Spike trains of one split, kept sparse: flat ``(time, channel)`` arrays with per-sample offsets."""

    def __init__(self, times: np.ndarray, channels: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
                 steps: int, n_inputs: int) -> None:
        self.times = torch.from_numpy(times.astype(np.int64))
        self.channels = torch.from_numpy(channels.astype(np.int64))
        self.offsets = torch.from_numpy(offsets.astype(np.int64))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.steps, self.n_inputs = steps, n_inputs

    def __len__(self) -> int:
        return len(self.labels)

    def spikes(self, idx: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """``(B, T, N)`` 0/1 trains (a view of time-major storage); the same in every epoch."""
        # a reused buffer: a fresh N-MNIST batch raster (hundreds of MB) pays more in page faults than the binning
        out = _rasters.get((self.steps, len(idx), self.n_inputs), torch.empty(0))
        return raster(self.events(idx), out)

    def events(self, idx: torch.Tensor) -> torch.Tensor:
        """``(3, E)`` int32 ``(time, row, channel)`` of every event of samples ``idx`` (row r: sample ``idx[r]``):
        what a data loader sends to a GPU, ~25 times fewer bytes than an N-MNIST bool raster."""
        rows, times, channels = [], [], []
        for row, k in enumerate(idx.tolist()):
            lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
            times.append(self.times[lo:hi])
            channels.append(self.channels[lo:hi])
            rows.append(torch.full((hi - lo,), row, dtype=torch.int64))
        if not rows:
            return torch.zeros(3, 0, dtype=torch.int32)
        return torch.stack([torch.cat(times), torch.cat(rows), torch.cat(channels)]).to(torch.int32)

    def save(self, path: Path) -> None:
        """Write the split atomically as an ``.npz`` cache file."""
        buf = io.BytesIO()
        np.savez(buf, times=self.times.numpy(), channels=self.channels.numpy(), offsets=self.offsets.numpy(),
                 labels=self.labels.numpy())
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path, steps: int, n_inputs: int) -> EventSplit:
        z = np.load(path)
        return cls(z["times"], z["channels"], z["offsets"], z["labels"], steps, n_inputs)

    @classmethod
    def from_samples(cls, samples: list[tuple[np.ndarray, np.ndarray]], labels: list[int], steps: int,
                     n_inputs: int) -> EventSplit:
        """From per-sample ``(times, channels)`` arrays."""
        offsets = np.cumsum([0] + [len(t) for t, _ in samples])
        cat = [np.concatenate([s[k] for s in samples]) if samples else np.zeros(0, np.int32) for k in (0, 1)]
        return cls(cat[0], cat[1], offsets, np.asarray(labels), steps, n_inputs)


def raster(events: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The ``(B, T, N)`` 0/1 trains of ``events`` (:meth:`EventSplit.events`), written into the time-major
    ``out (T, B, N)`` on any device: ``out[t, r, c] = 1`` at each event, 0 elsewhere. Returns a view of ``out``."""
    out.zero_()
    out[tuple(events.to(device=out.device, dtype=torch.int64))] = 1.0
    return mark_spikes(out.transpose(0, 1))
