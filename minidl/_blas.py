"""minidl's matrix products: its own tiled GEMM, run on minidl's OpenMP team.

The products of Dense layers, 1x1 convolutions and the im2col convolution run in
:func:`matmul` (the kernel is ``minidl/_kernels/_gemm.pyx`` with its blocking and micro-kernel in
``_gemm.h``): C is cut into tiles, and the tiles are shared out among the same OpenMP threads
(:func:`minidl.set_num_threads`) that run every other kernel of a training step. Why not NumPy's
BLAS, or another one:

* NumPy's OpenBLAS keeps its own pool of threads, and after every multi-threaded product those
  threads busy-wait for more work (about 2**28 cycles, a tenth of a second); its spin can only
  be changed by an environment variable read when NumPy is loaded, which minidl must not set
  (importing minidl has no side effects). The OpenMP kernels that follow (BatchNorm, pooling,
  convolutions) then share the cores with a spinning thread, and an OpenMP team that loses a
  core waits at every barrier. So minidl ran OpenBLAS on one thread (threadpoolctl), which
  halves every large product on 2 cores: the Dense MLP of issue 12 trained at 0.48x PyTorch's
  speed. Running every parallel region on ONE team also suits OpenMP's default wait policy
  (libgomp spins a while after each region): the threads that spin are the ones the next
  region needs, and no foreign pool competes with them.
* The ``blis`` package (cimportable, never spins) vendors BLIS 0.7.0, which does not recognise
  AMD family 19h (Zen 3, Zen 4) and falls back to its "generic" kernels: 7-16 GFLOP/s per core
  here against 80-88 for OpenBLAS on one thread (AMD EPYC Zen 3, float32, 512^3 and
  256x1024x1024, best of 40; ``BLIS_ARCH_DEBUG=1`` prints "selecting sub-configuration
  'generic'").
* SciPy's ``cython_blas`` would add SciPy as a dependency and brings its own OpenBLAS (or, on
  macOS, Accelerate) with its own threads, set process-wide.

The micro-kernel reaches 101 GFLOP/s on one core of this Zen 3 (its peak is about 102) on
packed data, and whole products 63-84 GFLOP/s per core (float32; OpenBLAS on one thread: 80-88
on square-ish shapes, 40 on 8192x576 @ 576x128, an im2col shape), on every thread of the team.
Every element of C is summed in a fixed order that depends neither on the tiling nor on the
number of threads, so results are bit-identical for any thread count.

Wait policies, measured on the shared 2-core machine while other jobs kept it busy (load 9-11,
so only the order is meaningful): a loop of a (256, 1024) @ (1024, 1024) product, BatchNorm and
ReLU on 2 threads, best iteration of 15 in a fresh process. With OpenMP's default policy
(threads spin a while after each region): OpenBLAS on 2 threads 203-332 ms, OpenBLAS on 1
thread 86-171 ms, this GEMM on minidl's team 61-132 ms. With ``OMP_WAIT_POLICY=PASSIVE``:
54-121, 17-25 and 23-28 ms. A second spinning pool (OpenBLAS's) is the worst case under both
policies; with the team alone, the default policy costs what spinning costs any OpenMP program
on a busy machine (README, "Threads").

:func:`one_thread` remains for the products still done by NumPy (the reference backend's), so
that they never start OpenBLAS's threads.
"""
import functools

import numpy as np
from threadpoolctl import ThreadpoolController

from . import _config, _memory
from ._kernels import _gemm as _kernel

__all__ = ["matmul", "Gathered", "one_thread", "PARALLEL_MIN_WORK", "TILE_COLS"]

# Below this many multiply-adds a product runs on one thread (about 12 microseconds of work:
# waking the team would cost more).
PARALLEL_MIN_WORK = 1 << 20
# The same for products of at most DOT_ROWS rows (the kernel's dot products, e.g. a Dense layer
# at batch 1): they read every element of B once, so they run at memory speed, about 5x slower
# per multiply-add; (1, 3136) @ (3136, 128) took 73 us on one thread.
PARALLEL_MIN_DOT_WORK = 1 << 17
# Widest tile of C a thread computes (a multiple of every micro-kernel width, 32), and the
# smallest tiles made only to have more tiles than threads (each tile packs its own blocks).
# A tile packs its rows of A once per block of the inner dimension, so a wider tile packs A
# fewer times: on one thread, (256, 1024) @ (1024, 1024) products took 6.1-6.2 ms with 1024
# against 6.2-6.5 ms with 512 (the packed block of B, 1 MiB of float32, lives in L3 as
# GotoBLAS's does); on more threads the tiles are narrower anyway.
TILE_COLS = 1024
MIN_TILE_COLS = 128
MIN_TILE_ROWS = 256

