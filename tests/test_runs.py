"""Runs lose nothing and mix nothing up: checkpoints during training, signals, resumption, config fingerprints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from appconf import compose_app
from conftest import run_dir, trained
from hm2bp.app.checkpoints import FINGERPRINT_KEY, MID_EPOCH_KEY, RunCheckpoint
from hm2bp.app.data import SpikeData
from hm2bp.app.identity import COMMANDS_FILE, fingerprint, run_config
from hm2bp.app.module import HM2BPModule

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "digits-mlp64-800-10"
# 12 epochs of 12 training batches (~0.6 s each here) and one test batch: long enough to stop mid-epoch.
ARGS = ["trainer.max_epochs=12", "trainer.limit_train_batches=12", "trainer.limit_val_batches=1",
        "trainer.batch_size=32", "trainer.progress_bar=false", "logger=none"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _cmd(args: list[str], out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "src" / "run.py"), *args, f"output_root={out}"]


def _run(args: list[str], out: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(args, out), cwd=out.parent, env=env or ENV, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # not written yet
        return -1


def _start_and_signal(args: list[str], out: Path, sig: int, at_epoch: int, env: dict | None = None):
    """Start a run, wait until its checkpoint holds epoch ``at_epoch`` (or later), send ``sig``; return the finished
    process (stdout, stderr read) and its checkpoint path."""
    proc = subprocess.Popen(_cmd(args, out), cwd=out.parent, env=env or ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob(f"{EXPERIMENT}/*/seed0/checkpoints/last.ckpt"))
        if found and _checkpoint_epoch(found[0]) >= at_epoch:
            ckpt = found[0]
            break
        time.sleep(0.05)
    assert ckpt is not None and proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr, ckpt


def _history(folder: Path, with_time: bool = False) -> list[dict]:
    rows = json.loads((folder / "history.json").read_text())
    return rows if with_time else trained(rows)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The uninterrupted run's history (without timings)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    _run(ARGS, out)
    history = _history(run_dir(out, EXPERIMENT))
    assert len(history) == 12
    return history


def test_sigkill_mid_training_resumes_at_its_epoch(tmp_path, reference):
    out = tmp_path / "out"
    rc, _, _, ckpt = _start_and_signal(ARGS, out, signal.SIGKILL, at_epoch=2)
    assert rc == -signal.SIGKILL
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    k = int(state["epoch"])
    assert 1 <= k < 12 - 1 and not state[MID_EPOCH_KEY]
    saved = state["hm2bp_history"]
    assert len(saved) == k + 1
    folder = ckpt.parent.parent
    assert not (folder / "metrics.json").exists()
    resumed = _run(ARGS, out)
    assert f"resuming from {ckpt} (saved at the end of epoch {k})" in resumed.stdout
    timed = _history(folder, with_time=True)
    assert [h["train_seconds"] for h in timed[:k + 1]] == [h["train_seconds"] for h in saved]  # not retrained
    assert _history(folder) == reference


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_saves_mid_epoch_exits_nonzero_and_resumes_exactly(tmp_path, reference, sig):
    out = tmp_path / "out"
    rc, _, stderr, ckpt = _start_and_signal(ARGS, out, sig, at_epoch=1)
    name = signal.Signals(sig).name
    assert rc == 128 + sig
    assert f"error: interrupted by {name} at epoch" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state[MID_EPOCH_KEY], "the signal should have been handled within an epoch"
    [part] = state["hm2bp_epoch_state"]  # one process: one part of the epoch
    samples = int(part["meter"]["samples"])
    assert 0 < samples < 12 * 32
    resumed = _run(ARGS, out)
    assert f"saved during epoch {state['epoch']}" in resumed.stdout
    assert _history(ckpt.parent.parent) == reference


def test_slurm_requeue_signal_saves_and_requeues(tmp_path, reference):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.log"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**ENV, "SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}"}
    out = tmp_path / "out"
    rc, _, stderr, ckpt = _start_and_signal(ARGS, out, signal.SIGUSR1, at_epoch=1, env=env)
    assert rc == 128 + signal.SIGUSR1
    assert "SLURM job 4242 requeued" in stderr
    assert calls.read_text().split() == ["requeue", "4242"]
    _run(ARGS, out, env=env)  # the requeued job: the same command
    assert _history(ckpt.parent.parent) == reference


def test_checkpoints_every_n_minutes_within_an_epoch(tmp_path, monkeypatch):
    """checkpoint_every_minutes saves mid-epoch once N minutes have passed since the last checkpoint (of either
    kind), and every checkpoint carries the fingerprint. A fake clock advances 30 s per batch, so with N = 1 a save
    is due every second batch: "always due" or minutes read as seconds would save after every batch."""
    data = SpikeData("digits", "data", steps=60, batch_size=64, seed=0)
    data.setup()
    module = HM2BPModule("20-10", (64,), [4.0, 4.0], n_train=data.n_train, lr=1e-2, lr_schedule="inverse_sqrt",
                         boosting=True, targets={"desired": 10, "undesired": 1, "margin": 1})
    saved: list[tuple[int, int, bool]] = []
    import hm2bp.app.checkpoints as checkpoints

    real = checkpoints.atomic_save

    def spy(trainer, path):
        real(trainer, path)
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert state[FINGERPRINT_KEY] == "abc"
        saved.append((int(state["epoch"]), trainer.global_step, bool(state[MID_EPOCH_KEY])))

    monkeypatch.setattr(checkpoints, "atomic_save", spy)
    now = [0.0]

    class Tick(L.Callback):  # listed before the checkpoint callback: each batch ends 30 s later
        def on_train_batch_end(self, *_):
            now[0] += 30.0

    callback = RunCheckpoint(tmp_path / "last.ckpt", "abc", {"x": 1}, every_minutes=1, clock=lambda: now[0])
    trainer = L.Trainer(max_epochs=2, limit_train_batches=5, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, callbacks=[Tick(), callback],
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    # (epoch, steps done, mid-epoch): after batches 2 and 4 of each epoch (60 s since the last save); the last
    # batch waits for the epoch-end checkpoint, which restarts the count (epoch 1's first save is 60 s after it)
    assert saved == [(0, 2, True), (0, 4, True), (0, 5, False), (1, 7, True), (1, 9, True), (1, 10, False)]


def test_fingerprint_covers_what_changes_results_only():
    def fp(*overrides: str) -> str:
        return fingerprint(run_config(compose_app(list(overrides))))

    base = fp()
    assert len(base) == 12 and int(base, 16) >= 0
    for same in ("seed=3", "output_root=/elsewhere", "logger=none", "logger.mode=disabled", "data_dir=/d",
                 "trainer.progress_bar=false", "trainer.num_threads=7", "resume=false",
                 "trainer.checkpoint_every_minutes=5", "experiment_name=other"):
        assert fp(same) == base, same
    changed = {fp(o) for o in ("trainer.lr=0.001", "model.thresholds=[10.0,8.5]", "dataset.steps=401",
                               "trainer.limit_train_batches=2", "model.rule.convention=exact",
                               "trainer.boosting=false")}
    assert len(changed) == 6 and base not in changed
    config = run_config(compose_app([]))
    text = json.dumps(config)
    one_byte = json.loads(text.replace('"lr": 0.01', '"lr": 0.02'))
    assert one_byte != config and fingerprint(one_byte) != fingerprint(config)


# Spellings of one config: the experiment's name is outside the fingerprint, and a dataset brings its network and
# training settings, so a preset and its expansion (or the default and the dataset named) resolve alike.
EQUIVALENT = [([], ["dataset=digits"]), (["experiment=digits_mlp"], ["dataset.fixed_trains=false"]),
              (["experiment=emnist_mlp_400_400"], ["dataset=emnist"])]


@pytest.mark.parametrize(("one", "other"), EQUIVALENT, ids=[" ".join(b) for _, b in EQUIVALENT])
def test_equivalent_commands_share_one_run_dir(one, other):
    """The run dir is <output_root>/<dataset>-<model>/<fingerprint>/seed<seed>, in a run and in a multirun: two
    commands of one config find each other's finished seeds and checkpoints; another setting gets its own."""
    extra = ["seed=2", "output_root=x", "logger=none", "trainer.num_threads=1"]

    def where(overrides: list[str]) -> tuple[str, str, str]:
        cfg = compose_app([*overrides, *extra], hydra_config=True)
        return fingerprint(run_config(compose_app([*overrides, *extra]))), cfg.hydra.run.dir, cfg.hydra.sweep.subdir

    fp, run, subdir = where(one)
    assert where(other)[0] == fp  # the premise: one config
    assert where(other)[1:] == (run, subdir)
    cfg = compose_app(one)
    assert run == f"x/{cfg.dataset.name}-{cfg.model.name}/{fp}/seed2" and subdir == run.removeprefix("x/")
    assert where([*other, "trainer.lr=0.0123"])[1] != run


