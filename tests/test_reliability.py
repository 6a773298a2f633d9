"""Faults, bad input and reproducibility (README "Reliability" lists which test proves which row)."""

from __future__ import annotations

import errno
import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import lightning as L
import psutil
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import run_dir, trained
from hm2bp import HM2BPRule, SpikeCountLoss, SpikingMLP, backend, predict
from hm2bp.app import cli
from hm2bp.app.data import SpikeData
from hm2bp.app.finite import FiniteCheck, NonFiniteError
from hm2bp.app.module import HM2BPModule
from hm2bp.io import atomic_write_text
from hm2bp.neuron import LIFParams, lif_scan
from hm2bp.spsp import spsp

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.batch_size=32",
         "trainer.progress_bar=false", "trainer.max_epochs=1", "logger=none"]


def _run(args, cwd, env=None, check=True):
    env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def test_partially_finished_multirun_trains_only_missing_seeds(tmp_path):
    _run(["-m", "seed=0,1", *SMOKE, f"output_root={tmp_path}"], tmp_path)
    done = sorted(tmp_path.rglob("metrics.json"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in done}
    proc = _run(["-m", "seed=0,1,2", *SMOKE, f"output_root={tmp_path}"], tmp_path)
    assert proc.stdout.count("is complete") == 2
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in done} == before
    assert (run_dir(tmp_path, "digits-mlp64-800-10", seed=2) / "metrics.json").exists()


