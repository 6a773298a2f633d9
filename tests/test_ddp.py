"""Lightning DDP (trainer=ddp) with 2 CPU processes over gloo: the same training as one process at the doubled
batch (weights, boosting weights, the whole history), disjoint shards of the seeded order, one complete
metrics.json, and a killed run that resumes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_dir, trained
from hm2bp.data.order import EpochPermutation, SwapShuffle

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "digits-mlp64-800-10"
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
# 3 epochs of 4 global steps on digits, 2 test batches per process; batch 8 per process = 16 in one
COMMON = ["trainer.max_epochs=3", "trainer.limit_train_batches=4", "trainer.progress_bar=false", "logger=none",
          "trainer.num_threads=1"]
DDP = [*COMMON, "trainer=ddp", "trainer.devices=2", "trainer.batch_size=8", "trainer.limit_val_batches=2"]
SINGLE = [*COMMON, "trainer.batch_size=16", "trainer.limit_val_batches=2"]


def _cmd(args: list[str], out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "src" / "run.py"), *args, f"output_root={out}"]


def _run(args: list[str], out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(args, out), cwd=out.parent, env=ENV, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"run.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _same_history(a: list[dict], b: list[dict]) -> bool:
    """Accuracies and counts equal; float sums (loss, rates) equal up to their summation order."""
    exact = ("epoch", "train_acc", "test_acc", "test_silent_outputs", "train_samples", "lr", "lateral_clamped")
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k] == y[k] if k in exact else x[k] == pytest.approx(y[k], rel=1e-6)
                                     for k in x) for x, y in zip(a, b, strict=True))


def _state(folder: Path) -> tuple[dict, list[dict], dict]:
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    history = trained(json.loads((folder / "history.json").read_text()))
    return ckpt, history, json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    _run(SINGLE, out)
    return _state(run_dir(out, EXPERIMENT))


def test_two_processes_train_as_one_at_the_doubled_batch(tmp_path, single):
    out = tmp_path / "out"
    proc = _run(DDP, out)
    folder = run_dir(out, EXPERIMENT)
    ckpt, history, metrics = _state(folder)
    ckpt1, history1, metrics1 = single
    # the loss is a batch mean and DDP averages the two processes' gradients: the mean over the global batch
    for name, w in ckpt1["state_dict"].items():
        torch.testing.assert_close(ckpt["state_dict"][name], w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ckpt["hm2bp_boosting"]["weights"], ckpt1["hm2bp_boosting"]["weights"])
    assert (ckpt1["hm2bp_boosting"]["weights"] != 1).any()  # boosting did act, on both processes' samples alike
    assert len(history) == 3 and _same_history(history, history1)  # sums over both processes
    assert history[0]["train_samples"] == 64
    assert metrics["test_acc"] == metrics1["test_acc"] and metrics["config"]["trainer"]["devices"] == 2
    # written once: one metrics.json, one report line
    assert [p.name for p in folder.rglob("metrics.json")] == ["metrics.json"]
    assert proc.stdout.count("final test acc") == 1


def test_killed_ddp_run_resumes(tmp_path, single):
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(DDP, out), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline, ckpt = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob(f"{EXPERIMENT}/*/seed0/checkpoints/last.ckpt"))
        if found:  # epoch 0's checkpoint (written by rename): two epochs are left to kill the run in
            ckpt = found[0]
            break
        time.sleep(0.05)
    assert ckpt is not None and proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # both processes, no checkpoint on the way out
    proc.communicate(timeout=60)
    # What the kill left, read after it: the final epoch's checkpoint would leave nothing to resume
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    k = int(state["epoch"])
    assert k < 3 - 1 and not state["hm2bp_mid_epoch"], f"killed after the last epoch's checkpoint (epoch {k})"
    assert not (ckpt.parent.parent / "metrics.json").exists()
    resumed = _run(DDP, out)
    assert f"resuming from {ckpt} (saved at the end of epoch {k})" in resumed.stdout
    folder = ckpt.parent.parent
    timed = json.loads((folder / "history.json").read_text())
    assert [h["train_seconds"] for h in timed[:k + 1]] == [h["train_seconds"] for h in state["hm2bp_history"]]
    _, history, _ = _state(folder)
    assert _same_history(history, single[1])


@pytest.mark.parametrize("kind", [EpochPermutation, SwapShuffle])
def test_ranks_take_disjoint_shards_of_one_seeded_order(kind):
    n, world = 11, 3
    order = kind(n, seed=4).order()
    shards = [list(kind(n, seed=4, rank=r, world=world)) for r in range(world)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded with the order's first sample: equal step counts
    steps = [[shards[r][i] for r in range(world)] for i in range(4)]
    # step i of all ranks = the single process's samples 3i … 3i + 2
    assert list(itertools.chain(*steps)) == order + order[:1]
    assert sorted(set(itertools.chain(*shards))) == list(range(n))
    with pytest.raises(ValueError, match="need 0 <= rank < world"):
        kind(n, seed=4, rank=3, world=3)


@pytest.mark.slow  # ~30 s; test_killed_ddp_run_resumes stays in the default run
def test_sigterm_stops_both_processes_mid_epoch_and_the_run_resumes_exactly(tmp_path):
    """SIGTERM to the job (as SLURM or a scheduler sends it): the processes agree to save after the same batch,
    each process's part of the epoch goes into the checkpoint, and the resumed run's history is the uninterrupted
    one's."""
    args = [*DDP, "trainer.limit_train_batches=null", "trainer.max_epochs=2"]  # 90 batches per process and epoch
    reference = tmp_path / "reference"
    _run(args, reference)
    expected = _state(run_dir(reference, EXPERIMENT))[1]
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(args, out), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(out.glob(f"{EXPERIMENT}/*/seed0/checkpoints/"
                                                                               "last.ckpt")):
        time.sleep(0.01)  # until epoch 0 has ended: the signal then lands early in epoch 1
    assert proc.poll() is None, "the run ended before it could be signalled"
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "interrupted by SIGTERM at epoch 1, batch " in stderr, stderr[-1500:]
    folder = run_dir(out, EXPERIMENT)
    saved = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["hm2bp_mid_epoch"] and len(saved["hm2bp_epoch_state"]) == 2  # one part of the epoch per process
    assert not (folder / "metrics.json").exists()
    resumed = _run(args, out)
    assert "resuming from" in resumed.stdout
    assert _same_history(_state(folder)[1], expected)


def test_a_local_multirun_refuses_ddp_in_one_line(tmp_path):
    proc = subprocess.run(_cmd(["-m", "seed=0,1", *DDP], tmp_path / "out"), cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "error: trainer=ddp cannot run inside a local multirun (-m)" in proc.stderr
    assert not list((tmp_path / "out").rglob("metrics.json"))
