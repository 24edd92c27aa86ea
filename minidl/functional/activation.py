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
from .._checks import (check_allocation, check_cache_array, check_float_array, check_grad,
                       check_no_overlap)
from .._kernels import _activation as _kernel
from ..reference.functional import activation as reference

__all__ = ["ReluCache", "relu_forward", "relu_backward", "softmax_forward", "softmax_backward",
           "SigmoidCache", "sigmoid_forward", "sigmoid_backward", "TanhCache", "tanh_forward",
           "tanh_backward", "add"]


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
        ValueError: an unusable ``out`` (wrong shape, dtype or layout, read-only, or
            overlapping ``x``).
        MemoryError: the output would not fit in this machine's memory.
    """
    check_float_array(layer, x)
    given = out is not None
    if not given:
        check_allocation(layer, "output", x.shape, x.dtype)
    out = _memory.output(layer, out, x.shape, x.dtype)
    if given:  # (a new array is never x's memory)
        check_no_overlap(layer, "out", out, input=x)
    if get_backend() == "reference":  # reference backend: max(x, 0) in NumPy
        return reference.relu_forward(x, layer, out)
    x = np.ascontiguousarray(x)
    _kernel.relu_forward(x.reshape(-1), out.reshape(-1), _config.threads_for(x.size))
    return out, ReluCache(out)


def add(a, b, relu=False, layer="add"):
    """``a + b`` elementwise into a new array, or ``relu(a + b)`` with ``relu``: the sum of a
    residual connection and the ReLU after it (He et al. 2016, eq. 1 and figure 2), in one pass
    on OpenMP threads (NumPy's ``np.add`` runs on one).

    The gradient of a sum is ``dout`` for both operands, so there is no ``add_backward``; with
    ``relu``, pass the gradient through :func:`relu_backward` with ``ReluCache(out)`` first.
    Under the reference backend: ``np.add``, then ``np.maximum(out, 0)`` as the reference ReLU.

    Args:
        a, b (np.ndarray): the same shape and dtype, float32 or float64, any strides (never
            broadcast).
        relu (bool): apply ReLU to the sum in the same pass (as :func:`relu_forward`, bit for
            bit). Default False.
        layer (str): name used in error messages.
    Returns:
        np.ndarray: C-contiguous, ``a``'s shape and dtype (from :mod:`minidl._memory`).
    Raises:
        TypeError: a non-float operand, or operands of different dtypes.
        ValueError: operands of different shapes.
        MemoryError: the output would not fit in this machine's memory.
    """
    check_float_array(layer, a, "the first operand")
    check_float_array(layer, b, "the second operand")
    if a.shape != b.shape:
        raise ValueError(f"{layer}: expected operands of the same shape, got {a.shape} and "
                         f"{b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{layer}: expected operands of the same dtype, got {a.dtype} and "
                        f"{b.dtype}")
    check_allocation(layer, "output", a.shape, a.dtype)
    out = _memory.empty(a.shape, a.dtype)
    if get_backend() == "reference":  # reference backend: NumPy's sum and maximum
        np.add(a, b, out=out)
        if relu:
            np.maximum(out, 0, out=out)
        return out
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    _kernel.add(a.reshape(-1), b.reshape(-1), out.reshape(-1), _config.threads_for(a.size), relu)
    return out


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
        TypeError/ValueError: ``dout`` does not match the forward output; an unusable ``out``
            (as for the forward, or sharing memory with ``dout`` or the cached output); a cache
            that is not the one the forward returned.
    """
    if not isinstance(cache, (ReluCache, reference.ReluCache)):
        raise TypeError(f"{layer}: expected the cache returned by relu_forward, got "
                        f"{type(cache).__name__}")
    y = cache.y
    if not isinstance(y, np.ndarray) or y.dtype not in (np.float32, np.float64):
        raise ValueError(f"{layer}: the cache's y is not what relu_forward made; pass the "
                         f"cache it returned, unchanged")
    check_cache_array(layer, "relu_forward", "y", y, y.shape, y.dtype)
    check_grad(layer, dout, y.shape, y.dtype)
    given = out is not None
    dx = _memory.output(layer, out, y.shape, y.dtype)
    if given:  # the cache serves further backward calls: y must stay intact
        check_no_overlap(layer, "out", dx, gradient=dout, **{"the cached output": y})
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
        TypeError: non-float input, or an ``axis`` that is not an int.
        ValueError: ``axis`` out of range for ``x``, or ``x`` empty along it.
    """
    check_float_array(layer, x)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{layer}: expected axis to be an int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{layer}: axis {axis} is out of range for input of shape {x.shape}")
    if x.shape[axis] == 0:
        raise ValueError(f"{layer}: expected at least one entry along axis {axis} (the classes "
                         f"the softmax normalizes over), got input of shape {x.shape}")
    if get_backend() == "reference":  # reference backend: the formula, step by step
        return reference.softmax_forward(x, axis, layer)
    shifted = x - x.max(axis=axis, keepdims=True)
    out = np.exp(shifted)
    out /= out.sum(axis=axis, keepdims=True)
    return out, (out, axis)


def softmax_backward(dout, cache, layer="softmax"):
    """d loss / d x = y * (dout - sum(dout * y, axis)) for y = softmax(x).

    Raises:
        TypeError: ``cache`` is not what :func:`softmax_forward` returned.
        TypeError/ValueError: ``dout`` does not match the forward output.
    """
    if not (isinstance(cache, tuple) and len(cache) == 2 and isinstance(cache[0], np.ndarray)):
        raise TypeError(f"{layer}: expected the cache returned by softmax_forward, got "
                        f"{type(cache).__name__}")
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
    """A validated ``out`` for an elementwise op on ``x``: C-contiguous, x's shape and dtype,
    writable, sharing no memory with ``x``; or a new array after checking that it fits in
    memory."""
    if out is None:
        check_allocation(layer, "output", x.shape, x.dtype)
        return _memory.output(layer, None, x.shape, x.dtype)
    out = _memory.output(layer, out, x.shape, x.dtype)
    check_no_overlap(layer, "out", out, **{"the input": x})
    return out


def _output_grad_args(layer, op, cache_type, dout, cache, out):
    """The kept output ``y`` and a validated ``dx`` for the backward pass of an activation whose
    cache (a ``cache_type`` made by ``op``) holds its output: ``dout`` must match ``y``, and an
    ``out`` must share no memory with ``dout`` or ``y`` (the cache serves further backward
    calls)."""
    if not isinstance(cache, cache_type):
        raise TypeError(f"{layer}: expected the cache returned by {op}, got "
                        f"{type(cache).__name__}")
    y = cache.y
    check_float_array(layer, y, f"the cache's y (made by {op})")
    check_grad(layer, dout, y.shape, y.dtype)
    dx = _memory.output(layer, out, y.shape, y.dtype)
    if out is not None:
        check_no_overlap(layer, "out", dx, gradient=dout, **{"the cached output": y})
    return y, dx


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
        ValueError: an unusable ``out`` (wrong shape, dtype or layout, read-only, or sharing
            memory with ``x``).
        MemoryError: the output would not fit in this machine's memory.
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
        TypeError/ValueError: ``dout`` does not match the forward output; a cache that is not
            a :class:`SigmoidCache`; an unusable ``out`` (as for the forward, or sharing memory
            with ``dout`` or the cached output).
    """
    y, dx = _output_grad_args(layer, "sigmoid_forward", SigmoidCache, dout, cache, out)
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
        ValueError: an unusable ``out`` (wrong shape, dtype or layout, read-only, or sharing
            memory with ``x``).
        MemoryError: the output would not fit in this machine's memory.
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
        TypeError/ValueError: ``dout`` does not match the forward output; a cache that is not
            a :class:`TanhCache`; an unusable ``out`` (as for the forward, or sharing memory
            with ``dout`` or the cached output).
    """
    y, dx = _output_grad_args(layer, "tanh_forward", TanhCache, dout, cache, out)
    np.multiply(y, y, out=dx)
    np.subtract(1, dx, out=dx)  # 1 - y^2
    dx *= dout
    return dx
