"""2-D max pooling as a stateless forward/backward pair (validation + kernel dispatch).

Definition (``torch.nn.functional.max_pool2d`` with no padding, dilation 1, floor mode; see
``minidl/reference/pooling.py``)::

    out[n, c, oh, ow] = max_{0 <= i < kH, 0 <= j < kW} x[n, c, oh*sH + i, ow*sW + j]
    OH = (H - kH) // sH + 1,   OW = (W - kW) // sW + 1

The forward kernel also records where each maximum was (a flat index ``h*W + w`` into its
``(H, W)`` plane, as PyTorch's ``return_indices=True``); the backward kernel adds ``dout`` into
those positions. Ties go to the first maximum in row-major window order, like PyTorch. Under
:func:`minidl.no_grad` (inference) the forward pass writes the maxima only: the indices, twice
the output's bytes in float32, are not computed.

Under ``with minidl.backend("reference"):`` the validated arguments go instead to the
window-by-window loop of :mod:`minidl.reference.functional.pooling`, and a cache that it made
sends the backward pass there too (the ``if`` statements marked "reference backend").
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import _config, _memory
from .._backend import get_backend
from .._checks import check_grad, check_input, pair
from .._grad_mode import is_grad_enabled
from .._kernels import _pool as _kernel
from ..reference.functional import pooling as reference

__all__ = ["MaxPool2dCache", "max_pool2d_forward", "max_pool2d_backward", "pool_params"]


class MaxPool2dCache(NamedTuple):
    """What :func:`max_pool2d_backward` needs from the forward pass.

    Attributes:
        argmax (np.ndarray or None): int64 ``(N, C, OH, OW)``, flat index of each maximum in its
            plane; None after a forward pass under :func:`minidl.no_grad`, which computes no
            indices (such a cache cannot be backpropagated).
        x_shape (tuple): ``(N, C, H, W)``.
        dtype (np.dtype): dtype of the input and output.
        two_by_two (bool): the windows were 2x2 with stride 2 (they do not overlap, so the
            backward pass writes each input gradient once instead of zeroing and adding).
    """

    argmax: np.ndarray
    x_shape: Tuple[int, int, int, int]
    dtype: np.dtype
    two_by_two: bool = False


def pool_params(kernel_size, stride, layer):
    """Validate ``kernel_size`` and ``stride`` (None means ``kernel_size``); return two pairs.

    Raises:
        ValueError: not an int or a pair of ints >= 1.
    """
    kernel_size = pair(kernel_size, "kernel_size", layer, minimum=1)
    stride = kernel_size if stride is None else pair(stride, "stride", layer, minimum=1)
    return kernel_size, stride


def _check_pool_input(layer, x, kernel_size):
    """Raise ValueError naming ``layer`` if ``x`` is smaller than the window."""
    height, width = x.shape[2:]
    if height < kernel_size[0] or width < kernel_size[1]:
        raise ValueError(
            f"{layer}: input of shape {x.shape} is smaller than kernel_size {kernel_size}: "
            f"expected H >= {kernel_size[0]} and W >= {kernel_size[1]}"
        )


def max_pool2d_forward(x, kernel_size, stride=None, layer="max_pool2d", out=None, argmax=None):
    """Max over sliding windows of each channel, like ``torch.nn.functional.max_pool2d``.

    Args:
        x (np.ndarray): ``(N, C, H, W)``, float32 or float64, any strides.
        kernel_size (int or pair): window ``(kH, kW)``, >= 1 and at most ``(H, W)``.
        stride (int or pair or None): step ``(sH, sW)`` >= 1; None (default) means
            ``kernel_size``.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (C-contiguous, ``(N, C, OH, OW)``,
            x's dtype); a new array when None.
        argmax (np.ndarray, optional): where to write the winners' indices (C-contiguous int64
            ``(N, C, OH, OW)``); it becomes part of the cache. A new array when None, except
            under :func:`minidl.no_grad`, where no indices are computed unless ``argmax`` is
            given.
    Returns:
        (out, cache): ``out`` is ``(N, C, OH, OW)`` in the dtype of ``x`` with
        ``OH = (H - kH) // sH + 1`` (likewise ``OW``); ``cache`` is a :class:`MaxPool2dCache`
        (under the reference backend the one of :mod:`minidl.reference.functional.pooling`),
        whose ``argmax`` is None under :func:`minidl.no_grad`.
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray.
        ValueError: wrong rank, bad kernel_size/stride, an input smaller than the window, or an
            unusable ``out``/``argmax``.

    2x2 windows with stride 2 take a specialized kernel; every geometry gives the same
    results (values, indices, ties and NaN rule) as the general one.
    """
    check_input(layer, x, "NCHW")
    kernel_size, stride = pool_params(kernel_size, stride, layer)
    _check_pool_input(layer, x, kernel_size)
    n, c, height, width = x.shape
    out_h = (height - kernel_size[0]) // stride[0] + 1
    out_w = (width - kernel_size[1]) // stride[1] + 1

    shape = (n, c, out_h, out_w)
    out = _memory.output(layer, out, shape, x.dtype)
    indices = argmax is not None or is_grad_enabled() or get_backend() == "reference"
    if indices:
        argmax = _memory.output(layer, argmax, shape, np.int64, "argmax")
    if get_backend() == "reference":  # reference backend: the max of each window, in NumPy
        return reference.max_pool2d_forward(x, kernel_size, stride, layer, out, argmax)
    x = np.ascontiguousarray(x)
    threads = _config.threads_for(x.size)
    if indices:
        _kernel.max_pool2d_forward(x, out, argmax, *kernel_size, *stride, threads)
    else:  # inference: the maxima only
        _kernel.max_pool2d_values(x, out, *kernel_size, *stride, threads)
    two_by_two = kernel_size == (2, 2) and stride == (2, 2)
    return out, MaxPool2dCache(argmax, x.shape, x.dtype, two_by_two)


def max_pool2d_backward(dout, cache, layer="max_pool2d", out=None):
    """Gradient of :func:`max_pool2d_forward` with respect to its input.

    Args:
        dout (np.ndarray): d loss / d out, ``(N, C, OH, OW)``, the dtype of the forward output;
            any strides.
        cache (MaxPool2dCache): the second value returned by :func:`max_pool2d_forward`.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write ``dx`` (C-contiguous, ``(N, C, H, W)``, the
            input's dtype); a new array when None.
    Returns:
        np.ndarray: ``dx`` of shape ``(N, C, H, W)`` in the dtype of ``x``: each ``dout``
        element is added to the input element that won its window, zeros elsewhere.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output, or an unusable
            ``out``.
        RuntimeError: the forward pass ran under :func:`minidl.no_grad` (no indices).
    """
    if cache.argmax is None:
        raise RuntimeError(f"{layer}: backward after a forward pass under minidl.no_grad(), "
                           f"which computes no indices; run forward again with gradients "
                           f"enabled")
    check_grad(layer, dout, cache.argmax.shape, cache.dtype)
    dx = _memory.output(layer, out, cache.x_shape, cache.dtype)
    if isinstance(cache, reference.MaxPool2dCache):  # reference backend: made by its forward
        return reference.max_pool2d_backward(dout, cache, layer, dx)
    dout = np.ascontiguousarray(dout)
    _kernel.max_pool2d_backward(dout, cache.argmax, dx, _config.threads_for(dx.size),
                                cache.two_by_two)
    return dx
