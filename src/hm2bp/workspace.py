"""Reuse of large per-layer buffers whose last user has let go of them.

Large fresh allocations are mmap'ed by the C allocator and pay one page fault per 4 KiB page on first touch: on the
project's CPU machines an 80 MB buffer costs ~30 ms that way, as much as the GEMM that fills it. A :class:`BufferPool`
hands back a buffer it made earlier only when no tensor or view outside the pool still refers to its storage (the
storage's reference count says so), so reuse can never alias live data.
"""

from __future__ import annotations

import torch

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _refs(t: torch.Tensor) -> int:
    return _use_count(t.untyped_storage()._cdata) if _use_count is not None else -1


class BufferPool:
    """At most ``size`` cached buffers; :meth:`get` returns a free one of the right shape or allocates."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: list[tuple[torch.Tensor, int]] = []  # (buffer, reference count when only the pool holds it)

    def get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with the dtype and device of ``like``."""
        for buf, free_refs in self._items:
            if (buf.shape == shape and buf.dtype == like.dtype and buf.device == like.device
                    and free_refs >= 0 and _refs(buf) == free_refs):
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
        self.size = state["size"]
        self._items = []
