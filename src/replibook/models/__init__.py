"""Reusable model blocks: normalization layers (by name), MLPs, LSTM cells, CIFAR ResNets.

Submodules are imported on demand (``from replibook.models.norm import make_norm``);
the most used names are re-exported here.
"""
from .norm import LayerNorm, BatchNorm, BatchNormSeq, GroupNorm, make_norm, make_act, register
from .mlp import MLP, ProjectionHead
from .rnn import LNLSTMCell, LSTMSeq
from .resnet import ResNetCIFAR, TinyResNet

__all__ = [
    "LayerNorm", "BatchNorm", "BatchNormSeq", "GroupNorm", "make_norm", "make_act", "register",
    "MLP", "ProjectionHead", "LNLSTMCell", "LSTMSeq", "ResNetCIFAR", "TinyResNet",
]
