"""Fetching dataset files: progress on stderr, and never a partial file under a final name.

:func:`fetch` streams a URL into ``<dest>.part`` beside the destination while printing bytes done / total, rate and
time left (:class:`Progress`), checks the byte count against the server's Content-Length and the MD5 sum against
the published one, flushes the file to disk and only then renames it into place. :func:`extract` copies members
out of a zip archive the same way (the archive's CRC checked). Any failure, an interruption included, removes the
``.part`` file; the errors are one-line :class:`~hm2bp.data.idx.DatasetFileError` s naming the URL or archive.
:func:`folder_lock` keeps processes that share a data folder (the ranks of a distributed run) from fetching the
same file at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

from hm2bp.data.idx import DatasetFileError
from hm2bp.io import fsync_dir

CHUNK = 1 << 20  # bytes per read: progress and MD5 advance block by block
SCHEMES = ("http", "https", "ftp", "file")  # what urllib.request.urlopen fetches
TTY_EVERY_S = 0.1  # a terminal's progress line is redrawn at most this often
LOG_EVERY_S = 5.0  # elsewhere a line at every tenth of the total, and at least this often


def check_url(url: str) -> str:
    """``url`` itself when urllib can fetch it (http, https, ftp or file); otherwise a one-line error."""
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in SCHEMES or "\n" in url:
        raise DatasetFileError(f"dataset.url={url!r} is not a URL urllib can fetch: give an http://, https://, "
                               f"ftp:// or file:// address")
    return url


def _size(n: float) -> str:
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _duration(s: float) -> str:
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """One transfer's progress on ``stream`` (stderr by default): bytes done / total (when known), rate, time left.

    On a terminal it is one line redrawn in place with a carriage return, at most every :data:`TTY_EVERY_S`;
    elsewhere (a log file, CI) a whole line at every tenth of the total and at least every :data:`LOG_EVERY_S`,
    so a log stays short. :meth:`finish` prints the summary line; :meth:`close` ends a line left open.
    """

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.clock = label, total, clock
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.start = self.last = clock()
        self.tenth = 0  # tenths of the total reported so far
        self.width = 0  # length of the open terminal line (0: none open)

    def _rate(self, done: int, now: float) -> float | None:
        elapsed = now - self.start
        return done / elapsed if elapsed > 0 and done > 0 else None

    def line(self, done: int, now: float) -> str:
        """``label: 3.2 MB/9.9 MB (32%), 1.1 MB/s, 6s left`` (only what is known)."""
        rate = self._rate(done, now)
        if self.total:
            text = f"{self.label}: {_size(done)}/{_size(self.total)} ({100 * done // self.total}%)"
        else:
            text = f"{self.label}: {_size(done)}"
        if rate is not None:
            text += f", {_size(rate)}/s"
            if self.total and done < self.total:
                text += f", {_duration((self.total - done) / rate)} left"
        return text

    def _write(self, text: str, end: bool) -> None:
        if self.tty:
            pad = " " * max(0, self.width - len(text))
            self.stream.write("\r" + text + pad + ("\n" if end else ""))
            self.width = 0 if end else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, done: int) -> None:
        """Report ``done`` bytes so far; prints only when the schedule above says so."""
        now = self.clock()
        if self.tty:
            if now - self.last >= TTY_EVERY_S:
                self.last = now
                self._write(self.line(done, now), end=False)
            return
        tenth = 10 * done // self.total if self.total else self.tenth
        if (tenth > self.tenth and done < (self.total or 0)) or now - self.last >= LOG_EVERY_S:
            self.tenth, self.last = tenth, now
            self._write(self.line(done, now), end=False)

    def finish(self, done: int) -> None:
        """The summary line: ``label: 9.9 MB in 4s, 2.4 MB/s``."""
        now = self.clock()
        rate = self._rate(done, now)
        self._write(f"{self.label}: {_size(done)} in {_duration(now - self.start)}"
                    + (f", {_size(rate)}/s" if rate is not None else ""), end=True)

    def close(self) -> None:
        """End a terminal line left open (a transfer that failed), so what is printed next starts on its own."""
        if self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {_one_line(err.reason)}"
    if isinstance(err, urllib.error.URLError):
        return _one_line(err.reason)
    if isinstance(err, http.client.IncompleteRead):
        return f"the connection closed early ({len(err.partial)} bytes of a chunk read)"
    return _one_line(err) or type(err).__name__


def _content_length(response) -> int | None:
    try:
        value = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _copy(src: BinaryIO, dst: BinaryIO, progress: Progress, digest=None) -> int:
    """Copy ``src`` to ``dst`` block by block (updating ``digest`` and ``progress``); the bytes copied."""
    done = 0
    while block := src.read(CHUNK):
        dst.write(block)
        if digest is not None:
            digest.update(block)
        done += len(block)
        progress.update(done)
    return done


@contextmanager
def _into_place(dest: Path) -> Iterator[BinaryIO]:
    """A file ``<dest>.part`` to write; when the block ends without error it is flushed to disk and renamed to
    ``dest`` (the rename made durable); on any error, an interruption included, it is removed."""
    part = dest.with_name(dest.name + ".part")
    try:
        with part.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing): processes fetching into one data folder take
    turns, and whoever comes second finds the files in place. A lock on the folder itself leaves no lock file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        raise DatasetFileError(f"cannot download into {folder}: {_reason(err)}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def fetch(url: str, dest: Path, md5: str, stream: TextIO | None = None, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` with progress on ``stream`` (stderr by default), checked against the
    server's Content-Length and the MD5 sum ``md5`` before it gets its final name; on failure nothing is kept and
    a one-line :class:`DatasetFileError` names the URL and the reason."""
    out = sys.stderr if stream is None else stream
    hint = f"nothing was kept; rerun to try again, or fetch {dest.name} by hand into {dest.parent}"
    digest = hashlib.md5(usedforsecurity=False)
    progress: Progress | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, _into_place(dest) as f:
            total = _content_length(response)
            print(f"downloading {url}" + (f" ({_size(total)})" if total is not None else "") + f" into {dest.parent}",
                  file=out, flush=True)
            progress = Progress(dest.name, total, out)
            done = _copy(response, f, progress, digest)
            # urllib returns end-of-file when a connection drops before Content-Length bytes: count them here
            if total is not None and done != total:
                raise DatasetFileError(f"download of {url} failed: the transfer stopped after {done} of {total} "
                                       f"bytes; {hint}")
            if digest.hexdigest() != md5:
                raise DatasetFileError(f"download of {url} has MD5 {digest.hexdigest()}, expected {md5} (not the "
                                       f"published file: a different mirror, or damaged in transit); {hint}")
            progress.finish(done)
    except DatasetFileError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as err:  # ValueError: a URL urllib cannot parse
        raise DatasetFileError(f"download of {url} failed: {_reason(err)}; {hint}") from err
    finally:
        if progress is not None:
            progress.close()


