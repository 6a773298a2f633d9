"""Export trained networks to NIR (the Neuromorphic Intermediate Representation), for other simulators and hardware.

    python -m hm2bp.export RUN_DIR OUT.nir      # RUN_DIR: a run directory with checkpoints/last.ckpt

:func:`to_nir` maps a :class:`~hm2bp.layers.SpikingNet` (and so a :class:`~hm2bp.layers.SpikingMLP`) to a
``nir.NIRGraph``: ``Input`` → per layer its synapses (``Conv2d`` without padding, ``SumPool2d`` over the
non-overlapping pooling windows, or ``Flatten`` (channel-major, as ours) + ``Linear`` without bias) → a ``CubaLIF``
population → ``Output``.

**Neuron parameters.** NIR's current-based LIF,

    τ_syn·dI/dt = −I + w_in·S,     τ_mem·dv/dt = (v_leak − v) + R·I,     spike and v ← v_reset when v > v_threshold,

discretised by forward Euler with one step ``dt`` (seconds), reads ``I ← (1 − dt/τ_syn)·I + (dt·w_in/τ_syn)·S`` and
``v ← (1 − dt/τ_mem)·v + (dt·R/τ_mem)·I``. Ours (:mod:`hm2bp.neuron`, τs and τm in steps) is
``c ← (1 − 1/τs)·c + W·s/τs`` and ``v ← (1 − 1/τm)·v + c``. They coincide with

    τ_syn = τs·dt,  τ_mem = τm·dt,  R = τm,  w_in = 1,  v_leak = 0,  v_reset = 0,  v_threshold = ν − ε

(``ε`` = 1e-6 for fully-connected and pooling layers, 0 for conv layers: our threshold rule ``v > ν − ε``).
``dt`` defaults to 1e-4 s, the step snnTorch's NIR import assumes; it is stored in the graph's metadata.

**What NIR cannot say** (recorded in each ``CubaLIF`` node's ``metadata`` and in the graph's): the refractory
period (``refractory_steps``: the membrane is held at 0 for that many steps after a spike), the output layer's
lateral inhibition (``lateral_inhibition``: every other output neuron's spike at ``t − 1`` subtracts ``w0/τs``
from the synaptic state), and our one-step synaptic delay (``input_delay_steps = 1``: a spike at ``t`` reaches the
next layer's current at ``t + 1``; NIR simulators apply it in the same step). docs/nir.md says what that changes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nir
import numpy as np
import torch

from hm2bp import __version__
from hm2bp.functional import HM2BPRule
from hm2bp.layers import SpikingConv2d, SpikingLinear, SpikingNet, SpikingPool2d
from hm2bp.loss import SpikeCountLoss

DEFAULT_DT = 1e-4  # seconds per simulation step: what snnTorch's import_from_nir assumes


def _population(layer: SpikingConv2d | SpikingPool2d | SpikingLinear, shape: tuple[int, ...],
                dt: float) -> nir.CubaLIF:
    lif = layer.setup.lif
    full = np.ones(shape, dtype=np.float64)
    notes = {"refractory_steps": int(lif.t_ref), "input_delay_steps": 1,
             "threshold_rule": f"v > nu - eps with nu = {lif.threshold}, eps = {lif.threshold_eps}",
             "lateral_inhibition": float(layer.setup.lateral_w0)}
    return nir.CubaLIF(tau_syn=full * (lif.tau_s * dt), tau_mem=full * (lif.tau_m * dt), r=full * lif.tau_m,
                       v_leak=full * 0.0, v_threshold=full * (lif.threshold - lif.threshold_eps), v_reset=full * 0.0,
                       w_in=full, metadata=notes)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy().copy()


def to_nir(net: SpikingNet, dt: float = DEFAULT_DT) -> nir.NIRGraph:
    """The NIR graph of ``net`` (see the module docstring) for a simulation step of ``dt`` seconds: weights and
    neuron parameters as float64 arrays, node names ``conv<k>``/``pool<k>``/``flatten<k>``/``fc<k>`` for layer k's
    synapses and ``lif<k>`` for its neurons."""
    if not isinstance(net, SpikingNet):
        raise TypeError(f"to_nir exports an hm2bp SpikingNet or SpikingMLP, got {type(net).__name__}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0 seconds, got {dt!r}")
    shape = tuple(net.input_shape)
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(shape)})}
    edges: list[tuple[str, str]] = []
    last = "input"

    def add(name: str, node: nir.NIRNode) -> None:
        nonlocal last
        nodes[name] = node
        edges.append((last, name))
        last = name

    for k, (layer, spec) in enumerate(zip(net.layers, net.specs, strict=True)):
        if isinstance(layer, SpikingConv2d):
            add(f"conv{k}", nir.Conv2d(input_shape=tuple(spec.in_shape[1:]), weight=_array(layer.weight), stride=1,
                                       padding=0, dilation=1, groups=1, bias=np.zeros(layer.weight.shape[0])))
        elif isinstance(layer, SpikingPool2d):
            size = np.array([layer.size, layer.size])
            add(f"pool{k}", nir.SumPool2d(kernel_size=size, stride=size, padding=np.array([0, 0])))
        else:
            if len(shape) > 1:
                add(f"flatten{k}", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))
            add(f"fc{k}", nir.Linear(weight=_array(layer.weight)))
        shape = tuple(spec.out_shape)
        add(f"lif{k}", _population(layer, shape, dt))
    add("output", nir.Output(output_type={"output": np.array(shape)}))
    meta = {"source": f"hm2bp {__version__}", "arch": net.arch, "dt": float(dt),
            "not_in_nir": "refractory period, output lateral inhibition and the one-step synaptic delay: see each "
                          "CubaLIF node's metadata"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def metadata_only(net: SpikingNet) -> str:
    """One line naming what of ``net``'s dynamics the graph carries as node metadata only (module docstring): a
    simulator that reads the graph runs without them unless it reads that metadata."""
    refractory = sorted({int(layer.setup.lif.t_ref) for layer in net.layers} - {0})
    lateral = sorted({float(layer.setup.lateral_w0) for layer in net.layers} - {0.0})
    parts = []
    if refractory:
        parts.append(f"the refractory period ({'/'.join(map(str, refractory))} steps)")
    if lateral:
        parts.append(f"the output layer's lateral inhibition (w0 = {'/'.join(f'{w:g}' for w in lateral)})")
    parts.append("the one-step synaptic delay")
    listed = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    travel = "they travel" if len(parts) > 1 else "it travels"
    return (f"NIR cannot express {listed}: {travel} as node metadata only, which a simulator ignores unless it reads "
            f"it (docs/nir.md)")


class ExportError(ValueError):
    """A run directory or checkpoint that cannot be exported (one line, for the command line)."""


def load_run(run_dir: str | Path) -> SpikingNet:
    """The trained network of a run directory, from ``checkpoints/last.ckpt`` (read without Lightning)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a run directory (outputs/<dataset>-<model>/<fingerprint>/seed<n>)")
    if not ckpt.is_file():
        raise ExportError(f"{ckpt} is missing: train the run first (python src/run.py …) or pass another run dir")
    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
        hp, state = data["hyper_parameters"], data["state_dict"]
        # the HM2BPModule's arguments; the engine's defaults fill what they leave out, as in training
        net = SpikingNet(hp["arch"], hp["input_shape"], hp["thresholds"], rule=HM2BPRule(**(hp["rule"] or {})),
                         target_count=int(SpikeCountLoss(**(hp["targets"] or {})).desired), **(hp["neuron"] or {}))
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    except Exception as err:  # unpickling, missing keys and shape mismatches all mean the same to the user
        raise ExportError(f"{ckpt} is not a readable hm2bp checkpoint ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from err
    return net


def write(graph: nir.NIRGraph, path: str | Path) -> Path:
    """``nir.write`` atomically: a temporary file in the same folder, renamed when complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        nir.write(tmp, graph)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m hm2bp.export", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="run directory holding checkpoints/last.ckpt")
    ap.add_argument("out", type=Path, help="the .nir file to write")
    args = ap.parse_args(argv)
    if not args.out.parent.is_dir():
        ap.error(f"{args.out.parent} does not exist")
    try:
        net = load_run(args.run_dir)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    out = write(to_nir(net), args.out)
    print(f"wrote {out}: {net.arch} on {'×'.join(map(str, net.input_shape))} inputs")
    print(f"note: {metadata_only(net)}")
    return out


if __name__ == "__main__":
    main()
