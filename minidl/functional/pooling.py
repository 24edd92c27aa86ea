"""2-D max and average pooling as stateless forward/backward pairs (validation + kernel dispatch).

Max pooling:

Definition (``torch.nn.functional.max_pool2d`` with no padding, dilation 1, floor mode; see
``minidl/reference/pooling.py``)::

    out[n, c, oh, ow] = max_{0 <= i < kH, 0 <= j < kW} x[n, c, oh*sH + i, ow*sW + j]
    OH = (H - kH) // sH + 1,   OW = (W - kW) // sW + 1

The forward kernel also records where each maximum was (a flat index ``h*W + w`` into its
``(H, W)`` plane, as PyTorch's ``return_indices=True``); the backward kernel adds ``dout`` into
those positions. Ties go to the first maximum in row-major window order, like PyTorch. Under
:func:`minidl.no_grad` (inference) the forward pass writes the maxima only: the indices, twice
the output's bytes in float32, are not computed.

Average pooling (``torch.nn.functional.avg_pool2d``, floor mode, zero padding at most half the
window) and global average pooling (``adaptive_avg_pool2d(x, 1)`` flattened to ``(N, C)``)::

    out[n, c, oh, ow] = sum_{i < kH, j < kW} xpad[n, c, oh*sH + i, ow*sW + j] / divisor
    OH = (H + 2*pH - kH) // sH + 1,   OW = (W + 2*pW - kW) // sW + 1
    global: out[n, c] = sum_{h, w} x[n, c, h, w] / (H*W)

with ``xpad`` the input padded with ``pH``/``pW`` zeros on each side and ``divisor = kH*kW``
(``count_include_pad=True``, PyTorch's default) or the number of window elements that are not
padding. The backward pass gives every input element of a window ``dout / divisor``.

Under ``with minidl.backend("reference"):`` the validated arguments go instead to the
window-by-window loops of :mod:`minidl.reference.functional.pooling`, and a cache that they made
sends the backward pass there too (the ``if`` statements marked "reference backend").
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import _config, _memory
from .._backend import get_backend
from .._checks import (FLOAT_DTYPES, check_allocation, check_cache_array, check_grad,
                       check_input, check_no_overlap, pair, positive_int)
from .._grad_mode import is_grad_enabled
from .._kernels import _pool as _kernel
from ..reference.functional import pooling as reference

__all__ = ["MaxPool2dCache", "max_pool2d_forward", "max_pool2d_backward", "pool_params",
           "AvgPool2dCache", "avg_pool2d_forward", "avg_pool2d_backward", "avg_pool_params",
           "global_avg_pool2d_forward", "global_avg_pool2d_backward"]


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
        ValueError: not an int or a pair of ints from 1 to ``MAX_SIZE`` (2**31 - 1).
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
    indices = argmax is not None or is_grad_enabled() or get_backend() == "reference"
    if indices:
        argmax = _memory.output(layer, argmax, shape, np.int64, "argmax")
    if given_out:
        check_no_overlap(layer, "out", out, input=x, argmax=argmax)
    if given_argmax:
        check_no_overlap(layer, "argmax", argmax, input=x)
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


def check_max_pool_cache(layer, cache):
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
        RuntimeError: the forward pass ran under :func:`minidl.no_grad` (no indices).
    """
    if not isinstance(cache, (MaxPool2dCache, reference.MaxPool2dCache)):
        raise TypeError(f"{layer}: expected the cache returned by max_pool2d_forward, got "
                        f"{type(cache).__name__}")
    if cache.argmax is None:
        raise RuntimeError(f"{layer}: backward after a forward pass under minidl.no_grad(), "
                           f"which computes no indices; run forward again with gradients "
                           f"enabled")
    check_max_pool_cache(layer, cache)
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