def test_an_equivalent_command_skips_the_finished_run_and_is_recorded(tmp_path):
    """A preset's run is found (skipped as finished) by its plain expansion; commands.txt beside the seeds names
    both commands with their experiment, once each, whatever the seed."""
    out = tmp_path / "out"
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.batch_size=32", "trainer.progress_bar=false", "logger=none"]
    first = _run(["experiment=digits_mlp", *tiny], out)
    folder = run_dir(out, "digits_mlp")
    assert f"run dir: {folder}" in first.stdout
    done = (folder / "metrics.json").read_bytes()
    second = _run(["dataset.fixed_trains=false", *tiny], out)
    assert f"run dir: {folder}" in second.stdout and "is complete" in second.stdout
    assert folder.parent.parent.name == EXPERIMENT
    _run(["experiment=digits_mlp", "seed=0", *tiny], out)
    assert [p.parent for p in out.rglob("metrics.json")] == [folder] and (folder / "metrics.json").read_bytes() == done
    rest = " ".join([*tiny, f"output_root={out}"])
    assert (folder.parent / COMMANDS_FILE).read_text().splitlines() == [
        f"digits_mlp: python src/run.py experiment=digits_mlp {rest}",
        f"{EXPERIMENT}: python src/run.py dataset.fixed_trains=false {rest}"]


