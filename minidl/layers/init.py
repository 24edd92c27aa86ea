"""Parameter initialization, matching PyTorch's defaults.

PyTorch initializes ``Conv2d`` and ``Linear`` weights with ``kaiming_uniform_(a=sqrt(5))``, which
is U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), so
b = 1 / sqrt(fan_in); biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as well.
(He et al., 2015, "Delving Deep into Rectifiers", eq. 16, with PyTorch's choice of ``a``.)
"""
import numpy as np

from .._random import get_rng


def uniform_fan_in(shape, fan_in, rng=None, dtype=np.float32):
    """Array of ``shape`` drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as ``dtype``."""
    bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0
    return get_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)