def extract(archive: Path, members: dict[str, Path], stream: TextIO | None = None) -> None:
    """Copy each ``member`` of the zip ``archive`` to its path (progress on ``stream``), each through a ``.part``
    file renamed once complete, so an interrupted extraction never leaves a truncated file under a final name."""
    out = sys.stderr if stream is None else stream
    damaged = "the archive is damaged; delete it to download it again"
    try:
        z = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as err:
        raise DatasetFileError(f"cannot open {archive}: {_reason(err)}; {damaged}") from err
    with z:
        for member, dest in members.items():
            try:
                info = z.getinfo(member)
            except KeyError:
                raise DatasetFileError(f"{archive} has no member {member}: not the expected archive; delete it "
                                       f"to download it again") from None
            progress = Progress(f"extracting {dest.name}", info.file_size, out)
            try:
                with z.open(info) as src, _into_place(dest) as dst:
                    progress.finish(_copy(src, dst, progress))  # zipfile checks the CRC at the member's end
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise DatasetFileError(f"cannot extract {member} from {archive}: {_reason(err)}; {damaged}") from err
            except OSError as err:
                raise DatasetFileError(f"cannot extract {member} from {archive} into {dest.parent}: "
                                       f"{_reason(err)}") from err
            finally:
                progress.close()
