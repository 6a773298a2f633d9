"""Checkpoints of a run: atomic ``last.ckpt`` at every epoch end (and every N minutes), on SIGTERM/Ctrl-C and on a
SLURM requeue signal; reading and checking them before a resume; moving them aside for ``resume=false``.

A checkpoint written mid-epoch resumes exactly where it stopped: it holds the batches already trained in the epoch
(the sampler skips them on resume) and the module's per-epoch accumulators, so the resumed run's history equals an
uninterrupted run's. A signal is only noted when it arrives; the checkpoint is written after the current batch, so
a half-applied optimizer step is never saved.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from hm2bp.io import fsync_dir
from hm2bp.metrics import differences

FINGERPRINT_KEY, CONFIG_KEY, MID_EPOCH_KEY = "hm2bp_fingerprint", "hm2bp_config", "hm2bp_mid_epoch"
WANDB_ID_KEY = "hm2bp_wandb_id"  # the wandb run the training so far was logged to: a resume continues it
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # Lightning's and submitit's SLURM pre-timeout signals
DDP_AGREE_EVERY = 10  # under DDP a noted signal (or a timed save) is acted on after a batch index divisible by this


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or one of another config."""


class ForeignCheckpoint(CheckpointError):
    """A readable checkpoint written by a run of another config."""


class RunInterrupted(RuntimeError):
    """Training stopped on a signal after saving its checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU), or a clear :class:`CheckpointError` if it is corrupt or truncated."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError("no state_dict inside")
    except Exception as err:
        raise CheckpointError(
            f"cannot resume from {path}: the checkpoint is corrupt or truncated ({type(err).__name__}: {err}). "
            f"Rerun with resume=false to move it aside and start this run over; nothing else was touched."
        ) from err
    return state


def check_resumable(path: Path, fingerprint: str, config: dict) -> dict[str, Any]:
    """Read ``path`` and refuse it unless it was written by a run of this ``fingerprint`` (the message lists the
    config keys that differ)."""
    state = read_checkpoint(path)
    theirs = state.get(FINGERPRINT_KEY)
    if theirs != fingerprint:
        diff = differences(state.get(CONFIG_KEY, {}), config) if CONFIG_KEY in state else \
            ["the checkpoint records no hm2bp config: not written by this app"]
        raise ForeignCheckpoint(
            f"refusing to resume {path}: it belongs to another config (fingerprint {theirs}, this run "
            f"{fingerprint}); differing keys: {'; '.join(diff)}. Rerun with resume=false to move it aside and start "
            f"over, or restore the config that wrote it.")
    return state


def move_aside(path: Path) -> Path:
    """Move ``path`` into ``<its folder>/replaced/<UTC time>-<name>`` (never overwriting) and return the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.parent / "replaced" / f"{stamp}-{path.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def atomic_save(trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temp file beside ``path``, fsync, then rename and fsync the folder: readers
    see the old or new file, and a machine crash after this returns still finds the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp, weights_only=False)
    if trainer.is_global_zero:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    trainer.strategy.barrier("hm2bp_checkpoint")


