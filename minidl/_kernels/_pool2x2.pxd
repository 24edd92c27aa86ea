# 2x2, stride-2 max pooling of one (H, W) plane and its gradient (the loops of _pool.h), shared
# by _pool.pyx (MaxPool2D) and _batchnorm.pyx (BatchNorm -> ReLU -> MaxPool2D fused plane by
# plane: see its forward_train and backward). Cimported; nothing here is compiled on its own.
# Both take the same path for a plane (rows of windows, or a table for short rows), so the
# fused pass and MaxPool2D give the same values and indices bit for bit.

from libc.stdint cimport INT32_MAX, int32_t, int64_t

from ._common cimport floating

cdef extern from "_pool.h" nogil:
    void minidl_pool2x2_rows_f(const float* plane, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                               float* out, int64_t* argmax)
    void minidl_pool2x2_rows_d(const double* plane, Py_ssize_t W, Py_ssize_t OH,
                               Py_ssize_t OW, double* out, int64_t* argmax)
    void minidl_pool2x2_table_f(const float* plane, Py_ssize_t W, const int32_t* corner,
                                Py_ssize_t count, float* out, int64_t* argmax)
    void minidl_pool2x2_table_d(const double* plane, Py_ssize_t W, const int32_t* corner,
                                Py_ssize_t count, double* out, int64_t* argmax)
    void minidl_pool2x2_max_rows_f(const float* plane, Py_ssize_t W, Py_ssize_t OH,
                                   Py_ssize_t OW, float* out)
    void minidl_pool2x2_max_rows_d(const double* plane, Py_ssize_t W, Py_ssize_t OH,
                                   Py_ssize_t OW, double* out)
    void minidl_pool2x2_max_table_f(const float* plane, Py_ssize_t W, const int32_t* corner,
                                    Py_ssize_t count, float* out)
    void minidl_pool2x2_max_table_d(const double* plane, Py_ssize_t W, const int32_t* corner,
                                    Py_ssize_t count, double* out)
    void minidl_pool2x2_grad_rows_f(const float* dout, const int64_t* argmax, Py_ssize_t W,
                                    int64_t base, float* top, float* bottom,
                                    Py_ssize_t OW)
    void minidl_pool2x2_grad_rows_d(const double* dout, const int64_t* argmax, Py_ssize_t W,
                                    int64_t base, double* top, double* bottom,
                                    Py_ssize_t OW)
    void minidl_pool2x2_grad_table_f(const float* dout, const int64_t* argmax,
                                     const int32_t* owner, Py_ssize_t count,
                                     float* dx)
    void minidl_pool2x2_grad_table_d(const double* dout, const int64_t* argmax,
                                     const int32_t* owner, Py_ssize_t count,
                                     double* dx)


# Rows of fewer 2x2 windows than this go through a table (gathers, full vectors); longer ones
# along the row (contiguous loads and stores). Measured on 2 Zen 4 cores (AVX-512), float32,
# forward / backward in ms, along the row -> with the table: rows of 4 windows (128x128x8x8)
# 1.30 / 1.20 -> 0.41 / 0.48; rows of 7 (64x64x14x14) 0.98 / 0.84 -> 0.33 / 0.35; rows of 14
# (64x32x28x28) 0.74 / 0.88 -> 0.53 / 0.58; but rows of 16 (128x32x32x32) 0.84 / 0.81 ->
# 1.16 / 1.48.
cdef enum:
    POOL_GATHER_BELOW = 16


cdef inline void pool_plane_2x2(const floating* plane, Py_ssize_t W, Py_ssize_t OH,
                                Py_ssize_t OW, const int32_t* corner, floating* out,
                                int64_t* argmax) noexcept nogil:
    """``_pool.pyx``'s ``_pool_plane`` specialized for 2x2 windows with stride 2 (the common
    case): the same rule (values, indices, ties, NaNs), vectorized; ``corner`` (NULL for long
    rows) holds the flat index of each window's top-left element; ``argmax`` NULL writes the
    maxima only."""
    if argmax == NULL:
        if corner != NULL:
            if floating is float:
                minidl_pool2x2_max_table_f(plane, W, corner, OH * OW, out)
            else:
                minidl_pool2x2_max_table_d(plane, W, corner, OH * OW, out)
        elif floating is float:
            minidl_pool2x2_max_rows_f(plane, W, OH, OW, out)
        else:
            minidl_pool2x2_max_rows_d(plane, W, OH, OW, out)
    elif corner != NULL:
        if floating is float:
            minidl_pool2x2_table_f(plane, W, corner, OH * OW, out, argmax)
        else:
            minidl_pool2x2_table_d(plane, W, corner, OH * OW, out, argmax)
    elif floating is float:
        minidl_pool2x2_rows_f(plane, W, OH, OW, out, argmax)
    else:
        minidl_pool2x2_rows_d(plane, W, OH, OW, out, argmax)


cdef inline void pool_plane_2x2_grad(const floating* dout, const int64_t* argmax,
                                     Py_ssize_t H, Py_ssize_t W, floating* dx, Py_ssize_t OH,
                                     Py_ssize_t OW, const int32_t* owner) noexcept nogil:
    """dx of one plane pooled by :func:`pool_plane_2x2` (non-overlapping windows): every
    element is written once, the rows and columns no window covers get 0. ``owner`` (NULL
    for long rows) holds the window covering each element (0 where none does)."""
    cdef Py_ssize_t oh, h, w
    if owner != NULL:
        if floating is float:
            minidl_pool2x2_grad_table_f(dout, argmax, owner, H * W, dx)
        else:
            minidl_pool2x2_grad_table_d(dout, argmax, owner, H * W, dx)
        return
    for oh in range(OH):
        if floating is float:
            minidl_pool2x2_grad_rows_f(dout + oh * OW, argmax + oh * OW, W, 2 * oh * W,
                                       dx + 2 * oh * W, dx + (2 * oh + 1) * W, OW)
        else:
            minidl_pool2x2_grad_rows_d(dout + oh * OW, argmax + oh * OW, W, 2 * oh * W,
                                       dx + 2 * oh * W, dx + (2 * oh + 1) * W, OW)
        for h in range(2 * oh, 2 * oh + 2):
            for w in range(2 * OW, W):
                dx[h * W + w] = 0
    for h in range(2 * OH, H):
        for w in range(W):
            dx[h * W + w] = 0


cdef inline bint use_table(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OW) noexcept nogil:
    """Whether the 2x2 kernels take the table way (short rows, plane indices fit int32)."""
    return OW < POOL_GATHER_BELOW and H * W <= INT32_MAX


cdef inline void fill_corners(int32_t[::1] corner, Py_ssize_t W, Py_ssize_t OH,
                              Py_ssize_t OW) noexcept nogil:
    """The table of :func:`pool_plane_2x2` (``OH*OW`` entries): the flat index of each
    window's top-left element."""
    cdef Py_ssize_t oh, ow
    for oh in range(OH):
        for ow in range(OW):
            corner[oh * OW + ow] = <int32_t>(2 * oh * W + 2 * ow)


cdef inline void fill_owners(int32_t[::1] owner, Py_ssize_t W, Py_ssize_t OH,
                             Py_ssize_t OW) noexcept nogil:
    """The table of :func:`pool_plane_2x2_grad` (``H*W`` entries, zeroed by the caller): the
    window covering each element (the uncovered ones keep 0)."""
    cdef Py_ssize_t h, w
    for h in range(2 * OH):
        for w in range(2 * OW):
            owner[h * W + w] = <int32_t>((h // 2) * OW + w // 2)
