"""2-D max pooling window by window: the readable, runnable twin of
:mod:`minidl.functional.pooling`.

Max pooling (Goodfellow, Bengio & Courville, 2016, "Deep Learning", section 9.3), as
``torch.nn.functional.max_pool2d`` with no padding, dilation 1 and floor mode: for an input of
shape ``(N, C, H, W)``, a window ``(kH, kW)`` and a stride ``(sH, sW)``::

    out[n, c, oh, ow] = max over 0 <= i < kH, 0 <= j < kW of x[n, c, oh*sH + i, ow*sW + j]

    OH = (H - kH) // sH + 1,   OW = (W - kW) // sW + 1

The winner of each window is recorded as the flat index ``h*W + w`` inside its ``(H, W)``
plane (PyTorch's ``return_indices=True``). PyTorch's rules for who wins: among equal values the
first in row-major window order (``i``, then ``j``); a NaN beats every number, and among NaNs
the last one wins (as PyTorch's CPU kernel). The max is not differentiable where values tie;
the backward pass sends each ``dout[n, c, oh, ow]`` to its window's winner only, and a position
that wins several overlapping windows receives the sum.

Nothing here validates its inputs; :func:`minidl.functional.max_pool2d_forward` does that
before it calls this one.
"""
from typing import NamedTuple, Tuple

import numpy as np

from ..._checks import pair
from ._result import into

__all__ = ["MaxPool2dCache", "max_pool2d_forward", "max_pool2d_backward"]


class MaxPool2dCache(NamedTuple):
    """What :func:`max_pool2d_backward` needs from the forward pass.

    Attributes:
        argmax (np.ndarray): int64 ``(N, C, OH, OW)``, each window's winner as a flat index
            ``h*W + w`` into its ``(H, W)`` plane.
        x_shape (tuple): ``(N, C, H, W)``.
        dtype (np.dtype): dtype of the input and the output.
    """

    argmax: np.ndarray
    x_shape: Tuple[int, int, int, int]
    dtype: np.dtype

    @property
    def out_shape(self):
        """``(N, C, OH, OW)``, the shape ``dout`` must have."""
        return self.argmax.shape


def max_pool2d_forward(x, kernel_size, stride=None, layer="max_pool2d", out=None, argmax=None):
    """The max of every window, found by visiting the window's positions in order.

    Same arguments and results as :func:`minidl.functional.max_pool2d_forward` (``layer`` is
    ignored).

    Args:
        x (np.ndarray): ``(N, C, H, W)``, float32 or float64.
        kernel_size (int or pair): the window ``(kH, kW)``.
        stride (int or pair or None): ``(sH, sW)``; None means ``kernel_size``.
        out (np.ndarray or None): where to write the result; a new array when None.
        argmax (np.ndarray or None): where to write the winners' indices (int64); it becomes
            the cache's ``argmax``. A new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C, OH, OW)`` in the dtype of ``x``; ``cache`` is a
        :class:`MaxPool2dCache`.
    """
    kernel_size = pair(kernel_size, "kernel_size", layer, minimum=1)
    stride = kernel_size if stride is None else pair(stride, "stride", layer, minimum=1)
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_size, stride
    _, _, height, width = x.shape
    out_h = (height - kernel_h) // stride_h + 1
    out_w = (width - kernel_w) // stride_w + 1
    top = np.arange(out_h).reshape(out_h, 1) * stride_h   # first row of window (oh, .)
    left = np.arange(out_w).reshape(1, out_w) * stride_w  # first column of window (., ow)

    def position(i, j):
        """Element (i, j) of every window: its values (N, C, OH, OW) and flat indices (OH, OW)."""
        values = x[:, :, i:i + stride_h * (out_h - 1) + 1:stride_h,
                   j:j + stride_w * (out_w - 1) + 1:stride_w]
        return values, (top + i) * width + (left + j)

    # a running max over the window, starting from its top-left element
    best, index = position(0, 0)
    best, index = best.copy(), np.broadcast_to(index, best.shape).astype(np.int64)
    for i in range(kernel_h):
        for j in range(kernel_w):
            value, where = position(i, j)
            # strictly greater: an equal value later in the window does not take over
            wins = (value > best) | np.isnan(value)
            best = np.where(wins, value, best)
            index = np.where(wins, where, index)

    cache = MaxPool2dCache(into(argmax, index), x.shape, x.dtype)
    return into(out, best), cache


def max_pool2d_backward(dout, cache, layer="max_pool2d", out=None):
    """Send each output's gradient to the winner of its window.

    Same arguments and results as :func:`minidl.functional.max_pool2d_backward` (``layer`` is
    ignored).

    Args:
        dout (np.ndarray): d loss / d out, ``(N, C, OH, OW)``, the dtype of the output.
        cache (MaxPool2dCache): the second value returned by :func:`max_pool2d_forward`.
        out (np.ndarray or None): where to write ``dx``; a new array when None.
    Returns:
        np.ndarray: ``dx`` of shape ``(N, C, H, W)`` in the input's dtype: zero except at
        winners.
    """
    n, c, height, width = cache.x_shape
    dx = np.zeros((n * c, height * width), dtype=cache.dtype)  # one row per (H, W) plane
    planes = np.arange(n * c).reshape(n * c, 1)
    # dx[plane, argmax] += dout; np.add.at adds when one position won several windows (a plain
    # "dx[...] += dout" with repeated indices would keep only one of them)
    np.add.at(dx, (planes, cache.argmax.reshape(n * c, -1)), dout.reshape(n * c, -1))
    return into(out, dx.reshape(cache.x_shape))