class RunCheckpoint(Callback):
    """Writes ``path`` (``last.ckpt``) atomically at every epoch end, every ``every_minutes`` of training when set,
    and after the current batch when SIGTERM, SIGINT (Ctrl-C) or, under SLURM, a requeue signal arrives; then it
    stops training with :class:`RunInterrupted` (after ``scontrol requeue`` for a requeue signal). A second Ctrl-C
    stops at once. Every checkpoint records the run's fingerprint and config, and ``wandb_id`` (the wandb run it
    logs to) when set. ``clock`` (seconds) times the timed saves; tests pass a fake one."""

    def __init__(self, path: Path, fingerprint: str, config: dict, every_minutes: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wandb_id: str | None = None) -> None:
        self.path, self.fingerprint, self.config, self.wandb_id = Path(path), fingerprint, config, wandb_id
        self.every_seconds = None if every_minutes is None else 60.0 * float(every_minutes)
        self.clock = clock
        self.received: int | None = None
        self._last_save = clock()
        self._mid_epoch = False

    # -- signals ----------------------------------------------------------------------------------------------
    def _signals(self) -> tuple[int, ...]:
        extra = REQUEUE_SIGNALS if os.environ.get("SLURM_JOB_ID") else ()
        return (signal.SIGTERM, signal.SIGINT, *extra)

    def _note(self, signum: int, _frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a new checkpoint
        self.received = signum
        print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after this batch "
              f"(Ctrl-C again to stop at once)", flush=True)

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Note the signals above while the block (``trainer.fit``) runs; the previous handlers come back after.

        Installed outside ``fit`` on purpose: Lightning's own SIGTERM handler, registered inside ``fit``, then chains
        to this one and restores it (not the default) at its teardown, before this block restores the default.
        """
        self.received = None
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for s in self._signals():
                previous[s] = signal.signal(s, self._note)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._last_save = self.clock()

    def on_train_start(self, trainer, pl_module) -> None:
        """Under DDP, take SIGTERM back from Lightning (which registers its handler after ``on_fit_start``): its
        handler broadcasts from inside the signal handler and its loops exit without a checkpoint, which deadlocks
        or loses the epoch; ours only notes the signal, and the processes agree after the batch (:meth:`_agree`).
        Lightning's teardown restores the handler installed before ``fit``: ours again."""
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note)

    # -- saving -----------------------------------------------------------------------------------------------
    def _save(self, trainer) -> None:
        atomic_save(trainer, self.path)
        self._last_save = self.clock()

    def _stop(self, trainer, signum: int, where: str) -> None:
        name = signal.Signals(signum).name
        message = (f"interrupted by {name} {where}: saved {self.path}; run the same command again to resume from "
                   f"there")
        if signum in REQUEUE_SIGNALS and os.environ.get("SLURM_JOB_ID") and trainer.is_global_zero:  # once a job
            job = os.environ["SLURM_JOB_ID"]
            proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            message += (f"; SLURM job {job} requeued, it resumes by itself" if proc.returncode == 0 else
                        f"; `scontrol requeue {job}` failed ({proc.stderr.strip()}): resubmit it")
        raise RunInterrupted(message, signum)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[FINGERPRINT_KEY] = self.fingerprint
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[MID_EPOCH_KEY] = self._mid_epoch
        if self.wandb_id is not None:
            checkpoint[WANDB_ID_KEY] = self.wandb_id

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if checkpoint.get(MID_EPOCH_KEY) and trainer.datamodule is not None:
            trainer.datamodule.resume_within_epoch(pl_module.samples_this_epoch)

    def _agree(self, trainer, due: bool) -> tuple[int | None, bool]:
        """``(signal, due)`` to act on now: under DDP every process must save and stop together, on the largest
        signal number noted by any process and whether a timed save is due on any (one small all-reduce, only with
        several processes). Callers act on these values, not on :attr:`received`: a signal noted after the
        all-reduce waits for the next agreement, or one process would stop while the others go on."""
        signum = self.received
        if trainer.world_size > 1:
            flags = torch.tensor([signum or 0, int(due)], dtype=torch.int64, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            signum, due = (int(v) or None for v in flags.tolist())
            self.received = self.received or signum
        return signum, bool(due)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's last batch: the epoch-end checkpoint follows its validation
        if trainer.world_size > 1 and (batch_idx + 1) % DDP_AGREE_EVERY:
            return  # under DDP the processes compare notes every few batches only (a sync on GPUs)
        signum, due = self._agree(trainer, self.every_seconds is not None and
                                  self.clock() - self._last_save >= self.every_seconds)
        if signum is None and not due:
            return
        self._mid_epoch = True
        try:
            self._save(trainer)
        finally:
            self._mid_epoch = False
        if signum is not None:
            self._stop(trainer, signum, f"at epoch {trainer.current_epoch}, batch {batch_idx + 1}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        signum, _ = self._agree(trainer, False)
        self._save(trainer)
        if signum is not None:
            self._stop(trainer, signum, f"at the end of epoch {trainer.current_epoch}")
