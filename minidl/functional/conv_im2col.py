"""Convolution as im2col + matrix products (any kernel size, stride and padding).

Chellapilla, Puri and Simard, 2006, "High Performance Convolutional Neural Networks for Document
Processing": every receptive field of the input is copied into one row of a matrix, and the
convolution becomes a matrix product. With ``M = S*OH*OW`` output positions of a chunk of ``S``
samples, ``K = kH*kW*C_in`` taps and
``weight_rows = weight.transpose(0, 2, 3, 1).reshape(C_out, K)``::

    forward    x_nhwc                 = x in NHWC order                 Cython, parallel
               per chunk of S samples:
                 cols     (M, K)      = im2col(x_nhwc[chunk])           Cython, parallel
                 out_rows (M, C_out)  = cols @ weight_rows.T            GEMM, parallel
               out (N, C_out, OH, OW) = out_rows in NCHW order + bias   Cython, parallel
    backward   drows (C_out, N*OH*OW) = dout reordered; dbias = sums    Cython, parallel
               per chunk:
                 dweight_rows        += drows[:, chunk] @ cols          GEMM, parallel
                 dcols    (M, K)      = drows[:, chunk].T @ weight_rows GEMM, parallel
                 dx_nhwc[chunk]       = col2im(dcols)                   Cython, parallel
               dx                     = dx_nhwc in NCHW order           Cython, parallel

``cols[(n*OH + oh)*OW + ow, (i*kW + j)*C_in + c] = x_pad[n, c, oh*sH + i, ow*sW + j]``: one row
per output position with NHWC taps (contiguous copies). The products are
:func:`minidl._blas.matmul` on minidl's OpenMP team; with the chunk's output positions as the
rows of C the weight is packed once per thread, not once per image.

The matrix is built for ``S`` samples at a time, about ``CHUNK_BYTES`` of it (a whole batch's
would be ``kH*kW`` times the input: 151 MB for 64x64x32x32 float32), so it stays in the CPU
cache between im2col and its products. When the whole batch fits in one chunk the matrix is
kept in the cache for the backward pass; otherwise the cache keeps ``x_nhwc`` and the backward
pass unrolls each chunk again. Every array allocated here comes from :mod:`minidl._memory`;
the backward pass writes only into arrays of its own, so a cache serves any number of backward
calls.

Called by :func:`minidl.functional.conv.conv2d_forward` / ``conv2d_backward``, which validate
the arguments and choose the method; these functions trust them (except ``workspace``, checked
here).
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .. import _blas, _config, _memory
from .._kernels import _conv as _kernel

__all__ = ["Im2colCache", "forward", "backward", "matrix_shape", "CHUNK_BYTES"]

# im2col's matrix is built for this many bytes of samples at a time (at least one sample).
CHUNK_BYTES = 4 << 20


class Im2colCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward` (immutable; serves any number of
    backward calls).

    Attributes:
        cols (np.ndarray or None): im2col's matrix of the whole batch, ``(N*OH*OW, kH*kW*C_in)``,
            when it was built in one chunk (``chunk == N``); None otherwise.
        x_nhwc (np.ndarray or None): the input in NHWC order when the matrix was built in
            several chunks (the backward pass unrolls them again); None otherwise.
        weight_rows (np.ndarray): the weight as ``(C_out, kH*kW*C_in)``, taps ordered (i, j, c).
        has_bias (bool): whether the forward added a bias.
        x_shape (tuple): ``(N, C_in, H, W)``.
        weight_shape (tuple): ``(C_out, C_in, kH, kW)``.
        out_shape (tuple): ``(N, C_out, OH, OW)``.
        stride (tuple): ``(sH, sW)``.
        padding (tuple): ``(pH, pW)``.
        chunk (int): samples per chunk of the matrix.
        dtype (np.dtype): dtype of the input, output and gradients.
    """

    cols: Optional[np.ndarray]
    x_nhwc: Optional[np.ndarray]
    weight_rows: np.ndarray
    has_bias: bool
    x_shape: Tuple[int, int, int, int]
    weight_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, int, int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    chunk: int
    dtype: np.dtype

    method = "im2col"


