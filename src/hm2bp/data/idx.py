"""MNIST and EMNIST-balanced from their IDX files (gzipped or raw), read with numpy.

Layout under ``data_dir``::

    mnist/train-images-idx3-ubyte[.gz]   mnist/train-labels-idx1-ubyte[.gz]
    mnist/t10k-images-idx3-ubyte[.gz]    mnist/t10k-labels-idx1-ubyte[.gz]
    emnist/emnist-balanced-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]

EMNIST stores every image transposed (column-major); :func:`load_emnist_balanced` transposes them back so digits and
letters are upright like MNIST. With ``download=True`` missing files are fetched and checked against their MD5 sums
before use; otherwise a missing file is a clear error naming what is expected and where to get it.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.request
import zipfile
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


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, md5: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, tmp.open("wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DatasetFileError(f"download of {url} failed ({err}); fetch it by hand into {dest.parent}") from err
    if _md5(tmp) != md5:
        tmp.unlink()
        raise DatasetFileError(f"download of {url} has the wrong MD5 checksum (expected {md5}); nothing was kept")
    tmp.replace(dest)


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


def load_mnist(data_dir: str | Path, download: bool = False) -> tuple[torch.Tensor, ...]:
    """``(x_train (60000, 784), y_train, x_test (10000, 784), y_test)``; pixels 0–255 as float32."""
    folder = Path(data_dir) / "mnist"
    stems = list(MNIST_FILES)
    if download:
        for stem, md5 in MNIST_FILES.items():
            if _find(folder, stem) is None:
                _fetch(MNIST_URL + stem + ".gz", folder / (stem + ".gz"), md5)
    f = _require(folder, stems, "MNIST", "http://yann.lecun.com/exdb/mnist/ (or " + MNIST_URL + ")")
    x_tr, y_tr = _images_labels(f[0], f[1])
    x_te, y_te = _images_labels(f[2], f[3])
    return x_tr.flatten(1), y_tr, x_te.flatten(1), y_te


def load_emnist_balanced(data_dir: str | Path, download: bool = False) -> tuple[torch.Tensor, ...]:
    """EMNIST-balanced (47 classes): ``(x_train (112800, 784), y_train, x_test (18800, 784), y_test)``, upright."""
    folder = Path(data_dir) / "emnist"
    if download and any(_find(folder, s) is None for s in EMNIST_FILES):
        archive = folder / "gzip.zip"
        if not archive.exists():
            _fetch(EMNIST_URL, archive, EMNIST_ZIP_MD5)
        with zipfile.ZipFile(archive) as z:
            for stem in EMNIST_FILES:
                with z.open(f"gzip/{stem}.gz") as src, (folder / f"{stem}.gz").open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    f = _require(folder, EMNIST_FILES, "EMNIST-balanced", EMNIST_URL + " (the gzip/ folder of the archive)")
    x_tr, y_tr = _images_labels(f[0], f[1])
    x_te, y_te = _images_labels(f[2], f[3])
    # EMNIST images are stored transposed: swap rows and columns so they read like MNIST
    return x_tr.transpose(1, 2).flatten(1), y_tr, x_te.transpose(1, 2).flatten(1), y_te