def test_two_learning_rates_give_two_runs_and_two_report_rows(tmp_path):
    out = tmp_path / "out"
    args = ["-m", "trainer.lr=0.01,0.001", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1", "trainer.batch_size=32", "trainer.progress_bar=false", "logger=none"]
    proc = _run(args, out)
    assert "is complete" not in proc.stdout
    files = sorted(out.rglob("metrics.json"))
    assert len(files) == 2
    runs = [json.loads(f.read_text()) for f in files]
    assert {r["config"]["trainer"]["lr"] for r in runs} == {0.01, 0.001}
    assert runs[0]["fingerprint"] != runs[1]["fingerprint"]
    histories = [_history(f.parent) for f in files]
    assert histories[0][0]["train_loss"] != histories[1][0]["train_loss"]
    report = subprocess.run([sys.executable, "-m", "hm2bp.report", str(out)], capture_output=True, text=True,
                            check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary) == sorted(f"{EXPERIMENT}-{r['fingerprint']}" for r in runs)
    assert sorted(s["settings"] for s in summary.values()) == ["trainer.lr=0.001", "trainer.lr=0.01"]
    assert report.stdout.count(EXPERIMENT) == 2


def test_report_refuses_duplicate_seeds_of_one_config(tmp_path):
    args = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            "trainer.batch_size=32", "trainer.progress_bar=false", "logger=none"]
    for where in ("a", "b"):
        _run(args, tmp_path / where)
    proc = subprocess.run([sys.executable, "-m", "hm2bp.report", str(tmp_path / "a"), str(tmp_path / "b"),
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "seed 0 of digits-mlp64-800-10" in proc.stderr and "appears twice" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "summary.json").exists()


def test_foreign_checkpoint_and_results_are_refused_auto_replaces(tmp_path):
    """In one forced run dir (as the DVC pipeline uses): another config's results are never overwritten, its
    checkpoint is never resumed; resume=auto moves that checkpoint aside and trains."""
    folder = tmp_path / "fixed"
    args = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.batch_size=32", "trainer.progress_bar=false", "logger=none", f"hydra.run.dir={folder}"]
    _run(args, tmp_path / "out")
    first = (folder / "metrics.json").read_bytes()
    other = [*args, "trainer.lr=0.001"]
    proc = _run(other, tmp_path / "out", check=False)
    assert proc.returncode != 0 and "holds the finished results of another config" in proc.stderr
    assert "trainer.lr: 0.01 → 0.001" in proc.stderr and (folder / "metrics.json").read_bytes() == first
    (folder / "metrics.json").unlink()  # as DVC does before rerunning a changed stage
    proc = _run(other, tmp_path / "out", check=False)
    assert proc.returncode != 0 and "refusing to resume" in proc.stderr and "trainer.lr: 0.01 → 0.001" in proc.stderr
    proc = _run([*other, "resume=auto"], tmp_path / "out")
    assert "resume=auto: it belongs to another config" in proc.stdout
    assert len(list((folder / "checkpoints" / "replaced").glob("*-last.ckpt"))) == 1
    assert json.loads((folder / "metrics.json").read_text())["config"]["trainer"]["lr"] == 0.001


def test_a_bptt_run_trains_checkpoints_and_resumes_exactly(tmp_path):
    """rule=bptt through the app: it learns, its metrics name the rule, and a run stopped by SIGTERM resumes to the
    uninterrupted run's history."""
    args = ["rule=bptt", "trainer.max_epochs=6", *ARGS[1:]]
    _run(args, tmp_path / "reference")
    reference = _history(run_dir(tmp_path / "reference", EXPERIMENT))
    metrics = json.loads((run_dir(tmp_path / "reference", EXPERIMENT) / "metrics.json").read_text())
    assert metrics["rule"] == "bptt" and metrics["config"]["model"]["bptt"] == {"slope": 25.0, "reset_grad": False}
    assert reference[-1]["train_acc"] > 0.5  # chance is 0.1
    assert metrics["test_synops_per_sample"] > 0 and metrics["test_spikes_per_sample"] > 0
    assert metrics["peak_memory_mib"] > 0 and metrics["seconds_per_epoch"] > 0
    out = tmp_path / "out"
    rc, _, _, ckpt = _start_and_signal(args, out, signal.SIGTERM, at_epoch=1)
    assert rc == 128 + signal.SIGTERM
    k = _checkpoint_epoch(ckpt)
    assert k < 5, "stopped after the last epoch: nothing left to resume"
    resumed = _run(args, out)
    assert f"resuming from {ckpt}" in resumed.stdout
    assert _history(ckpt.parent.parent) == reference
