"""Composite layers for residual networks: Residual (a block with a shortcut) and Identity.

A composite module calls its children in ``forward`` and their ``backward`` methods in reverse
order in its own ``backward``, adding the gradients where two paths meet (DESIGN.md,
"Composite modules"). :class:`Residual` is the example to copy for another one.
"""
import numpy as np

from .._checks import check_float_array, check_grad
from .._grad_mode import saved_for_backward
from ..functional.activation import add
from .module import Module

__all__ = ["Residual", "Identity"]


class Identity(Module):
    """Returns its input unchanged (the same array), like ``torch.nn.Identity``.

    A placeholder where a layer is optional, e.g. a residual block's shortcut or a disabled
    normalization. Its backward pass returns ``dout``.

    Shape: any float32/float64 input; the output is the input.

    Raises:
        TypeError: a non-float input or gradient.
        ValueError: a gradient of the wrong shape.
        RuntimeError: ``backward`` before ``forward``, or after a forward under
            :class:`minidl.no_grad`.
    """

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        """Return ``x``."""
        check_float_array("Identity", x)
        self._keep_for_backward((x.shape, x.dtype))
        return x

    def backward(self, dout, input_grad=True):
        """Return ``dout`` (None when ``input_grad`` is False), after checking it."""
        shape, dtype = saved_for_backward("Identity", self._cache)
        check_grad("Identity", dout, shape, dtype)
        return dout if input_grad else None


