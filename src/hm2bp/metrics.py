"""The ``metrics.json`` every finished run writes (its keys mark the run complete)."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_KEYS = ("experiment", "dataset", "model", "seed", "fingerprint", "test_acc", "best_test_acc", "best_epoch",
                "last10_test_acc", "epochs", "train_seconds", "train_samples_per_second")


def metrics_complete(path: Path) -> bool:
    """Whether ``path`` is a finished run's metrics file (all :data:`METRICS_KEYS` present)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in METRICS_KEYS)
