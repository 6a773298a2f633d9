"""Spoken-word front end for TI46: audio → Lyon's passive ear → BSA spike trains (docs/algorithm.md §2).

Pipeline (the authors' lab script ``TI46_Lyon_ear.m`` in stonezwr/ST-RSBP, and ``readSpeechData.cpp``):

1. read WAV or NIST SPHERE with ``soundfile`` (shorten-compressed SPHERE cannot be read: convert it first with
   ``sph2pipe -f wav``), mix to mono, resample to 12.5 kHz (scipy);
2. Lyon's passive ear model (``lyon`` package), decimation 200 → 78 cochlear channels at 62.5 frames/s;
3. BSA (Ben's Spiker Algorithm) per channel, as ``readSpeechData.cpp:12-53``: every frame held for 10 steps
   (1 step = 1.6 ms), the whole held signal scaled by 2e3 and followed by 24 zeros, a 24-tap FIR
   ``h[i] ∝ exp(−(i − 12)²/25)`` normalised to sum 1, threshold 0.6 with a strict ``<``, a test at every step of
   the held signal (its window reaching into the zeros at the end); a spike found at step ``i`` is placed at
   ``i + 1`` if it is < T. (Before this version the signal was cut to T first and tested with ``≤``, which lost
   the spikes of the last ~23 steps: cached trains of that version are not reused.)

Supported layouts under a root folder (files ``*.wav`` or ``*.sph``, any case):

* generic: ``<root>/{train,test}/<label>/<anything>.{wav,sph}``;
* LDC TI46 (``ti46/ti_alpha`` or ``ti46/ti20``): ``<root>/{train,test}/<speaker>/<word><speaker>set<n>.sph``, e.g.
  ``train/f1/00f1set0.sph`` (word ``00``, speaker ``f1``); the label is the word code.

Encoded trains are cached in ``<root>/hm2bp_cache_<hash>.npz``, keyed by every parameter above and the file list.
"""

from __future__ import annotations

import hashlib
import json
import re
from math import gcd
from pathlib import Path

import numpy as np

from hm2bp.data.events import EventSplit
from hm2bp.data.idx import DatasetFileError

# Provenance: docs/algorithm.md §2 [CODE readData/readSpeechData.cpp:12-160; SRC2 TI46_Lyon_ear.m].
LYON_RATE = 12_500  # Hz, TI46's own sampling rate
LYON_DECIMATION = 200  # 62.5 frames/s
CHANNELS = 78  # cochlear channels of the passive ear at 12.5 kHz
HOLD_STEPS = 10  # each analog frame held for 10 time steps (1.6 ms per step)
BSA_SCALE = 2e3
BSA_TAPS = 24
BSA_THRESHOLD = 0.6
STEPS = 1000  # END_TIME of Config/SpokenLetterConfig.txt
LDC_NAME = re.compile(r"^(?P<word>[a-z0-9_]+?)(?P<speaker>[fm]\d)set\d+$", re.IGNORECASE)
AUDIO_SUFFIXES = (".wav", ".sph")


