"""Normalization kernels: BatchNorm, per-activation BatchNorm, LayerNorm, GroupNorm, InstanceNorm.

Every statistics kernel sees its input as a C-contiguous 3-D array ``x`` of shape ``(A, C, B)``
and computes one statistic per *channel* ``c`` over the ``A * B`` values ``x[:, c, :]``; the
norms differ only in the view (shown for an ``(N, C, H, W)`` input):

=================  ======================  ========  ======================================
norm               view of the input       channels  affine step
=================  ======================  ========  ======================================
BatchNorm          (N, C, H*W)             C         in the core (gamma, beta per channel)
per-activation BN  (N, C*H*W, 1)           C*H*W     in the core (gamma, beta per position)
InstanceNorm       (1, N*C, H*W)           N*C       separate: per channel (``normalize``)
GroupNorm          (1, N*G, C/G*H*W)       N*G       separate: per channel (``normalize``)
LayerNorm          (1, N, C*H*W)           N         separate: per position (``scale_shift``)
=================  ======================  ========  ======================================

(LayerNorm in general: ``(1, R, D)`` with ``D`` the product of ``normalized_shape`` and ``R``
the product of the leading dimensions; BatchNorm on ``(N, C)``: ``(N, C, 1)``.) Where a norm's
parameters are not per view-channel, the core runs with gamma = 1 and beta = 0 and the affine
step follows as its own kernel call; its backward (``scale_shift_backward``) comes first and
the core's backward (gamma = 1) after.

With ``B == 1`` (one value per row and channel) every entry point below runs its column
version: the same formulas, looping along the contiguous rows over blocks of 256 channels,
instead of one C call per value. Measured with callgrind (kernel instructions, one thread):
BatchNorm on (64, 6272) float32 (per-activation BatchNorm of 64 x 32 x 14 x 14), 3 training
forward + backward passes: 287 -> 14.5 million; on (64, 128), 20 training and 20 eval passes:
68.1 -> 3.6 million. ``B > 1`` runs exactly the code it ran before (the same machine code and
instruction counts).

The entry points:

========================  =============================================================
channel_stats             per-channel mean and biased variance only (a SyncBatchNorm's
                          local statistics, with count ``A * B``)
normalize                 ``(x - mean) * scale + shift`` with given statistics (BatchNorm
                          in eval mode, a SyncBatchNorm with the global statistics; with
                          mean 0 the per-channel affine step of GroupNorm/InstanceNorm)
forward_train             statistics, then normalization (two passes in memory order)
backward                  the two per-channel sums, then dx (BatchNorm's backward; the core
                          of the other norms with gamma = 1; two passes in memory order)
grad_sums                 the two per-channel sums of the backward only (a SyncBatchNorm's
                          local sums, to be summed over the processes)
input_grad                dx from given sums and count (a SyncBatchNorm's dx from the global
                          sums; ``backward`` is this and ``grad_sums`` fused)
scale_shift               ``x * w + b`` with one (w, b) per position (LayerNorm's affine)
scale_shift_backward      its backward from x and the segments' statistics: dw, db, d xhat
========================  =============================================================

All statistics and per-channel coefficients are float64; data is float32 or float64 (fused type).
The kernels trust their inputs (shapes, contiguity, dtypes are checked by ``minidl.functional``),
release the GIL and run channels (or rows ``(a, c)``) in parallel with OpenMP when it was compiled
in. The inner loops are C, in ``_batchnorm.h``.
Arguments are marked IN (read) or OUT (written).

Integer arithmetic: indices and sizes are ``Py_ssize_t`` (``ptrdiff_t`` in the header), bounded
by the size of the arrays (each checked in Python to fit in memory); ``num_threads`` is an
``int`` from 1 to 1024. The reductions go in two steps: each row ``x[a, c, :]`` is summed
on one thread (the rows split among the threads, which then read memory in order), and each
channel adds its rows' sums in row order. The order is fixed, so no result depends on the
number of threads.
"""
from cython.parallel cimport prange, threadid
from libc.math cimport sqrt
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc

import numpy as np

from ._common cimport build_facts, ceil_div, floating, round_up
from ._pool2x2 cimport fill_corners, fill_owners, pool_plane_2x2, pool_plane_2x2_grad, use_table

# A channel whose mean lies further than sqrt(CANCEL_RATIO) standard deviations from its first
# value gets a second pass centered on the first-pass mean: the shifted one-pass formula loses
# about log10(m^2 / var) digits. (A value is at most sqrt(n - 1) standard deviations from the
# mean, so this needs channels of more than CANCEL_RATIO values.)
cdef double CANCEL_RATIO = 1e6


cdef extern from "_batchnorm.h" nogil:
    void minidl_shifted_sums_f(const float* x, Py_ssize_t n, double k, double* s1, double* s2)
    void minidl_shifted_sums_d(const double* x, Py_ssize_t n, double k, double* s1, double* s2)
    void minidl_product_sums_f(const float* dy, const float* x, Py_ssize_t n, double mean,
                               double* s_dy, double* s_dyx)
    void minidl_product_sums_d(const double* dy, const double* x, Py_ssize_t n, double mean,
                               double* s_dy, double* s_dyx)
    void minidl_affine_f(const float* x, float* out, Py_ssize_t n, double mean, double scale,
                         double shift)
    void minidl_affine_d(const double* x, double* out, Py_ssize_t n, double mean, double scale,
                         double shift)
    void minidl_affine_relu_f(const float* x, float* out, Py_ssize_t n, double mean,
                              double scale, double shift)
    void minidl_affine_relu_d(const double* x, double* out, Py_ssize_t n, double mean,
                              double scale, double shift)
    void minidl_relu_mask_f(const float* dy, const float* y, float* g, Py_ssize_t n)
    void minidl_relu_mask_d(const double* dy, const double* y, double* g, Py_ssize_t n)
    void minidl_relu_mask_affine_f(const float* dy, const float* x, float* g, Py_ssize_t n,
                                   double mean, double scale, double shift)
    void minidl_relu_mask_affine_d(const double* dy, const double* x, double* g, Py_ssize_t n,
                                   double mean, double scale, double shift)
    void minidl_col_relu_mask_affine_f(const float* dy, const float* x, float* g, Py_ssize_t n,
                                       const double* mean, const double* scale,
                                       const double* shift)
    void minidl_col_relu_mask_affine_d(const double* dy, const double* x, double* g,
                                       Py_ssize_t n, const double* mean, const double* scale,
                                       const double* shift)
    void minidl_norm_dx_f(const float* dy, const float* x, float* dx, Py_ssize_t n, double mean,
                          double k, double mean_dy, double proj)
    void minidl_norm_dx_d(const double* dy, const double* x, double* dx, Py_ssize_t n,
                          double mean, double k, double mean_dy, double proj)
    void minidl_scale_shift_f(const float* x, float* out, Py_ssize_t n, const double* w,
                              const double* b)
    void minidl_scale_shift_d(const double* x, double* out, Py_ssize_t n, const double* w,
                              const double* b)
    void minidl_scale_shift_grad_f(const float* dy, const float* x, float* dxhat, Py_ssize_t n,
                                   double mean, double invstd, const double* w, double* dw,
                                   double* db)
    void minidl_scale_shift_grad_d(const double* dy, const double* x, double* dxhat,
                                   Py_ssize_t n, double mean, double invstd, const double* w,
                                   double* dw, double* db)
    void minidl_col_shifted_sums_f(const float* x, Py_ssize_t n, const double* k, double* s1,
                                   double* s2)
    void minidl_col_shifted_sums_d(const double* x, Py_ssize_t n, const double* k, double* s1,
                                   double* s2)
    void minidl_col_product_sums_f(const float* dy, const float* x, Py_ssize_t n,
                                   const double* mean, double* s_dy, double* s_dyx)
    void minidl_col_product_sums_d(const double* dy, const double* x, Py_ssize_t n,
                                   const double* mean, double* s_dy, double* s_dyx)
    void minidl_col_affine_f(const float* x, float* out, Py_ssize_t n, const double* mean,
                             const double* scale, const double* shift)
    void minidl_col_affine_d(const double* x, double* out, Py_ssize_t n, const double* mean,
                             const double* scale, const double* shift)
    void minidl_col_affine_relu_f(const float* x, float* out, Py_ssize_t n, const double* mean,
                                  const double* scale, const double* shift)
    void minidl_col_affine_relu_d(const double* x, double* out, Py_ssize_t n,
                                  const double* mean, const double* scale, const double* shift)
    void minidl_col_norm_dx_f(const float* dy, const float* x, float* dx, Py_ssize_t n,
                              const double* mean, const double* k, const double* mean_dy,
                              const double* proj)
    void minidl_col_norm_dx_d(const double* dy, const double* x, double* dx, Py_ssize_t n,
                              const double* mean, const double* k, const double* mean_dy,
                              const double* proj)

