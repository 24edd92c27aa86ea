"""minidl: a small deep-learning framework with Cython kernels for convolution and BatchNorm.

Layers have an explicit forward and backward; arrays are NumPy arrays in NCHW layout.

    import minidl
    from minidl import layers, losses, optim, data
"""
from . import data, functional, layers, losses, optim
from ._backend import backend, get_backend, set_backend
from ._config import get_num_threads, get_wait_policy, set_num_threads, set_wait_policy, show_config
from ._grad_mode import enable_grad, is_grad_enabled, no_grad
from ._memory import empty_cache, get_cache_limit, memory_stats, set_cache_limit
from ._random import manual_seed
from .callbacks import Callback, CSVLogger, EarlyStopping, EvaluateEvery, ModelCheckpoint
from .gradcheck import GradcheckError, gradcheck
from .model import Sequential
from .serialization import SerializationError, load, save
from .summary import summary
from .trainer import History, NonFiniteLossError, Trainer

__all__ = [
    "data", "functional", "layers", "losses", "optim",
    "Sequential", "Trainer", "History", "Callback", "EvaluateEvery",
    "EarlyStopping", "ModelCheckpoint", "CSVLogger", "NonFiniteLossError",
    "save", "load", "SerializationError",
    "manual_seed", "set_num_threads", "get_num_threads", "set_wait_policy", "get_wait_policy",
    "show_config",
    "empty_cache", "memory_stats", "set_cache_limit", "get_cache_limit",
    "no_grad", "enable_grad", "is_grad_enabled",
    "gradcheck", "GradcheckError", "summary",
    "backend", "get_backend", "set_backend",
]
__version__ = "0.1.0"