def bsa_filter(taps: int = BSA_TAPS) -> np.ndarray:
    """``h[i] ∝ exp(−(i − taps/2)²/25)``, normalised to sum 1."""
    i = np.arange(taps)
    h = np.exp(-((i - taps // 2) ** 2) / 25.0)
    return h / h.sum()


def bsa_encode(signal: np.ndarray, h: np.ndarray, threshold: float = BSA_THRESHOLD) -> np.ndarray:
    """Ben's Spiker Algorithm on ``signal (n, C)``, all channels at once; returns 0/1 ``(n, C)`` at detection steps.

    The signal is followed by ``L = len(h)`` zeros; at every step ``i < n`` a spike is emitted where
    ``Σ_j |s[i+j] − h[j]| < Σ_j |s[i+j]| − threshold`` (strict, as the authors), and ``h`` is then subtracted from
    ``s[i : i+L]``.
    """
    n, L = signal.shape[0], len(h)
    s = np.zeros((n + L, *signal.shape[1:]), dtype=np.float64)
    s[:n] = signal
    out = np.zeros((n, *signal.shape[1:]), dtype=np.float64)
    hh = h[:, None]
    for i in range(n):
        window = s[i:i + L]
        err_spike = np.abs(window - hh).sum(0)
        err_none = np.abs(window).sum(0)
        fire = err_spike < err_none - threshold
        if fire.any():
            window[:, fire] -= hh
            out[i, fire] = 1.0
    return out


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float64 samples and the sampling rate; clear errors for shorten SPHERE and unreadable files."""
    import soundfile as sf

    head = path.read_bytes()[:1024]
    if head.startswith(b"NIST_1A") and b"shorten" in head:
        raise DatasetFileError(f"{path} is shorten-compressed NIST SPHERE, which soundfile cannot read; convert it "
                               f"first, e.g. `sph2pipe -f wav {path.name} {path.stem}.wav`")
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as err:
        raise DatasetFileError(f"corrupt audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise DatasetFileError(f"corrupt audio file {path}: no samples")
    return data.mean(1), int(rate)


def encode_audio(signal: np.ndarray, rate: int, steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """``(times, channels)`` of the spikes of one utterance (Lyon ear + BSA, see the module docstring)."""
    from lyon.calc import LyonCalc
    from scipy.signal import resample_poly

    if rate != LYON_RATE:
        g = gcd(rate, LYON_RATE)
        signal = resample_poly(signal, LYON_RATE // g, rate // g)
    frames = LyonCalc().lyon_passive_ear(np.ascontiguousarray(signal, dtype=np.float64), LYON_RATE,
                                         LYON_DECIMATION)  # (n_frames, 78)
    analog = np.repeat(frames, HOLD_STEPS, axis=0) * BSA_SCALE  # the whole held signal: spikes past T are dropped
    spikes = bsa_encode(analog, bsa_filter())
    t, c = np.nonzero(spikes)
    t = t + 1  # a spike found at step i is placed at i + 1
    keep = t < steps
    return t[keep].astype(np.int32), c[keep].astype(np.int32)


def scan_split(root: Path, split: str) -> list[tuple[Path, str]]:
    """``(file, label)`` pairs of one split in either supported layout (see the module docstring)."""
    folder = root / split
    if not folder.is_dir():
        raise DatasetFileError(f"speech split folder {folder} not found; expected {root}/{{train,test}}/<label or "
                               f"speaker>/*.wav|*.sph (see hm2bp.data.speech)")
    items = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        m = LDC_NAME.match(path.stem)
        ldc = m is not None and path.parent.name.lower() == m.group("speaker").lower()
        items.append((path, m.group("word").lower() if ldc else path.parent.name))
    if not items:
        raise DatasetFileError(f"no .wav or .sph files under {folder}")
    return items


def load_speech(root: str | Path, steps: int = STEPS, classes: list[str] | None = None) -> tuple[EventSplit, ...]:
    """``(train, test)`` spike trains of a speech corpus; labels index ``classes`` (default: sorted labels found)."""
    root = Path(root)
    files = {split: scan_split(root, split) for split in ("train", "test")}
    names = classes or sorted({label for items in files.values() for _, label in items})
    index = {name: k for k, name in enumerate(names)}
    params = {"steps": steps, "rate": LYON_RATE, "decimation": LYON_DECIMATION, "hold": HOLD_STEPS,
              "scale": BSA_SCALE, "taps": BSA_TAPS, "threshold": BSA_THRESHOLD, "classes": names,
              "files": {s: [(str(p.relative_to(root)), p.stat().st_size) for p, _ in items]
                        for s, items in files.items()}, "format": 2}  # 2: the authors' BSA tail
    tag = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    out = []
    for split, items in files.items():
        cache = root / f"hm2bp_cache_{split}_{tag}.npz"
        if cache.exists():
            out.append(EventSplit.load(cache, steps, CHANNELS))
            continue
        samples, labels = [], []
        for path, label in items:
            if label not in index:
                raise DatasetFileError(f"{path}: label {label!r} is not one of the classes {names}")
            samples.append(encode_audio(*read_audio(path), steps))
            labels.append(index[label])
        split_obj = EventSplit.from_samples(samples, labels, steps, CHANNELS)
        split_obj.save(cache)
        out.append(split_obj)
    return out[0], out[1]
