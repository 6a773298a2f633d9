"""The DVC pipeline (dvc.yaml, params.yaml, profiles/) and the prepare CLI behind its prepare stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import hm2bp.app.config  # noqa: F401  (registers what the configs compose: the engine defaults, the run-dir resolver)
from conftest import trained
from hm2bp.data.idx import DatasetFileError, load_mnist
from hm2bp.paper import PROTOCOL

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
# One training batch of 32 and one test batch per epoch, 1 epoch: the pipeline's mechanics, not its accuracy.
TINY = ("trainer.max_epochs=1 trainer.limit_train_batches=1 trainer.limit_val_batches=1 trainer.batch_size=32 "
        "trainer.progress_bar=false logger=csv")


def _profile(name: str, folder: Path) -> str:
    """params.yaml as `dvc exp run -S profile=<name>` composes it (DVC's own function)."""
    from dvc.utils.hydra import compose_and_dump

    out = folder / f"params-{name}.yaml"
    compose_and_dump(out, str(ROOT / "profiles"), None, "params", str(ROOT), [f"profile={name}"])
    return out.read_text()


def test_params_yaml_is_the_composed_paper_profile_and_dvc_config_matches(tmp_path):
    """`dvc exp run` recomposes params.yaml from profiles/: the committed file must be exactly that (paper)."""
    assert (ROOT / "params.yaml").read_text() == _profile("paper", tmp_path)
    config = (ROOT / ".dvc" / "config").read_text()
    assert "analytics = false" in config
    assert "config_dir = profiles" in config and "config_name = params" in config
    assert {"/cache", "/tmp"} <= set((ROOT / ".dvc" / ".gitignore").read_text().split())


@pytest.mark.parametrize("profile", ["paper", "cpu", "compare"])
def test_profile_experiments_compose(profile, tmp_path):
    from hm2bp.app.config import validate
    from hm2bp.metrics import rule_of

    params = yaml.safe_load(_profile(profile, tmp_path))
    assert params["profile"] == profile
    assert params["seeds"] == ([0, 1, 2] if profile == "compare" else [0, 1, 2, 3, 4])
    assert params["out_dir"] == f"outputs/dvc/{profile}"
    rules = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in params["experiments"]:
            cfg = compose(config_name="config",
                          overrides=[f"experiment={name}", *params["overrides"].split()])
            validate(cfg)
            assert cfg.experiment_name == name.removesuffix("_bptt")
            rules[name] = rule_of(OmegaConf.to_container(cfg))
    if profile == "paper":
        assert set(params["experiments"]) == set(PROTOCOL)
    if profile == "compare":  # every row by both rules, at equal epochs
        assert rules == {name: "bptt" if name.endswith("_bptt") else "hm2bp" for name in params["experiments"]}
        assert {n.removesuffix("_bptt") for n in rules} == {"digits_mlp", "mnist5k_mlp"}


def test_paper_protocol_matches_the_presets():
    """The compute estimate's epochs are the presets' epochs."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name, protocol in PROTOCOL.items():
            assert compose(config_name="config", overrides=[f"experiment={name}"]).trainer.max_epochs \
                == protocol.epochs, name


def test_prepare_fails_with_the_loaders_message_and_writes_nothing(tmp_path):
    with pytest.raises(DatasetFileError) as err:
        load_mnist(tmp_path, False)
    out = tmp_path / "prepared.json"
    proc = subprocess.run([sys.executable, "-m", "hm2bp.app.prepare", "mnist_mlp", "--out", str(out),
                           f"data_dir={tmp_path}"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"prepare mnist_mlp: {err.value}"
    assert "Traceback" not in proc.stderr and not out.exists()


def test_prepare_manifest_is_deterministic(tmp_path):
    from hm2bp.app.prepare import main

    assert main(["digits_mlp", "--out", str(tmp_path / "a.json")]) == 0
    assert main(["digits_mlp", "--out", str(tmp_path / "b.json")]) == 0
    manifest = json.loads((tmp_path / "a.json").read_text())
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert manifest["dataset"] == "digits" and (manifest["n_train"], manifest["n_test"]) == (1437, 360)
    assert len(manifest["sha256"]) == 64


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=ENV, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def _write_params(repo: Path, experiments: list[str], seeds: list[int], overrides: str = TINY) -> None:
    params = {"seeds": seeds, "data_dir": str(repo / "data"), "out_dir": "outputs/dvc/tiny", "overrides": overrides,
              "profile": "tiny", "experiments": experiments}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding the project's src/, conf/ and dvc.yaml."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", repo / "src", ignore=ignore)
    shutil.copytree(ROOT / "conf", repo / "conf", ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    return repo


@pytest.mark.slow  # ~50 s
def test_tiny_pipeline_missing_dataset_keeps_going_then_aggregates(tmp_path):
    """The repo's dvc.yaml on a tiny profile: digits trains (2 seeds) while MNIST's prepare fails with the loader's
    message; then the digits-only pipeline reuses both runs and aggregates them."""
    repo = _repo(tmp_path)
    _write_params(repo, ["digits_mlp", "mnist_mlp"], [0, 1])
    proc = _dvc(repo, "repro", "--keep-going", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"prepare mnist_mlp: MNIST files not found in {repo / 'data' / 'mnist'}" in log
    out = repo / "outputs" / "dvc" / "tiny"
    runs = [json.loads((out / "runs" / "digits_mlp" / f"seed{k}" / "metrics.json").read_text()) for k in (0, 1)]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["epochs"] == 1 for r in runs)
    assert not (out / "runs" / "mnist_mlp").exists() and not (out / "report").exists()
    stamps = [(out / "runs" / "digits_mlp" / f"seed{k}" / "metrics.json").stat().st_mtime_ns for k in (0, 1)]

    _write_params(repo, ["digits_mlp"], [0, 1])
    proc = _dvc(repo, "repro")
    assert "Stage 'train@digits_mlp-0' didn't change, skipping" in proc.stdout
    assert stamps == [(out / "runs" / "digits_mlp" / f"seed{k}" / "metrics.json").stat().st_mtime_ns for k in (0, 1)]
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert list(summary) == ["digits_mlp"] and summary["digits_mlp"]["seeds"] == [0, 1]
    assert summary["digits_mlp"]["final_mean"] == pytest.approx(sum(100 * r["test_acc"] for r in runs) / 2)
    metrics = json.loads(_dvc(repo, "metrics", "show", "--json").stdout)
    assert json.dumps(metrics).count("best_of_best") == 1
    curve = (out / "report" / "curves" / "digits_mlp.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,test_acc,test_acc_std") and len(curve) == 2
    plots = json.loads(_dvc(repo, "plots", "show", "--json").stdout)["data"]
    assert any("curves" in key for key in plots) and any("summary.png" in key for key in plots)
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {"prepare@digits_mlp": ["always changed"]}


def test_prepare_manifest_sees_one_changed_byte(tmp_path):
    """The manifest's sha256 covers the data: one pixel byte changed in one uncompressed IDX file changes it."""
    from hm2bp.app.prepare import main
    from test_data_idx import make_mnist

    make_mnist(tmp_path / "data", n_train=20, n_test=10, compress=False)
    assert main(["mnist_mlp", "--out", str(tmp_path / "a.json"), f"data_dir={tmp_path / 'data'}"]) == 0
    images = tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    raw[-1] = (raw[-1] + 1) % 256  # the last pixel of the last test image
    images.write_bytes(bytes(raw))
    for cache in (tmp_path / "data").rglob("*.npz"):
        cache.unlink()
    assert main(["mnist_mlp", "--out", str(tmp_path / "b.json"), f"data_dir={tmp_path / 'data'}"]) == 0
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "ab")
    assert a["sha256"] != b["sha256"] and {**a, "sha256": ""} == {**b, "sha256": ""}