def _samples_per_chunk(n, bytes_per_sample):
    """Samples per im2col chunk: ``CHUNK_BYTES`` worth, at least 1, at most ``n``."""
    return max(1, min(n, CHUNK_BYTES // max(1, bytes_per_sample)))


def matrix_shape(x_shape, kernel_size, out_size, dtype=np.float32):
    """Shape ``(S*OH*OW, kH*kW*C_in)`` of im2col's matrix for ``S`` samples at a time.

    ``S`` is the number of samples per chunk (about ``CHUNK_BYTES`` of matrix in ``dtype``; the
    whole batch ``N`` when it is small): the size a ``workspace`` for
    :func:`minidl.functional.conv.conv2d_forward` must have.

    Args:
        x_shape (tuple): ``(N, C_in, H, W)``. kernel_size, out_size (pairs): ``(kH, kW)`` and
            ``(OH, OW)``. dtype: the input's dtype.
    """
    taps = kernel_size[0] * kernel_size[1] * x_shape[1]
    per_sample = out_size[0] * out_size[1]
    chunk = _samples_per_chunk(x_shape[0], per_sample * taps * np.dtype(dtype).itemsize)
    return chunk * per_sample, taps


def _column_matrix(layer, workspace, shape, dtype):
    """A C-contiguous ``shape`` array for im2col: the front of ``workspace``, or a new one."""
    size = shape[0] * shape[1]
    if workspace is None:
        return _memory.empty(shape, dtype)
    ok = (
        isinstance(workspace, np.ndarray) and workspace.ndim == 1 and workspace.dtype == dtype
        and workspace.flags.c_contiguous and workspace.flags.writeable and workspace.size >= size
    )
    if not ok:
        got = (f"{workspace.dtype} array of shape {workspace.shape}"
               if isinstance(workspace, np.ndarray) else type(workspace).__name__)
        raise ValueError(
            f"{layer}: expected workspace to be a writable contiguous 1-D {dtype} array of at "
            f"least {size} elements, got {got}"
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


def forward(x, weight, bias, stride, padding, out, workspace=None, layer="conv2d"):
    """Write the convolution of ``x`` into ``out``; return the :class:`Im2colCache`.

    Args:
        x: ``(N, C_in, H, W)`` float32/float64, any strides. weight: ``(C_out, C_in, kH, kW)``,
        x's dtype. bias: ``(C_out,)`` or None. stride, padding: pairs. out: C-contiguous
        ``(N, C_out, OH, OW)``. workspace: None, or a 1-D array of at least
        ``prod(matrix_shape(...))`` elements of x's dtype that holds the matrix.
        layer: name used in error messages.
    Raises:
        ValueError: an unusable ``workspace``.
    """
    n = x.shape[0]
    out_channels, _, kernel_h, kernel_w = weight.shape
    rows, taps = matrix_shape(x.shape, (kernel_h, kernel_w), out.shape[2:], x.dtype)
    cols = _column_matrix(layer, workspace, (rows, taps), x.dtype)
    per_sample = out.shape[2] * out.shape[3]
    chunk = rows // per_sample
    threads = _config.threads_for(n * per_sample * taps)
    x_nhwc = _to_nhwc(np.ascontiguousarray(x), threads)
    weight_rows = np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(out_channels, -1)
    out_rows = _memory.empty((n * per_sample, out_channels), x.dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        part = cols[:(stop - start) * per_sample]
        _kernel.im2col(x_nhwc[start:stop], part, kernel_h, kernel_w, *stride, *padding, threads)
        _blas.matmul(part, weight_rows.T, out=out_rows[start * per_sample:stop * per_sample],
                     layer=layer)

    has_bias = bias is not None
    bias_vector = np.ascontiguousarray(bias) if has_bias else _no_bias(x.dtype)
    _kernel.transpose_batched(out_rows.reshape(n, per_sample, out_channels), bias_vector,
                              has_bias, out.reshape(n, out_channels, per_sample), threads)
    whole = chunk >= n
    return Im2colCache(cols if whole else None, None if whole else x_nhwc, weight_rows, has_bias,
                       x.shape, weight.shape, out.shape, tuple(stride), tuple(padding), chunk,
                       x.dtype)


def backward(dout, cache, input_grad):
    """``(dx, dweight, dbias)`` of :func:`forward`; ``dx`` is None unless ``input_grad``,
    ``dbias`` None without bias."""
    n, out_channels, out_h, out_w = cache.out_shape
    _, in_channels, kernel_h, kernel_w = cache.weight_shape
    per_sample = out_h * out_w
    taps = cache.weight_rows.shape[1]
    chunk = cache.chunk
    threads = _config.threads_for(n * per_sample * taps)

    dout = np.ascontiguousarray(dout).reshape(n, out_channels, -1)
    drows = _memory.empty((out_channels, n * per_sample), cache.dtype)
    bias_grad = np.empty(out_channels, dtype=np.float64)
    _kernel.nchw_to_rows(dout, drows, bias_grad, cache.has_bias, threads)
    dbias = bias_grad.astype(cache.dtype) if cache.has_bias else None

    geometry = (kernel_h, kernel_w, *cache.stride, *cache.padding)
    if cache.cols is None:  # several chunks: each is unrolled again into a scratch matrix
        cols = _memory.empty((chunk * per_sample, taps), cache.dtype)
    if input_grad:
        dx_nhwc = _memory.empty((n,) + cache.x_shape[2:] + (in_channels,), cache.dtype)
        dcols = _memory.empty((chunk * per_sample, taps), cache.dtype)
    dweight_rows = _memory.empty((out_channels, taps), cache.dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = slice(start * per_sample, stop * per_sample)
        size = (stop - start) * per_sample
        if cache.cols is None:
            part = cols[:size]
            _kernel.im2col(cache.x_nhwc[start:stop], part, *geometry, threads)
        else:
            part = cache.cols
        _blas.matmul(drows[:, rows], part, out=dweight_rows, accumulate=start > 0)
        if input_grad:
            _blas.matmul(drows[:, rows].T, cache.weight_rows, out=dcols[:size])
            _kernel.col2im(dcols[:size], dx_nhwc[start:stop], *geometry, threads)
    dweight_rows = dweight_rows.reshape(out_channels, kernel_h, kernel_w, in_channels)
    dweight = np.ascontiguousarray(dweight_rows.transpose(0, 3, 1, 2))
    if not input_grad:
        return None, dweight, dbias
    return _to_nchw(dx_nhwc, threads), dweight, dbias
