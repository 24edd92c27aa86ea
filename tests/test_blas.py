"""minidl._blas: matmul (minidl's tiled GEMM on its OpenMP team) against NumPy in float64, for
any strides, batches, sums and thread counts; the layers' products go through it; and the small
NumPy products that remain run NumPy's BLAS on one thread, the user's do not."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import minidl
from minidl import _blas
from minidl._kernels import _gemm
from minidl.functional import linear

DTYPES = [np.float32, np.float64]
# (M, K, N): single elements, sizes below and between the micro-kernel's 6 rows and 8-32
# columns, inner sizes across several 256-long blocks, and more rows than one 144-row block
SHAPES = [(1, 1, 1), (5, 3, 7), (6, 16, 32), (13, 257, 33), (150, 600, 70), (37, 1, 129)]


def _blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def _close(actual, expected, dtype, inner):
    """float32: about the error of an inner-long sum; float64: near exact."""
    scale = max(1.0, float(np.abs(expected).max()))
    tol = (1e-6 * (inner ** 0.5 + 4) if dtype == np.float32 else 1e-13 * (inner + 4)) * scale
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol)


def _strided(array):
    """The same values behind exotic strides: a transposed copy, sliced with a step."""
    base = np.zeros(array.shape[:-2] + (array.shape[-1], 2 * array.shape[-2]), array.dtype)
    base[..., ::2] = np.swapaxes(array, -1, -2)
    view = np.swapaxes(base[..., ::2], -1, -2)
    assert np.array_equal(view, array) and (view.size == 1 or not view.flags.c_contiguous)
    return view


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_matmul_matches_numpy(shape, dtype, rng):
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    out = _blas.matmul(a, b)
    assert out.shape == (m, n) and out.dtype == dtype and out.flags.c_contiguous
    _close(out, expected, dtype, k)
    # transposed and sliced operands give the same bits (only the packing reads differently)
    np.testing.assert_array_equal(_blas.matmul(_strided(a), _strided(b)), out)
    np.testing.assert_array_equal(_blas.matmul(np.asfortranarray(a), b.T.copy().T), out)
    # accumulate adds to what is there
    start = rng.standard_normal((m, n)).astype(dtype)
    result = start.copy()
    assert _blas.matmul(a, b, out=result, accumulate=True) is result
    _close(result, expected + start, dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_batches_broadcasts_and_sums(dtype, rng):
    a = rng.standard_normal((3, 14, 40)).astype(dtype)
    b = rng.standard_normal((3, 40, 9)).astype(dtype)
    w = rng.standard_normal((14, 40)).astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    _close(_blas.matmul(a, b), a64 @ b64, dtype, 40)
    _close(_blas.matmul(w, b), w.astype(np.float64) @ b64, dtype, 40)   # w for every n
    _close(_blas.matmul(a, b[0]), a64 @ b64[0], dtype, 40)            # b[0] for every n
    _close(_blas.matmul(a, b, sum_batch=True), (a64 @ b64).sum(axis=0), dtype, 120)
    at = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)  # a transposed batch
    np.testing.assert_array_equal(_blas.matmul(at, b), _blas.matmul(a, b))


def test_matmul_empty_and_zero_inner():
    assert _blas.matmul(np.zeros((0, 3)), np.zeros((3, 4))).shape == (0, 4)
    np.testing.assert_array_equal(_blas.matmul(np.zeros((2, 0)), np.zeros((0, 3))),
                                  np.zeros((2, 3)))
    out = np.ones((2, 3))
    _blas.matmul(np.zeros((2, 0)), np.zeros((0, 3)), out=out, accumulate=True)
    np.testing.assert_array_equal(out, np.ones((2, 3)))


def test_matmul_same_bits_for_any_thread_count_and_tiling(rng):
    """One thread sums each element in a fixed order: threads and tiles change nothing."""
    a = rng.standard_normal((100, 700)).astype(np.float32)
    b = rng.standard_normal((700, 90)).astype(np.float32)
    before = minidl.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 4):
            minidl.set_num_threads(threads)
            results.append(_blas.matmul(a, b))
    finally:
        minidl.set_num_threads(before)
    for tile_rows, tile_cols in [(6, 16), (7, 40), (100, 96)]:  # the kernel called directly
        c = np.empty((1, 100, 90), np.float32)
        scratch = np.empty((2, _gemm.scratch_size(tile_cols, "float32")), np.float32)
        _gemm.gemm(a[None], b[None], c, False, False, tile_rows, tile_cols, scratch, 2)
        results.append(c[0])
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


# inner sizes: below one vector of 8 partial sums, not a multiple of 8, across the 64-row
# blocks of the few-rows path and the 256-long blocks of the packed path
FEW_ROWS_INNER = [1, 5, 8, 67, 300]


@pytest.mark.parametrize("rows, cols, threads", [
    (800, 64, 2), (288, 64, 2), (12544, 64, 2), (1152, 256, 2), (700, 200, 2), (900, 1024, 2),
    (800, 64, 3), (50, 40, 2), (7, 7, 2), (100, 33, 1)])
def test_tiles_cover_c_in_whole_rounds_when_they_can(rows, cols, threads):
    """The tiles of a product cover C, at least one per thread when C has the rows, and in a
    multiple of the threads whenever fewer row pieces allow it (3 tiles on 2 threads take as
    long as 4)."""
    tile_rows, tile_cols = _blas._tiles(1, rows, cols, threads, 32)
    assert 0 < tile_rows <= rows and 0 < tile_cols
    tiles = -(-rows // tile_rows) * -(-cols // tile_cols)
    assert tiles >= min(threads, -(-rows // _gemm.MR))
    col_tiles = -(-cols // tile_cols)
    if tiles > threads and any(col_tiles * p >= threads and col_tiles * p % threads == 0
                               for p in range(1, -(-rows // tile_rows))):
        assert tiles % threads == 0, (tile_rows, tile_cols)


@pytest.mark.parametrize("samples, per_sample, cols, threads", [
    (4, 256, 784, 2), (5, 256, 784, 2), (7, 49, 2048, 2), (6, 100, 64, 3), (2, 1024, 16, 2)])
def test_tiles_by_samples_give_each_thread_whole_samples(samples, per_sample, cols, threads):
    """With ``rows_per_sample``, the static schedule's contiguous runs of tiles (row-major)
    give thread t exactly the samples ``prange(samples, schedule="static")`` gives it on 2
    threads (ceil(S / T) each), whatever the width of C; the product keeps its bits."""
    rows = samples * per_sample
    tile_rows, tile_cols = _blas._tiles(1, rows, cols, threads, 32, rows_per_sample=per_sample)
    assert tile_rows % per_sample == 0 and tile_cols <= _blas.TILE_COLS
    tiles_m, tiles_n = -(-rows // tile_rows), -(-cols // tile_cols)
    tasks = tiles_m * tiles_n
    per_thread = -(-tasks // threads)  # OpenMP static: runs of ceil(tasks / threads)
    first = -(-samples // threads)
    for t in range(threads):
        mine = range(t * per_thread, min(tasks, (t + 1) * per_thread))
        row_pieces = {task // tiles_n for task in mine}
        assert all(len([task for task in mine if task // tiles_n == r]) == tiles_n
                   for r in row_pieces)  # whole rows of C
        got = sorted({s for r in row_pieces
                      for s in range(r * tile_rows // per_sample,
                                     min(samples, (r + 1) * tile_rows // per_sample))})
        assert got == list(range(t * first, min(samples, (t + 1) * first)))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, rows)).astype(np.float32).T  # a transposed view, as dcols'
    b = rng.standard_normal((16, cols)).astype(np.float32)
    before = minidl.get_num_threads()
    try:
        minidl.set_num_threads(threads)
        by_samples = _blas.matmul(a, b, rows_per_sample=per_sample).copy()
        plain = _blas.matmul(a, b)
    finally:
        minidl.set_num_threads(before)
    np.testing.assert_array_equal(by_samples, plain)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inner", FEW_ROWS_INNER)
def test_matmul_few_rows_any_layout_same_bits(inner, dtype, rng):
    """M = 1..17 covers the dot-product path (M <= DOT_ROWS) and the packed one with its
    1- to 6-row micro-kernels: accurate, and the same bits for every layout of A and B (B as
    W.T like Dense's forward, contiguous like its input gradient, strided) and on every call."""
    assert 1 <= _gemm.DOT_ROWS < 17
    n = 43  # whole vectors and a remainder of columns, for every vector width
    for m in range(1, 18):
        a = rng.standard_normal((m, inner)).astype(dtype)
        w = rng.standard_normal((n, inner)).astype(dtype)
        b = w.T  # columns contiguous
        out = _blas.matmul(a, b)
        _close(out, a.astype(np.float64) @ b.astype(np.float64), dtype, inner)
        for a_layout, b_layout in [(a, np.ascontiguousarray(b)), (_strided(a), _strided(b)),
                                   (np.asfortranarray(a), b), (a, b)]:
            np.testing.assert_array_equal(_blas.matmul(a_layout, b_layout), out)
        start = rng.standard_normal((m, n)).astype(dtype)
        result = start.copy()
        _blas.matmul(a, np.ascontiguousarray(b), out=result, accumulate=True)
        _close(result, start + a.astype(np.float64) @ b.astype(np.float64), dtype, inner)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_rows_of_the_packed_path_do_not_depend_on_m(dtype, rng):
    """Above DOT_ROWS, a row of C has the same bits whichever micro-kernel (1-6 rows)
    computed it: the first m rows of a 40-row product equal the m-row product."""
    a = rng.standard_normal((40, 300)).astype(dtype)
    b = rng.standard_normal((300, 37)).astype(dtype)
    full = _blas.matmul(a, b)
    for m in range(_gemm.DOT_ROWS + 1, 18):
        np.testing.assert_array_equal(_blas.matmul(a[:m], b), full[:m])


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_of_a_column_and_a_row_is_the_rounded_product(dtype, rng):
    """Inner dimension 1 above DOT_ROWS rows (a Dense weight gradient at batch 1) takes the
    outer-product kernel: every value is the one rounded product a[i] * b[j], for any layout
    of the operands and thread count; with accumulate it goes through the GEMM."""
    a = rng.standard_normal((300, 1)).astype(dtype)
    b = rng.standard_normal((1, 1001)).astype(dtype)
    expected = a * b  # NumPy's rounded products
    before = minidl.get_num_threads()
    try:
        for threads in (1, 2):
            minidl.set_num_threads(threads)
            for a_layout, b_layout in [(a, b), (_strided(a), _strided(b)),
                                       (np.asfortranarray(a), b)]:
                out = np.full((300, 1001), np.nan, dtype)
                np.testing.assert_array_equal(_blas.matmul(a_layout, b_layout, out=out),
                                              expected)
    finally:
        minidl.set_num_threads(before)
    start = rng.standard_normal((300, 1001)).astype(dtype)
    result = start.copy()
    _blas.matmul(a, b, out=result, accumulate=True)
    _close(result, start + a.astype(np.float64) * b.astype(np.float64), dtype, 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_rows_of_the_dot_path_do_not_depend_on_m(dtype, rng):
    """Up to DOT_ROWS, a row of C has the same bits whether B is streamed row by row (1 or 2
    rows of A, in blocks of columns) or read in blocks of its rows (3 to 8): the first m rows
    of an 8-row product equal the m-row product, B with contiguous rows and wider than a
    block (1100 columns: whole blocks, a partial one and a remainder of 4)."""
    a = rng.standard_normal((_gemm.DOT_ROWS, 300)).astype(dtype)
    b = rng.standard_normal((300, 1100)).astype(dtype)
    full = _blas.matmul(a, b)
    _close(full, a.astype(np.float64) @ b.astype(np.float64), dtype, 300)
    for m in range(1, _gemm.DOT_ROWS):
        np.testing.assert_array_equal(_blas.matmul(a[:m], b), full[:m])


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_few_rows_batches_sums_and_threads(dtype, rng):
    """The dot-product path with a batch, a shared operand, a sum over the batch, and 1 or
    2 threads on wide products (tiles of columns): same bits for any thread count."""
    a = rng.standard_normal((3, 2, 70)).astype(dtype)
    b = rng.standard_normal((3, 70, 9)).astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    _close(_blas.matmul(a, b), a64 @ b64, dtype, 70)
    _close(_blas.matmul(a, b[0]), a64 @ b64[0], dtype, 70)
    _close(_blas.matmul(a, b, sum_batch=True), (a64 @ b64).sum(axis=0), dtype, 210)
    x = rng.standard_normal((3, 1500)).astype(dtype)
    w = rng.standard_normal((1100, 1500)).astype(dtype)  # enough work for several threads
    before = minidl.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            minidl.set_num_threads(threads)
            results += [_blas.matmul(x, w.T), _blas.matmul(x, np.ascontiguousarray(w.T))]
    finally:
        minidl.set_num_threads(before)
    _close(results[0], x.astype(np.float64) @ w.T.astype(np.float64), dtype, 1500)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_matmul_errors():
    a, b = np.ones((2, 3)), np.ones((3, 4))
    with pytest.raises(TypeError, match="Dense.*float32 or two float64.*float64 and float32"):
        _blas.matmul(a, b.astype(np.float32), layer="Dense")
    with pytest.raises(TypeError, match="matmul.*int64"):
        _blas.matmul(a.astype(np.int64), b.astype(np.int64))
    with pytest.raises(ValueError, match=r"matmul: cannot multiply shapes \(2, 3\) and \(4, 3\)"):
        _blas.matmul(a, b.T)
    with pytest.raises(ValueError, match="cannot multiply"):
        _blas.matmul(np.ones((2, 2, 3)), np.ones((3, 3, 4)))
    with pytest.raises(ValueError, match="accumulate=True needs an out"):
        _blas.matmul(a, b, accumulate=True)
    with pytest.raises(ValueError, match=r"out.*C-contiguous float64 array of shape \(2, 4\)"):
        _blas.matmul(a, b, out=np.empty((4, 2)).T)
    square = np.ones((3, 3))
    with pytest.raises(ValueError, match="share memory"):
        _blas.matmul(square, square, out=square)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 40, 70), (8, 17, 9), (9, 300, 40), (600, 64, 1100)])