class Residual(Module):
    """``out = body(x) + shortcut(x)``: a residual block (He et al. 2016, "Deep Residual
    Learning for Image Recognition", eq. 1 with the identity shortcut, eq. 2 with a projection).

    ``body`` and ``shortcut`` are any modules -- a :class:`~minidl.Sequential`, another
    ``Residual`` (blocks nest) or your own; ``shortcut=None`` is the identity (``x`` itself,
    no parameters). Nothing follows the addition: ResNet's ReLU after it is a separate layer,
    e.g. ``Sequential(Residual(body, shortcut), ReLU())`` (which runs the sum and that ReLU in
    one pass, :func:`minidl.functional.add` with ``relu=True``; see
    :meth:`minidl.Sequential.forward`).

    The backward pass is the chain rule at a fork: ``x`` feeds both paths, so
    ``dL/dx = body.backward(dout) + shortcut.backward(dout)`` (``+ dout`` for the identity);
    both children accumulate their parameter gradients. With ``input_grad=False`` neither
    child computes an input gradient and None is returned.

    The sum (:func:`minidl.functional.add`: one pass on the OpenMP threads) goes into a new
    array (from minidl's allocator), never into a child's output or gradient in place: the
    last layer of ``body`` may keep its output for its own backward pass (ReLU does), and an
    identity path returns the very array it was given.

    Args:
        body (Module): the residual function F.
        shortcut (Module or None): the shortcut; None (default) is the identity. A projection
            (a 1x1 convolution with stride, then BatchNorm) when the body changes the shape.

    Shape:
        input whatever ``body`` and ``shortcut`` accept; ``body(x)`` and ``shortcut(x)`` must
        have the same shape and dtype, which is the output's.

    Raises:
        TypeError: ``body`` or ``shortcut`` is not a Module.
        ValueError: at forward time, ``body(x)`` and ``shortcut(x)`` differ in shape (the
            message gives both; use a projection shortcut); in backward, a gradient of the
            wrong shape.
        TypeError: ``body(x)`` and ``shortcut(x)`` differ in dtype.
        RuntimeError: ``backward`` before ``forward``, or after a forward under
            :class:`minidl.no_grad`; the same module object as body and shortcut (or twice
            inside them) raises at the forward pass, since one object keeps one cache.

    Example::

        block = Residual(
            Sequential(Conv2D(16, 32, 3, stride=2, padding=1, bias=False), BatchNorm(32),
                       ReLU(), Conv2D(32, 32, 3, padding=1, bias=False), BatchNorm(32)),
            shortcut=Sequential(Conv2D(16, 32, 1, stride=2, bias=False), BatchNorm(32)))
        y = block(np.zeros((8, 16, 32, 32), np.float32))   # (8, 32, 16, 16)
    """

    def __init__(self, body, shortcut=None):
        super().__init__()
        for name, child in (("body", body), ("shortcut", shortcut)):
            if child is not None and not isinstance(child, Module):
                raise TypeError(f"Residual: {name} must be a Module"
                                + (" or None" if name == "shortcut" else "")
                                + f", got {type(child).__name__}")
        self.body = body
        self.shortcut = shortcut
        self._cache = None

    def forward(self, x):
        """``body(x) + shortcut(x)`` in a new array."""
        return self._sum(x)

    def _forward_relu(self, x):
        """``relu(self(x))`` for :meth:`Module._call_with_relu` (a ResNet block's ``Residual``
        and the ``ReLU`` after it, fused by :class:`~minidl.Sequential`): the sum and the ReLU
        in one pass (the same values bit for bit); this layer keeps its usual cache."""
        return self._sum(x, relu=True)

    def _sum(self, x, relu=False):
        self._release_saved()
        main = self.body(x)
        side = x if self.shortcut is None else self.shortcut(x)
        check_float_array("Residual", main, "the body's output")
        check_float_array("Residual", side, "the shortcut's output")
        if side.shape != main.shape:
            raise ValueError(
                f"Residual: the body's output {main.shape} and the shortcut's {side.shape} must "
                f"have the same shape to be added (input {x.shape}); when the body "
                f"changes the channels or the size, give a projection shortcut, e.g. a 1x1 "
                f"Conv2D with the body's stride"
            )
        if side.dtype != main.dtype:
            raise TypeError(f"Residual: the body's output is {main.dtype} but the shortcut's "
                             f"is {side.dtype}; they must have the same dtype to be added")
        out = add(main, side, relu=relu, layer="Residual")  # (on the threads, in one pass)
        self._keep_for_backward((out.shape, out.dtype, x.shape, x.dtype))
        return out

    def backward(self, dout, input_grad=True):
        """Backpropagate through both paths and add their input gradients.

        Args:
            dout (np.ndarray): d loss / d out, the shape and dtype of the last output.
            input_grad (bool): compute d loss / d x (default); with False the children skip it
                and None is returned (parameter gradients are the same).
        Returns:
            np.ndarray or None: ``body.backward(dout) + shortcut.backward(dout)`` (``+ dout``
            for the identity shortcut), a new array.
        Raises:
            RuntimeError: no forward pass has been run, or it ran under
                :class:`minidl.no_grad`.
            ValueError/TypeError: ``dout`` does not match the last output.
            ValueError: the body's or the shortcut's backward returned something other than
                an array of the input's shape and dtype (it is never broadcast).
        """
        shape, dtype, x_shape, x_dtype = saved_for_backward("Residual", self._cache)
        check_grad("Residual", dout, shape, dtype)
        main = self.body.backward(dout, input_grad=input_grad)
        if self.shortcut is None:
            side = dout
        else:
            side = self.shortcut.backward(dout, input_grad=input_grad)
        if not input_grad:
            return None
        for path, grad in (("body", main), ("shortcut", side)):  # a custom child's, perhaps
            if not (isinstance(grad, np.ndarray) and grad.shape == x_shape
                    and grad.dtype == x_dtype):
                got = (f"{grad.dtype} {grad.shape}" if isinstance(grad, np.ndarray)
                       else type(grad).__name__)
                raise ValueError(f"Residual: the {path}'s backward must return the gradient of "
                                 f"the input, {np.dtype(x_dtype)} {x_shape}, got {got}")
        return add(main, side, layer="Residual")

    def extra_repr(self):
        return "shortcut=identity" if self.shortcut is None else ""
