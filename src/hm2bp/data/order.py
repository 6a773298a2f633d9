"""Training sample orders, each a pure function of ``(seed, epoch)`` so that resumed runs repeat them; usable as
``torch.utils.data`` samplers (the app) or as plain orders (:func:`hm2bp.train.fit`)."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

SHUFFLES = ("permutation", "swaps")
# Provenance: docs/algorithm.md P7 [CODE `net_spiking.cu:515`, `common/cuMatrixVector.h:66-89`]: before every epoch
# the authors swap 5000 random pairs of the current sample order (after one full shuffle at load).
AUTHORS_SWAPS = 5000


class EpochPermutation(Sampler[int]):
    """A full random permutation per epoch, a pure function of ``(seed, epoch)`` (so resumed runs repeat it).

    Lightning calls :meth:`set_epoch` before every epoch. The authors shuffle with 5000 random swaps per epoch
    (:class:`SwapShuffle`, ``trainer.shuffle=swaps``); a full permutation is our documented departure
    (docs/fidelity.md measures both). ``skip`` leaves out the first samples of the next pass only (a run resumed
    mid-epoch has trained them already).

    Under DDP (``world`` processes) process ``rank`` takes every ``world``-th sample of the same order, starting at
    its rank, after the order is padded with its own first samples to a multiple of ``world`` (as
    ``torch.utils.data.DistributedSampler``): each step's global batch is then the single-process batch of ``world``
    times the size, and every process runs the same number of steps. ``skip`` counts this process's samples.
    """

    def __init__(self, n: int, seed: int, skip: int = 0, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
        self.n, self.seed, self.epoch, self.skip, self.rank, self.world = n, seed, 0, skip, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def order(self) -> list[int]:
        """This epoch's sample order (of all processes)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        skip, self.skip = self.skip, 0
        order = self.order()
        order += order[:len(self) * self.world - self.n]
        return iter(order[self.rank::self.world][skip:])


class SwapShuffle(EpochPermutation):
    """The authors' order: one full random permutation at load, then before epoch ``e`` (from 0) ``swaps`` swaps
    of two uniformly drawn positions of the current order, cumulatively (``swap(m_vec[x], m_vec[y])`` with
    ``x, y = rand() % n``). A pure function of ``(seed, epoch)``: a resumed run replays the swaps of the epochs
    before it. With 5000 swaps most of a 60,000-sample order stays as it was from one epoch to the next."""

    def __init__(self, n: int, seed: int, skip: int = 0, rank: int = 0, world: int = 1,
                 swaps: int = AUTHORS_SWAPS) -> None:
        super().__init__(n, seed, skip, rank, world)
        self.swaps = swaps
        self._cached: tuple[int, list[int]] | None = None  # (epoch, order after its swaps)

    def order(self) -> list[int]:
        if self._cached is not None and self._cached[0] <= self.epoch:
            done, order = self._cached[0] + 1, list(self._cached[1])
        else:
            done = 0
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 - 1)).tolist()
        for e in range(done, self.epoch + 1):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            for x, y in torch.randint(self.n, (self.swaps, 2), generator=g).tolist():
                order[x], order[y] = order[y], order[x]
        self._cached = (self.epoch, order)
        return list(order)


def sampler(shuffle: str, n: int, seed: int, skip: int = 0, rank: int = 0, world: int = 1) -> EpochPermutation:
    """The training order named ``shuffle`` (one of :data:`SHUFFLES`) of ``n`` samples."""
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
    kind = EpochPermutation if shuffle == "permutation" else SwapShuffle
    return kind(n, seed, skip=skip, rank=rank, world=world)