#: What this extension was compiled with (read by ``minidl.show_config()``).
BUILD = build_facts()


cdef inline void _shifted_sums(const floating* x, Py_ssize_t n, double k,
                               double* s1, double* s2) noexcept nogil:
    """s1 += sum(x - k), s2 += sum((x - k)^2) over n contiguous values (vectorized C)."""
    if floating is float:
        minidl_shifted_sums_f(x, n, k, s1, s2)
    else:
        minidl_shifted_sums_d(x, n, k, s1, s2)


cdef inline void _product_sums(const floating* dy, const floating* x, Py_ssize_t n, double mean,
                               double* s_dy, double* s_dyx) noexcept nogil:
    """s_dy += sum(dy), s_dyx += sum(dy * (x - mean)) over n contiguous values."""
    if floating is float:
        minidl_product_sums_f(dy, x, n, mean, s_dy, s_dyx)
    else:
        minidl_product_sums_d(dy, x, n, mean, s_dy, s_dyx)


cdef inline void _affine(const floating* x, floating* out, Py_ssize_t n, double mean,
                         double scale, double shift, bint relu=False) noexcept nogil:
    """out = (x - mean) * scale + shift over n contiguous values, computed in float64; then
    ``max(out, 0)`` in the same pass when ``relu``."""
    if floating is float:
        if relu:
            minidl_affine_relu_f(x, out, n, mean, scale, shift)
        else:
            minidl_affine_f(x, out, n, mean, scale, shift)
    elif relu:
        minidl_affine_relu_d(x, out, n, mean, scale, shift)
    else:
        minidl_affine_d(x, out, n, mean, scale, shift)


cdef inline void _relu_mask(const floating* dy, const floating* y, floating* g,
                            Py_ssize_t n) noexcept nogil:
    """g = 0 where y <= 0, else dy, over n contiguous values (g may be dy)."""
    if floating is float:
        minidl_relu_mask_f(dy, y, g, n)
    else:
        minidl_relu_mask_d(dy, y, g, n)


cdef inline void _relu_mask_affine(const floating* dy, const floating* x, floating* g,
                                   Py_ssize_t n, double mean, double scale,
                                   double shift) noexcept nogil:
    """g = 0 where (x - mean) * scale + shift, rounded to x's type, is <= 0, else dy, over n
    contiguous values (g may be dy): the ReLU's mask recomputed from BatchNorm's input."""
    if floating is float:
        minidl_relu_mask_affine_f(dy, x, g, n, mean, scale, shift)
    else:
        minidl_relu_mask_affine_d(dy, x, g, n, mean, scale, shift)


cdef inline void _col_relu_mask_affine(const floating* dy, const floating* x, floating* g,
                                       Py_ssize_t n, const double* mean, const double* scale,
                                       const double* shift) noexcept nogil:
    """:func:`_relu_mask_affine` on a row segment of n channels."""
    if floating is float:
        minidl_col_relu_mask_affine_f(dy, x, g, n, mean, scale, shift)
    else:
        minidl_col_relu_mask_affine_d(dy, x, g, n, mean, scale, shift)


cdef inline void _norm_dx(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                          double mean, double k, double mean_dy, double proj) noexcept nogil:
    """dx = k * (dy - mean_dy - (x - mean) * proj) over n contiguous values, in float64."""
    if floating is float:
        minidl_norm_dx_f(dy, x, dx, n, mean, k, mean_dy, proj)
    else:
        minidl_norm_dx_d(dy, x, dx, n, mean, k, mean_dy, proj)


cdef inline void _scale_shift(const floating* x, floating* out, Py_ssize_t n, const double* w,
                             const double* b) noexcept nogil:
    """out = x * w + b over n contiguous positions (w, b per position), in float64."""
    if floating is float:
        minidl_scale_shift_f(x, out, n, w, b)
    else:
        minidl_scale_shift_d(x, out, n, w, b)


cdef inline void _scale_shift_grad(const floating* dy, const floating* x, floating* dxhat,
                                   Py_ssize_t n, double mean, double invstd, const double* w,
                                   double* dw, double* db) noexcept nogil:
    """dw += dy * (x - mean) * invstd, db += dy, dxhat = dy * w over n contiguous positions."""
    if floating is float:
        minidl_scale_shift_grad_f(dy, x, dxhat, n, mean, invstd, w, dw, db)
    else:
        minidl_scale_shift_grad_d(dy, x, dxhat, n, mean, invstd, w, dw, db)


# ----------------------------------------------------------------------------------------------
# The (A, C, 1) view: BatchNorm on (N, C) and per-activation BatchNorm. With one value per row
# and channel, the row-wise loops below would make one C call per value; these run along the
# contiguous rows instead, COLUMN_BLOCK channels at a time (one block per OpenMP iteration; its
# scratch vectors live on that call's stack). Every channel still sums its rows in order, so the
# results do not depend on the number of threads. Same formulas as the row-wise kernels.

