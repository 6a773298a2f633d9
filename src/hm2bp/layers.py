"""``nn.Module`` wrappers: :class:`SpikingLinear` and :class:`SpikingMLP` trained by the HM2-BP rule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hm2bp.functional import HM2BPRule, LayerSetup, LayerStats, hm2bp_linear
from hm2bp.neuron import T_REF, TAU_M, TAU_S, LIFParams, check_spikes

FC_INIT_SCALE = 1.0  # FC weights ~ U(−1, 1): the configs' "Bernoulli" init with initW = 1 (spec §7, pitfall P8)
LATERAL_W0 = 1.0  # fixed output-layer lateral inhibition strength `localInbStrength` (spec §1)
DESIRED_COUNT = 35  # y⁺, spikes wanted from the label neuron (spec §3); also sets the silent-target patch period


class SpikingLinear(nn.Module):
    """Fully-connected layer of LIF neurons, ``(B, T, N_in)`` spikes → ``(B, T, N_out)`` spikes.

    Forward: ``I[t] = W s_in[t]`` for all t in one GEMM, then the LIF scan of :func:`hm2bp.neuron.lif_scan`.
    Backward: the HM2-BP rule (:mod:`hm2bp.functional`). No bias (the authors' bias path is disabled).

    Example:
        >>> layer = SpikingLinear(64, 10, threshold=8.0, output=True)
        >>> out = layer(torch.zeros(2, 100, 64))
        >>> out.shape
        torch.Size([2, 100, 10])
    """

    def __init__(self, in_features: int, out_features: int, threshold: float, *, tau_m: float = TAU_M,
                 tau_s: float = TAU_S, t_ref: int = T_REF, rule: HM2BPRule | None = None, output: bool = False,
                 lateral_w0: float | None = None, target_count: int = DESIRED_COUNT,
                 init_scale: float = FC_INIT_SCALE) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"layer sizes must be > 0, got {in_features} -> {out_features}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if target_count <= 0:
            raise ValueError(f"target_count must be > 0, got {target_count}")
        self.in_features, self.out_features = in_features, out_features
        self.init_scale = init_scale
        w0 = (LATERAL_W0 if output else 0.0) if lateral_w0 is None else lateral_w0
        if w0 < 0:
            raise ValueError(f"lateral_w0 must be >= 0, got {w0}")
        self.setup = LayerSetup(lif=LIFParams(threshold, tau_m, tau_s, t_ref), rule=rule or HM2BPRule(),
                                lateral_w0=w0, is_output=output, target_count=target_count)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -self.init_scale, self.init_scale)

    @property
    def stats(self) -> LayerStats:
        return self.setup.stats

    @property
    def threshold(self) -> float:
        return self.setup.lif.threshold

    def forward(self, spikes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if spikes.dim() != 3 or spikes.shape[-1] != self.in_features:
            raise ValueError(f"expected input spikes (batch, time, {self.in_features}), got {tuple(spikes.shape)}")
        spikes = spikes.to(self.weight.dtype)
        if self.setup.is_output and labels is not None:
            if labels.shape != spikes.shape[:1]:
                raise ValueError(f"labels must have shape ({spikes.shape[0]},), got {tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.out_features):
                raise ValueError(f"labels must lie in [0, {self.out_features}), got range "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
            period = spikes.shape[1] // self.setup.target_count
            if self.setup.rule.silent_target_patch and period <= self.setup.lif.t_ref:
                raise ValueError(f"T = {spikes.shape[1]} is too short for target_count {self.setup.target_count}: "
                                 "the silent-target patch needs floor(T/target_count) > t_ref")
        return hm2bp_linear(spikes, self.weight, self.setup, labels if self.setup.is_output else None)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, threshold={self.threshold}, output={self.setup.is_output}"


class SpikingMLP(nn.Module):
    """A stack of :class:`SpikingLinear` layers; the last is the output layer (lateral inhibition, labels).

    Args:
        sizes: ``[N_in, H_1, …, N_out]``.
        thresholds: one threshold per layer (``len(sizes) − 1``).
        rule: HM2-BP switches shared by all layers.
        lateral_w0: output-layer lateral inhibition strength (authors: 1; 0 disables).
        target_count: y⁺ of the count loss (sets the silent-target patch period).

    Example:
        >>> net = SpikingMLP([64, 800, 10], [20.0, 8.0])
        >>> net(torch.zeros(1, 50, 64)).shape
        torch.Size([1, 50, 10])
    """

    def __init__(self, sizes: Sequence[int], thresholds: Sequence[float], *, tau_m: float = TAU_M,
                 tau_s: float = TAU_S, t_ref: int = T_REF, rule: HM2BPRule | None = None,
                 lateral_w0: float = LATERAL_W0, target_count: int = DESIRED_COUNT,
                 init_scale: float = FC_INIT_SCALE) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least input and output sizes, got {list(sizes)}")
        if len(thresholds) != len(sizes) - 1:
            raise ValueError(f"need one threshold per layer ({len(sizes) - 1}), got {len(thresholds)}")
        rule = rule or HM2BPRule()
        last = len(sizes) - 2
        self.layers = nn.ModuleList(
            SpikingLinear(sizes[k], sizes[k + 1], float(thresholds[k]), tau_m=tau_m, tau_s=tau_s, t_ref=t_ref,
                          rule=rule, output=k == last, lateral_w0=lateral_w0 if k == last else 0.0,
                          target_count=target_count, init_scale=init_scale)
            for k in range(len(sizes) - 1))

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]

    def forward_all(self, spikes: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Spike trains of every layer, input excluded."""
        check_spikes("input spikes", spikes)
        outs = []
        for layer in self.layers:
            spikes = layer(spikes, labels)
            outs.append(spikes)
        return outs

    def forward(self, spikes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Output spike trains ``(B, T, N_out)``; pass ``labels`` when training (silent-target patch, Λ)."""
        return self.forward_all(spikes, labels)[-1]
