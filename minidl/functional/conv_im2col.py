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

Padded taps: an output near the border reads some taps from the zero padding, and the full
product multiplies those zeros (28% of the multiply-adds of a 5x5 layer with padding 2 on 8x8
maps). Where that is a large part of the work and the layer has at least
``SKIP_MIN_CHANNELS`` channels each way (:func:`_skip_padded_taps`), the forward product runs
as one product per border class (outputs with the same valid taps) and the weight gradient's
as one per kernel position, each over the valid taps only (:func:`border_plan`), all in one
parallel call (``_gemm.gemm_gathered_tasks``); the forward's classes read one packing of the
whole weight (``_gemm.gemm_gathered_tasks_packed``: a class may have a few rows only). A
stride-1 input gradient is then the forward of the flipped kernel, which skips them too; any
other computes ``dcols`` by class, leaving out the entries of padded taps that col2im drops
(:func:`_input_grad_tasks`). oneDNN's direct convolutions, which PyTorch runs, skip them the
same way.

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
           "BorderPlan", "border_plan", "padded_fraction", "CHUNK_BYTES", "dcols_shape"]

# A materialized matrix (dcols; im2col's in a workspace) covers this many bytes of samples at a
# time (at least one sample).
CHUNK_BYTES = 4 << 20
# The input gradient of a stride-1 layer with at most this many output channels and at least
# this many input channels is a convolution (see _input_grad_as_convolution).
CONV_INPUT_GRAD_MAX_OUT_CHANNELS = 32
CONV_INPUT_GRAD_MIN_IN_CHANNELS = 16
# ... when less than this fraction of that convolution's multiply-adds read the zeros it pads
# dout with (it does not skip them with so few channels; see _input_grad_as_convolution).
CONV_INPUT_GRAD_MAX_PADDED_FRACTION = 0.45
# ... and with more output channels, where it skips the padded taps and the weight has fewer
# than this many times the elements of dout (weight-heavy layers on small maps: dcols by class).
CONV_INPUT_GRAD_MAX_WEIGHT_RATIO = 8
# Padded taps are skipped (see border_plan) in the forward product when that saves at least
# SKIP_MIN_SAVING of its multiply-adds and both channel counts are at least
# SKIP_MIN_CHANNELS; in the weight gradient's when it saves at least SKIP_MIN_SAVING_WEIGHT_GRAD
# (its products by kernel position pack more; see _skip_padded_taps for the measurements).
SKIP_MIN_SAVING = 0.1
SKIP_MIN_SAVING_WEIGHT_GRAD = 0.25
SKIP_MIN_CHANNELS = 32
# ... and when its plan has at most this many (output position, kernel position) pairs: the
# plan keeps two offsets per pair (16 MiB each at this bound), cached per layer geometry.
SKIP_MAX_PAIRS = 1 << 21
# Rows of C per task of the products that skip padded taps (two of the GEMM's MC blocks).
SKIP_TILE_ROWS = 288


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


def dcols_shape(x_shape, kernel_size, out_size, dtype=np.float32):
    """Shape ``(S*OH*OW, kH*kW*C_in)`` of the backward pass's ``dcols`` for ``S`` samples at a
    time: like :func:`matrix_shape`, but ``S`` is a whole number of rounds of the threads when
    a chunk holds more than one per thread, and at least one sample per thread (above
    ``CHUNK_BYTES`` if need be) otherwise, so that col2im, which splits samples, uses them all
    ((2, 192, 14, 14) -> 24 7x7 with one sample of 2.4 MB at a time ran it on one thread: dx
    1.6 ms at 2 threads against 1.2 at 1)."""
    n = x_shape[0]
    rows, taps = matrix_shape(x_shape, kernel_size, out_size, dtype)
    per_sample = out_size[0] * out_size[1]
    threads = _config.threads_for(n * per_sample * taps)
    chunk = rows // per_sample
    chunk = chunk - chunk % threads if chunk > threads else min(n, threads)
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


def bias_grad(dout3, dtype):
    """A convolution's bias gradient: ``dout3`` ``(N, C_out, OH*OW)`` (C-contiguous, float32 or
    float64) summed per channel in float64 on the team (``_conv.channel_sums``), returned as a
    new ``(C_out,)`` array of ``dtype``. Also the pointwise method's."""
    sums = np.empty(dout3.shape[1], dtype=np.float64)
    _kernel.channel_sums(dout3, sums, _config.threads_for(dout3.size))
    return sums.astype(dtype)


def dout_rows(dout3, has_bias, dtype, threads):
    """``(drows, dbias)``: ``dout3`` ``(N, C_out, P)`` (C-contiguous) as ``(C_out, N*P)``, and
    its per-channel sums in float64 as a ``(C_out,)`` array of ``dtype`` (None unless
    ``has_bias``), in one pass (``_conv.nchw_to_rows``). Also the unfold method's."""
    n, out_channels, positions = dout3.shape
    drows = _memory.empty((out_channels, n * positions), dtype)
    sums = np.empty(out_channels, dtype=np.float64)
    _kernel.nchw_to_rows(dout3, drows, sums, has_bias, threads)
    return drows, (sums.astype(dtype) if has_bias else None)


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


def _valid_taps(size, kernel, stride, padding, out):
    """``(start, stop)`` of the taps of each output along one axis that read the input, not
    its zero padding: ``0 <= o*stride + t - padding < size`` (none, ``start == stop``, for an
    output that lies wholly in a padding wider than the kernel)."""
    taps = []
    for o in range(out):
        start = max(0, padding - o * stride)
        taps.append((start, max(start, min(kernel, size + padding - o * stride))))
    return taps


