"""An offline spoken-letter corpus made with Debian's ``espeak-ng``, for running the TI46 path anywhere.

``generate(root)`` speaks the 26 letter names with several voices, speeds and pitches into the generic layout of
:mod:`hm2bp.data.speech` (``<root>/{train,test}/<letter>/<voice>_<speed>_<pitch>.wav``). Train and test use
disjoint voices, so the task is speaker-independent like TI46. The same Lyon-ear + BSA front end then encodes it.
"""

from __future__ import annotations

import shutil
import subprocess
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


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DatasetFileError("the synthetic speech corpus needs espeak-ng: install it (Debian/Ubuntu: "
                               "`apt-get install espeak-ng`) or point data_dir at an existing corpus")
    return exe


def generate(root: str | Path, words: dict[str, str] | None = None, train_voices: list[str] | None = None,
             test_voices: list[str] | None = None, speeds: tuple[int, ...] = SPEEDS,
             pitches: tuple[int, ...] = PITCHES) -> int:
    """Write the corpus under ``root`` (existing files are kept); returns the number of utterances."""
    exe = espeak()
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
                        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(tmp), text],
                                       check=True, capture_output=True)
                        tmp.replace(out)
    return count
