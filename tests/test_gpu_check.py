"""bench/gpu_check.sh, the script a GPU session runs once, rehearsed on CPU with the packages the GPU image lacks made
unimportable: every result file appears with plausible values and every phase is recorded as ok. Also: the wheel
recipe it installs is complete, and the in-memory data of its app rows equal what the file loaders make."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
ROWS = ["mnist_mlp", "mnist_cnn", "nmnist_mlp", "emnist_mlp_400_400"]
PHASES = ["env", "gpu_epoch", "gpu_epoch_bptt", *(f"app_{r}" for r in ROWS), "wheels", "tests"]
# What the GPU image holds (Python 3.12, torch, triton, lightning, torchmetrics, numpy and their own requirements)
IMAGE = {"torch", "triton", "lightning", "torchmetrics", "numpy"}
# Installed here, absent there: a rehearsal that imports one of them would pass here and fail on the GPU machine.
IMAGE_LACKS = ["hydra", "omegaconf", "wandb", "tonic", "scipy", "sklearn", "matplotlib", "pandas", "psutil",
               "hypothesis", "nir", "nirtorch", "snntorch", "mlxtend", "dvc", "soundfile", "lyon", "espeakng_loader"]
# Not a finder that raises: the image answers ``importlib.util.find_spec("hypothesis")`` (torch._dynamo probes it)
# with None, and has no metadata of these distributions (lightning and torchmetrics check requirements by it), so
# every finder must miss them, modules and distributions, as when they are not installed.
BLOCKER = '''import importlib.abc, re, sys
MODULES, DISTRIBUTIONS = {modules!r}, {distributions!r}
class _Absent(importlib.abc.MetaPathFinder):
    """One of the path's finders, blind to the packages the GPU image lacks."""
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        find = getattr(self.finder, "find_spec", None)
        return None if find is None or name.partition(".")[0] in MODULES else find(name, path, target)
    def find_distributions(self, *args, **kwargs):
        find = getattr(self.finder, "find_distributions", None)
        return [] if find is None else [d for d in find(*args, **kwargs)
                                        if re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() not in DISTRIBUTIONS]
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [_Absent(f) for f in sys.meta_path]
'''


def _image_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a run as on the GPU image: a ``sitecustomize`` first on the path blocks what it lacks."""
    site = tmp_path / "blocker"
    site.mkdir()
    dists = importlib.metadata.packages_distributions()
    names = {canonicalize_name(d) for m in IMAGE_LACKS for d in dists.get(m, [])}
    (site / "sitecustomize.py").write_text(BLOCKER.format(modules=set(IMAGE_LACKS), distributions=names))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "HM2BP_OPS", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(site), "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}


@pytest.mark.slow  # ~90 s: run before a session spends GPU time (make test-slow, or pytest -m slow this file)
def test_rehearsal_writes_every_result_with_the_image_packages_blocked(tmp_path):
    env = _image_env(tmp_path)
    probe = ("import importlib.metadata as m, importlib.util as u; assert u.find_spec('scipy') is None; "
             "assert u.find_spec('torch') and m.version('torch'); m.version('scikit-learn')")
    blocked = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert "PackageNotFoundError: No package metadata was found for scikit-learn" in blocked.stderr  # blocker is on
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--rehearse"], env=env, capture_output=True,
                         text=True, timeout=900)  # a backstop: each phase has its timeout
    out = Path(env["OUT"])
    summary = json.loads((out / "summary.json").read_text())
    status = {p["name"]: p["status"] for p in summary["phases"]}
    wheels = "ok" if (ROOT / "bench" / "wheels").is_dir() else "skipped"  # filled by make gpu-wheels, or not
    expected = {name: wheels if name == "wheels" else "ok" for name in PHASES}
    assert status == expected, run.stdout[-4000:]
    assert run.returncode == 0, run.stdout[-4000:]
    assert summary["mode"] == "rehearsal" and summary["failed"] == []
    assert all(p["seconds"] > 0 for p in summary["phases"] if p["status"] == "ok")
    assert all((out / p["log"]).is_file() for p in summary["phases"])

    info = json.loads((out / "env.json").read_text())
    assert info["torch"] == torch.__version__ and info["cuda_available"] is False and info["triton"]
    for name, rule in (("gpu_epoch", "hm2bp"), ("gpu_epoch_bptt", "bptt")):
        engine = json.loads((out / f"{name}.json").read_text())
        assert engine["ops_backend"] == "triton" and engine["rule"] == rule
        assert engine["samples"] > 0 and engine["epoch_seconds"] > 0
        assert engine["samples_per_second"] == pytest.approx(engine["samples"] / engine["epoch_seconds"])
        profile = (out / f"{name}_profile.txt").read_text()  # where the step's time goes
        assert profile.startswith(f"{rule}: 3 steps") and "Optimizer.step" in profile
    combined = json.loads((out / "gpu_app_epoch.json").read_text())
    assert list(combined["rows"]) == ROWS and combined["kernels"] == "triton"
    assert combined["run_id"] == summary["run_id"] and combined["total_gpu_hours"] > 0
    for name in ROWS:
        row = json.loads((out / f"gpu_app_{name}.json").read_text())
        assert row["row"] == name and row["run_id"] == summary["run_id"]
        assert row["samples"] > 0 and row["epoch_seconds"] > 0 and row["steps"] == 8 and row["capped"] is False
        assert {k: row[k] for k in combined["rows"][name]} == combined["rows"][name]
    section = (out / "BENCHMARKS.md").read_text().split("<!-- gpu-app:start -->")[1].split("<!-- gpu-app:end -->")[0]
    assert all(f"| {name} |" in section for name in ROWS) and "**total**" in section


def test_wheel_recipe_holds_what_pytest_needs_beyond_the_image():
    """bench/wheels.txt is closed under the (Python 3.12, Linux) requirements of what it lists, and the GPU run's
    test files import nothing beyond the standard library, the image, the recipe and hm2bp."""
    pins = [Requirement(line) for line in (ROOT / "bench" / "wheels.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pins)  # pinned
    names = {canonicalize_name(r.name) for r in pins}
    assert "pytest" in names
    image = {canonicalize_name(n) for n in IMAGE}
    for pin in pins:
        for text in importlib.metadata.requires(pin.name) or []:
            need = Requirement(text)
            if need.marker is None or need.marker.evaluate({"python_version": "3.12", "sys_platform": "linux",
                                                            "platform_system": "Linux", "extra": ""}):
                assert canonicalize_name(need.name) in names | image, f"{pin.name} needs {need.name}"
    modules = set()
    script = (ROOT / "bench" / "gpu_check.sh").read_text()
    gpu_tests = [t for found in re.findall(r"TESTS=\(([^)]*)\)", script) for t in found.split() if "::" not in t]
    assert "tests/test_triton.py" in gpu_tests
    for test in ("tests/conftest.py", *gpu_tests):
        for node in ast.walk(ast.parse((ROOT / test).read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.partition(".")[0])
    allowed = set(sys.stdlib_module_names) | IMAGE | {"pytest", "hm2bp", "conftest"}
    assert modules - allowed == set()


@pytest.fixture
def app_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_app_epoch

    return gpu_app_epoch


def test_in_memory_images_equal_the_idx_files(tmp_path, app_bench):
    from hm2bp.app.data import SpikeData
    from hm2bp.data.idx import write_idx

    for dataset, stem in (("mnist", ("train", "t10k")), ("emnist", ("emnist-balanced-train", "emnist-balanced-test"))):
        splits = app_bench.make_splits(dataset, 6, 4, 20, np.random.default_rng(3))
        for name, (x, y) in zip(stem, (splits[:2], splits[2:]), strict=True):
            images = x.numpy().reshape(-1, 28, 28).astype(np.uint8)
            write_idx(tmp_path / dataset / f"{name}-images-idx3-ubyte",
                      images.transpose(0, 2, 1) if dataset == "emnist" else images)  # EMNIST's files: transposed
            write_idx(tmp_path / dataset / f"{name}-labels-idx1-ubyte", y.numpy())
        spikes = []
        for kwargs in ({"data_dir": tmp_path}, {"data_dir": ".", "splits": splits}):
            data = SpikeData(dataset, steps=20, batch_size=6, seed=0, device_encoding=True, **kwargs)
            data.setup()
            batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
            spikes.append((batch[0], batch[1], data.test.pixels))
        assert all(torch.equal(a, b) for a, b in zip(*spikes, strict=True))
        assert spikes[0][0].sum() > 0


def test_in_memory_events_equal_the_nmnist_files(tmp_path, app_bench):
    pytest.importorskip("tonic")
    from hm2bp.data.nmnist import encode_events, load_nmnist

    rng = np.random.default_rng(5)
    events = [app_bench.nmnist_events(rng) for _ in range(10)]
    for split in ("Train", "Test"):
        for digit, ev in enumerate(events):  # tonic lists the files class by class: sample k is digit k
            folder = tmp_path / "NMNIST" / split / str(digit)
            folder.mkdir(parents=True)
            (folder / "00000.bin").write_bytes(encode_events(ev[["x", "y", "p", "t"]].tolist()))
    from_files, _ = load_nmnist(tmp_path, steps=540)
    in_memory = app_bench.make_splits("nmnist", 10, 1, 540, np.random.default_rng(5))[0]
    idx = torch.arange(10)
    assert torch.equal(from_files.labels, in_memory.labels)
    assert torch.equal(from_files.spikes(idx), in_memory.spikes(idx)) and in_memory.spikes(idx).sum() > 0
