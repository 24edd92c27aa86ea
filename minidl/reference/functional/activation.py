"""ReLU and softmax by their formulas: the readable, runnable twins of
:mod:`minidl.functional.activation`.

Nothing here validates its inputs; the public ops in :mod:`minidl.functional` do that before
they call these.
"""
from typing import NamedTuple

import numpy as np

from ._result import into

__all__ = ["ReluCache", "SoftmaxCache", "relu_forward", "relu_backward", "softmax_forward",
           "softmax_backward"]


# both caches hold the output y, which has the shape and dtype of the input and of dout
_OUT_SHAPE = property(lambda cache: cache.y.shape, doc="The shape of the output, and of ``dout``.")
_DTYPE = property(lambda cache: cache.y.dtype, doc="dtype of the input, the output and ``dx``.")


class ReluCache(NamedTuple):
    """What :func:`relu_backward` needs: the output ``y`` (like PyTorch's ``threshold_backward``)."""

    y: np.ndarray
    out_shape = _OUT_SHAPE
    dtype = _DTYPE


class SoftmaxCache(NamedTuple):
    """What :func:`softmax_backward` needs: the output ``y`` and the softmax axis."""

    y: np.ndarray
    axis: int
    out_shape = _OUT_SHAPE
    dtype = _DTYPE


def relu_forward(x, layer="relu", out=None):
    """``y = max(x, 0)`` elementwise: the rectified linear unit of Nair & Hinton (2010).

    Same arguments and results as :func:`minidl.functional.relu_forward` (``layer`` is
    ignored); a NaN input gives a NaN output, as in PyTorch.

    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` is a :class:`ReluCache`.
    """
    y = np.maximum(x, 0)  # np.maximum passes NaN through
    y = into(out, y)
    return y, ReluCache(y)


def relu_backward(dout, cache, layer="relu", out=None):
    """``dx = dout`` where ``y > 0``, else 0: d max(x, 0) / dx is 1 for x > 0 and 0 for x < 0.

    At ``x = 0`` the derivative does not exist; 0 is used, as PyTorch does. Where ``y`` is NaN
    the gradient passes through (PyTorch's ``threshold_backward`` zeroes only ``y <= 0``).
    Same arguments and results as :func:`minidl.functional.relu_backward`.
    """
    return into(out, np.where(cache.y <= 0, 0, dout).astype(cache.dtype))


def softmax_forward(x, axis=1, layer="softmax"):
    """``y_i = exp(x_i) / sum_j exp(x_j)`` along ``axis``.

    The softmax of Bridle (1990); see Goodfellow, Bengio & Courville (2016), "Deep Learning",
    section 6.2.2.3. Subtracting the maximum first leaves ``y`` unchanged (the factor
    ``exp(-max)`` cancels) and keeps ``exp`` from overflowing (the same book, section 4.1).
    Same arguments and results as :func:`minidl.functional.softmax_forward`.

    Returns:
        (out, cache): ``out`` like ``x``, summing to 1 along ``axis``; a :class:`SoftmaxCache`.
    """
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    return y, SoftmaxCache(y, axis)


def softmax_backward(dout, cache, layer="softmax"):
    """``dx_i = sum_j dout_j dy_j/dx_i = y_i (dout_i - sum_j dout_j y_j)`` along the axis.

    From the softmax Jacobian ``dy_j / dx_i = y_j (delta_ij - y_i)``. Same arguments and results
    as :func:`minidl.functional.softmax_backward`.
    """
    y, axis = cache
    return y * (dout - np.sum(dout * y, axis=axis, keepdims=True))
