"""What the command line shows of errors users cause: one ``error: …`` line and a non-zero exit, no traceback
(``HYDRA_FULL_ERROR=1`` shows it), checked before any work starts where possible."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hm2bp.app.checkpoints import CheckpointError, RunInterrupted
from hm2bp.app.config import ConfigError
from hm2bp.app.module import NonFiniteError
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
