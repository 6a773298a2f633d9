"""The epoch meter's efficiency counts against literal definitions."""

from __future__ import annotations

import torch

from hm2bp.arch import parse_arch
from hm2bp.metrics import ENERGY_PER_SYNOP_PJ, EpochMeter, history_row


def _literal_synops(spec, counts: torch.Tensor) -> float:
    """Σ over presynaptic neurons of their spike count times the neurons they reach, connection by connection."""
    if spec.kind == "linear":
        return float(counts.sum()) * spec.size
    if spec.kind == "pool":
        return float(counts.sum())
    c_in, h, w = spec.in_shape
    c_out, h_out, w_out = spec.out_shape
    k = spec.kernel
    grid = counts.view(-1, c_in, h, w)
    total = 0.0
    for y in range(h):
        for x in range(w):
            reached = sum(1 for yo in range(h_out) for xo in range(w_out) if 0 <= y - yo < k and 0 <= x - xo < k)
            total += float(grid[:, :, y, x].sum()) * reached * c_out
    return total


def test_meter_counts_spikes_and_synaptic_operations_per_sample():
    specs = parse_arch("3C3-P2-7", (2, 6, 6))
    g = torch.Generator().manual_seed(0)
    B, T = 4, 9
    inputs = (torch.rand(B, T, 72, generator=g) < 0.3).double()
    outs = [(torch.rand(B, T, spec.n_out, generator=g) < 0.2).double() for spec in specs]
    meter = EpochMeter(len(specs), [spec.fan_out() for spec in specs])
    labels = torch.zeros(B, dtype=torch.long)
    meter.update(outs, torch.tensor(1.0), labels, labels, inputs=inputs)
    got = meter.compute()
    pre = [inputs, *outs[:-1]]
    expected = [_literal_synops(spec, p.sum(1)) / B for spec, p in zip(specs, pre, strict=True)]
    assert got["synops"] == expected and min(expected) > 0
    assert got["spikes"] == [float(o.sum()) / B for o in outs]
    row = history_row(0, got, got, 1.0, 0.1, 100.0)
    assert row["test_synops"] == sum(expected)
    assert row["test_energy_uj"] == sum(expected) * ENERGY_PER_SYNOP_PJ * 1e-6
    assert [row[f"test_spikes_layer{k}"] for k in range(3)] == got["spikes"]