def test_same_seed_twice_gives_identical_histories_and_weights_another_seed_differs(tmp_path):
    args = [*SMOKE, "trainer.max_epochs=2", "trainer.limit_train_batches=4"]
    for root, seed in (("a", 0), ("b", 0), ("c", 1)):
        _run([*args, f"seed={seed}", f"output_root={tmp_path / root}"], tmp_path)

    def load(root, seed):
        folder = run_dir(tmp_path / root, "digits-mlp64-800-10", seed)
        history = trained(json.loads((folder / "history.json").read_text()))
        weights = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        return history, weights["state_dict"]

    (ha, wa), (hb, wb), (hc, wc) = load("a", 0), load("b", 0), load("c", 1)
    assert len(ha) == 2 and ha == hb
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert hc != ha and not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_corrupt_checkpoint_gives_clear_error_and_resume_false_moves_it_aside(tmp_path):
    folder = tmp_path / "run"
    fixed = [*SMOKE, f"hydra.run.dir={folder}"]
    (folder / "checkpoints").mkdir(parents=True)
    ckpt = folder / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    keep = folder / "notes.txt"
    keep.write_text("mine")
    proc = _run(fixed, tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: cannot resume from {ckpt}")
    assert "resume=false" in proc.stderr and "Traceback" not in proc.stderr
    assert ckpt.read_bytes() == b"PK\x03\x04 truncated" and keep.read_text() == "mine"
    proc = _run([*fixed, "resume=false"], tmp_path)  # the way out the message names
    moved = list((folder / "checkpoints" / "replaced").glob("*-last.ckpt"))
    assert len(moved) == 1 and moved[0].read_bytes() == b"PK\x03\x04 truncated"
    assert f"moved the old checkpoint {ckpt} aside to {moved[0]}" in proc.stdout
    assert (folder / "metrics.json").exists() and keep.read_text() == "mine"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["last.ckpt", "replaced"]  # no last-v1
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 0


def test_online_wandb_without_key_fails_clearly_or_falls_back_when_asked(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "NETRC": str(tmp_path / "none")}
    args = [*SMOKE[:-1], "logger=wandb", "logger.mode=online", f"output_root={tmp_path}"]
    proc = _run(args, tmp_path, env=env, check=False)
    assert proc.returncode != 0 and "no wandb API key" in proc.stderr
    assert not any(tmp_path.rglob("metrics.json"))
    proc = _run([*args, "logger.fallback_offline=true"], tmp_path, env=env)
    assert "logging offline" in proc.stdout
    assert list(tmp_path.rglob("offline-run-*"))


def _owner_access(path, mode, **_) -> bool:
    """os.access as the owner of ``path`` without root's override sees it: its owner permission bits."""
    bits = os.stat(path).st_mode
    return all(bits & owner for want, owner in ((os.R_OK, 0o400), (os.W_OK, 0o200), (os.X_OK, 0o100))
               if mode & want)


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_unwritable_output_is_the_apps_own_one_line_error(tmp_path, monkeypatch, capsys, multirun):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _run([*(["-m", "seed=0,1"] if multirun else []), *SMOKE, f"output_root={blocker}/sub"], tmp_path,
                check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: cannot create the run directory {blocker}/sub")
    assert f"{blocker} is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr
    # A read-only folder: root's access() ignores permissions (these tests run as root), so the app's check sees
    # the owner's permission bits instead, in-process, through the Hydra callback that runs it, whoever runs this.
    monkeypatch.setattr(cli.os, "access", _owner_access)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    writable, read_only = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir()
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        cli.check_writable(writable / "sub")  # the premise: the emulated check passes a writable folder
        key = "sweep" if multirun else "run"
        start = cli.Preflight().on_multirun_start if multirun else cli.Preflight().on_run_start
        with pytest.raises(SystemExit) as exit_:
            start(OmegaConf.create({"output_root": str(read_only), "hydra": {key: {"dir": "${output_root}/sub"}}}))
    finally:
        read_only.chmod(0o700)
    assert exit_.value.code == 1 and not (read_only / "sub").exists()
    assert capsys.readouterr().err == (f"error: cannot create the run directory {read_only}/sub: {read_only} is not "
                                       f"writable; choose another output_root\n")


def test_atomic_write_keeps_previous_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("previous")

    def disk_full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device"):
        atomic_write_text(target, "new")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def _tiny_module(n_train=32):
    data = SpikeData("digits", "data", steps=60, batch_size=16, seed=0)
    data.setup()
    module = HM2BPModule("20-10", (64,), [4.0, 4.0], n_train=data.n_train, lr=1e-2, lr_schedule="inverse_sqrt",
                         boosting=True, targets={"desired": 10, "undesired": 1, "margin": 1})
    return data, module


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("where", ["loss", "weight", "gradient"])
def test_non_finite_values_stop_training_with_location(tmp_path, where, value):
    data, module = _tiny_module()
    if where == "weight":
        with torch.no_grad():
            module.net.layers[1].weight[0, 0] = value
        message = "non-finite weight in layer 1 at epoch 0, step 0"
    elif where == "gradient":  # the weights stay finite; layer 0's gradient does not
        module.net.layers[0].weight.register_hook(lambda g: g + value)
        message = "non-finite gradient in layer 0 at epoch 0, step 0"
    else:
        real = module.loss_fn.forward
        module.loss_fn.forward = lambda *a, **k: real(*a, **k) * value
        message = f"non-finite training loss {value} at epoch 0, step 0"
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        callbacks=[FiniteCheck()])
    with pytest.raises(NonFiniteError, match=f"^{message}$"):
        trainer.fit(module, datamodule=data)


def test_all_silent_outputs_predict_class_zero_and_stay_finite():
    net = SpikingMLP([8, 6, 4], [1.0, 1.0], target_count=10)
    with torch.no_grad():
        net.layers[1].weight.fill_(-1.0)  # the output layer can never fire
    x = (torch.rand(3, 60, 8) < 0.3).float()
    labels = torch.tensor([0, 2, 3])
    counts = net(x, labels).sum(1)
    assert counts.sum() == 0 and predict(counts).tolist() == [0, 0, 0]
    loss = SpikeCountLoss(10, 1, 1)(counts, labels)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.layers[1].weight.grad.abs().sum() > 0  # silent neurons still learn (fallbacks)


# -- properties of the engine ---------------------------------------------------------------------------------
binary = st.lists(st.integers(0, 1), min_size=1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 80), st.integers(1, 4), st.integers(0, 3), st.floats(-2.0, 5.0),
       st.integers(0, 2**31 - 1))
