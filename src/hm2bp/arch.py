"""The paper's compact network notation, e.g. ``15C5-P2-40C5-P2-300-10`` on 28×28 inputs.

Tokens, separated by ``-``: ``<n>C<k>`` a spiking conv layer with ``n`` maps and ``k×k`` kernels ("valid", stride
1), ``P<k>`` spiking ``k×k`` pooling (stride ``k``), ``<n>`` a fully-connected layer of ``n`` neurons. Conv and
pooling need image-shaped input ``(C, H, W)``; the first fully-connected layer flattens channel-major
(``c·H·W + y·W + x``, docs/algorithm.md §6). The last token is the output layer and must be fully connected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

_TOKENS = {
    "conv": re.compile(r"(\d+)C(\d+)"),
    "pool": re.compile(r"P(\d+)"),
    "linear": re.compile(r"(\d+)"),
}


class ArchError(ValueError):
    """An architecture string that cannot be built on the given input shape."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a parsed architecture, with the shapes it maps between."""

    kind: Literal["conv", "pool", "linear"]
    size: int  # conv: output maps; pool: window; linear: neurons
    kernel: int  # conv: kernel size; others: 0
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def fan_out(self) -> torch.Tensor:
        """``(N_in,)`` float64: how many of this layer's neurons each input neuron (flat, channel-major) reaches.
        Fully connected: every one; pooling: its window's; conv: ``C_out`` times the kernel positions that cover it
        (fewer at the borders)."""
        n_in = math.prod(self.in_shape)
        if self.kind == "linear":
            return torch.full((n_in,), float(self.size), dtype=torch.float64)
        if self.kind == "pool":
            return torch.ones(n_in, dtype=torch.float64)
        c_in = self.in_shape[0]
        reach = torch.nn.functional.conv_transpose2d(  # Σ over the outputs each input feeds, weight 1
            torch.ones(1, *self.out_shape, dtype=torch.float64),
            torch.ones(self.size, c_in, self.kernel, self.kernel, dtype=torch.float64))
        return reach.flatten()


def parse_arch(arch: str, input_shape: Sequence[int]) -> list[LayerSpec]:
    """Layers of ``arch`` on inputs of ``input_shape`` (``(C, H, W)`` images or ``(N,)``), with a clear error for
    unknown tokens and for sizes that do not fit.

    Example:
        >>> [layer.out_shape for layer in parse_arch("15C5-P2-40C5-P2-300-10", (1, 28, 28))]
        [(15, 24, 24), (15, 12, 12), (40, 8, 8), (40, 4, 4), (300,), (10,)]
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ArchError(f"input shape must be positive sizes, got {tuple(input_shape)}")
    tokens = arch.split("-") if isinstance(arch, str) else []
    if not tokens or any(not t for t in tokens):
        raise ArchError(f"architecture {arch!r} is empty or has an empty token; expected e.g. '15C5-P2-40C5-P2-300-10'")
    layers: list[LayerSpec] = []
    for pos, token in enumerate(tokens, start=1):
        kind, match = next(((k, m) for k, rx in _TOKENS.items() if (m := rx.fullmatch(token))), (None, None))
        where = f"token {pos} ({token!r}) of {arch!r}"
        if kind is None or match is None:
            raise ArchError(f"{where} is not a layer: use <n>C<k> (conv), P<k> (pooling) or <n> (fully connected)")
        numbers = [int(g) for g in match.groups()]
        if any(n <= 0 for n in numbers):
            raise ArchError(f"{where} has a size of 0")
        if kind == "linear":
            out: tuple[int, ...] = (numbers[0],)
            layers.append(LayerSpec("linear", numbers[0], 0, shape, out))
        else:
            if len(shape) != 3:
                raise ArchError(f"{where} needs image-shaped input (C, H, W) but gets {shape}"
                                + (" (after a fully-connected layer)" if layers else ""))
            c, h, w = shape
            if kind == "conv":
                n, k = numbers
                if k > h or k > w:
                    raise ArchError(f"{where}: kernel {k}×{k} does not fit the {h}×{w} maps it receives")
                out = (n, h - k + 1, w - k + 1)
                layers.append(LayerSpec("conv", n, k, shape, out))
            else:
                (k,) = numbers
                if h % k or w % k:
                    raise ArchError(f"{where}: pooling {k}×{k} does not divide the {h}×{w} maps it receives")
                out = (c, h // k, w // k)
                layers.append(LayerSpec("pool", k, 0, shape, out))
        shape = out
    if layers[-1].kind != "linear":
        raise ArchError(f"the last layer of {arch!r} must be fully connected (the output layer)")
    return layers


def arch_from_sizes(sizes: Sequence[int]) -> str:
    """``[64, 800, 10]`` → ``"800-10"`` (the MLP of those sizes; the input size is the input shape)."""
    return "-".join(str(int(s)) for s in sizes[1:])
