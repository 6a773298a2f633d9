"""Reuse of large per-layer buffers whose last user has let go of them.

Large fresh allocations are mmap'ed by the C allocator and pay one page fault per 4 KiB page on first touch, as much
as the GEMM that fills the buffer (BENCHMARKS.md). A :class:`BufferPool`
hands back a buffer it made earlier only when no tensor or view outside the pool still refers to its storage (the
storage's reference count says so), so reuse can never alias live data.

A :class:`TensorCache` keeps a few values derived from tensors (the spike indexes of :mod:`hm2bp.spsp`), so that
several passes over the same raster share one computation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _refs(t: torch.Tensor) -> int:
    return _use_count(t.untyped_storage()._cdata) if _use_count is not None else -1


class TensorCache:
    """At most ``size`` values derived from tensors, keyed by memory, layout, dtype and version counter.

    Each entry holds its tensor, so no other tensor can occupy that memory while the entry lives, and any in-place
    write bumps the version, so a stale value is never returned. :class:`BufferPool` does not count these holds when
    it decides whether a buffer is free, and drops a buffer's entries when it hands the buffer out again.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple, tuple[torch.Tensor, Any]] = OrderedDict()

    @staticmethod
    def _key(x: torch.Tensor) -> tuple | None:
        if x.is_inference():  # inference tensors have no version counter: never cached
            return None
        return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x.device, x._version)

    def get(self, x: torch.Tensor) -> Any | None:
        """The value stored for ``x`` if ``x`` has not been written since, else None."""
        key = self._key(x)
        hit = self._items.get(key) if key is not None else None
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[1]

    def put(self, x: torch.Tensor, value: Any) -> None:
        key = self._key(x)
        if key is None or self.size <= 0:
            return
        self._items[key] = (x.detach(), value)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def holds(self, buf: torch.Tensor) -> int:
        """How many entries hold a view of ``buf``'s storage."""
        ptr = buf.untyped_storage().data_ptr()
        return sum(t.untyped_storage().data_ptr() == ptr for t, _ in self._items.values())

    def drop(self, buf: torch.Tensor) -> None:
        """Forget every entry on ``buf``'s storage."""
        ptr = buf.untyped_storage().data_ptr()
        for key in [k for k, (t, _) in self._items.items() if t.untyped_storage().data_ptr() == ptr]:
            del self._items[key]

    def clear(self) -> None:
        self._items.clear()


# Values derived from rasters (spike indexes): in a training step the output layer's forward indexes the hidden
# raster, and both backward passes and the firing statistics reuse that index.
derived = TensorCache(4)


class BufferPool:
    """At most ``size`` cached buffers; :meth:`get` returns a free one of the right shape or allocates (one thread at
    a time: the encoders' pools may be shared by loader threads)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: list[tuple[torch.Tensor, int]] = []  # (buffer, reference count when only the pool holds it)
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with the dtype and device of ``like``."""
        with self._lock:
            return self._get(shape, like)

    def _get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        for buf, free_refs in self._items:
            if (buf.shape == shape and buf.dtype == like.dtype and buf.device == like.device
                    and free_refs >= 0 and _refs(buf) - derived.holds(buf) == free_refs):
                derived.drop(buf)  # the buffer is about to be overwritten
                return buf.view(shape)  # a new view: while it (or any view of it) lives, the count stays up
        buf = like.new_empty(shape)
        if self.size > 0:
            self._items = [*self._items[-(self.size - 1):], (buf, _refs(buf))] if self.size > 1 else [(buf, _refs(buf))]
        return buf.view(shape)

    def clear(self) -> None:
        self._items = []

    def __deepcopy__(self, memo: dict) -> BufferPool:  # copies of a layer start with an empty pool
        return BufferPool(self.size)

    def __getstate__(self) -> dict:
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])
