"""Winograd F(2x2, 3x3) and F(2x2, 5x5) convolution kernels: forward, and weight/input
gradients, fused.

Lavin & Gray, 2016, "Fast Algorithms for Convolutional Neural Networks": a 3x3, stride-1
convolution computes each 2x2 block of outputs from a 4x4 input tile with 16 multiplications per
(input channel, output channel) pair instead of 36. The math, the tile numbering and a NumPy
version of every step are in ``minidl/reference/winograd.py``::

    V[xi] = B^T d B (per tile, input channel)     M[xi] = V[xi] @ U[xi]     y = A^T M A
    Z[xi] = A dy A^T (per tile, output channel)   dU[xi] += V[xi]^T @ Z[xi]
    dV[xi] = Z[xi] @ U[xi]^T                       dx += B dV B^T (overlapping tiles)

with ``U[xi] = G g G^T`` the transformed weight (:func:`weight_transform`, in float64).

F(2x2, 5x5) (:func:`weight_grad`, and :func:`forward` with a 36-plane ``u``) is the same with
6x6 input tiles and 36 planes (``xi = 6*a + b``); its input gradient is a forward of ``dout``
with the flipped kernel (the driver's), so it has no input-gradient kernel. Small 3x3 layers
take that route too (:func:`weight_grad` with 16 planes), see ``conv_winograd.py``.

Each image is processed in blocks of ``block_rows`` rows of tiles (the forward's and
:func:`weight_grad`'s blocks may run on from one image into the next), by one thread from start to
end: the block's input rows are gathered into NHWC order in the thread's scratch, transformed
(``V``), multiplied by the 16 ``U`` matrices (``M``), transformed back and written to the NCHW
output. So ``V`` and ``M`` never leave the cache, and the products are small in-cache matrix
products computed by the kernel of ``_winograd.h`` (4 rows x 2 SIMD vectors of columns at a
time), not BLAS calls. The backward pass does the same with ``Z``; its weight gradient is summed
per chunk of consecutive images (``chunks`` of them, the batch split as evenly as possible; one
``dweight`` row of the caller's array per chunk, each chunk summed by one thread in image
order), and the input gradient of an image is summed in a padded NHWC image in the scratch,
then written to ``dx``. The chunks depend on the batch, not on the threads, and
:func:`sum_chunks` adds their sums in chunk order, so the weight and bias gradients are
bit-identical for every thread count.

Padded sizes (the products work on whole 4-row steps and 16-column steps):
``CP``/``KP`` = C/K rounded up to a multiple of 16, ``C4`` = C rounded up to a multiple of 4.
The transformed weight ``u`` is ``(16, C, KP)``, its transpose ``ut`` ``(16, K, CP)``, both with
zeros in the extra columns.

These kernels trust their inputs: shapes, dtypes and contiguity are checked by
``minidl.functional``. Every function writes its results into caller-allocated arrays (marked
OUT); arrays marked IN are only read. Work is split over blocks of tile rows of each image in
the forward pass and over chunks of images in the backward pass, with ``prange`` (OpenMP, when
compiled in), without the GIL. Every index and size is a ``Py_ssize_t``; each product of sizes
is bounded by the size of an array the caller allocated (checked in Python to fit in memory), so
none can overflow.
"""
from cython.parallel cimport prange, threadid

from ._common cimport build_facts, ceil_div, floating, round_up
from ._transpose cimport transpose, transpose_init


cdef extern from "_winograd.h" nogil:
    void minidl_wino_input_tile_f(const float* d, Py_ssize_t row, float* v, Py_ssize_t plane,
                                  Py_ssize_t C)
    void minidl_wino_input_tile_d(const double* d, Py_ssize_t row, double* v, Py_ssize_t plane,
                                  Py_ssize_t C)
    void minidl_wino_output_tile_f(const float* m, Py_ssize_t plane, float* y0, float* y1,
                                   Py_ssize_t K)
    void minidl_wino_output_tile_d(const double* m, Py_ssize_t plane, double* y0, double* y1,
                                   Py_ssize_t K)
    void minidl_wino_grad_tile_f(const float* g, Py_ssize_t row, float* z, Py_ssize_t plane,
                                 Py_ssize_t K)
    void minidl_wino_grad_tile_d(const double* g, Py_ssize_t row, double* z, Py_ssize_t plane,
                                 Py_ssize_t K)
    void minidl_wino_input_grad_tile_f(const float* e, Py_ssize_t plane, float* d,
                                       Py_ssize_t row, Py_ssize_t C)
    void minidl_wino_input_grad_tile_d(const double* e, Py_ssize_t plane, double* d,
                                       Py_ssize_t row, Py_ssize_t C)
    void minidl_wino_gemm_f(const float* A, Py_ssize_t rs, Py_ssize_t cs, const float* B,
                            Py_ssize_t ldb, float* C, Py_ssize_t ldc, Py_ssize_t rows,
                            Py_ssize_t inner, Py_ssize_t cols, int acc)
    void minidl_wino_gemm_d(const double* A, Py_ssize_t rs, Py_ssize_t cs, const double* B,
                            Py_ssize_t ldb, double* C, Py_ssize_t ldc, Py_ssize_t rows,
                            Py_ssize_t inner, Py_ssize_t cols, int acc)
    void minidl_wino5_input_tile_f(const float* d, Py_ssize_t row, float* v, Py_ssize_t plane,
                                   Py_ssize_t C)
    void minidl_wino5_input_tile_d(const double* d, Py_ssize_t row, double* v,
                                   Py_ssize_t plane, Py_ssize_t C)
    void minidl_wino5_output_tile_f(const float* m, Py_ssize_t plane, float* y0, float* y1,
                                    Py_ssize_t K)
    void minidl_wino5_output_tile_d(const double* m, Py_ssize_t plane, double* y0, double* y1,
                                    Py_ssize_t K)
    void minidl_wino5_grad_tile_f(const float* g, Py_ssize_t row, float* z, Py_ssize_t plane,
                                  Py_ssize_t K)
    void minidl_wino5_grad_tile_d(const double* g, Py_ssize_t row, double* z, Py_ssize_t plane,
                                  Py_ssize_t K)
    const char* minidl_wino_init()
    void minidl_wino_filters16(const double* g, double* u)
    void minidl_wino_filters16_grad(const double* u, double* g)
    void minidl_wino5_filters16(const double* g, double* u)
    void minidl_wino5_filters16_grad(const double* u, double* g)


