"""Dataset registry: name → loader of ``(x_train, y_train, x_test, y_test)`` plus its shape facts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the pipeline needs to know about a dataset before loading it."""

    name: str
    n_inputs: int
    n_classes: int
    kind: str  # "static": pixel intensities in [0, 255], Bernoulli-encoded
    load: Callable[[Path, bool], Splits]  # (data_dir, download) → splits
    source: str  # where the files come from (shown in errors)


def _digits(_: Path, __: bool) -> Splits:
    from hm2bp.data.digits import load_digits_split

    return load_digits_split()


def _mnist(data_dir: Path, download: bool) -> Splits:
    from hm2bp.data.idx import load_mnist

    return load_mnist(data_dir, download)


def _emnist(data_dir: Path, download: bool) -> Splits:
    from hm2bp.data.idx import load_emnist_balanced

    return load_emnist_balanced(data_dir, download)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 64, 10, "static", _digits, "bundled with scikit-learn (offline)"),
    "mnist": DatasetInfo("mnist", 784, 10, "static", _mnist, "IDX files under <data_dir>/mnist"),
    "emnist": DatasetInfo("emnist", 784, 47, "static", _emnist, "EMNIST-balanced IDX files under <data_dir>/emnist"),
}


def get_dataset(name: str) -> DatasetInfo:
    """The registered dataset ``name``; a clear error lists the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {sorted(DATASETS)}")
    return DATASETS[name]
