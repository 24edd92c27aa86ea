"""Layers: modules with an explicit ``forward(x)`` and ``backward(dout)``."""
from .activation import ReLU, Softmax
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .module import Module, Parameter
from .normalization import BatchNorm, BatchNorm1D, BatchNorm2D
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .residual import Identity, Residual
from .shape import Flatten

__all__ = [
    "Module", "Parameter", "Conv2D", "Dense", "ReLU", "Softmax", "BatchNorm", "BatchNorm1D",
    "BatchNorm2D", "MaxPool2D", "Flatten",
    "AvgPool2D", "GlobalAvgPool2D", "Dropout", "Identity", "Residual",
]
