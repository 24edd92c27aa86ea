"""2-D convolution as a stateless forward/backward pair (validation + kernel dispatch).

Math (cross-correlation, as ``torch.nn.functional.conv2d``; see ``minidl/reference/conv.py``)::

    out[n, o, oh, ow] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_pad[n, c, oh*sH + i, ow*sW + j]

It is computed with im2col and ONE matrix product per batch (Chellapilla, Puri and Simard,
2006, "High Performance Convolutional Neural Networks for Document Processing"). With
``M = N*OH*OW`` output positions, ``K = kH*kW*C_in`` taps and
``weight_rows = weight.transpose(0, 2, 3, 1).reshape(C_out, K)``:

    forward    x_nhwc                 = x in NHWC order                 Cython, parallel
               cols     (M, K)        = im2col(x_nhwc)                  Cython, parallel
               out_rows (M, C_out)    = cols @ weight_rows.T            BLAS GEMM (1 thread)
               out (N, C_out, OH, OW) = out_rows in NCHW order + bias   Cython, parallel
    backward   drows (C_out, M)       = dout reordered; dbias = sums    Cython, parallel
               dweight                = drows @ cols (reordered)        BLAS GEMM
               dcols    (M, K)        = drows.T @ weight_rows           BLAS GEMM, into cols
               dx                     = col2im(dcols) in NCHW order     Cython, parallel

``cols[(n*OH + oh)*OW + ow, (i*kW + j)*C_in + c] = x_pad[n, c, oh*sH + i, ow*sW + j]``. This
row-per-position layout with NHWC taps was measured faster than ``(C_in*kH*kW, N*OH*OW)`` with
OpenBLAS (tall-skinny products, contiguous copies). ``cols`` is kept in the cache so the
backward pass does not unroll ``x`` again (memory: ``M*K`` elements), and the backward pass
overwrites it with ``dcols``: a cache serves ONE backward pass (like PyTorch's autograd graph
without ``retain_graph``). Callers that convolve repeatedly (the Conv2D layer) can pass a
``workspace`` so ``cols`` reuses the same memory from batch to batch. Every other large array
(the NHWC copies, ``out_rows``, ``drows``, the outputs and ``dx``) comes from
:mod:`minidl._memory`'s caching allocator, which reuses the memory of freed arrays: no page faults
for fresh memory on each step, and nothing the caller holds is overwritten.

When ``C_in*kH*kW`` is small (a first layer on 1 or 3 channels) and the stride is 1, the
convolution is computed by direct Cython loops instead (see ``choose_method`` and
``minidl/_kernels/_conv.pyx``): no im2col, no GEMM. Other 3x3 stride-1 convolutions use
Winograd's F(2x2, 3x3) (:mod:`minidl.functional.winograd`): 16 smaller matrix products on
transformed 4x4 tiles, 2.25x fewer multiplications than im2col's one.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .. import _blas, _config, _memory
from .._checks import check_float_array, check_grad, check_input, pair
from .._kernels import _conv as _kernel
from . import winograd as _winograd

__all__ = [
    "Conv2dCache", "conv2d_forward", "conv2d_backward", "conv2d_output_size",
    "column_matrix_shape",
]

@dataclass
class Conv2dCache:
    """What :func:`conv2d_backward` needs from the forward pass.

    Attributes:
        cols (np.ndarray or None): im2col method: im2col of the input, ``(S*OH*OW,
            kH*kW*C_in)`` for a chunk of ``S`` samples (the whole batch when ``S == N``; then
            the backward pass does not unroll again), C-contiguous; None once a backward pass
            has used it (always None for the direct method).
        weight_rows (np.ndarray or None): im2col method: the weight as ``(C_out, kH*kW*C_in)``,
            taps ordered (i, j, c).
        has_bias (bool): whether the forward added a bias.
        dtype (np.dtype): dtype of the input, output and gradients.
        x_shape (tuple): ``(N, C_in, H, W)``.
        weight_shape (tuple): ``(C_out, C_in, kH, kW)``.
        out_shape (tuple): ``(N, C_out, OH, OW)``.
        stride (tuple): ``(sH, sW)``.
        padding (tuple): ``(pH, pW)``.
        x (np.ndarray or None): direct path: the zero-padded C-contiguous input
            ``(N, C_in, H + 2*pH, W + 2*pW)``; None after the backward.
        weight (np.ndarray or None): direct path: the C-contiguous weight.
        x_nhwc (np.ndarray or None): im2col path with several chunks: the input in NHWC
            order, unrolled again chunk by chunk in the backward pass.
        chunk (int): im2col path: samples per chunk (``cols`` holds one chunk's rows).
        winograd (WinogradState or None): Winograd path: what its backward pass needs; None
            after the backward.
        method (str): ``"direct"``, ``"winograd"`` or ``"im2col"``, the path the forward took.
    """

    cols: Optional[np.ndarray]
    weight_rows: Optional[np.ndarray]
    has_bias: bool
    dtype: np.dtype
    x_shape: Tuple[int, int, int, int]
    weight_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, int, int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    x: Optional[np.ndarray] = None
    weight: Optional[np.ndarray] = None
    x_nhwc: Optional[np.ndarray] = None
    chunk: int = 0
    winograd: Optional[_winograd.WinogradState] = None
    method: str = "im2col"


# Convolutions with at most this many taps per output (C_in*kH*kW) use the direct kernels.
DIRECT_MAX_TAPS = 32
METHODS = ("auto", "direct", "im2col", "winograd")


def choose_method(method, taps, layer="conv2d", stride=(1, 1), kernel_size=None):
    """``"direct"``, ``"winograd"`` or ``"im2col"`` for a convolution with
    ``taps = C_in*kH*kW``.

    ``"auto"`` picks, for stride 1, the direct kernels when ``taps <= DIRECT_MAX_TAPS`` (there
    the GEMM's inner dimension is too small for BLAS to pay for im2col's copy), else Winograd
    F(2x2, 3x3) when ``kernel_size`` is ``(3, 3)``; im2col for everything else.

    Raises:
        ValueError: ``method`` is not one of ``"auto"``, ``"direct"``, ``"im2col"``,
            ``"winograd"``; ``"direct"`` or ``"winograd"`` with a stride other than 1; or
            ``"winograd"`` with a kernel_size other than ``(3, 3)`` (when given).
    """
    if method not in METHODS:
        raise ValueError(f"{layer}: method must be one of {METHODS}, got {method!r}")
    stride_one = tuple(stride) == (1, 1)
    three_by_three = kernel_size is not None and tuple(kernel_size) == (3, 3)
    if method == "auto":
        if stride_one and taps <= DIRECT_MAX_TAPS:
            return "direct"
        return "winograd" if stride_one and three_by_three else "im2col"
    if method in ("direct", "winograd") and not stride_one:
        raise ValueError(f"{layer}: method {method!r} needs stride 1, got stride {tuple(stride)}")
    if method == "winograd" and kernel_size is not None and not three_by_three:
        raise ValueError(f"{layer}: method 'winograd' needs kernel_size (3, 3), got "
                         f"{tuple(kernel_size)}")
    return method


# im2col's matrix is built for this many bytes of samples at a time (at least one sample), so
# that it stays in the cache between im2col and its matrix products instead of going through
# memory: a whole batch's matrix is kH*kW times the input (151 MB for 64x64x32x32 float32).
CHUNK_BYTES = 4 << 20


def _samples_per_chunk(n, bytes_per_sample):
    """Samples per im2col chunk: ``CHUNK_BYTES`` worth, at least 1, at most ``n``."""
    return max(1, min(n, CHUNK_BYTES // max(1, bytes_per_sample)))


def _padded(x, padding):
    """C-contiguous ``x`` with ``padding`` zeros on each side of H and W (x itself if none)."""
    pad_h, pad_w = padding
    if pad_h == 0 and pad_w == 0:
        return np.ascontiguousarray(x)
    n, c, h, w = x.shape
    x_pad = _memory.empty((n, c, h + 2 * pad_h, w + 2 * pad_w), x.dtype)
    x_pad[:, :, :pad_h] = 0
    x_pad[:, :, h + pad_h:] = 0
    x_pad[:, :, pad_h:h + pad_h, :pad_w] = 0
    x_pad[:, :, pad_h:h + pad_h, w + pad_w:] = 0
    x_pad[:, :, pad_h:h + pad_h, pad_w:w + pad_w] = x
    return x_pad


def conv2d_output_size(in_size, kernel_size, stride, padding):
    """``(OH, OW)`` of a convolution; every argument is a pair ``(h, w)`` of ints.

    ``O = (I + 2*padding - kernel) // stride + 1`` per axis (PyTorch's ``Conv2d`` with
    dilation 1); a result < 1 means the input is too small.
    """
    sizes = zip(in_size, kernel_size, stride, padding)
    return tuple((i + 2 * p - k) // s + 1 for i, k, s, p in sizes)


def check_spatial_size(layer, x_shape, kernel_size, stride, padding):
    """Return ``(OH, OW)``; raise ValueError naming ``layer`` if either is < 1."""
    out_hw = conv2d_output_size(x_shape[2:], kernel_size, stride, padding)
    if min(out_hw) < 1:
        raise ValueError(
            f"{layer}: input of shape {tuple(x_shape)} is too small for kernel_size {kernel_size} "
            f"with padding {padding}: expected H + 2*{padding[0]} >= {kernel_size[0]} and "
            f"W + 2*{padding[1]} >= {kernel_size[1]}"
        )
    return out_hw


def column_matrix_shape(layer, x_shape, kernel_size, stride, padding, dtype=np.float32):
    """Shape ``(S*OH*OW, kH*kW*C_in)`` of im2col's matrix for ``S`` samples at a time.

    ``S`` is the number of samples per chunk (:func:`_samples_per_chunk`, about ``CHUNK_BYTES``
    of matrix in ``dtype``; the whole batch ``N`` when it is small): the size a ``workspace``
    for :func:`conv2d_forward` must have.

    Raises:
        ValueError: like :func:`check_spatial_size`.
    """
    out_h, out_w = check_spatial_size(layer, x_shape, kernel_size, stride, padding)
    taps = kernel_size[0] * kernel_size[1] * x_shape[1]
    chunk = _samples_per_chunk(x_shape[0], out_h * out_w * taps * np.dtype(dtype).itemsize)
    return chunk * out_h * out_w, taps


def _check_weight_and_bias(layer, x, weight, bias):
    """Validate ``weight`` (and ``bias`` unless None) against the input ``x``."""
    in_channels = x.shape[1]
    check_float_array(layer, weight, "weight")
    if weight.ndim != 4 or weight.shape[1] != in_channels or 0 in weight.shape:
        raise ValueError(
            f"{layer}: expected weight of shape (C_out, {in_channels}, kH, kW) for an input with "
            f"{in_channels} channels, got shape {weight.shape}"
        )
    if weight.dtype != x.dtype:
        raise TypeError(
            f"{layer}: expected weight dtype {x.dtype} (like the input), got {weight.dtype}"
        )
    if bias is None:
        return
    out_channels = weight.shape[0]
    check_float_array(layer, bias, "bias")
    if bias.shape != (out_channels,):
        raise ValueError(
            f"{layer}: expected bias of shape ({out_channels},), got shape {bias.shape}"
        )
    if bias.dtype != x.dtype:
        raise TypeError(
            f"{layer}: expected bias dtype {x.dtype} (like the input), got {bias.dtype}"
        )


def _column_matrix(layer, workspace, shape, dtype):
    """A C-contiguous ``shape`` array for im2col: the front of ``workspace``, or a new one."""
    size = shape[0] * shape[1]
    if workspace is None:
        return np.empty(shape, dtype=dtype)
    ok = (
        isinstance(workspace, np.ndarray) and workspace.ndim == 1 and workspace.dtype == dtype
        and workspace.flags.c_contiguous and workspace.size >= size
    )
    if not ok:
        got = (f"{workspace.dtype} array of shape {workspace.shape}"
               if isinstance(workspace, np.ndarray) else type(workspace).__name__)
        raise ValueError(
            f"{layer}: expected workspace to be a contiguous 1-D {dtype} array of at least "
            f"{size} elements, got {got}"
        )
    return workspace[:size].reshape(shape)


def _no_bias(dtype):
    """Placeholder for the kernels' bias argument when there is none (never read)."""
    return np.empty(0, dtype=dtype)


