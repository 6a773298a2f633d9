"""The ``metrics.json`` every finished run writes: its keys mark the run complete; ``fingerprint`` and ``config``
identify the config that produced it (:mod:`hm2bp.app.identity`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_KEYS = ("experiment", "dataset", "model", "seed", "fingerprint", "test_acc", "best_test_acc", "best_epoch",
                "last10_test_acc", "epochs", "train_seconds", "train_samples_per_second")


def metrics_complete(path: Path) -> bool:
    """Whether ``path`` is a finished run's metrics file (all :data:`METRICS_KEYS` present)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in METRICS_KEYS)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old → new`` for every dotted key whose value differs (missing keys show as ``<unset>``)."""
    a, b = flatten(old), flatten(new)
    unset = "<unset>"
    return [f"{k}: {json.dumps(a.get(k, unset))} → {json.dumps(b.get(k, unset))}"
            for k in sorted(set(a) | set(b)) if a.get(k, unset) != b.get(k, unset)]
