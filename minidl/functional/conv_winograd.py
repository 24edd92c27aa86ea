"""3x3 and 5x5 stride-1 convolutions by Winograd's F(2x2, 3x3) and F(2x2, 5x5): the driver
around the kernels.

Lavin & Gray, 2016, "Fast Algorithms for Convolutional Neural Networks". The math, the tile
layout and a NumPy version of every step are in :mod:`minidl.reference.winograd`; the fused
kernels (tile transforms and the 16 (36) in-cache products per block of tiles) are in
``minidl/_kernels/_winograd.pyx``. Against im2col + GEMM (``9*C*K`` multiply-adds per output
position) this does ``4*C*K`` per position (16 per 2x2 tile), needs no ``cols`` matrix and no
NCHW <-> NHWC copies of whole tensors, and keeps its intermediate matrices in the cache.

A 5x5 kernel takes F(2x2, 5x5): 6x6 tiles, 36 products per block, ``9*C*K`` multiply-adds per
output position against im2col's ``25*C*K`` (the kernels ``forward`` and ``weight_grad``).
Its input gradient is the convolution of ``dout`` with the flipped kernel (``dx[c] = sum over k
of dout[k] * g[k, c]`` rotated by 180 degrees, padding ``4 - p``), by ``forward`` too; so the
padding must be at most 4 (the kernel size minus one).

A 3x3 layer's fused backward kernel (``backward``) works image by image: each image reads all
of ``U`` and adds into all of ``dU``, ``16*C*K`` numbers each, which on small maps with many
channels costs more than the image's products. A 3x3 layer with fewer than
``ACROSS_MAX_TILES`` output tiles per image, or more than ``ACROSS_MIN_U_BYTES`` of ``U``, or a
batch too small to split among threads (``ACROSS_MIN_CHUNKS``), and a padding of at most 2,
therefore takes the 5x5 route: ``weight_grad`` with 16 planes, whose blocks span images
(split by planes too when the batch has fewer chunks than threads), and the input gradient as
a forward of ``dout`` with the flipped kernel (padding ``2 - p``), whose transformed weight is
the forward's with its planes permuted and transposed (:func:`flipped_transform`). A 5x5
layer's is transformed from the weight (``weight_transform(..., flip=True)``), of which the
cache keeps a copy.

Called by :func:`minidl.functional.conv.conv2d_forward` / ``conv2d_backward``, which validate
the arguments and choose the method; these functions trust them. Every array they allocate comes
from :mod:`minidl._memory`.
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .. import _config, _memory
from .._kernels import _winograd as _kernel
from ..reference.winograd import tiles

__all__ = ["WinogradCache", "forward", "backward", "BLOCK_BYTES"]

# A block of tiles (whole rows of tiles: of one image in the 3x3 backward, running on across
# images elsewhere) has about this many bytes of V and M (or Z): with the transformed weight
# they stay in a core's L2 cache.
BLOCK_BYTES = 384 << 10
# The blocks that run on across images hold at least this many tiles (_block_rows_across)
BLOCK_MIN_TILES = 128
# The cost of transforming one 3x3 filter, in elements of an elementwise kernel (for
# _config.threads_for): 10 ns against about 0.2 ns per element of ReLU on this machine.
FILTER_COST = 48
# the kernels' products work on rows in steps of 4 and columns in steps of 16
ROW_STEP, COL_STEP = _kernel.PRODUCT_STEPS
# The backward pass sums the weight and bias gradients per chunk of consecutive images, each
# chunk on one thread, and then adds the chunks in order: the same sums whatever the number of
# threads. A chunk holds about CHUNK_TILES tiles or more, so that adding its partial gradient
# (one pass over 16*C4*KP numbers, in _kernel.sum_chunks) costs about 1-2% of computing it (4
# flops per tile and number, for dU and dV); the number of chunks is one of CHUNK_COUNTS, which
# split evenly among 2, 3, 4, 6, 8, 12, 16 or 24 threads (the batch is split as evenly as
# possible among the chunks), so no thread count loses more than a chunk's share of balance.
CHUNK_TILES = 128
CHUNK_COUNTS = (1, 2, 4, 6, 12, 24, 48)
# 3x3 layers with fewer 2x2 output tiles per image than ACROSS_MAX_TILES, or whose transformed
# weight has more than ACROSS_MIN_U_BYTES (a core's L2 cache here), take the backward pass whose
# blocks span images (see the module docstring). Measured, layer forward + backward at 2
# threads, ms, per-image kernel / blocks across images / PyTorch: (16, 256, 4, 4) -> 256 7.52 /
# 6.30 / 3.94; (16, 512, 7, 7) -> 512 146.9 / 62.6 / 50.3; (4, 512, 16, 16) -> 512 97.7 / 60.6 /
# 66.1; (8, 512, 14, 14) -> 512 143.1 / 84.5 / 99.7; (8, 256, 16, 16) -> 256 22.0 / 21.5 / 32.0;
# but (128, 32, 32, 32) -> 32 24.1 / 25.5 and ResNet-20's (128, 16, 32, 32) -> 16 7.8 / 8.2.
ACROSS_MAX_TILES = 16
ACROSS_MIN_U_BYTES = 2 << 20
# So do 3x3 layers whose batch is summed in fewer chunks than this (gradient_chunks: one image,
# or fewer than 2*CHUNK_TILES tiles): the per-image kernel runs a chunk on one thread, where
# the blocks across images split the products by planes. Measured, backward pass, ms, per-image
# kernel / blocks across images, 1 thread and 2 threads: (2, 512, 14, 14) -> 64 pad 0 3.61 /
# 3.42 and 3.31 / 1.84; (1, 64, 56, 56) -> 64 pad 1 2.38 / 2.70 and 2.46 / 1.57; (1, 128, 28,
# 28) -> 128 3.08 / 2.90 and 2.65 / 1.55; (1, 32, 32, 32) -> 32 0.27 / 0.32 and 0.28 / 0.20; (3,
# 64, 16, 16) -> 64 pad 0 0.56 / 0.62 and 0.54 / 0.36. (The choice depends on the batch alone,
# never on the thread count, so the results do not either.)
ACROSS_MIN_CHUNKS = 2


class WinogradCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward` (immutable; serves any number of
    backward calls).

    Attributes:
        x (np.ndarray): the C-contiguous input ``(N, C, H, W)``.
        u (np.ndarray): the transformed weight ``(16, C, K)`` (a view; see
            :func:`weight_transform`).
        has_bias (bool): whether the forward added a bias.
        x_shape (tuple): ``(N, C, H, W)``.
        out_shape (tuple): ``(N, K, OH, OW)``.
        padding (tuple): ``(pH, pW)``.
        block_rows (int): rows of tiles per block.
        dtype (np.dtype): dtype of the input, output and gradients.
        kernel (int): 3 (F(2x2, 3x3)) or 5 (F(2x2, 5x5)).
        weight (np.ndarray or None): a copy of the weight ``(K, C, 5, 5)`` for the input
            gradient of a 5x5 layer; None for 3x3.
        spans (bool): whether the backward pass's blocks span images (every 5x5 layer, 3x3
            layers on small maps or with many channels: :func:`_spans_images`).
    """

    x: np.ndarray
    u: np.ndarray
    has_bias: bool
    x_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, int, int, int]
    padding: Tuple[int, int]
    block_rows: int
    dtype: np.dtype
    kernel: int = 3
    weight: Optional[np.ndarray] = None
    spans: bool = False

    method = "winograd"


