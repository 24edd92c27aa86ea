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


cdef void _pool_plane_2x2(const floating* plane, Py_ssize_t W, floating* out, int64_t* argmax,
                          Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """:func:`_pool_plane` specialized for 2x2 windows with stride 2 (the common case).

    The same branch-free rule, unrolled over the window ``a b / c d`` (row-major): a later
    value wins if it is greater and no NaN was seen, or if it is a NaN, so ties keep the first
    maximum and the last NaN wins. The offset of the winner (0, 1, W or W+1) is updated with
    arithmetic on the 0/1 flag; the output is read back at the winning index.
    """
    cdef Py_ssize_t oh, ow, base, offset, index
    cdef const floating* top
    cdef const floating* bottom
    cdef floating best, b, c, d
    cdef int take, seen_nan, is_nan
    for oh in range(OH):
        top = plane + 2 * oh * W
        bottom = top + W
        for ow in range(OW):
            best = top[2 * ow]
            b = top[2 * ow + 1]
            c = bottom[2 * ow]
            d = bottom[2 * ow + 1]
            offset = 0
            seen_nan = best != best

            is_nan = b != b
            take = ((b > best) & (1 - seen_nan)) | is_nan
            offset = offset + (1 - offset) * take
            seen_nan = seen_nan | is_nan
            best = best if best > b else b

            is_nan = c != c
            take = ((c > best) & (1 - seen_nan)) | is_nan
            offset = offset + (W - offset) * take
            seen_nan = seen_nan | is_nan
            best = best if best > c else c

            is_nan = d != d
            take = ((d > best) & (1 - seen_nan)) | is_nan
            offset = offset + (W + 1 - offset) * take

            index = 2 * oh * W + 2 * ow + offset
            out[oh * OW + ow] = plane[index]
            argmax[oh * OW + ow] = index


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
                        floating[:, :, :, ::1] dx, int num_threads=1):
    """Route each upstream gradient to the input element that won its window.

    ``dx[n, c].flat[argmax[n, c, oh, ow]] += dout[n, c, oh, ow]`` for every output element,
    starting from zero; overlapping windows (stride < kernel) that share a winner add up.

    Args:
        dout (IN): shape ``(N, C, OH, OW)``, float32 or float64, C-contiguous.
        argmax (IN): shape ``(N, C, OH, OW)``, int64, as written by :func:`max_pool2d_forward`.
        dx (OUT): shape ``(N, C, H, W)``, same dtype as ``dout``; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).
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
        for p in range(H * W):
            plane[p] = 0
        for k in range(OH * OW):
            plane[where[k]] += grad[k]