# ----------------------------------------------------------------------------- average pooling
class AvgPool2dCache(NamedTuple):
    """What :func:`avg_pool2d_backward` and :func:`global_avg_pool2d_backward` need.

    Attributes:
        x_shape (tuple): ``(N, C, H, W)``.
        out_shape (tuple): the output's shape, ``(N, C, OH, OW)`` (``(N, C)`` for global
            pooling).
        dtype (np.dtype): dtype of the input and output.
        kernel_size, stride, padding (pairs of int): the geometry (for global pooling
            ``(H, W)``, ``(1, 1)``, ``(0, 0)``).
        count_include_pad (bool): padded zeros count in the divisor.
    """

    x_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, ...]
    dtype: np.dtype
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    count_include_pad: bool


def avg_pool_params(kernel_size, stride, padding, count_include_pad, layer):
    """Validate average pooling's settings; return them as
    ``(kernel_size, stride, padding, count_include_pad)``.

    ``stride`` None means ``kernel_size``. As in PyTorch, the padding may be at most half the
    window (``pH <= kH // 2``, ``pW <= kW // 2``), so that no window lies in the padding only.

    Raises:
        ValueError: ``kernel_size``/``stride`` not an int or a pair of ints from 1 to
            ``MAX_SIZE``, ``padding`` not >= 0 or more than half the window.
        TypeError: ``count_include_pad`` not a bool.
    """
    kernel_size, stride = pool_params(kernel_size, stride, layer)
    padding = pair(padding, "padding", layer, minimum=0)
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"{layer}: padding {padding} must be at most half of kernel_size "
                         f"{kernel_size} (at most {(kernel_size[0] // 2, kernel_size[1] // 2)}), "
                         f"as in PyTorch")
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"{layer}: count_include_pad must be True or False, got "
                        f"{count_include_pad!r}")
    return kernel_size, stride, padding, bool(count_include_pad)