def test_bias_and_relu_in_the_product_give_the_bits_of_separate_passes(shape, dtype, relu, rng):
    """matmul(..., bias, relu): the bias added and the ReLU applied tile by tile, in the
    product's call (dot-product and packed paths, several tiles on two threads): the same bits
    as ``out += bias`` and relu_forward after it, NaN, -0.0 and exact zeros included."""
    from minidl.functional.activation import relu_forward
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    a[0, 0] = np.nan  # a NaN row of the output stays NaN through the ReLU
    bias[0] = -0.0
    before = minidl.get_num_threads()
    try:
        minidl.set_num_threads(2)
        want = _blas.matmul(a, w.T)
        want += bias
        if relu:
            want = relu_forward(want)[0]
        for b in (bias, None):
            got = _blas.matmul(a, w.T, bias=b, relu=relu)
            expected = want if b is not None else (
                relu_forward(_blas.matmul(a, w.T))[0] if relu else _blas.matmul(a, w.T))
            np.testing.assert_array_equal(got, expected)
            assert np.array_equal(np.signbit(got), np.signbit(expected))
    finally:
        minidl.set_num_threads(before)
    assert np.isnan(want[0]).all() and (not relu or (want[1:] >= 0).all())


def test_bias_and_relu_errors():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    out = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="^Dense: bias and relu do not combine with accumulate"):
        _blas.matmul(a, b, out=out, accumulate=True, relu=True, layer="Dense")
    with pytest.raises(ValueError, match=r"^Dense: bias must be a contiguous \(4,\) array of the "
                                         r"operands' dtype float32"):
        _blas.matmul(a, b, bias=np.ones(4), layer="Dense")
    with pytest.raises(ValueError, match="need two arrays, not a gathered operand"):
        _blas.matmul(_blas.Gathered(np.ones(9, np.float32), [0, 1], [0, 1, 2]), b, relu=True)


