# distutils: define_macros=NPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION NPY_TARGET_VERSION=NPY_1_22_API_VERSION
"""minidl's caching allocator, installed as a NumPy memory handler (NEP 49) around minidl's own
allocations only.

The allocator itself (blocks, the cache, its limits and counters) is C, in ``_memory.h``; this
module creates the handler capsule and exposes it to :mod:`minidl._memory`, which documents the
rules. :func:`empty` and :func:`zeros` install the handler for one ``np.empty``/``np.zeros``
call and put the previous one back (NumPy keeps the current handler in a context variable, so
other threads and the user's own arrays are not affected); the array keeps a reference to the
handler and gives its data back through it when NumPy frees it.
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport uint64_t

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "_memory.h":
    ctypedef struct minidl_cache:
        size_t limit
        uint64_t idle_allocations
        size_t cached_bytes, cached_blocks, allocated_bytes, peak_bytes
        uint64_t hits, misses, releases
    minidl_cache minidl_cache_state
    cnp.PyDataMem_Handler minidl_handler
    size_t MINIDL_CACHE_ALIGN, MINIDL_CACHE_PAGE, MINIDL_CACHE_MIN_BYTES
    int minidl_cache_init(size_t limit, uint64_t idle_allocations) except -1
    void minidl_lock(minidl_cache *cache)
    void minidl_unlock(minidl_cache *cache)
    void minidl_cache_empty(minidl_cache *cache)
    void minidl_cache_set_limit(minidl_cache *cache, size_t limit)

ALIGNMENT = MINIDL_CACHE_ALIGN
PAGE_BYTES = MINIDL_CACHE_PAGE
MIN_CACHED_BYTES = MINIDL_CACHE_MIN_BYTES
HANDLER_NAME = "minidl_caching"


# the lock; no caching (limit 0) until minidl._memory sets the limits
minidl_cache_init(0, 0)
cdef object _handler = PyCapsule_New(<void *>&minidl_handler, "mem_handler", NULL)


cdef object _allocate(function, shape, dtype):
    """``function(shape, dtype)`` with the handler installed, the previous one put back."""
    previous = cnp.PyDataMem_SetHandler(_handler)
    try:
        return function(shape, dtype)
    finally:
        cnp.PyDataMem_SetHandler(previous)


def empty(shape, dtype):
    """An uninitialized C-contiguous array whose data comes from minidl's caching allocator
    (``np.empty(shape, dtype)`` with the handler installed); ``minidl._memory.empty`` is this
    function.

    Args:
        shape (int or tuple of int): the array's shape.
        dtype: a NumPy dtype.
    Returns:
        np.ndarray: a new array (nothing else refers to it); its memory may be a block an
        earlier, freed array used.

    Preconditions: none beyond NumPy's (it refuses a shape whose byte size overflows, and a
    failed allocation is a MemoryError); minidl's callers check beforehand that the array fits
    in memory (``minidl._checks.check_allocation``).
    """
    return _allocate(np.empty, shape, dtype)


def zeros(shape, dtype):
    """Like :func:`empty`, filled with zeros (``np.zeros``); ``minidl._memory.zeros`` is this
    function."""
    return _allocate(np.zeros, shape, dtype)


def data_address(cnp.ndarray array not None):
    """The address of ``array``'s first element (``array.__array_interface__["data"][0]``
    without building that dict: a fingerprint reads it on every forward and backward pass)."""
    return <size_t>cnp.PyArray_DATA(array)


def stats():
    """A snapshot of the allocator's counters (see :func:`minidl.memory_stats`)."""
    minidl_lock(&minidl_cache_state)
    result = {
        "allocated_bytes": minidl_cache_state.allocated_bytes,
        "cached_bytes": minidl_cache_state.cached_bytes,
        "cached_blocks": minidl_cache_state.cached_blocks,
        "peak_bytes": minidl_cache_state.peak_bytes,
        "hits": minidl_cache_state.hits,
        "misses": minidl_cache_state.misses,
        "releases": minidl_cache_state.releases,
        "cache_limit": minidl_cache_state.limit,
    }
    minidl_unlock(&minidl_cache_state)
    return result


def reset_peak():
    """Start measuring ``peak_bytes`` again from what is held now."""
    minidl_lock(&minidl_cache_state)
    minidl_cache_state.peak_bytes = (minidl_cache_state.allocated_bytes
                                     + minidl_cache_state.cached_bytes)
    minidl_unlock(&minidl_cache_state)


def empty_cache():
    """Return every cached free block to the system."""
    minidl_cache_empty(&minidl_cache_state)


def set_limit(size_t limit):
    """Keep at most ``limit`` bytes of free blocks (the oldest above it are returned now).

    Preconditions (checked by ``minidl._memory.set_cache_limit``): an integer >= 0 (a negative
    one would not convert to ``size_t``: OverflowError).
    """
    minidl_cache_set_limit(&minidl_cache_state, limit)


def set_idle_allocations(uint64_t count):
    """Return a free block once ``count`` cacheable allocations went by without taking it.

    Preconditions: ``count >= 0`` (set once, by ``minidl._memory``, to ``IDLE_ALLOCATIONS``).
    """
    minidl_lock(&minidl_cache_state)
    minidl_cache_state.idle_allocations = count
    minidl_unlock(&minidl_cache_state)