def _history(folder: Path, with_time: bool = False) -> list[dict]:
    rows = json.loads((folder / "history.json").read_text())
    return rows if with_time else trained(rows)


def test_killed_dvc_repro_resumes_the_seed_then_skips_it_and_a_changed_config_retrains(tmp_path):
    import torch

    repo = _repo(tmp_path)
    long = ("trainer.max_epochs=12 trainer.limit_train_batches=12 trainer.limit_val_batches=1 "
            "trainer.batch_size=32 trainer.progress_bar=false logger=none")
    _write_params(repo, ["digits_mlp"], [0], long)
    folder = repo / "outputs" / "dvc" / "tiny" / "runs" / "digits_mlp" / "seed0"
    ckpt = folder / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, epoch = time.time() + 300, -1
    while time.time() < deadline and proc.poll() is None and epoch < 2:
        time.sleep(0.05)
        try:
            epoch = int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"])
        except Exception:  # not written yet
            epoch = -1
    assert proc.poll() is None, "dvc repro ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the training process under it
    proc.wait()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    k = int(state["epoch"])
    assert 1 <= k < 11 and not (folder / "metrics.json").exists()

    log = _dvc(repo, "repro").stdout
    assert f"resuming from {ckpt} (saved at the end of epoch {k})" in log
    timed = _history(folder, with_time=True)
    assert [h["train_seconds"] for h in timed[:k + 1]] == [h["train_seconds"] for h in state["hm2bp_history"]]
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, str(repo / "src" / "run.py"), "experiment=digits_mlp", "seed=0",
                    f"data_dir={repo / 'data'}", *long.split(), f"output_root={reference}"], cwd=tmp_path, env=ENV,
                   check=True, capture_output=True)
    assert _history(folder) == _history(next(reference.rglob("seed0")))

    stamp = (folder / "metrics.json").stat().st_mtime_ns
    assert "Stage 'train@digits_mlp-0' didn't change, skipping" in _dvc(repo, "repro").stdout
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp

    _write_params(repo, ["digits_mlp"], [0], long.replace("trainer.max_epochs=12", "trainer.max_epochs=3"))
    log = _dvc(repo, "repro").stdout
    assert "resume=auto: it belongs to another config" in log
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["config"]["trainer"]["max_epochs"] == 3
