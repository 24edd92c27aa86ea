# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Convolution kernels: im2col, col2im and the layout changes around the GEMM.

Convolution is computed as one matrix product per batch (Chellapilla, Puri and Simard, 2006,
"High Performance Convolutional Neural Networks for Document Processing"): ``im2col`` unrolls
every receptive field of the input into a column, so that

    out_rows (C_out, N*OH*OW) = weight (C_out, C_in*kH*kW) @ cols (C_in*kH*kW, N*OH*OW).

Layout of ``cols`` (C order, shape ``(C_in*kH*kW, N*OH*OW)``)::

    cols[(c*kH + i)*kW + j, (n*OH + oh)*OW + ow] = x_padded[n, c, oh*sH + i, ow*sW + j]

where ``x_padded`` is ``x`` with ``pH`` / ``pW`` zeros on each side (the padding is never
materialized: out-of-range taps are written as zeros).

These kernels trust their inputs: shapes, dtypes and contiguity are checked by
``minidl.functional.conv``. Every function writes its result into a caller-allocated array
(marked OUT); arrays marked IN are only read. All loops run without the GIL and are split over
OpenMP threads with ``prange`` when the extension is built with OpenMP.
"""
from cython.parallel cimport prange

ctypedef fused floating:
    float
    double


cdef inline Py_ssize_t _first_valid(Py_ssize_t pad, Py_ssize_t tap, Py_ssize_t stride) noexcept nogil:
    """Smallest output index o >= 0 with o*stride - pad + tap >= 0."""
    cdef Py_ssize_t need = pad - tap
    if need <= 0:
        return 0
    return (need + stride - 1) // stride


cdef inline Py_ssize_t _end_valid(Py_ssize_t size, Py_ssize_t pad, Py_ssize_t tap,
                                  Py_ssize_t stride, Py_ssize_t out_size) noexcept nogil:
    """One past the largest output index o < out_size with o*stride - pad + tap < size."""
    cdef Py_ssize_t last = size - 1 + pad - tap
    cdef Py_ssize_t end
    if last < 0:
        return 0
    end = last // stride + 1
    return end if end < out_size else out_size


def im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols,
           int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
           int num_threads=1):
    """Unroll the receptive fields of ``x`` into the columns of ``cols``.

    Args:
        x (IN): input, shape ``(N, C, H, W)``, float32 or float64, C-contiguous.
        cols (OUT): shape ``(C*kH*kW, N*OH*OW)``, same dtype as ``x``; fully overwritten,
            layout described in the module docstring.
        kernel_h, kernel_w: kernel size ``kH, kW`` (>= 1).
        stride_h, stride_w: stride (>= 1).
        pad_h, pad_w: zero padding on each side (>= 0).
        num_threads: OpenMP threads (ignored in a serial build).

    ``OH = (H + 2*pH - kH) // sH + 1`` and ``OW`` likewise; the caller guarantees both >= 1.
    Work is split over (row of cols, sample) pairs.
    Reference: Chellapilla et al., 2006.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad_h - kernel_h) // stride_h + 1
    cdef Py_ssize_t OW = (W + 2 * pad_w - kernel_w) // stride_w + 1
    cdef Py_ssize_t rows = C * kernel_h * kernel_w
    cdef Py_ssize_t task, row, n, c, i, j, oh, ow, ih, ow_lo, ow_hi
    cdef floating* dst
    cdef const floating* src

    for task in prange(rows * N, nogil=True, num_threads=num_threads, schedule="static"):
        row = task // N
        n = task - row * N
        c = row // (kernel_h * kernel_w)
        i = (row // kernel_w) % kernel_h
        j = row % kernel_w
        ow_lo = _first_valid(pad_w, j, stride_w)
        ow_hi = _end_valid(W, pad_w, j, stride_w, OW)
        if ow_hi < ow_lo:
            ow_hi = ow_lo
        for oh in range(OH):
            dst = &cols[row, (n * OH + oh) * OW]
            ih = oh * stride_h - pad_h + i
            if ih < 0 or ih >= H:
                for ow in range(OW):
                    dst[ow] = 0
                continue
            src = &x[n, c, ih, 0]
            for ow in range(ow_lo):
                dst[ow] = 0
            if stride_w == 1:
                for ow in range(ow_lo, ow_hi):
                    dst[ow] = src[ow - pad_w + j]
            else:
                for ow in range(ow_lo, ow_hi):
                    dst[ow] = src[ow * stride_w - pad_w + j]
            for ow in range(ow_hi, OW):
                dst[ow] = 0


def col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] dx,
           int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
           int num_threads=1):
    """Fold columns back into an image, summing overlapping taps (the adjoint of im2col).

    Args:
        cols (IN): shape ``(C*kH*kW, N*OH*OW)``, float32 or float64, C-contiguous, laid out
            as written by :func:`im2col`.
        dx (OUT): shape ``(N, C, H, W)``, same dtype; fully overwritten (it need not be
            zeroed): ``dx[n, c, h, w]`` is the sum of every entry of ``cols`` that im2col
            would have copied from ``x[n, c, h, w]``; taps that fall into the padding are
            dropped.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, num_threads: as for
            :func:`im2col`.

    Work is split over (sample, channel) planes, so no two threads write the same element.
    Reference: Chellapilla et al., 2006 (backward of the unrolled convolution).
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad_h - kernel_h) // stride_h + 1
    cdef Py_ssize_t OW = (W + 2 * pad_w - kernel_w) // stride_w + 1
    cdef Py_ssize_t task, row, n, c, i, j, h, w, oh, ow, ih, ow_lo, ow_hi
    cdef floating* dst
    cdef const floating* src

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // C
        c = task - n * C
        for h in range(H):
            dst = &dx[n, c, h, 0]
            for w in range(W):
                dst[w] = 0
        for i in range(kernel_h):
            for j in range(kernel_w):
                row = (c * kernel_h + i) * kernel_w + j
                ow_lo = _first_valid(pad_w, j, stride_w)
                ow_hi = _end_valid(W, pad_w, j, stride_w, OW)
                for oh in range(OH):
                    ih = oh * stride_h - pad_h + i
                    if ih < 0 or ih >= H:
                        continue
                    dst = &dx[n, c, ih, 0]
                    src = &cols[row, (n * OH + oh) * OW]
                    if stride_w == 1:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow - pad_w + j] += src[ow]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow * stride_w - pad_w + j] += src[ow]


def rows_to_nchw(const floating[:, ::1] rows, const floating[::1] bias, bint use_bias,
                 floating[:, :, ::1] out, int num_threads=1):
    """Reorder a GEMM result from channel-major to sample-major, adding the bias.

    ``out[n, c, p] = rows[c, n*P + p] + bias[c]`` (``+ bias[c]`` only when ``use_bias``).

    Args:
        rows (IN): shape ``(C, N*P)``, float32 or float64, C-contiguous (``P = OH*OW``).
        bias (IN): shape ``(C,)``, same dtype; read only when ``use_bias`` is true.
        use_bias: whether to add ``bias``.
        out (OUT): shape ``(N, C, P)``, same dtype; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over (sample, channel) pairs.
    """
    cdef Py_ssize_t N = out.shape[0], C = out.shape[1], P = out.shape[2]
    cdef Py_ssize_t task, n, c, p
    cdef floating b
    cdef floating* dst
    cdef const floating* src

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // C
        c = task - n * C
        dst = &out[n, c, 0]
        src = &rows[c, n * P]
        b = bias[c] if use_bias else 0
        for p in range(P):
            dst[p] = src[p] + b


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