def _border_classes(size, kernel, stride, padding, out):
    """The outputs along one axis in runs with the same valid taps: ``[(o0, o1, t0, t1)]``
    (the few outputs near each border, and the interior)."""
    classes = []
    for o, taps in enumerate(_valid_taps(size, kernel, stride, padding, out)):
        if classes and classes[-1][2:] == taps:
            classes[-1] = (classes[-1][0], o + 1) + taps
        else:
            classes.append((o, o + 1) + taps)
    return classes


class BorderPlan(NamedTuple):
    """The products of an im2col layer without the taps in its zero padding (see
    :func:`border_plan`). Offsets are ``np.intp``, read-only; ``groups`` rows are ``(m0, m,
    k0, k)``."""

    rows: np.ndarray        # forward A's rows: receptive fields, by class
    taps: np.ndarray        # forward A's columns: each class's valid taps, one after another
    tap_index: np.ndarray   # the same taps as indices 0 .. K-1 (rows of the weight)
    groups: np.ndarray      # forward: class g is rows m0 .. m0+m-1 and taps k0 .. k0+k-1
    order: np.ndarray       # output position (n, oh, ow) of each row of the forward product
    tap_rows: np.ndarray    # weight gradient A's rows: all taps, (i, j, c) order
    fields: np.ndarray      # weight gradient A's columns: per kernel position (i, j), the
                            # receptive fields that read the input there, one after another
    field_index: np.ndarray  # the same fields as output positions (rows of dout)
    field_groups: np.ndarray  # per kernel position (i, j): (start, count) in fields
    saving: float           # fraction of the multiply-adds skipped


@functools.lru_cache(maxsize=8)
def border_plan(x_shape, kernel_size, stride, padding, out_size):
    """The border classes of a convolution: which taps of each output read its zero padding.

    Along each axis the outputs fall into runs with the same valid taps
    (:func:`_border_classes`); a class is a pair of runs, and all its receptive fields share
    one rectangle of valid taps. The forward product then splits by class: ``out[class] =
    cols[class, valid taps] @ weight_rows.T[valid taps]``, and the weight gradient by kernel
    position: ``dweight_taps[(i, j, :)] = cols[fields reading the input at (i, j), (i, j, :)].T
    @ drows.T[those fields]``. Neither multiplies the zeros of the padding, which the full
    product does (28% of the multiply-adds of a 5x5 layer with padding 2 on 8x8 maps).

    Args:
        x_shape: ``(N, C_in, H, W)``. kernel_size, stride, padding, out_size: pairs.
    Returns:
        BorderPlan: offsets into the padded NHWC input of :func:`forward`, cached by geometry.
    """
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_size, stride, padding, out_size
    hp, wp = h + 2 * ph, w + 2 * pw
    samples = np.arange(n)[:, None, None]

    def field_offsets(out_h, out_w):  # (n, oh, ow) receptive fields: offsets, positions
        offsets = ((samples * hp + out_h[None, :, None] * sh) * wp + out_w[None, None, :] * sw) * c
        positions = (samples * oh + out_h[None, :, None]) * ow + out_w[None, None, :]
        return offsets.reshape(-1), positions.reshape(-1)

    def tap_offsets(i, j):  # taps (i, j, c) of kernel rows i and columns j: offsets, indices
        i, j, ch = i[:, None, None], j[None, :, None], np.arange(c)[None, None, :]
        return ((i * wp + j) * c + ch).reshape(-1), ((i * kw + j) * c + ch).reshape(-1)

    rows, taps, tap_index, groups, order = [], [], [], [], []
    m0 = k0 = 0
    for o0, o1, i0, i1 in _border_classes(h, kh, sh, ph, oh):
        for q0, q1, j0, j1 in _border_classes(w, kw, sw, pw, ow):
            offsets, positions = field_offsets(np.arange(o0, o1), np.arange(q0, q1))
            class_taps, class_index = tap_offsets(np.arange(i0, i1), np.arange(j0, j1))
            rows.append(offsets)
            order.append(positions)
            taps.append(class_taps)
            tap_index.append(class_index)
            groups.append((m0, offsets.size, k0, class_taps.size))
            m0, k0 = m0 + offsets.size, k0 + class_taps.size

    valid_h, valid_w = (_valid_taps(*a) for a in ((h, kh, sh, ph, oh), (w, kw, sw, pw, ow)))
    fields, field_index, field_groups = [], [], []
    start = 0
    for i in range(kh):
        out_h = np.array([o for o, (t0, t1) in enumerate(valid_h) if t0 <= i < t1], np.intp)
        for j in range(kw):
            out_w = np.array([o for o, (t0, t1) in enumerate(valid_w) if t0 <= j < t1], np.intp)
            offsets, positions = field_offsets(out_h, out_w)
            fields.append(offsets)
            field_index.append(positions)
            field_groups.append((start, offsets.size))
            start += offsets.size
    tap_rows, _ = tap_offsets(np.arange(kh), np.arange(kw))

    full = n * oh * ow * kh * kw * c
    work = sum(m * k for _, m, _, k in groups)
    arrays = [np.ascontiguousarray(np.concatenate(a), dtype=np.intp)
              for a in (rows, taps, tap_index)]
    arrays.append(np.array(groups, dtype=np.intp).reshape(-1, 4))
    arrays.append(np.ascontiguousarray(np.concatenate(order), dtype=np.intp))
    arrays.append(np.ascontiguousarray(tap_rows, dtype=np.intp))
    arrays += [np.ascontiguousarray(np.concatenate(a), dtype=np.intp)
               for a in (fields, field_index)]
    arrays.append(np.array(field_groups, dtype=np.intp).reshape(-1, 2))
    for a in arrays:
        a.flags.writeable = False
    return BorderPlan(*arrays, 1.0 - work / full if full else 0.0)


