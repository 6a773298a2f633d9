"""N-MNIST through tonic, binned into spike trains the way the authors prepared it (docs/algorithm.md §2).

Files: tonic's layout, ``<data_dir>/NMNIST/{Train,Test}/<digit>/*.bin`` (the unzipped ``train.zip``/``test.zip`` of
https://www.garrickorchard.com/datasets/n-mnist). Each event record is 5 bytes: x, y, (p << 7) | (t >> 16 & 127),
(t >> 8) & 255, t & 255, with t in µs.

Conversion (authors' ``nmnist/NMNIST_Converter.m`` + ``readData/readNMnistData.cpp``): channel ``x·34 + y`` for
ON events and ``+ 1156`` for OFF events (34×34×2 = 2312 inputs; the authors' ``(x−1)·34 + y`` with 1-based
coordinates), time bins of 600 µs with bin ``⌈t/600⌉`` → spike time ``bin + 1``, spikes at or after T = 540
dropped, several events of one channel in one bin collapse into one spike. Saccade stabilization is the authors'
(:func:`stabilize`: ``nmnist/stabilize.m`` and ``NMNIST_Converter.m:79-80``); tonic only reads the files (its own
``stabilize=True`` differs: it adds (+4, +2) offsets, crops unrounded coordinates and rounds half to even). The
binned trains are cached on disk (``.npz``) keyed by these parameters, so the ``.bin`` files are read once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from hm2bp.data.events import EventSplit
from hm2bp.data.idx import DatasetFileError

SENSOR = 34  # N-MNIST sensor is 34 × 34 pixels, 2 polarities
N_INPUTS = SENSOR * SENSOR * 2  # 2312
OFF_OFFSET = SENSOR * SENSOR  # polarity-2 (OFF) events add 1156 (docs/algorithm.md §2)
BIN_US = 600  # data dir 2312_600_stable: 600 µs bins (docs/algorithm.md §2)
STEPS = 540  # END_TIME of Config/NMnistConfig.txt (docs/algorithm.md §1)


def encode_events(events: list[tuple[int, int, int, int]] | np.ndarray) -> bytes:
    """N-MNIST's binary records of ``(x, y, polarity, t µs)`` events: 5 bytes each, ``x``, ``y``,
    ``(p << 7) | (t >> 16 & 127)``, ``(t >> 8) & 255``, ``t & 255`` (for fixtures and synthetic data)."""
    out = bytearray()
    for x, y, p, t in events:
        x, y, p, t = int(x), int(y), int(p), int(t)
        out += bytes([x, y, (p << 7) | ((t >> 16) & 127), (t >> 8) & 255, t & 255])
    return bytes(out)


def bin_events(events: np.ndarray, steps: int = STEPS, bin_us: int = BIN_US) -> tuple[np.ndarray, np.ndarray]:
    """``(times, channels)`` of the unique spikes of one sample from tonic's ``(x, y, t, p)`` events."""
    t = np.ceil(events["t"].astype(np.float64) / bin_us).astype(np.int64) + 1
    ch = events["x"].astype(np.int64) * SENSOR + events["y"].astype(np.int64) + OFF_OFFSET * (events["p"] > 0)
    inside = (t < steps) & (events["x"] >= 0) & (events["x"] < SENSOR) & (events["y"] >= 0) & (events["y"] < SENSOR)
    key = np.unique(t[inside] * N_INPUTS + ch[inside])
    return (key // N_INPUTS).astype(np.int32), (key % N_INPUTS).astype(np.int32)


SACCADE_US = 105_000.0  # each of the three saccades lasts 105 ms


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """MATLAB's ``round``: halves go away from zero (NumPy's ``round`` goes to even)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def stabilize(events: np.ndarray) -> np.ndarray:
    """The authors' saccade compensation on 0-based events (fields ``x, y, t, p``), returning the kept events.

    In the 1-based coordinates of the authors' reader (``x₁ = x + 1``), with ``S = 105 ms``, as ``stabilize.m``:
    ``t ≤ S``: ``x₁ − 3.5t/S``, ``y₁ − 7t/S``; ``S < t ≤ 2S``: ``x₁ − 3.5 − 3.5(t − S)/S``, ``y₁ − 7 + 7(t − S)/S``;
    ``t > 2S``: ``x₁ − 7 + 7(t − 2S)/S`` (``y`` unchanged). Then round half away from zero and drop events outside
    ``1..34`` on either axis (``stabilize.m`` drops ``< 1``, ``NMNIST_Converter.m:79-80`` drops ``> 34``); no
    offset is added.
    """
    t = events["t"].astype(np.float64)
    x = events["x"].astype(np.float64) + 1
    y = events["y"].astype(np.float64) + 1
    first, third = t <= SACCADE_US, t > 2 * SACCADE_US
    second = ~first & ~third
    x[first] = x[first] - 3.5 * t[first] / SACCADE_US
    y[first] = y[first] - 7 * t[first] / SACCADE_US
    x[second] = x[second] - 3.5 - 3.5 * (t[second] - SACCADE_US) / SACCADE_US
    y[second] = y[second] - 7 + 7 * (t[second] - SACCADE_US) / SACCADE_US
    x[third] = x[third] - 7 + 7 * (t[third] - 2 * SACCADE_US) / SACCADE_US
    x, y = _round_half_away(x), _round_half_away(y)
    keep = (x >= 1) & (y >= 1) & (x <= SENSOR) & (y <= SENSOR)
    out = events[keep].copy()
    out["x"], out["y"] = x[keep] - 1, y[keep] - 1
    return out


def _tonic_dataset(root: Path, train: bool, download: bool):
    import tonic

    folder = root / "NMNIST" / ("Train" if train else "Test")

    class NMNIST(tonic.datasets.NMNIST):  # same class name: tonic reads from <save_to>/NMNIST
        def _check_exists(self) -> bool:  # the unzipped folder is all we need
            return folder.is_dir() and any(folder.rglob("*.bin"))

        def download(self) -> None:
            if not download:
                raise DatasetFileError(
                    f"N-MNIST files not found: expected {folder}/<digit>/*.bin (the unzipped "
                    f"{'train' if train else 'test'}.zip of https://www.garrickorchard.com/datasets/n-mnist, "
                    f"tonic's layout). Put them there, or set dataset.download=true to let tonic fetch them.")
            super().download()

    return NMNIST(str(root), train=train, stabilize=False)  # tonic reads; the authors' stabilize() is ours


def _convert(root: Path, train: bool, stabilize_saccades: bool, download: bool, steps: int,
             bin_us: int) -> EventSplit:
    ds = _tonic_dataset(root, train, download)
    samples, labels = [], []
    for k in range(len(ds)):
        path = Path(ds.data[k])
        if path.stat().st_size % 5:
            raise DatasetFileError(f"corrupt N-MNIST event file {path}: {path.stat().st_size} bytes is not a whole "
                                   "number of 5-byte events (truncated?); replace it from the original archive")
        try:
            events, label = ds[k]
        except Exception as err:
            raise DatasetFileError(f"corrupt N-MNIST event file {path}: {type(err).__name__}: {err}") from err
        samples.append(bin_events(stabilize(events) if stabilize_saccades else events, steps, bin_us))
        labels.append(label)
    return EventSplit.from_samples(samples, labels, steps, N_INPUTS)


def load_nmnist(data_dir: str | Path, download: bool = False, stabilize: bool = True, steps: int = STEPS,
                bin_us: int = BIN_US) -> tuple[EventSplit, EventSplit]:
    """``(train, test)`` N-MNIST spike trains, converted once and cached under ``<data_dir>/NMNIST/``."""
    root = Path(data_dir)
    params = {"stabilize": stabilize, "steps": steps, "bin_us": bin_us, "format": 2}  # 2: the authors' stabilize
    tag = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    splits = []
    for train in (True, False):
        cache = root / "NMNIST" / f"hm2bp_{'train' if train else 'test'}_{tag}.npz"
        if cache.exists():
            split = EventSplit.load(cache, steps, N_INPUTS)
        else:
            split = _convert(root, train, stabilize, download, steps, bin_us)
            split.save(cache)
        splits.append(split)
    return splits[0], splits[1]
