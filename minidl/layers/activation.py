"""Activation layers: ReLU, Softmax, Sigmoid and Tanh."""
from typing import Callable, NamedTuple

import numpy as np

from .._checks import check_grad, check_kept
from .._grad_mode import saved_for_backward
from ..functional.activation import (ReluCache, relu_backward, relu_forward, sigmoid_backward,
                                     sigmoid_forward, softmax_backward, softmax_forward,
                                     tanh_backward, tanh_forward)
from .module import Module

__all__ = ["ReLU", "Softmax", "Sigmoid", "Tanh"]


class _Stateless(Module):
    """A parameter-free layer whose forward caches what its backward needs."""

    def __init__(self):
        super().__init__()
        self._cache = None
        self._watched = ()  # fingerprint of the output the cache refers to

    def _keep(self, cache, out):
        """Keep ``cache`` for backward, with a fingerprint of ``out`` (which it refers to)."""
        self._keep_for_backward(cache, output=out)

    def _need_cache(self, make=True):
        """The cache of the last forward pass (RuntimeError if there is none, or the output
        it refers to was modified in place); an output that was not kept is recomputed here,
        once, unless ``make`` is False (a caller that only wants the errors)."""
        cache = saved_for_backward(type(self).__name__, self._cache)
        check_kept(type(self).__name__, self._watched)
        if make and isinstance(cache, _Recompute):  # an output not kept: made now, once
            cache = cache.make()
            self.__dict__["_cache"] = cache
        return cache

    def _no_input_grad(self, dout, output):
        """``backward(dout, input_grad=False)``: check ``dout`` against ``output``; None."""
        check_grad(type(self).__name__, dout, output.shape, output.dtype)


class _OutputActivation(_Stateless):
    """An elementwise activation whose backward reads its output (``_forward_op``,
    ``_backward_op`` from :mod:`minidl.functional.activation`); an output modified in place
    before ``backward`` is a RuntimeError."""

    def forward(self, x):
        self._release_saved()  # frees the previous output: its block can serve this one
        out, cache = self._forward_op(x, layer=type(self).__name__)
        self._keep(cache, out)
        return out

    def backward(self, dout, input_grad=True):
        """d loss / d x (None when ``input_grad`` is False); see :meth:`Module.backward`."""
        cache = self._need_cache()
        if not input_grad:
            return self._no_input_grad(dout, cache.y)
        return self._backward_op(dout, cache, layer=type(self).__name__)


class ReLU(_OutputActivation):
    """Rectified linear unit, ``max(x, 0)`` elementwise (Nair & Hinton, 2010).

    Shape: any input, float32 or float64; output of the same shape and dtype.
    The gradient at exactly 0 is 0, as in PyTorch. The backward pass reads the output (as
    PyTorch's does), so an output modified in place before ``backward`` is a RuntimeError.
    """

    _forward_op = staticmethod(relu_forward)
    _backward_op = staticmethod(relu_backward)

    def _adopt_output(self, out):
        """Keep ``out`` for ``backward`` as if this layer's forward had returned it: the
        output of a layer that applied this ReLU in its own pass
        (:meth:`Module._call_with_relu`)."""
        self._keep(ReluCache(out), out)

    def _adopt_recomputed_output(self, make):
        """As :meth:`_adopt_output` for an output that was not kept (BatchNorm -> ReLU ->
        MaxPool2D in one pass writes the pooled output only): ``make()`` returns its
        ``ReluCache``, recomputed bit for bit, when a backward pass of this layer needs it
        (the fused pass's own does not)."""
        self._keep_for_backward(_Recompute(make))


class _Recompute(NamedTuple):
    """A cache to be made when first needed: ``make()`` returns it."""

    make: Callable


class Softmax(_Stateless):
    """Softmax along ``axis``: ``exp(x_i) / sum_j exp(x_j)``, computed stably.

    For training a classifier, feed logits to :class:`minidl.losses.CrossEntropyLoss`
    instead (it fuses log-softmax and the loss, which is faster and more accurate).

    Args:
        axis (int): the axis that sums to 1. Default 1 (classes of an ``(N, K)`` input).
    Shape:
        any input with that axis, float32 or float64; output of the same shape and dtype.

    Raises:
        TypeError: non-float input or a non-int ``axis``.
        ValueError: ``axis`` out of range, or the input has no entry along it (zero classes).
        RuntimeError: the output was modified in place before ``backward``.
    """

    def __init__(self, axis=1):
        super().__init__()
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"Softmax: expected axis to be an int, got {axis!r}")
        self.axis = int(axis)

    def forward(self, x):
        self._release_saved()
        out, cache = softmax_forward(x, self.axis, layer="Softmax")
        self._keep(cache, out)
        return out

    def backward(self, dout, input_grad=True):
        """d loss / d x (None when ``input_grad`` is False); see :meth:`Module.backward`."""
        cache = self._need_cache()
        if not input_grad:
            return self._no_input_grad(dout, cache[0])
        return softmax_backward(dout, cache, layer="Softmax")

    def extra_repr(self):
        return f"axis={self.axis}"


class Sigmoid(_OutputActivation):
    """The logistic sigmoid ``1 / (1 + exp(-x))`` elementwise (PyTorch's ``nn.Sigmoid``).

    Computed without overflow for any ``|x|`` (see :func:`minidl.functional.sigmoid_forward`); the
    backward pass is ``dout * y * (1 - y)`` from the output ``y``, so an output modified in
    place before ``backward`` is a RuntimeError (as in PyTorch).

    Shape:
        any input, float32 or float64; output of the same shape and dtype.

    Raises:
        TypeError: non-float input.
        RuntimeError: the output was modified in place before ``backward``.
    """

    _forward_op = staticmethod(sigmoid_forward)
    _backward_op = staticmethod(sigmoid_backward)


class Tanh(_OutputActivation):
    """The hyperbolic tangent elementwise (PyTorch's ``nn.Tanh``).

    The backward pass is ``dout * (1 - y^2)`` from the output ``y``, so an output modified in
    place before ``backward`` is a RuntimeError (as in PyTorch).

    Shape:
        any input, float32 or float64; output of the same shape and dtype.

    Raises:
        TypeError: non-float input.
        RuntimeError: the output was modified in place before ``backward``.
    """

    _forward_op = staticmethod(tanh_forward)
    _backward_op = staticmethod(tanh_backward)
