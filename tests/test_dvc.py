"""The DVC pipeline (dvc.yaml, params.yaml, profiles/) and the prepare CLI behind its prepare stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

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


@pytest.mark.parametrize("profile", ["paper", "cpu"])
def test_profile_experiments_compose(profile, tmp_path):
    params = yaml.safe_load(_profile(profile, tmp_path))
    assert params["profile"] == profile and params["seeds"] == [0, 1, 2, 3, 4]
    assert params["out_dir"] == f"outputs/dvc/{profile}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in params["experiments"]:
            cfg = compose(config_name="config",
                          overrides=[f"experiment={name}", *params["overrides"].split()])
            assert cfg.experiment_name == name
    if profile == "paper":
        assert set(params["experiments"]) == set(PROTOCOL)


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


def _write_params(repo: Path, experiments: list[str], seeds: list[int]) -> None:
    params = {"seeds": seeds, "data_dir": str(repo / "data"), "out_dir": "outputs/dvc/tiny", "overrides": TINY,
              "profile": "tiny", "experiments": experiments}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_tiny_pipeline_missing_dataset_keeps_going_then_aggregates(tmp_path):
    """The repo's dvc.yaml on a tiny profile: digits trains (2 seeds) while MNIST's prepare fails with the loader's
    message; then the digits-only pipeline reuses both runs and aggregates them."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", repo / "src", ignore=ignore)
    shutil.copytree(ROOT / "conf", repo / "conf", ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")

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
