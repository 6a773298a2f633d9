"""A run's identity: the fingerprint of everything in its resolved config that can change its result.

Two runs share a fingerprint exactly when they train the same thing (the seed aside: the seeds of one config form
one group of the report). Paths, logging, progress display, thread counts, checkpoint timing and the experiment's
name are not part of it. The fingerprint names the run directory
(``<output_root>/<dataset.name>-<model.name>/<fingerprint>/seed<seed>``, both names inside the fingerprint), so
every command that resolves to the same config, however it is spelled (``dataset=emnist`` or
``experiment=emnist_mlp_400_400``), finds the same folder: its finished seeds are skipped, its checkpoints resumed.
It is also stored in ``metrics.json`` and in every checkpoint. :data:`COMMANDS_FILE` beside the seed folders lists
the commands that used the folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Top-level keys and dotted paths that never change what a run computes.
EXCLUDED = frozenset({
    "seed", "experiment_name", "output_root", "data_dir", "resume", "logger", "hydra",
    "dataset.download", "dataset.url",  # where files come from: they are checked against their MD5 sums
    "trainer.progress_bar", "trainer.num_threads", "trainer.checkpoint_every_minutes",
    "trainer.device_encoding", "trainer.num_workers", "trainer.pin_memory",  # same spikes wherever they are made
    "trainer.strategy",  # how the processes are started; trainer.devices (in the fingerprint) sets how many
    "trainer.contraction",  # the same gradients up to rounding, like the kernels the backend picks
})
FINGERPRINT_CHARS = 12
# Beside the seed folders of one config: one line per distinct command that ran in it, ``<experiment name>: python
# src/run.py <overrides>``, the readable half of a folder whose name is only the fingerprint.
COMMANDS_FILE = "commands.txt"


def _drop(tree: dict, prefix: str = "") -> dict:
    return {k: (_drop(v, f"{prefix}{k}.") if isinstance(v, dict) else v)
            for k, v in tree.items() if f"{prefix}{k}" not in EXCLUDED}


def run_config(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """The resolved config minus :data:`EXCLUDED`: what the fingerprint covers (stored beside it)."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    tree.pop("hydra", None)
    return _drop(tree)


def fingerprint(config: Mapping[str, Any]) -> str:
    """``sha256`` of the canonical JSON of a :func:`run_config` (sorted keys), first 12 hex digits."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]


def _fingerprint_resolver(*, _root_: DictConfig) -> str:
    """``${hm2bp_fingerprint:}`` in ``hydra.run.dir``/``hydra.sweep.subdir``: :func:`fingerprint` of this job."""
    tree = OmegaConf.to_container(_root_, resolve=False)
    tree.pop("hydra", None)
    return fingerprint(run_config(OmegaConf.create(tree)))


def register_resolvers() -> None:
    """Make ``${hm2bp_fingerprint:}`` available to Hydra's configs (idempotent)."""
    if not OmegaConf.has_resolver("hm2bp_fingerprint"):
        OmegaConf.register_new_resolver("hm2bp_fingerprint", _fingerprint_resolver)


def command_line(experiment_name: str, overrides: list[str]) -> str:
    """One line of :data:`COMMANDS_FILE`: the experiment name and the command with its overrides, shell-quoted,
    without ``seed=…`` (every seed of the config shares the line; the seed has its own folder)."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed"]
    return f"{experiment_name}: " + shlex.join(["python", "src/run.py", *kept])


def record_command(run_dir: Path, seed: int, experiment_name: str, overrides: list[str]) -> Path | None:
    """Add :func:`command_line` to :data:`COMMANDS_FILE` beside ``run_dir`` unless it is there already; return the
    file. Only for a run dir of the layout's shape (``…/seed<seed>``): a ``hydra.run.dir`` forced elsewhere gets
    none, so no file lands in a folder the app does not own. Concurrent writers (a multirun's jobs) take turns
    under an exclusive lock, so each line is written whole and once."""
    if run_dir.name != f"seed{seed}":
        return None
    path = run_dir.parent / COMMANDS_FILE
    line = command_line(experiment_name, overrides)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            if line not in f.read().splitlines():
                f.write(line + "\n")
                f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return path


register_resolvers()  # importing this module makes ${hm2bp_fingerprint:} available to Hydra