#: The instruction set of the tile products on this CPU ("avx512f", "avx2" or "baseline").
ISA = minidl_wino_init().decode()
#: What this extension was compiled with (read by ``minidl.show_config()``).
BUILD = build_facts()
transpose_init()

cdef enum:
    ROW_STEP = 4      # the products' rows come in steps of 4
    COL_STEP = 16     # and their columns in steps of 16 (a whole number of SIMD vectors)
    PLANE_PAD = 16    # extra elements between planes (see _Layout)
    ALIGN = 16        # every scratch buffer starts on a multiple of 16 elements (64 bytes)
    SUM_BLOCK = 2048  # elements per task of sum_chunks (16 KiB of float64 sums, in L1)

#: ``(ROW_STEP, COL_STEP)``: the callers pad ``u``, ``ut`` and ``dweight`` to these steps.
PRODUCT_STEPS = (ROW_STEP, COL_STEP)


cdef struct _Layout:
    # The per-thread scratch, in elements. The 16 planes of V and of M/Z are PLANE_PAD
    # elements further apart than their size: a tile transform touches one element in each
    # plane at a time, and with plane sizes a multiple of 4 KiB those 16 addresses would share
    # one cache set (measured: the transforms ran 5-10x slower).
    Py_ssize_t TH, TW, CP, KP, rows_per_block, tile_rows
    Py_ssize_t planes, halo              # 16 and 2 for a 3x3 kernel, 36 and 4 for 5x5
    Py_ssize_t v_plane, m_plane          # plane strides of V (rows of CP) and M/Z (rows of KP)
    Py_ssize_t rows_at, v_at, m_at, out_at, img_at, size


cdef _Layout _layout(Py_ssize_t C, Py_ssize_t K, Py_ssize_t OH, Py_ssize_t OW,
                     Py_ssize_t block_rows, bint image, Py_ssize_t kernel=3) noexcept nogil:
    cdef _Layout L
    L.planes = (kernel + 1) * (kernel + 1)  # a tile of 2x2 outputs reads kernel + 1 squared
    L.halo = kernel - 1                     # its inputs: 2 + halo per side
    L.TH = (OH + 1) // 2
    L.TW = (OW + 1) // 2
    L.CP = round_up(C, COL_STEP)
    L.KP = round_up(K, COL_STEP)
    # (the forward's blocks may run on across images, rows of tiles of consecutive images;
    # the 3x3 backward's stay in one: its callers pass at most TH)
    L.rows_per_block = block_rows
    L.tile_rows = round_up(L.rows_per_block * L.TW, ROW_STEP)
    L.v_plane = L.tile_rows * L.CP + PLANE_PAD
    L.m_plane = L.tile_rows * L.KP + PLANE_PAD
    L.rows_at = 0                                          # a block's input rows, NHWC
    L.v_at = round_up(L.rows_at + (2 * L.rows_per_block + L.halo) * (2 * L.TW + L.halo) * C,
                      ALIGN)
    L.m_at = round_up(L.v_at + L.planes * L.v_plane, ALIGN)    # V, then M or Z
    L.out_at = round_up(L.m_at + L.planes * L.m_plane, ALIGN)  # a block's output (grad) rows
    L.img_at = round_up(L.out_at + 2 * L.rows_per_block * 2 * L.TW * K, ALIGN)
    # then the input gradient of one image, NHWC with padding (backward only)
    L.size = L.img_at + (((2 * L.TH + L.halo) * (2 * L.TW + L.halo) * C) if image else 0) + ALIGN
    return L


def scratch_size(Py_ssize_t C, Py_ssize_t K, Py_ssize_t OH, Py_ssize_t OW,
                 Py_ssize_t block_rows, bint input_grad, Py_ssize_t kernel=3):
    """Elements of scratch each thread needs for :func:`forward` (``input_grad`` False) or
    :func:`backward` with ``block_rows`` rows of tiles per block; with ``kernel=5``, for
    a 5x5 :func:`forward` and :func:`weight_grad` (``kernel`` 3 for its 3x3 form).

    Preconditions (checked by the caller, not here): every argument >= 1, and the sizes those
    of arrays that exist (so that the result, about ``16*(OW/2)*block_rows*(C + K)`` elements,
    cannot overflow ``Py_ssize_t``).
    """
    return _layout(C, K, OH, OW, block_rows, input_grad, kernel).size


cdef inline floating* _aligned(floating* p) noexcept nogil:
    """``p`` rounded up to a multiple of 64 bytes (the scratch has ALIGN elements of slack)."""
    return <floating*>((<size_t>p + 63) & ~(<size_t>63))