def _avg_out_shape(layer, x_shape, kernel_size, stride, padding):
    """The output shape ``(N, C, OH, OW)`` of average pooling on an input of ``x_shape``.

    Raises:
        ValueError: the padded input is smaller than the window.
    """
    n, c, height, width = x_shape
    padded = (height + 2 * padding[0], width + 2 * padding[1])
    if padded[0] < kernel_size[0] or padded[1] < kernel_size[1]:
        raise ValueError(
            f"{layer}: input of shape {tuple(x_shape)} with padding {padding} is smaller than "
            f"kernel_size {kernel_size}: expected H + 2*pH >= {kernel_size[0]} and "
            f"W + 2*pW >= {kernel_size[1]}"
        )
    return (n, c, (padded[0] - kernel_size[0]) // stride[0] + 1,
            (padded[1] - kernel_size[1]) // stride[1] + 1)


def _pool_output(layer, out, shape, dtype, **inputs):
    """``out`` validated (:func:`minidl._memory.output`, sharing no memory with any of
    ``inputs``), or a new array after checking that it fits in memory."""
    if out is None:
        check_allocation(layer, "output", shape, dtype)
        return _memory.output(layer, None, shape, dtype)
    out = _memory.output(layer, out, shape, dtype)
    check_no_overlap(layer, "out", out, **inputs)
    return out


def _check_avg_cache(layer, cache, op):
    """Raise unless ``cache`` is what ``op`` (``"avg_pool2d_forward"`` or
    ``"global_avg_pool2d_forward"``) returned: its type, and a geometry (``x_shape``,
    ``out_shape``, ``kernel_size``, ``stride``, ``padding``, ``count_include_pad``) that
    ``op`` could have made.

    A cache is a tuple the caller can change, and the backward kernel trusts it: an
    ``out_shape`` with other ``(N, C)`` than ``x_shape`` would make it read past ``dout``, a
    zero window divide by zero. The check is a few integer comparisons.

    Raises:
        TypeError: not an :class:`AvgPool2dCache` (or the reference backend's).
        ValueError: a geometry ``op`` would not have made.
        MemoryError: an ``x_shape`` whose gradient would not fit in memory.
    """
    if not isinstance(cache, (AvgPool2dCache, reference.AvgPool2dCache)):
        raise TypeError(f"{layer}: expected the cache returned by {op}, got "
                        f"{type(cache).__name__}")
    try:
        x_shape = tuple(positive_int(d, "x_shape", layer) for d in cache.x_shape)
        ok = len(x_shape) == 4 and np.dtype(cache.dtype) in FLOAT_DTYPES
        if op == "global_avg_pool2d_forward":
            geometry = (x_shape[2:], (1, 1), (0, 0), True)
            expected = x_shape[:2]
        else:
            geometry = avg_pool_params(cache.kernel_size, cache.stride, cache.padding,
                                       getattr(cache, "count_include_pad", True), layer)
            expected = _avg_out_shape(layer, x_shape, *geometry[:3])
        given = (tuple(cache.kernel_size), tuple(cache.stride), tuple(cache.padding),
                 getattr(cache, "count_include_pad", True))
        ok = ok and given == geometry and tuple(cache.out_shape) == expected
        if isinstance(cache, reference.AvgPool2dCache):  # its divisor broadcasts onto dout
            divisor = np.asarray(cache.divisor)
            ok = ok and divisor.shape == (expected[2:] if len(expected) == 4 else ())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{layer}: the cache's shapes or window ({cache!r:.200}) are not what "
                         f"{op} made; pass the cache it returned, unchanged")
    check_allocation(layer, "input gradient", x_shape, cache.dtype)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, count_include_pad=True,
                       layer="avg_pool2d", out=None):
    """Mean over sliding windows of each channel, like ``torch.nn.functional.avg_pool2d``.

    Args:
        x (np.ndarray): ``(N, C, H, W)``, float32 or float64, any strides.
        kernel_size (int or pair): window ``(kH, kW)``, >= 1, at most the padded input.
        stride (int or pair or None): step ``(sH, sW)`` >= 1; None (default) means
            ``kernel_size``.
        padding (int or pair): zeros added on each side ``(pH, pW)``, default 0, at most half
            the window.
        count_include_pad (bool): divide by ``kH*kW`` including padded zeros (default, as
            PyTorch) or by the number of input elements in the window.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (C-contiguous, ``(N, C, OH, OW)``,
            x's dtype); a new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C, OH, OW)`` in the dtype of ``x`` with
        ``OH = (H + 2*pH - kH) // sH + 1`` (likewise ``OW``); ``cache`` an
        :class:`AvgPool2dCache` (under the reference backend the one of
        :mod:`minidl.reference.functional.pooling`).
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray; ``count_include_pad`` not a bool.
        ValueError: wrong rank, bad kernel_size/stride/padding, an input smaller than the
            window (after padding), or an unusable ``out`` (wrong shape, dtype or layout,
            read-only, or sharing memory with ``x``).
        MemoryError: the output would not fit in this machine's memory.
    """
    check_input(layer, x, "NCHW")
    kernel_size, stride, padding, count_include_pad = avg_pool_params(
        kernel_size, stride, padding, count_include_pad, layer)
    shape = _avg_out_shape(layer, x.shape, kernel_size, stride, padding)
    out = _pool_output(layer, out, shape, x.dtype, input=x)
    if get_backend() == "reference":  # reference backend: the windows' sums, in NumPy
        return reference.avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad,
                                            layer, out)
    x = np.ascontiguousarray(x)
    _kernel.avg_pool2d_forward(x, out, *kernel_size, *stride, *padding, count_include_pad,
                               _config.threads_for(x.size))
    return out, AvgPool2dCache(x.shape, shape, x.dtype, kernel_size, stride, padding,
                               count_include_pad)


