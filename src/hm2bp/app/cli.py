"""What the command line shows of errors users cause: one ``error: …`` line and a non-zero exit, no traceback
(``HYDRA_FULL_ERROR=1`` shows it), checked before any work starts where possible."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import shlex
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hm2bp.app.checkpoints import CheckpointError, RunInterrupted
from hm2bp.app.config import ConfigError
from hm2bp.app.finite import NonFiniteError
from hm2bp.data.idx import DatasetFileError

USER_ERRORS = (ConfigError, CheckpointError, DatasetFileError, NonFiniteError)


class OutputError(OSError):
    """The run directory cannot be created or written."""


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` on stderr and exit with ``code`` (raise instead under ``HYDRA_FULL_ERROR=1``)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn :data:`USER_ERRORS` and :class:`RunInterrupted` raised in the block into :func:`fail`."""
    try:
        yield
    except RunInterrupted as stop:  # the checkpoint is saved: say how to resume, exit 128 + signal number
        fail(str(stop), stop.exit_code)
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(str(err))


def check_writable(folder: Path, key: str = "output_root") -> None:
    """Raise :class:`OutputError` unless ``folder`` exists as a writable directory or can be created; the message
    asks for another value of ``key``, the setting that chose the folder."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"cannot create the run directory {folder}: {probe} is a file, not a folder; choose "
                          f"another {key}")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create the run directory {folder}: {probe} is not writable; choose another "
                          f"{key}")


def folder_key(config: DictConfig, key: str) -> str:
    """The setting a user changes to move the output folder ``hydra.<key>.dir``: ``output_root`` while the folder
    is built from it (the default), else ``hydra.<key>.dir`` itself (set on the command line or in a config)."""
    raw = OmegaConf.to_container(config.hydra[key], resolve=False)["dir"]
    return "output_root" if "${output_root}" in str(raw) else f"hydra.{key}.dir"


class Preflight(Callback):
    """Hydra callback: checks the output folder before Hydra creates it (and fails with the app's own message)."""

    def _check(self, config: DictConfig, key: str) -> None:
        try:
            check_writable(Path(config.hydra[key].dir), folder_key(config, key))
        except OutputError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(str(err))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "sweep")


class _DropLightningNoise(logging.Filter):
    """Drops Lightning's litlogger advertisement and its device-availability lines ("GPU available: False, used:
    False", "TPU available: …", "HPU available: …"): the run's device is the one trainer.accelerator names. Its
    warnings ("GPU available but not used") pass. Also its advice to lower the float32 matmul precision on GPUs
    with tensor cores: hm2bp uses TF32 itself where it stays exact (split TF32, docs/gpu.md#precision), and
    following the advice would change the spikes."""

    NOISE = re.compile(r"litlogger|^[A-Z]PU available: |that has Tensor Cores\. To properly utilize them")

    def filter(self, record: logging.LogRecord) -> bool:
        return self.NOISE.search(record.getMessage()) is None


def quiet_library_noise() -> None:
    """Silence, narrowly, messages of libraries that tell a user nothing about the run (idempotent): Lightning
    2.6's litlogger advertisement, its device-availability lines and tensor-core advice, its own use of torch's
    deprecated ``LeafSpec``, and its false warning about resuming a mid-epoch checkpoint."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningNoise) for f in logger.filters):
        logger.addFilter(_DropLightningNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")
    # Lightning warns that a mid-epoch checkpoint resumes unreliably unless the dataloader has Lightning's own
    # state_dict interface. Ours resumes exactly by other means (RunCheckpoint.on_load_checkpoint: the sampler skips
    # the batches already trained and the epoch's accumulators are restored; tests/test_runs.py checks the resumed
    # history equals an uninterrupted run's), so the warning is false here.
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended "
                                              r"and your dataloader is not resumable", category=UserWarning)


def where_the_files_are(run_dir: Path) -> str:
    """Lines for the end of a run: its folder, the files in it and, for an offline wandb run, how to upload it."""
    names = [n for n in ("metrics.json", "history.json", "learning_curves.png", "raster.png", "checkpoints/last.ckpt")
             if (run_dir / n).exists()]
    lines = [f"run files in {run_dir}: {', '.join(names)}"]
    offline = sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    if offline:
        # wandb names them offline-run-<start time>-<run id>: a resumed run has one folder per launch, all to upload
        run_id = offline[-1].name.rsplit("-", 1)[-1]
        runs = sorted(p for p in offline if p.name.rsplit("-", 1)[-1] == run_id)
        paths = " ".join(shlex.quote(str(p)) for p in runs)
        if len(runs) == 1:
            lines.append(f"wandb (offline) run in {runs[0]}; upload it with: wandb sync {paths}")
        else:
            lines.append(f"wandb (offline) run {run_id} in {len(runs)} folders of {run_dir / 'wandb'} (one per "
                         f"launch: it was resumed); upload them together with: wandb sync {paths}")
    elif (run_dir / "csv" / "metrics.csv").exists():
        lines.append(f"per-step metrics in {run_dir / 'csv' / 'metrics.csv'}")
    return "\n".join(lines)


_DETAIL_LINES = ("full_key:", "object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR")


def one_line(message: str) -> str:
    """A Hydra composition error in one line: its sentences joined, option lists inline, no search path."""
    parts: list[str] = []
    for raw in message.split("Config search path:")[0].splitlines():
        line = raw.strip()
        if not line or line.startswith(_DETAIL_LINES):
            continue
        if raw.startswith("\t") and parts:  # one of the options listed under "Available options in …:"
            parts[-1] += ("" if parts[-1].endswith(":") else ",") + " " + line
        else:
            parts.append(line)
    return "; ".join(p.rstrip(".") for p in parts)


def unknown_key(err: BaseException) -> str | None:
    """``unknown key trainer.max_epoch; did you mean trainer.max_epochs?`` for Hydra's error about overriding a key
    the config lacks (``err``: its ``ConfigCompositionException``), with the keys of that node to choose from when
    none is close; None for any other error."""
    cause = err.__cause__
    # "Key 'x' is not in struct" (a YAML node) or "Key 'x' not in 'RunDir'" (a structured one, e.g. hydra.run)
    if not isinstance(cause, OmegaConfBaseException) or not re.match(r"Key '[^']*' (is )?not in ", str(cause)):
        return None
    key, full_key, node = str(cause.key), str(cause.full_key), cause.parent_node
    where = full_key[:-len(key)] if full_key.endswith(key) else ""
    keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(key, keys, n=3)
    if close:
        return f"unknown key {full_key}; did you mean {' or '.join(where + k for k in close)}?"
    given = re.search(r"use (\+\S+)", str(err))
    add = f"; {given.group(1)} adds it as a new key" if given else ""
    if not keys:
        return f"unknown key {full_key}: {where.rstrip('.') or 'the config'} has no keys to set{add}"
    return f"unknown key {full_key}; the keys of {where.rstrip('.') or 'the config'}: {', '.join(keys)}{add}"


def one_line_hydra_errors() -> None:
    """Make Hydra report its own composition errors (unknown option, misspelled key, bad override) as one
    ``error: …`` line; other exceptions keep Hydra's report, and ``HYDRA_FULL_ERROR=1`` the full traceback."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    if getattr(original, "hm2bp", False):
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except HydraException as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                cause = f"\n{err.__cause__}" if err.__cause__ is not None else ""
                fail(unknown_key(err) or one_line(f"{err}{cause}"))
        return original(guarded)

    run_and_report.hm2bp = True
    hydra_utils.run_and_report = run_and_report
