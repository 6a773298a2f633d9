"""hm2bp: HM2-BP (Hybrid Macro/Micro Level Backpropagation, Jin, Zhang & Li, NeurIPS 2018) in PyTorch.

The engine (this package minus the app layer) is plain PyTorch: spiking layers whose backward pass is the HM2-BP
rule, so ``loss.backward()`` fills ``.grad`` and any ``torch.optim`` optimizer trains them: fully-connected,
convolution and spiking pooling layers, stacked from the paper's notation by :class:`SpikingNet`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names → their modules, imported on first use (PEP 562), so that importing one module of the package (say
# hm2bp.neuron, or hm2bp.backend) does not import the rest.
_EXPORTS = {
    "bernoulli_encode": "hm2bp.encoding",
    "HM2BPRule": "hm2bp.functional", "hm2bp_linear": "hm2bp.functional",
    "SpikingConv2d": "hm2bp.layers", "SpikingLinear": "hm2bp.layers", "SpikingMLP": "hm2bp.layers",
    "SpikingNet": "hm2bp.layers", "SpikingPool2d": "hm2bp.layers",
    "BoostingWeights": "hm2bp.loss", "SpikeCountLoss": "hm2bp.loss", "predict": "hm2bp.loss",
    "weight_regularizer": "hm2bp.loss",
    "LIFParams": "hm2bp.neuron", "lif_scan": "hm2bp.neuron",
    "spsp": "hm2bp.spsp",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hm2bp' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "BoostingWeights",
    "HM2BPRule",
    "LIFParams",
    "SpikeCountLoss",
    "SpikingConv2d",
    "SpikingLinear",
    "SpikingMLP",
    "SpikingNet",
    "SpikingPool2d",
    "bernoulli_encode",
    "hm2bp_linear",
    "lif_scan",
    "predict",
    "spsp",
    "weight_regularizer",
]
__version__ = "0.1.0"