@functools.lru_cache(maxsize=64)  # (asked at every forward and backward of a padded layer)
def padded_fraction(x_shape, kernel_size, stride, padding, out_size):
    """The fraction of im2col's multiply-adds that read the zero padding.

    Args:
        x_shape: ``(N, C_in, H, W)``. kernel_size, stride, padding, out_size: pairs of ints
            (tuples: the result is cached).
    Returns:
        float: in ``[0, 1]``; 0 without padding or without outputs.
    """
    (kh, kw), (oh, ow) = kernel_size, out_size
    if oh * ow == 0:
        return 0.0
    valid = (sum(t1 - t0 for t0, t1 in _valid_taps(x_shape[2], kh, stride[0], padding[0], oh))
             * sum(t1 - t0 for t0, t1 in _valid_taps(x_shape[3], kw, stride[1], padding[1], ow)))
    return 1.0 - valid / (oh * ow * kh * kw)


def _skip_padded_taps(plan_key, out_channels, weight_grad=False):
    """Whether the forward product (or the weight gradient's) of the layer ``plan_key = (x_shape,
    kernel_size, stride, padding, out_size)`` skips its padded taps (:func:`border_plan`).

    The products by border class pay where the padding is a large part of the work and the
    products stay large: the weight gradient's products (one per kernel position) each pack
    their block of ``dout``, and the forward puts its rows back in position order (its classes
    read one packing of the weight since 4fe1d60; the measurements below are from before).
    Measured at 2 threads, forward and weight-gradient products,
    full -> skipping, ms: (32, 64, 8, 8) -> 64 5x5 pad 2 (28% padded) 2.09 -> 1.83 and 2.30 ->
    1.85; (32, 64, 8, 8) -> 64 7x7 pad 3 (38%) 3.81 -> 2.94 and 3.82 -> 2.65; (16, 128, 8, 8) ->
    256 5x5 pad 2 8.14 -> 7.47 and 7.88 -> 6.15; (32, 64, 16, 16) -> 64 5x5 pad 2 (14%) 8.22 ->
    7.61 and 8.29 -> 8.32; (64, 32, 16, 16) -> 64 7x7 pad 3 (20%) 15.88 -> 13.41 and 15.98 ->
    16.55. With 16 channels or fewer the classes lost: (64, 16, 16, 16) -> 16 5x5 pad 2 1.16 ->
    1.19 and 1.37 -> 1.64; (64, 3, 32, 32) -> 64 5x5 pad 2, 3.16 -> 5.56.
    """
    x_shape, (kernel_h, kernel_w), _, _, (out_h, out_w) = plan_key
    if (min(x_shape[1], out_channels) < SKIP_MIN_CHANNELS
            or x_shape[0] * out_h * out_w * kernel_h * kernel_w > SKIP_MAX_PAIRS):
        return False
    saving = padded_fraction(*plan_key)
    return saving >= (SKIP_MIN_SAVING_WEIGHT_GRAD if weight_grad else SKIP_MIN_SAVING)


def _task_rows(total, threads):
    """Rows per task for a product of ``total`` rows split in tasks: ``SKIP_TILE_ROWS``, fewer
    (a multiple of the micro-kernel's) when that would leave threads idle."""
    rows = SKIP_TILE_ROWS
    while rows > _gemm.MR and -(-total // rows) < 2 * threads:
        rows = max(_gemm.MR, (rows // 2) // _gemm.MR * _gemm.MR)
    return rows


def _tasks(groups, out_cols, tile_rows, tile_cols):
    """``gemm_gathered_tasks``'s rows for products ``groups = [(a_row, rows, inner_start,
    inner, c_offset, ldc)]`` of ``out_cols`` columns each, in tiles of at most ``tile_rows x
    tile_cols``, the most work first (the threads take them in order)."""
    tasks = []
    for a_row, rows, inner_start, inner, c_offset, ldc in groups:
        if inner == 0:  # (outputs that read only padding: the caller zeroes them)
            continue
        for r in range(0, rows, tile_rows):
            for j in range(0, out_cols, tile_cols):
                tasks.append((a_row + r, j, inner_start, min(tile_rows, rows - r),
                              min(tile_cols, out_cols - j), inner, c_offset + r * ldc + j, ldc))
    tasks.sort(key=lambda t: -t[3] * t[4] * t[5])
    return np.array(tasks, dtype=np.intp).reshape(-1, 8)


def _tap_runs(plan):
    """Each border class's valid taps (:func:`border_plan`) as runs of consecutive taps, one per
    kernel row of its rectangle: ``[(m0, m, [(k, tap, length), ...])]`` for the classes with
    taps (rows ``m0 .. m0+m-1`` of the class order; a run is taps ``tap .. tap+length-1``,
    ``k`` its place in ``plan.taps``)."""
    classes = []
    for m0, m, k0, k in plan.groups:
        if k == 0:  # (outputs that read only padding)
            continue
        index = plan.tap_index[k0:k0 + k]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(index) != 1) + 1, [k]))
        classes.append((m0, m, [(k0 + a, index[a], b - a)
                                for a, b in zip(starts[:-1], starts[1:])]))
    return classes


