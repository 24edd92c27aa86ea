"""Convolution as im2col + matrix products (any kernel size, stride and padding).

Chellapilla, Puri and Simard, 2006, "High Performance Convolutional Neural Networks for Document
Processing": every receptive field of the input is one row of a matrix, and the convolution
becomes a matrix product. With ``M = N*OH*OW`` output positions, ``K = kH*kW*C_in`` taps and
``weight_rows = weight.transpose(0, 2, 3, 1).reshape(C_out, K)``::

    forward    x_pad (N, Hp, Wp, C_in)  = x in NHWC order, zero-padded        Cython, parallel
               out_rows (M, C_out)      = cols @ weight_rows.T                GEMM, parallel
               out (N, C_out, OH, OW)   = out_rows in NCHW order + bias       Cython, parallel
    backward   drows (C_out, M)         = dout reordered; dbias = sums        Cython, parallel
               dweight_rows.T           = cols.T @ drows.T                    GEMM, parallel
               per chunk of S samples:
                 dcols  (S*OH*OW, K)    = drows[:, chunk].T @ weight_rows     GEMM, parallel
                 dx_nhwc[chunk]         = col2im(dcols)                       Cython, parallel
               dx                       = dx_nhwc in NCHW order               Cython, parallel
               (stride 1, few output channels: dx = the forward above applied to dout with
               the flipped kernel, see _input_grad_by_convolution)

``cols[(n*OH + oh)*OW + ow, (i*kW + j)*C_in + c] = x_pad[n, oh*sH + i, ow*sW + j, c]``: one row
per output position with NHWC taps. The products never build ``cols``: it is a
:class:`minidl._blas.Gathered` operand, ``cols[m, k] = x_pad.flat[rows[m] + taps[k]]`` (the
offsets of :func:`gather_offsets`), which the GEMM reads straight from ``x_pad`` with the
arithmetic it would apply to the matrix (so the bits are the same): as A, unpacked, in the
forward, and as ``cols.T`` (the same offsets with their roles swapped) in the weight gradient.
That saves writing and reading the matrix, ``kH*kW`` times the input, and its memory. The
products are :func:`minidl._blas.matmul` on minidl's OpenMP team.

Only ``dcols`` (the input gradient's ``(S*OH*OW, K)`` matrix, folded back by col2im) is
materialized, ``S`` samples at a time: about ``CHUNK_BYTES`` of it, so it stays in the CPU
cache between its product and col2im. A caller may also pass a ``workspace``: the matrix is
then built in it by the im2col kernel, a chunk of samples at a time (the way this module
worked before the gathered products), and kept in the cache when the whole batch fits in one
chunk. Products of at most ``minidl._kernels._gemm.DOT_ROWS`` rows (a weight gradient with
that few output channels) are also computed chunk by chunk on the matrix. Every array
allocated here comes from :mod:`minidl._memory`; the backward pass writes only into arrays of
its own, so a cache serves any number of backward calls.

Called by :func:`minidl.functional.conv.conv2d_forward` / ``conv2d_backward``, which validate
the arguments and choose the method; these functions trust them (except ``workspace``, checked
here).
"""
import functools
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .. import _blas, _config, _memory
from .._kernels import _conv as _kernel
from .._kernels import _gemm

__all__ = ["Im2colCache", "forward", "backward", "matrix_shape", "gather_offsets",
           "CHUNK_BYTES"]

# A materialized matrix (dcols; im2col's in a workspace) covers this many bytes of samples at a
# time (at least one sample).
CHUNK_BYTES = 4 << 20
# The input gradient of a stride-1 layer with at most this many output channels and at least
# this many input channels is a convolution (see _input_grad_as_convolution).
CONV_INPUT_GRAD_MAX_OUT_CHANNELS = 32
CONV_INPUT_GRAD_MIN_IN_CHANNELS = 16


