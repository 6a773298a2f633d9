"""TI46 front end (soundfile → Lyon ear → BSA) on fixture audio written as WAV and NIST SPHERE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hm2bp.data.idx import DatasetFileError
from hm2bp.data.registry import get_dataset
from hm2bp.data.speech import CHANNELS, bsa_encode, bsa_filter, encode_audio, load_speech, read_audio


def tone(freq: float, seconds: float = 0.4, rate: int = 12_500) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t) * np.hanning(len(t))


def write_audio(path: Path, signal: np.ndarray, rate: int = 12_500, endian: str = "LITTLE") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "NIST" if path.suffix.lower() == ".sph" else "WAV"
    sf.write(str(path), signal, rate, format=fmt, subtype="PCM_16", endian=endian)
    return path


def test_bsa_finds_a_planted_kernel():
    h = bsa_filter()
    assert h.shape == (24,) and abs(h.sum() - 1) < 1e-12 and h.argmax() == 12
    signal = np.zeros((80, 2))
    signal[30:54, 0] += 3 * h  # three stacked kernels at step 30 on channel 0; nothing on channel 1
    spikes = bsa_encode(signal, h, threshold=0.6)
    assert spikes[:, 1].sum() == 0
    times = np.nonzero(spikes[:, 0])[0]
    assert len(times) == 3 and set(times) <= set(range(24, 37))  # ~one spike per unit of kernel mass, near 30


def test_bsa_tests_every_step_into_a_zero_tail_with_a_strict_threshold():
    """The authors' rule (readSpeechData.cpp:12-53): a kernel planted in the last steps is still found (its window
    reaches into the appended zeros), and an exact tie does not fire."""
    h = bsa_filter()
    signal = np.zeros((60, 1))
    signal[-14:, 0] = 3 * h[:14]  # energy only in the last 14 steps: the window from there reaches past the end
    times = np.nonzero(bsa_encode(signal, h)[:, 0])[0]
    assert len(times) > 0 and times.min() > 60 - 24  # a step whose window does not fit inside the signal
    tie = bsa_encode(np.full((1, 1), 0.25), np.array([0.5, 0.5]), threshold=0.0)  # |0.25−0.5|+0.5 = 0.25+0.25
    assert tie.sum() == 0


def test_encoding_keeps_spikes_of_the_last_steps():
    """The held signal is encoded whole and cut to T afterwards: spikes in the last ~23 steps before T survive."""
    steps = 400
    t, _ = encode_audio(tone(600, seconds=0.8), 12_500, steps=steps)
    assert t.max() < steps and (t > steps - 23).any()  # the old rule could not fire after T − 23


def test_sphere_both_byte_orders_and_wav_agree(tmp_path):
    sig = tone(700)
    little = read_audio(write_audio(tmp_path / "a.sph", sig, endian="LITTLE"))
    big = read_audio(write_audio(tmp_path / "b.sph", sig, endian="BIG"))
    wav = read_audio(write_audio(tmp_path / "c.wav", sig))
    assert little[1] == big[1] == wav[1] == 12_500
    np.testing.assert_array_equal(little[0], big[0])
    np.testing.assert_array_equal(little[0], wav[0])


def test_encoding_shapes_rates_and_resampling():
    t, c = encode_audio(tone(500), 12_500, steps=1000)
    assert len(t) > 20 and t.min() >= 1 and t.max() < 1000 and c.max() < CHANNELS
    t2, _ = encode_audio(tone(500, rate=22_050), 22_050, steps=1000)  # resampled to 12.5 kHz first
    assert abs(len(t2) - len(t)) < 0.2 * len(t)
    silent_t, _ = encode_audio(np.zeros(5000), 12_500, steps=1000)
    assert len(silent_t) == 0


def _corpus(root: Path, layout: str) -> None:
    for split in ("train", "test"):
        for k, word in enumerate(["a", "b", "c"]):
            sig = tone(300 + 400 * k)
            if layout == "generic":
                write_audio(root / split / word / f"{split}_{word}.wav", sig)
            else:  # LDC: <split>/<speaker>/<word><speaker>set<n>.sph
                write_audio(root / split / "f1" / f"0{k}f1set0.sph", sig, endian="BIG")


@pytest.mark.parametrize("layout", ["generic", "ldc"])
def test_layouts_labels_and_cache(tmp_path, layout):
    _corpus(tmp_path, layout)
    train, test = load_speech(tmp_path, steps=1000)
    assert len(train) == 3 and len(test) == 3 and train.labels.tolist() == [0, 1, 2]
    spikes = train.spikes(torch.arange(3))
    assert spikes.shape == (3, 1000, CHANNELS) and spikes.sum() > 0 and spikes[:, 0].sum() == 0
    assert len(list(tmp_path.glob("hm2bp_cache_*.npz"))) == 2
    again, _ = load_speech(tmp_path, steps=1000)
    assert torch.equal(again.spikes(torch.arange(3)), spikes)


def test_missing_corrupt_and_shorten_files(tmp_path):
    with pytest.raises(DatasetFileError, match=r"speech split folder .*train not found"):
        load_speech(tmp_path)
    _corpus(tmp_path, "generic")
    bad = tmp_path / "train" / "a" / "train_a.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(DatasetFileError, match=f"corrupt audio file {bad}"):
        load_speech(tmp_path)
    shorten = tmp_path / "x.sph"
    shorten.write_bytes(b"NIST_1A\n   1024\nsample_coding -s26 pcm,embedded-shorten-v2.00\nend_head\n" + b"\0" * 1000)
    with pytest.raises(DatasetFileError, match=r"shorten-compressed NIST SPHERE.*sph2pipe"):
        read_audio(shorten)


def test_registry_checks_class_count_and_refuses_download(tmp_path):
    _corpus(tmp_path / "ti46_digits", "generic")
    info = get_dataset("ti46_digits")
    with pytest.raises(DatasetFileError, match="holds 3 word classes, expected 10"):
        info.load(tmp_path, False)
    with pytest.raises(DatasetFileError, match="LDC"):
        info.load(tmp_path, True)
