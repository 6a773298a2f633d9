"""LightningDataModule for static-image datasets: batches of spike trains, labels and sample indices."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from hm2bp.augment import Augmentation
from hm2bp.data.events import EventSplit, raster
from hm2bp.data.order import SHUFFLES, sampler
from hm2bp.data.registry import get_dataset
from hm2bp.data.static import Encoder, StaticSplit


class PixelBatch(NamedTuple):
    """What the data loader sends when encoding happens on the device: a static split's pixels as bytes (an event
    split's events as ``(time, row, channel)`` triples), labels, sample indices, and which split they come from."""

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    train: bool


class SpikeData(L.LightningDataModule):
    """Train and test splits of a registered dataset as spike trains: static images Bernoulli-encoded
    (docs/algorithm.md §2),
    event datasets binned (N-MNIST).

    Batches are ``(spikes (B, T, N), labels (B,), indices (B,))``; the indices feed the boosting weights. The
    "validation" loop of Lightning runs on the test split, as the authors evaluate after every epoch. ``augment``
    (keyword arguments of :class:`~hm2bp.augment.Augmentation`) distorts static training images afresh at every
    use, as the authors' CNN does; test images are never augmented.

    With ``device_encoding`` (a GPU run) the data loader sends :class:`PixelBatch` es instead: the pixels (as
    uint8 where they are whole numbers; the events of event datasets), about T times less than float trains,
    and :meth:`on_after_batch_transfer` encodes them on the device with the same hash, so the spikes equal the CPU
    path's (an event split's ``(time, row, channel)`` triples, made into rasters there). ``num_workers`` and
    ``pin_memory`` go to the data loaders. ``shuffle`` orders the training samples:
    ``"permutation"`` or the authors' ``"swaps"`` (:mod:`hm2bp.data.order`). ``url`` is where ``download`` fetches
    a dataset's files from instead of its default source (``dataset.url``: a mirror; mnist and emnist).
    ``splits``, when given, replaces the registered loader's files: what that loader returns (``(x_train,
    y_train, x_test, y_test)`` pixel tensors of a static dataset, ``(train, test)`` :class:`EventSplit` s of an event
    dataset), held in memory (the GPU benchmark's synthetic data).
    """

    def __init__(self, name: str, data_dir: str | Path, steps: int, batch_size: int, seed: int,
                 fixed_trains: bool = True, download: bool = False, options: dict | None = None,
                 augment: dict | None = None, device_encoding: bool = False, num_workers: int = 0,
                 pin_memory: bool = False, shuffle: str = "permutation", url: str | None = None,
                 splits: tuple | None = None) -> None:
        super().__init__()
        if shuffle not in SHUFFLES:
            raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
        self.shuffle = shuffle
        self.info = get_dataset(name)
        if url is not None and "url" not in inspect.signature(self.info.load).parameters:
            raise ValueError(f"url={url!r} does not apply to dataset {name!r}: its loader takes no download URL")
        self._source = {} if url is None else {"url": url}
        if augment is not None and self.info.kind != "static":
            raise ValueError(f"augmentation applies to static image datasets only, not {name!r}")
        self.augment = None if augment is None else Augmentation(**{"seed": seed, **augment})  # run seed by default
        self.data_dir, self.steps, self.batch_size, self.seed = Path(data_dir), steps, batch_size, seed
        self.fixed_trains, self.download, self.options = fixed_trains, download, dict(options or {})
        self.device_encoding, self.num_workers, self.pin_memory = device_encoding, num_workers, pin_memory
        self._whole: dict[int, bool] = {}
        self._splits = splits
        self.train: StaticSplit | EventSplit | None = None
        self.test: StaticSplit | EventSplit | None = None
        self._resume_samples = 0

    def resume_within_epoch(self, samples: int) -> None:
        """The next training pass starts after its first ``samples`` samples (a checkpoint written mid-epoch)."""
        self._resume_samples = int(samples)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        if self.info.kind == "events":
            self.train, self.test = self._splits or self.info.load(self.data_dir, self.download, steps=self.steps,
                                                                   **self.options)
            return
        x_tr, y_tr, x_te, y_te = self._splits or self.info.load(self.data_dir, self.download, **self._source)
        # fixed_trains is about training trains: test trains are always drawn once, so every epoch's test accuracy
        # is measured on the same inputs.
        train_encoder = Encoder(self.steps, seed=self.seed, fixed=self.fixed_trains)
        # Encoding on the device: the loader sends pixels, so no trains are drawn here (a cached split's would be,
        # on the CPU: the first GPU run compiled the CPU kernels for its test split's).
        cache = {"cache_bytes": 0} if self.device_encoding else {}
        self.train = StaticSplit(x_tr, y_tr, train_encoder, augment=self.augment, image_shape=self.info.shape,
                                 **cache)
        self.test = StaticSplit(x_te, y_te, Encoder(self.steps, seed=self.seed), key_offset=len(x_tr), **cache)

    @property
    def n_train(self) -> int:
        self.setup()
        assert self.train is not None
        return len(self.train)

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _collate(self, split: StaticSplit | EventSplit):
        train = split is self.train

        def collate(indices: list[int]):
            idx = torch.tensor(indices)
            if not self.device_encoding:
                return split.spikes(idx, self._epoch()), split.labels[idx], idx
            if isinstance(split, StaticSplit):
                raw = split.pixels[idx]
                if self._whole_pixels(split):  # bytes where that is exact (MNIST, EMNIST), else the float pixels
                    raw = raw.to(torch.uint8)
            else:
                raw = split.events(idx)
            return PixelBatch(raw, split.labels[idx], idx, train)
        return collate

    def _whole_pixels(self, split: StaticSplit) -> bool:
        key = id(split)
        if key not in self._whole:
            p = split.pixels
            self._whole[key] = bool(((p == p.round()) & (p >= 0) & (p <= 255)).all())
        return self._whole[key]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Encode a :class:`PixelBatch` on the device it was moved to (a no-op for batches of trains)."""
        if not isinstance(batch, PixelBatch):
            return batch
        split = self.train if batch.train else self.test
        dtype = torch.get_default_dtype()
        if isinstance(split, StaticSplit):
            spikes = split.encode(batch.inputs.to(dtype), batch.indices, self._epoch())
        else:
            out = torch.empty(split.steps, len(batch.labels), split.n_inputs, dtype=dtype, device=batch.labels.device)
            spikes = raster(batch.inputs, out)
        return spikes, batch.labels, batch.indices

    def _loader_options(self) -> dict:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        assert self.train is not None
        rank, world = self._process()
        order = sampler(self.shuffle, len(self.train), self.seed, skip=self._resume_samples, rank=rank, world=world)
        self._resume_samples = 0
        return DataLoader(range(len(self.train)), batch_size=self.batch_size, sampler=order,
                          collate_fn=self._collate(self.train), **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        """The test split in order; under DDP every ``world``-th sample per process (no padding: each sample is
        evaluated once, and the test metrics are summed over processes)."""
        assert self.test is not None
        rank, world = self._process()
        return DataLoader(range(rank, len(self.test), world), batch_size=self.batch_size, shuffle=False,
                          collate_fn=self._collate(self.test), **self._loader_options())

    def _process(self) -> tuple[int, int]:
        """``(global rank, world size)`` of this process (``(0, 1)`` without a distributed trainer)."""
        trainer = getattr(self, "trainer", None)
        return (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))

    def example(self, index: int = 0) -> tuple[torch.Tensor, int]:
        """One test sample's spike train ``(1, T, N)`` and label (for the raster figure)."""
        assert self.test is not None
        idx = torch.tensor([index])
        return self.test.spikes(idx, 0), int(self.test.labels[index])
