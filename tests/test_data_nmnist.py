"""N-MNIST through tonic on fixture .bin files written in the dataset's real 5-byte event format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_dir
from hm2bp.data.idx import DatasetFileError
from hm2bp.data.nmnist import N_INPUTS, encode_events, load_nmnist


def make_nmnist(root: Path, per_class: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split in ("Train", "Test"):
        for digit in range(10):
            folder = root / "NMNIST" / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                n = 200
                ev = [(int(rng.integers(0, 34)), int(rng.integers(0, 34)), int(rng.integers(0, 2)),
                       int(rng.integers(0, 300_000))) for _ in range(n)]
                (folder / f"{k:05d}.bin").write_bytes(encode_events(sorted(ev, key=lambda e: e[3])))


def test_known_event_channel_time_and_collapse(tmp_path):
    folder = tmp_path / "NMNIST" / "Train" / "7"
    folder.mkdir(parents=True)
    events = [(3, 5, 1, 1000), (3, 5, 1, 1100),  # same channel, same 600 µs bin: one spike
              (0, 0, 0, 0),  # t = 0 → bin 0 → time 1
              (33, 33, 0, 600 * 600)]  # beyond T = 540: dropped
    (folder / "00000.bin").write_bytes(encode_events(events))
    test = tmp_path / "NMNIST" / "Test" / "7"
    test.mkdir(parents=True)
    (test / "00000.bin").write_bytes(encode_events(events[:1]))
    train, _ = load_nmnist(tmp_path, stabilize=False)
    spikes = train.spikes(torch.tensor([0]))
    assert spikes.shape == (1, 540, N_INPUTS) and train.labels.tolist() == [7]
    off = 3 * 34 + 5 + 1156  # authors' (x−1)·34 + y (1-based) + 1156 for polarity 2
    assert spikes[0, :, off].nonzero().squeeze(1).tolist() == [3]  # ⌈1000/600⌉ + 1
    assert spikes[0, 1, 0] == 1
    assert spikes.sum() == 2


def test_shapes_labels_cache(tmp_path):
    make_nmnist(tmp_path)
    train, test = load_nmnist(tmp_path, stabilize=True)
    assert len(train) == 20 and len(test) == 20
    assert sorted(set(train.labels.tolist())) == list(range(10))
    s = train.spikes(torch.arange(4))
    assert s.shape == (4, 540, N_INPUTS) and set(s.unique().tolist()) <= {0.0, 1.0} and s[:, 0].sum() == 0
    caches = list((tmp_path / "NMNIST").glob("hm2bp_*.npz"))
    assert len(caches) == 2
    again, _ = load_nmnist(tmp_path, stabilize=True)  # from the cache
    assert torch.equal(again.spikes(torch.arange(4)), s)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetFileError, match=r"N-MNIST files not found: expected .*NMNIST/Train/<digit>/\*\.bin"):
        load_nmnist(tmp_path)
    make_nmnist(tmp_path, per_class=1)
    bad = tmp_path / "NMNIST" / "Train" / "3" / "00000.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(DatasetFileError, match=f"corrupt N-MNIST event file {bad}"):
        load_nmnist(tmp_path)


def test_app_trains_on_nmnist_fixture(tmp_path):
    from test_app import SMOKE, _run

    make_nmnist(tmp_path / "data", per_class=4)
    _run(["experiment=nmnist_mlp", f"data_dir={tmp_path / 'data'}", *SMOKE, "trainer.batch_size=8",
          "trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=none", f"output_root={tmp_path / 'out'}"],
         tmp_path)
    assert (run_dir(tmp_path / "out", "nmnist_mlp") / "metrics.json").exists()


def test_stabilize_is_the_authors():
    """stabilize.m on hand-made events, in 0-based coordinates: shifts without offset, halves rounded away from zero
    (tonic rounds them to even), events leaving 1..34 (1-based) dropped after rounding."""
    from hm2bp.data.nmnist import stabilize

    dtype = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
    events = np.array([(10, 5, 0, 1),          # no shift at t = 0
                       (10, 5, 52_500, 0),     # half of saccade 1: x₁ 11 − 1.75 = 9.25 → 9; y₁ 6 − 3.5 = 2.5 → 3
                       (10, 5, 105_000, 1),    # end of saccade 1: y₁ 6 − 7 = −1 → dropped
                       (10, 9, 157_500, 1),    # saccade 2: x₁ 11 − 3.5 − 1.75 = 5.75 → 6; y₁ 10 − 7 + 3.5 = 6.5 → 7
                       (0, 20, 210_001, 0),    # saccade 3: x₁ 1 − 7 + ~0 → dropped
                       (33, 33, 300_000, 1),   # saccade 3: x₁ 34 − 7 + 6 = 33; y unchanged 34
                       (33, 33, 0, 0)],        # x₁ = y₁ = 34: kept at the border
                      dtype=dtype)
    out = stabilize(events)
    assert [(int(e["x"]), int(e["y"]), int(e["t"])) for e in out] == [
        (10, 5, 0), (8, 2, 52_500), (5, 6, 157_500), (32, 33, 300_000), (33, 33, 0)]
    assert out.dtype == dtype


def test_event_split_rasters_each_sample_in_its_own_row():
    """``spikes`` (CPU) and the ``events`` a GPU rasters against the literal definition, samples picked out of
    order: row r holds exactly sample idx[r]'s (time, channel) events."""
    from hm2bp.data.events import EventSplit, raster

    rng = np.random.default_rng(0)
    steps, n = 9, 7
    samples = []
    for count in (5, 0, 12, 3):  # an empty sample too
        key = rng.choice(steps * n, count, replace=False)
        samples.append(((key // n).astype(np.int32), (key % n).astype(np.int32)))
    split = EventSplit.from_samples(samples, [1, 2, 3, 4], steps, n)
    idx = torch.tensor([2, 0, 1, 2, 3])
    want = torch.zeros(len(idx), steps, n)
    for r, k in enumerate(idx.tolist()):
        want[r, samples[k][0], samples[k][1]] = 1.0
    assert torch.equal(split.spikes(idx), want)
    assert torch.equal(raster(split.events(idx), torch.full((steps, len(idx), n), 5.0)), want)  # every old value gone
