"""``nn.Module`` wrappers trained by the HM2-BP rule: :class:`SpikingLinear`, :class:`SpikingConv2d`,
:class:`SpikingPool2d` and :class:`SpikingMLP` (conv/pool/linear stacks: :class:`hm2bp.arch.SpikingNet`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hm2bp import backend
from hm2bp.arch import arch_from_sizes, parse_arch
from hm2bp.bptt import BPTTRule, bptt_layer
from hm2bp.conv import hm2bp_conv2d, hm2bp_pool2d
from hm2bp.functional import HM2BPRule, LayerSetup, LayerStats, hm2bp_linear
from hm2bp.neuron import T_REF, TAU_M, TAU_S, LIFParams, check_spikes

FC_INIT_SCALE = 1.0  # FC weights ~ U(−1, 1): the configs' "Bernoulli" init with initW = 1 (docs/algorithm.md §7, P8)
CONV_INIT_SCALE = 0.5  # conv weights ~ U(−0.5, 0.5): initW = 0.5 of the CNN config (docs/algorithm.md §7)
CONV_THRESHOLD_EPS = 0.0  # conv neurons fire at v > ν exactly; FC and pooling at v > ν − 1e-6 (docs/algorithm.md §1)
LATERAL_W0 = 1.0  # fixed output-layer lateral inhibition strength `localInbStrength` (docs/algorithm.md §1)
# y⁺, spikes wanted from the label neuron (docs/algorithm.md §3); also sets the silent-target patch period
DESIRED_COUNT = 35
# How a layer learns: the HM2-BP rule (default) or BPTT with a surrogate derivative (hm2bp.bptt)
Rule = HM2BPRule | BPTTRule


class _SpikingLayer(nn.Module):
    """What every spiking layer shares: its :class:`LayerSetup` (neurons, rule, counters) and, when it has one, a
    weight drawn from U(−init_scale, init_scale) (docs/algorithm.md §7)."""

    setup: LayerSetup
    init_scale: float

    def reset_parameters(self) -> None:
        weight = getattr(self, "weight", None)
        if weight is not None:  # pooling has nothing to train
            nn.init.uniform_(weight, -self.init_scale, self.init_scale)

    @property
    def stats(self) -> LayerStats:
        return self.setup.stats

    @property
    def threshold(self) -> float:
        return self.setup.lif.threshold


class SpikingLinear(_SpikingLayer):
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
                 tau_s: float = TAU_S, t_ref: int = T_REF, rule: Rule | None = None, output: bool = False,
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

    def forward(self, spikes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if spikes.dim() != 3 or spikes.shape[-1] != self.in_features:
            raise ValueError(f"expected input spikes (batch, time, {self.in_features}), got {tuple(spikes.shape)}")
        spikes = spikes.to(self.weight.dtype)
        if self.setup.is_output and labels is not None:
            if labels.shape != spikes.shape[:1]:
                raise ValueError(f"labels must have shape ({spikes.shape[0]},), got {tuple(labels.shape)}")
            if labels.numel() and backend.host_reads_allowed(spikes) and (int(labels.min()) < 0
                                                                     or int(labels.max()) >= self.out_features):
                raise ValueError(f"labels must lie in [0, {self.out_features}), got range "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
            period = spikes.shape[1] // self.setup.target_count
            if getattr(self.setup.rule, "silent_target_patch", False) and period <= self.setup.lif.t_ref:
                raise ValueError(f"T = {spikes.shape[1]} is too short for target_count {self.setup.target_count}: "
                                 "the silent-target patch needs floor(T/target_count) > t_ref")
        if isinstance(self.setup.rule, BPTTRule):
            currents = spikes.transpose(0, 1) @ self.weight.t()  # (T, B, N): no copy of a time-major input
            return bptt_layer(currents, self.setup.lif, self.setup.lateral_w0, self.setup.rule)
        return hm2bp_linear(spikes, self.weight, self.setup, labels if self.setup.is_output else None)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, threshold={self.threshold}, output={self.setup.is_output}"


def _check_maps(name: str, spikes: torch.Tensor, channels: int) -> None:
    if spikes.dim() != 5 or spikes.shape[2] != channels:
        raise ValueError(f"{name} expects input spikes (batch, time, {channels}, height, width), "
                         f"got {tuple(spikes.shape)}")


class SpikingConv2d(_SpikingLayer):
    """Convolution layer of LIF neurons: "valid" cross-correlation, stride 1, no bias (docs/algorithm.md §6).

    ``(B, T, C_in, H, W)`` spikes → ``(B, T, C_out, H − K + 1, W − K + 1)`` spikes; backward = HM2-BP with shared
    weights (:mod:`hm2bp.conv`). Never an output layer (no lateral inhibition, no margin).

    Example:
        >>> conv = SpikingConv2d(1, 4, 3, threshold=5.0)
        >>> conv(torch.zeros(2, 50, 1, 8, 8)).shape
        torch.Size([2, 50, 4, 6, 6])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, threshold: float, *,
                 tau_m: float = TAU_M, tau_s: float = TAU_S, t_ref: int = T_REF, rule: Rule | None = None,
                 init_scale: float = CONV_INIT_SCALE) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size) <= 0:
            raise ValueError(f"channels and kernel size must be > 0, got {in_channels}, {out_channels}, "
                             f"{kernel_size}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.init_scale = init_scale
        self.setup = LayerSetup(lif=LIFParams(threshold, tau_m, tau_s, t_ref, threshold_eps=CONV_THRESHOLD_EPS),
                                rule=rule or HM2BPRule())
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.reset_parameters()

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        _check_maps("SpikingConv2d", spikes, self.in_channels)
        if min(spikes.shape[3:]) < self.kernel_size:
            raise ValueError(f"input maps {tuple(spikes.shape[3:])} are smaller than the kernel {self.kernel_size}")
        spikes = spikes.to(self.weight.dtype)
        if isinstance(self.setup.rule, BPTTRule):
            x = spikes.transpose(0, 1)
            currents = torch.nn.functional.conv2d(x.flatten(0, 1), self.weight)
            return bptt_layer(currents.view(*x.shape[:2], *currents.shape[1:]), self.setup.lif, 0.0, self.setup.rule)
        return hm2bp_conv2d(spikes, self.weight, self.setup)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"threshold={self.threshold}")


