# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Convolution kernels: im2col, col2im and the layout changes around the matrix products.

Convolution is computed as one matrix product per batch (Chellapilla, Puri and Simard, 2006,
"High Performance Convolutional Neural Networks for Document Processing"): ``im2col`` copies
every receptive field of the input into one row of ``cols``, so that

    out_rows (N*OH*OW, C_out) = cols (N*OH*OW, kH*kW*C_in) @ weight_rows.T (kH*kW*C_in, C_out)

Layout of ``cols`` (C order, shape ``(N*OH*OW, kH*kW*C)``; one row per output position, the
taps of a row ordered (i, j, c) so that each tap is a contiguous run of C channels)::

    cols[(n*OH + oh)*OW + ow, (i*kW + j)*C + c] = x_padded[n, c, oh*sH + i, ow*sW + j]

where ``x_padded`` is ``x`` with ``pH`` / ``pW`` zeros on each side (the padding is never
materialized: out-of-range taps are written as zeros). The kernels read and write images in
NHWC order ``(N, H, W, C)``; :func:`transpose_batched` converts from and to NCHW. This layout
(rather than ``(C*kH*kW, N*OH*OW)``) was measured faster both for the copies (contiguous runs of
C) and for OpenBLAS's matrix products (tall-skinny rather than short-wide).

