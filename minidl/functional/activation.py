"""Activations as stateless forward/backward pairs: ReLU and softmax."""
import numpy as np

from .. import _buffers
from .._checks import check_float_array, check_grad

__all__ = ["relu_forward", "relu_backward", "softmax_forward", "softmax_backward"]


def relu_forward(x, layer="relu", out=None, mask=None):
    """max(x, 0) elementwise (Nair & Hinton, 2010).

    Args:
        x (np.ndarray): any shape, float32 or float64.
        out (np.ndarray, optional): where to write the result (x's shape and dtype,
            C-contiguous); default: an array from :mod:`minidl._buffers`.
        mask (np.ndarray, optional): where to write ``x > 0`` (x's shape, bool).
    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` holds the boolean mask ``x > 0``.
        NaN inputs give NaN outputs, as in PyTorch.
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray.
    """
    check_float_array(layer, x)
    mask = np.greater(x, 0, out=_buffers.output(layer, mask, x.shape, np.bool_, "mask"))
    out = _buffers.output(layer, out, x.shape, x.dtype)
    return np.maximum(x, x.dtype.type(0), out=out), (mask, x.dtype)


def relu_backward(dout, cache, layer="relu", out=None):
    """d loss / d x = dout where x > 0, else 0 (the subgradient at 0 is 0, as in PyTorch).

    Args:
        dout (np.ndarray): the shape and dtype of the forward output.
        out (np.ndarray, optional): where to write d loss / d x.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output.
    """
    mask, dtype = cache
    check_grad(layer, dout, mask.shape, dtype)
    return np.multiply(dout, mask, out=_buffers.output(layer, out, mask.shape, dtype))


def softmax_forward(x, axis=1, layer="softmax"):
    """exp(x) / sum(exp(x)) along ``axis``, computed stably (the max is subtracted first).

    Args:
        x (np.ndarray): any shape with ``axis`` in range, float32 or float64.
        axis (int): the axis to normalize over (default 1, the class axis of ``(N, K)``).
    Returns:
        (out, cache): ``out`` like ``x``, each slice along ``axis`` sums to 1.
    Raises:
        TypeError: non-float input. ValueError: ``axis`` out of range for ``x``.
    """
    check_float_array(layer, x)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{layer}: axis {axis} is out of range for input of shape {x.shape}")
    shifted = x - x.max(axis=axis, keepdims=True)
    out = np.exp(shifted)
    out /= out.sum(axis=axis, keepdims=True)
    return out, (out, axis)


def softmax_backward(dout, cache, layer="softmax"):
    """d loss / d x = y * (dout - sum(dout * y, axis)) for y = softmax(x)."""
    out, axis = cache
    check_grad(layer, dout, out.shape, out.dtype)
    return out * (dout - np.sum(dout * out, axis=axis, keepdims=True))
