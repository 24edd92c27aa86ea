"""minidl: a small deep-learning framework with Cython kernels for convolution and BatchNorm.

Layers have an explicit forward and backward; arrays are NumPy arrays in NCHW layout.

    import minidl
    from minidl import layers, losses, optim, data
"""
from . import data, functional, layers, losses, optim
from ._config import get_num_threads, get_wait_policy, set_num_threads, set_wait_policy, show_config
from ._random import manual_seed
from .model import Sequential
from .trainer import Callback, EvaluateEvery, History, Trainer

__all__ = [
    "data", "functional", "layers", "losses", "optim",
    "Sequential", "Trainer", "History", "Callback", "EvaluateEvery",
    "manual_seed", "set_num_threads", "get_num_threads", "set_wait_policy", "get_wait_policy",
    "show_config",
]
__version__ = "0.1.0"