cdef enum:
    COLUMN_BLOCK = 256


cdef inline Py_ssize_t _block_size(Py_ssize_t C, Py_ssize_t c0) noexcept nogil:
    """How many of the columns c0.. form the block that starts there."""
    return C - c0 if C - c0 < COLUMN_BLOCK else COLUMN_BLOCK


cdef inline void _col_shifted_sums(const floating* x, Py_ssize_t n, const double* k, double* s1,
                                   double* s2) noexcept nogil:
    if floating is float:
        minidl_col_shifted_sums_f(x, n, k, s1, s2)
    else:
        minidl_col_shifted_sums_d(x, n, k, s1, s2)


cdef inline void _col_product_sums(const floating* dy, const floating* x, Py_ssize_t n,
                                   const double* mean, double* s_dy,
                                   double* s_dyx) noexcept nogil:
    if floating is float:
        minidl_col_product_sums_f(dy, x, n, mean, s_dy, s_dyx)
    else:
        minidl_col_product_sums_d(dy, x, n, mean, s_dy, s_dyx)


cdef inline void _col_affine(const floating* x, floating* out, Py_ssize_t n, const double* mean,
                             const double* scale, const double* shift,
                             bint relu=False) noexcept nogil:
    if floating is float:
        if relu:
            minidl_col_affine_relu_f(x, out, n, mean, scale, shift)
        else:
            minidl_col_affine_f(x, out, n, mean, scale, shift)
    elif relu:
        minidl_col_affine_relu_d(x, out, n, mean, scale, shift)
    else:
        minidl_col_affine_d(x, out, n, mean, scale, shift)


cdef inline void _col_norm_dx(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                              const double* mean, const double* k, const double* mean_dy,
                              const double* proj) noexcept nogil:
    if floating is float:
        minidl_col_norm_dx_f(dy, x, dx, n, mean, k, mean_dy, proj)
    else:
        minidl_col_norm_dx_d(dy, x, dx, n, mean, k, mean_dy, proj)


cdef void _column_stats(const floating* x, Py_ssize_t A, Py_ssize_t C, Py_ssize_t c0,
                        double* mean, double* var) noexcept nogil:
    """Mean and biased variance of the block of columns c0.. of the (A, C) array x: shifted
    sums around the first row, an exact second pass for a column whose mean lies far from its
    first value (as :func:`_channel_stats_finish`)."""
    cdef double k[COLUMN_BLOCK]
    cdef double s1[COLUMN_BLOCK]
    cdef double s2[COLUMN_BLOCK]
    cdef double count = <double>A, m, v, d, t1, t2, shift
    cdef Py_ssize_t a, i, n = _block_size(C, c0)
    for i in range(n):
        k[i] = x[c0 + i]
        s1[i] = 0
        s2[i] = 0
    for a in range(A):
        _col_shifted_sums(x + a * C + c0, n, k, s1, s2)
    for i in range(n):
        m = s1[i] / count
        v = s2[i] / count - m * m
        if v < 0:
            v = 0
        if m != 0 and m * m > CANCEL_RATIO * v:  # the corrected two-pass algorithm
            shift = k[i] + m
            t1 = 0
            t2 = 0
            for a in range(A):
                d = x[a * C + c0 + i] - shift
                t1 += d
                t2 += d * d
            k[i] = shift
            m = t1 / count
            v = t2 / count - m * m
            if v < 0:
                v = 0
        mean[c0 + i] = k[i] + m
        var[c0 + i] = v


cdef void _column_normalize(const floating* x, floating* out, Py_ssize_t A, Py_ssize_t C,
                            Py_ssize_t c0, const double* mean, const double* scale,
                            const double* shift, bint relu) noexcept nogil:
    """out = (x - mean) * scale + shift (then max(out, 0) when ``relu``) on the block of
    columns c0.. of every row."""
    cdef Py_ssize_t a, n = _block_size(C, c0)
    for a in range(A):
        _col_affine(x + a * C + c0, out + a * C + c0, n, mean + c0, scale + c0, shift + c0,
                    relu)


cdef void _column_forward_train(const floating* x, floating* out, Py_ssize_t A, Py_ssize_t C,
                                Py_ssize_t c0, const double* gamma, const double* beta,
                                double eps, double* mean, double* var,
                                bint relu) noexcept nogil:
    """:func:`forward_train` on the block of columns c0..: statistics, then normalization."""
    cdef double scale[COLUMN_BLOCK]
    cdef Py_ssize_t a, i, n = _block_size(C, c0)
    _column_stats(x, A, C, c0, mean, var)
    for i in range(n):
        scale[i] = gamma[c0 + i] * (1.0 / sqrt(var[c0 + i] + eps))
    for a in range(A):
        _col_affine(x + a * C + c0, out + a * C + c0, n, mean + c0, scale, beta + c0, relu)


cdef void _column_sums(const floating* dy, const floating* x, Py_ssize_t A, Py_ssize_t C,
                       Py_ssize_t c0, const double* mean, double* sum_dy,
                       double* sum_dy_xmu) noexcept nogil:
    """sum_dy, sum_dy_xmu of the block of columns c0.. (written, not accumulated)."""
    cdef Py_ssize_t a, i, n = _block_size(C, c0)
    for i in range(c0, c0 + n):
        sum_dy[i] = 0
        sum_dy_xmu[i] = 0
    for a in range(A):
        _col_product_sums(dy + a * C + c0, x + a * C + c0, n, mean + c0, sum_dy + c0,
                          sum_dy_xmu + c0)


cdef void _column_relu_mask(const floating* dy, const floating* x, floating* g, Py_ssize_t A,
                            Py_ssize_t C, Py_ssize_t c0, const double* mean, const double* gamma,
                            const double* invstd, const double* shift) noexcept nogil:
    """g = dy masked by the ReLU that followed, recomputed from x (:func:`backward`'s
    ``relu_shift``), on the block of columns c0.."""
    cdef double k[COLUMN_BLOCK]
    cdef Py_ssize_t a, i, n = _block_size(C, c0)
    for i in range(n):
        k[i] = gamma[c0 + i] * invstd[c0 + i]
    for a in range(A):
        _col_relu_mask_affine(dy + a * C + c0, x + a * C + c0, g + a * C + c0, n, mean + c0, k,
                              shift + c0)


cdef void _column_dx(const floating* dy, const floating* x, floating* dx, Py_ssize_t A,
                     Py_ssize_t C, Py_ssize_t c0, const double* mean, const double* invstd,
                     const double* gamma, const double* sum_dy, const double* sum_dy_xmu,
                     double count, bint training) noexcept nogil:
    """dx of the block of columns c0.. from the sums (:func:`backward`'s formula)."""
    cdef double k[COLUMN_BLOCK]
    cdef double md[COLUMN_BLOCK]
    cdef double p[COLUMN_BLOCK]
    cdef Py_ssize_t a, i, n = _block_size(C, c0)
    for i in range(n):
        k[i] = gamma[c0 + i] * invstd[c0 + i]
        md[i] = 0
        p[i] = 0
        if training:
            md[i] = sum_dy[c0 + i] / count
            p[i] = invstd[c0 + i] * invstd[c0 + i] * sum_dy_xmu[c0 + i] / count
    for a in range(A):
        _col_norm_dx(dy + a * C + c0, x + a * C + c0, dx + a * C + c0, n, mean + c0, k, md, p)


