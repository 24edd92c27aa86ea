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
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t task, n, c

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // C
        c = task - n * C
        _pool_plane(&x[n, c, 0, 0], W, &out[n, c, 0, 0], &argmax[n, c, 0, 0], OH, OW,
                    kernel_h, kernel_w, stride_h, stride_w)


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
    cdef Py_ssize_t task, n, c, k, p
    cdef floating* plane
    cdef const floating* grad
    cdef const int64_t* where

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // C
        c = task - n * C
        plane = &dx[n, c, 0, 0]
        for p in range(H * W):
            plane[p] = 0
        grad = &dout[n, c, 0, 0]
        where = &argmax[n, c, 0, 0]
        for k in range(OH * OW):
            plane[where[k]] += grad[k]
