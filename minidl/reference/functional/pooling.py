"""2-D max and average pooling window by window: the readable, runnable twin of
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

Average pooling (the same book, section 9.3; ``torch.nn.functional.avg_pool2d`` in floor mode)
pads the input with ``pH``/``pW`` zeros on each side and divides each window's sum by
``kH*kW`` (``count_include_pad=True``, the zeros count) or by the number of its elements that
are not padding::

    out[n, c, oh, ow] = sum over 0 <= i < kH, 0 <= j < kW of xpad[n, c, oh*sH + i, ow*sW + j]
                        / divisor[oh, ow]
    OH = (H + 2*pH - kH) // sH + 1,   OW = (W + 2*pW - kW) // sW + 1

Each output is linear in its window, so its gradient sends ``dout / divisor`` to every element
of the window; overlapping windows add up. Global average pooling is the mean over all ``H*W``
positions of a channel (Lin, Chen & Yan 2014, "Network In Network", section 3.2; the last
pooling of ResNet): ``out[n, c] = sum_{h, w} x[n, c, h, w] / (H*W)``, whose gradient is
``dout[n, c] / (H*W)`` at every position.

Nothing here validates its inputs; the functions of :mod:`minidl.functional.pooling` do that
before they call these.
"""
from typing import NamedTuple, Tuple

import numpy as np

from ..._checks import pair
from ._result import into

__all__ = ["MaxPool2dCache", "max_pool2d_forward", "max_pool2d_backward", "AvgPool2dCache",
           "avg_pool2d_forward", "avg_pool2d_backward", "global_avg_pool2d_forward",
           "global_avg_pool2d_backward"]


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


class AvgPool2dCache(NamedTuple):
    """What :func:`avg_pool2d_backward` and :func:`global_avg_pool2d_backward` need.

    Attributes:
        x_shape (tuple): ``(N, C, H, W)``.
        out_shape (tuple): ``(N, C, OH, OW)``, or ``(N, C)`` for global pooling.
        dtype (np.dtype): dtype of the input and the output.
        kernel_size, stride, padding (pairs of int): the windows.
        divisor (np.ndarray or int): what each window's sum was divided by: ``(OH, OW)``
            counts, or ``H*W`` for global pooling.
    """

    x_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, ...]
    dtype: np.dtype
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    divisor: object


def _window_views(array, kernel_size, stride, out_h, out_w):
    """For each window position ``(i, j)``: the view of ``array`` ``(..., Hp, Wp)`` holding
    element ``(i, j)`` of every window, shape ``(..., OH, OW)``."""
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_size, stride
    for i in range(kernel_h):
        for j in range(kernel_w):
            yield array[..., i:i + stride_h * (out_h - 1) + 1:stride_h,
                        j:j + stride_w * (out_w - 1) + 1:stride_w]


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, count_include_pad=True,
                       layer="avg_pool2d", out=None):
    """Each window's sum over the zero-padded input, divided by its divisor.

    Same arguments and results as :func:`minidl.functional.avg_pool2d_forward` (``layer`` is
    ignored).

    Args:
        x (np.ndarray): ``(N, C, H, W)``, float32 or float64.
        kernel_size (int or pair): the window ``(kH, kW)``.
        stride (int or pair or None): ``(sH, sW)``; None means ``kernel_size``.
        padding (int or pair): zeros on each side ``(pH, pW)``.
        count_include_pad (bool): divide by ``kH*kW`` (True) or by the number of input
            elements in the window.
        out (np.ndarray or None): where to write the result; a new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C, OH, OW)`` in the dtype of ``x``; ``cache`` is an
        :class:`AvgPool2dCache`.
    """
    kernel_size = pair(kernel_size, "kernel_size", layer, minimum=1)
    stride = kernel_size if stride is None else pair(stride, "stride", layer, minimum=1)
    pad_h, pad_w = pair(padding, "padding", layer)
    _, _, height, width = x.shape
    out_h = (height + 2 * pad_h - kernel_size[0]) // stride[0] + 1
    out_w = (width + 2 * pad_w - kernel_size[1]) // stride[1] + 1
    spatial = ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w))
    padded = np.pad(x, spatial)  # zeros around each (H, W) plane

    # the divisor of each window: kH*kW, or how many of its elements come from x (a padded
    # plane of ones pooled the same way counts them)
    if count_include_pad:
        divisor = np.full((out_h, out_w), kernel_size[0] * kernel_size[1])
    else:
        inside = np.pad(np.ones((height, width), np.int64), spatial[2:])
        divisor = sum(_window_views(inside, kernel_size, stride, out_h, out_w))

    total = np.zeros(x.shape[:2] + (out_h, out_w), np.float64)
    for element in _window_views(padded, kernel_size, stride, out_h, out_w):
        total += element  # the sum over the window, one window position at a time
    cache = AvgPool2dCache(x.shape, total.shape, x.dtype, kernel_size, stride, (pad_h, pad_w),
                           divisor)
    return into(out, (total / divisor).astype(x.dtype)), cache


