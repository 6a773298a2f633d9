"""What a run leaves and says: file modes and durability of results, one wandb run per seed across resumes, and the
app's messages (no false or useless library lines, misspelled keys and unwritable folders named)."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from hm2bp import io
from hm2bp.app import cli
from hm2bp.app.checkpoints import MID_EPOCH_KEY, WANDB_ID_KEY
from test_runs import ENV, _run, _start_and_signal

ROOT = Path(__file__).resolve().parent.parent
FALSE_RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """Results are as readable as any file the user creates (a temp file's private 0600 would lock others out)."""
    target = tmp_path / "metrics.json"
    old = os.umask(umask)
    try:
        io.atomic_write_json(target, {"a": 1})
        io.atomic_write_text(target, "replaced")  # a replacement is a new file: the umask applies again
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_text() == "replaced" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    """The rename is durable only once the folder is flushed: an fsync of the folder follows it."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    io.atomic_write_text(tmp_path / "summary.md", "x")
    assert events == ["fsync file", "rename", "fsync folder"]


def test_checkpoints_are_fsynced_before_and_after_their_rename(tmp_path, monkeypatch):
    """``last.ckpt`` survives a machine crash as soon as it is written: file flushed, renamed, folder flushed."""
    from types import SimpleNamespace

    from hm2bp.app.checkpoints import atomic_save

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(
        "fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append("rename"), real_replace(src, dst)))
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda name: None),
                              save_checkpoint=lambda path, weights_only: Path(path).write_bytes(b"state"))
    atomic_save(trainer, tmp_path / "last.ckpt")
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "last.ckpt").read_bytes() == b"state"


def test_atomic_write_without_o_directory_skips_the_folder_sync(tmp_path, monkeypatch):
    """Where folders cannot be opened (no ``O_DIRECTORY``, e.g. Windows) the write still works."""
    monkeypatch.delattr(os, "O_DIRECTORY")
    io.atomic_write_text(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"


def test_the_false_mid_epoch_resume_warning_is_silenced_and_other_warnings_show():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli.quiet_library_noise()
        rank_zero_warn(f"{FALSE_RESUME_WARNING} and your dataloader is not resumable. This can cause unreliable "
                       "results if further training is done.", category=PossibleUserWarning)
        rank_zero_warn("GPU available but not used.", category=PossibleUserWarning)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["GPU available but not used.", "something else"]


def test_device_availability_lines_are_silenced_and_other_lightning_lines_show():
    cli.quiet_library_noise()
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        for line in ("GPU available: False, used: False", "GPU available: True (cuda), used: True",
                     "TPU available: False, using: 0 TPU cores", "HPU available: False, using: 0 HPUs",
                     "You are using a CUDA device ('NVIDIA H200') that has Tensor Cores. To properly utilize them, "
                     "you should set `torch.set_float32_matmul_precision('medium' | 'high')` which will trade-off "
                     "precision for performance.",  # Lightning 2.6's words, as the first GPU run printed them
                     "`Trainer.fit` stopped: `max_epochs=1` reached."):
            rank_zero_info(line)
    finally:
        logger.removeHandler(handler)
    assert records == ["`Trainer.fit` stopped: `max_epochs=1` reached."]


# A wandb run (offline) stopped by SIGTERM within its second epoch, then resumed: 6 batches of 32 an epoch.
WANDB_ARGS = ["trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.limit_val_batches=1",
              "trainer.batch_size=32", "trainer.progress_bar=false", "logger=wandb", "logger.mode=offline"]


def test_a_resumed_run_continues_its_wandb_run_and_says_nothing_false_or_useless(tmp_path):
    """Both launches of one seed log to one wandb run (one id, one offline folder per launch) and the closing hint
    uploads both folders; the resume prints neither Lightning's false mid-epoch warning nor its device lines; the
    results are readable as the umask allows."""
    out = tmp_path / "out"
    rc, stdout, stderr, ckpt = _start_and_signal(WANDB_ARGS, out, signal.SIGTERM, at_epoch=0)
    assert rc == 128 + signal.SIGTERM
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state[MID_EPOCH_KEY], "the premise: stopped within an epoch"
    folder = ckpt.parent.parent
    [first] = (folder / "wandb").glob("offline-run-*")
    run_id = first.name.rsplit("-", 1)[-1]
    assert state[WANDB_ID_KEY] == run_id
    resumed = _run(WANDB_ARGS, out)
    assert f"saved during epoch {state['epoch']}" in resumed.stdout
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[-1] for r in runs} == {run_id}
    assert f"upload them together with: wandb sync {runs[0]} {runs[1]}" in resumed.stdout
    assert "final test acc" in resumed.stdout and "mean of last 10" not in resumed.stdout  # 2 epochs: no such mean
    for log in (stdout + stderr, resumed.stdout + resumed.stderr):
        for noise in (FALSE_RESUME_WARNING, "GPU available", "TPU available"):
            assert noise not in log, noise
    umask = os.umask(0)
    os.umask(umask)
    for name in ("metrics.json", "history.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask, name


def test_starting_over_opens_a_new_wandb_run(tmp_path):
    """resume=false trains from scratch: its steps would clash with the old run's, so it gets a new wandb run."""
    out = tmp_path / "out"
    args = [*WANDB_ARGS[1:], "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
    _run(args, out)
    [folder] = out.glob("*/*/seed0")
    (folder / "metrics.json").unlink()  # as DVC does before rerunning a stage: the seed is no longer finished
    proc = _run([*args, "resume=false"], out)
    assert "resume=false: moved the old checkpoint" in proc.stdout
    ids = {p.name.rsplit("-", 1)[-1] for p in (folder / "wandb").glob("offline-run-*")}
    assert len(ids) == 2
    assert torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        WANDB_ID_KEY] in ids


def _compose_error(override: str) -> Exception:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"), \
            pytest.raises(Exception) as caught:
        compose(config_name="config", overrides=[override])
    return caught.value


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epoch=2", "unknown key trainer.max_epoch; did you mean trainer.max_epochs?"),
    ("seeed=1", "unknown key seeed; did you mean seed?"),
    ("model.rule.conventin=exact", "unknown key model.rule.conventin; did you mean model.rule.convention?"),
    ("hydra.run.dri=x", "unknown key hydra.run.dri; did you mean hydra.run.dir?"),
    ("trainer.regularizer.zzz=1", "unknown key trainer.regularizer.zzz; the keys of trainer.regularizer: lam, beta, "
                                  "limit; +trainer.regularizer.zzz=1 adds it as a new key"),
])
def test_a_misspelled_key_gets_did_you_mean(override, message):
    assert cli.unknown_key(_compose_error(override)) == message


def test_other_hydra_errors_keep_their_own_message():
    assert cli.unknown_key(_compose_error("dataset=mnistt")) is None
    assert cli.unknown_key(_compose_error("trainer.lr=[")) is None


@pytest.mark.parametrize("setting", ["output_root", "hydra.run.dir", "hydra.sweep.dir"])
def test_an_unwritable_folder_names_the_setting_that_chose_it(tmp_path, setting):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    multirun = ["-m", "seed=0,1"] if setting == "hydra.sweep.dir" else []
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), *multirun, "logger=none",
                           f"{setting}={blocker}/sub"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: cannot create the run directory {blocker}/sub")
    assert proc.stderr.endswith(f"{blocker} is a file, not a folder; choose another {setting}\n")
