"""Activations as stateless forward/backward pairs: ReLU, softmax, sigmoid and tanh.

Under ``with minidl.backend("reference"):`` the validated arguments of ReLU and softmax go
instead to the formulas in :mod:`minidl.reference.functional.activation`, and a cache that they
made sends the backward pass there too (the ``if`` statements marked "reference backend").
Sigmoid and tanh are plain NumPy formulas here, which is what a reference would say, so both
backends run this code and they have no twin.
"""
from typing import NamedTuple

import numpy as np

from .. import _config, _memory
from .._backend import get_backend
from .._checks import check_float_array, check_grad
from .._kernels import _activation as _kernel
from ..reference.functional import activation as reference

__all__ = ["ReluCache", "relu_forward", "relu_backward", "softmax_forward", "softmax_backward",
           "SigmoidCache", "sigmoid_forward", "sigmoid_backward", "TanhCache", "tanh_forward",
           "tanh_backward"]


class ReluCache(NamedTuple):
    """What :func:`relu_backward` needs: the output ``y`` (as PyTorch's ``threshold_backward``),
    which must not be modified before the backward pass."""

    y: np.ndarray


def relu_forward(x, layer="relu", out=None):
    """max(x, 0) elementwise (Nair & Hinton, 2010), one pass on OpenMP threads.

    Args:
        x (np.ndarray): any shape, float32 or float64, any strides.
        out (np.ndarray, optional): where to write the result (x's shape and dtype,
            C-contiguous, not overlapping ``x``); default: a new array (from
            :mod:`minidl._memory`).
    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` is a :class:`ReluCache` holding ``out``
        itself (the backward pass reads the output, like PyTorch's ``threshold_backward``), so
        ``out`` must not be modified before the backward pass (under the reference backend:
        the ``ReluCache`` of :mod:`minidl.reference.functional.activation`). NaN inputs give
        NaN outputs, as in PyTorch.
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray.
        ValueError: an unusable ``out`` (wrong shape or dtype, or overlapping ``x``).
    """
    check_float_array(layer, x)
    given = out is not None
    out = _memory.output(layer, out, x.shape, x.dtype)
    if given and np.shares_memory(out, x):  # (a new array is never x's memory)
        raise ValueError(f"{layer}: out must not overlap the input")
    if get_backend() == "reference":  # reference backend: max(x, 0) in NumPy
        return reference.relu_forward(x, layer, out)
    x = np.ascontiguousarray(x)
    _kernel.relu_forward(x.reshape(-1), out.reshape(-1), _config.threads_for(x.size))
    return out, ReluCache(out)


def relu_backward(dout, cache, layer="relu", out=None):
    """d loss / d x = 0 where the output is <= 0, else dout (the subgradient at 0 is 0; a NaN
    passes dout on), as PyTorch's ``threshold_backward``.

    Args:
        dout (np.ndarray): the shape and dtype of the forward output; any strides.
        cache: the second value returned by :func:`relu_forward` (it holds the output).
        out (np.ndarray, optional): where to write d loss / d x (C-contiguous); default: a new
            array.
    Returns:
        np.ndarray: d loss / d x, the shape and dtype of the forward input.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output.
    """
    y = cache.y
    check_grad(layer, dout, y.shape, y.dtype)
    dx = _memory.output(layer, out, y.shape, y.dtype)
    if isinstance(cache, reference.ReluCache):  # reference backend: made by its forward
        return reference.relu_backward(dout, cache, layer, dx)
    _kernel.relu_backward(np.ascontiguousarray(dout).reshape(-1), y.reshape(-1), dx.reshape(-1),
                          _config.threads_for(y.size))
    return dx


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
    if get_backend() == "reference":  # reference backend: the formula, step by step
        return reference.softmax_forward(x, axis, layer)
    shifted = x - x.max(axis=axis, keepdims=True)
    out = np.exp(shifted)
    out /= out.sum(axis=axis, keepdims=True)
    return out, (out, axis)


def softmax_backward(dout, cache, layer="softmax"):
    """d loss / d x = y * (dout - sum(dout * y, axis)) for y = softmax(x)."""
    out, axis = cache
    check_grad(layer, dout, out.shape, out.dtype)
    if isinstance(cache, reference.SoftmaxCache):  # reference backend: made by its forward
        return reference.softmax_backward(dout, cache, layer)
    return out * (dout - np.sum(dout * out, axis=axis, keepdims=True))