class SpikingPool2d(_SpikingLayer):
    """Spiking pooling (docs/algorithm.md §6): one LIF neuron per non-overlapping ``size×size`` window, driven by the
    sum of
    the window's spikes with fixed weight 1, with its own threshold; nothing is trainable.

    Example:
        >>> SpikingPool2d(2, threshold=2.0)(torch.zeros(1, 50, 4, 6, 6)).shape
        torch.Size([1, 50, 4, 3, 3])
    """

    def __init__(self, size: int, threshold: float, *, tau_m: float = TAU_M, tau_s: float = TAU_S,
                 t_ref: int = T_REF, rule: Rule | None = None) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"pooling size must be > 0, got {size}")
        self.size = size
        self.setup = LayerSetup(lif=LIFParams(threshold, tau_m, tau_s, t_ref), rule=rule or HM2BPRule())

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        if spikes.dim() != 5:
            raise ValueError(f"SpikingPool2d expects input spikes (batch, time, channels, height, width), "
                             f"got {tuple(spikes.shape)}")
        if spikes.shape[3] % self.size or spikes.shape[4] % self.size:
            raise ValueError(f"input maps {tuple(spikes.shape[3:])} are not divisible by the pooling size "
                             f"{self.size}")
        dtype = spikes.dtype if spikes.is_floating_point() else torch.get_default_dtype()
        spikes = spikes.to(dtype)
        if isinstance(self.setup.rule, BPTTRule):  # the window's spike sum, weight 1
            x = spikes.transpose(0, 1)
            sums = torch.nn.functional.avg_pool2d(x.flatten(0, 1), self.size) * self.size ** 2
            return bptt_layer(sums.view(*x.shape[:2], *sums.shape[1:]), self.setup.lif, 0.0, self.setup.rule)
        return hm2bp_pool2d(spikes, self.size, self.setup)

    def extra_repr(self) -> str:
        return f"{self.size}, threshold={self.threshold}"