class Im2colCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward` (immutable; serves any number of
    backward calls).

    Attributes:
        cols (np.ndarray or None): im2col's matrix of the whole batch, ``(N*OH*OW, kH*kW*C_in)``,
            when the forward built it (in a caller's workspace) in one chunk; None otherwise.
        x_pad (np.ndarray): the input in NHWC order with its zero padding,
            ``(N, H + 2*pH, W + 2*pW, C_in)``: what the gathered products read.
        weight_rows (np.ndarray): the weight as ``(C_out, kH*kW*C_in)``, taps ordered (i, j, c).
        has_bias (bool): whether the forward added a bias.
        x_shape (tuple): ``(N, C_in, H, W)``.
        weight_shape (tuple): ``(C_out, C_in, kH, kW)``.
        out_shape (tuple): ``(N, C_out, OH, OW)``.
        stride (tuple): ``(sH, sW)``.
        padding (tuple): ``(pH, pW)``.
        chunk (int): samples per chunk of a materialized matrix.
        dtype (np.dtype): dtype of the input, output and gradients.
    """

    cols: Optional[np.ndarray]
    x_pad: np.ndarray
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


def _padded_nhwc(x, padding, threads):
    """C-contiguous ``(N, C, H, W)`` -> C-contiguous ``(N, H + 2*pH, W + 2*pW, C)``, zeros
    around."""
    n, c, h, w = x.shape
    x_pad = _memory.empty((n, h + 2 * padding[0], w + 2 * padding[1], c), x.dtype)
    _kernel.pad_nhwc(x, x_pad, *padding, threads)
    return x_pad


# cached for a network's im2col layers at a few batch sizes (8 bytes per output position each)
@functools.lru_cache(maxsize=16)
def gather_offsets(pad_shape, kernel_size, stride, out_size):
    """``(rows, taps)``: the offsets in a C-contiguous padded NHWC image ``pad_shape = (N, Hp,
    Wp, C)`` of each output position's receptive field, ``rows[(n*OH + oh)*OW + ow] = ((n*Hp +
    oh*sH)*Wp + ow*sW)*C``, and of each tap within it, ``taps[(i*kW + j)*C + c] = (i*Wp +
    j)*C + c``: ``cols[m, k] = x_pad.flat[rows[m] + taps[k]]`` is im2col's matrix. Read-only
    ``np.intp`` arrays, cached by geometry."""
    n, hp, wp, c = pad_shape
    (kernel_h, kernel_w), (stride_h, stride_w), (out_h, out_w) = kernel_size, stride, out_size
    rows = ((np.arange(n)[:, None, None] * hp + np.arange(out_h)[None, :, None] * stride_h) * wp
            + np.arange(out_w)[None, None, :] * stride_w) * c
    taps = ((np.arange(kernel_h)[:, None, None] * wp + np.arange(kernel_w)[None, :, None]) * c
            + np.arange(c)[None, None, :])
    rows, taps = (np.ascontiguousarray(a.reshape(-1), dtype=np.intp) for a in (rows, taps))
    rows.flags.writeable = taps.flags.writeable = False
    return rows, taps


def _chunks(n, chunk, per_sample):
    """``(samples, rows)`` slices of each chunk of ``chunk`` samples out of ``n``: the samples,
    and their ``per_sample`` rows of a matrix with one row per output position."""
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        yield slice(start, stop), slice(start * per_sample, stop * per_sample)


def _matrix_chunks(x_pad, matrix, kernel_size, stride, per_sample, chunk, threads):
    """im2col's matrix a chunk of samples at a time, built by the im2col kernel in the front
    of ``matrix``: yields ``(rows, part)``, the chunk's rows of the whole matrix and ``part``
    holding them (valid until the next chunk)."""
    for samples, rows in _chunks(x_pad.shape[0], chunk, per_sample):
        part = matrix[:rows.stop - rows.start]
        _kernel.im2col(x_pad[samples], part, *kernel_size, *stride, 0, 0, threads)
        yield rows, part


def _gathered(x_pad, kernel_size, stride, out_size):
    """im2col's matrix of a padded NHWC image as a :class:`minidl._blas.Gathered` operand."""
    rows, taps = gather_offsets(x_pad.shape, tuple(kernel_size), tuple(stride), tuple(out_size))
    return _blas.Gathered(x_pad, rows, taps)


def _swap_last_axes(src):
    """C-contiguous ``(B, A, C)`` -> a new C-contiguous ``(B, C, A)``, by the blocked transpose
    kernel: the weight's layout changes below. NumPy's strided copy of
    ``dweight_taps.reshape(kH, kW, C_in, C_out).transpose(3, 2, 0, 1)`` reads its innermost
    output axis ``C_in*C_out`` elements apart: 7.1 ms for a 7x7 layer of 128 -> 256 channels,
    more than the layer's weight-gradient product (4.7 ms at 2 threads)."""
    b, a, c = src.shape
    dst = _memory.empty((b, c, a), src.dtype)
    _kernel.transpose_batched(src, _no_bias(src.dtype), False, dst,
                              _config.threads_for(src.size))
    return dst


def _weight_rows(weight):
    """``(C_out, C_in, kH, kW)`` -> ``(C_out, kH*kW*C_in)``, taps ordered (i, j, c)."""
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    planes = np.ascontiguousarray(weight).reshape(out_channels, in_channels, kernel_h * kernel_w)
    return _swap_last_axes(planes).reshape(out_channels, -1)


def _weight_from_rows(rows, weight_shape):
    """The inverse of :func:`_weight_rows`: ``(C_out, kH*kW*C_in)`` -> ``(C_out, C_in, kH,
    kW)``."""
    out_channels, in_channels, kernel_h, kernel_w = weight_shape
    taps = rows.reshape(out_channels, kernel_h * kernel_w, in_channels)
    return _swap_last_axes(taps).reshape(weight_shape)


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
        ``(N, C_out, OH, OW)``. workspace: None (the product reads the matrix from the padded
        input), or a 1-D array of at least ``prod(matrix_shape(...))`` elements of x's dtype in
        which the im2col kernel builds the matrix, a chunk of samples at a time.
        layer: name used in error messages.
    Raises:
        ValueError: an unusable ``workspace``.
    """
    n = x.shape[0]
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_size = out.shape[2:]
    per_sample = out_size[0] * out_size[1]
    taps = kernel_h * kernel_w * x.shape[1]
    threads = _config.threads_for(n * per_sample * taps)
    x_pad = _padded_nhwc(np.ascontiguousarray(x), padding, threads)
    weight_rows = _weight_rows(weight)
    out_rows = _memory.empty((n * per_sample, out_channels), x.dtype)
    cols, chunk = None, n
    if workspace is None:
        _blas.matmul(_gathered(x_pad, (kernel_h, kernel_w), stride, out_size), weight_rows.T,
                     out=out_rows, layer=layer)
    else:  # the matrix itself, built in the caller's workspace a chunk at a time
        rows, _ = matrix_shape(x.shape, (kernel_h, kernel_w), out_size, x.dtype)
        matrix = _column_matrix(layer, workspace, (rows, taps), x.dtype)
        chunk = rows // per_sample
        for rows, part in _matrix_chunks(x_pad, matrix, (kernel_h, kernel_w), stride,
                                         per_sample, chunk, threads):
            _blas.matmul(part, weight_rows.T, out=out_rows[rows], layer=layer)
        cols = matrix if chunk >= n else None

    has_bias = bias is not None
    bias_vector = np.ascontiguousarray(bias) if has_bias else _no_bias(x.dtype)
    _kernel.transpose_batched(out_rows.reshape(n, per_sample, out_channels), bias_vector,
                              has_bias, out.reshape(n, out_channels, per_sample), threads)
    return Im2colCache(cols, x_pad, weight_rows, has_bias, x.shape, weight.shape, out.shape,
                       tuple(stride), tuple(padding), chunk, x.dtype)


def _input_grad_as_convolution(cache):
    """Whether :func:`backward` computes ``dx`` as a convolution (see
    :func:`_input_grad_by_convolution`) instead of ``dcols`` + col2im.

    ``dcols = drows.T @ weight_rows`` is a product of inner dimension ``C_out`` that writes
    (and col2im reads back) ``kH*kW*C_in`` values per output position: with few output
    channels it runs at memory speed, not at the GEMM's. The convolution writes ``dx`` once,
    but multiplies the zeros its padding adds around ``dout`` and has ``C_in`` columns, so it
    pays with few output channels, enough input channels (a full vector of columns) and a
    kernel larger than the padding it had. Measured, layer forward + backward, 2 runs of 9
    against dcols + col2im: (64, 16, 32, 32) -> 16 with 6x6 pad 0, 21.4-22.2 -> 16.3-20.0 ms at
    2 threads and 37.7-41.4 -> 31.7-33.6 ms at 1; with 5x5 pad 2, 19.8-23.3 -> 15.2-15.8 and
    33.8-38.2 -> 28.8-30.1 ms; (8, 32, 16, 16) -> 32, 5x5 pad 2, 1.9-2.4 -> 1.8 ms. With 64
    output channels or more it gained nothing (e.g. (32, 64, 8, 8) -> 64, 5x5 pad 2: 7.4 and
    7.6 ms), nor with few input channels (LeNet's 6 -> 16: 3x slower)."""
    out_channels, in_channels, kernel_h, kernel_w = cache.weight_shape
    return (cache.stride == (1, 1) and out_channels <= CONV_INPUT_GRAD_MAX_OUT_CHANNELS
            and in_channels >= CONV_INPUT_GRAD_MIN_IN_CHANNELS and kernel_h * kernel_w > 1
            and cache.padding[0] < kernel_h and cache.padding[1] < kernel_w)


def _input_grad_by_convolution(dout, cache):
    """``dx`` of a stride-1 layer as the convolution of ``dout``, zero-padded by
    ``kernel - 1 - padding``, with the flipped kernel whose input and output channels are
    swapped (Dumoulin & Visin 2016, "A guide to convolution arithmetic", relationship 4):
    ``dx[n, c, h, w] = sum_{o, i, j} dout_pad[n, o, h + i, w + j] * weight[o, c, kH-1-i,
    kW-1-j]``, computed by :func:`forward` (gathered GEMM, no matrix written)."""
    out_channels, in_channels, kernel_h, kernel_w = cache.weight_shape
    weight = _weight_from_rows(cache.weight_rows, cache.weight_shape)
    flipped = _memory.empty((in_channels, out_channels, kernel_h, kernel_w), cache.dtype)
    np.copyto(flipped, weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    padding = (kernel_h - 1 - cache.padding[0], kernel_w - 1 - cache.padding[1])
    dx = _memory.empty(cache.x_shape, cache.dtype)
    forward(dout.reshape(cache.out_shape), flipped, None, (1, 1), padding, dx)
    return dx


def backward(dout, cache, input_grad):
    """``(dx, dweight, dbias)`` of :func:`forward`; ``dx`` is None unless ``input_grad``,
    ``dbias`` None without bias."""
    n, out_channels, out_h, out_w = cache.out_shape
    _, in_channels, kernel_h, kernel_w = cache.weight_shape
    per_sample = out_h * out_w
    taps = cache.weight_rows.shape[1]
    threads = _config.threads_for(n * per_sample * taps)

    dout = np.ascontiguousarray(dout).reshape(n, out_channels, -1)
    drows = _memory.empty((out_channels, n * per_sample), cache.dtype)
    bias_grad = np.empty(out_channels, dtype=np.float64)
    _kernel.nchw_to_rows(dout, drows, bias_grad, cache.has_bias, threads)
    dbias = bias_grad.astype(cache.dtype) if cache.has_bias else None

    rows, _ = matrix_shape(cache.x_shape, (kernel_h, kernel_w), (out_h, out_w), cache.dtype)
    chunk = rows // per_sample  # samples per materialized matrix (dcols, or cols below)
    if cache.cols is None and min(out_channels, taps) > _gemm.DOT_ROWS:
        # dweight_rows.T = cols.T @ drows.T, with cols.T gathered (the roles of the offsets
        # swapped: one row per tap), which the GEMM reads in place instead of packing cols as
        # B: the same sums in the same order, so the same bits, and 5-14% faster (1 thread,
        # 64-channel layers)
        positions, tap_offsets = gather_offsets(cache.x_pad.shape, (kernel_h, kernel_w),
                                                cache.stride, (out_h, out_w))
        dweight_taps = _blas.matmul(_blas.Gathered(cache.x_pad, tap_offsets, positions),
                                    drows.T)
        dweight_rows = _swap_last_axes(dweight_taps[None])[0]
    else:
        dweight_rows = _memory.empty((out_channels, taps), cache.dtype)
        if cache.cols is not None:  # the forward's matrix, whole
            _blas.matmul(drows, cache.cols, out=dweight_rows)
        elif out_channels > _gemm.DOT_ROWS:  # few taps: cols gathered as B, packed from x_pad
            _blas.matmul(drows, _gathered(cache.x_pad, (kernel_h, kernel_w), cache.stride,
                                          (out_h, out_w)), out=dweight_rows)
        else:  # a product of few rows reads its matrix B in place, so build it, by chunks
            cols = _memory.empty((chunk * per_sample, taps), cache.dtype)
            for rows, part in _matrix_chunks(cache.x_pad, cols, (kernel_h, kernel_w),
                                             cache.stride, per_sample, chunk, threads):
                _blas.matmul(drows[:, rows], part, out=dweight_rows,
                             accumulate=rows.start > 0)
    dweight = _weight_from_rows(dweight_rows, cache.weight_shape)
    if not input_grad:
        return None, dweight, dbias

    if _input_grad_as_convolution(cache):
        return _input_grad_by_convolution(dout, cache), dweight, dbias
    geometry = (kernel_h, kernel_w, *cache.stride, *cache.padding)
    dx_nhwc = _memory.empty((n,) + cache.x_shape[2:] + (in_channels,), cache.dtype)
    dcols = _memory.empty((chunk * per_sample, taps), cache.dtype)
    for samples, rows in _chunks(n, chunk, per_sample):
        part = dcols[:rows.stop - rows.start]
        _blas.matmul(drows[:, rows].T, cache.weight_rows, out=part)
        _kernel.col2im(part, dx_nhwc[samples], *geometry, threads)
    return _to_nchw(dx_nhwc, threads), dweight, dbias