cdef inline void _gather_rows(const floating* img, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t row0, Py_ssize_t col0, Py_ssize_t rows,
                              Py_ssize_t wide, floating* dst) noexcept nogil:
    """``dst[(i*wide + col)*C + c] = img[c, row0 + i, col0 + col]`` (NCHW -> NHWC) for
    ``i < rows``, ``col < wide``, with zeros outside the ``H x W`` image."""
    cdef Py_ssize_t i, j, r, lo, hi
    cdef floating* d
    lo = -col0 if col0 < 0 else 0                         # first col inside the image
    hi = W - col0 if W - col0 < wide else wide             # one past the last
    if hi < lo:
        hi = lo
    for i in range(rows):
        r = row0 + i
        d = dst + i * wide * C
        if r < 0 or r >= H:
            for j in range(wide * C):
                d[j] = 0
            continue
        for j in range(lo * C):
            d[j] = 0
        for j in range(hi * C, wide * C):
            d[j] = 0
        # the C rows img[c, r, col0 + lo : col0 + hi] become columns of d
        transpose(img + r * W + col0 + lo, H * W, d + lo * C, C, C, hi - lo, <floating*>NULL)


cdef inline void _zero(floating* planes, Py_ssize_t plane, Py_ssize_t width, Py_ssize_t row0,
                       Py_ssize_t row1, Py_ssize_t col0, Py_ssize_t col1,
                       Py_ssize_t count=16) noexcept nogil:
    """Zero columns ``col0 .. col1 - 1`` of rows ``row0 .. row1 - 1`` (rows of ``width``) of
    each of ``count`` planes: the rows and columns that only round a block up to whole steps of
    the products, so that the products never read uninitialized memory."""
    cdef Py_ssize_t xi, r, j
    for xi in range(count):
        for r in range(row0, row1):
            for j in range(col0, col1):
                planes[xi * plane + r * width + j] = 0


cdef inline void _gemm(const floating* A, Py_ssize_t rs, Py_ssize_t cs, const floating* B,
                       Py_ssize_t ldb, floating* C, Py_ssize_t ldc, Py_ssize_t rows,
                       Py_ssize_t inner, Py_ssize_t cols, int acc) noexcept nogil:
    if floating is float:
        minidl_wino_gemm_f(A, rs, cs, B, ldb, C, ldc, rows, inner, cols, acc)
    else:
        minidl_wino_gemm_d(A, rs, cs, B, ldb, C, ldc, rows, inner, cols, acc)


cdef inline Py_ssize_t _rows_in_image(Py_ssize_t R, Py_ssize_t end, Py_ssize_t TH,
                                      Py_ssize_t th0) noexcept nogil:
    """How many of the rows of tiles ``R .. end - 1`` (of the ``N*TH`` rows of the batch,
    image after image) lie in row ``R``'s image, whose row ``th0`` it is."""
    return TH - th0 if R + TH - th0 <= end else end - R


cdef inline void _transform_input_rows(const floating* x0, Py_ssize_t C, Py_ssize_t H,
                                       Py_ssize_t W, Py_ssize_t pad_h, Py_ssize_t pad_w,
                                       Py_ssize_t R0, Py_ssize_t rb, _Layout* L,
                                       floating* rows, floating* v) noexcept nogil:
    """V of the tiles in rows ``R0 .. R0 + rb - 1`` of the batch's ``N*TH`` rows of tiles
    (image after image; a block may span images): tile ``t`` of the block is row ``t`` of each
    plane, and the planes' padding rows are zeroed. Each image's input rows (``2*rows +
    halo``; neighbouring tiles share ``halo``) are gathered into ``rows`` once."""
    cdef Py_ssize_t R = R0, n, th0, count, r, tw, t
    cdef Py_ssize_t wide = 2 * L.TW + L.halo
    cdef floating* d
    while R < R0 + rb:
        n = R // L.TH
        th0 = R - n * L.TH
        count = _rows_in_image(R, R0 + rb, L.TH, th0)
        _gather_rows(x0 + n * C * H * W, C, H, W, 2 * th0 - pad_h, -pad_w,
                     2 * count + L.halo, wide, rows)
        for r in range(count):
            for tw in range(L.TW):
                t = (R - R0 + r) * L.TW + tw
                d = rows + (2 * r * wide + 2 * tw) * C
                if floating is float:
                    if L.planes == 16:
                        minidl_wino_input_tile_f(d, wide * C, v + t * L.CP, L.v_plane, C)
                    else:
                        minidl_wino5_input_tile_f(d, wide * C, v + t * L.CP, L.v_plane, C)
                else:
                    if L.planes == 16:
                        minidl_wino_input_tile_d(d, wide * C, v + t * L.CP, L.v_plane, C)
                    else:
                        minidl_wino5_input_tile_d(d, wide * C, v + t * L.CP, L.v_plane, C)
        R = R + count
    # the columns C .. C4 are read by dU's rows, the rows up to a step of 4 by the products
    _zero(v, L.v_plane, L.CP, 0, rb * L.TW, C, round_up(C, ROW_STEP), L.planes)
    _zero(v, L.v_plane, L.CP, rb * L.TW, round_up(rb * L.TW, ROW_STEP), 0, L.CP, L.planes)


cdef void _transform_filters(const floating* w0, floating* u0, Py_ssize_t K, Py_ssize_t C,
                             Py_ssize_t KP, Py_ssize_t c, Py_ssize_t r,
                             bint flip) noexcept nogil:
    """Columns ``u[:, c, :]`` of :func:`weight_transform`: ``U`` of every ``r x r`` filter
    ``weight[k, c]`` (``weight[c, k]`` rotated by 180 degrees when ``flip``; zeros for ``k >=
    K``)."""
    cdef Py_ssize_t k0, k, i, j, end, planes = (r + 1) * (r + 1), taps = r * r
    cdef double filters[25][16]  # 16 filters, tap by tap (the lanes of minidl_wino*_filters16)
    cdef double block[36][16]  # 16 filters' U, plane by plane: u's planes are written as rows
    for k0 in range(0, KP, 16):
        end = k0 + 16 if k0 + 16 < KP else KP
        for j in range(taps):
            for k in range(k0, k0 + 16):
                if k >= K:
                    filters[j][k - k0] = 0
                elif flip:
                    filters[j][k - k0] = w0[(c * K + k) * taps + taps - 1 - j]
                else:
                    filters[j][k - k0] = w0[(k * C + c) * taps + j]
        if r == 5:
            minidl_wino5_filters16(&filters[0][0], &block[0][0])
        else:
            minidl_wino_filters16(&filters[0][0], &block[0][0])
        # (writing the planes one filter at a time would put 16 or 36 stores a plane
        # apart, often a multiple of 4 KiB: the same cache set)
        for i in range(planes):
            for k in range(k0, end):
                u0[(i * C + c) * KP + k] = <floating>block[i][k - k0]


