"""Convolution kernels: im2col, col2im and the layout changes around the matrix products, and
direct (no im2col, no GEMM) stride-1 kernels for few input channels (end of this file).

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

Integer arithmetic: every index, size and geometry argument is a ``Py_ssize_t`` (64-bit where
it matters; ``ptrdiff_t`` in ``_conv.h``), and ``num_threads`` an ``int`` from 1 to 1024. Each
product of sizes is bounded by the size of an array that exists (the caller checks that every
array fits in memory) or by such a size times a stride or padding of at most ``2**31 - 1``
(``minidl._checks.MAX_SIZE``), so none can overflow.
"""
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from cython.parallel cimport prange, threadid

from ._common cimport build_facts, ceil_div, floating
from ._transpose cimport transpose, transpose_init

#: What this extension was compiled with (read by ``minidl.show_config()``).
BUILD = build_facts()
transpose_init()
minidl_conv_init()

# Rows of the source per block of the transpose (see transpose_batched).
cdef enum:
    ROWS = 8


cdef inline bint _inside(Py_ssize_t index, Py_ssize_t size) noexcept nogil:
    return 0 <= index < size


cdef inline Py_ssize_t _first_inside(Py_ssize_t start, Py_ssize_t size,
                                     Py_ssize_t taps) noexcept nogil:
    """The first ``j < taps`` with ``0 <= start + j`` (``taps`` if none is inside ``[0, size)``)."""
    if start + taps <= 0 or start >= size:
        return taps
    return -start if start < 0 else 0


cdef inline Py_ssize_t _end_inside(Py_ssize_t start, Py_ssize_t size,
                                   Py_ssize_t taps) noexcept nogil:
    """One past the last ``j < taps`` with ``start + j < size``, at least
    :func:`_first_inside`: taps ``[_first_inside, _end_inside)`` are the ones in ``[0, size)``."""
    if start + taps <= 0 or start >= size:
        return taps
    return size - start if size - start < taps else taps


cdef inline double _row_sum(const floating* row, Py_ssize_t count) noexcept nogil:
    """``row[0] + ... + row[count - 1]`` in float64, as eight interleaved partial sums (index
    modulo 8) added in a fixed order: the additions pipeline instead of waiting on one another
    (a single running sum costs the add's latency per value, about 4 cycles)."""
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0
    cdef Py_ssize_t p, whole = count - count % 8
    for p in range(0, whole, 8):
        a0 = a0 + row[p]
        a1 = a1 + row[p + 1]
        a2 = a2 + row[p + 2]
        a3 = a3 + row[p + 3]
        a4 = a4 + row[p + 4]
        a5 = a5 + row[p + 5]
        a6 = a6 + row[p + 6]
        a7 = a7 + row[p + 7]
    for p in range(whole, count):
        a0 = a0 + row[p]
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


