"""Layers: modules with an explicit ``forward(x)`` and ``backward(dout)``."""
from .activation import ReLU, Sigmoid, Softmax, Tanh
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .module import Module, Parameter
from .normalization import (BatchNorm, BatchNorm1D, BatchNorm2D, GroupNorm, InstanceNorm,
                            InstanceNorm1D, InstanceNorm2D, LayerNorm, PerActivationBatchNorm,
                            SyncBatchNorm)
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .residual import Identity, Residual
from .shape import Flatten

__all__ = [
    "Module", "Parameter", "Conv2D", "Dense", "ReLU", "Softmax", "BatchNorm", "BatchNorm1D",
    "BatchNorm2D", "SyncBatchNorm", "MaxPool2D", "Flatten",
    "Sigmoid", "Tanh", "PerActivationBatchNorm", "InstanceNorm", "InstanceNorm1D",
    "InstanceNorm2D", "LayerNorm", "GroupNorm",
    "AvgPool2D", "GlobalAvgPool2D", "Dropout", "Identity", "Residual",
]