@functools.lru_cache(maxsize=32)
def _forward_tasks(plan_key, out_channels, threads):
    """The forward's tasks and segments (:func:`_skipping_forward`), cached: a border class
    multiplies its valid taps, which are runs of consecutive rows of ``weight_taps`` (a run
    per kernel row of its rectangle of taps), one segment ``(first column of A, first row of
    B, length)`` per run, for ``_gemm.gemm_gathered_tasks_packed``."""
    plan = border_plan(*plan_key)
    total = int(plan.groups[:, 1].sum())
    tile_rows = _task_rows(total, threads)
    tile_cols = min(out_channels, _blas.TILE_COLS)  # (a multiple of every NR when it is less)
    segments, tasks = [], []
    for m0, m, runs in _tap_runs(plan):  # (classes without taps: the caller zeroes them)
        first = len(segments)
        segments += runs
        for r in range(0, m, tile_rows):
            for j in range(0, out_channels, tile_cols):
                tasks.append((m0 + r, j, first, min(tile_rows, m - r),
                              min(tile_cols, out_channels - j), len(segments) - first,
                              (m0 + r) * out_channels + j, out_channels))
    tasks.sort(key=lambda t: -t[3] * t[4] * sum(g[2] for g in segments[t[2]:t[2] + t[5]]))
    tasks, segments = (np.array(a, dtype=np.intp).reshape(-1, width)
                       for a, width in ((tasks, 8), (segments, 3)))
    tasks.flags.writeable = segments.flags.writeable = False
    return tasks, segments, tile_cols


@functools.lru_cache(maxsize=32)
def _weight_grad_tasks(plan_key, out_channels, threads):
    """The weight gradient's tasks and B's row offsets (:func:`_skipping_weight_grad`)."""
    plan = border_plan(*plan_key)
    in_channels = plan_key[0][1]
    tile_rows = _task_rows(in_channels * len(plan.field_groups), threads)
    tile_cols = min(out_channels, _blas.TILE_COLS)
    groups = [(p * in_channels, in_channels, start, count, p * in_channels * out_channels,
               out_channels) for p, (start, count) in enumerate(plan.field_groups)]
    b_rows = plan.field_index * out_channels
    b_rows.flags.writeable = False
    return _tasks(groups, out_channels, tile_rows, tile_cols), b_rows, tile_cols


def _packed(b, narrow):
    """``b`` ``(inner, N)`` (any strides) packed whole for ``_gemm.gemm_gathered_tasks_packed``,
    in strips of the ``narrow`` or the wide micro-kernel's width."""
    dtype_name = _blas._DTYPE_NAMES[b.dtype]
    packed = _memory.empty((_gemm.packed_size(*b.shape, dtype_name, narrow),), b.dtype)
    _gemm.pack_b(b, packed, narrow, _config.threads_for(packed.size))
    return packed


def _run_packed_tasks(a_base, a_rows, a_cols, packed, inner, segments, out, tasks, tile_cols,
                      threads, narrow):
    """``_gemm.gemm_gathered_tasks_packed`` with its scratch (``packed``: :func:`_packed` of a
    matrix of ``inner`` rows, with the same ``narrow``)."""
    dtype_name = _blas._DTYPE_NAMES[out.dtype]
    threads = max(1, min(threads, len(tasks)))
    scratch = _memory.empty((threads, _gemm.scratch_size(tile_cols, dtype_name, narrow)),
                            out.dtype)
    _gemm.gemm_gathered_tasks_packed(a_base.reshape(-1), a_rows, a_cols, packed, inner,
                                     segments, out.reshape(-1), tasks, scratch, threads, narrow)


def _run_tasks(a_base, a_rows, a_cols, b_base, b_rows, b_cols, out, tasks, tile_cols, threads):
    """``_gemm.gemm_gathered_tasks`` with its scratch."""
    dtype_name = _blas._DTYPE_NAMES[out.dtype]
    narrow = _blas._narrow(tile_cols, dtype_name)
    threads = max(1, min(threads, len(tasks)))
    scratch = _memory.empty((threads, _gemm.scratch_size(tile_cols, dtype_name, narrow)),
                            out.dtype)
    _gemm.gemm_gathered_tasks(a_base.reshape(-1), a_rows, a_cols, b_base.reshape(-1), b_rows,
                              b_cols, out.reshape(-1), tasks, scratch, threads, narrow)


@functools.lru_cache(maxsize=64)
def _arange(count):
    """``0 .. count-1`` as read-only ``np.intp`` offsets (B's columns: contiguous rows)."""
    a = np.arange(count, dtype=np.intp)
    a.flags.writeable = False
    return a


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
    return _blas.Gathered.trusted(x_pad, rows, taps)


def _swap_last_axes(src, out=None):
    """C-contiguous ``(B, A, C)`` -> C-contiguous ``(B, C, A)`` (into ``out`` when given, else a
    new array), by the blocked transpose kernel: the weight's layout changes below. NumPy's strided copy of
    ``dweight_taps.reshape(kH, kW, C_in, C_out).transpose(3, 2, 0, 1)`` reads its innermost
    output axis ``C_in*C_out`` elements apart: 7.1 ms for a 7x7 layer of 128 -> 256 channels,
    more than the layer's weight-gradient product (4.7 ms at 2 threads)."""
    b, a, c = src.shape
    dst = _memory.empty((b, c, a), src.dtype) if out is None else out
    _kernel.transpose_batched(src, _no_bias(src.dtype), False, dst,
                              _config.threads_for(src.size))
    return dst


