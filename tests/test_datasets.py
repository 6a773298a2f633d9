"""`dataset=<name>` alone brings its network and training settings, and trains on files in the dataset's format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from appconf import compose_app
from conftest import nonempty
from hm2bp.app.config import validate
from hm2bp.app.identity import run_config
from hm2bp.data.registry import DATASETS

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
DATASET_CONFIGS = nonempty(sorted(p.stem for p in (CONF / "dataset").glob("*.yaml")), "dataset configs")
# dataset → (network it brings, its paper row where there is one)
BRINGS = {"digits": ("mlp64-800-10", None), "mnist": ("mlp784-800-10", "mnist_mlp"),
          "mnist5k": ("mlp784-800-10", None),
          "emnist": ("mlp784-400-400-47", "emnist_mlp_400_400"), "nmnist": ("mlp2312-800-10", "nmnist_mlp"),
          "ti46_alpha": ("mlp78-800-26", "ti46_alpha_mlp"), "ti46_digits": ("mlp78-800-10", None),
          "spoken_synth": ("mlp78-400-26", None)}
ONE_STEP = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            "trainer.accelerator=cpu", "trainer.progress_bar=false", "logger=none"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _speech_corpus(root: Path, n_words: int) -> None:
    from test_data_speech import tone, write_audio

    for split in ("train", "test"):
        for k in range(n_words):
            write_audio(root / split / f"w{k:02d}" / f"{split}.wav", tone(200 + 60 * k, seconds=0.2))


def make_fixture(name: str, data_dir: Path) -> None:
    """Files of dataset ``name`` in its real format under ``data_dir`` (digits needs none)."""
    from test_data_idx import make_emnist, make_mnist
    from test_data_nmnist import make_nmnist

    rng = np.random.default_rng(0)
    if name == "mnist":
        make_mnist(data_dir, n_train=20, n_test=10)
    elif name == "emnist":
        make_emnist(data_dir, rng.integers(0, 256, (47, 28, 28)), np.arange(47))
    elif name == "nmnist":
        make_nmnist(data_dir, per_class=1)
    elif name in ("ti46_alpha", "ti46_digits"):
        _speech_corpus(data_dir / name, DATASETS[name].n_classes)
    elif name == "spoken_synth":
        from hm2bp.data.synth_speech import LETTERS, generate

        generate(data_dir / "spoken_synth", words=LETTERS, train_voices=["en"], test_voices=["en-us"],
                 speeds=(170,), pitches=(50,))


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_every_dataset_config_is_covered():
    assert set(DATASET_CONFIGS) == set(BRINGS) == set(DATASETS)


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_dataset_alone_composes_validates_and_brings_its_network(name):
    cfg = compose_app([f"dataset={name}"])
    validate(cfg)
    network, row = BRINGS[name]
    assert cfg.model.name == network and cfg.model.sizes[-1] == DATASETS[name].n_classes
    if row is not None:  # the dataset alone trains exactly its paper row (the name aside)
        assert run_config(cfg) == run_config(compose_app([f"experiment={row}"]))


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_dataset_alone_trains_one_step_on_fixture_files(tmp_path, name):
    make_fixture(name, tmp_path / "data")
    _run([f"dataset={name}", f"data_dir={tmp_path / 'data'}", *ONE_STEP, f"output_root={tmp_path / 'out'}"], tmp_path)
    [metrics] = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("metrics.json")]
    assert metrics["dataset"] == name and metrics["model"] == BRINGS[name][0] and metrics["epochs"] == 1


def test_explicit_model_still_wins_and_contradicting_sizes_fail_clearly(tmp_path):
    assert compose_app(["dataset=mnist", "model=mnist_cnn"]).model.name == "cnn15c5-p2-40c5-p2-300-10"
    assert compose_app(["experiment=emnist_mlp_200_200"]).model.name == "mlp784-200-200-47"
    proc = _run(["dataset=mnist", "model=digits_mlp", f"output_root={tmp_path}"], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: model.sizes[0]=64 does not match dataset 'mnist', which has 784 inputs"


def test_missing_files_give_the_loaders_message(tmp_path):
    proc = _run(["dataset=emnist", f"data_dir={tmp_path / 'nothing'}", f"output_root={tmp_path}"], tmp_path,
                check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: EMNIST-balanced files not found in {tmp_path / 'nothing' / 'emnist'}")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_design_card_command_trains_the_emnist_row_on_fixture_files(tmp_path):
    """`python src/run.py -m seed=0,1,2,3,4 dataset=emnist`, on EMNIST-format files, cut to one step per seed."""
    make_fixture("emnist", tmp_path / "data")
    _run(["-m", "seed=0,1,2,3,4", "dataset=emnist", f"data_dir={tmp_path / 'data'}", *ONE_STEP,
          f"output_root={tmp_path / 'out'}"], tmp_path)
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").rglob("metrics.json"))]
    assert sorted(r["seed"] for r in runs) == [0, 1, 2, 3, 4]
    assert {r["model"] for r in runs} == {"mlp784-400-400-47"} and len({r["fingerprint"] for r in runs}) == 1
    assert all(r["config"]["model"]["sizes"] == [784, 400, 400, 47] for r in runs)
    assert all(r["config"]["trainer"]["batch_size"] == 1 for r in runs)  # the paper's protocol


@pytest.mark.parametrize("name, augment", [("digits", None), ("mnist", None), ("nmnist", None),
                                           ("digits", {"scale": 0.1, "rotation": 10.0})],
                         ids=["digits", "mnist-bytes", "nmnist-events", "digits-augmented"])
def test_device_encoding_gives_the_cpu_batches(tmp_path, name, augment):
    """The loader sends pixels (bytes where exact) or events as (time, row, channel) triples and the module-side
    encoding reproduces the trains of the CPU path exactly, for training (shuffled, augmented) and test batches."""
    from hm2bp.app.data import PixelBatch, SpikeData
    from hm2bp.neuron import marked

    make_fixture(name, tmp_path)
    steps = 540 if name == "nmnist" else 60
    both = [SpikeData(name, tmp_path, steps, 8, seed=1, augment=augment, device_encoding=flag)
            for flag in (False, True)]
    for data in both:
        data.setup()
    if name != "nmnist":  # the CPU path caches the test trains; the device path draws none on the CPU
        assert both[0].test._trains is not None and both[1].test._trains is None and both[1].train._trains is None
    for loader in ("train_dataloader", "val_dataloader"):
        cpu, dev = (next(iter(getattr(d, loader)())) for d in both)
        assert isinstance(dev, PixelBatch) and dev.inputs.dim() == 2
        if name == "mnist":
            assert dev.inputs.dtype == torch.uint8
        if name == "nmnist":  # one triple per event, not a raster
            assert dev.inputs.dtype == torch.int32 and dev.inputs.shape == (3, int(cpu[0].sum()))
        encoded = both[1].on_after_batch_transfer(dev, 0)
        assert all(torch.equal(a, b) for a, b in zip(cpu, encoded, strict=True))
        assert encoded[0].stride() == cpu[0].stride() and marked(encoded[0])  # time-major, known 0/1
        assert cpu[0].sum() > 0