def avg_pool2d_backward(dout, cache, layer="avg_pool2d", out=None):
    """Gradient of :func:`avg_pool2d_forward` with respect to its input.

    Args:
        dout (np.ndarray): d loss / d out, ``(N, C, OH, OW)``, the dtype of the forward output;
            any strides.
        cache (AvgPool2dCache): the second value returned by :func:`avg_pool2d_forward`.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write ``dx`` (C-contiguous, ``(N, C, H, W)``, the
            input's dtype); a new array when None.
    Returns:
        np.ndarray: ``dx`` of shape ``(N, C, H, W)``: each input element receives
        ``dout / divisor`` from every window that holds it.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output; an unusable ``out``
            (as for the forward, or sharing memory with ``dout``); a cache that is not the one
            the forward returned (another type, or shapes/window it would not have made).
    """
    _check_avg_cache(layer, cache, "avg_pool2d_forward")
    check_grad(layer, dout, cache.out_shape, cache.dtype)
    dx = _pool_output(layer, out, cache.x_shape, cache.dtype, gradient=dout)
    if isinstance(cache, reference.AvgPool2dCache):  # reference backend: made by its forward
        return reference.avg_pool2d_backward(dout, cache, layer, dx)
    _kernel.avg_pool2d_backward(np.ascontiguousarray(dout), dx, *cache.kernel_size,
                                *cache.stride, *cache.padding, cache.count_include_pad,
                                _config.threads_for(dx.size))
    return dx


def global_avg_pool2d_forward(x, layer="global_avg_pool2d", out=None):
    """Mean of each channel over its ``H*W`` positions: ``(N, C, H, W) -> (N, C)``.

    Like ``torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)`` (the last pooling of
    ResNet, He et al. 2016, section 3.4); computed by the average-pooling kernel with one
    ``(H, W)`` window.

    Args:
        x (np.ndarray): ``(N, C, H, W)``, float32 or float64, any strides.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (C-contiguous ``(N, C)``, x's
            dtype); a new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C)`` in the dtype of ``x``; ``cache`` an
        :class:`AvgPool2dCache` (or the reference one).
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray.
        ValueError: wrong rank or an empty axis, or an unusable ``out`` (wrong shape, dtype
            or layout, read-only, or sharing memory with ``x``).
    """
    check_input(layer, x, "NCHW")
    n, c, height, width = x.shape
    out = _pool_output(layer, out, (n, c), x.dtype, input=x)
    if get_backend() == "reference":  # reference backend: the mean by its formula
        return reference.global_avg_pool2d_forward(x, layer, out)
    x = np.ascontiguousarray(x)
    _kernel.avg_pool2d_forward(x, out.reshape(n, c, 1, 1), height, width, 1, 1, 0, 0, True,
                               _config.threads_for(x.size))
    return out, AvgPool2dCache(x.shape, (n, c), x.dtype, (height, width), (1, 1), (0, 0), True)


def global_avg_pool2d_backward(dout, cache, layer="global_avg_pool2d", out=None):
    """Gradient of :func:`global_avg_pool2d_forward`: ``dx[n, c, h, w] = dout[n, c] / (H*W)``.

    Args:
        dout (np.ndarray): ``(N, C)``, the dtype of the forward output; any strides.
        cache (AvgPool2dCache): the second value returned by :func:`global_avg_pool2d_forward`.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write ``dx`` (C-contiguous ``(N, C, H, W)``).
    Returns:
        np.ndarray: ``dx`` of shape ``(N, C, H, W)`` in the input's dtype.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output; an unusable ``out``
            (as for the forward, or sharing memory with ``dout``); a cache that is not the one
            the forward returned.
    """
    _check_avg_cache(layer, cache, "global_avg_pool2d_forward")
    check_grad(layer, dout, cache.out_shape, cache.dtype)
    dx = _pool_output(layer, out, cache.x_shape, cache.dtype, gradient=dout)
    if isinstance(cache, reference.AvgPool2dCache):  # reference backend: made by its forward
        return reference.global_avg_pool2d_backward(dout, cache, layer, dx)
    n, c, height, width = cache.x_shape
    _kernel.avg_pool2d_backward(np.ascontiguousarray(dout).reshape(n, c, 1, 1), dx, height,
                                width, 1, 1, 0, 0, True, _config.threads_for(dx.size))
    return dx