def test_dense_and_im2col_products_run_on_minidls_team(monkeypatch, rng):
    """Dense and the im2col convolution multiply with _blas.matmul, never with NumPy's BLAS."""
    from minidl.functional import conv
    calls = []
    real = _blas.matmul

    def probe(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    def no_numpy_products(*args, **kwargs):
        raise AssertionError("NumPy's matmul was called")

    monkeypatch.setattr(_blas, "matmul", probe)
    monkeypatch.setattr(np, "matmul", no_numpy_products)
    x = rng.standard_normal((4, 3))
    out, cache = linear.linear_forward(x, rng.standard_normal((2, 3)))
    linear.linear_backward(np.ones((4, 2)), cache)
    assert len(calls) == 3
    x = rng.standard_normal((2, 3, 6, 6))
    out, cache = conv.conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)), stride=2,
                                     method="im2col")
    conv.conv2d_backward(np.ones_like(out), cache)
    assert len(calls) == 6


def test_one_thread_limits_blas_and_restores_it():
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert before and all(n == 2 for n in before)  # NumPy's BLAS was found
        with _blas.one_thread():
            assert all(n == 1 for n in _blas_threads())
        assert _blas_threads() == before


def test_the_reference_backend_runs_blas_on_one_thread(monkeypatch, rng):
    """The references' matrix products (conv2d's einsums, linear's @) run under one_thread too."""
    import minidl
    from minidl.functional import conv
    from minidl.reference.functional import conv as ref_conv, linear as ref_linear
    seen = []

    def probe(module, name):
        function = getattr(module, name)

        def wrapper(*args):
            seen.append(_blas_threads())
            return function(*args)
        monkeypatch.setattr(module, name, wrapper)

    for module, op in [(ref_conv, "conv2d"), (ref_linear, "linear")]:
        probe(module, f"{op}_forward")
        probe(module, f"{op}_backward")
    x = rng.standard_normal((2, 3, 6, 6))
    with threadpool_limits(limits=2, user_api="blas"), minidl.backend("reference"):
        out, cache = conv.conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)))
        conv.conv2d_backward(np.ones_like(out), cache)
        out, cache = linear.linear_forward(x.reshape(2, -1), rng.standard_normal((5, 108)))
        linear.linear_backward(np.ones_like(out), cache)
        assert all(n == 2 for n in _blas_threads())
    assert len(seen) == 4 and all(n == 1 for threads in seen for n in threads)


