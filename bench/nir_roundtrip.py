"""NIR round trip into snnTorch: ``python bench/nir_roundtrip.py`` (needs the ``interop`` extra).

Trains the default digits network (64-800-10, T = 400) for one epoch with HM2-BP, exports it with
:func:`hm2bp.export.to_nir`, imports the graph with snnTorch's ``import_from_nir`` and runs both on the same input
spikes of the 360 test digits. Compares, per setting of our side (refractory 2 + lateral inhibition as trained;
refractory 0 + no lateral inhibition, what NIR expresses): spikes after the one-step-per-layer shift, output spike
counts and predicted classes. Writes ``bench/results/nir_roundtrip.json`` and the table of ``docs/nir.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import torch

from common import RESULTS, ROOT, machine, update_section
from hm2bp import SpikeCountLoss, SpikingMLP
from hm2bp.data.digits import load_digits_split
from hm2bp.data.static import Encoder, StaticSplit
from hm2bp.encoding import bernoulli_encode
from hm2bp.export import to_nir
from hm2bp.io import atomic_write_json
from hm2bp.train import fit

STEPS = 400


def snntorch_run(graph, x: torch.Tensor) -> list[torch.Tensor]:
    """Every population's spikes ``(B, T, N)`` of the graph imported into snnTorch, stepped over ``x (B, T, N)``."""
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # its import prints a warning per rescaled population
        module = import_from_nir(graph).to(x.dtype)
    for sub in module.modules():  # its surrogate spike functions return float32 whatever the dtype: spikes are 0/1
        if isinstance(sub, torch.nn.Linear | torch.nn.Conv2d):
            sub.register_forward_pre_hook(lambda _m, args: tuple(a.to(x.dtype) for a in args))
    names = [n for n in graph.nodes if n.startswith("lif")]
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [getattr(module, n).register_forward_hook(
        lambda _m, _i, out, n=n: seen[n].append(out[0] if isinstance(out, tuple) else out)) for n in names]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(x.dtype)  # snnTorch makes its neuron states in the default dtype
    try:
        with torch.no_grad():
            snntorch.utils.reset(module)
            for t in range(x.shape[1]):
                module(x[:, t])
    finally:
        torch.set_default_dtype(previous)
        for h in hooks:
            h.remove()
    return [torch.stack(seen[n], 1) for n in names]


def compare(net: SpikingMLP, x: torch.Tensor, labels: torch.Tensor) -> dict:
    with torch.no_grad():
        ours = net.forward_all(x)
    theirs = snntorch_run(to_nir(net), x)
    shifted = [float((t[:, :STEPS - k - 1] == o[:, k + 1:]).float().mean())
               for k, (o, t) in enumerate(zip(ours, theirs, strict=True))]
    co, ct = ours[-1].sum(1), theirs[-1].sum(1)
    return {"spikes_equal_after_shift": shifted,
            "output_counts_equal": float((co == ct).float().mean()),
            "output_count_mean_abs_diff": float((co - ct).abs().mean()),
            "output_spikes": [float(co.sum()), float(ct.sum())],
            "predictions_agree": float((co.argmax(1) == ct.argmax(1)).float().mean()),
            "accuracy": [float((c.argmax(1) == labels).float().mean()) for c in (co, ct)]}


def table(result: dict) -> str:
    lines = ["| our side | spikes equal after the shift (hidden, output) | output counts equal | mean abs count "
             "difference | output spikes (ours, snnTorch) | predictions agree | test accuracy (ours, snnTorch) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["settings"].items():
        spikes = ", ".join(f"{100 * s:.4f} %" for s in r["spikes_equal_after_shift"])
        lines.append(f"| {name} | {spikes} | {100 * r['output_counts_equal']:.1f} % | "
                     f"{r['output_count_mean_abs_diff']:.2f} | {r['output_spikes'][0]:.0f}, "
                     f"{r['output_spikes'][1]:.0f} | {100 * r['predictions_agree']:.1f} % | "
                     f"{100 * r['accuracy'][0]:.1f} %, {100 * r['accuracy'][1]:.1f} % |")
    return "\n".join(lines)


def main() -> dict:
    import snntorch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    enc = Encoder(STEPS, seed=0)
    net = SpikingMLP([64, 800, 10], [10.0, 8.0])
    fit(net, StaticSplit(x_tr, y_tr, enc), StaticSplit(x_te, y_te, enc, key_offset=len(x_tr)), epochs=1,
        batch_size=64, lr=1e-2, loss_fn=SpikeCountLoss())
    x = bernoulli_encode(x_te, STEPS, seed=0, indices=torch.arange(len(x_te)) + len(x_tr))
    settings = {}
    for name, t_ref, w0 in [("refractory 2, lateral inhibition 1 (as trained)", 2, 1.0),
                            ("refractory 0, no lateral inhibition", 0, 0.0)]:
        for layer in net.layers:
            layer.setup.lif = dataclasses.replace(layer.setup.lif, t_ref=t_ref)
            layer.setup.lateral_w0 = w0 if layer.setup.is_output else 0.0
        settings[name] = compare(net, x, y_te)
        print(name, json.dumps(settings[name]), flush=True)
    result = {"machine": machine(), "snntorch": snntorch.__version__, "samples": len(x_te), "steps": STEPS,
              "settings": settings}
    atomic_write_json(RESULTS / "nir_roundtrip.json", result)
    update_section("nir-roundtrip", table(result), path=ROOT / "docs" / "nir.md")
    return result


if __name__ == "__main__":
    main()
