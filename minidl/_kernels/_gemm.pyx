"""Matrix products on minidl's own OpenMP team: ``C = A @ B``, batched, or summed over a batch.

The products of the Dense layer, of 1x1 convolutions and of the im2col convolution run here
instead of in NumPy's BLAS, so that every parallel region of a training step runs on the same
OpenMP threads (see ``minidl/_blas.py`` for why and for the measurements). C is cut into
tiles of ``tile_rows x tile_cols``; each tile is computed from start to end by one thread
(the GotoBLAS/BLIS blocking and the register-blocked micro-kernel are in ``_gemm.h``), so no
two threads write the same element and nothing is summed across threads: the result is the
same for any number of threads and any tiling.

Shapes (``batch`` may be 1 in ``a`` or ``b`` for an operand shared by the whole batch)::

    sum_batch False:  c[n] = (c[n] +) a[n] @ b[n]        a (B, M, K), b (B, K, N), c (B, M, N)
    sum_batch True:   c[0] = (c[0] +) sum_n a[n] @ b[n]                             c (1, M, N)

These kernels trust their inputs: shapes and strides are checked by ``minidl._blas``. The
result is written into the caller's ``c`` (OUT); ``a`` and ``b`` are only read (IN).
"""
from cython.parallel cimport prange, threadid

from ._common cimport build_facts, ceil_div, floating
from ._transpose cimport transpose_init


cdef extern from "_gemm.h" nogil:
    enum:
        MINIDL_GEMM_MR
        MINIDL_GEMM_KC
        MINIDL_GEMM_PAD
        MINIDL_GEMM_DOT_ROWS
    Py_ssize_t minidl_gemm_nr_f
    Py_ssize_t minidl_gemm_nr_d
    Py_ssize_t minidl_gemm_nr_narrow_f
    Py_ssize_t minidl_gemm_nr_narrow_d
    Py_ssize_t minidl_gemm_scratch_size(Py_ssize_t cols, Py_ssize_t nr)
    ctypedef struct minidl_gemm_gather_f:
        const float* base
        const Py_ssize_t* rows
        const Py_ssize_t* cols
    ctypedef struct minidl_gemm_gather_d:
        const double* base
        const Py_ssize_t* rows
        const Py_ssize_t* cols
    void minidl_gemm_tile_f(const float* A, Py_ssize_t sa, Py_ssize_t rsa, Py_ssize_t csa,
                            const float* B, Py_ssize_t sb, Py_ssize_t rsb, Py_ssize_t csb,
                            float* C, Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t inner,
                            Py_ssize_t cols, Py_ssize_t terms, int acc, int narrow,
                            float* scratch, const minidl_gemm_gather_f* ga,
                            const minidl_gemm_gather_f* gb, Py_ssize_t i0, Py_ssize_t j0)
    void minidl_gemm_tile_d(const double* A, Py_ssize_t sa, Py_ssize_t rsa, Py_ssize_t csa,
                            const double* B, Py_ssize_t sb, Py_ssize_t rsb, Py_ssize_t csb,
                            double* C, Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t inner,
                            Py_ssize_t cols, Py_ssize_t terms, int acc, int narrow,
                            double* scratch, const minidl_gemm_gather_d* ga,
                            const minidl_gemm_gather_d* gb, Py_ssize_t i0, Py_ssize_t j0)
    void minidl_gemm_dot_tile_f(const float* A, Py_ssize_t sa, Py_ssize_t rsa,
                                const float* B, Py_ssize_t sb, Py_ssize_t rsb, Py_ssize_t csb,
                                float* C, Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t inner,
                                Py_ssize_t cols, Py_ssize_t terms, int acc, float* scratch)
    void minidl_gemm_dot_tile_d(const double* A, Py_ssize_t sa, Py_ssize_t rsa,
                                const double* B, Py_ssize_t sb, Py_ssize_t rsb, Py_ssize_t csb,
                                double* C, Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t inner,
                                Py_ssize_t cols, Py_ssize_t terms, int acc, double* scratch)
    void minidl_gemm_epilogue_f(float* row, const float* bias, Py_ssize_t cols, int relu)
    void minidl_gemm_epilogue_d(double* row, const double* bias, Py_ssize_t cols, int relu)
    const char* minidl_gemm_init()
    Py_ssize_t minidl_gemm_packed_stride_f(Py_ssize_t inner, Py_ssize_t nr)
    Py_ssize_t minidl_gemm_packed_stride_d(Py_ssize_t inner, Py_ssize_t nr)
    void minidl_gemm_pack_strip_f(const float* B, Py_ssize_t rsb, Py_ssize_t csb,
                                  Py_ssize_t inner, Py_ssize_t cols, Py_ssize_t nr,
                                  Py_ssize_t strip, float* bp)
    void minidl_gemm_pack_strip_d(const double* B, Py_ssize_t rsb, Py_ssize_t csb,
                                  Py_ssize_t inner, Py_ssize_t cols, Py_ssize_t nr,
                                  Py_ssize_t strip, double* bp)
    void minidl_gemm_tile_packed_f(const minidl_gemm_gather_f* ga, Py_ssize_t i0,
                                   const float* bp, Py_ssize_t inner, Py_ssize_t j0,
                                   const Py_ssize_t* seg, Py_ssize_t nseg, float* C,
                                   Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t cols,
                                   int narrow, float* scratch)
    void minidl_gemm_tile_packed_d(const minidl_gemm_gather_d* ga, Py_ssize_t i0,
                                   const double* bp, Py_ssize_t inner, Py_ssize_t j0,
                                   const Py_ssize_t* seg, Py_ssize_t nseg, double* C,
                                   Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t cols,
                                   int narrow, double* scratch)