def test_one_thread_nests_and_restores_after_an_exception():
    with threadpool_limits(limits=2, user_api="blas"):
        try:
            with _blas.one_thread():
                with _blas.one_thread():  # already one thread: nothing to change or restore
                    assert all(n == 1 for n in _blas_threads())
                assert all(n == 1 for n in _blas_threads())
                raise KeyError("inside")
        except KeyError:
            pass
        assert all(n == 2 for n in _blas_threads())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 8, 10, 16, 17, 40, 48, 70])
def test_narrow_kernels_give_the_same_bits(cols, dtype, rng):
    """The narrow micro-kernels (AVX2 ones on AVX-512 CPUs) and the main ones compute each
    element as the same chain of fused multiply-adds; matmul picks the one that pads less."""
    a = rng.standard_normal((2, 37, 300)).astype(dtype)
    b = rng.standard_normal((300, cols)).astype(dtype)[None]
    name = np.dtype(dtype).name
    results = []
    for narrow in (False, True):
        nr = (_gemm.NR_NARROW if narrow else _gemm.NR)[name]
        tile_cols = -(-cols // nr) * nr
        out = np.full((2, 37, cols), np.nan, dtype)
        scratch = np.empty((2, _gemm.scratch_size(tile_cols, name, narrow)), dtype)
        _gemm.gemm(a, b, out, False, False, 12, tile_cols, scratch, 2, narrow)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])
    _close(results[0], a.astype(np.float64) @ b[0].astype(np.float64), dtype, 300)
    assert _gemm.NR_NARROW[name] <= _gemm.NR[name]
    np.testing.assert_array_equal(_blas.matmul(a, b[0]), results[0])


