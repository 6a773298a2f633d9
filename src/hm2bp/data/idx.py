"""MNIST and EMNIST-balanced from their IDX files (gzipped or raw), read with numpy.

Layout under ``data_dir``::

    mnist/train-images-idx3-ubyte[.gz]   mnist/train-labels-idx1-ubyte[.gz]
    mnist/t10k-images-idx3-ubyte[.gz]    mnist/t10k-labels-idx1-ubyte[.gz]
    emnist/emnist-balanced-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]

EMNIST stores every image transposed (column-major); :func:`load_emnist_balanced` transposes them back so digits and
letters are upright like MNIST. With ``download=True`` missing files are fetched (from ``url`` when given: a mirror)
by :mod:`hm2bp.data.download`, with progress on stderr, and checked against their MD5 sums before they get their
final names; otherwise a missing file is a clear error naming what is expected and where to get it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
             0x0E: np.dtype(">f8")}

# Mirror used by torchvision (the original yann.lecun.com host often refuses downloads); MD5 of each .gz file.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_ZIP_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"
EMNIST_FILES = [f"emnist-balanced-{split}-{kind}-ubyte" for split in ("train", "test")
                for kind in ("images-idx3", "labels-idx1")]


class DatasetFileError(FileNotFoundError):
    """A dataset file is missing or unreadable; the message says which file and where to get it."""



def write_idx(path: str | Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file of unsigned bytes (two zero bytes, type code 0x08, ndim, big-endian int32
    dims, then the data), gzipped with ``.gz`` appended when ``compress``; returns the path written. For fixtures and
    synthetic data in the real on-disk format."""
    import struct

    path = Path(path)
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += np.asarray(array).astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path

def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into an array, checking the header against the file size."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DatasetFileError(f"corrupt IDX file {path}: cannot read it ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DatasetFileError(f"corrupt IDX file {path}: bad magic number {raw[:4].hex()}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFileError(f"corrupt IDX file {path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetFileError(f"corrupt IDX file {path}: {len(raw)} bytes, header {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _require(folder: Path, stems: list[str], what: str, source: str) -> list[Path]:
    found = [_find(folder, s) for s in stems]
    missing = [s for s, f in zip(stems, found, strict=True) if f is None]
    if missing:
        raise DatasetFileError(
            f"{what} files not found in {folder}: missing {', '.join(s + '[.gz]' for s in missing)}. "
            f"Get them from {source} and put them there, or set dataset.download=true to fetch them "
            f"(checked against their MD5 sums).")
    return [f for f in found if f is not None]


def _images_labels(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DatasetFileError(f"IDX files {images} and {labels} do not match: images {x.shape}, labels {y.shape}")
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


def load_mnist(data_dir: str | Path, download: bool = False, url: str | None = None) -> tuple[torch.Tensor, ...]:
    """``(x_train (60000, 784), y_train, x_test (10000, 784), y_test)``; pixels 0–255 as float32. ``download``
    fetches missing files from ``url`` (a folder URL holding the four ``.gz`` files, e.g. a mirror; default
    :data:`MNIST_URL`), each checked against its MD5 sum."""
    from hm2bp.data.download import check_url, fetch, folder_lock  # imported here: it imports DatasetFileError

    folder = Path(data_dir) / "mnist"
    base = (MNIST_URL if url is None else check_url(url)).rstrip("/") + "/"
    stems = list(MNIST_FILES)
    if download and any(_find(folder, s) is None for s in stems):
        with folder_lock(folder):  # another process may have fetched them while this one waited
            for stem, md5 in MNIST_FILES.items():
                if _find(folder, stem) is None:
                    fetch(base + stem + ".gz", folder / (stem + ".gz"), md5)
    f = _require(folder, stems, "MNIST", "http://yann.lecun.com/exdb/mnist/ (or " + base + ")")
    x_tr, y_tr = _images_labels(f[0], f[1])
    x_te, y_te = _images_labels(f[2], f[3])
    return x_tr.flatten(1), y_tr, x_te.flatten(1), y_te


def load_emnist_balanced(data_dir: str | Path, download: bool = False,
                         url: str | None = None) -> tuple[torch.Tensor, ...]:
    """EMNIST-balanced (47 classes): ``(x_train (112800, 784), y_train, x_test (18800, 784), y_test)``, upright.
    ``download`` fetches the NIST archive from ``url`` (the ``gzip.zip`` file, e.g. on a mirror; default
    :data:`EMNIST_URL`), checks its MD5 sum, keeps it as ``gzip.zip`` and extracts the missing files from it."""
    from hm2bp.data.download import check_url, extract, fetch, folder_lock  # here: it imports DatasetFileError

    folder = Path(data_dir) / "emnist"
    source = EMNIST_URL if url is None else check_url(url)
    if download and any(_find(folder, s) is None for s in EMNIST_FILES):
        with folder_lock(folder):  # another process may have fetched them while this one waited
            missing = [s for s in EMNIST_FILES if _find(folder, s) is None]
            archive = folder / "gzip.zip"
            if missing and not archive.exists():
                fetch(source, archive, EMNIST_ZIP_MD5)
            extract(archive, {f"gzip/{stem}.gz": folder / f"{stem}.gz" for stem in missing})
    f = _require(folder, EMNIST_FILES, "EMNIST-balanced", source + " (the gzip/ folder of the archive)")
    x_tr, y_tr = _images_labels(f[0], f[1])
    x_te, y_te = _images_labels(f[2], f[3])
    # EMNIST images are stored transposed: swap rows and columns so they read like MNIST
    return x_tr.transpose(1, 2).flatten(1), y_tr, x_te.transpose(1, 2).flatten(1), y_te
