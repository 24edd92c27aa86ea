"""Pooling kernels (2-D, floor mode): max-pooling without padding as ``torch.nn.MaxPool2d``, and
average pooling with zero padding as ``torch.nn.AvgPool2d``.

Max-pooling:

    out[n, c, oh, ow] = max over 0 <= i < kH, 0 <= j < kW of x[n, c, oh*sH + i, ow*sW + j]

with ``OH = (H - kH) // sH + 1`` and ``OW = (W - kW) // sW + 1``. The forward pass also records,
per output element, the flat index ``h*W + w`` of the winning input inside its ``(H, W)`` plane
(the same convention as PyTorch's ``return_indices=True``). Ties go to the first maximum in
row-major window order; a NaN in the window wins (the last one, as in PyTorch's CPU kernel).

Average pooling, with zero padding ``(pH, pW)`` and ``OH = (H + 2*pH - kH) // sH + 1`` (likewise
``OW``)::

    out[n, c, oh, ow] = (sum over the window's elements inside the plane) / divisor

where the divisor is ``kH*kW`` (``count_include_pad``, PyTorch's default: the padded zeros are
counted) or the number of the window's elements inside the plane.

These kernels trust their inputs (checked by ``minidl.functional.pooling``), write into
caller-allocated arrays (OUT), release the GIL and split the (sample, channel) planes over
OpenMP threads with ``prange``.

Integer arithmetic: indices and sizes are ``Py_ssize_t``/``int64_t`` (``ptrdiff_t`` in
``_pool.h``), bounded by the arrays' sizes or by a size times a stride of at most ``2**31 - 1``;
the 2x2 kernels' ``int32`` tables are used only for planes of at most ``INT32_MAX`` elements.
``num_threads`` is an ``int`` from 1 to 1024. The backward kernel of the general path writes
``dx`` at the ``argmax`` indices: they must lie in ``[0, H*W)``, which the caller checks (the
cache, and an ``argmax`` array the caller passed in, can be changed after the forward).
"""
from cython.parallel cimport prange
from libc.stdint cimport INT32_MAX, int32_t, int64_t

import numpy as np

from ._common cimport build_facts, floating
from ._pool2x2 cimport (fill_corners, fill_owners, pool_plane_2x2, pool_plane_2x2_grad,
                        use_table)

#: What this extension was compiled with (read by ``minidl.show_config()``).
BUILD = build_facts()


cdef void _pool_plane(const floating* plane, Py_ssize_t W, floating* out, int64_t* argmax,
                      Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kernel_h, Py_ssize_t kernel_w,
                      Py_ssize_t stride_h, Py_ssize_t stride_w) noexcept nogil:
    """Max-pool one ``(H, W)`` plane into ``out`` / ``argmax`` (both ``OH*OW``, row-major;
    ``argmax`` may be NULL: then only the maxima are written).

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
            if argmax != NULL:
                argmax[oh * OW + ow] = best_index


cdef extern from "_pool.h" nogil:
    void minidl_avgpool_plane_f(const float* plane, Py_ssize_t H, Py_ssize_t W, float* out,
                                Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kH, Py_ssize_t kW,
                                Py_ssize_t sH, Py_ssize_t sW, Py_ssize_t pH, Py_ssize_t pW,
                                int count_include_pad)
    void minidl_avgpool_plane_d(const double* plane, Py_ssize_t H, Py_ssize_t W, double* out,
                                Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kH, Py_ssize_t kW,
                                Py_ssize_t sH, Py_ssize_t sW, Py_ssize_t pH, Py_ssize_t pW,
                                int count_include_pad)
    void minidl_avgpool_grad_plane_f(const float* dout, Py_ssize_t H, Py_ssize_t W, float* dx,
                                     Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kH,
                                     Py_ssize_t kW, Py_ssize_t sH, Py_ssize_t sW,
                                     Py_ssize_t pH, Py_ssize_t pW, int count_include_pad)
    void minidl_avgpool_grad_plane_d(const double* dout, Py_ssize_t H, Py_ssize_t W,
                                     double* dx, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kH,
                                     Py_ssize_t kW, Py_ssize_t sH, Py_ssize_t sW,
                                     Py_ssize_t pH, Py_ssize_t pW, int count_include_pad)


def max_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                       int64_t[:, :, :, ::1] argmax,
                       Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h,
                       Py_ssize_t stride_w, int num_threads=1):
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

    Preconditions (checked by the caller, not here): ``1 <= kH <= H``, ``1 <= kW <= W``,
    ``sH, sW >= 1``; ``out`` and ``argmax`` exactly ``(N, C, OH, OW)`` with
    ``OH = (H - kH) // sH + 1``, ``OW = (W - kW) // sW + 1``, sharing no memory with ``x`` or
    each other; ``num_threads >= 1``.
    """
    if x.shape[0] * x.shape[1] == 0:
        return
    _forward(x, out, &argmax[0, 0, 0, 0], kernel_h, kernel_w, stride_h, stride_w, num_threads)