def _gathered_case(rng, dtype, rows, inner, runs):
    """A Gathered operand (rows x inner) over a random base, its columns in runs of adjacent
    offsets (``runs``: their lengths, summing to ``inner``), as im2col's taps are."""
    base = rng.standard_normal(4000).astype(dtype)
    starts = rng.integers(0, 200, len(runs))
    cols = np.concatenate([s + 211 * i + np.arange(n) for i, (s, n) in
                           enumerate(zip(starts, runs))])
    row_offsets = rng.integers(0, 4000 - cols.max(), rows)
    return _blas.Gathered(base, row_offsets, cols)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, runs, other", [
    (13, [3, 7, 1], 20),        # a partial strip of 6 rows, runs shorter than a vector
    (150, [64, 64, 64, 64, 40], 33),  # runs across the 256-long blocks, rows across 144
    (9, [300], 70),             # one long run; just above the dot products' 8 rows
    (5, [2, 2, 2], 4),          # few rows: the matrix goes to the dot products
    (200, [32] * 9, 64),        # im2col's shape: whole strips of the wide kernels, K > 256
])
def test_gathered_operands_give_the_matrix_bits(rows, runs, other, dtype, rng):
    """A Gathered operand, on either side and at 1 or 2 threads, gives the same bits as the
    matrix it stands for (a gathered B is packed into the same values; a gathered A is read in
    place by kernels with the same arithmetic as the packed ones)."""
    gathered = _gathered_case(rng, dtype, rows, sum(runs), runs)
    matrix = gathered.materialize()
    assert matrix.shape == (rows, sum(runs))
    np.testing.assert_array_equal(
        matrix, gathered.base[gathered.rows[:, None] + gathered.cols[None, :]])
    right = rng.standard_normal((sum(runs), other)).astype(dtype)
    left = rng.standard_normal((other, rows)).astype(dtype)
    before = minidl.get_num_threads()
    try:
        for threads in (1, 2):
            minidl.set_num_threads(threads)
            np.testing.assert_array_equal(_blas.matmul(gathered, right),
                                          _blas.matmul(matrix, right))
            out, expected = np.ones((2, rows, other), dtype)
            _blas.matmul(gathered, right, out=out, accumulate=True)
            _blas.matmul(matrix, right, out=expected, accumulate=True)
            np.testing.assert_array_equal(out, expected)
            # gathered B, given transposed: (other x rows) @ (rows x inner) via its own offsets
            gathered_b = _blas.Gathered(gathered.base, gathered.rows, gathered.cols)
            np.testing.assert_array_equal(_blas.matmul(left, gathered_b),
                                          _blas.matmul(left, matrix))
            out = np.ones((other, sum(runs)), dtype)
            _blas.matmul(left, gathered_b, out=out, accumulate=True)
            np.testing.assert_array_equal(out, _blas.matmul(left, matrix) + 1)
    finally:
        minidl.set_num_threads(before)
    _close(_blas.matmul(gathered, right), matrix.astype(np.float64) @ right, dtype, sum(runs))


