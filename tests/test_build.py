"""The C++ extension's build: the same ninja whatever PATH says, and one line on screen when (only when) it compiles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hm2bp import backend

COMPILING = "hm2bp: compiling the CPU kernels once"
LOAD = "import sys; from hm2bp import backend; sys.exit(backend.load_extension('cpu') is None)"


def _load(extensions: Path, path: str) -> subprocess.CompletedProcess[str]:
    """Load (building if needed) the extension in a fresh interpreter with ``PATH=path``."""
    env = {**os.environ, "HM2BP_EXTENSIONS_DIR": str(extensions), "PATH": path}
    return subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=900)


def _outputs(extensions: Path) -> dict[Path, int]:
    """Modification times of the build's objects and library."""
    return {p: p.stat().st_mtime_ns for p in extensions.rglob("*") if p.suffix in (".o", ".so")}


def test_a_second_load_under_another_path_compiles_nothing(tmp_path: Path) -> None:
    """`make` runs .venv/bin/python without the venv on PATH (the system's ninja comes first, if any), an activated
    venv puts the ninja package's first: built under one, the extension must load under the other without a
    recompile (ninja releases cannot read each other's build logs) and without the compile line."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine: the engine runs its pure-PyTorch path")
    venv_bin = Path(sys.executable).parent
    outside = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                              if d and Path(d).resolve() != venv_bin.resolve())
    first = _load(tmp_path, outside)  # as `make` runs it
    assert first.returncode == 0, first.stderr
    assert COMPILING in first.stderr
    built = _outputs(tmp_path)
    assert any(p.suffix == ".so" for p in built), sorted(built)

    second = _load(tmp_path, str(venv_bin) + os.pathsep + outside)  # as an activated venv runs it
    assert second.returncode == 0, second.stderr
    assert COMPILING not in second.stderr
    assert _outputs(tmp_path) == built, "the second load recompiled the extension"


def test_the_build_path_is_restored() -> None:
    """The ninja package's folder leads PATH only while the extension builds."""
    before = os.environ.get("PATH")
    with backend._ninja_first_on_path() as ninja:
        assert ninja is not None
        assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(ninja).parent)
    assert os.environ.get("PATH") == before