def _transposed(matrix):
    """C-contiguous ``(A, B)`` -> a new C-contiguous ``(B, A)``, by :func:`_swap_last_axes`."""
    return _swap_last_axes(matrix[None])[0]


def _weight_rows(weight):
    """``(C_out, C_in, kH, kW)`` -> ``(C_out, kH*kW*C_in)``, taps ordered (i, j, c)."""
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    planes = np.ascontiguousarray(weight).reshape(out_channels, in_channels, kernel_h * kernel_w)
    return _swap_last_axes(planes).reshape(out_channels, -1)


def _flipped_taps(weight_rows, weight_shape):
    """``(kH*kW*C_out, C_in)``: the right operand of the forward product (``weight_rows.T`` of
    :func:`forward`) of the flipped kernel with its channels swapped, ``flipped[c, o, i, j] =
    weight[o, c, kH-1-i, kW-1-j]``: row ``((kH-1-i)*kW + kW-1-j)*C_out + o`` is the run of
    ``C_in`` values ``weight_rows[o, (i*kW + j)*C_in : ...]``, so one copy of contiguous runs
    makes it (0.14 ms for a (256, 128, 6, 6) weight, where building the flipped weight and then
    its ``weight_rows`` took four transposes and a strided copy, 1.8 ms)."""
    out_channels, in_channels, kernel_h, kernel_w = weight_shape
    planes = kernel_h * kernel_w
    flipped = _memory.empty((planes, out_channels, in_channels), weight_rows.dtype)
    np.copyto(flipped, weight_rows.reshape(out_channels, planes, in_channels)
              .transpose(1, 0, 2)[::-1])
    return flipped.reshape(-1, in_channels)


def _weight_from_taps(taps, weight_shape):
    """A weight gradient computed as ``(kH*kW*C_in, C_out)`` (rows ordered (i, j, c), the
    forward's ``weight_rows.T``) -> ``(C_out, C_in, kH, kW)``, in one pass
    (``_conv.swap_outer_axes``)."""
    out_channels, in_channels, kernel_h, kernel_w = weight_shape
    dweight = _memory.empty(weight_shape, taps.dtype)
    _kernel.swap_outer_axes(taps.reshape(kernel_h * kernel_w, in_channels, out_channels),
                            dweight.reshape(out_channels, in_channels, kernel_h * kernel_w),
                            _config.threads_for(taps.size))
    return dweight


def _weight_from_rows(rows, weight_shape):
    """The inverse of :func:`_weight_rows`: ``(C_out, kH*kW*C_in)`` -> ``(C_out, C_in, kH,
    kW)``."""
    out_channels, in_channels, kernel_h, kernel_w = weight_shape
    taps = rows.reshape(out_channels, kernel_h * kernel_w, in_channels)
    dweight = _memory.empty(weight_shape, rows.dtype)  # (a base array: the layer keeps it)
    _swap_last_axes(taps, dweight.reshape(out_channels, in_channels, kernel_h * kernel_w))
    return dweight


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
    weight_rows = _weight_rows(weight)
    x_pad, cols, chunk = _forward_product(x, weight_rows.T, weight.shape[2:], bias, stride,
                                          padding, out, workspace, layer)
    return Im2colCache(cols, x_pad, weight_rows, bias is not None, x.shape, weight.shape,
                       out.shape, tuple(stride), tuple(padding), chunk, x.dtype)


def _forward_product(x, weight_taps, kernel_size, bias, stride, padding, out, workspace=None,
                     layer="conv2d"):
    """:func:`forward` with the weight already as the product's right operand ``weight_taps =
    weight_rows.T``, ``(kH*kW*C_in, C_out)``, any strides; returns ``(x_pad, cols, chunk)`` for
    the cache."""
    n = x.shape[0]
    kernel_h, kernel_w = kernel_size
    out_channels = weight_taps.shape[1]
    out_size = out.shape[2:]
    per_sample = out_size[0] * out_size[1]
    taps = weight_taps.shape[0]
    threads = _config.threads_for(n * per_sample * taps)
    x_pad = _padded_nhwc(np.ascontiguousarray(x), padding, threads)
    out_rows = _memory.empty((n * per_sample, out_channels), x.dtype)
    cols, chunk = None, n
    plan_key = (tuple(x.shape), (kernel_h, kernel_w), tuple(stride), tuple(padding),
                tuple(out_size))
    if workspace is None and _skip_padded_taps(plan_key, out_channels):
        _skipping_forward(x_pad, weight_taps, plan_key, out_rows)
    elif workspace is None:
        _blas.matmul(_gathered(x_pad, (kernel_h, kernel_w), stride, out_size), weight_taps,
                     out=out_rows, layer=layer, rows_per_sample=per_sample)
    else:  # the matrix itself, built in the caller's workspace a chunk at a time
        rows, _ = matrix_shape(x.shape, (kernel_h, kernel_w), out_size, x.dtype)
        matrix = _column_matrix(layer, workspace, (rows, taps), x.dtype)
        chunk = rows // per_sample
        for rows, part in _matrix_chunks(x_pad, matrix, (kernel_h, kernel_w), stride,
                                         per_sample, chunk, threads):
            _blas.matmul(part, weight_taps, out=out_rows[rows], layer=layer,
                         rows_per_sample=per_sample)
        cols = matrix if chunk >= n else None

    has_bias = bias is not None
    bias_vector = np.ascontiguousarray(bias) if has_bias else _no_bias(x.dtype)
    _kernel.transpose_batched(out_rows.reshape(n, per_sample, out_channels), bias_vector,
                              has_bias, out.reshape(n, out_channels, per_sample), threads)
    return x_pad, cols, chunk