def test_trusted_gathered_is_the_checked_one_without_checks():
    """Gathered.trusted (offsets made for the base's shape: im2col's, gather_offsets) holds the
    same operand as the checked constructor, so the products are the same bits."""
    from minidl.functional.conv_im2col import gather_offsets
    rng = np.random.default_rng(0)
    x_pad = rng.standard_normal((3, 9, 10, 8)).astype(np.float32)
    rows, taps = gather_offsets(x_pad.shape, (3, 2), (2, 1), (4, 9))
    checked, trusted = _blas.Gathered(x_pad, rows, taps), _blas.Gathered.trusted(x_pad, rows, taps)
    assert trusted.shape == checked.shape == (3 * 4 * 9, 3 * 2 * 8)
    assert trusted.dtype == checked.dtype and trusted.base.base is x_pad
    np.testing.assert_array_equal(trusted.materialize(), checked.materialize())
    right = rng.standard_normal((48, 20)).astype(np.float32)
    np.testing.assert_array_equal(_blas.matmul(trusted, right), _blas.matmul(checked, right))


def test_gathered_operand_errors(rng):
    base = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="Gathered: offsets outside base"):
        _blas.Gathered(base, [0, 90], [0, 10])
    with pytest.raises(ValueError, match="Gathered: offsets outside base"):
        _blas.Gathered(base, [-5, 0], [0, 1])
    with pytest.raises(ValueError, match="C-contiguous"):
        _blas.Gathered(np.zeros((10, 10), np.float32)[:, ::2], [0], [0])
    gathered = _blas.Gathered(base, np.arange(0, 90, 10), np.arange(10))
    with pytest.raises(ValueError, match="cannot multiply shapes"):
        _blas.matmul(gathered, np.zeros((9, 3), np.float32))
    with pytest.raises(TypeError, match="gathered operand"):
        _blas.matmul(gathered, np.zeros((10, 3), np.float64))
    with pytest.raises(ValueError, match="sum_batch"):
        _blas.matmul(gathered, np.zeros((10, 3), np.float32), sum_batch=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gathered_tasks_are_products_of_both_operands_gathered(dtype, rng):
    """``_gemm.gemm_gathered_tasks``: each task writes its block of C, the product of its
    gathered A and gathered B (any offsets, partial strips, inner sizes across the 256-long
    blocks), the same bits at 1 and 2 threads, and leaves the rest of C alone."""
    a_base = rng.standard_normal(5000).astype(dtype)
    b_base = rng.standard_normal(4000).astype(dtype)
    a_rows = rng.integers(0, 1000, 300).astype(np.intp)
    a_cols = rng.integers(0, 4000, 700).astype(np.intp)
    b_rows = rng.integers(0, 3000, 700).astype(np.intp)
    b_cols = rng.integers(0, 1000, 90).astype(np.intp)
    ldc = 100
    # (a_row, b_col, inner_start, rows, cols, inner, c_offset, ldc)
    tasks = np.array([(0, 0, 0, 13, 40, 300, 0, ldc), (13, 40, 300, 7, 50, 1, 40, ldc),
                      (20, 3, 301, 150, 33, 399, 20 * ldc, ldc), (170, 0, 5, 1, 1, 2, 99, ldc)],
                     dtype=np.intp)
    results = []
    for threads in (1, 2):
        c = np.full(200 * ldc, 7, dtype)
        scratch = np.empty((threads, _gemm.scratch_size(64, dtype.__name__)), dtype)
        _gemm.gemm_gathered_tasks(a_base, a_rows, a_cols, b_base, b_rows, b_cols, c, tasks,
                                  scratch, threads)
        results.append(c)
    np.testing.assert_array_equal(results[0], results[1])
    expected = np.full(200 * ldc, 7, np.float64)
    for a_row, b_col, start, rows, cols, inner, offset, stride in tasks:
        a = a_base[a_rows[a_row:a_row + rows, None] + a_cols[None, start:start + inner]]
        b = b_base[b_rows[start:start + inner, None] + b_cols[None, b_col:b_col + cols]]
        block = a.astype(np.float64) @ b
        for i in range(rows):
            expected[offset + i * stride:offset + i * stride + cols] = block[i]
    _close(results[0], expected, dtype, 400)


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gathered_tasks_with_b_packed_once(dtype, narrow, rng):
    """``_gemm.pack_b`` (from a C-contiguous matrix and from a transposed view: the same
    packing) and ``_gemm.gemm_gathered_tasks_packed``: each task writes its block of C, the sum
    over its segments of gathered A's columns times runs of B's rows (runs across the 256-long
    blocks, partial strips, a task at the second strip), the same bits at 1 and 2 threads, and
    leaves the rest of C alone."""
    name = np.dtype(dtype).name
    nr = (_gemm.NR_NARROW if narrow else _gemm.NR)[name]
    inner, n_cols = 700, nr + 26
    b = rng.standard_normal((inner, n_cols)).astype(dtype)
    packed = np.full(_gemm.packed_size(inner, n_cols, name, narrow), np.nan, dtype)
    _gemm.pack_b(b, packed, narrow, 2)
    strips = -(-n_cols // nr)
    stride = packed.size // strips  # (a few elements of padding after each strip)
    padded = np.zeros((inner, strips * nr), dtype)
    padded[:, :n_cols] = b
    for s in range(strips):  # strip s: all rows of columns s*nr .. s*nr + nr - 1, zeros past B
        np.testing.assert_array_equal(packed[s * stride:s * stride + inner * nr],
                                      padded[:, s * nr:(s + 1) * nr].reshape(-1))
    from_view = packed.copy()
    _gemm.pack_b(np.ascontiguousarray(b.T).T, from_view, narrow, 1)
    np.testing.assert_array_equal(from_view, packed)  # (NaN in the padding compare equal)
    a_base = rng.standard_normal(5000).astype(dtype)
    a_rows = rng.integers(0, 1000, 300).astype(np.intp)
    a_cols = rng.integers(0, 4000, 700).astype(np.intp)
    # (a_col, b_row, length)
    segments = np.array([(0, 0, 300), (300, 350, 1), (301, 400, 299), (5, 690, 10),
                         (650, 0, 50)], dtype=np.intp)
    ldc = 100
    # (a_row, b_col, seg_start, rows, cols, seg_count, c_offset, ldc)
    tasks = np.array([(0, 0, 0, 13, n_cols, 2, 0, ldc), (13, nr, 1, 7, 26, 3, 60, ldc),
                      (20, 0, 3, 150, 3, 2, 20 * ldc, ldc), (170, nr, 4, 1, 1, 1, 99, ldc)],
                     dtype=np.intp)
    results = []
    for threads in (1, 2):
        c = np.full(200 * ldc, 7, dtype)
        scratch = np.empty((threads, _gemm.scratch_size(64, name, narrow)), dtype)
        _gemm.gemm_gathered_tasks_packed(a_base, a_rows, a_cols, packed, inner, segments, c,
                                         tasks, scratch, threads, narrow)
        results.append(c)
    np.testing.assert_array_equal(results[0], results[1])
    expected = np.full(200 * ldc, 7, np.float64)
    for a_row, b_col, first, rows, cols, count, offset, stride in tasks:
        block = np.zeros((rows, cols))
        for a_col, b_row, length in segments[first:first + count]:
            a = a_base[a_rows[a_row:a_row + rows, None] + a_cols[None, a_col:a_col + length]]
            block += a.astype(np.float64) @ b[b_row:b_row + length, b_col:b_col + cols]
        for i in range(rows):
            expected[offset + i * stride:offset + i * stride + cols] = block[i]
    _close(results[0], expected, dtype, 400)
