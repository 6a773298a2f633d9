"""An offline spoken-letter corpus spoken by eSpeak NG, for running the TI46 path anywhere.

``generate(root)`` speaks the 26 letter names with several voices, speeds and pitches into the generic layout of
:mod:`hm2bp.data.speech` (``<root>/{train,test}/<letter>/<voice>_<speed>_<pitch>.wav``). Train and test use
disjoint voices, so the task is speaker-independent like TI46. The same Lyon-ear + BSA front end then encodes it.

The speech comes from libespeak-ng and its voice data as the ``espeakng-loader`` wheel ships them, driven through
``ctypes`` (no system package): the same parameters give the same samples, so the corpus is deterministic.
"""

from __future__ import annotations

import ctypes
import functools
import wave
from pathlib import Path

from hm2bp.data.idx import DatasetFileError

LETTERS = {"a": "ay", "b": "bee", "c": "see", "d": "dee", "e": "ee", "f": "eff", "g": "jee", "h": "aitch",
           "i": "eye", "j": "jay", "k": "kay", "l": "ell", "m": "em", "n": "en", "o": "oh", "p": "pee", "q": "cue",
           "r": "are", "s": "ess", "t": "tee", "u": "you", "v": "vee", "w": "double you", "x": "ex", "y": "why",
           "z": "zed"}
TRAIN_VOICES = ["en", "en-us", "en-gb-scotland", "en+f2", "en-us+m3", "en+f4"]
TEST_VOICES = ["en-029", "en-us+f3"]
SPEEDS = (130, 170)  # words per minute
PITCHES = (35, 65)  # espeak-ng pitch, 0–99


_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _RATE, _PITCH = 2, 1, 1, 3  # from speak_lib.h
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """libespeak-ng, initialised once per process for synchronous synthesis into memory."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise DatasetFileError("the synthetic speech corpus needs the espeakng-loader wheel (`pip install "
                                   "espeakng-loader`, a declared dependency of hm2bp), or point data_dir at an "
                                   "existing corpus") from err
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()  # the folder holding espeak-ng-data
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
        if self.rate <= 0:
            raise DatasetFileError(f"libespeak-ng failed to initialise with its data in {data_parent.decode()}")
        self._chunks: list[bytes] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the library may call it
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, samples, count: int, _events) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(samples, 2 * count))
        return 0  # continue

    def speak(self, text: str, voice: str, speed: int, pitch: int) -> bytes:
        """16-bit mono PCM samples at :attr:`rate` of ``text`` in ``voice`` (``en``, ``en-us+f3``, …)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(speed), 0)
        self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self._chunks = []
        encoded = text.encode()
        status = self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if status != 0 or not self._chunks:
            raise DatasetFileError(f"eSpeak NG could not speak {text!r} with voice {voice!r} (status {status})")
        return b"".join(self._chunks)


@functools.cache
def espeak() -> _Espeak:
    """The process's eSpeak NG (a clear :class:`DatasetFileError` if the wheel is missing)."""
    return _Espeak()


def _write_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm)


def generate(root: str | Path, words: dict[str, str] | None = None, train_voices: list[str] | None = None,
             test_voices: list[str] | None = None, speeds: tuple[int, ...] = SPEEDS,
             pitches: tuple[int, ...] = PITCHES) -> int:
    """Write the corpus under ``root`` (existing files are kept); returns the number of utterances."""
    tts = espeak()
    root = Path(root)
    words = words or LETTERS
    count = 0
    for split, voices in (("train", train_voices or TRAIN_VOICES), ("test", test_voices or TEST_VOICES)):
        for label, text in words.items():
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for voice in voices:
                for speed in speeds:
                    for pitch in pitches:
                        out = folder / f"{voice.replace('+', '_')}_{speed}_{pitch}.wav"
                        count += 1
                        if out.exists():
                            continue
                        tmp = out.with_name(out.name + ".part")  # not *.wav until complete
                        _write_wav(tmp, tts.speak(text, voice, speed, pitch), tts.rate)
                        tmp.replace(out)
    return count