def im2col(const floating[:, :, :, ::1] x_nhwc, floating[:, ::1] cols,
           Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
           Py_ssize_t pad_h, Py_ssize_t pad_w, int num_threads=1):
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

    Preconditions (checked by the caller, not here): ``kH, kW, sH, sW >= 1``, ``pH, pW >= 0``,
    ``OH, OW >= 1``; ``cols`` exactly ``(N*OH*OW, kH*kW*C)`` of ``x_nhwc``'s dtype, sharing no
    memory with it; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = x_nhwc.shape[0], H = x_nhwc.shape[1], W = x_nhwc.shape[2]
    cdef Py_ssize_t C = x_nhwc.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad_h - kernel_h) // stride_h + 1
    cdef Py_ssize_t OW = (W + 2 * pad_w - kernel_w) // stride_w + 1
    cdef Py_ssize_t task, n, oh, ow, i, ih, iw0, lo, hi, k
    cdef Py_ssize_t run = kernel_w * C
    cdef floating* dst
    cdef const floating* src

    for task in prange(N * OH, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // OH
        oh = task - n * OH
        for ow in range(OW):
            dst = &cols[task * OW + ow, 0]
            iw0 = ow * stride_w - pad_w
            lo = _first_inside(iw0, W, kernel_w) * C
            hi = _end_inside(iw0, W, kernel_w) * C
            for i in range(kernel_h):
                # the kW taps of kernel row i read one contiguous run of x_nhwc's row ih, from
                # column iw0: elements [lo, hi) of the run are inside the image
                ih = oh * stride_h - pad_h + i
                if _inside(ih, H) and lo < hi:
                    src = &x_nhwc[n, ih, 0, 0] + iw0 * C + lo  # element lo of the run
                    for k in range(lo):
                        dst[k] = 0
                    for k in range(hi - lo):
                        dst[lo + k] = src[k]
                    for k in range(hi, run):
                        dst[k] = 0
                else:
                    for k in range(run):
                        dst[k] = 0
                dst = dst + run


def col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] dx_nhwc,
           Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
           Py_ssize_t pad_h, Py_ssize_t pad_w, int num_threads=1,
           const Py_ssize_t[::1] rows=None):
    """Fold the rows of ``cols`` back into an NHWC image, summing overlaps (im2col's adjoint).

    Args:
        cols (IN): shape ``(N*OH*OW, kH*kW*C)``, float32 or float64, C-contiguous, laid out as
            written by :func:`im2col`.
        dx_nhwc (OUT): shape ``(N, H, W, C)``, same dtype; fully overwritten (it need not be
            zeroed): each element is the sum of every entry of ``cols`` that im2col would have
            copied from it; taps that fall into the padding are dropped.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, num_threads: as for
            :func:`im2col`.
        rows (IN): None, or ``(N*OH*OW,)``: output position ``p`` reads row ``rows[p]`` of
            ``cols`` instead of row ``p`` (rows in another order, e.g. by border class).

    Only the entries of taps that read the input are read (a position's taps in the padding
    are not: they may hold anything). Work is split over samples, and over bands of rows of
    each sample when there are fewer samples than threads (a batch of one ran on one thread):
    no two threads write the same element, and each element receives its terms in the same
    order (output rows, then columns, ascending) whatever the split, so the same bits.
    Reference: Chellapilla et al., 2006 (backward of the unrolled convolution).

    Preconditions (checked by the caller, not here): as for :func:`im2col`, with ``OH, OW`` computed
    from ``dx_nhwc``'s ``(H, W)``: ``cols`` exactly ``(N*OH*OW, kH*kW*C)``, sharing no memory
    with ``dx_nhwc``; ``rows``, when given, of that many entries, each in ``[0, N*OH*OW)``.
    """
    cdef Py_ssize_t N = dx_nhwc.shape[0], H = dx_nhwc.shape[1], W = dx_nhwc.shape[2]
    cdef Py_ssize_t C = dx_nhwc.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad_h - kernel_h) // stride_h + 1
    cdef Py_ssize_t OW = (W + 2 * pad_w - kernel_w) // stride_w + 1
    cdef Py_ssize_t n, oh, ow, i, ih, iw0, lo, hi, k, p, task, r0, r1, oh0, oh1
    cdef Py_ssize_t run = kernel_w * C
    cdef floating* dst
    cdef const floating* src
    cdef bint mapped = rows is not None
    cdef const Py_ssize_t* row_of = &rows[0] if mapped and rows.shape[0] > 0 else NULL
    # bands of rows per sample: enough tasks for the threads when the batch is small
    cdef Py_ssize_t bands = 1 if N >= num_threads or H == 0 else min(H, ceil_div(num_threads, N))
    cdef Py_ssize_t band_rows = ceil_div(H, bands) if H > 0 else 0

    for task in prange(N * bands, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // bands
        r0 = (task - n * bands) * band_rows  # this task's rows of dx: [r0, r1)
        r1 = r0 + band_rows if r0 + band_rows < H else H
        if r0 < r1:
            dst = &dx_nhwc[n, r0, 0, 0]
            for k in range((r1 - r0) * W * C):
                dst[k] = 0
            # the output rows whose kernel rows oh*sH - pH .. + kH - 1 meet [r0, r1)
            oh0 = r0 + pad_h - kernel_h + 1
            oh0 = 0 if oh0 <= 0 else ceil_div(oh0, stride_h)
            oh1 = (r1 - 1 + pad_h) // stride_h + 1
            oh1 = oh1 if oh1 < OH else OH
            for oh in range(oh0, oh1):
                for ow in range(OW):
                    p = (n * OH + oh) * OW + ow
                    src = &cols[row_of[p] if mapped else p, 0]
                    iw0 = ow * stride_w - pad_w
                    lo = _first_inside(iw0, W, kernel_w) * C
                    hi = _end_inside(iw0, W, kernel_w) * C
                    for i in range(kernel_h):
                        # as in im2col: kernel row i is one run of dx's row ih (distinct
                        # elements, so each still receives its terms in the order of the loops)
                        ih = oh * stride_h - pad_h + i
                        if r0 <= ih and ih < r1 and lo < hi:
                            dst = &dx_nhwc[n, ih, 0, 0] + iw0 * C + lo  # element lo of the run
                            for k in range(hi - lo):
                                dst[k] += src[lo + k]
                        src = src + run


def unfold(const floating[:, :, :, ::1] x, floating[:, ::1] cols,
           Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
           Py_ssize_t pad_h, Py_ssize_t pad_w, int num_threads=1):
    """Copy every receptive field of an NCHW image into one row of ``cols``, taps ordered like
    the weight's axes ``(c, i, j)`` (``torch.nn.functional.unfold``'s order, transposed)::

        cols[(n*OH + oh)*OW + ow, (c*kH + i)*kW + j] = x_padded[n, c, oh*sH + i, ow*sW + j]

    with zeros for the taps in the padding (``minidl/functional/conv_unfold.py``).

    Args:
        x (IN): ``(N, C, H, W)``, float32 or float64, C-contiguous.
        cols (OUT): ``(N*OH*OW, C*kH*kW)``, same dtype; fully overwritten.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, num_threads: as for
            :func:`im2col`.

    Work is split over output rows ``(n, oh)``.

    Preconditions (checked by the caller, not here): as for :func:`im2col`, with ``cols``
    exactly ``(N*OH*OW, C*kH*kW)``.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad_h - kernel_h) // stride_h + 1
    cdef Py_ssize_t OW = (W + 2 * pad_w - kernel_w) // stride_w + 1
    cdef Py_ssize_t task, n, oh, ow, c, i, j, ih, iw0, lo, hi
    cdef floating* dst
    cdef const floating* src

    for task in prange(N * OH, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // OH
        oh = task - n * OH
        for ow in range(OW):
            dst = &cols[task * OW + ow, 0]
            iw0 = ow * stride_w - pad_w
            lo = _first_inside(iw0, W, kernel_w)  # taps j in [lo, hi) read the image
            hi = _end_inside(iw0, W, kernel_w)
            for c in range(C):
                for i in range(kernel_h):
                    ih = oh * stride_h - pad_h + i
                    if _inside(ih, H) and lo < hi:
                        src = &x[n, c, ih, 0] + iw0 + lo  # element lo of the kernel row
                        for j in range(lo):
                            dst[j] = 0
                        for j in range(lo, hi):
                            dst[j] = src[j - lo]
                        for j in range(hi, kernel_w):
                            dst[j] = 0
                    else:
                        for j in range(kernel_w):
                            dst[j] = 0
                    dst = dst + kernel_w


def fold(const floating[:, ::1] cols, floating[:, :, :, ::1] dx,
         Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
         Py_ssize_t pad_h, Py_ssize_t pad_w, int num_threads=1):
    """Sum the rows of ``cols`` back into an NCHW image (:func:`unfold`'s adjoint, col2im):
    each element of ``dx`` is the sum of every entry of ``cols`` that :func:`unfold` would
    have copied from it, added in the order of the output positions ``(n, oh, ow)`` and then
    of the taps ``(i, j)``; taps in the padding are dropped.

    Args:
        cols (IN): ``(N*OH*OW, C*kH*kW)``, float32 or float64, C-contiguous, laid out as
            :func:`unfold` writes it.
        dx (OUT): ``(N, C, H, W)``, same dtype; fully overwritten (it need not be zeroed).
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, num_threads: as for
            :func:`im2col`, ``OH, OW`` computed from ``dx``'s ``(H, W)``.

    Work is split over the ``N*C`` planes of ``dx``, so no two threads write the same element.

    Preconditions (checked by the caller, not here): as for :func:`unfold`; ``cols`` shares no
    memory with ``dx``.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad_h - kernel_h) // stride_h + 1
    cdef Py_ssize_t OW = (W + 2 * pad_w - kernel_w) // stride_w + 1
    cdef Py_ssize_t plane, n, c, oh, ow, i, j, ih, iw0, lo, hi, k
    cdef floating* dst
    cdef const floating* src

    for plane in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        n = plane // C
        c = plane - n * C
        dst = &dx[n, c, 0, 0]
        for k in range(H * W):
            dst[k] = 0
        for oh in range(OH):
            for ow in range(OW):
                src = &cols[(n * OH + oh) * OW + ow, 0] + c * kernel_h * kernel_w
                iw0 = ow * stride_w - pad_w
                lo = _first_inside(iw0, W, kernel_w)
                hi = _end_inside(iw0, W, kernel_w)
                for i in range(kernel_h):
                    ih = oh * stride_h - pad_h + i
                    if _inside(ih, H):
                        for j in range(lo, hi):
                            dst[ih * W + iw0 + j] += src[i * kernel_w + j]


def pad_nhwc(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] x_pad, Py_ssize_t pad_h,
             Py_ssize_t pad_w, int num_threads=1):
    """NCHW ``x`` in NHWC order with ``pad_h`` / ``pad_w`` zeros on each side of H and W:
    ``x_pad[n, h + pH, w + pW, c] = x[n, c, h, w]``, zeros elsewhere. The image that the
    gathered im2col products read (``minidl._blas.Gathered``): every receptive field of it lies
    inside, so its offsets need no bounds.

    Args:
        x (IN): ``(N, C, H, W)``, float32 or float64, C-contiguous.
        x_pad (OUT): ``(N, H + 2*pad_h, W + 2*pad_w, C)``, same dtype, C-contiguous; fully
            overwritten.
        pad_h, pad_w: the zeros on each side (>= 0).
        num_threads: OpenMP threads (ignored in a serial build); work is split over the
            ``N*(H + 2*pad_h)`` rows of ``x_pad``, each row of ``x`` transposed (C x W -> W x C)
            in 8x8 blocks (``_transpose.h``).

    Preconditions (checked by the caller, not here): the shapes above; ``x_pad`` shares no
    memory with ``x``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Hp = x_pad.shape[1], Wp = x_pad.shape[2]
    cdef Py_ssize_t task, n, hp, k
    cdef floating* row
    if N * Hp * Wp * C == 0:
        return
    cdef floating* p0 = &x_pad[0, 0, 0, 0]
    cdef const floating* x0 = &x[0, 0, 0, 0]
    for task in prange(N * Hp, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // Hp
        hp = task - n * Hp
        row = p0 + task * Wp * C
        if hp < pad_h or hp >= pad_h + H:
            for k in range(Wp * C):
                row[k] = 0
            continue
        for k in range(pad_w * C):
            row[k] = 0
        for k in range((pad_w + W) * C, Wp * C):
            row[k] = 0
        # row hp - pH of every channel (C rows of W, H*W apart) -> W runs of C channels
        transpose(x0 + (n * C * H + hp - pad_h) * W, H * W, row + pad_w * C, C, C, W, NULL)


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

    Work is split over blocks of ``ROWS`` (8) rows of ``src``: a block is read as 8 sequential
    streams and written as runs of 8 elements, one per row of ``dst`` (8x8 blocks in AVX2
    registers for float32, see ``_transpose.h``). (Square tiles of 64 x 64 were 20x slower than
    a copy when ``A`` or ``B`` is a multiple of 1024: 64 rows 4 KiB apart fall into one set of
    the L1 cache, which holds 8.)

    Preconditions (checked by the caller, not here): ``dst`` exactly ``(N, B, A)`` for ``src``
    ``(N, A, B)``, sharing no memory with it; ``bias`` of length ``B`` when ``use_bias``;
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = src.shape[0], A = src.shape[1], B = src.shape[2]
    if N * A * B == 0:
        return
    _transposes(&src[0, 0, 0], A * B, B, &dst[0, 0, 0], A * B, A, N, A, B,
                &bias[0] if use_bias else NULL, num_threads)


cdef void _transposes(const floating* src, Py_ssize_t src_step, Py_ssize_t src_row,
                      floating* dst, Py_ssize_t dst_step, Py_ssize_t dst_row, Py_ssize_t count,
                      Py_ssize_t rows, Py_ssize_t cols, const floating* bias,
                      int num_threads) noexcept nogil:
    """``count`` transposes of ``(rows, cols)`` matrices, the ``n``-th from ``src + n*src_step``
    (rows ``src_row`` apart) into ``dst + n*dst_step`` (rows ``dst_row`` apart), ``+ bias``
    (NULL: none), one task per block of ``ROWS`` rows (see :func:`transpose_batched`)."""
    cdef Py_ssize_t blocks = ceil_div(rows, ROWS)
    cdef Py_ssize_t task, n, start, end
    for task in prange(count * blocks, num_threads=num_threads, schedule="static"):
        n = task // blocks
        start = (task - n * blocks) * ROWS
        end = start + ROWS if start + ROWS < rows else rows
        transpose(src + n * src_step + start * src_row, src_row, dst + n * dst_step + start,
                  dst_row, end - start, cols, bias)


def swap_outer_axes(const floating[:, :, ::1] src, floating[:, :, ::1] dst, int num_threads=1):
    """Swap the first and last axes: ``dst[c, b, a] = src[a, b, c]``.

    An im2col weight gradient ``(kH*kW, C_in, C_out)`` becomes the weight's ``(C_out, C_in,
    kH*kW)`` in one pass, where two transposes of two axes each read and wrote it twice
    (1.3-2.2 times as long, (64, 64, 3, 3) to (512, 512, 3, 3) and (256, 128, 7, 7) weights, 1
    and 2 threads). For each ``b``, the ``(A, C)`` matrix ``src[:, b, :]`` (rows ``B*C`` apart)
    is transposed into ``dst[:, b, :]`` (rows ``B*A`` apart), as in :func:`transpose_batched`.
    (The other way, a weight ``(C_out, C_in, kH*kW)``
    into ``(kH*kW, C_in, C_out)``, this was slower than the two transposes for kernels of 6x6
    and more: each block then writes ``kH*kW`` rows ``C_in*C_out`` elements apart.)

    Args:
        src (IN): shape ``(A, B, C)``, float32 or float64, C-contiguous.
        dst (OUT): shape ``(C, B, A)``, same dtype; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).

    Preconditions (checked by the caller, not here): the shapes above; ``dst`` shares no
    memory with ``src``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t A = src.shape[0], B = src.shape[1], C = src.shape[2]
    if A * B * C == 0:
        return
    _transposes(&src[0, 0, 0], C, B * C, &dst[0, 0, 0], A, B * A, B, A, C, NULL, num_threads)