cdef double* _doubles(Py_ssize_t count) except NULL:
    """``count`` doubles of scratch (freed by the caller)."""
    cdef double* p = <double*>malloc(count * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


cdef inline void _row_product_sums(const floating* dy, const floating* x, Py_ssize_t B,
                                   double mean, double* out) noexcept nogil:
    """out[0], out[1] = sum(dy), sum(dy * (x - mean)) over one row of B values."""
    cdef double s_dy = 0, s_dyx = 0
    _product_sums(dy, x, B, mean, &s_dy, &s_dyx)
    out[0] = s_dy
    out[1] = s_dyx


cdef inline void _add_rows(const double* partial, Py_ssize_t A, Py_ssize_t C, Py_ssize_t c,
                           double* first, double* second) noexcept nogil:
    """Channel c's two sums: its rows' (``partial[2r]`` and ``partial[2r + 1]``, r = a*C + c)
    added in row order."""
    cdef double t0 = 0, t1 = 0
    cdef Py_ssize_t a
    for a in range(A):
        t0 = t0 + partial[2 * (a * C + c)]
        t1 = t1 + partial[2 * (a * C + c) + 1]
    first[0] = t0
    second[0] = t1


cdef void _row_shifted_sums(const floating* x, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
                            double* partial, int num_threads) noexcept nogil:
    """partial[2r], partial[2r + 1] = sum(x_r - k), sum((x_r - k)^2) over row r = a*C + c,
    with k = x[0, c, 0] (the channel's first value), the rows split among the threads."""
    cdef Py_ssize_t r
    cdef double s1, s2
    for r in prange(A * C, num_threads=num_threads, schedule="static"):
        s1 = 0
        s2 = 0
        _shifted_sums(x + r * B, B, x[(r % C) * B], &s1, &s2)
        partial[2 * r] = s1
        partial[2 * r + 1] = s2


cdef void _channel_stats_finish(const floating* x, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
                                Py_ssize_t c, const double* partial, double* mean,
                                double* var) noexcept nogil:
    """Mean and biased variance of channel c from its rows' shifted sums (added in row order;
    an exact second pass over the channel if needed)."""
    cdef double k = x[c * B]          # shift: the channel's first value
    cdef double n = <double>(A * B)
    cdef double s1, s2, m, v, d
    cdef Py_ssize_t a, i
    cdef const floating* row
    _add_rows(partial, A, C, c, &s1, &s2)
    m = s1 / n
    v = s2 / n - m * m
    if v < 0:
        v = 0
    if m != 0 and m * m > CANCEL_RATIO * v:
        # corrected two-pass algorithm (Chan, Golub & LeVeque 1983, eq. 1.7) around k + m
        k = k + m
        s1 = 0
        s2 = 0
        for a in range(A):
            row = x + (a * C + c) * B
            for i in range(B):
                d = row[i] - k
                s1 += d
                s2 += d * d
        m = s1 / n
        v = s2 / n - m * m
        if v < 0:
            v = 0
    mean[0] = k + m
    var[0] = v


cdef void _stats(const floating* x, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, double* mean,
                 double* var, double* partial, int num_threads) noexcept nogil:
    """Per-channel mean and biased variance (``B > 1``): the rows' sums on the threads in
    memory order, then each channel's from its rows' (``partial``: 2*A*C doubles of
    scratch)."""
    cdef Py_ssize_t c
    _row_shifted_sums(x, A, C, B, partial, num_threads)
    for c in prange(C, num_threads=num_threads, schedule="static"):
        _channel_stats_finish(x, A, C, B, c, partial, &mean[c], &var[c])


def channel_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                  int num_threads=1):
    """Per-channel mean and biased variance of ``x`` viewed as ``(A, C, B)``.

    IN  x: (A, C, B) float32/float64, C-contiguous.
    OUT mean: (C,) float64, the mean of x[:, c, :].
    OUT var: (C,) float64, the biased variance (divided by A*B).

    Uses shifted sums in float64 (shift = the channel's first value, so a constant channel gets
    exactly its value as mean and 0 as variance) and, when the mean is far from that shift
    compared with the spread, an exact centered second pass (no catastrophic cancellation).

    Preconditions (checked by the caller, not here): ``A, C, B >= 1`` (the first value of each
    channel is read as its shift); ``mean`` and ``var`` of length ``C``; ``num_threads >= 1``.

    Raises:
        MemoryError: the 2*A*C doubles of the rows' sums (``B > 1``) could not be allocated.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], c
    cdef const floating* xp = &x[0, 0, 0]
    cdef Py_ssize_t blk
    if B == 1:  # one value per row and channel: the column kernels
        with nogil:
            for blk in prange(ceil_div(C, COLUMN_BLOCK), num_threads=num_threads,
                              schedule="static"):
                _column_stats(xp, A, C, blk * COLUMN_BLOCK, &mean[0], &var[0])
        return
    cdef double* partial = _doubles(2 * A * C)
    try:
        with nogil:
            _stats(xp, A, C, B, &mean[0], &var[0], partial, num_threads)
    finally:
        free(partial)


# ----------------------------------------------------------------------------------------------
# BatchNorm -> ReLU -> MaxPool2D(2) in one pass (minidl.Sequential runs the three layers so): the
# forward kernels max-pool each (H, W) plane of their output right after computing it, while it
# is in the core's cache (with out=None the plane goes to a per-thread scratch plane and only the
# pooled output is written), and the backward kernel writes each plane of the pooled gradient
# into dx (MaxPool2D's backward) just before it masks it by the ReLU (recomputed from x:
# relu_shift) and sums it. The pooling is _pool2x2.pxd's, the same per-plane code as
# MaxPool2D's, so values, indices and gradients are those of the three layers run one after the
# other, bit for bit, without the passes over memory between them or a full-size gradient.

cdef struct _Pool:
    # one plane of the 2x2, stride-2 max pool: the input plane is (H, W), the pooled one
    # (OH, OW) = (H // 2, W // 2); corner / owner: _pool2x2.pxd's tables (NULL: along rows)
    Py_ssize_t H, W, OH, OW
    const int32_t* corner
    const int32_t* owner


cdef class _PoolPlan:
    """The :c:type:`_Pool` of planes of ``B = H * W`` values ``width`` wide, with the tables it
    points to (kept alive by this object)."""
    cdef _Pool pool
    cdef int32_t[::1] table

    def __cinit__(self, Py_ssize_t B, Py_ssize_t width, bint backward):
        self.pool.W = width
        self.pool.H = B // width
        self.pool.OH = self.pool.H // 2
        self.pool.OW = width // 2
        self.pool.corner = NULL
        self.pool.owner = NULL
        if not use_table(self.pool.H, width, self.pool.OW):
            return
        if backward:
            self.table = np.zeros(B, np.int32)
            fill_owners(self.table, width, self.pool.OH, self.pool.OW)
            self.pool.owner = &self.table[0]
        else:
            self.table = np.empty(self.pool.OH * self.pool.OW, np.int32)
            fill_corners(self.table, width, self.pool.OH, self.pool.OW)
            self.pool.corner = &self.table[0]


cdef inline void _pool_plane(const _Pool* pool, const floating* plane, floating* pooled,
                             int64_t* argmax, Py_ssize_t r) noexcept nogil:
    """Max-pool ``plane`` (row ``r = a*C + c`` of the output) into row ``r`` of ``pooled`` and
    of ``argmax`` (NULL: the maxima only)."""
    cdef Py_ssize_t size = pool.OH * pool.OW
    pool_plane_2x2(plane, pool.W, pool.OH, pool.OW, pool.corner, pooled + r * size,
                   NULL if argmax == NULL else argmax + r * size)


cdef floating[:, ::1] _planes(const floating[:, :, ::1] x, floating[:, :, ::1] out,
                              int num_threads):
    """Without ``out`` (only the pooled output wanted): one plane of scratch per thread, where
    each row of the output is written and pooled; else None."""
    if out is not None:
        return None
    return np.empty((num_threads, x.shape[2]), np.float32 if floating is float else np.float64)


def normalize(const floating[:, :, ::1] x, const double[::1] mean, const double[::1] scale,
              const double[::1] shift, floating[:, :, ::1] out, int num_threads=1,
              bint relu=False, floating[:, :, ::1] pool_out=None,
              int64_t[:, :, ::1] pool_argmax=None, Py_ssize_t width=0):
    """out[a, c, b] = (x[a, c, b] - mean[c]) * scale[c] + shift[c], computed in float64.

    IN  x: (A, C, B) float32/float64, C-contiguous.
    IN  mean, scale, shift: (C,) float64 (BatchNorm: scale = gamma / sqrt(var + eps), shift = beta).
    OUT out: (A, C, B), same dtype as x; may be x itself (in place).
    IN  relu: then ``out = max(out, 0)`` in the same pass (a following ReLU, bit for bit).
    OUT pool_out, pool_argmax: None, or ``(A, C, (H // 2) * (W // 2))`` (x's dtype, int64;
        ``pool_argmax`` may be None alone): then each ``(H, W) = (B // width, width)`` plane of
        ``out`` is max-pooled with 2x2 windows and stride 2 right after it is written, as
        ``_pool.max_pool2d_forward`` would pool ``out`` (the same values and indices).
        ``out`` may then be None: each plane is written to a per-thread scratch plane and
        pooled from there, so only the pooled output reaches memory.

    Subtracting the mean before scaling keeps a constant channel at exactly ``shift``.

    Preconditions (checked by the caller, not here): ``out`` has ``x``'s shape and is ``x``
    itself or shares no memory with it; ``mean``, ``scale``, ``shift`` of length ``C``;
    ``num_threads >= 1``; with ``pool_out``: ``B == H * W`` with ``H, W >= 2``, the pooled
    arrays of the shape above sharing no memory with the others.
    """
    _normalize(x, &mean[0], &scale[0], &shift[0], out, num_threads, relu, pool_out,
               pool_argmax, width)


def normalize_running(const floating[:, :, ::1] x, const double[::1] mean,
                      const double[::1] running_var, const double[::1] gamma,
                      const double[::1] beta, double eps, double[::1] invstd,
                      floating[:, :, ::1] out, int num_threads=1, bint relu=False,
                      floating[:, :, ::1] pool_out=None, int64_t[:, :, ::1] pool_argmax=None,
                      Py_ssize_t width=0):
    """Eval-mode BatchNorm: ``invstd = 1 / sqrt(running_var + eps)``, then :func:`normalize`
    with ``scale = gamma * invstd`` and ``shift = beta``, all in float64: the same operations
    in the same order as ``1.0 / np.sqrt(running_var + eps)`` and ``gamma * invstd`` (the
    same bits), without four temporary NumPy arrays per call.

    IN  x: (A, C, B) float32/float64, C-contiguous.
    IN  mean, running_var, gamma, beta: (C,) float64 (``mean`` is the running mean).
    IN  eps: added to the variance.
    OUT invstd: (C,) float64, ``1 / sqrt(running_var + eps)`` (the cache keeps it).
    OUT out: (A, C, B), x's dtype (may be x itself).
    IN  relu: then ``out = max(out, 0)`` in the same pass.
    OUT pool_out, pool_argmax: None, or the 2x2 max pool of ``out`` (see :func:`normalize`;
        ``out`` may then be None).

    Preconditions (checked by the caller, not here): those of :func:`normalize`; the vectors of
    length ``C >= 1``; ``num_threads >= 1``.

    Raises:
        MemoryError: the C doubles of scale could not be allocated.
    """
    cdef Py_ssize_t C = x.shape[1], c
    cdef double* scale = <double*>malloc(C * sizeof(double))
    if scale == NULL:
        raise MemoryError()
    for c in range(C):
        invstd[c] = 1.0 / sqrt(running_var[c] + eps)
        scale[c] = gamma[c] * invstd[c]
    try:
        _normalize(x, &mean[0], scale, &beta[0], out, num_threads, relu, pool_out, pool_argmax,
                   width)
    finally:
        free(scale)


cdef void _normalize(const floating[:, :, ::1] x, const double* mean, const double* scale,
                     const double* shift, floating[:, :, ::1] out, int num_threads,
                     bint relu, floating[:, :, ::1] pool_out, int64_t[:, :, ::1] pool_argmax,
                     Py_ssize_t width):
    """The loops of :func:`normalize` (per-channel pointers of length C)."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, c, blk
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* outp = NULL if out is None else &out[0, 0, 0]
    cdef floating[:, ::1] planes = _planes(x, out, num_threads)
    cdef floating* sp = NULL if out is not None else &planes[0, 0]
    cdef floating* row
    cdef _PoolPlan plan = None if pool_out is None else _PoolPlan(B, width, False)
    cdef const _Pool* pool = NULL if plan is None else &plan.pool
    cdef floating* zp = NULL if pool_out is None else &pool_out[0, 0, 0]
    cdef int64_t* ap = NULL if pool_argmax is None else &pool_argmax[0, 0, 0]
    if B == 1:  # one value per row and channel: the column kernels
        with nogil:
            for blk in prange(ceil_div(C, COLUMN_BLOCK), num_threads=num_threads,
                              schedule="static"):
                _column_normalize(xp, outp, A, C, blk * COLUMN_BLOCK, mean, scale, shift, relu)
        return
    with nogil:
        for r in prange(A * C, num_threads=num_threads, schedule="static"):
            c = r % C
            row = outp + r * B if sp == NULL else sp + threadid() * B
            _affine(xp + r * B, row, B, mean[c], scale[c], shift[c], relu)
            if pool != NULL:
                _pool_plane(pool, row, zp, ap, r)


def forward_train(const floating[:, :, ::1] x, const double[::1] gamma, const double[::1] beta,
                  double eps, floating[:, :, ::1] out, double[::1] mean, double[::1] var,
                  int num_threads=1, bint relu=False, floating[:, :, ::1] pool_out=None,
                  int64_t[:, :, ::1] pool_argmax=None, Py_ssize_t width=0):
    """Training-mode forward: the batch statistics, then the normalization.

    IN  x: (A, C, B) float32/float64, C-contiguous.
    IN  gamma, beta: (C,) float64 (ones and zeros without affine parameters).
    IN  eps: added to the variance.
    OUT out: (A, C, B), x's dtype: gamma * (x - mean) / sqrt(var + eps) + beta.
    IN  relu: then ``out = max(out, 0)`` in the same pass (a following ReLU, bit for bit).
    OUT mean, var: (C,) float64, the batch mean and biased variance (as :func:`channel_stats`).
    OUT pool_out, pool_argmax: None, or the 2x2 max pool of ``out`` (see :func:`normalize`;
        ``out`` may then be None).

    Two passes over x, each in memory order with the rows ``(a, c)`` split among the threads:
    the rows' sums (then each channel's statistics from its rows', as :func:`channel_stats`),
    then :func:`normalize`. (It used to take one channel at a time, statistics and then
    normalization while the channel was in cache: one read of x from memory instead of two, but
    the reads jumped from row to row, ``C * B`` values apart, and ran at half the memory's
    speed; (128, 64, 1024) float32 at 2 threads: 4.1 ms, 2.2 in two passes.)

    Preconditions (checked by the caller, not here): ``A, C, B >= 1``; ``out`` has ``x``'s
    shape and is ``x`` itself or shares no memory with it; ``gamma``, ``beta``, ``mean``,
    ``var`` of length ``C``; ``eps >= 0`` (``var + eps == 0`` gives inf, not a crash);
    ``num_threads >= 1``.

    Raises:
        MemoryError: the 2*A*C + C doubles of scratch (``B > 1``) could not be allocated.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], c
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* outp = NULL if out is None else &out[0, 0, 0]
    cdef Py_ssize_t blk
    cdef double* partial = NULL
    cdef double* scale = NULL
    if B == 1:  # one value per row and channel: the column kernels
        with nogil:
            for blk in prange(ceil_div(C, COLUMN_BLOCK), num_threads=num_threads,
                              schedule="static"):
                _column_forward_train(xp, outp, A, C, blk * COLUMN_BLOCK, &gamma[0], &beta[0],
                                      eps, &mean[0], &var[0], relu)
        return
    try:
        partial = _doubles(2 * A * C)
        scale = _doubles(C)
        with nogil:
            _stats(xp, A, C, B, &mean[0], &var[0], partial, num_threads)
        for c in range(C):
            scale[c] = gamma[c] * (1.0 / sqrt(var[c] + eps))
        _normalize(x, &mean[0], scale, &beta[0], out, num_threads, relu, pool_out, pool_argmax,
                   width)
    finally:
        free(partial)
        free(scale)


def backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const double[::1] mean,
             const double[::1] invstd, const double[::1] gamma, bint training,
             floating[:, :, ::1] dx, double[::1] sum_dy, double[::1] sum_dy_xmu,
             int num_threads=1, const floating[:, :, ::1] relu_y=None,
             const int64_t[:, :, ::1] pool_argmax=None, Py_ssize_t width=0,
             const double[::1] relu_shift=None):
    """Backward pass: the two per-channel reductions, then dx.

    IN  dy, x: (A, C, B) float32/float64, C-contiguous, same dtype.
    IN  mean, invstd: (C,) float64, the statistics the forward pass normalized with
        (invstd = 1 / sqrt(var + eps)).
    IN  gamma: (C,) float64 (ones without affine parameters).
    IN  training: whether mean/invstd were the batch's own statistics (then dx includes the
        paths through them) or constants (running statistics: dx = gamma * invstd * dy).
    OUT dx: (A, C, B), dy's dtype.
    OUT sum_dy: (C,) float64, sum of dy[:, c, :]            (= d loss / d beta).
    OUT sum_dy_xmu: (C,) float64, sum of dy * (x - mean[c])  (times invstd = d loss / d gamma).
    IN  relu_y: None, or (A, C, B) of dy's dtype: the output of a ReLU that followed this
        BatchNorm (BatchNorm._backward_relu). dy is then the gradient of the ReLU's output and
        the kernel backpropagates through the ReLU first: each channel's rows of dx are
        overwritten with dy where relu_y > 0 and 0 elsewhere (as relu_backward), and the
        formulas below read dy from there.
    IN  pool_argmax: None, or ``(A, C, (H // 2) * (W // 2))`` int64, the indices a 2x2,
        stride-2 max pool (after the ReLU, with ``relu_y``) of the forward output recorded
        (the forward's ``pool_argmax``); ``dy`` is then the gradient of the pooled output, of
        that shape, and each row of dx is first written with the pool's gradient (dy at the
        window's winner, 0 elsewhere, as ``_pool.max_pool2d_backward``), then masked by the
        ReLU and read as the gradient of this BatchNorm's output. ``width``: W (``B = H * W``).
    IN  relu_shift: None, or (C,) float64, the forward's beta (zeros without affine
        parameters): a ReLU followed, as with ``relu_y``, but its mask is recomputed from x
        (y <= 0 where ``(x - mean) * gamma * invstd + beta``, rounded to x's type, is <= 0:
        the value the forward's ReLU saw, bit for bit) instead of read from its output. Not
        with ``relu_y``.

    With k = gamma * invstd and m = A * B (Ioffe & Szegedy 2015, section 3):
    dx = k * (dy - sum_dy / m - (x - mean) * invstd^2 * sum_dy_xmu / m).

    Two passes, each in memory order with the rows ``(a, c)`` split among the threads: the
    mask or pool gradient and each row's two sums (then each channel's, its rows' added in
    order: the bits of a loop over the channel), then dx. (Taking one channel at a time, to
    find its rows in cache for dx, read rows ``C * B`` values apart at half the memory's
    speed: (128, 64, 1024) float32 at 2 threads, 5.0 ms against 2.8.)

    Preconditions (checked by the caller, not here): ``dy``, ``x`` and ``dx`` of one shape
    ``(A, C, B)`` with ``A, C, B >= 1``, ``dx`` being ``dy`` or ``x`` itself or sharing no memory
    with them (all sums are complete before dx is written); with ``relu_y``: of
    that shape too, and ``dx`` sharing no memory with ``dy``, ``x`` or ``relu_y``; with
    ``pool_argmax``: ``dy`` of its shape, ``B == H * W`` with ``H, W >= 2``, every index the
    one of an element of its window (the kernel only compares them), ``dx`` sharing no memory
    with any input; ``mean``, ``invstd``, ``gamma``, ``sum_dy``, ``sum_dy_xmu`` of length
    ``C``; ``num_threads >= 1``.

    Raises:
        MemoryError: the 2*A*C + 3*C doubles of scratch (``B > 1``) could not be allocated.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], a, c, off, c0, n0, r
    cdef bint recompute = relu_shift is not None  # the ReLU's mask from x
    cdef bint masked = relu_y is not None or recompute
    cdef const double* shift = &relu_shift[0] if recompute else NULL
    cdef const floating* dyp = &dy[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef const floating* yp = &relu_y[0, 0, 0] if relu_y is not None else NULL
    cdef _PoolPlan plan = None if pool_argmax is None else _PoolPlan(B, width, True)
    cdef const _Pool* pool = NULL if plan is None else &plan.pool
    cdef const int64_t* ap = NULL if pool_argmax is None else &pool_argmax[0, 0, 0]
    cdef Py_ssize_t pooled = 0 if pool == NULL else pool.OH * pool.OW  # values per pooled row
    # what the formulas read: dy itself, or dx once the ReLU's mask / the pool's gradient
    # went into it
    cdef const floating* g = <const floating*>dxp if masked or pool != NULL else dyp
    cdef double n = <double>(A * B)
    cdef Py_ssize_t blk
    if B == 1:  # one value per row and channel: the column kernels
        with nogil:
            for blk in prange(ceil_div(C, COLUMN_BLOCK), num_threads=num_threads,
                              schedule="static"):
                c0 = blk * COLUMN_BLOCK
                n0 = _block_size(C, c0)
                if recompute:
                    _column_relu_mask(dyp, xp, dxp, A, C, c0, &mean[0], &gamma[0], &invstd[0],
                                      shift)
                elif masked:
                    for a in range(A):
                        _relu_mask(dyp + a * C + c0, yp + a * C + c0, dxp + a * C + c0, n0)
                _column_sums(g, xp, A, C, c0, &mean[0], &sum_dy[0], &sum_dy_xmu[0])
                _column_dx(g, xp, dxp, A, C, c0, &mean[0], &invstd[0], &gamma[0], &sum_dy[0],
                           &sum_dy_xmu[0], n, training)
        return
    cdef double* partial = _doubles(2 * A * C)
    cdef double* coef = NULL  # per channel: k, md, p
    try:
        coef = _doubles(3 * C)
        with nogil:
            # the ReLU's mask / the pool's gradient into dx, and each row's two sums
            for r in prange(A * C, num_threads=num_threads, schedule="static"):
                c = r % C
                off = r * B
                if pool != NULL:
                    pool_plane_2x2_grad(dyp + r * pooled, ap + r * pooled, pool.H, pool.W,
                                        dxp + off, pool.OH, pool.OW, pool.owner)
                    if recompute:
                        _relu_mask_affine(dxp + off, xp + off, dxp + off, B, mean[c],
                                          gamma[c] * invstd[c], shift[c])
                    elif masked:
                        _relu_mask(dxp + off, yp + off, dxp + off, B)
                elif recompute:
                    _relu_mask_affine(dyp + off, xp + off, dxp + off, B, mean[c],
                                      gamma[c] * invstd[c], shift[c])
                elif masked:
                    _relu_mask(dyp + off, yp + off, dxp + off, B)
                _row_product_sums(g + off, xp + off, B, mean[c], partial + 2 * r)
            # each channel's sums, its rows' added in order, and dx's coefficients
            for c in prange(C, num_threads=num_threads, schedule="static"):
                _add_rows(partial, A, C, c, &sum_dy[c], &sum_dy_xmu[c])
                coef[3 * c] = gamma[c] * invstd[c]
                coef[3 * c + 1] = sum_dy[c] / n if training else 0
                coef[3 * c + 2] = invstd[c] * invstd[c] * sum_dy_xmu[c] / n if training else 0
            for r in prange(A * C, num_threads=num_threads, schedule="static"):
                c = r % C
                off = r * B
                _norm_dx(g + off, xp + off, dxp + off, B, mean[c], coef[3 * c], coef[3 * c + 1],
                         coef[3 * c + 2])
    finally:
        free(partial)
        free(coef)


# ----------------------------------------------------------------------------------------------
# SyncBatchNorm's extension point: the backward above, split at the point where the
# per-channel sums would be summed over processes. Without a ReLU or pool before it, backward
# is grad_sums followed by input_grad (the same sums and dx, bit for bit); it repeats their
# loops because its first pass also writes the ReLU's mask or the pool's gradient.

def grad_sums(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const double[::1] mean,
              double[::1] sum_dy, double[::1] sum_dy_xmu, int num_threads=1):
    """The two per-channel sums of the backward pass, and nothing else.

    IN  dy, x: (A, C, B) float32/float64, C-contiguous, same dtype.
    IN  mean: (C,) float64, the mean the forward pass normalized with (for a SyncBatchNorm the
        global one).
    OUT sum_dy: (C,) float64, sum of dy[:, c, :].
    OUT sum_dy_xmu: (C,) float64, sum of dy * (x - mean[c]).

    The same sums, in the same order, as :func:`backward` computes before it forms dx.

    Preconditions (checked by the caller, not here): ``dy`` and ``x`` of one shape
    ``(A, C, B)`` with ``A, C, B >= 1``; ``mean``, ``sum_dy``, ``sum_dy_xmu`` of length ``C``;
    ``num_threads >= 1``.

    Raises:
        MemoryError: the 2*A*C doubles of the rows' sums (``B > 1``) could not be allocated.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], c, r
    cdef const floating* dyp = &dy[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef Py_ssize_t blk
    if B == 1:  # one value per row and channel: the column kernels
        with nogil:
            for blk in prange(ceil_div(C, COLUMN_BLOCK), num_threads=num_threads,
                              schedule="static"):
                _column_sums(dyp, xp, A, C, blk * COLUMN_BLOCK, &mean[0], &sum_dy[0],
                             &sum_dy_xmu[0])
        return
    cdef double* partial = _doubles(2 * A * C)
    try:
        with nogil:
            for r in prange(A * C, num_threads=num_threads, schedule="static"):
                _row_product_sums(dyp + r * B, xp + r * B, B, mean[r % C], partial + 2 * r)
            for c in prange(C, num_threads=num_threads, schedule="static"):
                _add_rows(partial, A, C, c, &sum_dy[c], &sum_dy_xmu[c])
    finally:
        free(partial)


def input_grad(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const double[::1] mean,
               const double[::1] invstd, const double[::1] gamma, const double[::1] sum_dy,
               const double[::1] sum_dy_xmu, double count, floating[:, :, ::1] dx,
               int num_threads=1):
    """dx of a training-mode normalization from given per-channel sums.

    IN  dy, x: (A, C, B) float32/float64, C-contiguous, same dtype.
    IN  mean, invstd: (C,) float64, the statistics the forward pass normalized with.
    IN  gamma: (C,) float64 (ones without affine parameters).
    IN  sum_dy, sum_dy_xmu: (C,) float64, the sums of dy and of dy * (x - mean) over all
        ``count`` values of each channel (for a SyncBatchNorm: summed over every process).
    IN  count: values per channel behind those sums and statistics (> 0).
    OUT dx: (A, C, B), dy's dtype:
        dx = gamma * invstd * (dy - sum_dy / count - (x - mean) * invstd^2 * sum_dy_xmu / count),
        the formula of :func:`backward` (Ioffe & Szegedy 2015, section 3).

    Preconditions (checked by the caller, not here): ``dy``, ``x`` and ``dx`` of one shape
    ``(A, C, B)`` with ``A, C, B >= 1``, ``dx`` being ``dy`` or ``x`` itself or sharing no memory
    with them; the (C,) vectors of length ``C``; ``count > 0``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, c
    cdef const floating* dyp = &dy[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef double k, md, p
    cdef Py_ssize_t blk
    if B == 1:  # one value per row and channel: the column kernels
        with nogil:
            for blk in prange(ceil_div(C, COLUMN_BLOCK), num_threads=num_threads,
                              schedule="static"):
                _column_dx(dyp, xp, dxp, A, C, blk * COLUMN_BLOCK, &mean[0], &invstd[0],
                           &gamma[0], &sum_dy[0], &sum_dy_xmu[0], count, True)
        return
    with nogil:
        for r in prange(A * C, num_threads=num_threads, schedule="static"):
            c = r % C
            k = gamma[c] * invstd[c]
            md = sum_dy[c] / count
            p = invstd[c] * invstd[c] * sum_dy_xmu[c] / count
            _norm_dx(dyp + r * B, xp + r * B, dxp + r * B, B, mean[c], k, md, p)


# ----------------------------------------------------------------------------------------------
# The affine step of LayerNorm (and, with per-channel weights repeated over the positions of a
# channel, the backward of GroupNorm's and InstanceNorm's affine step).

def scale_shift(const floating[:, ::1] x, const double[::1] weight, const double[::1] bias,
                floating[:, ::1] out, int num_threads=1):
    """out[r, d] = x[r, d] * weight[d] + bias[d], computed in float64.

    IN  x: (R, D) float32/float64, C-contiguous (LayerNorm: the normalized input, rows = the
        leading dimensions, D = the product of ``normalized_shape``).
    IN  weight, bias: (D,) float64, one per position.
    OUT out: (R, D), x's dtype; may be x itself (in place).

    A position with ``x == 0`` (a constant row after normalization) gets exactly ``bias``.

    Preconditions (checked by the caller, not here): ``out`` has ``x``'s shape and is ``x``
    itself or shares no memory with it; ``weight`` and ``bias`` of length ``D``;
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1], r
    cdef const floating* xp = &x[0, 0]
    cdef floating* outp = &out[0, 0]
    cdef const double* wp = &weight[0]
    cdef const double* bp = &bias[0]
    with nogil:
        for r in prange(R, num_threads=num_threads, schedule="static"):
            _scale_shift(xp + r * D, outp + r * D, D, wp, bp)


def scale_shift_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                         const double[:, ::1] mean, const double[:, ::1] invstd,
                         const double[:, ::1] weight, floating[:, :, ::1] dxhat,
                         double[:, ::1] dweight, double[:, ::1] dbias, int num_threads=1):
    """Backward of ``y = xhat * weight + bias`` with ``xhat = (x - mean) * invstd``.

    The input is seen as ``(R, S, L)``: R rows (samples), each of S segments of L positions;
    segment ``(r, s)`` was normalized with ``mean[r, s]`` and ``invstd[r, s]``, and each of the
    ``S * L`` positions of a row has its own weight (LayerNorm: S = 1, L = D; GroupNorm:
    S = G, L = C/G*H*W; InstanceNorm: S = C, L = H*W; per-channel weights repeated H*W times).

    IN  dy, x: (R, S, L) float32/float64, C-contiguous, same dtype.
    IN  mean, invstd: (R, S) float64, the statistics of each segment.
    IN  weight: (S, L) float64, per position.
    OUT dxhat: (R, S, L), dy's dtype: dy * weight, the gradient the core's backward takes in.
    OUT dweight: (S, L) float64, sum over rows of dy * xhat (overwritten, not accumulated).
    OUT dbias: (S, L) float64, sum over rows of dy.

    xhat is recomputed from x in float64 (nothing but x and the statistics is kept from the
    forward pass). Threads split the positions into blocks, and every position sums its rows
    in order, so the result does not depend on the number of threads.

    Preconditions (checked by the caller, not here): ``dy``, ``x``, ``dxhat`` of one shape
    ``(R, S, L)`` with ``R, S, L >= 1``, ``dxhat`` being ``dy`` itself or sharing no memory with
    ``dy`` and ``x``; ``mean``, ``invstd`` of shape ``(R, S)``; ``weight``, ``dweight``,
    ``dbias`` of shape ``(S, L)``, ``dweight`` and ``dbias`` not overlapping; ``num_threads >= 1``.
    """
    cdef Py_ssize_t R = x.shape[0], S = x.shape[1], L = x.shape[2]
    cdef Py_ssize_t D = S * L, blocks, size, blk, d0, d1, d, e, s, r, off, z
    cdef const floating* dyp = &dy[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* dxp = &dxhat[0, 0, 0]
    cdef const double* wp = &weight[0, 0]
    cdef double* dwp = &dweight[0, 0]
    cdef double* dbp = &dbias[0, 0]
    cdef const double* mp = &mean[0, 0]
    cdef const double* ip = &invstd[0, 0]
    # blocks of whole 64-byte lines of float32 (16 positions), one per thread
    size = round_up(ceil_div(D, num_threads), 16)
    blocks = ceil_div(D, size)
    with nogil:
        for blk in prange(blocks, num_threads=num_threads, schedule="static"):
            d0 = blk * size
            d1 = d0 + size
            if d1 > D:
                d1 = D
            for z in range(d0, d1):
                dwp[z] = 0
                dbp[z] = 0
            for r in range(R):
                off = r * D
                d = d0
                while d < d1:  # the runs of this block that lie in one segment
                    s = d // L
                    e = (s + 1) * L
                    if e > d1:
                        e = d1
                    _scale_shift_grad(dyp + off + d, xp + off + d, dxp + off + d, e - d,
                                      mp[r * S + s], ip[r * S + s], wp + d, dwp + d, dbp + d)
                    d = e
