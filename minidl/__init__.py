"""minidl: a small deep-learning framework with Cython kernels for convolution and BatchNorm."""
from ._random import manual_seed

__all__ = ["manual_seed"]
__version__ = "0.1.0"
