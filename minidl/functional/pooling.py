"""2-D max pooling as a stateless forward/backward pair (validation + kernel dispatch).

Definition (``torch.nn.functional.max_pool2d`` with no padding, dilation 1, floor mode; see
``minidl/reference/pooling.py``)::

    out[n, c, oh, ow] = max_{0 <= i < kH, 0 <= j < kW} x[n, c, oh*sH + i, ow*sW + j]
    OH = (H - kH) // sH + 1,   OW = (W - kW) // sW + 1

The forward kernel also records where each maximum was (a flat index ``h*W + w`` into its
``(H, W)`` plane, as PyTorch's ``return_indices=True``); the backward kernel adds ``dout`` into
those positions. Ties go to the first maximum in row-major window order, like PyTorch.

Under ``with minidl.backend("reference"):`` the validated arguments go instead to the
window-by-window loop of :mod:`minidl.reference.functional.pooling`, and a cache that it made
sends the backward pass there too (the ``if`` statements marked "reference backend").
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import _config, _memory
from .._backend import get_backend
from .._checks import (check_allocation, check_cache_array, check_grad, check_input,
                       check_no_overlap, pair)
from .._kernels import _pool as _kernel
from ..reference.functional import pooling as reference

__all__ = ["MaxPool2dCache", "max_pool2d_forward", "max_pool2d_backward", "pool_params"]


class MaxPool2dCache(NamedTuple):
    """What :func:`max_pool2d_backward` needs from the forward pass.

    Attributes:
        argmax (np.ndarray): int64 ``(N, C, OH, OW)``, flat index of each maximum in its plane.
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
            ``(N, C, OH, OW)``); it becomes part of the cache. A new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C, OH, OW)`` in the dtype of ``x`` with
        ``OH = (H - kH) // sH + 1`` (likewise ``OW``); ``cache`` is a :class:`MaxPool2dCache`
        (under the reference backend the one of :mod:`minidl.reference.functional.pooling`).
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray.
        ValueError: wrong rank, bad kernel_size/stride, an input smaller than the window, or an
            unusable ``out``/``argmax`` (wrong shape, dtype or layout, read-only, or sharing
            memory with ``x`` or with each other).
        MemoryError: the output would not fit in this machine's memory.

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
    given_out, given_argmax = out is not None, argmax is not None
    if not (given_out and given_argmax):  # int64 indices and the output: <= 16 bytes each
        check_allocation(layer, "output and argmax", (2,) + shape, np.float64)
    out = _memory.output(layer, out, shape, x.dtype)
    argmax = _memory.output(layer, argmax, shape, np.int64, "argmax")
    if given_out:
        check_no_overlap(layer, "out", out, input=x, argmax=argmax)
    if given_argmax:
        check_no_overlap(layer, "argmax", argmax, input=x)
    if get_backend() == "reference":  # reference backend: the max of each window, in NumPy
        return reference.max_pool2d_forward(x, kernel_size, stride, layer, out, argmax)
    x = np.ascontiguousarray(x)
    _kernel.max_pool2d_forward(x, out, argmax, *kernel_size, *stride, _config.threads_for(x.size))
    two_by_two = kernel_size == (2, 2) and stride == (2, 2)
    return out, MaxPool2dCache(argmax, x.shape, x.dtype, two_by_two)


def _check_cache(layer, cache):
    """The cache's ``argmax`` as the backward kernel needs it: int64, C-contiguous, one entry
    per output of the geometry in ``x_shape``, and (where the kernel writes ``dx`` at those
    indices: any window but 2x2 with stride 2) every index inside its ``(H, W)`` plane.

    The arrays of a cache can be changed by the caller (``argmax`` may even be the caller's own
    array, passed to the forward), and an index out of its plane would make the kernel write
    outside ``dx``. The range check is one pass over ``argmax`` (a quarter or less of the
    input's size), on the general path only: the 2x2 kernel only compares the indices.
    """
    try:
        n, c, height, width = (int(v) for v in cache.x_shape)
        ok = min(n, c, height, width) >= 1 and isinstance(cache.argmax, np.ndarray) and \
            cache.argmax.ndim == 4 and cache.argmax.shape[:2] == (n, c)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{layer}: the cache's x_shape or argmax is not what "
                         f"max_pool2d_forward made; pass the cache it returned, unchanged")
    argmax = cache.argmax
    out_h, out_w = argmax.shape[2:]
    check_cache_array(layer, "max_pool2d_forward", "argmax", argmax, (n, c, out_h, out_w),
                      np.int64)
    if getattr(cache, "two_by_two", False):
        if 2 * out_h > height or 2 * out_w > width:
            raise ValueError(f"{layer}: the cache's argmax {argmax.shape} does not fit 2x2 "
                             f"windows on an input of shape {cache.x_shape}")
    elif argmax.size and (argmax.min() < 0 or argmax.max() >= height * width):
        raise ValueError(f"{layer}: the cache's argmax holds indices outside [0, {height * width})"
                         f" (H*W of the input): it was changed after max_pool2d_forward; pass "
                         f"the cache it returned, unchanged")


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
        TypeError/ValueError: ``dout`` does not match the forward output; an unusable ``out``
            (as for the forward, or sharing memory with ``dout`` or the cache's ``argmax``); a
            cache that is not the one the forward returned (its ``argmax`` changed shape,
            dtype or layout, or holds an index outside its ``(H, W)`` plane).
    """
    if not isinstance(cache, (MaxPool2dCache, reference.MaxPool2dCache)):
        raise TypeError(f"{layer}: expected the cache returned by max_pool2d_forward, got "
                        f"{type(cache).__name__}")
    _check_cache(layer, cache)
    check_grad(layer, dout, cache.argmax.shape, cache.dtype)
    given = out is not None
    dx = _memory.output(layer, out, cache.x_shape, cache.dtype)
    if given:  # the cache serves further backward calls: argmax must stay intact
        check_no_overlap(layer, "out", dx, gradient=dout, argmax=cache.argmax)
    if isinstance(cache, reference.MaxPool2dCache):  # reference backend: made by its forward
        return reference.max_pool2d_backward(dout, cache, layer, dx)
    dout = np.ascontiguousarray(dout)
    _kernel.max_pool2d_backward(dout, cache.argmax, dx, _config.threads_for(dx.size),
                                cache.two_by_two)
    return dx
