"""MNIST / EMNIST IDX loaders on fixture files written in the real on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_dir
from hm2bp.data.idx import DatasetFileError, load_emnist_balanced, load_mnist, read_idx, write_idx


def make_mnist(root: Path, n_train: int = 20, n_test: int = 10, compress: bool = True, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, compress)


def make_emnist(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    folder = root / "emnist"
    folder.mkdir(parents=True, exist_ok=True)
    stored = images.transpose(0, 2, 1)  # EMNIST stores images transposed
    for split in ("train", "test"):
        write_idx(folder / f"emnist-balanced-{split}-images-idx3-ubyte", stored, True)
        write_idx(folder / f"emnist-balanced-{split}-labels-idx1-ubyte", labels, False)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_shapes_and_labels(tmp_path, compress):
    make_mnist(tmp_path, compress=compress)
    x_tr, y_tr, x_te, _ = load_mnist(tmp_path)
    assert x_tr.shape == (20, 784) and x_te.shape == (10, 784)
    assert y_tr.tolist() == [k % 10 for k in range(20)]
    assert float(x_tr.min()) >= 0 and float(x_tr.max()) <= 255


def test_emnist_is_transposed_back_upright(tmp_path):
    img = np.zeros((2, 28, 28), dtype=np.uint8)
    img[0, 0, :] = 255  # a horizontal bar in the top row
    img[1, :, 0] = 200  # a vertical bar in the left column
    make_emnist(tmp_path, img, np.array([46, 3]))
    x_tr, y_tr, x_te, _ = load_emnist_balanced(tmp_path)
    up = x_tr.view(-1, 28, 28)
    assert up[0, 0].sum() == 255 * 28 and up[0, 1:].sum() == 0
    assert up[1, :, 0].sum() == 200 * 28 and up[1, :, 1:].sum() == 0
    assert y_tr.tolist() == [46, 3] and x_te.shape == (2, 784)


def test_missing_files_name_the_files_and_where_to_get_them(tmp_path):
    with pytest.raises(DatasetFileError, match=r"MNIST files not found in .*mnist: missing train-images-idx3-ubyte"
                                               r"\[\.gz\].*yann\.lecun\.com.*dataset\.download=true"):
        load_mnist(tmp_path)
    with pytest.raises(DatasetFileError, match="EMNIST-balanced files not found"):
        load_emnist_balanced(tmp_path)


def test_corrupt_files_are_named(tmp_path):
    make_mnist(tmp_path, compress=False)
    images = tmp_path / "mnist" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])  # truncated
    with pytest.raises(DatasetFileError, match=f"corrupt IDX file {images}"):
        load_mnist(tmp_path)
    bad = tmp_path / "x.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetFileError, match="corrupt IDX file"):
        read_idx(bad)
    wrong_magic = tmp_path / "y"
    wrong_magic.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetFileError, match="bad magic number"):
        read_idx(wrong_magic)


def test_app_trains_on_mnist_fixture(tmp_path):
    from test_app import SMOKE, _run

    make_mnist(tmp_path / "data", n_train=64, n_test=32)
    _run(["dataset=mnist", "model=mnist_mlp", f"data_dir={tmp_path / 'data'}", *SMOKE, "trainer.max_epochs=1",
          "logger=none", f"output_root={tmp_path / 'out'}"], tmp_path)
    assert (run_dir(tmp_path / "out", "mnist-mlp784-800-10") / "metrics.json").exists()


def test_app_missing_data_fails_before_training(tmp_path):
    from test_app import SMOKE, _run

    proc = _run(["dataset=mnist", "model=mnist_mlp", f"data_dir={tmp_path}", *SMOKE, "logger=none",
                 f"output_root={tmp_path / 'out'}"], tmp_path, check=False)
    assert proc.returncode != 0 and "MNIST files not found" in proc.stderr
    assert not list((tmp_path / "out").rglob("checkpoints"))


def test_mnist5k_is_the_real_5k_sample_split_4000_1000_stratified():
    from hm2bp.data.mnist5k import csv_path, load_mnist5k_split

    assert csv_path().name == "mnist_5k.csv.gz" and csv_path().is_file()
    x_tr, y_tr, x_te, y_te = load_mnist5k_split()
    assert x_tr.shape == (4000, 784) and x_te.shape == (1000, 784)
    assert torch.bincount(y_tr).tolist() == [400] * 10 and torch.bincount(y_te).tolist() == [100] * 10
    assert float(x_tr.max()) == 255 and float(x_tr.min()) == 0 and (x_tr == x_tr.round()).all()
    again = load_mnist5k_split()
    assert torch.equal(again[0], x_tr) and torch.equal(again[3], y_te)  # the split is fixed


def test_mnist5k_reader_on_files_in_its_format(tmp_path):
    import gzip

    from hm2bp.data.mnist5k import load_mnist5k_split, read_mnist5k_csv

    rows = np.concatenate([np.random.default_rng(0).integers(0, 256, (1010, 784)), (np.arange(1010) % 10)[:, None]],
                          axis=1)
    good = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(good, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    pixels, labels = read_mnist5k_csv(good)
    assert pixels.shape == (1010, 784) and pixels.dtype == np.uint8 and labels.tolist() == rows[:, -1].tolist()
    assert load_mnist5k_split(good)[0].shape == (10, 784)
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DatasetFileError, match=f"corrupt mnist5k file {bad}"):
        read_mnist5k_csv(bad)
    short = tmp_path / "short.csv.gz"
    with gzip.open(short, "wt") as f:
        f.write("1,2,3\n")
    with pytest.raises(DatasetFileError, match="rows of 3 values, expected 784 \\+ 1"):
        read_mnist5k_csv(short)