#: The instruction set of the micro-kernel on this CPU ("avx512f", "avx2" or "baseline").
ISA = minidl_gemm_init().decode()
#: What this extension was compiled with (read by ``minidl.show_config()``).
BUILD = build_facts()
transpose_init()  # (packing a transposed B uses it)
#: Rows of C per micro-kernel call (tiles of C are best a multiple of it).
MR = MINIDL_GEMM_MR
#: The inner dimension is summed in blocks of this many terms.
KC = MINIDL_GEMM_KC
#: Products of at most this many rows (M) are dot products, B read in place (``_gemm.h``);
#: their ``a`` must have contiguous rows.
DOT_ROWS = MINIDL_GEMM_DOT_ROWS
#: Columns of C per micro-kernel call, by dtype name (2 SIMD vectors on this CPU).
NR = {"float32": minidl_gemm_nr_f, "float64": minidl_gemm_nr_d}
#: The same for the narrow kernels (``gemm(..., narrow=True)``): half of ``NR`` on AVX-512
#: CPUs (their AVX2 kernels), ``NR`` elsewhere.
NR_NARROW = {"float32": minidl_gemm_nr_narrow_f, "float64": minidl_gemm_nr_narrow_d}


def scratch_size(Py_ssize_t tile_cols, dtype_name, bint narrow=False):
    """Elements of scratch each thread needs for tiles of C at most ``tile_cols`` wide, in
    ``dtype_name`` ("float32" or "float64"), with the narrow kernels or not, with 64 elements
    of slack for the alignment."""
    return minidl_gemm_scratch_size(tile_cols, (NR_NARROW if narrow else NR)[dtype_name]) + 64


cdef inline floating* _aligned(floating* p) noexcept nogil:
    """``p`` rounded up to a multiple of 64 bytes (the scratch has 64 elements of slack)."""
    return <floating*>((<size_t>p + 63) & ~(<size_t>63))


cdef inline void _epilogue(floating* row, const floating* bias, Py_ssize_t cols,
                           bint relu) noexcept nogil:
    """``row += bias`` (when ``bias`` is not NULL), then ``row = max(row, 0)`` when ``relu``:
    the same roundings as NumPy's ``out += bias`` and ``_activation.relu_forward`` (0 where
    the value is < 0: a NaN stays NaN, -0.0 stays -0.0). Vectorized C (``_gemm.h``)."""
    if floating is float:
        minidl_gemm_epilogue_f(row, bias, cols, relu)
    else:
        minidl_gemm_epilogue_d(row, bias, cols, relu)


