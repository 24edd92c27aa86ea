"""A pool of large arrays that layers reuse for their outputs once nobody refers to them.

Allocating a fresh large array costs page faults on first touch (~7 ms per 32 MiB measured on
our 2-core machine), a large part of a memory-bound kernel such as BatchNorm. Layers therefore
take their outputs (BatchNorm's y and dx, ReLU's y and dx) from :func:`empty`, which hands
back an array of the same shape and dtype that was allocated earlier and is now unreferenced.
"Unreferenced" is CPython's reference count: an array the user kept, a view of it, or a
``torch.from_numpy`` of it keeps a reference, so it is never handed out again while in use.
Because arrays are shared between layers, the pool holds about what one training step needs at
its peak, not one copy per layer.
"""
import sys

import numpy as np

__all__ = ["empty", "output", "clear", "pooled_bytes"]

MIN_BYTES = 1 << 16  # smaller arrays come from NumPy's allocator, which is fast for them
MAX_PER_KEY = 16     # at most this many arrays of one shape and dtype are kept

_pool = {}


def _free_refcount():
    """The reference count :func:`empty` sees for an array only the pool refers to."""
    arrays = [np.empty(1)]
    for array in arrays:
        return sys.getrefcount(array)


_FREE = _free_refcount()


def empty(shape, dtype):
    """An uninitialized C-contiguous array of ``shape`` and ``dtype``, reused when possible.

    Args:
        shape (tuple of int): the array's shape.
        dtype: a NumPy dtype.
    Returns:
        np.ndarray: not referenced by anything but the pool and the caller.
    """
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) * dtype.itemsize < MIN_BYTES:
        return np.empty(shape, dtype)
    arrays = _pool.setdefault((shape, dtype.str), [])
    for array in arrays:
        if sys.getrefcount(array) == _FREE:
            return array
    array = np.empty(shape, dtype)
    if len(arrays) < MAX_PER_KEY:
        arrays.append(array)
    return array


def output(layer, array, shape, dtype, name="out"):
    """A caller's ``out`` array checked for ``shape``/``dtype``, or one from the pool if None.

    Raises:
        ValueError: ``array`` is not a writable C-contiguous array of that shape and dtype
            (the message names ``layer`` and ``name``).
    """
    if array is None:
        return empty(shape, dtype)
    if not (isinstance(array, np.ndarray) and array.shape == tuple(shape)
            and array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable):
        got = (f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray)
               else type(array).__name__)
        raise ValueError(f"{layer}: expected {name} to be a writable C-contiguous "
                         f"{np.dtype(dtype)} array of shape {tuple(shape)}, got {got}")
    return array


def clear():
    """Forget every pooled array (their memory is freed once nothing else refers to them)."""
    _pool.clear()


def pooled_bytes():
    """Bytes held by the pool, in use or not."""
    return sum(a.nbytes for arrays in _pool.values() for a in arrays)