def test_spike_count_bound(batch, steps, neurons, t_ref, drive, seed):
    g = torch.Generator().manual_seed(seed)
    currents = torch.rand(batch, steps, neurons, generator=g, dtype=torch.float64) * drive
    out = lif_scan(currents, LIFParams(threshold=0.5, t_ref=t_ref))
    bound = (steps - 1 + t_ref) // (t_ref + 1)  # first spike at t ≥ 1, then at most one per t_ref + 1 steps
    assert int(out.sum(1).max()) <= bound


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 300), st.sampled_from(["original", "exact"]), st.integers(0, 2**31 - 1),
       st.floats(0.0, 0.5))
def test_spsp_non_negative_and_zero_for_empty_pre(steps, convention, seed, rate):
    g = torch.Generator().manual_seed(seed)
    pre = (torch.rand(2, steps, 3, generator=g) < rate).double()
    pre[1] = 0
    post = lif_scan(torch.rand(2, steps, 2, generator=g, dtype=torch.float64), LIFParams(threshold=1.0))
    e = spsp(pre, post, convention=convention)
    assert bool((e >= -1e-12).all())
    assert bool((e[1] == 0).all())


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(30, 120), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0),
       st.sampled_from(["pairs", "dense", "sparse"]))
def test_gradients_finite_for_any_binary_input(batch, steps, seed, rate, strategy):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SpikingMLP([5, 7, 3], [1.0, 1.0], rule=HM2BPRule(lateral_min_denominator=0.1), target_count=5)
    x = (torch.rand(batch, steps, 5, generator=g) < rate).float()
    labels = torch.randint(0, 3, (batch,), generator=g)
    backend.set_strategy(strategy)  # (hypothesis runs many examples per call: no function-scoped fixture)
    try:
        SpikeCountLoss(5, 1, 1)(net(x, labels).sum(1), labels).backward()
    finally:
        backend.set_strategy("auto")
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.slow
def test_soak_50_epochs_memory_flat(tmp_path):
    data = SpikeData("digits", "data", steps=400, batch_size=64, seed=0)
    data.setup()
    module = HM2BPModule("800-10", (64,), [10.0, 8.0], n_train=data.n_train, lr=1e-2, lr_schedule="inverse_sqrt",
                         boosting=True, regularizer={"lam": 10.0, "beta": 0.04, "limit": 8.0})
    rss: list[float] = []
    process = psutil.Process()

    class Probe(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            gc.collect()
            rss.append(process.memory_info().rss / 2**20)  # current RSS (MiB): peak RSS also follows firing rates

    trainer = L.Trainer(max_epochs=50, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[Probe()], num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert len(rss) == 50
    # Current RSS wobbles by ~±50 MiB from epoch to epoch (the allocator keeps or returns arenas as firing rates
    # change), so compare typical levels, not single readings: the median of epochs 41-50 must not exceed that of
    # epochs 11-20 by more than 25 MiB. A leak of one 64x400x800 float buffer per step (~1 GiB per epoch here), or
    # of ~1 MiB per epoch, fails this.
    early, late = statistics.median(rss[10:20]), statistics.median(rss[40:])
    assert late - early < 25, rss
    assert module.history[-1]["test_acc"] > 0.95


def test_out_of_memory_names_the_batch_size_to_lower(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from hm2bp.app.config import ConfigError
    from hm2bp.app.runner import run

    def oom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(HM2BPModule, "training_step", oom)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*SMOKE, "trainer.batch_size=48"])
    with pytest.raises(ConfigError, match=r"out of cpu memory at trainer\.batch_size=48 \(CUDA out of memory\. "
                                          r"Tried to allocate 20\.00 GiB\); lower it, e\.g\. trainer\.batch_size=24"):
        run(cfg, tmp_path / "run")