def _ceil_div(value, step):
    return -(-value // step)


def _round_up(value, step):
    return _ceil_div(value, step) * step


def _padded_columns(matrices, columns):
    """``(16, R, c)`` -> C-contiguous ``(16, R, columns)`` with zeros in the extra columns."""
    out = _memory.zeros(matrices.shape[:2] + (columns,), matrices.dtype)
    out[:, :, :matrices.shape[2]] = matrices
    return out


def weight_transform(weight, columns, flip=False):
    """``U`` ``(16, C, columns)`` (``(36, C, columns)`` for a 5x5 weight) in the weight's dtype,
    zeros beyond ``K``: the transform of
    :func:`minidl.reference.winograd.weight_transform` (``G g G^T`` per filter, in float64),
    by the kernel ``_winograd.weight_transform`` into memory from :mod:`minidl._memory`. With
    ``flip``, that of the input gradient's kernel, ``weight.transpose(1, 0, 2, 3)`` rotated by
    180 degrees in its last two axes (``(16, K, columns)``, zeros beyond ``C``), read from
    ``weight`` itself.

    The NumPy version (a float64 copy, one product with ``G kron G``, a padded copy) took 61
    microseconds for a 64x32 weight, a tenth of an eval-mode forward of the MNIST CNN at batch
    1; the kernel does it in one pass, 22 microseconds on one thread.
    """
    k, c = weight.shape[:2]
    u = _memory.empty(((weight.shape[2] + 1) ** 2, k if flip else c, columns), weight.dtype)
    # a filter's transform (about 100 floating-point operations) costs as much as an
    # elementwise pass over FILTER_COST values
    threads = _config.threads_for(FILTER_COST * k * c)
    _kernel.weight_transform(np.ascontiguousarray(weight), u, threads, flip)
    return u


def flipped_transform(u, columns):
    """The transformed weight of a 3x3 layer's input-gradient kernel (the filters rotated by
    180 degrees, channels swapped), ``(16, K, columns)`` with zeros beyond ``C``, from the
    forward's ``u`` ``(16, C, K)`` (rows contiguous): what ``weight_transform(weight, columns,
    flip=True)`` computes from the weight, by permuting and transposing planes
    (``_winograd.flip_transform``)."""
    k = u.shape[2]
    if u.strides[2] != u.itemsize:  # (a cache's u is a view of the forward's, rows contiguous)
        u = np.ascontiguousarray(u)
    u_flip = _memory.empty((16, k, columns), u.dtype)
    _kernel.flip_transform(u, u_flip, _config.threads_for(u_flip.size))
    return u_flip


def weight_grad_transform(du, dtype):
    """``dweight`` ``(K, C, r, r)`` in ``dtype`` from the float64 ``du`` ``(16, C, K)`` (r = 3)
    or ``(36, C, K)`` (r = 5) (any strides): the transform of
    :func:`minidl.reference.winograd.weight_grad_transform` (``G^T dU G`` per filter, in
    float64), by the kernel ``_winograd.weight_grad_transform`` into memory from
    :mod:`minidl._memory`."""
    c, k = du.shape[1:]
    r = {16: 3, 36: 5}[du.shape[0]]
    dweight = _memory.empty((k, c, r, r), dtype)
    _kernel.weight_grad_transform(du, dweight, _config.threads_for(FILTER_COST * k * c))
    return dweight


def _block_rows(tiles_per_row, tile_rows, channels, out_channels, itemsize):
    """Rows of tiles per block of the 3x3 backward (blocks of one image): about
    ``BLOCK_BYTES`` of V and M, at least 1."""
    per_row = 16 * tiles_per_row * (_round_up(channels, COL_STEP)
                                    + _round_up(out_channels, COL_STEP)) * itemsize
    return max(1, min(tile_rows, BLOCK_BYTES // per_row))


def _block_rows_across(n, tile_rows, tiles_per_row, channels, out_channels, itemsize,
                       planes=36):
    """Rows of tiles per block of the kernels whose blocks run on across images (the forward,
    and F(2x2, 5x5)'s weight gradient): about ``BLOCK_BYTES`` of V and M, but at least
    ``BLOCK_MIN_TILES`` tiles (each block reads all of U, ``planes*C*K`` numbers, once), at
    most the batch."""
    per_row = planes * tiles_per_row * (_round_up(channels, COL_STEP)
                                        + _round_up(out_channels, COL_STEP)) * itemsize
    rows = max(BLOCK_BYTES // per_row, _ceil_div(BLOCK_MIN_TILES, tiles_per_row), 1)
    return min(rows, n * tile_rows)


def _spans_images(kernel, n, tiles_per_image, padding, u_bytes):
    """Whether the backward pass of a layer on ``n`` images runs in blocks that span images
    (:func:`_backward_across`): always for 5x5; for 3x3 below ``ACROSS_MAX_TILES`` tiles per
    image, above ``ACROSS_MIN_U_BYTES`` of transformed weight (``u_bytes``) or below
    ``ACROSS_MIN_CHUNKS`` chunks, when its padding (at most 2) allows the input gradient as a
    forward."""
    return kernel == 5 or (max(padding) <= 2 and (
        tiles_per_image < ACROSS_MAX_TILES or u_bytes > ACROSS_MIN_U_BYTES
        or gradient_chunks(n, tiles_per_image) < ACROSS_MIN_CHUNKS))


def _threads(n, work):
    """OpenMP threads for a call on ``n`` images (the kernels split the work by image)."""
    return max(1, min(n, _config.threads_for(work)))


def gradient_chunks(n, tiles_per_image):
    """How many chunks of images the backward pass sums the weight gradient in: a function of
    the batch alone (never of the thread count), the largest of ``CHUNK_COUNTS`` that gives
    chunks of at least ``CHUNK_TILES`` tiles, at most ``n``."""
    wanted = min(n, max(1, n * tiles_per_image // CHUNK_TILES))
    return max(c for c in CHUNK_COUNTS if c <= wanted)


def _forward(x, u, bias, padding, out):
    """``out = conv(x) (+ bias)`` by the kernel ``forward``, with ``u`` the transformed weight
    (16 or 36 planes: F(2x2, 3x3) or F(2x2, 5x5)), in blocks of rows of tiles that may span
    images."""
    n, channels = x.shape[:2]
    k, out_h, out_w = out.shape[1:]
    tile_rows, tiles_per_row = tiles(out_h, out_w)
    rows = _block_rows_across(n, tile_rows, tiles_per_row, channels, k, x.dtype.itemsize,
                              u.shape[0])
    threads = _config.threads_for(out.size * channels)
    # at least two blocks per thread when the batch has enough rows of tiles (the output does
    # not depend on the blocks)
    rows = max(1, min(rows, _ceil_div(n * tile_rows, 2 * threads)))
    threads = min(threads, _ceil_div(n * tile_rows, rows))
    size = _kernel.scratch_size(channels, k, out_h, out_w, rows, False,
                                3 if u.shape[0] == 16 else 5)
    scratch = _memory.empty((threads, size), x.dtype)
    bias_vector = np.ascontiguousarray(bias) if bias is not None else np.zeros(k, x.dtype)
    _kernel.forward(x, u, bias_vector, bias is not None, out, *padding, rows, scratch, threads)


def forward(x, weight, bias, padding, out):
    """Write the convolution of ``x`` into ``out``; return the :class:`WinogradCache`.

    Args:
        x: ``(N, C, H, W)`` float32/float64. weight: ``(K, C, 3, 3)`` or ``(K, C, 5, 5)``
        (then ``pH, pW <= 4``), x's dtype. bias: ``(K,)`` or None. padding: ``(pH, pW)``.
        out: C-contiguous ``(N, K, OH, OW)``.
    """
    x = np.ascontiguousarray(x)
    n, channels = x.shape[:2]
    k, out_h, out_w = out.shape[1:]
    r = weight.shape[2]
    u = weight_transform(weight, _round_up(k, COL_STEP))  # (16 or 36, C, K+)
    _forward(x, u, bias, padding, out)
    tile_rows, tiles_per_row = tiles(out_h, out_w)
    if _spans_images(r, n, tile_rows * tiles_per_row, padding, u.nbytes):
        block_rows = _block_rows_across(n, tile_rows, tiles_per_row, channels, k,
                                        x.dtype.itemsize, u.shape[0])
        weight_copy = np.array(weight, order="C") if r == 5 else None  # (5x5 dx, see flip)
        return WinogradCache(x, u[:, :, :k], bias is not None, x.shape, out.shape,
                             tuple(padding), block_rows, x.dtype, r, weight_copy, True)
    block_rows = _block_rows(tiles_per_row, tile_rows, channels, k, x.dtype.itemsize)
    return WinogradCache(x, u[:, :, :k], bias is not None, x.shape, out.shape, tuple(padding),
                         block_rows, x.dtype)


def _chunk_sums(du, dbias, channels, has_bias):
    """``(dweight, dbias)`` from the backward kernels' per-chunk sums: ``du`` ``(chunks,
    planes, C4, KP)`` added in chunk order in float64 (:func:`_kernel.sum_chunks`), cropped to
    ``(planes, C, K)`` and transformed back (:func:`weight_grad_transform`); ``dbias``
    ``(chunks, K)`` float64 summed (None without a bias). Both in ``du``'s dtype."""
    chunks, k = dbias.shape
    total = np.empty(du[0].size, np.float64)
    _kernel.sum_chunks(du.reshape(chunks, -1), total, _threads(total.size, du.size))
    dweight = weight_grad_transform(total.reshape(du.shape[1:])[:, :channels, :k], du.dtype)
    return dweight, (dbias.sum(axis=0).astype(du.dtype) if has_bias else None)


def _backward_across(dout, cache, input_grad):
    """:func:`backward` in blocks that span images (every 5x5 layer, and 3x3 layers on small
    maps or with many channels, :func:`_spans_images`): the weight and bias gradients by
    ``weight_grad``, the input gradient as the convolution of ``dout`` with the flipped
    kernel."""
    x, has_bias, dtype, r = cache.x, cache.has_bias, cache.x.dtype, cache.kernel
    n, channels, height, width = x.shape
    k, out_h, out_w = dout.shape[1:]
    tile_rows, tiles_per_row = tiles(out_h, out_w)
    chunks = gradient_chunks(n, tile_rows * tiles_per_row)
    planes = (r + 1) ** 2
    threads = _config.threads_for(dout.size * channels)
    # fewer chunks than threads: the chunks' products split by planes too (same sums)
    groups = min(planes, _ceil_div(threads, chunks))
    threads = min(threads, chunks * groups)
    du = _memory.empty((chunks, planes, _round_up(channels, ROW_STEP), _round_up(k, COL_STEP)),
                       dtype)
    dbias = np.empty((chunks, k), np.float64)
    size = _kernel.scratch_size(channels, k, out_h, out_w, cache.block_rows, False, r)
    scratch = _memory.empty((threads, size), dtype)
    _kernel.weight_grad(x, dout, du, dbias, has_bias, *cache.padding, cache.block_rows, chunks,
                        scratch, threads, groups)
    dweight, dbias = _chunk_sums(du, dbias, channels, has_bias)
    dx = None
    if input_grad:  # dx = dout convolved with g[k, c] rotated by 180 degrees, padding r-1-p
        dx = _memory.empty((n, channels, height, width), dtype)
        columns = _round_up(channels, COL_STEP)
        u = (flipped_transform(cache.u, columns) if r == 3
             else weight_transform(cache.weight, columns, flip=True))
        _forward(dout, u, None, tuple(r - 1 - p for p in cache.padding), dx)
    return dx, dweight, dbias


def backward(dout, cache, input_grad):
    """``(dx, dweight, dbias)`` of :func:`forward`; ``dx`` is None unless ``input_grad``,
    ``dbias`` None without bias."""
    if cache.spans:
        return _backward_across(np.ascontiguousarray(dout), cache, input_grad)
    x, has_bias = cache.x, cache.has_bias
    dtype = x.dtype
    dout = np.ascontiguousarray(dout)
    n, channels = x.shape[:2]
    k, out_h, out_w = dout.shape[1:]
    tile_rows, tiles_per_row = tiles(out_h, out_w)
    chunks = gradient_chunks(n, tile_rows * tiles_per_row)
    threads = _threads(chunks, dout.size * channels)
    ut = _padded_columns(cache.u.transpose(0, 2, 1), _round_up(channels, COL_STEP))
    # one row per chunk, overwritten by the kernel (no zeroing needed)
    du = _memory.empty((chunks, 16, _round_up(channels, ROW_STEP), _round_up(k, COL_STEP)),
                       dtype)
    dbias = np.empty((chunks, k), np.float64)
    dx = _memory.empty(x.shape, dtype) if input_grad else np.empty((1, 1, 1, 1), dtype)
    size = _kernel.scratch_size(channels, k, out_h, out_w, cache.block_rows, input_grad)
    scratch = _memory.empty((threads, size), dtype)
    _kernel.backward(x, dout, ut, du, dbias, has_bias, dx, input_grad, *cache.padding,
                     cache.block_rows, chunks, scratch, threads)
    dweight, dbias = _chunk_sums(du, dbias, channels, has_bias)
    return (dx if input_grad else None), dweight, dbias
