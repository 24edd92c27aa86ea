# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Max-pooling kernels (2-D, no padding, floor mode), as defined for ``torch.nn.MaxPool2d``.

    out[n, c, oh, ow] = max over 0 <= i < kH, 0 <= j < kW of x[n, c, oh*sH + i, ow*sW + j]

with ``OH = (H - kH) // sH + 1`` and ``OW = (W - kW) // sW + 1``. The forward pass also records,
per output element, the flat index ``h*W + w`` of the winning input inside its ``(H, W)`` plane
(the same convention as PyTorch's ``return_indices=True``). Ties go to the first maximum in
row-major window order; a NaN in the window wins (the last one, as in PyTorch's CPU kernel).

These kernels trust their inputs (checked by ``minidl.functional.pooling``), write into
caller-allocated arrays (OUT), release the GIL and split the (sample, channel) planes over
OpenMP threads with ``prange``.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t

ctypedef fused floating:
    float
    double


cdef void _pool_plane(const floating* plane, Py_ssize_t W, floating* out, int64_t* argmax,
                      Py_ssize_t OH, Py_ssize_t OW, int kernel_h, int kernel_w,
                      int stride_h, int stride_w) noexcept nogil:
    """Max-pool one ``(H, W)`` plane into ``out`` / ``argmax`` (both ``OH*OW``, row-major).

    The loop is written without data-dependent branches (which comparison wins is random on
    real data, and mispredicted branches made it 3x slower): the index is updated with
    arithmetic on a 0/1 flag and the running maximum with the ``a if a > b else b`` pattern that
    compilers turn into a max instruction. Once a NaN is seen only later NaNs move the index.
    The output is read back at the winning index, so it is exactly that input element.
    """
    cdef Py_ssize_t oh, ow, i, j, start, index, best_index
    cdef floating best, value
    cdef int take, is_nan, seen_nan
    for oh in range(OH):
        for ow in range(OW):
            start = oh * stride_h * W + ow * stride_w
            best_index = start
            best = plane[start]
            seen_nan = best != best
            for i in range(kernel_h):
                for j in range(kernel_w):
                    index = start + i * W + j
                    value = plane[index]
                    is_nan = value != value
                    # strict ">" keeps the first maximum (row-major window order)
                    take = ((value > best) & (1 - seen_nan)) | is_nan
                    best_index = best_index + (index - best_index) * take
                    seen_nan = seen_nan | is_nan
                    best = best if best > value else value
            out[oh * OW + ow] = plane[best_index]
            argmax[oh * OW + ow] = best_index


cdef extern from *:
    """
    /* 2x2, stride-2 max-pooling of one row of windows (`top` and `bottom` are the two input
       rows, `base` the flat index of top[0] in its plane), and its gradient. Written with
       selects instead of branches so that the compiler vectorizes over the windows (`omp
       simd`); compiled for AVX-512, AVX2 and the baseline with GCC on x86-64 Linux. */
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
        && (__GNUC__ >= 8)
    #define MINIDL_POOL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define MINIDL_POOL_CLONES
    #endif
    #define MINIDL_POOL_PRAGMA(x) _Pragma(#x)
    /* The rule of _pool_plane for the window a b / c d (row-major): a later value wins if it
       is greater and no NaN was seen, or if it is a NaN; the output is the winning element
       itself (bit for bit), its index base + 2*ow + (0, 1, W or W + 1). The selects are done
       on the values' bits with masks, so that the scalar remainder of a short row (MNIST's 14
       windows) has no branches either (mispredicted ones made it 1.5x slower). */
    #define MINIDL_POOL_SELECT(mask, yes, no) (((yes) & (mask)) | ((no) & ~(mask)))
    #define MINIDL_POOL_2X2(SUFFIX, T, U)                                                    \
        MINIDL_POOL_CLONES static void minidl_pool2x2_##SUFFIX(                             \
                const T* restrict top, const T* restrict bottom, ptrdiff_t W, int64_t base,  \
                T* restrict out, int64_t* restrict argmax, ptrdiff_t OW) {                   \
            MINIDL_POOL_PRAGMA(omp simd)                                                     \
            for (ptrdiff_t ow = 0; ow < OW; ow++) {                                          \
                const T a = top[2 * ow], b = top[2 * ow + 1];                                \
                const T c = bottom[2 * ow], d = bottom[2 * ow + 1];                          \
                U value, bits, take;                                                         \
                int64_t offset = 0, pick;                                                    \
                int seen = a != a;                                                           \
                T best = a;                                                                  \
                memcpy(&value, &a, sizeof(T));                                               \
                take = (U)0 - (U)(((b > best) & !seen) | (b != b));                          \
                pick = (int64_t)0 - (int64_t)(take & 1);                                     \
                memcpy(&bits, &b, sizeof(T));                                                \
                value = MINIDL_POOL_SELECT(take, bits, value);                               \
                offset = MINIDL_POOL_SELECT(pick, (int64_t)1, offset);                       \
                seen |= b != b; best = best > b ? best : b;                                  \
                take = (U)0 - (U)(((c > best) & !seen) | (c != c));                          \
                pick = (int64_t)0 - (int64_t)(take & 1);                                     \
                memcpy(&bits, &c, sizeof(T));                                                \
                value = MINIDL_POOL_SELECT(take, bits, value);                               \
                offset = MINIDL_POOL_SELECT(pick, (int64_t)W, offset);                       \
                seen |= c != c; best = best > c ? best : c;                                  \
                take = (U)0 - (U)(((d > best) & !seen) | (d != d));                          \
                pick = (int64_t)0 - (int64_t)(take & 1);                                     \
                memcpy(&bits, &d, sizeof(T));                                                \
                value = MINIDL_POOL_SELECT(take, bits, value);                               \
                offset = MINIDL_POOL_SELECT(pick, (int64_t)W + 1, offset);                   \
                memcpy(&out[ow], &value, sizeof(T));                                         \
                argmax[ow] = base + 2 * ow + offset;                                         \
            }                                                                                \
        }                                                                                    \
        /* dx of one row of 2x2 windows: dout where the window's winner was, 0 elsewhere */  \
        MINIDL_POOL_CLONES static void minidl_pool2x2_grad_##SUFFIX(                        \
                const T* restrict dout, const int64_t* restrict argmax, ptrdiff_t W,         \
                int64_t base, T* restrict top, T* restrict bottom, ptrdiff_t OW) {           \
            MINIDL_POOL_PRAGMA(omp simd)                                                     \
            for (ptrdiff_t ow = 0; ow < OW; ow++) {                                          \
                const int64_t offset = argmax[ow] - base - 2 * ow;                           \
                const T g = dout[ow];                                                        \
                top[2 * ow] = offset == 0 ? g : (T)0;                                        \
                top[2 * ow + 1] = offset == 1 ? g : (T)0;                                    \
                bottom[2 * ow] = offset == W ? g : (T)0;                                     \
                bottom[2 * ow + 1] = offset == W + 1 ? g : (T)0;                             \
            }                                                                                \
        }
    MINIDL_POOL_2X2(f, float, uint32_t)
    MINIDL_POOL_2X2(d, double, uint64_t)
    """
    void minidl_pool2x2_f(const float* top, const float* bottom, Py_ssize_t W, int64_t base,
                          float* out, int64_t* argmax, Py_ssize_t OW) noexcept nogil
    void minidl_pool2x2_d(const double* top, const double* bottom, Py_ssize_t W, int64_t base,
                          double* out, int64_t* argmax, Py_ssize_t OW) noexcept nogil
    void minidl_pool2x2_grad_f(const float* dout, const int64_t* argmax, Py_ssize_t W,
                               int64_t base, float* top, float* bottom,
                               Py_ssize_t OW) noexcept nogil
    void minidl_pool2x2_grad_d(const double* dout, const int64_t* argmax, Py_ssize_t W,
                               int64_t base, double* top, double* bottom,
                               Py_ssize_t OW) noexcept nogil


cdef void _pool_plane_2x2(const floating* plane, Py_ssize_t W, floating* out, int64_t* argmax,
                          Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """:func:`_pool_plane` specialized for 2x2 windows with stride 2 (the common case):
    the same rule (values, indices, ties, NaNs), vectorized over each row of windows."""
    cdef Py_ssize_t oh
    for oh in range(OH):
        if floating is float:
            minidl_pool2x2_f(plane + 2 * oh * W, plane + (2 * oh + 1) * W, W, 2 * oh * W,
                             out + oh * OW, argmax + oh * OW, OW)
        else:
            minidl_pool2x2_d(plane + 2 * oh * W, plane + (2 * oh + 1) * W, W, 2 * oh * W,
                             out + oh * OW, argmax + oh * OW, OW)


cdef void _pool_plane_2x2_grad(const floating* dout, const int64_t* argmax, Py_ssize_t H,
                               Py_ssize_t W, floating* dx, Py_ssize_t OH,
                               Py_ssize_t OW) noexcept nogil:
    """dx of one plane pooled by :func:`_pool_plane_2x2` (non-overlapping windows): every
    element is written once, the rows and columns no window covers get 0."""
    cdef Py_ssize_t oh, h, w
    for oh in range(OH):
        if floating is float:
            minidl_pool2x2_grad_f(dout + oh * OW, argmax + oh * OW, W, 2 * oh * W,
                                  dx + 2 * oh * W, dx + (2 * oh + 1) * W, OW)
        else:
            minidl_pool2x2_grad_d(dout + oh * OW, argmax + oh * OW, W, 2 * oh * W,
                                  dx + 2 * oh * W, dx + (2 * oh + 1) * W, OW)
        for h in range(2 * oh, 2 * oh + 2):
            for w in range(2 * OW, W):
                dx[h * W + w] = 0
    for h in range(2 * OH, H):
        for w in range(W):
            dx[h * W + w] = 0


def max_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                       int64_t[:, :, :, ::1] argmax,
                       int kernel_h, int kernel_w, int stride_h, int stride_w,
                       int num_threads=1):
    """Max over each pooling window, and where it was found.

    Args:
        x (IN): input, shape ``(N, C, H, W)``, float32 or float64, C-contiguous.
        out (OUT): shape ``(N, C, OH, OW)``, same dtype; fully overwritten.
        argmax (OUT): shape ``(N, C, OH, OW)``, int64; fully overwritten with the flat index
            ``h*W + w`` of each maximum within its ``(H, W)`` plane.
        kernel_h, kernel_w: window size (>= 1, <= H and W).
        stride_h, stride_w: window step (>= 1).
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over the ``N*C`` planes.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t task
    cdef bint two_by_two = (kernel_h == 2 and kernel_w == 2 and stride_h == 2
                            and stride_w == 2)
    if N * C == 0:
        return
    # the planes are contiguous and equally spaced: address them by pointer arithmetic
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef floating* out0 = &out[0, 0, 0, 0]
    cdef int64_t* argmax0 = &argmax[0, 0, 0, 0]

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        if two_by_two:
            _pool_plane_2x2(x0 + task * H * W, W, out0 + task * OH * OW,
                            argmax0 + task * OH * OW, OH, OW)
        else:
            _pool_plane(x0 + task * H * W, W, out0 + task * OH * OW, argmax0 + task * OH * OW,
                        OH, OW, kernel_h, kernel_w, stride_h, stride_w)


def max_pool2d_backward(const floating[:, :, :, ::1] dout, const int64_t[:, :, :, ::1] argmax,
                        floating[:, :, :, ::1] dx, int num_threads=1, bint two_by_two=False):
    """Route each upstream gradient to the input element that won its window.

    ``dx[n, c].flat[argmax[n, c, oh, ow]] += dout[n, c, oh, ow]`` for every output element,
    starting from zero; overlapping windows (stride < kernel) that share a winner add up.

    Args:
        dout (IN): shape ``(N, C, OH, OW)``, float32 or float64, C-contiguous.
        argmax (IN): shape ``(N, C, OH, OW)``, int64, as written by :func:`max_pool2d_forward`.
        dx (OUT): shape ``(N, C, H, W)``, same dtype as ``dout``; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).
        two_by_two: the forward pass used 2x2 windows with stride 2 (then each dx element is
            written once, without zeroing the planes first).
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t task, k, p
    cdef floating* plane
    cdef const floating* grad
    cdef const int64_t* where
    if N * C == 0:
        return
    cdef floating* dx0 = &dx[0, 0, 0, 0]
    cdef const floating* dout0 = &dout[0, 0, 0, 0]
    cdef const int64_t* argmax0 = &argmax[0, 0, 0, 0]

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        plane = dx0 + task * H * W
        grad = dout0 + task * OH * OW
        where = argmax0 + task * OH * OW
        if two_by_two:
            _pool_plane_2x2_grad(grad, where, H, W, plane, OH, OW)
            continue
        for p in range(H * W):
            plane[p] = 0
        for k in range(OH * OW):
            plane[where[k]] += grad[k]
