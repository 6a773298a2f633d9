"""What the command line shows of errors users cause: one ``error: …`` line and a non-zero exit, no traceback
(``HYDRA_FULL_ERROR=1`` shows it), checked before any work starts where possible."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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


def check_writable(folder: Path) -> None:
    """Raise :class:`OutputError` unless ``folder`` exists as a writable directory or can be created."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"cannot create the run directory {folder}: {probe} is a file, not a folder; choose "
                          f"another output_root")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create the run directory {folder}: {probe} is not writable; choose another "
                          f"output_root")


class Preflight(Callback):
    """Hydra callback: checks the output folder before Hydra creates it (and fails with the app's own message)."""

    def _check(self, folder: str) -> None:
        try:
            check_writable(Path(folder))
        except OutputError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(str(err))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_library_noise() -> None:
    """Silence, narrowly, messages of libraries that tell a user nothing about the run (idempotent):
    Lightning 2.6's litlogger advertisement and its own use of torch's deprecated ``LeafSpec``."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
        logger.addFilter(_DropLitLoggerTip())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")


def where_the_files_are(run_dir: Path) -> str:
    """Lines for the end of a run: its folder, the files in it and, for an offline wandb run, how to upload it."""
    names = [n for n in ("metrics.json", "history.json", "learning_curves.png", "raster.png", "checkpoints/last.ckpt")
             if (run_dir / n).exists()]
    lines = [f"run files in {run_dir}: {', '.join(names)}"]
    offline = sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    if offline:
        run = offline[-1]
        lines.append(f"wandb (offline) run in {run}; upload it with: wandb sync {shlex.quote(str(run))}")
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
                fail(one_line(f"{err}{cause}"))
        return original(guarded)

    run_and_report.hm2bp = True
    hydra_utils.run_and_report = run_and_report