def avg_pool2d_backward(dout, cache, layer="avg_pool2d", out=None):
    """Send ``dout / divisor`` to every element of each window.

    Same arguments and results as :func:`minidl.functional.avg_pool2d_backward` (``layer`` is
    ignored).

    Args:
        dout (np.ndarray): d loss / d out, ``(N, C, OH, OW)``, the dtype of the output.
        cache (AvgPool2dCache): the second value returned by :func:`avg_pool2d_forward`.
        out (np.ndarray or None): where to write ``dx``; a new array when None.
    Returns:
        np.ndarray: ``dx`` of shape ``(N, C, H, W)`` in the input's dtype.
    """
    n, c, height, width = cache.x_shape
    (pad_h, pad_w), (out_h, out_w) = cache.padding, cache.out_shape[2:]
    share = dout / cache.divisor.astype(cache.dtype)  # what each element of a window gets
    dpadded = np.zeros((n, c, height + 2 * pad_h, width + 2 * pad_w), cache.dtype)
    for element in _window_views(dpadded, cache.kernel_size, cache.stride, out_h, out_w):
        element += share  # a view: adds into dpadded, overlapping windows accumulate
    return into(out, np.ascontiguousarray(dpadded[:, :, pad_h:pad_h + height,
                                                   pad_w:pad_w + width]))


def global_avg_pool2d_forward(x, layer="global_avg_pool2d", out=None):
    """The mean of each ``(H, W)`` plane: ``(N, C, H, W) -> (N, C)``.

    Same arguments and results as :func:`minidl.functional.global_avg_pool2d_forward`.

    Args:
        x (np.ndarray): ``(N, C, H, W)``, float32 or float64.
        out (np.ndarray or None): where to write the result; a new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C)`` in the dtype of ``x``; ``cache`` is an
        :class:`AvgPool2dCache`.
    """
    n, c, height, width = x.shape
    mean = x.sum(axis=(2, 3), dtype=np.float64) / (height * width)
    cache = AvgPool2dCache(x.shape, (n, c), x.dtype, (height, width), (1, 1), (0, 0),
                           height * width)
    return into(out, mean.astype(x.dtype)), cache


def global_avg_pool2d_backward(dout, cache, layer="global_avg_pool2d", out=None):
    """``dx[n, c, h, w] = dout[n, c] / (H*W)`` at every position.

    Same arguments and results as :func:`minidl.functional.global_avg_pool2d_backward`.

    Args:
        dout (np.ndarray): ``(N, C)``, the dtype of the output.
        cache (AvgPool2dCache): the second value returned by :func:`global_avg_pool2d_forward`.
        out (np.ndarray or None): where to write ``dx``; a new array when None.
    Returns:
        np.ndarray: ``dx`` of shape ``(N, C, H, W)`` in the input's dtype.
    """
    dx = np.empty(cache.x_shape, cache.dtype)
    dx[...] = (dout / cache.dtype.type(cache.divisor))[:, :, None, None]  # the same everywhere
    return into(out, dx)
