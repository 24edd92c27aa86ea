"""Layers that only change the shape of their input."""
import math

from .._checks import check_float_array, check_grad
from .._grad_mode import save_for_backward, saved_for_backward
from .module import Module

__all__ = ["Flatten"]


class Flatten(Module):
    """Flatten every axis but the first: ``(N, d1, d2, ...)`` to ``(N, d1*d2*...)``.

    Shape: input ``(N, *)`` with at least 2 axes, float32 or float64; output ``(N, prod(*))``
    (an empty batch ``(0, *)`` gives ``(0, prod(*))``, as in PyTorch).
    Raises: TypeError for non-float input, ValueError for a 0-d or 1-D input.
    """

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        check_float_array("Flatten", x)
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected input of shape (N, ...) with >= 2 axes, got {x.shape}")
        self._shape = save_for_backward((x.shape, x.dtype))
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (not -1: N may be 0)

    def backward(self, dout, input_grad=True):
        """d loss / d x reshaped to the input's shape, or None when ``input_grad`` is False."""
        shape, dtype = saved_for_backward("Flatten", self._shape)
        check_grad("Flatten", dout, (shape[0], math.prod(shape[1:])), dtype)
        return dout.reshape(shape) if input_grad else None
