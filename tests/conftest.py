"""Shared helpers for the tests: random spike trains that respect the refractory period."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from hm2bp import backend

# Subprocesses that change HOME (e.g. the wandb tests) must still find the compiled kernels instead of rebuilding
# them (~2 minutes here).
os.environ.setdefault("HM2BP_EXTENSIONS_DIR", str(backend.DEFAULT_EXTENSIONS_DIR))
# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter (HM2BP_OPS=triton in the tests);
# it must be chosen before the kernels' module is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def refractory_trains(rng: np.random.Generator, batch: int, steps: int, neurons: int, rate: float,
                      t_ref: int = 2) -> torch.Tensor:
    """``(B, T, N)`` float64 0/1 trains with inter-spike intervals > ``t_ref`` and no spike at t = 0."""
    out = np.zeros((batch, steps, neurons))
    for b in range(batch):
        for n in range(neurons):
            last = -(t_ref + 1)
            for t in range(1, steps):
                if t - last > t_ref and rng.random() < rate:
                    out[b, t, n] = 1.0
                    last = t
    return torch.from_numpy(out)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def ops_backend() -> Iterator[Callable[[str], None]]:
    """Choose the :mod:`hm2bp.backend` kernels for one test (``"compiled"`` skips where no C++ compiler exists)."""
    def use(name: str) -> None:
        if name == "compiled" and backend.load_extension("cpu") is None:
            pytest.skip("no C++ compiler on this machine: the engine runs its pure-PyTorch path")
        if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("the Triton path on CPU tensors runs through Triton's interpreter, which is chosen only where "
                        "no GPU exists (on a GPU, tests/test_triton.py runs the kernels on CUDA tensors)")
        backend.set_backend(name)

    yield use
    backend.set_backend("auto")


@pytest.fixture
def contraction() -> Iterator[Callable[[str], None]]:
    """Choose the pure-PyTorch path's contraction strategy for one test (:func:`hm2bp.backend.set_strategy`)."""
    yield backend.set_strategy
    backend.set_strategy("auto")


def nonempty(items: list, what: str) -> list:
    """``items`` for a ``parametrize``, or a collection error when it is empty (a glob that found nothing must not
    pass as zero tests)."""
    if not items:
        raise RuntimeError(f"no {what} found: the parametrized tests would silently vanish")
    return items


def run_dir(root, experiment: str, seed: int = 0):
    """The single run dir ``<root>/<dataset>-<model>/<fingerprint>/seed<seed>`` of ``experiment``: its folder's
    ``<dataset>-<model>`` part, or an experiment name in its ``commands.txt`` (fails on none or several)."""
    from pathlib import Path

    from hm2bp.app.identity import COMMANDS_FILE

    def named(folder: Path) -> bool:
        commands = folder.parent / COMMANDS_FILE
        lines = commands.read_text().splitlines() if commands.exists() else []
        return folder.parent.parent.name == experiment or any(line.startswith(f"{experiment}: ") for line in lines)

    found = sorted(f for f in Path(root).glob(f"*/*/seed{seed}") if named(f))
    assert len(found) == 1, f"expected one run dir of {experiment} seed {seed} under {root}, found {found}"
    return found[0]


def trained(history: list[dict]) -> list[dict]:
    """A history without its machine-dependent keys (:data:`hm2bp.metrics.MACHINE_KEYS`): what equal training
    shares."""
    from hm2bp.metrics import MACHINE_KEYS

    return [{k: v for k, v in row.items() if k not in MACHINE_KEYS} for row in history]