def max_pool2d_values(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                      Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h,
                      Py_ssize_t stride_w, int num_threads=1):
    """:func:`max_pool2d_forward` for inference: the maxima only, no ``argmax`` (the same
    values, bit for bit; a pass that will not be backpropagated needs no indices, which are
    twice the output's bytes in float32).

    Args and preconditions: as :func:`max_pool2d_forward`, without ``argmax``.
    """
    if x.shape[0] * x.shape[1] == 0:
        return
    _forward(x, out, NULL, kernel_h, kernel_w, stride_h, stride_w, num_threads)


cdef void _forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int64_t* argmax0,
                   Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h,
                   Py_ssize_t stride_w, int num_threads):
    """The forward pass of both: ``argmax0`` is the first index of ``argmax``, or NULL."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t task
    cdef bint two_by_two = (kernel_h == 2 and kernel_w == 2 and stride_h == 2
                            and stride_w == 2)
    # the planes are contiguous and equally spaced: address them by pointer arithmetic
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef floating* out0 = &out[0, 0, 0, 0]
    # short rows: the flat index of each window's top-left element, the same in every plane
    cdef int32_t[::1] table
    cdef const int32_t* corner = NULL
    if two_by_two and use_table(H, W, OW):
        table = np.empty(OH * OW, np.int32)
        fill_corners(table, W, OH, OW)
        corner = &table[0]

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        if two_by_two:
            pool_plane_2x2(x0 + task * H * W, W, OH, OW, corner, out0 + task * OH * OW,
                            NULL if argmax0 == NULL else argmax0 + task * OH * OW)
        else:
            _pool_plane(x0 + task * H * W, W, out0 + task * OH * OW,
                        NULL if argmax0 == NULL else argmax0 + task * OH * OW,
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

    Preconditions (checked by the caller, not here): ``dout`` and ``argmax`` of one shape
    ``(N, C, OH, OW)`` and ``dx`` ``(N, C, H, W)`` with the forward's geometry; every
    ``argmax`` entry in ``0 <= argmax < H*W`` (the general path writes ``dx`` at those indices;
    the 2x2 path only compares them); ``two_by_two`` only for 2x2 windows with stride 2, so
    ``2*OH <= H`` and ``2*OW <= W``; ``dx`` shares no memory with the inputs;
    ``num_threads >= 1``.
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
    # short rows: the window covering each element of a plane (0 for the uncovered ones)
    cdef int32_t[::1] table
    cdef const int32_t* owner = NULL

    if two_by_two and use_table(H, W, OW):
        table = np.zeros(H * W, np.int32)
        fill_owners(table, W, OH, OW)
        owner = &table[0]

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        plane = dx0 + task * H * W
        grad = dout0 + task * OH * OW
        where = argmax0 + task * OH * OW
        if two_by_two:
            pool_plane_2x2_grad(grad, where, H, W, plane, OH, OW, owner)
            continue
        for p in range(H * W):
            plane[p] = 0
        for k in range(OH * OW):
            plane[where[k]] += grad[k]


def avg_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                       Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h,
                       Py_ssize_t stride_w, Py_ssize_t pad_h, Py_ssize_t pad_w,
                       bint count_include_pad=True, int num_threads=1):
    """Mean over each pooling window of the zero-padded input.

    Args:
        x (IN): input, shape ``(N, C, H, W)``, float32 or float64, C-contiguous.
        out (OUT): shape ``(N, C, OH, OW)``, same dtype; fully overwritten.
        kernel_h, kernel_w: window size (>= 1).
        stride_h, stride_w: window step (>= 1).
        pad_h, pad_w: zeros on each side (>= 0).
        count_include_pad: divide by ``kH*kW`` (True) or by the number of input elements in
            the window (False).
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over the ``N*C`` planes.

    Preconditions (checked by the caller, not here): ``kH, kW, sH, sW >= 1``;
    ``0 <= pH <= kH // 2`` and ``0 <= pW <= kW // 2`` (so no window lies in the padding only);
    ``kH <= H + 2*pH`` and ``kW <= W + 2*pW``; ``out`` exactly ``(N, C, OH, OW)`` with
    ``OH = (H + 2*pH - kH) // sH + 1``, ``OW = (W + 2*pW - kW) // sW + 1``, sharing no memory
    with ``x``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t task
    cdef int include_pad = count_include_pad
    if N * C == 0:
        return
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef floating* out0 = &out[0, 0, 0, 0]
    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        if floating is float:
            minidl_avgpool_plane_f(x0 + task * H * W, H, W, out0 + task * OH * OW, OH, OW,
                                   kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                   include_pad)
        else:
            minidl_avgpool_plane_d(x0 + task * H * W, H, W, out0 + task * OH * OW, OH, OW,
                                   kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                   include_pad)


