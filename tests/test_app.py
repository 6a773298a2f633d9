"""The experiment app: Hydra composition, validation, a real run, multirun + report, resume, skipping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from appconf import compose_app
from conftest import nonempty, run_dir, trained
from hm2bp.app.config import ConfigError, validate
from hm2bp.data.order import EpochPermutation, SwapShuffle
from hm2bp.metrics import METRICS_KEYS

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
EXPERIMENTS = nonempty(sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")), "experiment presets")
# A short but real budget: 2 training batches of 32 and one test batch per epoch, T = 400.
SMOKE = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.batch_size=32",
         "trainer.progress_bar=false"]


def _run(args: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_app([f"experiment={experiment}"])
    validate(cfg)
    # a *_bptt preset is its partner row trained by BPTT, under the partner's name (the report adds the rule)
    assert cfg.experiment_name == experiment.removesuffix("_bptt")
    assert ("bptt" in cfg.model) == experiment.endswith("_bptt")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("launcher", ["basic", "joblib", "slurm"])
def test_launchers_compose(launcher):
    cfg = compose_app([f"hydra/launcher={launcher}"], hydra_config=True)
    assert cfg.hydra.launcher._target_


@pytest.mark.parametrize("override, message", [
    (["model.sizes=[60,800,10]"], "model.sizes\\[0\\]=60 does not match dataset 'digits', which has 64 inputs"),
    (["model.sizes=[64,800,9]"], "model.sizes\\[-1\\]=9 does not match"),
    (["dataset.steps=0"], "dataset.steps must be an integer > 0, got 0"),
    (["model.thresholds=[0,8]"], "model.thresholds\\[0\\] must be a number > 0"),
    (["trainer.lr=-1"], "trainer.lr must be a number > 0, got -1"),
    (["trainer.batch_size=0"], "trainer.batch_size must be an integer > 0, got 0"),
    (["model.thresholds=[10]"], "one value per layer"),
    (["model.rule.convention=paper"], "valid choices"),
    (["logger.mode=sometimes"], "logger.mode='sometimes'; valid choices"),
    (["model=digits_cnn", "model.arch=12C9-P2-100-10"], "model.arch='12C9-P2-100-10' does not fit dataset 'digits'"),
    (["model=digits_cnn", "model.arch=12C3-P4-100-10"], "pooling 4×4 does not divide the 6×6 maps"),
    (["model=digits_cnn", "model.arch=12C3-P2-100-9"], "output layer=9 does not match dataset 'digits'"),
    (["model=digits_cnn", "model.sizes=[64,10]"], "exactly one of model.sizes"),
    (["model=digits_cnn", "model.rule.pool_error_scale=mean"], "pool_error_scale='mean'; valid choices"),
    (["dataset.augment={scale:2.0}"], "dataset.augment=.* is invalid"),
    (["dataset=spoken_synth", "model=synth_mlp", "+dataset.augment={scale:0.1}"],
     "dataset.augment applies to image datasets only, not 'spoken_synth'"),
    (["trainer.lr_schedule=cosine"], "lr_schedule='cosine'; valid choices"),
    (["trainer.shuffle=random"], "trainer.shuffle='random'; valid choices: \\['permutation', 'swaps'\\]"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_app(override))


def test_unknown_group_option_and_misspelled_key(tmp_path):
    proc = _run(["dataset=mnistt", f"output_root={tmp_path}"], tmp_path, check=False)
    assert proc.returncode == 1
    options = ", ".join(sorted(p.stem for p in (CONF / "dataset").glob("*.yaml")))
    assert proc.stderr == ("error: In 'config': Could not find 'dataset/mnistt'; Available options in 'dataset': "
                           f"{options}\n")
    proc = _run(["trainer.max_epoch=3", f"output_root={tmp_path}"], tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr == "error: unknown key trainer.max_epoch; did you mean trainer.max_epochs?\n"
    proc = _run(["trainer.lr=[", f"output_root={tmp_path}"], tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert not any(tmp_path.rglob("metrics.json"))


def test_run_writes_metrics_figures_and_offline_wandb(tmp_path):
    _run([*SMOKE, "trainer.max_epochs=2", f"output_root={tmp_path}"], tmp_path)
    folder = run_dir(tmp_path, "digits-mlp64-800-10")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert all(k in metrics for k in METRICS_KEYS)
    assert folder.parent.name == metrics["fingerprint"]
    assert metrics["config"]["trainer"]["max_epochs"] == 2 and "logger" not in metrics["config"]
    assert metrics["epochs"] == 2 and 0 <= metrics["test_acc"] <= 1
    assert metrics["best_test_acc"] >= metrics["test_acc"]
    assert (folder / "learning_curves.png").stat().st_size > 1000
    assert (folder / "raster.png").stat().st_size > 1000
    assert (folder / "checkpoints" / "last.ckpt").exists()
    offline = list((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline and offline[0].stat().st_size > 0
    history = json.loads((folder / "history.json").read_text())
    assert {"rate_layer0", "silent_layer1", "lateral_clamped", "test_silent_outputs"} <= set(history[0])


def test_data_module_refuses_augmenting_event_data():
    from hm2bp.app.data import SpikeData

    with pytest.raises(ValueError, match="augmentation applies to static image datasets only, not 'nmnist'"):
        SpikeData("nmnist", "data", steps=540, batch_size=8, seed=0, augment={"scale": 0.1})


def test_cnn_run_with_augmentation(tmp_path):
    """The digits CNN end to end, with the paper CNN's augmentation switched on: it changes what trains (the same
    run without it trains on other spikes), not only the config."""
    args = [*SMOKE, "experiment=digits_cnn", "trainer.max_epochs=1", "logger=none"]
    _run([*args, f"output_root={tmp_path / 'augmented'}",
          "dataset.augment={scale:0.12,rotation:12.0,elastic_alpha:3.4,elastic_sigma:4.0}"], tmp_path)
    folder = run_dir(tmp_path / "augmented", "digits_cnn")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["model"] == "cnn12c3-p2-100-10" and 0 <= metrics["test_acc"] <= 1
    history = json.loads((folder / "history.json").read_text())
    assert {"rate_layer0", "rate_layer1", "rate_layer2", "rate_layer3"} <= set(history[0])
    _run([*args, f"output_root={tmp_path / 'plain'}"], tmp_path)
    plain = json.loads((run_dir(tmp_path / "plain", "digits_cnn") / "history.json").read_text())
    assert history[0]["train_loss"] != plain[0]["train_loss"], "the augmentation did not reach the training data"


def test_multirun_then_report(tmp_path):
    _run(["-m", "seed=0,1", *SMOKE, "trainer.max_epochs=1", "logger=csv", f"output_root={tmp_path}"], tmp_path)
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("metrics.json"))]
    assert [r["seed"] for r in runs] == [0, 1]
    proc = subprocess.run([sys.executable, "-m", "hm2bp.report", str(tmp_path)], capture_output=True, text=True,
                          check=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    s = summary["digits-mlp64-800-10"]
    accs = [100 * r["test_acc"] for r in runs]
    assert s["n_seeds"] == 2 and s["seeds"] == [0, 1]
    assert s["final_mean"] == pytest.approx(sum(accs) / 2)
    assert s["best_of_best"] == pytest.approx(max(100 * r["best_test_acc"] for r in runs))
    assert "digits-mlp64-800-10" in proc.stdout and (tmp_path / "summary.png").exists()
    assert (run_dir(tmp_path, "digits-mlp64-800-10") / "csv" / "metrics.csv").exists()


def test_joblib_multirun_and_finished_seeds_are_skipped(tmp_path):
    args = ["-m", "seed=0,1", *SMOKE, "trainer.max_epochs=1", "logger=none", f"output_root={tmp_path}"]
    _run([*args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path)
    files = sorted(tmp_path.rglob("metrics.json"))
    assert len(files) == 2
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in files]
    proc = _run(args, tmp_path)
    assert proc.stdout.count("is complete") == 2
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in files] == before


def test_config_errors_are_one_line_without_traceback_unless_hydra_full_error(tmp_path):
    args = ["model.thresholds=[0,8]", f"output_root={tmp_path}"]
    proc = _run(args, tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr == "error: model.thresholds[0] must be a number > 0, got 0\n"
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_default_job_logs_are_quiet_and_end_with_where_the_files_are(tmp_path):
    proc = _run([*SMOKE, "trainer.max_epochs=1", f"output_root={tmp_path}"], tmp_path)
    log = proc.stdout + proc.stderr
    for noise in ("litlogger", "LeafSpec", "anonymous", "Warning", "WARNING"):
        assert noise not in log, noise
    folder = run_dir(tmp_path, "digits-mlp64-800-10")
    offline = next((folder / "wandb").glob("offline-run-*"))
    assert f"run files in {folder}: metrics.json, history.json, learning_curves.png, raster.png" in proc.stdout
    assert f"upload it with: wandb sync {offline}" in proc.stdout


def test_device_encoding_run_equals_the_cpu_encoding_run(tmp_path):
    """trainer.device_encoding=true (what trainer=gpu sets) on the CPU: the same history as the default path."""
    histories = []
    for flag, root in (("false", "cpu"), ("true", "device")):
        _run([*SMOKE, "trainer.max_epochs=2", "logger=none", f"trainer.device_encoding={flag}",
              f"output_root={tmp_path / root}"], tmp_path)
        histories.append(trained(json.loads((run_dir(tmp_path / root, "digits-mlp64-800-10")
                                             / "history.json").read_text())))
    assert len(histories[0]) == 2 and histories[0] == histories[1]


def test_swap_shuffle_is_the_authors_cumulative_swaps_and_a_pure_function_of_seed_and_epoch():
    """trainer.shuffle=swaps: a full permutation at load, then per epoch `swaps` swaps of two drawn positions of the
    current order (as `cuMatrixVector::shuffle`), replayed from scratch by a fresh (resumed) sampler."""
    import torch

    from hm2bp.data.order import EpochPermutation, SwapShuffle

    n, swaps = 50, 7
    walked = SwapShuffle(n, seed=3, swaps=swaps)
    orders = []
    for epoch in range(4):
        walked.set_epoch(epoch)
        orders.append(list(walked))
    # literally: the load shuffle, then each epoch's swaps in order, one pair at a time
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3 * 1_000_003 - 1)).tolist()
    for epoch in range(4):
        pairs = torch.randint(n, (swaps, 2), generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch))
        for x, y in pairs.tolist():
            order[x], order[y] = order[y], order[x]
        assert orders[epoch] == order
        assert sorted(order) == list(range(n))
    assert all(sum(a != b for a, b in zip(orders[e], orders[e + 1], strict=True)) <= 2 * swaps for e in range(3))
    fresh = SwapShuffle(n, seed=3, swaps=swaps, skip=5)  # a run resumed mid-epoch 2
    fresh.set_epoch(2)
    assert list(fresh) == orders[2][5:] and list(fresh) == orders[2]
    walked.set_epoch(1)  # going back recomputes
    assert list(walked) == orders[1]
    assert SwapShuffle(n, seed=4, swaps=swaps).order() != SwapShuffle(n, seed=3, swaps=swaps).order()
    assert EpochPermutation(n, seed=3).order() != orders[0]


def test_authors_swap_shuffle_trains(tmp_path):
    _run([*SMOKE, "trainer.max_epochs=2", "logger=none", "trainer.shuffle=swaps", "trainer.boosting=true",
          f"output_root={tmp_path}"], tmp_path)
    [metrics] = (tmp_path / "digits-mlp64-800-10").rglob("metrics.json")
    assert json.loads(metrics.read_text())["config"]["trainer"]["shuffle"] == "swaps"
    # What trained, not what the config says: boosting raises the weight of misclassified trained samples only, so
    # the boosted samples lie among the first 2 batches of 32 of each epoch's SwapShuffle order, and not among a
    # permutation's.
    weights = torch.load(metrics.parent / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=False)["hm2bp_boosting"]["weights"]
    boosted = set((weights != 1).nonzero().flatten().tolist())

    def trained(kind) -> set[int]:
        order, seen = kind(len(weights), seed=0), set()
        for epoch in (0, 1):
            order.set_epoch(epoch)
            seen |= set(order.order()[:64])
        return seen

    assert boosted and boosted <= trained(SwapShuffle) and not boosted <= trained(EpochPermutation)


@pytest.mark.parametrize("base", [["experiment=mnist_mlp"], ["experiment=mnist_cnn"], ["dataset=digits"],
                                  ["experiment=ti46_alpha_mlp"]])
def test_faithful_preset_sets_every_authors_behaviour_on_top_of_any_row(base):
    """What the app builds from ``preset=faithful``: every layer's rule is the row's with Λ unclipped (the authors'
    defaults, or the row's own authors' config: TI46 has no effect ratio), batch 1 at lr 1e-3, the swap shuffle,
    fixed trains, boosting; the row's network, targets, regulariser, epochs and lr schedule stay."""
    from dataclasses import replace

    from hm2bp.app.runner import build_module
    from hm2bp.data.registry import DATASETS
    from hm2bp.functional import HM2BPRule

    plain, faithful = compose_app(base), compose_app([*base, "preset=faithful"])
    validate(faithful)
    assert (faithful.trainer.batch_size, faithful.trainer.lr, faithful.trainer.shuffle) == (1, 1e-3, "swaps")
    assert faithful.dataset.fixed_trains
    shape = DATASETS[plain.dataset.name].shape
    torch.manual_seed(0)
    ours = build_module(plain, shape, n_train=10)
    torch.manual_seed(0)
    theirs = build_module(faithful, shape, n_train=10)
    row_rule = ours.net.layers[0].setup.rule
    authors = replace(row_rule, lateral_min_denominator=None)
    assert {layer.setup.rule for layer in theirs.net.layers} == {authors}
    if "ti46" not in base[0]:
        assert authors == HM2BPRule(lateral_min_denominator=None)  # the engine's defaults are the authors'
    else:
        assert authors == HM2BPRule(lateral_min_denominator=None, effect_ratio=False)
    assert theirs.boost is not None and theirs.hparams.lr == 1e-3
    assert (theirs.loss_fn.desired, theirs.loss_fn.undesired, theirs.loss_fn.margin, theirs.reg) == (
        ours.loss_fn.desired, ours.loss_fn.undesired, ours.loss_fn.margin, ours.reg)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
    assert (faithful.model.arch, faithful.trainer.max_epochs, faithful.trainer.lr_schedule) == (
        plain.model.arch, plain.trainer.max_epochs, plain.trainer.lr_schedule)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_rule_bptt_composes_with_every_experiment_and_preset(experiment):
    """rule=bptt on any row (and with preset=faithful): model.bptt holds the engine's BPTTRule defaults (the *_bptt
    presets: their wider surrogate), and the module the app builds learns by BPTT in every layer; without it, by
    HM2-BP."""
    from dataclasses import asdict

    from hm2bp.app.runner import build_module
    from hm2bp.bptt import BPTTRule
    from hm2bp.data.registry import DATASETS
    from hm2bp.functional import HM2BPRule

    plain = compose_app([f"experiment={experiment}"])
    partner = experiment.endswith("_bptt")  # a *_bptt preset already sets rule=bptt
    assert ("bptt" in plain.model) == partner
    for preset in ([], ["preset=faithful"]):
        cfg = compose_app([f"experiment={experiment}", "rule=bptt", *preset])
        validate(cfg)
        assert dict(cfg.model.bptt) == asdict(BPTTRule(slope=5.0) if partner else BPTTRule())
        shape = DATASETS[cfg.dataset.name].shape
        assert {type(layer.setup.rule) for layer in build_module(cfg, shape, n_train=4).net.layers} == {BPTTRule}
    assert {type(layer.setup.rule) for layer in build_module(plain, shape, n_train=4).net.layers} == {
        BPTTRule if partner else HM2BPRule}
