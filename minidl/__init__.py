"""minidl: a small deep-learning framework with Cython kernels for convolution and BatchNorm.

Layers have an explicit forward and backward; arrays are NumPy arrays in NCHW layout.

    import minidl
    from minidl import layers, losses, optim, data
"""
from . import data, functional, layers, losses, optim
from ._config import get_num_threads, set_num_threads
from ._random import manual_seed
from .gradcheck import GradcheckError, gradcheck
from .model import Sequential
from .summary import summary
from .trainer import Callback, EvaluateEvery, History, Trainer

__all__ = [
    "data", "functional", "layers", "losses", "optim",
    "Sequential", "Trainer", "History", "Callback", "EvaluateEvery",
    "manual_seed", "set_num_threads", "get_num_threads", "gradcheck", "GradcheckError",
    "summary",
]
__version__ = "0.1.0"