class SigmoidCache(NamedTuple):
    """What :func:`sigmoid_backward` needs: the output ``y`` (as PyTorch's
    ``sigmoid_backward``), which must not be modified before the backward pass."""

    y: np.ndarray


class TanhCache(NamedTuple):
    """What :func:`tanh_backward` needs: the output ``y`` (as PyTorch's ``tanh_backward``),
    which must not be modified before the backward pass."""

    y: np.ndarray


def _elementwise_out(layer, x, out):
    """A validated ``out`` for an elementwise op on ``x`` (a new array when None)."""
    given = out is not None
    out = _memory.output(layer, out, x.shape, x.dtype)
    if given and np.shares_memory(out, x):
        raise ValueError(f"{layer}: out must not overlap the input")
    return out


def sigmoid_forward(x, layer="sigmoid", out=None):
    """The logistic sigmoid ``1 / (1 + exp(-x))`` elementwise, without overflow.

    ``exp(-x)`` overflows for x < -88 in float32 (x < -709 in float64). Computed instead from
    ``e = exp(-|x|)``, which lies in (0, 1]: ``1 / (1 + e)`` for x >= 0 and ``e / (1 + e)`` for
    x < 0, the same function (multiply numerator and denominator by ``exp(x)``). So no overflow
    and no warning for any ``|x|``, and small outputs keep their relative precision (sigmoid(-100)
    is 3.7e-44, not 0). Saturated outputs are exactly 0 or 1; NaN gives NaN.

    Args:
        x (np.ndarray): any shape, float32 or float64 (kept).
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (x's shape and dtype,
            C-contiguous, not overlapping ``x``).
    Returns:
        (out, cache): ``out`` like ``x``, in (0, 1) (or exactly 0 or 1 where it saturates);
        ``cache`` a :class:`SigmoidCache` holding ``out`` itself.
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray.
        ValueError: an unusable ``out``.
    """
    check_float_array(layer, x)
    out = _elementwise_out(layer, x, out)
    with np.errstate(under="ignore"):  # exp(-|x|) underflows to 0 for large |x|: that is fine
        e = np.exp(-np.abs(x))  # in (0, 1]
        np.divide(np.where(x >= 0, 1, e), 1 + e, out=out)
    return out, SigmoidCache(out)


def sigmoid_backward(dout, cache, layer="sigmoid", out=None):
    """d loss / d x = dout * y * (1 - y), for y = sigmoid(x) (the output kept in ``cache``).

    Args:
        dout (np.ndarray): the shape and dtype of the forward output; any strides.
        cache: the second value returned by :func:`sigmoid_forward`.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write d loss / d x (C-contiguous).
    Returns:
        np.ndarray: d loss / d x, the shape and dtype of the forward input.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output.
    """
    y = cache.y
    check_grad(layer, dout, y.shape, y.dtype)
    dx = _memory.output(layer, out, y.shape, y.dtype)
    np.subtract(1, y, out=dx)  # 1 - y
    dx *= y
    dx *= dout
    return dx


def tanh_forward(x, layer="tanh", out=None):
    """``tanh(x)`` elementwise (NumPy's, which saturates to +-1 without overflow).

    Args:
        x (np.ndarray): any shape, float32 or float64 (kept).
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (x's shape and dtype,
            C-contiguous, not overlapping ``x``).
    Returns:
        (out, cache): ``out`` like ``x``, in [-1, 1]; ``cache`` a :class:`TanhCache` holding
        ``out`` itself.
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray.
        ValueError: an unusable ``out``.
    """
    check_float_array(layer, x)
    out = _elementwise_out(layer, x, out)
    np.tanh(x, out=out)
    return out, TanhCache(out)


def tanh_backward(dout, cache, layer="tanh", out=None):
    """d loss / d x = dout * (1 - y^2), for y = tanh(x) (the output kept in ``cache``).

    Args:
        dout (np.ndarray): the shape and dtype of the forward output; any strides.
        cache: the second value returned by :func:`tanh_forward`.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write d loss / d x (C-contiguous).
    Returns:
        np.ndarray: d loss / d x, the shape and dtype of the forward input.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output.
    """
    y = cache.y
    check_grad(layer, dout, y.shape, y.dtype)
    dx = _memory.output(layer, out, y.shape, y.dtype)
    np.multiply(y, y, out=dx)
    np.subtract(1, dx, out=dx)  # 1 - y^2
    dx *= dout
    return dx