def avg_pool2d_backward(const floating[:, :, :, ::1] dout, floating[:, :, :, ::1] dx,
                        Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h,
                        Py_ssize_t stride_w, Py_ssize_t pad_h, Py_ssize_t pad_w,
                        bint count_include_pad=True, int num_threads=1):
    """Spread each upstream gradient evenly over the input elements of its window.

    ``dx[n, c, h, w] = sum over the windows (oh, ow) holding (h, w) of
    dout[n, c, oh, ow] / divisor(oh, ow)``, the divisor of :func:`avg_pool2d_forward`.

    Args:
        dout (IN): shape ``(N, C, OH, OW)``, float32 or float64, C-contiguous.
        dx (OUT): shape ``(N, C, H, W)``, same dtype; fully overwritten.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad: as in the
            forward pass.
        num_threads: OpenMP threads (ignored in a serial build).

    Preconditions (checked by the caller, not here): those of :func:`avg_pool2d_forward`, with
    ``dout`` of the forward output's shape and ``dx`` of its input's; ``dx`` shares no memory
    with ``dout``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t task
    cdef int include_pad = count_include_pad
    if N * C == 0:
        return
    cdef const floating* dout0 = &dout[0, 0, 0, 0]
    cdef floating* dx0 = &dx[0, 0, 0, 0]
    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        if floating is float:
            minidl_avgpool_grad_plane_f(dout0 + task * OH * OW, H, W, dx0 + task * H * W,
                                        OH, OW, kernel_h, kernel_w, stride_h, stride_w,
                                        pad_h, pad_w, include_pad)
        else:
            minidl_avgpool_grad_plane_d(dout0 + task * OH * OW, H, W, dx0 + task * H * W,
                                        OH, OW, kernel_h, kernel_w, stride_h, stride_w,
                                        pad_h, pad_w, include_pad)