def outer(const floating[:] a, const floating[::1] b, floating[:, ::1] c, int num_threads=1):
    """The product of a column and a row, ``c[i, j] = a[i] * b[j]``: a product of inner
    dimension 1 (a Dense layer's weight gradient at batch 1), which writes ``M*N`` values and
    reads ``M + N``. The GEMM's packing and micro-kernel tiles cost more than the stores there
    ((1000, 1) @ (1, 4096): 1.1-1.6 ms against 0.67 ms for this loop on one thread). Each value
    is one rounded product, as in the GEMM.

    Args:
        a (IN): shape ``(M,)``, any stride. b (IN): shape ``(N,)``, contiguous. c (OUT): shape
        ``(M, N)``, C-contiguous, overwritten. All float32 or all float64.
        num_threads: OpenMP threads (rows split among them).
    """
    cdef Py_ssize_t M = c.shape[0], N = c.shape[1], i, j
    cdef floating ai
    cdef floating* row
    if M * N == 0:
        return
    for i in prange(M, nogil=True, num_threads=num_threads, schedule="static"):
        ai = a[i]
        row = &c[i, 0]
        for j in range(N):
            row[j] = ai * b[j]


def gemm(const floating[:, :, :] a, const floating[:, :, :] b, floating[:, :, :] c,
         bint accumulate, bint sum_batch, Py_ssize_t tile_rows, Py_ssize_t tile_cols,
         floating[:, ::1] scratch, int num_threads=1, bint narrow=False,
         const floating[::1] bias=None, bint relu=False):
    """``c[n] = a[n] @ b[n]`` for each n, or ``c[0] = sum_n a[n] @ b[n]``; ``+ c`` if
    ``accumulate``; then ``+ bias`` (one per column) and ``max(., 0)`` if ``relu``.

    Args:
        a (IN): ``(Ba, M, K)``, float32 or float64, any strides (0 for a batch axis of 1 is
            fine); ``Ba`` is 1 (the same matrix for every n) or the batch size ``B``.
        b (IN): ``(Bb, K, N)``, same dtype, any strides; ``Bb`` is 1 or ``B``.
        c (IN/OUT): ``(B, M, N)`` (``(1, M, N)`` when ``sum_batch``), same dtype, rows
            contiguous (``c.strides[2]`` one element); overwritten, or added to when
            ``accumulate``.
        accumulate: add the product to ``c`` instead of overwriting it.
        sum_batch: sum the products over the batch into ``c[0]``.
        tile_rows, tile_cols: the tiles of C that the threads share out (>= 1).
        scratch (OUT): ``(num_threads, scratch_size(tile_cols, dtype, narrow))``, same
            dtype; clobbered.
        num_threads: OpenMP threads (ignored in a serial build).
        narrow: use the narrow micro-kernels (``NR_NARROW`` columns; the same bits), for
            products whose N they fit with less padding. Products of at most ``DOT_ROWS`` rows
            ignore it.
        bias (IN): None, or ``(N,)`` of the same dtype, added to every row of each tile of C
            once the tile is done (a Dense layer's bias, in the call that computes the product).
        relu: then apply a ReLU to the tile (a Dense layer followed by a ReLU).

    Preconditions (checked by the caller, not here): ``K >= 1`` (nothing is written
    otherwise); ``B = max(Ba, Bb) >= 1`` and each of
    ``Ba, Bb`` is 1 or ``B``; ``c.shape[0]`` is ``B`` (1 when ``sum_batch``); the inner sizes
    agree; ``c`` shares no memory with ``a`` or ``b`` and its last stride is one element;
    ``scratch`` has at least ``num_threads`` rows of at least that size; ``num_threads >= 1``;
    when ``M <= DOT_ROWS``, the rows of ``a`` are contiguous (``a.strides[2]`` one element).
    Work is split over the tiles of C (and the batch, unless ``sum_batch``), each thread taking
    one contiguous run of them (static schedule): the same rows of C on every call with the same
    shapes, so the thread that writes a part of C is the one whose next pass reads it (see
    ``minidl._blas._tiles``, "Which thread computes which tile").
    """
    cdef Py_ssize_t batch = a.shape[0] if a.shape[0] > b.shape[0] else b.shape[0]
    cdef Py_ssize_t M = c.shape[1], N = c.shape[2], K = a.shape[2]
    cdef Py_ssize_t item = sizeof(floating)
    cdef Py_ssize_t sa = a.strides[0] // item if a.shape[0] > 1 else 0
    cdef Py_ssize_t sb = b.strides[0] // item if b.shape[0] > 1 else 0
    cdef Py_ssize_t rsa = a.strides[1] // item, csa = a.strides[2] // item
    cdef Py_ssize_t rsb = b.strides[1] // item, csb = b.strides[2] // item
    cdef Py_ssize_t sc = c.strides[0] // item, ldc = c.strides[1] // item
    cdef Py_ssize_t tiles_m = ceil_div(M, tile_rows), tiles_n = ceil_div(N, tile_cols)
    cdef Py_ssize_t per_matrix = tiles_m * tiles_n
    cdef Py_ssize_t tasks = per_matrix * (1 if sum_batch else batch)
    cdef Py_ssize_t task, n, tile, i0, j0, rows, cols, terms, r
    cdef bint dot = M <= MINIDL_GEMM_DOT_ROWS
    if M == 0 or N == 0 or K == 0 or batch == 0:
        return
    cdef const floating* a0 = &a[0, 0, 0]
    cdef const floating* b0 = &b[0, 0, 0]
    cdef floating* c0 = &c[0, 0, 0]
    cdef const floating* bias0 = &bias[0] if bias is not None else NULL
    cdef bint epilogue = bias is not None or relu
    terms = batch if sum_batch else 1

    for task in prange(tasks, nogil=True, num_threads=num_threads, schedule="static"):
        n = task // per_matrix
        tile = task - n * per_matrix
        i0 = (tile // tiles_n) * tile_rows
        j0 = (tile % tiles_n) * tile_cols
        rows = tile_rows if i0 + tile_rows <= M else M - i0
        cols = tile_cols if j0 + tile_cols <= N else N - j0
        if floating is float:
            if dot:
                minidl_gemm_dot_tile_f(a0 + n * sa + i0 * rsa, sa, rsa,
                                       b0 + n * sb + j0 * csb, sb, rsb, csb,
                                       c0 + n * sc + i0 * ldc + j0, ldc, rows, K, cols, terms,
                                       accumulate, _aligned(&scratch[threadid(), 0]))
            else:
                minidl_gemm_tile_f(a0 + n * sa + i0 * rsa, sa, rsa, csa,
                                   b0 + n * sb + j0 * csb, sb, rsb, csb,
                                   c0 + n * sc + i0 * ldc + j0, ldc, rows, K, cols, terms,
                                   accumulate, narrow, _aligned(&scratch[threadid(), 0]),
                                   NULL, NULL, i0, j0)
        elif dot:
            minidl_gemm_dot_tile_d(a0 + n * sa + i0 * rsa, sa, rsa,
                                   b0 + n * sb + j0 * csb, sb, rsb, csb,
                                   c0 + n * sc + i0 * ldc + j0, ldc, rows, K, cols, terms,
                                   accumulate, _aligned(&scratch[threadid(), 0]))
        else:
            minidl_gemm_tile_d(a0 + n * sa + i0 * rsa, sa, rsa, csa,
                               b0 + n * sb + j0 * csb, sb, rsb, csb,
                               c0 + n * sc + i0 * ldc + j0, ldc, rows, K, cols, terms,
                               accumulate, narrow, _aligned(&scratch[threadid(), 0]),
                               NULL, NULL, i0, j0)
        if epilogue:  # the tile is still in cache
            for r in range(rows):
                _epilogue(c0 + n * sc + (i0 + r) * ldc + j0,
                          bias0 + j0 if bias0 != NULL else NULL, cols, relu)


def gemm_gathered(const floating[::1] base, const Py_ssize_t[::1] rows,
                  const Py_ssize_t[::1] cols, const floating[:, :] other, floating[:, ::1] c,
                  bint gathered_a, bint accumulate, Py_ssize_t tile_rows, Py_ssize_t tile_cols,
                  floating[:, ::1] scratch, int num_threads=1, bint narrow=False):
    """``c (+)= G @ other`` (``gathered_a``) or ``c (+)= other @ G``, where the gathered operand
    is ``G[i, k] = base[rows[i] + cols[k]]`` (``_gemm.h``: im2col's matrix read in place from a
    zero-padded NHWC image). Packed like the matrix it stands for: the same bits as
    :func:`gemm` on that matrix.

    Args:
        base (IN): the elements G reads, float32 or float64, contiguous.
        rows, cols (IN): G's row and column offsets into ``base`` (``G`` is
            ``len(rows) x len(cols)``).
        other (IN): the other operand, ``(len(cols), N)`` or ``(M, len(rows))``, same dtype,
            any strides.
        c (IN/OUT): ``(M, N)``, same dtype, C-contiguous; overwritten or added to.
        gathered_a: whether G is the left operand.
        accumulate, tile_rows, tile_cols, scratch, num_threads, narrow: as for :func:`gemm`.

    Preconditions (checked by the caller, not here): every ``rows[i] + cols[k]`` indexes
    ``base``; the inner sizes agree; ``M > DOT_ROWS`` (a gathered operand never takes the dot
    products); ``c`` shares no memory with the operands; ``scratch`` as for :func:`gemm`.
    The tiles are shared out as in :func:`gemm` (static schedule).
    """
    cdef Py_ssize_t M = c.shape[0], N = c.shape[1]
    cdef Py_ssize_t K = cols.shape[0] if gathered_a else rows.shape[0]
    cdef Py_ssize_t item = sizeof(floating)
    cdef Py_ssize_t rso = other.strides[0] // item, cso = other.strides[1] // item
    cdef Py_ssize_t tiles_n = ceil_div(N, tile_cols)
    cdef Py_ssize_t tasks = ceil_div(M, tile_rows) * tiles_n
    cdef Py_ssize_t task, i0, j0, rows_, cols_
    cdef const floating* a_tile
    cdef const floating* b_tile
    cdef minidl_gemm_gather_f gf
    cdef minidl_gemm_gather_d gd
    if M == 0 or N == 0 or K == 0:
        return
    cdef const floating* o0 = &other[0, 0]
    cdef floating* c0 = &c[0, 0]
    if floating is float:
        gf.base, gf.rows, gf.cols = &base[0], &rows[0], &cols[0]
    else:
        gd.base, gd.rows, gd.cols = &base[0], &rows[0], &cols[0]

    for task in prange(tasks, nogil=True, num_threads=num_threads, schedule="static"):
        i0 = (task // tiles_n) * tile_rows
        j0 = (task % tiles_n) * tile_cols
        rows_ = tile_rows if i0 + tile_rows <= M else M - i0
        cols_ = tile_cols if j0 + tile_cols <= N else N - j0
        # the other operand's tile (its strides serve A or B, whichever it is)
        a_tile = b_tile = NULL
        if gathered_a:
            b_tile = o0 + j0 * cso
        else:
            a_tile = o0 + i0 * rso
        if floating is float:
            minidl_gemm_tile_f(a_tile, 0, rso, cso, b_tile, 0, rso, cso, c0 + i0 * N + j0, N,
                               rows_, K, cols_, 1, accumulate, narrow,
                               _aligned(&scratch[threadid(), 0]), &gf if gathered_a else NULL,
                               NULL if gathered_a else &gf, i0, j0)
        else:
            minidl_gemm_tile_d(a_tile, 0, rso, cso, b_tile, 0, rso, cso, c0 + i0 * N + j0, N,
                               rows_, K, cols_, 1, accumulate, narrow,
                               _aligned(&scratch[threadid(), 0]), &gd if gathered_a else NULL,
                               NULL if gathered_a else &gd, i0, j0)


cdef void _gathered_task_f(const float* a_base, const Py_ssize_t* a_rows,
                           const Py_ssize_t* a_cols, const float* b_base,
                           const Py_ssize_t* b_rows, const Py_ssize_t* b_cols, float* c,
                           const Py_ssize_t* task, int narrow, float* scratch) noexcept nogil:
    """One row of :func:`gemm_gathered_tasks`'s ``tasks``, float32 (the gather structs live on
    this thread's stack)."""
    cdef minidl_gemm_gather_f ga, gb
    ga.base, ga.rows, ga.cols = a_base, a_rows, a_cols + task[2]
    gb.base, gb.rows, gb.cols = b_base, b_rows + task[2], b_cols
    minidl_gemm_tile_f(NULL, 0, 0, 0, NULL, 0, 0, 0, c + task[6], task[7], task[3], task[5],
                       task[4], 1, 0, narrow, scratch, &ga, &gb, task[0], task[1])


cdef void _gathered_task_d(const double* a_base, const Py_ssize_t* a_rows,
                           const Py_ssize_t* a_cols, const double* b_base,
                           const Py_ssize_t* b_rows, const Py_ssize_t* b_cols, double* c,
                           const Py_ssize_t* task, int narrow, double* scratch) noexcept nogil:
    """The same, float64."""
    cdef minidl_gemm_gather_d ga, gb
    ga.base, ga.rows, ga.cols = a_base, a_rows, a_cols + task[2]
    gb.base, gb.rows, gb.cols = b_base, b_rows + task[2], b_cols
    minidl_gemm_tile_d(NULL, 0, 0, 0, NULL, 0, 0, 0, c + task[6], task[7], task[3], task[5],
                       task[4], 1, 0, narrow, scratch, &ga, &gb, task[0], task[1])


def gemm_gathered_tasks(const floating[::1] a_base, const Py_ssize_t[::1] a_rows,
                        const Py_ssize_t[::1] a_cols, const floating[::1] b_base,
                        const Py_ssize_t[::1] b_rows, const Py_ssize_t[::1] b_cols,
                        floating[::1] c, const Py_ssize_t[:, ::1] tasks,
                        floating[:, ::1] scratch, int num_threads=1, bint narrow=False):
    """Many small products of gathered operands in one parallel loop, one per row of ``tasks``:
    the border classes of an im2col convolution that skips the taps in its zero padding
    (``minidl/functional/conv_im2col.py``, "padded taps").

    Row ``t = (a_row, b_col, inner_start, rows, cols, inner, c_offset, ldc)`` of ``tasks``
    computes, for ``i < rows``, ``j < cols``::

        c[c_offset + i*ldc + j] = sum_{k < inner} A[i, k] * B[k, j]
        A[i, k] = a_base[a_rows[a_row + i] + a_cols[inner_start + k]]
        B[k, j] = b_base[b_rows[inner_start + k] + b_cols[b_col + j]]

    (A read in place and B packed, as in :func:`gemm_gathered`), overwriting ``c`` there. The
    sum runs over k in increasing order, in ``KC`` blocks, whichever thread takes the task, so
    the result does not depend on the number of threads.

    Args:
        a_base, b_base (IN): float32 or float64, contiguous. a_rows, a_cols, b_rows, b_cols
            (IN): offsets into them. c (OUT): same dtype. tasks (IN): ``(T, 8)``.
        scratch (OUT): ``(num_threads, scratch_size(max cols, dtype, narrow))``; clobbered.
        num_threads, narrow: as for :func:`gemm`.

    Preconditions (checked by the caller, not here): every offset pair indexes its base;
    every task has ``rows``, ``cols`` and ``inner`` >= 1 and ``cols`` at most the scratch's
    width; the tasks write disjoint parts of ``c``, which
    shares no memory with the operands.
    """
    cdef Py_ssize_t count = tasks.shape[0], t
    if count == 0:
        return
    cdef const Py_ssize_t* task0 = &tasks[0, 0]
    for t in prange(count, nogil=True, num_threads=num_threads, schedule="dynamic"):
        if floating is float:
            _gathered_task_f(&a_base[0], &a_rows[0], &a_cols[0], &b_base[0], &b_rows[0],
                             &b_cols[0], &c[0], task0 + 8 * t, narrow,
                             _aligned(&scratch[threadid(), 0]))
        else:
            _gathered_task_d(&a_base[0], &a_rows[0], &a_cols[0], &b_base[0], &b_rows[0],
                             &b_cols[0], &c[0], task0 + 8 * t, narrow,
                             _aligned(&scratch[threadid(), 0]))


def packed_size(Py_ssize_t inner, Py_ssize_t cols, dtype_name, bint narrow=False):
    """Elements of B ``(inner, cols)`` packed whole by :func:`pack_b` (strips of ``NR`` or,
    ``narrow``, ``NR_NARROW`` columns, each holding all ``inner`` rows, ``_gemm.h``)."""
    cdef Py_ssize_t nr = (NR_NARROW if narrow else NR)[dtype_name]
    return ceil_div(cols, nr) * (inner * nr + MINIDL_GEMM_PAD)


def pack_b(const floating[:, :] b, floating[::1] packed, bint narrow=False,
           int num_threads=1):
    """Pack all of ``b`` ``(inner, cols)`` (float32 or float64, any strides: a transposed
    matrix is packed by 8x8 transposes, ``_gemm.h``) for :func:`gemm_gathered_tasks_packed`,
    into ``packed`` (OUT: :func:`packed_size` elements of b's dtype; fully overwritten), one
    strip of columns per task."""
    cdef Py_ssize_t inner = b.shape[0], cols = b.shape[1], strip, nr
    cdef Py_ssize_t rsb = b.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t csb = b.strides[1] // <Py_ssize_t>sizeof(floating)
    if floating is float:
        nr = minidl_gemm_nr_narrow_f if narrow else minidl_gemm_nr_f
    else:
        nr = minidl_gemm_nr_narrow_d if narrow else minidl_gemm_nr_d
    if inner * cols == 0:
        return
    for strip in prange(ceil_div(cols, nr), nogil=True, num_threads=num_threads,
                        schedule="static"):
        if floating is float:
            minidl_gemm_pack_strip_f(&b[0, 0], rsb, csb, inner, cols, nr, strip, &packed[0])
        else:
            minidl_gemm_pack_strip_d(&b[0, 0], rsb, csb, inner, cols, nr, strip, &packed[0])


cdef void _packed_task_f(const float* a_base, const Py_ssize_t* a_rows,
                         const Py_ssize_t* a_cols, const float* b_packed, Py_ssize_t inner,
                         const Py_ssize_t* segments, float* c, const Py_ssize_t* task,
                         int narrow, float* scratch) noexcept nogil:
    """One row of :func:`gemm_gathered_tasks_packed`'s ``tasks``, float32 (the gather struct
    lives on this thread's stack)."""
    cdef minidl_gemm_gather_f ga
    ga.base, ga.rows, ga.cols = a_base, a_rows, a_cols
    minidl_gemm_tile_packed_f(&ga, task[0], b_packed, inner, task[1], segments + 3 * task[2],
                              task[5], c + task[6], task[7], task[3], task[4], narrow, scratch)


cdef void _packed_task_d(const double* a_base, const Py_ssize_t* a_rows,
                         const Py_ssize_t* a_cols, const double* b_packed, Py_ssize_t inner,
                         const Py_ssize_t* segments, double* c, const Py_ssize_t* task,
                         int narrow, double* scratch) noexcept nogil:
    """The same, float64."""
    cdef minidl_gemm_gather_d ga
    ga.base, ga.rows, ga.cols = a_base, a_rows, a_cols
    minidl_gemm_tile_packed_d(&ga, task[0], b_packed, inner, task[1], segments + 3 * task[2],
                              task[5], c + task[6], task[7], task[3], task[4], narrow, scratch)


def gemm_gathered_tasks_packed(const floating[::1] a_base, const Py_ssize_t[::1] a_rows,
                               const Py_ssize_t[::1] a_cols, const floating[::1] b_packed,
                               Py_ssize_t inner, const Py_ssize_t[:, ::1] segments,
                               floating[::1] c, const Py_ssize_t[:, ::1] tasks,
                               floating[:, ::1] scratch, int num_threads=1, bint narrow=False):
    """:func:`gemm_gathered_tasks` with B packed once, whole (:func:`pack_b` of a ``(inner,
    N)`` matrix), each task reading runs of its consecutive rows.

    Row ``t = (a_row, b_col, seg_start, rows, cols, seg_count, c_offset, ldc)`` of ``tasks``
    computes, for ``i < rows``, ``j < cols``, with the segments ``(a_col, b_row, length) =
    segments[seg_start + g]`` for ``g < seg_count``::

        c[c_offset + i*ldc + j] = sum_g sum_{k < length} A[i, a_col + k] * B[b_row + k, b_col + j]
        A[i, k] = a_base[a_rows[a_row + i] + a_cols[k]]

    summed segment by segment in order, each in ``KC`` blocks, whichever thread takes the task
    (the result does not depend on the number of threads). ``b_col`` is a multiple of the
    micro-kernel's width (``NR`` or ``NR_NARROW``, as ``narrow``, which must be the packing's).

    Preconditions (checked by the caller, not here): offsets index their arrays; every task
    has ``rows``, ``cols`` and ``seg_count`` >= 1, ``cols`` at most the scratch's width; the
    segments' rows of B lie below ``inner``; the tasks write disjoint parts of ``c``, which
    shares no memory with the operands.
    """
    cdef Py_ssize_t count = tasks.shape[0], t
    if count == 0:
        return
    cdef const Py_ssize_t* task0 = &tasks[0, 0]
    cdef const Py_ssize_t* seg0 = &segments[0, 0]
    for t in prange(count, nogil=True, num_threads=num_threads, schedule="dynamic"):
        if floating is float:
            _packed_task_f(&a_base[0], &a_rows[0], &a_cols[0], &b_packed[0], inner, seg0,
                           &c[0], task0 + 8 * t, narrow, _aligned(&scratch[threadid(), 0]))
        else:
            _packed_task_d(&a_base[0], &a_rows[0], &a_cols[0], &b_packed[0], inner, seg0,
                           &c[0], task0 + 8 * t, narrow, _aligned(&scratch[threadid(), 0]))