def nchw_to_rows(const floating[:, :, ::1] dout, floating[:, ::1] rows,
                 double[::1] bias_grad, bint want_bias_grad, int num_threads=1):
    """Reorder an upstream gradient to channel-major rows and reduce it per channel.

    ``rows[c, n*P + p] = dout[n, c, p]`` and, when ``want_bias_grad``,
    ``bias_grad[c] = sum over n, p of dout[n, c, p]`` (float64: each image's row by
    :func:`_row_sum`, then the images in order).

    Args:
        dout (IN): shape ``(N, C, P)``, float32 or float64, C-contiguous.
        rows (OUT): shape ``(C, N*P)``, same dtype; fully overwritten.
        bias_grad (OUT): shape ``(C,)``, float64; written only when ``want_bias_grad``.
        want_bias_grad: whether to compute ``bias_grad``.
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over channels, so each thread owns its rows and its bias_grad entries.

    Preconditions (checked by the caller, not here): ``rows`` exactly ``(C, N*P)``, sharing no
    memory with ``dout``; ``bias_grad`` of length ``C`` when ``want_bias_grad``;
    ``num_threads >= 1``.
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
                total = total + _row_sum(src, P)
        if want_bias_grad:
            bias_grad[c] = total


# --------------------------------------------------------------------------- direct convolution
# For few input channels (``C_in*kH*kW`` small, e.g. a network's first layer on 1- or 3-channel
# images) unrolling the input into ``cols`` and calling a GEMM costs more than the arithmetic
# itself. These kernels compute a stride-1 convolution directly on zero-padded NCHW planes of
# width ``Wp = W + 2*pW``, on a "wide" output grid of the same row width: output ``(oh, ow)``
# sits at flat position ``k = oh*Wp + ow`` and tap ``(i, j)`` reads input position
# ``k + i*Wp + j``, so a tap reads one long contiguous run of the plane (``L = (OH-1)*Wp + OW``
# elements): vectors of consecutive positions, with no gather; the columns ``OW <= ow < Wp``
# of the wide grid are scratch (the wide gradient keeps zeros there).

cdef extern from "_conv.h" nogil:
    void minidl_dot3x3_f(const float* g, const float* x, Py_ssize_t row, Py_ssize_t n,
                         double* out)
    void minidl_dot3x3_d(const double* g, const double* x, Py_ssize_t row, Py_ssize_t n,
                         double* out)
    void minidl_axpy_f(float* y, const float* x, float a, Py_ssize_t n)
    void minidl_axpy_d(double* y, const double* x, double a, Py_ssize_t n)
    double minidl_dot_f(const float* g, const float* x, Py_ssize_t n)
    double minidl_dot_d(const double* g, const double* x, Py_ssize_t n)
    double minidl_sum_f(const float* x, Py_ssize_t n)
    double minidl_sum_d(const double* x, Py_ssize_t n)
    enum: MINIDL_CONV_ROW_MAX
    void minidl_conv_direct4_f(const float* x, const Py_ssize_t* off, Py_ssize_t K,
                               const float* w, float* y, Py_ssize_t L)
    void minidl_conv_direct4_d(const double* x, const Py_ssize_t* off, Py_ssize_t K,
                               const double* w, double* y, Py_ssize_t L)
    const char* minidl_conv_init()
    void minidl_conv_crop_f(float* out, const float* y, Py_ssize_t OH, Py_ssize_t OW,
                            Py_ssize_t Wp, float b)
    void minidl_conv_crop_d(double* out, const double* y, Py_ssize_t OH, Py_ssize_t OW,
                            Py_ssize_t Wp, double b)
    void minidl_dot_row_f(const float* g, const float* x, Py_ssize_t kw, Py_ssize_t n,
                          double* out)
    void minidl_dot_row_d(const double* g, const double* x, Py_ssize_t kw, Py_ssize_t n,
                          double* out)


cdef inline void _axpy(floating* y, const floating* x, floating a, Py_ssize_t n) noexcept nogil:
    """``y[k] += a * x[k]`` for ``0 <= k < n`` (y and x do not overlap)."""
    if floating is float:
        minidl_axpy_f(y, x, a, n)
    else:
        minidl_axpy_d(y, x, a, n)


cdef inline void _dot3x3(const floating* g, const floating* x, Py_ssize_t row, Py_ssize_t n,
                         double* out) noexcept nogil:
    """``out[3*i + j] += sum_k g[k] * x[k + i*row + j]`` for ``i, j < 3``."""
    if floating is float:
        minidl_dot3x3_f(g, x, row, n, out)
    else:
        minidl_dot3x3_d(g, x, row, n, out)


cdef inline void _dot_row(const floating* g, const floating* x, Py_ssize_t kw, Py_ssize_t n,
                          double* out) noexcept nogil:
    """``out[j] += sum_k g[k] * x[k + j]`` for ``j < kw`` (``2 <= kw <= 8``)."""
    if floating is float:
        minidl_dot_row_f(g, x, kw, n, out)
    else:
        minidl_dot_row_d(g, x, kw, n, out)


cdef inline double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """``sum_k x[k]`` (partial sums in the input's dtype)."""
    if floating is float:
        return minidl_sum_f(x, n)
    else:
        return minidl_sum_d(x, n)


cdef inline double _dot(const floating* g, const floating* x, Py_ssize_t n) noexcept nogil:
    """``sum_k g[k] * x[k]`` (partial sums in the input's dtype, returned as double)."""
    if floating is float:
        return minidl_dot_f(g, x, n)
    else:
        return minidl_dot_d(g, x, n)


def pad(const floating[:, :, :, :] x, floating[:, :, :, ::1] x_pad, Py_ssize_t pad_h,
        Py_ssize_t pad_w, int num_threads=1):
    """``x`` with ``pad_h`` / ``pad_w`` zeros on each side of H and W: the input of the direct
    kernels.

    Args:
        x (IN): ``(N, C, H, W)``, float32 or float64, any strides.
        x_pad (OUT): ``(N, C, H + 2*pad_h, W + 2*pad_w)``, same dtype, C-contiguous; fully
            overwritten.
        pad_h, pad_w: the zeros on each side (>= 0).
        num_threads: OpenMP threads (ignored in a serial build); work is split over the
            ``N*C`` planes.

    Preconditions (checked by the caller, not here): the shapes above; ``x_pad`` shares no
    memory with ``x``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Hp = x_pad.shape[2], Wp = x_pad.shape[3]
    cdef Py_ssize_t plane, n, c, i, j
    cdef floating* row
    if N * C * Hp * Wp == 0:
        return
    cdef floating* p0 = &x_pad[0, 0, 0, 0]
    for plane in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        n = plane // C
        c = plane - n * C
        for i in range(Hp):
            row = p0 + (plane * Hp + i) * Wp
            if i < pad_h or i >= pad_h + H:
                for j in range(Wp):
                    row[j] = 0
                continue
            for j in range(pad_w):
                row[j] = 0
            for j in range(W):
                row[pad_w + j] = x[n, c, i - pad_h, j]
            for j in range(pad_w + W, Wp):
                row[j] = 0


def direct_forward(const floating[:, :, :, ::1] x_pad, const floating[:, ::1] weight_rows,
                   const Py_ssize_t[::1] offsets, const floating[::1] bias, bint use_bias,
                   floating[:, :, :, ::1] out, floating[:, ::1] scratch, int num_threads=1):
    """Stride-1 convolution (cross-correlation) computed directly, without im2col.

    ``out[n, o, oh, ow] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_pad[n, c, oh + i,
    ow + j]`` (``+ bias[o]`` only when ``use_bias``), accumulated in the input's dtype, the
    taps in order ``(c, i, j)``. Four output planes at a time on the wide grid (the kernel
    ``minidl_conv_direct4`` of ``_conv.h``), then cropped into ``out``.

    Args:
        x_pad (IN): the input with its zero padding, ``(N, C_in, Hp, Wp)``, float32 or float64,
            C-contiguous.
        weight_rows (IN): the weight as ``(C4, C_in*kH*kW)``, same dtype, C-contiguous, with
            ``C4`` the number of output channels rounded up to a multiple of 4 (the extra rows
            are computed into scratch and never written to ``out``).
        offsets (IN): ``(C_in*kH*kW,)``: ``offsets[(c*kH + i)*kW + j] = (c*Hp + i)*Wp + j``.
        bias (IN): ``(C_out,)``, same dtype; read only when ``use_bias``.
        use_bias: whether to add ``bias``.
        out (OUT): ``(N, C_out, OH, OW)`` with ``OH = Hp - kH + 1``, ``OW = Wp - kW + 1``;
            fully overwritten.
        scratch (OUT): at least ``(num_threads, 4*L)`` with ``L = (OH - 1)*Wp + OW``, same
            dtype; clobbered.
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over the ``N*C4/4`` blocks of four output planes, channel-major, so each
    thread writes whole output channels as BatchNorm's kernels read them (one thread per
    channel): the data stays in that thread's cache.

    Preconditions (checked by the caller, not here): the shapes above, ``C4 >= C_out``
    (``out``'s channels), ``offsets`` for this kernel size and ``x_pad``; ``out`` shares no
    memory with the inputs; ``bias`` of length ``C_out`` when ``use_bias``; ``num_threads >=
    1``.
    """
    cdef Py_ssize_t N = x_pad.shape[0], C = x_pad.shape[1], Hp = x_pad.shape[2]
    cdef Py_ssize_t Wp = x_pad.shape[3]
    cdef Py_ssize_t O = out.shape[1], K = weight_rows.shape[1]
    cdef Py_ssize_t blocks = weight_rows.shape[0] // 4
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t L = (OH - 1) * Wp + OW
    cdef Py_ssize_t task, n, o, r
    cdef floating b
    cdef floating* wide
    if N * O * OH * OW == 0:
        return
    cdef const floating* x0 = &x_pad[0, 0, 0, 0]
    cdef const floating* w0 = &weight_rows[0, 0]
    cdef const Py_ssize_t* off = &offsets[0]
    cdef floating* out0 = &out[0, 0, 0, 0]

    for task in prange(N * blocks, nogil=True, num_threads=num_threads, schedule="static"):
        o = (task // N) * 4
        n = task - (task // N) * N
        wide = &scratch[threadid(), 0]
        if floating is float:
            minidl_conv_direct4_f(x0 + n * C * Hp * Wp, off, K, w0 + o * K, wide, L)
        else:
            minidl_conv_direct4_d(x0 + n * C * Hp * Wp, off, K, w0 + o * K, wide, L)
        for r in range(4):
            if o + r >= O:
                break
            b = bias[o + r] if use_bias else 0
            if floating is float:
                minidl_conv_crop_f(out0 + (n * O + o + r) * OH * OW, wide + r * L, OH, OW, Wp, b)
            else:
                minidl_conv_crop_d(out0 + (n * O + o + r) * OH * OW, wide + r * L, OH, OW, Wp, b)


def direct_weight_grad(const floating[:, :, :, ::1] x_pad, const floating[:, :, :, ::1] dout,
                       double[:, :, :, ::1] dweight, double[::1] bias_grad, bint want_bias_grad,
                       floating[:, ::1] scratch, int num_threads=1):
    """Weight (and bias) gradient of :func:`direct_forward`, without im2col.

    ``dweight[o, c, i, j] = sum_{n,oh,ow} dout[n, o, oh, ow] * x_pad[n, c, oh + i, ow + j]``
    and ``bias_grad[o] = sum dout[n, o]``: the sum over one plane is formed in the input's
    dtype (in SIMD-lane partial sums), the sum over planes in float64. Each ``dout`` plane is
    first copied into a per-thread wide plane (row width ``Wp``, zeros in the extra columns).

    Args:
        x_pad (IN): the forward's padded input, ``(N, C_in, Hp, Wp)``, float32 or float64,
            C-contiguous.
        dout (IN): ``(N, C_out, OH, OW)``, same dtype, C-contiguous, ``OW = Wp - kW + 1``.
        dweight (OUT): ``(C_out, C_in, kH, kW)``, float64; fully overwritten.
        bias_grad (OUT): ``(C_out,)``, float64; written only when ``want_bias_grad``.
        want_bias_grad: whether to compute ``bias_grad``.
        scratch (OUT): at least ``(num_threads, OH*Wp)``, same dtype; clobbered.
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over output channels, so each thread owns its rows of ``dweight``.

    Preconditions (checked by the caller, not here): ``dout`` is ``(N, C_out, OH, OW)`` with
    ``OH = Hp - kH + 1 >= 1``, ``OW = Wp - kW + 1 >= 1``; ``dweight`` is ``(C_out, C_in, kH,
    kW)`` with ``x_pad``'s ``C_in``; ``bias_grad`` of length ``C_out`` when
    ``want_bias_grad``; ``scratch`` has at least ``num_threads`` rows of at least ``OH*Wp``
    elements; no output shares memory with an input; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = x_pad.shape[0], C = x_pad.shape[1], Hp = x_pad.shape[2]
    cdef Py_ssize_t Wp = x_pad.shape[3]
    cdef Py_ssize_t O = dout.shape[1], OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t KH = dweight.shape[2], KW = dweight.shape[3]
    cdef Py_ssize_t L = (OH - 1) * Wp + OW
    cdef Py_ssize_t o, n, c, i, j, k, oh, ow
    cdef double total
    cdef floating* wide
    cdef const floating* g_plane
    cdef const floating* x_plane
    cdef double* dw
    if O * C * KH * KW == 0:
        return
    cdef const floating* x0 = &x_pad[0, 0, 0, 0]
    cdef const floating* g0 = &dout[0, 0, 0, 0]
    cdef double* dw0 = &dweight[0, 0, 0, 0]

    for o in prange(O, nogil=True, num_threads=num_threads, schedule="static"):
        wide = &scratch[threadid(), 0]
        for k in range(OH * Wp):
            wide[k] = 0  # the columns OW <= ow < Wp stay zero
        dw = dw0 + o * C * KH * KW
        for k in range(C * KH * KW):
            dw[k] = 0
        total = 0
        for n in range(N):
            g_plane = g0 + (n * O + o) * OH * OW
            for oh in range(OH):  # (an element loop here was not vectorized: 40% of the time)
                memcpy(wide + oh * Wp, g_plane + oh * OW, OW * sizeof(floating))
            if want_bias_grad:
                total = total + _sum(wide, L)
            for c in range(C):
                x_plane = x0 + (n * C + c) * Hp * Wp
                if KH == 3 and KW == 3:
                    _dot3x3(wide, x_plane, Wp, L, dw + c * 9)
                    continue
                for i in range(KH):
                    if 2 <= KW <= MINIDL_CONV_ROW_MAX:  # the row's KW taps in one pass
                        _dot_row(wide, x_plane + i * Wp, KW, L, dw + (c * KH + i) * KW)
                        continue
                    for j in range(KW):
                        dw[(c * KH + i) * KW + j] += _dot(wide, x_plane + i * Wp + j, L)
        if want_bias_grad:
            bias_grad[o] = total


def direct_input_grad(const floating[:, :, :, ::1] dout_wide, const floating[:, :, :, ::1] weight,
                      floating[:, :, :, ::1] dx, Py_ssize_t pad_h, Py_ssize_t pad_w,
                      floating[:, ::1] scratch, int num_threads=1):
    """Input gradient of :func:`direct_forward` (a transposed convolution), without col2im.

    ``dx[n, c, h, w] = sum_{o,i,j} dout[n, o, h + pH - i, w + pW - j] * weight[o, c, i, j]``
    over the terms whose output position exists, accumulated in the input's dtype.

    Args:
        dout_wide (IN): ``(N, C_out, OH, Wp)``, float32 or float64, C-contiguous: ``dout`` in
            its first ``OW = Wp - kW + 1`` columns and zeros in the others.
        weight (IN): ``(C_out, C_in, kH, kW)``, same dtype, C-contiguous.
        dx (OUT): ``(N, C_in, H, W)``, same dtype; fully overwritten.
        pad_h, pad_w: the forward's zero padding (``Hp = H + 2*pH``, ``Wp = W + 2*pW``).
        scratch (OUT): at least ``(num_threads, Hp*Wp)``, same dtype; clobbered.
        num_threads: OpenMP threads (ignored in a serial build).

    Work is split over the ``N*C_in`` input planes, so no two threads write the same element.

    Preconditions (checked by the caller, not here): ``pH, pW >= 0``; ``dout_wide`` is ``(N, C_out,
    OH, Wp)`` with ``Wp = W + 2*pW``, ``OH = H + 2*pH - kH + 1 >= 1`` and ``kW <= Wp``;
    ``weight`` is ``(C_out, C_in, kH, kW)`` for ``dx`` ``(N, C_in, H, W)``; ``scratch`` has at
    least ``num_threads`` rows of at least ``Hp*Wp`` elements; ``dx`` shares no memory with the
    inputs; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t O = dout_wide.shape[1], OH = dout_wide.shape[2], Wp = dout_wide.shape[3]
    cdef Py_ssize_t KH = weight.shape[2], KW = weight.shape[3]
    cdef Py_ssize_t Hp = H + 2 * pad_h
    cdef Py_ssize_t OW = Wp - KW + 1
    cdef Py_ssize_t L = (OH - 1) * Wp + OW
    cdef Py_ssize_t task, n, o, c, i, j, h, k
    cdef floating* wide
    cdef floating* dx_plane
    cdef const floating* g_plane
    if N * C * H * W == 0:
        return
    cdef const floating* g0 = &dout_wide[0, 0, 0, 0]
    cdef const floating* w0 = &weight[0, 0, 0, 0]
    cdef floating* dx0 = &dx[0, 0, 0, 0]

    for task in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // C
        c = task - n * C
        wide = &scratch[threadid(), 0]
        for k in range(Hp * Wp):
            wide[k] = 0
        for o in range(O):
            g_plane = g0 + (n * O + o) * OH * Wp
            for i in range(KH):
                for j in range(KW):
                    _axpy(wide + i * Wp + j, g_plane, w0[((o * C + c) * KH + i) * KW + j], L)
        dx_plane = dx0 + task * H * W
        for h in range(H):
            memcpy(dx_plane + h * W, wide + (h + pad_h) * Wp + pad_w, W * sizeof(floating))


# ------------------------------------------------------------------ pointwise (1x1) convolution
# A 1x1 convolution with stride reads the input at every sH-th row and sW-th column only
# (``pad`` above, with no padding, copies those samples from a strided view, plane by plane);
# its input gradient is zero everywhere else (``scatter_strided``), and its bias gradient is a
# per-channel sum of the upstream gradient (``channel_sums``).

def scatter_strided(const floating[:, :, :, ::1] src, floating[:, :, :, ::1] dst,
                    Py_ssize_t stride_h, Py_ssize_t stride_w, int num_threads=1):
    """``dst[n, c, i*sH, j*sW] = src[n, c, i, j]`` and zeros everywhere else: the adjoint of
    taking every ``sH``-th row and ``sW``-th column (the input gradient of a strided 1x1
    convolution); with strides 1 and a wider ``dst``, ``src``'s rows followed by zeros (the
    direct kernels' ``dout_wide``).

    Args:
        src (IN): ``(N, C, OH, OW)``, float32 or float64, C-contiguous.
        dst (OUT): ``(N, C, H, W)``, same dtype, C-contiguous, with ``(OH - 1)*sH < H <=
            OH*sH`` and ``(OW - 1)*sW < W`` (columns past ``OW*sW`` are zeros); fully
            overwritten.
        stride_h, stride_w: the strides (>= 1).
        num_threads: OpenMP threads (ignored in a serial build); work is split over the
            ``N*C`` planes, image-major (the batched products around it split the same way).

    Preconditions (checked by the caller, not here): the shapes above; ``dst`` shares no
    memory with ``src``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = dst.shape[0], C = dst.shape[1], H = dst.shape[2], W = dst.shape[3]
    cdef Py_ssize_t OH = src.shape[2], OW = src.shape[3]
    cdef Py_ssize_t plane, i, j
    cdef floating* row
    cdef const floating* values
    if N * C * H * W == 0:
        return
    cdef floating* d0 = &dst[0, 0, 0, 0]
    cdef const floating* s0 = &src[0, 0, 0, 0]
    for plane in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        for i in range(H):
            row = d0 + (plane * H + i) * W
            for j in range(W):
                row[j] = 0
            if i % stride_h == 0:
                values = s0 + (plane * OH + i // stride_h) * OW
                for j in range(OW):
                    row[j * stride_w] = values[j]


def channel_sums(const floating[:, :, ::1] x, double[::1] sums, int num_threads=1):
    """``sums[c] = sum over n, p of x[n, c, p]``, accumulated in float64 (a bias gradient).

    Each channel's values are summed image by image (:func:`_row_sum`, then the images in
    order), as :func:`nchw_to_rows` sums them: the result does not depend on the number of
    threads. The rows ``x[n, c]`` are summed first, split among the threads in memory order,
    then each channel's row sums added (reading a channel's rows one after the other, ``C * P``
    values apart, ran at half the memory's speed).

    Args:
        x (IN): ``(N, C, P)``, float32 or float64, C-contiguous.
        sums (OUT): ``(C,)``, float64; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build); work is split over the rows
            ``(n, c)``, then over channels.

    Preconditions (checked by the caller, not here): ``sums`` of length ``C``;
    ``num_threads >= 1``.

    Raises:
        MemoryError: the ``N * C`` doubles of the row sums could not be allocated.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c, n, r
    cdef double total
    cdef double* rows
    if N * P == 0:
        for c in range(C):
            sums[c] = 0
        return
    rows = <double*>malloc(N * C * sizeof(double))
    if rows == NULL:
        raise MemoryError()
    try:
        for r in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
            rows[r] = _row_sum(&x[r // C, r % C, 0], P)
        for c in prange(C, nogil=True, num_threads=num_threads, schedule="static"):
            total = 0
            for n in range(N):
                total = total + rows[n * C + c]
            sums[c] = total
    finally:
        free(rows)