def _to_nhwc(x, threads):
    """C-contiguous ``(N, C, H, W)`` -> C-contiguous ``(N, H, W, C)`` (a view when C == 1)."""
    n, c, h, w = x.shape
    if c == 1:
        return x.reshape(n, h, w, 1)
    x_nhwc = _memory.empty((n, h, w, c), x.dtype)
    _kernel.transpose_batched(x.reshape(n, c, h * w), _no_bias(x.dtype), False,
                              x_nhwc.reshape(n, h * w, c), threads)
    return x_nhwc


def _to_nchw(x_nhwc, threads):
    """C-contiguous ``(N, H, W, C)`` -> C-contiguous ``(N, C, H, W)`` (a view when C == 1)."""
    n, h, w, c = x_nhwc.shape
    if c == 1:
        return x_nhwc.reshape(n, 1, h, w)
    x = _memory.empty((n, c, h, w), x_nhwc.dtype)
    _kernel.transpose_batched(x_nhwc.reshape(n, h * w, c), _no_bias(x.dtype), False,
                              x.reshape(n, c, h * w), threads)
    return x


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, layer="conv2d", workspace=None,
                   method="auto", out=None):
    """2-D convolution (cross-correlation) of a batch, like ``torch.nn.functional.conv2d``.

    Args:
        x (np.ndarray): ``(N, C_in, H, W)``, float32 or float64, any strides.
        weight (np.ndarray): ``(C_out, C_in, kH, kW)``, the dtype of ``x``.
        bias (np.ndarray or None): ``(C_out,)``, the dtype of ``x``.
        stride (int or pair): step ``(sH, sW)`` >= 1 (default 1).
        padding (int or pair): zeros ``(pH, pW)`` >= 0 added on each side (default 0).
        layer (str): name used in error messages.
        workspace (np.ndarray or None): optional contiguous 1-D array of x's dtype with at least
            as many elements as :func:`column_matrix_shape` gives (``N*OH*OW*kH*kW*C_in`` for a
            small batch; one chunk of samples for a large one); im2col's matrix is then stored
            in its first elements instead of newly allocated memory. It belongs
            to the returned cache until the backward pass (or until it is discarded). Unused by
            the direct method.
        method (str): ``"auto"`` (default; see :func:`choose_method`), ``"direct"`` (direct
            Cython loops, no im2col and no GEMM: fast when ``C_in*kH*kW`` is small; stride 1
            only), ``"winograd"`` (F(2x2, 3x3) tiles and 16 GEMMs; 3x3 kernels, stride 1) or
            ``"im2col"`` (im2col + one GEMM). All give the same results up to rounding.
        out (np.ndarray or None): where to write the result (C-contiguous, ``(N, C_out, OH, OW)``,
            x's dtype); a new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C_out, OH, OW)`` in the dtype of ``x`` with
        ``OH = (H + 2*pH - kH) // sH + 1`` (likewise ``OW``); ``cache`` is a
        :class:`Conv2dCache` for ONE call of :func:`conv2d_backward`.
    Raises:
        TypeError: an argument is not a float32/float64 ndarray, or dtypes differ.
        ValueError: a wrong shape, a bad stride/padding, an input smaller than the kernel, an
            unknown method, or an unusable workspace or out.
    """
    check_input(layer, x, "NCHW")
    _check_weight_and_bias(layer, x, weight, bias)
    stride = pair(stride, "stride", layer, minimum=1)
    padding = pair(padding, "padding", layer, minimum=0)
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = check_spatial_size(layer, x.shape, (kernel_h, kernel_w), stride, padding)
    n, in_channels = x.shape[:2]
    shape = (n, out_channels, out_h, out_w)
    out = _memory.output(layer, out, shape, x.dtype)
    has_bias = bias is not None
    method = choose_method(method, kernel_h * kernel_w * in_channels, layer, stride,
                           (kernel_h, kernel_w))
    if method == "winograd":
        state = _winograd.forward(x, weight, bias, padding, out)
        cache = Conv2dCache(None, None, has_bias, x.dtype, x.shape, weight.shape, out.shape,
                            stride, padding, winograd=state, method=method)
        return out, cache
    bias_vector = np.ascontiguousarray(bias) if has_bias else _no_bias(x.dtype)
    if method == "direct":
        x_pad = _padded(np.asarray(x), padding)
        weight = np.ascontiguousarray(weight)
        threads = _config.threads_for(out.size * kernel_h * kernel_w * in_channels)
        scratch = np.empty((threads, out_h * x_pad.shape[3]), dtype=x.dtype)
        _kernel.direct_forward(x_pad, weight, bias_vector, has_bias, out, scratch, threads)
        cache = Conv2dCache(None, None, has_bias, x.dtype, x.shape, weight.shape, out.shape,
                            stride, padding, x=x_pad, weight=weight, method=method)
        return out, cache

    taps = kernel_h * kernel_w * in_channels
    per_sample = out_h * out_w
    chunk = _samples_per_chunk(n, per_sample * taps * x.dtype.itemsize)
    cols = _column_matrix(layer, workspace, (chunk * per_sample, taps), x.dtype)

    threads = _config.threads_for(n * per_sample * taps)
    x_nhwc = _to_nhwc(np.ascontiguousarray(x), threads)
    weight_rows = np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(out_channels, -1)
    out_rows = _memory.empty((n * per_sample, out_channels), x.dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        part = cols[:(stop - start) * per_sample]
        _kernel.im2col(x_nhwc[start:stop], part, kernel_h, kernel_w, *stride, *padding, threads)
        with _blas.one_thread():
            np.matmul(part, weight_rows.T, out=out_rows[start * per_sample:stop * per_sample])

    _kernel.transpose_batched(out_rows.reshape(n, per_sample, out_channels), bias_vector,
                              has_bias, out.reshape(n, out_channels, per_sample), threads)
    del out_rows
    cache = Conv2dCache(cols, weight_rows, has_bias, x.dtype, x.shape, weight.shape, out.shape,
                        stride, padding, x_nhwc=x_nhwc if chunk < n else None, chunk=chunk)
    return out, cache


def _direct_backward(dout, cache, input_grad):
    """:func:`conv2d_backward` for a cache of the direct method (no im2col, no GEMM)."""
    x_pad, weight = cache.x, cache.weight
    cache.x = None
    n, out_channels, out_h, out_w = cache.out_shape
    wide_w = x_pad.shape[3]
    dout = np.ascontiguousarray(dout)
    threads = _config.threads_for(dout.size * weight[0].size)
    dweight = np.empty(cache.weight_shape, dtype=np.float64)
    bias_grad = np.empty(out_channels, dtype=np.float64)
    scratch = np.empty((threads, max(out_h * wide_w, x_pad.shape[2] * wide_w)), cache.dtype)
    _kernel.direct_weight_grad(x_pad, dout, dweight, bias_grad, cache.has_bias, scratch,
                               threads)
    dweight = dweight.astype(cache.dtype)
    dbias = bias_grad.astype(cache.dtype) if cache.has_bias else None
    if not input_grad:
        return None, dweight, dbias
    dout_wide = _memory.empty((n, out_channels, out_h, wide_w), cache.dtype)
    dout_wide[..., out_w:] = 0
    dout_wide[..., :out_w] = dout
    dx = _memory.empty(cache.x_shape, cache.dtype)
    _kernel.direct_input_grad(dout_wide, weight, dx, *cache.padding, scratch, threads)
    return dx, dweight, dbias


def conv2d_backward(dout, cache, layer="conv2d", input_grad=True):
    """Gradients of :func:`conv2d_forward` with respect to the input, weight and bias.

    The cache's column matrix is overwritten (its memory holds d loss / d cols), so each forward
    cache supports one backward call.

    Args:
        dout (np.ndarray): d loss / d out, ``(N, C_out, OH, OW)``, the dtype of the forward
            output; any strides.
        cache (Conv2dCache): the second value returned by :func:`conv2d_forward`.
        layer (str): name used in error messages.
        input_grad (bool): compute ``dx`` (default). With False the input gradient (its matrix
            product and col2im) is skipped and ``dx`` is None; ``dweight``/``dbias`` are the same.
    Returns:
        (dx, dweight, dbias): ``(N, C_in, H, W)``, ``(C_out, C_in, kH, kW)`` and ``(C_out,)``,
        all in the dtype of ``x``; ``dbias`` is None when the forward had no bias; ``dx`` is
        None when ``input_grad`` is False.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output.
        RuntimeError: the cache was already used by a backward call.
    """
    if cache.cols is None and cache.x is None and cache.winograd is None:
        raise RuntimeError(
            f"{layer}: this forward pass was already backpropagated (one backward per forward); "
            f"run forward again"
        )
    check_grad(layer, dout, cache.out_shape, cache.dtype)
    if cache.winograd is not None:
        state, cache.winograd = cache.winograd, None
        return _winograd.backward(dout, state, cache.has_bias, input_grad)
    if cache.x is not None:
        return _direct_backward(dout, cache, input_grad)
    cols, x_nhwc, chunk = cache.cols, cache.x_nhwc, cache.chunk
    cache.cols = cache.x_nhwc = None
    n, out_channels = cache.out_shape[:2]
    _, in_channels, kernel_h, kernel_w = cache.weight_shape
    per_sample = cache.out_shape[2] * cache.out_shape[3]
    threads = _config.threads_for(n * per_sample * cols.shape[1])

    dout = np.ascontiguousarray(dout).reshape(n, out_channels, -1)
    drows = _memory.empty((out_channels, n * per_sample), cache.dtype)
    bias_grad = np.empty(out_channels, dtype=np.float64)
    _kernel.nchw_to_rows(dout, drows, bias_grad, cache.has_bias, threads)
    dbias = bias_grad.astype(cache.dtype) if cache.has_bias else None

    _, _, height, width = cache.x_shape
    dx_nhwc = None
    if input_grad:
        dx_nhwc = _memory.empty((n, height, width, in_channels), cache.dtype)
    dweight_rows = partial = None
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = slice(start * per_sample, stop * per_sample)
        part = cols[:(stop - start) * per_sample]
        if x_nhwc is not None:  # several chunks: unroll this one again (it is cache-sized)
            _kernel.im2col(x_nhwc[start:stop], part, kernel_h, kernel_w, *cache.stride,
                           *cache.padding, threads)
        with _blas.one_thread():
            if dweight_rows is None:
                dweight_rows = np.matmul(drows[:, rows], part)
            else:
                partial = np.matmul(drows[:, rows], part, out=partial)
                dweight_rows += partial
            if input_grad:
                dcols = np.matmul(drows[:, rows].T, cache.weight_rows, out=part)
        if input_grad:
            _kernel.col2im(dcols, dx_nhwc[start:stop], kernel_h, kernel_w, *cache.stride,
                           *cache.padding, threads)
    del drows, cols, x_nhwc
    dweight_rows = dweight_rows.reshape(out_channels, kernel_h, kernel_w, in_channels)
    dweight = np.ascontiguousarray(dweight_rows.transpose(0, 3, 1, 2))
    if not input_grad:
        return None, dweight, dbias
    dx = _to_nchw(dx_nhwc, threads)
    return dx, dweight, dbias
