"""The espeak-ng spoken-letter corpus and the speech path end to end."""

from __future__ import annotations

import json

import torch

from conftest import run_dir
from hm2bp.data.speech import CHANNELS, load_speech
from hm2bp.data.synth_speech import generate

WORDS = {"a": "ay", "b": "bee", "c": "see"}


def test_generate_is_speaker_independent_and_idempotent(tmp_path):
    n = generate(tmp_path, words=WORDS, train_voices=["en", "en+f2"], test_voices=["en-us"], speeds=(150,),
                 pitches=(50,))
    assert n == 9
    train_voices = {p.stem.rsplit("_", 2)[0] for p in (tmp_path / "train").rglob("*.wav")}
    test_voices = {p.stem.rsplit("_", 2)[0] for p in (tmp_path / "test").rglob("*.wav")}
    assert train_voices == {"en", "en_f2"} and test_voices == {"en-us"}  # <voice>_<speed>_<pitch>.wav
    mtimes = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav"))
    generate(tmp_path, words=WORDS, train_voices=["en", "en+f2"], test_voices=["en-us"], speeds=(150,), pitches=(50,))
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")) == mtimes
    train, test = load_speech(tmp_path)
    assert len(train) == 6 and len(test) == 3 and sorted(set(train.labels.tolist())) == [0, 1, 2]
    s = train.spikes(torch.arange(6))
    assert s.shape == (6, 1000, CHANNELS) and s.sum(dim=(1, 2)).min() > 100  # every utterance spikes


def test_speech_experiment_trains_end_to_end(tmp_path):
    from test_app import SMOKE, _run

    generate(tmp_path / "data" / "spoken_synth", words=WORDS, train_voices=["en", "en+f2"], test_voices=["en-us"],
             speeds=(150,), pitches=(50,))
    _run(["experiment=spoken_synth_mlp", f"data_dir={tmp_path / 'data'}", *SMOKE, "trainer.batch_size=3",
          "trainer.max_epochs=2", "logger=none", f"output_root={tmp_path / 'out'}"], tmp_path)
    metrics = json.loads((run_dir(tmp_path / "out", "spoken_synth_mlp") / "metrics.json").read_text())
    assert metrics["dataset"] == "spoken_synth" and metrics["epochs"] == 2