def weight_transform(const floating[:, :, :, ::1] weight, floating[:, :, ::1] u,
                     int num_threads=1, bint flip=False):
    """The transformed weight ``U = G g G^T`` of every filter, in float64 arithmetic.

    Args:
        weight (IN): ``(K, C, 3, 3)`` (or ``(K, C, 5, 5)``), float32 or float64, C-contiguous;
            with ``flip``, ``(C, K, r, r)``.
        u (OUT): ``(16, C, KP)`` (``(36, C, KP)``), same dtype, ``KP >= K``: ``u[4*a + b, c,
            k] = U[a, b]`` (``u[6*a + b, c, k]``) of filter ``weight[k, c]``, zeros in columns
            ``>= K``; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build); work is split over ``C``.
        flip: transform instead the filters of the input gradient's convolution, ``weight[c,
            k]`` rotated by 180 degrees (its input and output channels swapped): no flipped
            copy of the weight is made.

    Preconditions (checked by the caller, not here): the shapes above; ``u`` shares no
    memory with ``weight``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t K = weight.shape[1] if flip else weight.shape[0]
    cdef Py_ssize_t C = weight.shape[0] if flip else weight.shape[1], KP = u.shape[2]
    cdef Py_ssize_t c, r = weight.shape[2]
    if C * KP == 0:
        return
    cdef const floating* w0 = &weight[0, 0, 0, 0] if K > 0 else NULL
    cdef floating* u0 = &u[0, 0, 0]
    for c in prange(C, nogil=True, num_threads=num_threads, schedule="static"):
        _transform_filters(w0, u0, K, C, KP, c, r, flip)



cdef inline Py_ssize_t _mirror(Py_ssize_t a) noexcept nogil:
    """Row ``a`` of ``G J`` is row ``_mirror(a)`` of ``G`` (F(2x2, 3x3); see flip_transform)."""
    return 3 - a if a == 0 or a == 3 else a


def flip_transform(const floating[:, :, :] u, floating[:, :, ::1] u_flip, int num_threads=1):
    """The transformed weight of the input gradient's kernel (F(2x2, 3x3)) from the forward's.

    The input gradient is the convolution of ``dout`` with ``g'[c, k] = J g[k, c] J`` (each
    filter rotated by 180 degrees, channels swapped; ``J`` reverses the 3 taps). ``G J = P G``,
    with ``P`` the permutation that swaps rows 0 and 3 (G's rows for the points 0 and infinity;
    rows 1 and 2, the points 1 and -1, are symmetric), so ``U' = G J g J G^T = P U P^T``: plane
    ``4*a + b`` of ``U'`` is plane ``4*P(a) + P(b)`` of ``U``, transposed. A pass over ``U``
    (the 180-degree transform of every filter from the weight computed the same numbers up to
    the order of two additions, at 3 times the cost, and needed a copy of the weight kept from
    the forward).

    Args:
        u (IN): ``(16, C, K)`` float32 or float64, rows contiguous (any other strides): the
            forward's transformed weight (:func:`weight_transform`).
        u_flip (OUT): ``(16, K, CP)``, same dtype, C-contiguous, ``CP >= C``: ``u_flip[4*a + b,
            k, c] = u[4*P(a) + P(b), c, k]``, zeros in columns ``>= C``; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).

    Preconditions (checked by the caller, not here): the shapes above, ``u.strides[2]`` the
    item size; ``u_flip`` shares no memory with ``u``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t C = u.shape[1], K = u.shape[2], CP = u_flip.shape[2]
    cdef Py_ssize_t blocks = ceil_div(C, 8)
    cdef Py_ssize_t task, p, source, c0, rows, k, c
    if K * CP == 0:
        return
    cdef Py_ssize_t plane = u.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t row = u.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef floating* f0 = &u_flip[0, 0, 0]
    cdef const floating* u0 = &u[0, 0, 0] if C > 0 else NULL
    for task in prange(16 * blocks, nogil=True, num_threads=num_threads, schedule="static"):
        p = task // blocks
        c0 = (task - p * blocks) * 8
        rows = 8 if c0 + 8 < C else C - c0
        source = 4 * _mirror(p // 4) + _mirror(p % 4)
        transpose(u0 + source * plane + c0 * row, row, f0 + p * K * CP + c0, CP, rows, K, NULL)
        if c0 + 8 >= C:  # the plane's last block also writes its zero columns
            for k in range(K):
                for c in range(C, CP):
                    f0[(p * K + k) * CP + c] = 0
    if C == 0:
        for k in range(16 * K * CP):
            f0[k] = 0


cdef void _transform_filter_grads(const double[:, :, :] du, floating* d0, Py_ssize_t K,
                                 Py_ssize_t C, Py_ssize_t c, Py_ssize_t r) noexcept nogil:
    """Filters ``dweight[:, c]`` of :func:`weight_grad_transform`, 16 at a time."""
    cdef Py_ssize_t k0, k, i, j, end, planes = (r + 1) * (r + 1), taps = r * r
    cdef double filters[25][16]  # 16 filters' gradients, tap by tap
    cdef double block[36][16]  # 16 filters' dU, read plane by plane (see weight_transform)
    for k0 in range(0, K, 16):
        end = k0 + 16 if k0 + 16 < K else K
        for i in range(planes):
            for k in range(k0, k0 + 16):
                block[i][k - k0] = du[i, c, k] if k < end else 0
        if r == 5:
            minidl_wino5_filters16_grad(&block[0][0], &filters[0][0])
        else:
            minidl_wino_filters16_grad(&block[0][0], &filters[0][0])
        for k in range(k0, end):
            for j in range(taps):
                d0[(k * C + c) * taps + j] = <floating>filters[j][k - k0]


def weight_grad_transform(const double[:, :, :] du, floating[:, :, :, ::1] dweight,
                          int num_threads=1):
    """The weight gradient ``G^T dU G`` of every filter from the transformed gradient ``dU``,
    in float64 arithmetic.

    Args:
        du (IN): ``(16, C, K)`` (``(36, C, K)``) float64 (any strides): ``du[4*a + b, c, k] =
            dU[a, b]`` (``du[6*a + b, c, k]``) of filter ``(k, c)``.
        dweight (OUT): ``(K, C, 3, 3)`` (``(K, C, 5, 5)``), float32 or float64, C-contiguous;
            fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build); work is split over ``C``.

    Preconditions (checked by the caller, not here): the shapes above; no shared memory;
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t K = dweight.shape[0], C = dweight.shape[1], r = dweight.shape[2]
    cdef Py_ssize_t c
    if C * K == 0:
        return
    cdef floating* d0 = &dweight[0, 0, 0, 0]
    for c in prange(C, nogil=True, num_threads=num_threads, schedule="static"):
        _transform_filter_grads(du, d0, K, C, c, r)


def forward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] u,
            const floating[::1] bias, bint use_bias, floating[:, :, :, ::1] out,
            Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t block_rows,
            floating[:, ::1] scratch, int num_threads=1):
    """3x3 (5x5) stride-1 convolution ``out = conv(x, g) (+ bias)`` by F(2x2, 3x3) (F(2x2,
    5x5)).

    Args:
        x (IN): ``(N, C, H, W)``, float32 or float64, C-contiguous.
        u (IN): the transformed weight ``(16, C, KP)`` (``(36, C, KP)``: the kernel size is
            told by it), same dtype, zeros in columns >= K (``u[4*a + b, c, k]`` or ``u[6*a
            + b, c, k]`` is ``(G g G^T)[a, b]`` of filter ``(k, c)``).
        bias (IN): ``(K,)``, same dtype; read only when ``use_bias``.
        use_bias: whether to add ``bias``.
        out (OUT): ``(N, K, OH, OW)`` with ``OH = H + 2*pH - r + 1``, ``OW = W + 2*pW - r + 1``
            (both >= 1) for an ``r x r`` kernel, same dtype, C-contiguous; fully overwritten.
        pad_h, pad_w: zero padding on each side (read as zeros, never materialized).
        block_rows: rows of tiles per block (>= 1); a block may span images (its rows are
            rows of the batch's ``N*TH`` rows of tiles, image after image).
        scratch (OUT): ``(num_threads, scratch_size(C, K, OH, OW, block_rows, False, r))``,
            same dtype; clobbered.
        num_threads: OpenMP threads (ignored in a serial build).

    Preconditions (checked by the caller, not here): ``pH, pW >= 0``; ``OH, OW >= 1`` as above
    (``out``'s last two sizes); ``u`` exactly ``(16, C, KP)`` or ``(36, C, KP)`` with ``KP`` =
    ``K`` rounded up to a multiple of 16 (``PRODUCT_STEPS``) and zeros in columns ``>= K``;
    ``bias`` of length ``K`` when ``use_bias``; ``block_rows >= 1``; ``scratch`` of at least
    ``num_threads`` rows of at least that size; ``out`` shares no memory with the inputs;
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef _Layout L = _layout(C, K, OH, OW, block_rows, False, 3 if u.shape[0] == 16 else 5)
    cdef Py_ssize_t blocks = ceil_div(N * L.TH, L.rows_per_block)
    cdef Py_ssize_t task, n, th0, R0, R, rb, count, r, tw, t, xi, i, rows
    cdef Py_ssize_t wide = 2 * L.TW
    cdef floating* base
    cdef floating* v
    cdef floating* m
    cdef floating* orow
    cdef floating* y0
    cdef floating* y1
    if N * K * OH * OW == 0:
        return
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef const floating* u0 = &u[0, 0, 0]
    cdef floating* out0 = &out[0, 0, 0, 0]
    cdef const floating* bias0 = &bias[0] if use_bias else NULL

    # one task per block of rows of tiles of the batch (they may span images)
    for task in prange(blocks, nogil=True, num_threads=num_threads, schedule="static"):
        base = _aligned(&scratch[threadid(), 0])
        v = base + L.v_at
        m = base + L.m_at
        orow = base + L.out_at
        R0 = task * L.rows_per_block
        rb = L.rows_per_block if R0 + L.rows_per_block <= N * L.TH else N * L.TH - R0
        _transform_input_rows(x0, C, H, W, pad_h, pad_w, R0, rb, &L, base + L.rows_at, v)
        for xi in range(L.planes):
            _gemm(v + xi * L.v_plane, L.CP, 1, u0 + xi * C * L.KP, L.KP,
                  m + xi * L.m_plane, L.KP, round_up(rb * L.TW, ROW_STEP), C, L.KP, 0)
        R = R0
        while R < R0 + rb:  # each image's part of the block: output tiles, then NCHW rows
            n = R // L.TH
            th0 = R - n * L.TH
            count = _rows_in_image(R, R0 + rb, L.TH, th0)
            for r in range(count):
                for tw in range(L.TW):
                    t = (R - R0 + r) * L.TW + tw
                    y0 = orow + (2 * r * wide + 2 * tw) * K
                    y1 = y0 + wide * K
                    if floating is float:
                        if L.planes == 16:
                            minidl_wino_output_tile_f(m + t * L.KP, L.m_plane, y0, y1, K)
                        else:
                            minidl_wino5_output_tile_f(m + t * L.KP, L.m_plane, y0, y1, K)
                    else:
                        if L.planes == 16:
                            minidl_wino_output_tile_d(m + t * L.KP, L.m_plane, y0, y1, K)
                        else:
                            minidl_wino5_output_tile_d(m + t * L.KP, L.m_plane, y0, y1, K)
            rows = 2 * count if 2 * (th0 + count) <= OH else OH - 2 * th0
            for i in range(rows):  # -> out[n, :, 2*th0 + i, :] (+ bias)
                transpose(orow + i * wide * K, K, out0 + (n * K * OH + 2 * th0 + i) * OW,
                           OH * OW, OW, K, bias0)
            R = R + count


def backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dout,
             const floating[:, :, ::1] ut, floating[:, :, :, ::1] dweight,
             double[:, ::1] dbias, bint want_bias, floating[:, :, :, ::1] dx, bint input_grad,
             Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t block_rows, Py_ssize_t chunks,
             floating[:, ::1] scratch, int num_threads=1):
    """Gradients of :func:`forward`: the transformed weight gradient and the bias gradient per
    chunk of images, and the input gradient.

    Args:
        x (IN): the forward's input ``(N, C, H, W)``, float32 or float64, C-contiguous.
        dout (IN): ``(N, K, OH, OW)``, same dtype, C-contiguous.
        ut (IN): the transposed transformed weight ``(16, K, CP)`` (``ut[xi] = u[xi].T``),
            same dtype, zeros in columns >= C; read only when ``input_grad``.
        dweight (OUT): ``(chunks, 16, C4, KP)``, same dtype; row ``i`` is overwritten with
            ``sum of V^T Z`` over the tiles of images ``i*N // chunks`` to
            ``(i + 1)*N // chunks - 1``, summed in image order (rows >= C and columns >= K are
            scratch). The transformed weight gradient is the sum over the chunks.
        dbias (OUT): ``(chunks, K)`` float64; row ``i`` is overwritten with the per-channel sum
            of ``dout`` over the chunk's images (zeros without ``want_bias``).
        want_bias: whether to compute ``dbias``.
        dx (OUT): ``(N, C, H, W)``, same dtype, C-contiguous; fully overwritten when
            ``input_grad`` (else not touched).
        input_grad: whether to compute ``dx``.
        pad_h, pad_w: the forward's zero padding.
        block_rows: rows of tiles per block (>= 1).
        chunks: rows of ``dweight``/``dbias`` the batch is summed into (``1 <= chunks <= N``).
            It must not depend on ``num_threads`` for the results not to.
        scratch (OUT): ``(num_threads, scratch_size(C, K, OH, OW, block_rows, input_grad))``,
            same dtype; clobbered.
        num_threads: OpenMP threads (ignored in a serial build); each runs whole chunks.

    Preconditions (checked by the caller, not here): the forward's geometry (``pH, pW >= 0``,
    ``OH = H + 2*pH - 2 >= 1``, ``OW = W + 2*pW - 2 >= 1``); ``1 <= chunks <= N``;
    ``dweight`` of at least ``chunks`` rows, each ``(16, C4, KP)`` with ``C4`` = ``C`` rounded
    up to a multiple of 4 and ``KP`` = ``K`` rounded up to 16; ``dbias`` of at least ``chunks``
    rows of ``K`` (written as such even when ``want_bias`` is false); when ``input_grad``:
    ``ut`` exactly ``(16, K, CP)`` with ``CP`` = ``C`` rounded up to 16 and zeros in columns
    ``>= C``, and ``dx`` ``(N, C, H, W)``; ``block_rows >= 1``; ``scratch`` of at least
    ``num_threads`` rows of at least that size; no output shares memory with an input or
    another output; ``num_threads >= 1``.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = dout.shape[1], OH = dout.shape[2], OW = dout.shape[3]
    cdef _Layout L = _layout(C, K, OH, OW, block_rows, input_grad)
    cdef Py_ssize_t C4 = dweight.shape[2]
    cdef Py_ssize_t chunk, n_first, n_end
    cdef Py_ssize_t n, tid, blk, tr0, rb, r, th, tw, t, xi, k, h, j, tiles
    cdef Py_ssize_t wide = 2 * L.TW, img_wide = 2 * L.TW + 2
    cdef int acc
    cdef floating* base
    cdef floating* v
    cdef floating* z
    cdef floating* img
    cdef floating* dw
    cdef double* db
    if N * K * OH * OW == 0:
        return
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef const floating* g0 = &dout[0, 0, 0, 0]
    cdef const floating* ut0 = &ut[0, 0, 0]
    cdef floating* dx0 = &dx[0, 0, 0, 0] if input_grad else NULL

    for chunk in prange(chunks, nogil=True, num_threads=num_threads, schedule="static"):
        tid = threadid()
        base = _aligned(&scratch[tid, 0])
        v = base + L.v_at
        z = base + L.m_at
        img = base + L.img_at
        dw = &dweight[chunk, 0, 0, 0]
        db = &dbias[chunk, 0]
        for k in range(K):
            db[k] = 0
        n_first = chunk * N // chunks
        n_end = (chunk + 1) * N // chunks
        for n in range(n_first, n_end):
            if input_grad:
                for j in range((2 * L.TH + 2) * img_wide * C):
                    img[j] = 0
            for blk in range(ceil_div(L.TH, L.rows_per_block)):
                tr0 = blk * L.rows_per_block
                rb = L.rows_per_block if tr0 + L.rows_per_block <= L.TH else L.TH - tr0
                tiles = rb * L.TW
                _transform_input_rows(x0, C, H, W, pad_h, pad_w, n * L.TH + tr0, rb, &L,
                                      base + L.rows_at, v)
                _gather_rows(g0 + n * K * OH * OW, K, OH, OW, 2 * tr0, 0, 2 * rb, wide,
                             base + L.out_at)
                for r in range(rb):
                    for tw in range(L.TW):
                        t = r * L.TW + tw
                        if floating is float:
                            minidl_wino_grad_tile_f(base + L.out_at + (2 * r * wide + 2 * tw) * K,
                                                    wide * K, z + t * L.KP, L.m_plane, K)
                        else:
                            minidl_wino_grad_tile_d(base + L.out_at + (2 * r * wide + 2 * tw) * K,
                                                    wide * K, z + t * L.KP, L.m_plane, K)
                _zero(z, L.m_plane, L.KP, 0, tiles, K, L.KP)  # read by dU's columns
                _zero(z, L.m_plane, L.KP, tiles, round_up(tiles, ROW_STEP), 0, L.KP)
                if want_bias:  # Z[(1, 1)] of a tile is the sum of its 2x2 output gradient
                    for t in range(tiles):
                        for k in range(K):
                            db[k] += z[5 * L.m_plane + t * L.KP + k]
                # dU[xi] (+)= V[xi]^T @ Z[xi] over the block's tiles; the chunk's first block
                # overwrites its row of dweight, so the caller need not zero it
                acc = 0 if (n == n_first and blk == 0) else 1
                for xi in range(16):
                    _gemm(v + xi * L.v_plane, 1, L.CP, z + xi * L.m_plane, L.KP,
                          dw + xi * C4 * L.KP, L.KP, C4, tiles, L.KP, acc)
                if not input_grad:
                    continue
                for xi in range(16):  # dV[xi] = Z[xi] @ U[xi]^T, into V's planes
                    _gemm(z + xi * L.m_plane, L.KP, 1, ut0 + xi * K * L.CP, L.CP,
                          v + xi * L.v_plane, L.CP, round_up(tiles, ROW_STEP), K, L.CP, 0)
                for r in range(rb):
                    th = tr0 + r
                    for tw in range(L.TW):
                        t = r * L.TW + tw
                        if floating is float:
                            minidl_wino_input_grad_tile_f(v + t * L.CP, L.v_plane,
                                                          img + (2 * th * img_wide + 2 * tw) * C,
                                                          img_wide * C, C)
                        else:
                            minidl_wino_input_grad_tile_d(v + t * L.CP, L.v_plane,
                                                          img + (2 * th * img_wide + 2 * tw) * C,
                                                          img_wide * C, C)
            if input_grad:  # the padded NHWC image's inner rows -> dx[n, :, h, :]
                for h in range(H):
                    transpose(img + ((h + pad_h) * img_wide + pad_w) * C, C,
                               dx0 + (n * C * H + h) * W, H * W, W, C, <floating*>NULL)


# ---- the weight gradient in blocks across images: every 5x5 layer, small or wide 3x3 ones ----
# The input gradient of a stride-1 convolution is the convolution of dout with the flipped
# kernel, which the driver computes with forward (16 or 36 planes); so this route needs no
# input-gradient kernel, only this one.

def weight_grad(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dout,
                floating[:, :, :, ::1] dweight, double[:, ::1] dbias, bint want_bias,
                Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t block_rows, Py_ssize_t chunks,
                floating[:, ::1] scratch, int num_threads=1, Py_ssize_t plane_groups=1):
    """The transformed weight gradient and the bias gradient of a 3x3 or 5x5 :func:`forward`
    (16 or 36 planes, told by ``dweight``), per chunk of images: :func:`backward` without the
    input gradient, with blocks that may run on from one image into the next (within the
    chunk), so that small images share the passes over ``dweight``.

    Args:
        x (IN): the forward's input ``(N, C, H, W)``, float32 or float64, C-contiguous.
        dout (IN): ``(N, K, OH, OW)``, same dtype, C-contiguous.
        dweight (OUT): ``(chunks, 16, C4, KP)`` for a 3x3 kernel, ``(chunks, 36, C4, KP)``
            for 5x5, same dtype; row ``i`` is overwritten with
            ``sum of V^T Z`` over the tiles of images ``i*N // chunks`` to
            ``(i + 1)*N // chunks - 1``, in image order (rows >= C and columns >= K are
            scratch).
        dbias (OUT): ``(chunks, K)`` float64: the per-chunk sums of ``dout`` (zeros without
            ``want_bias``).
        want_bias: whether to compute ``dbias``.
        pad_h, pad_w: the forward's zero padding.
        block_rows: rows of tiles per block (>= 1).
        chunks: ``1 <= chunks <= N``, independent of ``num_threads``.
        scratch (OUT): ``(num_threads, scratch_size(C, K, OH, OW, block_rows, False, r))``
            for an ``r x r`` kernel, same dtype; clobbered.
        num_threads: OpenMP threads (ignored in a serial build).
        plane_groups: the tasks are (chunk, group of planes) pairs: each transforms its chunk's
            tiles and computes the products of ``planes / plane_groups`` of the planes, so a
            batch of few chunks (small maps) still gives every thread work. A plane's sums are
            the same whatever the grouping (and ``dbias`` is summed by the first group).

    Preconditions (checked by the caller, not here): as :func:`backward` with
    ``input_grad`` false, ``OH = H + 2*pH - r + 1``, ``OW = W + 2*pW - r + 1``;
    ``1 <= plane_groups <= planes``.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = dout.shape[1], OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t kernel = 3 if dweight.shape[1] == 16 else 5
    cdef _Layout L = _layout(C, K, OH, OW, block_rows, False, kernel)
    # Z's plane (1, 1): the sum of a tile's 2x2 output gradient
    cdef Py_ssize_t bias_plane = kernel + 2
    cdef Py_ssize_t C4 = dweight.shape[2]
    cdef Py_ssize_t task, chunk, group, xi0, xi1, R_first, R_end, R0, R, rb, n, th0, count
    cdef Py_ssize_t r, tw, t, xi, k, tiles
    cdef Py_ssize_t wide = 2 * L.TW
    cdef int acc
    cdef floating* base
    cdef floating* v
    cdef floating* z
    cdef floating* dw
    cdef floating* g
    cdef double* db
    if N * K * OH * OW == 0:
        return
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef const floating* g0 = &dout[0, 0, 0, 0]

    for task in prange(chunks * plane_groups, nogil=True, num_threads=num_threads,
                       schedule="static"):
        chunk = task // plane_groups
        group = task - chunk * plane_groups
        xi0 = group * L.planes // plane_groups  # this task's planes: xi0 .. xi1 - 1
        xi1 = (group + 1) * L.planes // plane_groups
        base = _aligned(&scratch[threadid(), 0])
        v = base + L.v_at
        z = base + L.m_at
        dw = &dweight[chunk, 0, 0, 0]
        db = &dbias[chunk, 0]
        if group == 0:
            for k in range(K):
                db[k] = 0
        R_first = (chunk * N // chunks) * L.TH  # the chunk's rows of tiles, in blocks
        R_end = ((chunk + 1) * N // chunks) * L.TH
        R0 = R_first
        while R0 < R_end:
            rb = L.rows_per_block if R0 + L.rows_per_block <= R_end else R_end - R0
            tiles = rb * L.TW
            _transform_input_rows(x0, C, H, W, pad_h, pad_w, R0, rb, &L, base + L.rows_at, v)
            R = R0
            while R < R0 + rb:  # Z of each image's part of the block
                n = R // L.TH
                th0 = R - n * L.TH
                count = _rows_in_image(R, R0 + rb, L.TH, th0)
                _gather_rows(g0 + n * K * OH * OW, K, OH, OW, 2 * th0, 0, 2 * count, wide,
                             base + L.out_at)
                for r in range(count):
                    for tw in range(L.TW):
                        t = (R - R0 + r) * L.TW + tw
                        g = base + L.out_at + (2 * r * wide + 2 * tw) * K
                        if floating is float:
                            if kernel == 3:
                                minidl_wino_grad_tile_f(g, wide * K, z + t * L.KP, L.m_plane, K)
                            else:
                                minidl_wino5_grad_tile_f(g, wide * K, z + t * L.KP, L.m_plane, K)
                        else:
                            if kernel == 3:
                                minidl_wino_grad_tile_d(g, wide * K, z + t * L.KP, L.m_plane, K)
                            else:
                                minidl_wino5_grad_tile_d(g, wide * K, z + t * L.KP, L.m_plane, K)
                R = R + count
            _zero(z, L.m_plane, L.KP, 0, tiles, K, L.KP, L.planes)  # read by dU's columns
            _zero(z, L.m_plane, L.KP, tiles, round_up(tiles, ROW_STEP), 0, L.KP, L.planes)
            if want_bias and group == 0:
                for t in range(tiles):
                    for k in range(K):
                        db[k] += z[bias_plane * L.m_plane + t * L.KP + k]
            # dU[xi] (+)= V[xi]^T @ Z[xi]; the chunk's first block overwrites its row
            acc = 0 if R0 == R_first else 1
            for xi in range(xi0, xi1):
                _gemm(v + xi * L.v_plane, 1, L.CP, z + xi * L.m_plane, L.KP,
                      dw + xi * C4 * L.KP, L.KP, C4, tiles, L.KP, acc)
            R0 = R0 + rb


def sum_chunks(const floating[:, ::1] parts, double[::1] out, int num_threads=1):
    """``out[e] = parts[0, e] + parts[1, e] + ...``, added in chunk order, in float64.

    Adds up the per-chunk weight gradients of :func:`backward` (flattened rows of
    ``dweight``): every element is summed in the same order whatever ``num_threads`` is, so the
    result does not depend on it. Work is split over blocks of elements.

    Args:
        parts (IN): ``(chunks, M)``, float32 or float64, C-contiguous.
        out (OUT): ``(M,)`` float64; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).

    Preconditions (checked by the caller, not here): ``chunks >= 1``; ``out`` has ``M``
    elements (``parts``'s second size) and shares no memory with ``parts``;
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t chunks = parts.shape[0], size = out.shape[0], stride = parts.shape[1]
    cdef Py_ssize_t block, start, length, i, e
    cdef double* total
    cdef const floating* row
    if chunks * size == 0:
        return
    cdef const floating* p0 = &parts[0, 0]
    cdef double* out0 = &out[0]
    for block in prange(ceil_div(size, SUM_BLOCK), nogil=True, num_threads=num_threads,
                        schedule="static"):
        start = block * SUM_BLOCK
        length = SUM_BLOCK if start + SUM_BLOCK < size else size - start
        total = out0 + start
        row = p0 + start
        for e in range(length):  # contiguous runs: the compiler vectorizes them
            total[e] = row[e]
        for i in range(1, chunks):
            row = p0 + i * stride + start
            for e in range(length):
                total[e] += row[e]
