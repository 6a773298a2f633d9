"""A run's identity: the fingerprint of everything in its resolved config that can change its result.

Two runs share a fingerprint exactly when they train the same thing (the seed aside: the seeds of one config form
one group of the report). Paths, logging, progress display, thread counts and checkpoint timing are not part of it.
The fingerprint names the run directory (``<output_root>/<experiment>/<label>/seed<seed>``), is stored in
``metrics.json`` and in every checkpoint, and decides whether a finished run is skipped or a checkpoint resumed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Top-level keys and dotted paths that never change what a run computes.
EXCLUDED = frozenset({
    "seed", "experiment_name", "output_root", "data_dir", "resume", "logger", "hydra",
    "dataset.download", "trainer.progress_bar", "trainer.num_threads", "trainer.checkpoint_every_minutes",
    "trainer.device_encoding", "trainer.num_workers", "trainer.pin_memory",  # same spikes wherever they are made
    "trainer.strategy",  # how the processes are started; trainer.devices (in the fingerprint) sets how many
    "trainer.contraction",  # the same gradients up to rounding, like the kernels the backend picks
})
# Command-line overrides left out of the readable part of the run directory's name (they are in the fingerprint
# or change nothing): the seed has its own folder, the experiment names the parent folder.
LABEL_EXCLUDED = frozenset({"seed", "experiment", "output_root", "data_dir", "resume", "logger", "hydra",
                            "trainer.progress_bar", "trainer.num_threads", "trainer.checkpoint_every_minutes",
                            "trainer.device_encoding", "trainer.num_workers", "trainer.pin_memory",
                            "trainer.strategy", "trainer.contraction"})
FINGERPRINT_CHARS = 12
LABEL_MAX_CHARS = 96


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


def _labelled(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return not any(key == k or key.startswith((f"{k}.", f"{k}/")) for k in LABEL_EXCLUDED)


def run_label(overrides: list[str], fp: str) -> str:
    """The run directory's middle part: the command-line overrides that matter, sorted and comma-joined, with every
    character a shell would expand or split on (brackets, braces, quotes, spaces, slashes, …) replaced by ``_`` and
    cut to :data:`LABEL_MAX_CHARS`; then ``-`` and the fingerprint. ``default-<fp>`` without any."""
    readable = re.sub(r"[^A-Za-z0-9._=,+:@-]", "_", ",".join(sorted(o for o in overrides if _labelled(o))))
    if len(readable) > LABEL_MAX_CHARS:
        readable = readable[:LABEL_MAX_CHARS - 3] + "..."
    return f"{readable or 'default'}-{fp}"


def _label_resolver(*, _root_: DictConfig) -> str:
    """``${hm2bp_run_label:}`` in ``hydra.run.dir``/``hydra.sweep.subdir``: :func:`run_label` of this job."""
    overrides = list(OmegaConf.select(_root_, "hydra.overrides.task", default=[]) or [])
    tree = OmegaConf.to_container(_root_, resolve=False)
    tree.pop("hydra", None)
    return run_label(overrides, fingerprint(run_config(OmegaConf.create(tree))))


def register_resolvers() -> None:
    """Make ``${hm2bp_run_label:}`` available to Hydra's configs (idempotent)."""
    if not OmegaConf.has_resolver("hm2bp_run_label"):
        OmegaConf.register_new_resolver("hm2bp_run_label", _label_resolver)


register_resolvers()  # importing this module makes ${hm2bp_run_label:} available to Hydra
