"""hm2bp: HM2-BP (Hybrid Macro/Micro Level Backpropagation, Jin, Zhang & Li, NeurIPS 2018) in PyTorch.

The engine (this package minus the app layer) is plain PyTorch: spiking layers whose backward pass is the HM2-BP
rule, so ``loss.backward()`` fills ``.grad`` and any ``torch.optim`` optimizer trains them: fully-connected,
convolution and spiking pooling layers, stacked from the paper's notation by :class:`SpikingNet`.
"""

from hm2bp.encoding import bernoulli_encode
from hm2bp.functional import HM2BPRule, hm2bp_linear
from hm2bp.layers import SpikingConv2d, SpikingLinear, SpikingMLP, SpikingNet, SpikingPool2d
from hm2bp.loss import BoostingWeights, SpikeCountLoss, predict, weight_regularizer
from hm2bp.neuron import LIFParams, lif_scan
from hm2bp.spsp import spsp

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