class SpikingNet(nn.Module):
    """A feed-forward stack of spiking conv, pooling and fully-connected layers from the paper's notation
    (:mod:`hm2bp.arch`), e.g. ``SpikingNet("15C5-P2-40C5-P2-300-10", (1, 28, 28), [5, 2, 12, 4, 10, 10])``.

    Input and every layer's output are flat spike trains ``(B, T, N)`` (images channel-major); the last layer is
    the output layer (lateral inhibition, labels for the silent-target patch and Λ).

    Args:
        arch: layers after the input, in the paper's notation.
        input_shape: ``(C, H, W)`` for image input (required by conv/pooling), or ``(N,)``.
        thresholds: one ν per layer, pooling included.
        rule: how every layer learns: :class:`HM2BPRule` switches (default) or :class:`~hm2bp.bptt.BPTTRule`.
        lateral_w0: output-layer lateral inhibition strength (authors: 1; 0 disables).
        target_count: y⁺ of the count loss (sets the silent-target patch period).
        init_scale: fully-connected weights ~ U(−a, a); conv_init_scale: conv weights ~ U(−a, a).

    Example:
        >>> net = SpikingNet("4C3-P2-10", (1, 8, 8), [5.0, 2.0, 8.0])
        >>> net(torch.zeros(1, 50, 64)).shape
        torch.Size([1, 50, 10])
    """

    def __init__(self, arch: str, input_shape: Sequence[int], thresholds: Sequence[float], *, tau_m: float = TAU_M,
                 tau_s: float = TAU_S, t_ref: int = T_REF, rule: Rule | None = None,
                 lateral_w0: float = LATERAL_W0, target_count: int = DESIRED_COUNT,
                 init_scale: float = FC_INIT_SCALE, conv_init_scale: float = CONV_INIT_SCALE) -> None:
        super().__init__()
        specs = parse_arch(arch, input_shape)
        if len(thresholds) != len(specs):
            raise ValueError(f"need one threshold per layer ({len(specs)} in {arch!r}), got {len(thresholds)}")
        rule = rule or HM2BPRule()
        self.arch, self.input_shape, self.specs = arch, tuple(int(s) for s in input_shape), specs
        neuron = dict(tau_m=tau_m, tau_s=tau_s, t_ref=t_ref, rule=rule)
        layers: list[nn.Module] = []
        for k, (spec, th) in enumerate(zip(specs, thresholds, strict=True)):
            if spec.kind == "conv":
                layers.append(SpikingConv2d(spec.in_shape[0], spec.size, spec.kernel, float(th), **neuron,
                                            init_scale=conv_init_scale))
            elif spec.kind == "pool":
                layers.append(SpikingPool2d(spec.size, float(th), **neuron))
            else:
                last = k == len(specs) - 1
                layers.append(SpikingLinear(math.prod(spec.in_shape), spec.size, float(th), **neuron, output=last,
                                            lateral_w0=lateral_w0 if last else 0.0, target_count=target_count,
                                            init_scale=init_scale))
        self.layers = nn.ModuleList(layers)

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    def forward_all(self, spikes: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Flat spike trains ``(B, T, N)`` of every layer, input excluded."""
        check_spikes("input spikes", spikes)
        if spikes.shape[2] != self.n_inputs:
            raise ValueError(f"expected input spikes (batch, time, {self.n_inputs}) for input shape "
                             f"{self.input_shape}, got {tuple(spikes.shape)}")
        outs = []
        x = spikes
        for spec, layer in zip(self.specs, self.layers, strict=True):
            B, T = x.shape[:2]
            args = (x.reshape(B, T, -1), labels) if spec.kind == "linear" else (x.reshape(B, T, *spec.in_shape),)
            x = layer(*args)
            outs.append(x.reshape(B, T, -1))
        return outs

    def forward(self, spikes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Output spike trains ``(B, T, N_out)``; pass ``labels`` when training (silent-target patch, Λ)."""
        return self.forward_all(spikes, labels)[-1]


class SpikingMLP(SpikingNet):
    """A stack of :class:`SpikingLinear` layers; the last is the output layer (lateral inhibition, labels).

    Args:
        sizes: ``[N_in, H_1, …, N_out]``.
        thresholds: one threshold per layer (``len(sizes) − 1``).
        rule: how every layer learns: :class:`HM2BPRule` switches (default) or :class:`~hm2bp.bptt.BPTTRule`.
        lateral_w0: output-layer lateral inhibition strength (authors: 1; 0 disables).
        target_count: y⁺ of the count loss (sets the silent-target patch period).

    Example:
        >>> net = SpikingMLP([64, 800, 10], [20.0, 8.0])
        >>> net(torch.zeros(1, 50, 64)).shape
        torch.Size([1, 50, 10])
    """

    def __init__(self, sizes: Sequence[int], thresholds: Sequence[float], *, tau_m: float = TAU_M,
                 tau_s: float = TAU_S, t_ref: int = T_REF, rule: Rule | None = None,
                 lateral_w0: float = LATERAL_W0, target_count: int = DESIRED_COUNT,
                 init_scale: float = FC_INIT_SCALE) -> None:
        if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
            raise ValueError(f"sizes needs at least input and output sizes, all > 0, got {list(sizes)}")
        if len(thresholds) != len(sizes) - 1:
            raise ValueError(f"need one threshold per layer ({len(sizes) - 1}), got {len(thresholds)}")
        super().__init__(arch_from_sizes(sizes), (int(sizes[0]),), thresholds, tau_m=tau_m, tau_s=tau_s,
                         t_ref=t_ref, rule=rule, lateral_w0=lateral_w0, target_count=target_count,
                         init_scale=init_scale)

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]