These kernels trust their inputs: shapes, dtypes and contiguity are checked by
``minidl.functional.conv``. Every function writes its result into a caller-allocated array
(marked OUT); arrays marked IN are only read. All loops run without the GIL and are split over
``num_threads`` OpenMP threads with ``prange`` when the extension is built with OpenMP.
"""
from cython.parallel cimport prange

ctypedef fused floating:
    float
    double

# Tile edge of the blocked transpose: a 64x64 tile of float64 is 32 KiB, within L1.
cdef enum:
    TILE = 64


cdef inline bint _inside(Py_ssize_t index, Py_ssize_t size) noexcept nogil:
    return 0 <= index < size


def im2col(const floating[:, :, :, ::1] x_nhwc, floating[:, ::1] cols,
           int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
           int num_threads=1):
    """Copy every receptive field of an NHWC image into one row of ``cols``.

    Args:
        x_nhwc (IN): input in NHWC order, shape ``(N, H, W, C)``, float32 or float64,
            C-contiguous.
        cols (OUT): shape ``(N*OH*OW, kH*kW*C)``, same dtype; fully overwritten, laid out as
            in the module docstring.
        kernel_h, kernel_w: kernel size ``kH, kW`` (>= 1).
        stride_h, stride_w: stride (>= 1).
        pad_h, pad_w: zero padding on each side (>= 0).
        num_threads: OpenMP threads (ignored in a serial build).

    ``OH = (H + 2*pH - kH) // sH + 1`` and ``OW`` likewise; the caller guarantees both >= 1.
    Work is split over output rows ``(n, oh)``.
    Reference: Chellapilla et al., 2006.
    """
    cdef Py_ssize_t N = x_nhwc.shape[0], H = x_nhwc.shape[1], W = x_nhwc.shape[2]
    cdef Py_ssize_t C = x_nhwc.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad_h - kernel_h) // stride_h + 1
    cdef Py_ssize_t OW = (W + 2 * pad_w - kernel_w) // stride_w + 1
    cdef Py_ssize_t task, n, oh, ow, i, j, ih, iw, c
    cdef floating* dst
    cdef const floating* src

    for task in prange(N * OH, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // OH
        oh = task - n * OH
        for ow in range(OW):
            dst = &cols[task * OW + ow, 0]
            for i in range(kernel_h):
                ih = oh * stride_h - pad_h + i
                for j in range(kernel_w):
                    iw = ow * stride_w - pad_w + j
                    if _inside(ih, H) and _inside(iw, W):
                        src = &x_nhwc[n, ih, iw, 0]
                        for c in range(C):
                            dst[c] = src[c]
                    else:
                        for c in range(C):
                            dst[c] = 0
                    dst = dst + C


def col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] dx_nhwc,
           int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
           int num_threads=1):
    """Fold the rows of ``cols`` back into an NHWC image, summing overlaps (im2col's adjoint).

    Args:
        cols (IN): shape ``(N*OH*OW, kH*kW*C)``, float32 or float64, C-contiguous, laid out as
            written by :func:`im2col`.
        dx_nhwc (OUT): shape ``(N, H, W, C)``, same dtype; fully overwritten (it need not be
            zeroed): each element is the sum of every entry of ``cols`` that im2col would have
            copied from it; taps that fall into the padding are dropped.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, num_threads: as for
            :func:`im2col`.

    Work is split over samples, so no two threads write the same element.
    Reference: Chellapilla et al., 2006 (backward of the unrolled convolution).
    """
    cdef Py_ssize_t N = dx_nhwc.shape[0], H = dx_nhwc.shape[1], W = dx_nhwc.shape[2]
    cdef Py_ssize_t C = dx_nhwc.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad_h - kernel_h) // stride_h + 1
    cdef Py_ssize_t OW = (W + 2 * pad_w - kernel_w) // stride_w + 1
    cdef Py_ssize_t n, oh, ow, i, j, ih, iw, c, k
    cdef floating* dst
    cdef const floating* src

    for n in prange(N, nogil=True, num_threads=num_threads, schedule="static"):
        dst = &dx_nhwc[n, 0, 0, 0]
        for k in range(H * W * C):
            dst[k] = 0
        for oh in range(OH):
            for ow in range(OW):
                src = &cols[(n * OH + oh) * OW + ow, 0]
                for i in range(kernel_h):
                    ih = oh * stride_h - pad_h + i
                    for j in range(kernel_w):
                        iw = ow * stride_w - pad_w + j
                        if _inside(ih, H) and _inside(iw, W):
                            dst = &dx_nhwc[n, ih, iw, 0]
                            for c in range(C):
                                dst[c] += src[c]
                        src = src + C


def transpose_batched(const floating[:, :, ::1] src, const floating[::1] bias, bint use_bias,
                      floating[:, :, ::1] dst, int num_threads=1):
    """Transpose the last two axes of a batch, optionally adding a bias along the new middle axis.

    ``dst[n, b, a] = src[n, a, b] + bias[b]`` (``+ bias[b]`` only when ``use_bias``). With
    ``(A, B) = (C, H*W)`` this turns NCHW into NHWC; with ``(A, B) = (H*W, C)`` the reverse.

    Args:
        src (IN): shape ``(N, A, B)``, float32 or float64, C-contiguous.
        bias (IN): shape ``(B,)``, same dtype; read only when ``use_bias`` is true.
        use_bias: whether to add ``bias``.
        dst (OUT): shape ``(N, B, A)``, same dtype; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over ``TILE x TILE`` tiles (64 x 64) so both reads and writes stay in cache.
    """
    cdef Py_ssize_t N = src.shape[0], A = src.shape[1], B = src.shape[2]
    cdef Py_ssize_t tiles_a = (A + TILE - 1) // TILE, tiles_b = (B + TILE - 1) // TILE
    cdef Py_ssize_t task, n, tile, a_start, a_end, b_start, b_end, a, b
    cdef floating shift
    cdef floating* out
    cdef const floating* column

    for task in prange(N * tiles_a * tiles_b, nogil=True, num_threads=num_threads,
                       schedule="static"):
        n = task // (tiles_a * tiles_b)
        tile = task - n * tiles_a * tiles_b
        a_start = (tile // tiles_b) * TILE
        b_start = (tile % tiles_b) * TILE
        a_end = a_start + TILE if a_start + TILE < A else A
        b_end = b_start + TILE if b_start + TILE < B else B
        for b in range(b_start, b_end):
            shift = bias[b] if use_bias else 0
            out = &dst[n, b, 0]
            column = &src[n, 0, b]
            for a in range(a_start, a_end):
                out[a] = column[a * B] + shift


def nchw_to_rows(const floating[:, :, ::1] dout, floating[:, ::1] rows,
                 double[::1] bias_grad, bint want_bias_grad, int num_threads=1):
    """Reorder an upstream gradient to channel-major rows and reduce it per channel.

    ``rows[c, n*P + p] = dout[n, c, p]`` and, when ``want_bias_grad``,
    ``bias_grad[c] = sum over n, p of dout[n, c, p]`` (accumulated in float64).

    Args:
        dout (IN): shape ``(N, C, P)``, float32 or float64, C-contiguous.
        rows (OUT): shape ``(C, N*P)``, same dtype; fully overwritten.
        bias_grad (OUT): shape ``(C,)``, float64; written only when ``want_bias_grad``.
        want_bias_grad: whether to compute ``bias_grad``.
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over channels, so each thread owns its rows and its bias_grad entries.
    """
    cdef Py_ssize_t N = dout.shape[0], C = dout.shape[1], P = dout.shape[2]
    cdef Py_ssize_t n, c, p
    cdef double total
    cdef floating* dst
    cdef const floating* src

    for c in prange(C, nogil=True, num_threads=num_threads, schedule="static"):
        total = 0
        for n in range(N):
            dst = &rows[c, n * P]
            src = &dout[n, c, 0]
            for p in range(P):
                dst[p] = src[p]
            if want_bias_grad:
                for p in range(P):
                    total = total + src[p]
        if want_bias_grad:
            bias_grad[c] = total
