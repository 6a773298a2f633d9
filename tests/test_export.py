"""NIR export: the graph read back from disk holds the network's weights and neuron parameters, and NIR's
CubaLIF dynamics discretised by forward Euler at dt = 1 (simulated here literally from NIR's equations) give our
spikes where the semantics coincide (no refractory period, no lateral inhibition, our one-step synaptic delay)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from conftest import run_dir  # noqa: E402
from hm2bp import SpikingMLP, SpikingNet  # noqa: E402
from hm2bp.export import load_run, to_nir, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _nets(t_ref: int = 2, lateral_w0: float = 1.0) -> dict[str, SpikingNet]:
    torch.manual_seed(0)
    mlp = SpikingMLP([12, 9, 4], [3.0, 2.0], t_ref=t_ref, lateral_w0=lateral_w0)
    torch.manual_seed(0)
    return {"mlp": mlp, "cnn": SpikingNet("3C3-P2-4", (1, 6, 6), [1.0, 0.5, 0.5], t_ref=t_ref,
                                          lateral_w0=lateral_w0)}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_graph_read_back_holds_weights_parameters_and_what_nir_cannot_say(kind, tmp_path):
    net = _nets()[kind]
    graph = nir.read(write(to_nir(net), tmp_path / "net.nir"))
    expected = {"mlp": ["input", "fc0", "lif0", "fc1", "lif1", "output"],
                "cnn": ["input", "conv0", "lif0", "pool1", "lif1", "flatten2", "fc2", "lif2", "output"]}[kind]
    assert sorted(graph.nodes) == sorted(expected)
    assert sorted(graph.edges) == sorted(itertools.pairwise(expected))
    kinds = {"input": nir.Input, "output": nir.Output, "fc": nir.Linear, "lif": nir.CubaLIF, "conv": nir.Conv2d,
             "pool": nir.SumPool2d, "flatten": nir.Flatten}
    for name, node in graph.nodes.items():
        assert isinstance(node, kinds[name.rstrip("0123456789")]), name
    for k, layer in enumerate(net.layers):
        lif = layer.setup.lif
        node = graph.nodes[f"lif{k}"]
        shape = tuple(net.specs[k].out_shape)
        dt = graph.metadata["dt"]
        assert dt == 1e-4
        for field, value in [("tau_syn", lif.tau_s * dt), ("tau_mem", lif.tau_m * dt), ("r", lif.tau_m),
                             ("v_leak", 0.0),
                             ("v_reset", 0.0), ("w_in", 1.0), ("v_threshold", lif.threshold - lif.threshold_eps)]:
            array = np.asarray(getattr(node, field))
            assert array.shape == shape and np.all(array == value), (k, field)
        assert node.metadata["refractory_steps"] == 2 and node.metadata["input_delay_steps"] == 1
        assert node.metadata["lateral_inhibition"] == (1.0 if k == len(net.layers) - 1 else 0.0)
        weight = getattr(layer, "weight", None)
        synapse = next(graph.nodes[n] for n in (f"fc{k}", f"conv{k}") if n in graph.nodes) if weight is not None \
            else graph.nodes[f"pool{k}"]
        if weight is not None:
            assert np.array_equal(synapse.weight, weight.detach().double().numpy())
        else:
            assert list(synapse.kernel_size) == list(synapse.stride) == [layer.size, layer.size]
    if kind == "cnn":
        assert list(graph.nodes["flatten2"].output_type["output"]) == [3 * 2 * 2]
        assert list(graph.nodes["conv0"].output_type["output"]) == [3, 4, 4]
    assert "refractory" in graph.metadata["not_in_nir"]


def _simulate_nir(graph, x: np.ndarray) -> np.ndarray:
    """NIR's equations, forward Euler with dt = 1, literally, on ``x (T, *input shape)``, with our one-step synaptic
    delay: a layer's synapses read the spikes of the step before. Returns every population's spikes (T, N)."""
    order, node = [], "input"
    while node != "output":
        node = next(b for a, b in graph.edges if a == node)
        order.append(node)
    T, dt = x.shape[0], graph.metadata["dt"]
    spikes, populations = x, []
    for name in order[:-1]:
        n = graph.nodes[name]
        if isinstance(n, nir.Linear):
            drive = spikes @ n.weight.T
        elif isinstance(n, nir.Conv2d):
            drive = torch.nn.functional.conv2d(torch.from_numpy(spikes), torch.from_numpy(n.weight)).numpy()
        elif isinstance(n, nir.SumPool2d):
            k = int(n.kernel_size[0])
            t, c, h, w = spikes.shape
            drive = spikes.reshape(t, c, h // k, k, w // k, k).sum((3, 5))
        elif isinstance(n, nir.Flatten):
            spikes = spikes.reshape(T, -1)
            continue
        else:  # CubaLIF
            current, v = np.zeros(drive.shape[1:]), np.zeros(drive.shape[1:])
            out = np.zeros_like(drive)
            for t in range(1, T):
                current = current + dt * (-current + n.w_in * drive[t - 1]) / n.tau_syn
                v = v + dt * (n.v_leak - v + n.r * current) / n.tau_mem
                out[t] = v > n.v_threshold
                v = np.where(out[t] > 0, n.v_reset, v)
            spikes = out
            populations.append(out.reshape(T, -1))
    return populations


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_nir_dynamics_at_dt_1_are_our_forward_pass(kind):
    """With refractory 0 and no lateral inhibition (what NIR can express) the exported graph, simulated from NIR's
    own equations, fires exactly our spikes (float64: no threshold sits within rounding here)."""
    net = _nets(t_ref=0, lateral_w0=0.0)[kind].double()
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(1, 100, net.n_inputs, generator=g, dtype=torch.float64) < 0.4).double()
    ours = [o[0].detach().numpy() for o in net.forward_all(x)]
    theirs = _simulate_nir(to_nir(net), x[0].numpy().reshape(100, *net.input_shape))
    assert len(theirs) == len(ours) and all(o.sum() >= 15 for o in ours)
    assert all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))


def test_metadata_only_names_what_the_network_has():
    from hm2bp.export import metadata_only

    plain = SpikingMLP([5, 4, 3], [1.0, 1.0], t_ref=0, lateral_w0=0.0)
    assert metadata_only(plain) == ("NIR cannot express the one-step synaptic delay: it travels as node metadata "
                                    "only, which a simulator ignores unless it reads it (docs/nir.md)")
    assert metadata_only(SpikingNet("4-3", (5,), [1.0, 1.0], t_ref=3)).startswith(
        "NIR cannot express the refractory period (3 steps), the output layer's lateral inhibition (w0 = ")


def test_export_command_writes_the_runs_weights_and_names_bad_input(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), "trainer.limit_train_batches=2",
                    "trainer.limit_val_batches=1", "trainer.max_epochs=1", "trainer.progress_bar=false",
                    "logger=none", f"output_root={tmp_path}"], cwd=tmp_path, env=env, check=True, capture_output=True)
    run = run_dir(tmp_path, "digits-mlp64-800-10")
    out = tmp_path / "net.nir"
    proc = subprocess.run([sys.executable, "-m", "hm2bp.export", str(run), str(out)], capture_output=True, text=True,
                          env=env, check=True)
    assert proc.stdout.startswith(f"wrote {out}: 800-10")
    assert proc.stdout.splitlines()[1] == (
        "note: NIR cannot express the refractory period (2 steps), the output layer's lateral inhibition (w0 = 1) "
        "and the one-step synaptic delay: they travel as node metadata only, which a simulator ignores unless it "
        "reads it (docs/nir.md)")
    graph = nir.read(out)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert np.array_equal(graph.nodes["fc0"].weight, state["net.layers.0.weight"].double().numpy())
    assert np.array_equal(graph.nodes["fc1"].weight, state["net.layers.1.weight"].double().numpy())
    assert load_run(run).arch == "800-10"

    def fails(run_arg: Path, message: str) -> None:
        p = subprocess.run([sys.executable, "-m", "hm2bp.export", str(run_arg), str(tmp_path / "x.nir")],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 1 and p.stderr.strip().splitlines() == [message]
        assert not (tmp_path / "x.nir").exists()

    fails(tmp_path / "nothing", f"error: {tmp_path / 'nothing'} is not a run directory "
                                "(outputs/<dataset>-<model>/<fingerprint>/seed<n>)")
    empty = tmp_path / "empty"
    empty.mkdir()
    ckpt = empty / "checkpoints" / "last.ckpt"
    fails(empty, f"error: {ckpt} is missing: train the run first (python src/run.py …) or pass another run dir")
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not a checkpoint")
    p = subprocess.run([sys.executable, "-m", "hm2bp.export", str(empty), str(tmp_path / "x.nir")],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 1 and p.stderr.startswith(f"error: {ckpt} is not a readable hm2bp checkpoint (")
    assert len(p.stderr.strip().splitlines()) == 1


def test_snntorch_imports_the_graph_and_fires_our_spikes_one_step_earlier_per_layer():
    """Under the interop extra (docs/nir.md): snnTorch's import of our graph, stepped over the same input, fires
    exactly our spikes shifted by one step per layer (our synaptic delay) where the semantics coincide: refractory
    0, no lateral inhibition; float64 on both sides."""
    pytest.importorskip("snntorch.import_nir", reason="the interop extra (snnTorch's NIR import)")
    sys.path.insert(0, str(ROOT / "bench"))
    from nir_roundtrip import snntorch_run

    torch.manual_seed(0)
    net = SpikingMLP([20, 30, 5], [3.0, 2.0], t_ref=0, lateral_w0=0.0).double()
    x = (torch.rand(3, 80, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64) < 0.3).double()
    ours = net.forward_all(x)
    theirs = snntorch_run(to_nir(net), x)
    assert all(o.sum() >= 20 for o in ours)
    for k, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(t[:, :80 - k - 1], o[:, k + 1:]), k