# dtype -> its name, the key of the kernel's tables (``np.dtype.name`` is a Python property of
# NumPy's that costs microseconds, a third of a small product)
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}

_libraries = []  # threadpoolctl's controllers of the BLAS libraries, found on first use


def _blas_libraries():
    if not _libraries:
        _libraries.append(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries[0]


class _OneThread:
    """The context manager :func:`one_thread` returns: on entry, every BLAS library that runs
    more than one thread is set to one; on exit, each gets its previous count back.

    threadpoolctl finds the libraries once (:func:`_blas_libraries`); entering and leaving then
    call their own get/set-thread-count functions, 7 microseconds per use, where
    ``ThreadpoolController.limit`` re-reads every library's settings each time (12 us, 0.2 ms of
    a training step of the MNIST CNN at batch 1).
    """

    __slots__ = ("_previous",)

    def __enter__(self):
        self._previous = []
        for library in _blas_libraries():
            threads = library.get_num_threads()
            if threads is not None and threads != 1:
                library.set_num_threads(1)
                self._previous.append((library, threads))
        return self

    def __exit__(self, *exc_info):
        for library, threads in reversed(self._previous):
            library.set_num_threads(threads)
        self._previous = []
        return False


def one_thread():
    """A context manager that limits the BLAS libraries NumPy loaded to one thread."""
    return _OneThread()


def _ceil_div(a, b):
    return -(-a // b)


def _tiles(tasks_per_tile, rows, cols, threads, nr, rows_per_sample=0):
    """``(tile_rows, tile_cols)`` of C: about two tiles per thread where the matrix allows, or,
    given ``rows_per_sample``, one run of whole samples per thread (see below).

    Each tile packs its own blocks of A and B, so tiles stay at least ``MIN_TILE_COLS`` wide
    and ``MIN_TILE_ROWS`` high unless there would be fewer tiles than threads. The tiling never
    changes the result (see the module docstring).

    Which thread computes which tile: thread ``t`` takes the ``t``-th contiguous run of tiles
    (OpenMP's static schedule), the same on every call with these shapes, so a thread writes
    the same rows of C each step, which for the im2col path are the samples its col2im and
    layout passes then read (they split the batch the same way). On our 2-core virtual machine
    the two cores sometimes share a last-level cache and sometimes do not (the machine's "slow
    phases": a thread reading 8 MiB its partner had just written took 0.22 ms in the first
    case, 0.64-0.92 ms in the second, against 0.21 ms for data it wrote itself); data moving
    from one core to the other then costs about 3x. With tiles handed out one at a time
    (dynamic schedule, as before), about half of every product's output moved: in a slow phase
    the input gradient's ``dcols`` product of a (64, 16, 32, 32) -> 16 4x4 stride-2 layer took
    2.6-3.2 ms against 0.8 when the cores share a cache, and 0.81-1.12 ms with the static
    schedule; when they share it, the two schedules measured the same (MNIST CNN + BN step
    11.3-12.4 ms before, 11.4-12.6 after; ResNet-style b16 7.8-8.9 and 7.5-8.8).

    That holds only where the tiles split C by rows. A product with few rows per thread's
    worth of columns split C by columns: ``dcols`` of a (64, 16, 32, 32) -> 16 7x7 stride-2
    layer, 5 samples x 256 positions by 784 taps per chunk, went in four column tiles, so every
    sample's row was half written by each thread and col2im, which folds whole samples, read
    half its data from the other core. With ``rows_per_sample`` (C's rows come in runs of that
    many per sample, a batch's output positions), the rows are cut on sample boundaries
    instead, thread ``t`` taking the samples a static ``prange`` over the samples gives it
    (``ceil(S / threads)`` each, the last fewer), and only columns wider than ``TILE_COLS``
    are split further (and dcols' chunks hold a multiple of the threads' samples). That layer's
    step at 2 threads, alternated processes: 8.5-9.3 ms before, 8.3-9.2 after; in a slow phase
    (there, a thread overwriting 8 MiB its partner had just written took 3.1-3.5x as long as
    overwriting its own), 15.7-16.6 ms before, 11.1-11.8 after.
    """
    samples = rows // rows_per_sample if rows_per_sample else 0
    if threads > 1 and samples >= threads and samples * rows_per_sample == rows:
        tile_cols = min(_ceil_div(cols, nr) * nr, TILE_COLS)
        return min(_ceil_div(samples, threads) * rows_per_sample, rows), tile_cols
    want = 2 * threads if threads > 1 else 1
    tiles_n = _ceil_div(cols, TILE_COLS)
    while tasks_per_tile * tiles_n < want and _ceil_div(cols, tiles_n + 1) >= MIN_TILE_COLS:
        tiles_n += 1
    tile_cols = min(_ceil_div(_ceil_div(cols, tiles_n), nr) * nr, TILE_COLS)
    tasks = tasks_per_tile * _ceil_div(cols, tile_cols)
    pieces = 1
    while tasks * pieces < want and rows >= (pieces + 1) * MIN_TILE_ROWS:
        pieces += 1
    while tasks * pieces < threads and rows > pieces * _kernel.MR:
        pieces += 1
    if tasks * pieces > threads and tasks * pieces % threads:
        # whole rounds of tiles where fewer pieces allow it: 3 tiles on 2 threads take as
        # long as 4 (im2col's weight gradient of a 5x5 layer at 2 threads, (800, 12544) @
        # (12544, 64): 9.5 ms in 3 tiles, 8.1 ms in 2)
        pieces = next((p for p in range(pieces - 1, 0, -1)
                       if tasks * p >= threads and tasks * p % threads == 0), pieces)
    tile_rows = _ceil_div(_ceil_div(rows, pieces), _kernel.MR) * _kernel.MR
    return min(tile_rows, rows), tile_cols


@functools.lru_cache(maxsize=1024)
def _plan(tasks_per_tile, rows, cols, threads, dtype_name, rows_per_sample=0):
    """``(tile_rows, tile_cols, threads, scratch, narrow)`` of a product: its tiles
    (:func:`_tiles`), the threads worth starting for that many tiles, the scratch elements each
    needs, and whether the narrow micro-kernels compute it (see :func:`_narrow`).

    A pure function of its arguments (the kernel's ``NR`` and ``MR`` are fixed at import), so
    it is cached: a training step makes the same few products again and again, and working the
    plan out took about a microsecond, a tenth of a small product (a Dense layer at batch 1).
    """
    narrow = _narrow(cols, dtype_name)
    nr = (_kernel.NR_NARROW if narrow else _kernel.NR)[dtype_name]
    tile_rows, tile_cols = _tiles(tasks_per_tile, rows, cols, threads, nr, rows_per_sample)
    tasks = tasks_per_tile * _ceil_div(rows, tile_rows) * _ceil_div(cols, tile_cols)
    return (tile_rows, tile_cols, max(1, min(threads, tasks)),
            _kernel.scratch_size(tile_cols, dtype_name, narrow), narrow)


def _narrow(cols, dtype_name):
    """Whether a product of ``cols`` columns pads less with the narrow micro-kernels.

    Each micro-kernel call computes ``NR`` columns, so the last strip of C is padded up to a
    multiple of ``NR``: with AVX-512 (``NR`` = 32 floats) a product of 8 columns, such as an
    im2col convolution with 8 output channels, would use a quarter of its arithmetic. The
    narrow kernels (AVX2, 16 floats, as fast per core on AMD Zen 4, whose AVX-512 unit is
    256 bits wide) are taken when they pad less; both give the same bits.
    """
    nr, narrow_nr = _kernel.NR[dtype_name], _kernel.NR_NARROW[dtype_name]
    return _ceil_div(cols, narrow_nr) * narrow_nr < _ceil_div(cols, nr) * nr


class Gathered:
    """A matrix operand of :func:`matmul` that is read where it lies: ``G[i, k] = base[rows[i] +
    cols[k]]``.

    With ``base`` a zero-padded NHWC image, ``rows[i]`` the offset of output position ``i``'s
    receptive field and ``cols[k]`` that of tap ``k = (i, j, c)`` within it, ``G`` is im2col's
    matrix (:mod:`minidl.functional.conv_im2col`) without the copy (``_gemm.h``, "gathered
    operands"): as the left operand, the GEMM's micro-kernels read its elements straight from
    the image, without packing; as the right one, it packs its blocks from the image into the
    values the matrix would have been packed into. Either way the product has the matrix's
    bits.

    Args:
        base (np.ndarray): contiguous float32/float64 (any shape; read as 1-D).
        rows, cols (np.ndarray): 1-D integer offsets (converted to ``np.intp``).
    Raises:
        ValueError: an offset pair outside ``base``, or ``base`` not contiguous.
    """

    __slots__ = ("base", "rows", "cols", "shape", "dtype")

    def __init__(self, base, rows, cols):
        if not (isinstance(base, np.ndarray) and base.flags.c_contiguous):
            raise ValueError("Gathered: base must be a C-contiguous ndarray")
        self.base = base.reshape(-1)
        self.rows = np.ascontiguousarray(rows, dtype=np.intp)
        self.cols = np.ascontiguousarray(cols, dtype=np.intp)
        if self.rows.ndim != 1 or self.cols.ndim != 1:
            raise ValueError("Gathered: rows and cols must be 1-D")
        if self.rows.size and self.cols.size and (
                self.rows.min() + self.cols.min() < 0
                or self.rows.max() + self.cols.max() >= self.base.size):
            raise ValueError(f"Gathered: offsets outside base of {self.base.size} elements")
        self.shape = (self.rows.size, self.cols.size)
        self.dtype = self.base.dtype

    @classmethod
    def trusted(cls, base, rows, cols):
        """A :class:`Gathered` whose offsets are known to lie inside ``base``, without the
        checks (5 us a call, 6% of a batch-1 convolution's training pass): ``base`` C-contiguous,
        ``rows`` and ``cols`` 1-D ``np.intp`` arrays made for its shape, such as
        :func:`minidl.functional.conv_im2col.gather_offsets` of ``base.shape``."""
        gathered = cls.__new__(cls)
        gathered.base, gathered.rows, gathered.cols = base.reshape(-1), rows, cols
        gathered.shape, gathered.dtype = (rows.size, cols.size), base.dtype
        return gathered

    def materialize(self):
        """The matrix itself, ``(len(rows), len(cols))`` (a new array)."""
        return self.base[np.add.outer(self.rows, self.cols)]


def _matmul_gathered(a, b, out, accumulate, layer, rows_per_sample=0):
    """:func:`matmul` with one :class:`Gathered` operand and one 2-D array."""
    gathered_a = isinstance(a, Gathered)
    gathered, other = (a, b) if gathered_a else (b, a)
    if isinstance(other, Gathered) or not isinstance(other, np.ndarray) or other.ndim != 2 \
            or other.dtype != gathered.dtype or other.dtype not in _DTYPE_NAMES:
        raise TypeError(f"{layer}: a gathered operand multiplies a 2-D float32/float64 array "
                        f"of its dtype")
    rows, inner = a.shape
    if b.shape[0] != inner:
        raise ValueError(f"{layer}: cannot multiply shapes {a.shape} and {b.shape}")
    cols = b.shape[1]
    if rows <= _kernel.DOT_ROWS:  # the dot products read A's rows in place: give them a matrix
        return _matmul(a.materialize() if gathered_a else a,
                       b if gathered_a else b.materialize(), out, accumulate, False, layer)
    out = _output(layer, out, (rows, cols), other.dtype, accumulate, other, gathered.base)
    if _nothing_to_multiply(out, inner == 0, accumulate):
        return out
    threads = 1 if rows * cols * inner < PARALLEL_MIN_WORK else _config.get_num_threads()
    tile_rows, tile_cols, threads, scratch_size, narrow = _plan(
        1, rows, cols, threads, _DTYPE_NAMES[other.dtype], rows_per_sample)
    _kernel.gemm_gathered(gathered.base, gathered.rows, gathered.cols, other, out, gathered_a,
                          accumulate, tile_rows, tile_cols,
                          _memory.empty((threads, scratch_size), other.dtype), threads, narrow)
    return out


def _output(layer, out, shape, dtype, accumulate, *operands):
    """The product's ``out``: the caller's (checked, and sharing no memory with the
    ``operands``) or a new array from :mod:`minidl._memory`."""
    if accumulate and out is None:
        raise ValueError(f"{layer}: accumulate=True needs an out array")
    given = out is not None
    out = _memory.output(layer, out, shape, dtype)
    if given and any(np.may_share_memory(out, operand) for operand in operands):
        raise ValueError(f"{layer}: out must not share memory with the operands")
    return out


def _nothing_to_multiply(out, no_terms, accumulate):
    """True when the product is empty or a sum of no terms (``out`` then zeroed unless
    accumulating): the kernel is not called."""
    if out.size and no_terms and not accumulate:
        out.fill(0)
    return out.size == 0 or no_terms


def matmul(a, b, out=None, accumulate=False, sum_batch=False, layer="matmul", bias=None,
           relu=False, rows_per_sample=0):
    """``a @ b`` on minidl's OpenMP team (see the module docstring); ``+ bias`` and a ReLU
    in the same call when asked (a Dense layer's whole forward).

    Args:
        a (np.ndarray): ``(M, K)`` or a batch ``(B, M, K)``; float32 or float64, any strides
            (a transposed view costs nothing).
        b (np.ndarray): ``(K, N)`` or ``(B, K, N)``, a's dtype, any strides. A 2-D operand is
            used for every matrix of the other's batch.
        out (np.ndarray or None): where to write: C-contiguous, a's dtype, ``(M, N)`` when
            neither operand is a batch or ``sum_batch``, else ``(B, M, N)``. A new array from
            :mod:`minidl._memory` when None.
        accumulate (bool): add the product to ``out`` (which must then be given).
        sum_batch (bool): ``sum_n a[n] @ b[n]``, a single ``(M, N)`` matrix, summed over the
            batch in order.
        layer (str): name used in error messages.
        bias (np.ndarray or None): ``(N,)`` of a's dtype, contiguous: added to every row of the
            product (``out += bias`` in NumPy gives the same bits).
        relu (bool): then ``max(out, 0)`` (as ``functional.relu_forward``).
        rows_per_sample (int): 0, or the rows of C per sample when they come in such runs
            (an im2col convolution's output positions): the threads then split C on sample
            boundaries, as the passes that read it split the samples (see :func:`_tiles`).
            It changes who computes which tile, never the result. Ignored for batches.
    Either operand may instead be a :class:`Gathered` matrix (then the other is 2-D and
    ``sum_batch`` is False). ``bias`` and ``relu`` need two arrays, without ``accumulate`` or
    ``sum_batch``.
    Returns:
        np.ndarray: ``out``.
    Raises:
        TypeError: the operands are not float32/float64 arrays of one dtype.
        ValueError: their shapes do not match; ``out`` is unusable; ``bias`` is not a
            contiguous ``(N,)`` array of the operands' dtype; ``bias`` or ``relu`` with
            ``accumulate``, ``sum_batch`` or a gathered operand.
    """
    epilogue = bias is not None or relu
    if isinstance(a, Gathered) or isinstance(b, Gathered):
        if sum_batch or epilogue:
            raise ValueError(f"{layer}: sum_batch, bias and relu need two arrays, not a "
                             f"gathered operand")
        return _matmul_gathered(a, b, out, accumulate, layer, rows_per_sample)
    if epilogue and (accumulate or sum_batch):
        raise ValueError(f"{layer}: bias and relu do not combine with accumulate or sum_batch")
    return _matmul(a, b, out, accumulate, sum_batch, layer, bias, relu, rows_per_sample)


@functools.lru_cache(maxsize=1024)
def _geometry(a_shape, b_shape, sum_batch, num_threads, dtype_name, rows_per_sample=0):
    """What :func:`_matmul` works out from the operands' shapes alone, or None when they do
    not multiply: ``(shape, out3_shape, rows, inner, cols, no_terms, tile_rows, tile_cols,
    threads, scratch_size, narrow)``. A pure function of its arguments, cached: a training
    step makes the same few products again and again (on a Dense layer at batch 1 this took
    about 2 of the 6 microseconds of Python around its product)."""
    batched = len(a_shape) == 3 or len(b_shape) == 3
    a3 = (1,) + a_shape if len(a_shape) == 2 else a_shape
    b3 = (1,) + b_shape if len(b_shape) == 2 else b_shape
    if len(a3) != 3 or len(b3) != 3:
        return None
    batch = max(a3[0], b3[0])
    if a3[2] != b3[1] or a3[0] not in (1, batch) or b3[0] not in (1, batch):
        return None
    rows, inner, cols = a3[1], a3[2], b3[2]
    single = sum_batch or not batched
    shape = (rows, cols) if single else (batch, rows, cols)
    out3_shape = (1 if single else batch, rows, cols)
    no_terms = inner == 0 or batch == 0
    if no_terms or rows * cols == 0:  # nothing for the kernel to do (_nothing_to_multiply)
        return shape, out3_shape, rows, inner, cols, no_terms, 0, 0, 0, 0, False
    work = batch * rows * cols * inner
    minimum = PARALLEL_MIN_DOT_WORK if rows <= _kernel.DOT_ROWS else PARALLEL_MIN_WORK
    threads = 1 if work < minimum else num_threads
    tile_rows, tile_cols, threads, scratch_size, narrow = _plan(
        1 if sum_batch else batch, rows, cols, threads, dtype_name,
        rows_per_sample if single else 0)
    return (shape, out3_shape, rows, inner, cols, no_terms, tile_rows, tile_cols, threads,
            scratch_size, narrow)


def _matmul(a, b, out, accumulate, sum_batch, layer, bias=None, relu=False, rows_per_sample=0):
    """:func:`matmul` of two arrays."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) \
            or a.dtype != b.dtype or a.dtype not in _DTYPE_NAMES:
        raise TypeError(f"{layer}: expected two float32 or two float64 arrays, got "
                        f"{getattr(a, 'dtype', type(a).__name__)} and "
                        f"{getattr(b, 'dtype', type(b).__name__)}")
    dtype = a.dtype
    geometry = _geometry(a.shape, b.shape, bool(sum_batch), _config.get_num_threads(),
                         _DTYPE_NAMES[dtype], rows_per_sample)
    if geometry is None:
        raise ValueError(f"{layer}: cannot multiply shapes {a.shape} and {b.shape}")
    (shape, out3_shape, rows, inner, cols, no_terms, tile_rows, tile_cols, threads,
     scratch_size, narrow) = geometry
    if out is None and not accumulate:  # (the usual case, without _output's calls)
        out = _memory.empty(shape, dtype)
    else:
        out = _output(layer, out, shape, dtype, accumulate, a, b)
    if threads == 0:  # nothing for the kernel to do (see _geometry)
        _nothing_to_multiply(out, no_terms, accumulate)
        return out
    if inner == 1 and a.ndim == 2 and b.ndim == 2 and not accumulate and bias is None \
            and not relu and rows > _kernel.DOT_ROWS:  # a column times a row: no packing
        _kernel.outer(a[:, 0], np.ascontiguousarray(b[0]), out,
                      _config.threads_for(rows * cols))
        return out
    a3 = a[None] if a.ndim == 2 else a  # a 2-D operand as a batch of one (a view)
    b3 = b[None] if b.ndim == 2 else b
    if rows <= _kernel.DOT_ROWS and a3.strides[2] != a3.itemsize and inner > 1:
        a3 = np.ascontiguousarray(a3)  # the kernel's dot products read A's rows in place
    if bias is not None and not (isinstance(bias, np.ndarray) and bias.shape == (cols,)
                                 and bias.dtype == dtype and bias.flags.c_contiguous):
        raise ValueError(f"{layer}: bias must be a contiguous ({cols},) array of the operands' "
                         f"dtype {dtype}")
    _kernel.gemm(a3, b3, out.reshape(out3_shape), accumulate, sum_batch, tile_rows, tile_cols,
                 _memory.empty((threads, scratch_size), dtype), threads, narrow, bias, relu)
    return out
