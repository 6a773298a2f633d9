"""Atomic, durable file writes: a temp file in the same folder, fsynced, then ``os.replace`` and an fsync of the
folder; a failure leaves the old file intact, a crash after the write leaves the new one.

Files get the mode any program's new file gets (``0o666`` less the umask, or the folder's default ACL): the temp
file is created with ``os.open(..., 0o666)`` so the kernel applies them, with no umask read or changed here (that
would race with other threads creating files).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty, exclusively created temp file beside ``path`` (open for writing) and its path."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # a leftover of a crashed write with the same random name: draw another
            continue


def fsync_dir(folder: str | Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk. A no-op where the platform cannot open folders
    (no ``O_DIRECTORY``, e.g. Windows) or the file system does not sync them (``EINVAL``/``ENOTSUP``)."""
    flag = getattr(os, "O_DIRECTORY", None)
    if flag is None:
        return
    fd = os.open(folder, os.O_RDONLY | flag)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a partial file, and the new
    content survives a crash once this returns.

    Raises ``OSError`` with the path named when the folder is not writable or the disk is full.
    """
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Bytes version of :func:`atomic_write_text`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from err
    try:
        fsync_dir(path.parent)  # the rename itself is durable only once the folder is flushed
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from err


def atomic_write_json(path: str | Path, data: object) -> None:
    """:func:`atomic_write_text` of ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