def _product_threads(work):
    """Threads for a product of ``work`` multiply-adds (as :func:`minidl._blas.matmul`)."""
    return 1 if work < _blas.PARALLEL_MIN_WORK else _config.get_num_threads()


def _skipping_forward(x_pad, weight_taps, plan_key, out_rows):
    """``out_rows = cols @ weight_taps`` without the padded taps: one product per border
    class (:func:`border_plan`), computed in class order and put back in position order."""
    plan = border_plan(*plan_key)
    out_channels = weight_taps.shape[1]
    threads = _product_threads(out_rows.size * weight_taps.shape[0])
    tasks, segments, tile_cols = _forward_tasks(plan_key, out_channels, threads)
    empty = _memory.zeros if (plan.groups[:, 3] == 0).any() else _memory.empty
    by_class = empty(out_rows.shape, out_rows.dtype)
    narrow = _blas._narrow(tile_cols, _blas._DTYPE_NAMES[out_rows.dtype])
    _run_packed_tasks(x_pad, plan.rows, plan.taps, _packed(weight_taps, narrow),
                      weight_taps.shape[0], segments, by_class, tasks, tile_cols, threads, narrow)
    out_rows[plan.order] = by_class


def _skipping_weight_grad(cache, drows_t, plan_key):
    """``dweight_taps = cols.T @ drows_t`` without the padded taps: one product per kernel
    position (i, j), over the receptive fields that read the input there
    (:func:`border_plan`). ``drows_t``: ``(N*OH*OW, C_out)``; returns ``(kH*kW*C_in,
    C_out)``."""
    plan = border_plan(*plan_key)
    out_channels = drows_t.shape[1]
    taps = plan.tap_rows.size
    threads = _product_threads(drows_t.size * taps)
    tasks, b_rows, tile_cols = _weight_grad_tasks(plan_key, out_channels, threads)
    empty = _memory.zeros if (plan.field_groups[:, 1] == 0).any() else _memory.empty
    dweight_taps = empty((taps, out_channels), drows_t.dtype)
    _run_tasks(cache.x_pad, plan.tap_rows, plan.fields, drows_t, b_rows,
               _arange(out_channels), dweight_taps, tasks, tile_cols, threads)
    return dweight_taps


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
    7.6 ms), nor with few input channels (LeNet's 6 -> 16: 3x slower).

    But ``dout`` is padded by ``kernel - 1 - padding`` on each side, and with few channels
    the convolution multiplies those zeros (:func:`_skip_padded_taps` needs 32 each way): on
    small maps with little padding most of its work. So it is taken only where less than
    ``CONV_INPUT_GRAD_MAX_PADDED_FRACTION`` of its multiply-adds read them
    (:func:`padded_fraction`). Measured, backward with the input gradient, 1 thread, ms,
    convolution / columns (padded fraction): (2, 192, 14, 14) -> 24 7x7 pad 0 2.67 / 1.79
    (0.67; 0.85x of PyTorch in a held-out sweep); (32, 32, 8, 8) -> 16 5x5 0.69 / 0.37 (0.75);
    (16, 32, 16, 16) -> 16 7x7 2.84 / 2.11 (0.61); (16, 64, 12, 12) -> 16 5x5 1.71 / 1.34
    (0.56); (2, 64, 14, 14) -> 16 5x5 0.34 / 0.33 (0.49); (8, 128, 10, 10) -> 32 5x5 pad 1
    2.30 / 2.51 (0.42); (32, 64, 16, 16) -> 16 5x5 pad 2 8.5 / 10.3 (0.14); (64, 16, 32, 32)
    -> 16 7x7 pad 3 33.4 / 40.4 (0.10). An exception: (8, 64, 12, 12) -> 32 3x3 pad 0 0.82 /
    0.72 (0.31).

    With more output channels the convolution is taken where it skips the padded taps
    (:func:`_skip_padded_taps`), unless the weight has ``CONV_INPUT_GRAD_MAX_WEIGHT_RATIO``
    times as many elements as ``dout`` or more: the convolution needs the flipped weight, one
    more pass over it before it is packed, where ``dcols`` by class packs ``weight_rows`` as
    it is. Measured, layer forward + backward, ms, convolution / columns: (8, 512, 4, 4) ->
    512 3x3 pad 1 (weight 36x dout) 19.2-19.5 / 17.7-17.9 at 1 thread, 15.2-15.8 / 14.6 at 2;
    (8, 256, 4, 4) -> 256 (18x) 3.9-4.0 / 3.9 and 4.7-4.8 / 3.9; the breadth suite's b16
    training step (its (16, 256, 4, 4) -> 256 layer, 9x) 6.8-7.1 / 6.5-6.7 ms at 2 threads,
    10.2-10.7 / 9.3-9.6 in a slow phase, 12.2-12.4 either way at 1 thread. Below that the
    convolution was as fast or faster: (16, 128, 8, 8) -> 256 5x5 pad 2 (3.1x) 35.9 / 36.1-36.7
    at 1 thread, 19.4-21.7 / 22.0-22.2 at 2; (32, 64, 8, 8) -> 64 5x5 (0.8x) 9.0 / 9.4."""
    out_channels, in_channels, kernel_h, kernel_w = cache.weight_shape
    if not (cache.stride == (1, 1) and in_channels >= CONV_INPUT_GRAD_MIN_IN_CHANNELS
            and kernel_h * kernel_w > 1 and cache.padding[0] < kernel_h
            and cache.padding[1] < kernel_w):
        return False
    if out_channels <= CONV_INPUT_GRAD_MAX_OUT_CHANNELS:
        return padded_fraction(*_input_grad_plan_key(cache)) < CONV_INPUT_GRAD_MAX_PADDED_FRACTION
    n, _, out_h, out_w = cache.out_shape
    # weight / dout elements = C_in*kH*kW / (N*OH*OW)
    weight_heavy = (in_channels * kernel_h * kernel_w
                    >= CONV_INPUT_GRAD_MAX_WEIGHT_RATIO * n * out_h * out_w)
    return not weight_heavy and _skip_padded_taps(_input_grad_plan_key(cache), in_channels)


def _input_grad_plan_key(cache):
    """The ``plan_key`` of :func:`_input_grad_by_convolution`'s forward."""
    n, out_channels, out_h, out_w = cache.out_shape
    kernel_h, kernel_w = cache.weight_shape[2:]
    return ((n, out_channels, out_h, out_w), (kernel_h, kernel_w), (1, 1),
            (kernel_h - 1 - cache.padding[0], kernel_w - 1 - cache.padding[1]),
            tuple(cache.x_shape[2:]))


def _input_grad_by_convolution(dout, cache):
    """``dx`` of a stride-1 layer as the convolution of ``dout``, zero-padded by
    ``kernel - 1 - padding``, with the flipped kernel whose input and output channels are
    swapped (Dumoulin & Visin 2016, "A guide to convolution arithmetic", relationship 4):
    ``dx[n, c, h, w] = sum_{o, i, j} dout_pad[n, o, h + i, w + j] * weight[o, c, kH-1-i,
    kW-1-j]``, computed by :func:`forward`'s product (gathered GEMM, no matrix written)."""
    kernel_h, kernel_w = cache.weight_shape[2:]
    flipped_taps = _flipped_taps(cache.weight_rows, cache.weight_shape)
    padding = (kernel_h - 1 - cache.padding[0], kernel_w - 1 - cache.padding[1])
    dx = _memory.empty(cache.x_shape, cache.dtype)
    _forward_product(dout.reshape(cache.out_shape), flipped_taps, (kernel_h, kernel_w), None,
                     (1, 1), padding, dx)
    return dx


def backward(dout, cache, input_grad):
    """``(dx, dweight, dbias)`` of :func:`forward`; ``dx`` is None unless ``input_grad``,
    ``dbias`` None without bias."""
    n, out_channels, out_h, out_w = cache.out_shape
    kernel_h, kernel_w = cache.weight_shape[2:]
    dout = np.ascontiguousarray(dout).reshape(n, out_channels, -1)
    plan_key = (cache.x_shape, (kernel_h, kernel_w), cache.stride, cache.padding,
                (out_h, out_w))
    if cache.cols is None and _skip_padded_taps(plan_key, out_channels, weight_grad=True):
        drows_t = _swap_last_axes(dout)  # (N, OH*OW, C_out)
        dbias = bias_grad(dout, cache.dtype) if cache.has_bias else None
        dweight_taps = _skipping_weight_grad(cache, drows_t.reshape(-1, out_channels),
                                             plan_key)
        dweight = _weight_from_taps(dweight_taps, cache.weight_shape)
        drows = drows_t.reshape(-1, out_channels).T  # (C_out, N*OH*OW), a view
    else:
        drows, dweight, dbias = _weight_grad(dout, cache)
    if not input_grad:
        return None, dweight, dbias
    if _input_grad_as_convolution(cache):
        return _input_grad_by_convolution(dout, cache), dweight, dbias
    return _input_grad_by_columns(drows, cache), dweight, dbias


def _weight_grad(dout, cache):
    """``(drows, dweight, dbias)`` by the full products (:func:`backward` without skipping
    padded taps); ``drows``: ``dout`` as ``(C_out, N*OH*OW)``."""
    n, out_channels, out_h, out_w = cache.out_shape
    _, in_channels, kernel_h, kernel_w = cache.weight_shape
    per_sample = out_h * out_w
    taps = cache.weight_rows.shape[1]
    threads = _config.threads_for(n * per_sample * taps)
    drows, dbias = dout_rows(dout, cache.has_bias, cache.dtype, threads)

    rows, _ = matrix_shape(cache.x_shape, (kernel_h, kernel_w), (out_h, out_w), cache.dtype)
    chunk = rows // per_sample  # samples per materialized matrix (dcols, or cols below)
    if cache.cols is None and min(out_channels, taps) > _gemm.DOT_ROWS:
        # dweight_taps = cols.T @ drows.T, with cols.T gathered (the roles of the offsets
        # swapped: one row per tap), which the GEMM reads in place instead of packing cols as
        # B: the same sums in the same order, so the same bits, and 5-14% faster (1 thread,
        # 64-channel layers)
        positions, tap_offsets = gather_offsets(cache.x_pad.shape, (kernel_h, kernel_w),
                                                cache.stride, (out_h, out_w))
        dweight_taps = _blas.matmul(_blas.Gathered.trusted(cache.x_pad, tap_offsets, positions),
                                    drows.T)
        return drows, _weight_from_taps(dweight_taps, cache.weight_shape), dbias
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
    return drows, _weight_from_rows(dweight_rows, cache.weight_shape), dbias


@functools.lru_cache(maxsize=32)
def _input_grad_tasks(plan_key, out_channels, nr, threads):
    """The tasks of :func:`_input_grad_by_columns` when it skips padded taps, for a chunk of
    samples ``plan_key = (x_shape, ...)``: ``(tasks, a_rows, row_of, tile_cols)``.

    Border class ``g`` (:func:`border_plan`) computes ``dcols[its rows, its valid taps] =
    drows.T[its positions] @ weight_rows[:, its valid taps]``, one product per run of
    consecutive taps (a kernel row of its rectangle; each starts at a multiple of ``C_in``,
    so of ``nr``, the strips of the packed weight), its rows of ``dcols`` in class order
    (``row_of[position]``, for col2im); the entries of padded taps are not computed, and
    col2im does not read them."""
    plan = border_plan(*plan_key)
    taps = plan.tap_rows.size
    tile_rows = _task_rows(int(plan.groups[:, 1].sum()), threads)
    runs = [(m0, m, tap, length) for m0, m, class_runs in _tap_runs(plan)
            for _, tap, length in class_runs]
    # (no runs: every output reads only padding, dx is all zeros and col2im reads nothing)
    tile_cols = min(_blas.TILE_COLS, -(-max([run[3] for run in runs] or [1]) // nr) * nr)
    tasks = [(m0 + r, col0 + j, 0, min(tile_rows, m - r), min(tile_cols, length - j), 1,
              (m0 + r) * taps + col0 + j, taps)
             for m0, m, col0, length in runs for r in range(0, m, tile_rows)
             for j in range(0, length, tile_cols)]
    tasks.sort(key=lambda t: -t[3] * t[4])
    a_rows = plan.order * out_channels
    row_of = np.empty_like(plan.order)
    row_of[plan.order] = np.arange(plan.order.size)
    tasks = np.array(tasks, dtype=np.intp).reshape(-1, 8)
    for a in (tasks, a_rows, row_of):
        a.flags.writeable = False
    return tasks, a_rows, row_of, tile_cols


def _skip_padded_input_taps(cache):
    """Whether :func:`_input_grad_by_columns` skips the padded taps: where the forward would
    (:func:`_skip_padded_taps`), when ``C_in`` is a multiple of the micro-kernel's width (the
    runs of valid taps then start on strips of the packed weight)."""
    n, out_channels, out_h, out_w = cache.out_shape
    kernel_h, kernel_w = cache.weight_shape[2:]
    return (cache.x_shape[1] % _gemm.NR[_blas._DTYPE_NAMES[cache.dtype]] == 0
            and _skip_padded_taps((cache.x_shape, (kernel_h, kernel_w), cache.stride,
                                   cache.padding, (out_h, out_w)), out_channels))


def _input_grad_by_columns(drows, cache):
    """``dx`` by ``dcols = drows.T @ weight_rows`` and col2im, ``S`` samples at a time.
    ``drows``: ``(C_out, N*OH*OW)``, any strides.

    Where padded taps are skipped (:func:`_skip_padded_input_taps`), ``dcols`` is computed by
    border class without them (:func:`_input_grad_tasks`), from the weight packed once."""
    n, out_channels, out_h, out_w = cache.out_shape
    _, in_channels, kernel_h, kernel_w = cache.weight_shape
    per_sample = out_h * out_w
    taps = cache.weight_rows.shape[1]
    threads = _config.threads_for(n * per_sample * taps)
    rows, _ = dcols_shape(cache.x_shape, (kernel_h, kernel_w), (out_h, out_w), cache.dtype)
    chunk = rows // per_sample
    geometry = (kernel_h, kernel_w, *cache.stride, *cache.padding)
    dx_nhwc = _memory.empty((n,) + cache.x_shape[2:] + (in_channels,), cache.dtype)
    dcols = _memory.empty((chunk * per_sample, taps), cache.dtype)
    skip = _skip_padded_input_taps(cache)
    if skip:
        drows_t = drows.T if drows.T.flags.c_contiguous else _transposed(drows)  # A: rows
        product_threads = _product_threads(n * per_sample * taps * out_channels)
        packed = _packed(cache.weight_rows, False)  # (wide strips: the runs start on them)
        segments = np.array([(0, 0, out_channels)], dtype=np.intp)  # all of the inner rows
    for samples, rows in _chunks(n, chunk, per_sample):
        part = dcols[:rows.stop - rows.start]
        if not skip:
            _blas.matmul(drows[:, rows].T, cache.weight_rows, out=part,
                         rows_per_sample=per_sample)
            _kernel.col2im(part, dx_nhwc[samples], *geometry, threads)
            continue
        plan_key = ((samples.stop - samples.start,) + tuple(cache.x_shape[1:]),
                    (kernel_h, kernel_w), cache.stride, cache.padding, (out_h, out_w))
        tasks, a_rows, row_of, tile_cols = _input_grad_tasks(
            plan_key, out_channels, _gemm.NR[_blas._DTYPE_NAMES[cache.dtype]], product_threads)
        _run_packed_tasks(drows_t[rows], a_rows, _arange(out_channels), packed, out_channels,
                          segments, part, tasks, tile_cols, product_threads, False)
        _kernel.col2im(part, dx_nhwc[samples], *geometry, threads, row_of)
    return _to_nchw(dx_nhwc, threads)
