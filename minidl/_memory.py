"""Where minidl's arrays get their memory: a caching allocator, bounded and explicit.

Allocating a fresh large array costs a page fault per 4 KiB page when it is first written
(about 7 ms per 32 MiB on our 2-core machine), a large part of a memory-bound layer such as
BatchNorm. So the arrays minidl allocates on purpose -- layer outputs, gradients, workspaces,
through :func:`empty`, :func:`zeros` and :func:`output` -- take their data from a caching
allocator installed as a NumPy memory handler (NEP 49, like PyTorch's caching allocator for
CUDA): when NumPy frees such an array (its last reference is gone), its block is kept, and the
next allocation of the same size (rounded up to 4 KiB) gets it back, already mapped. The rules:

* Only minidl's own allocations use it; arrays you create with NumPy keep NumPy's allocator
  (NumPy's ``get_handler_name(a)``, in ``numpy._core.multiarray`` since NumPy 2, says
  ``"minidl_caching"`` for ours). An array's block is reused only after NumPy freed the array,
  so nothing you hold is ever overwritten.
* Blocks of at least ``MIN_CACHED_BYTES`` (64 KiB) are cached, at most
  :func:`get_cache_limit` bytes of them (default ``DEFAULT_CACHE_LIMIT`` = 512 MiB, or
  ``$MINIDL_CACHE_LIMIT`` read at import, e.g. ``1G``, ``256M`` or a number of bytes; ``0``
  turns caching off); above the limit the least recently freed go back to the system.
* A cached block that the next ``IDLE_ALLOCATIONS`` (1024) allocations of at least 64 KiB did
  not take goes back to the system: the blocks of an evaluation at batch 1000 are released about 50 steps into
  training the MNIST CNN at batch 64.
* :func:`empty_cache` gives every cached block back now (like ``torch.cuda.empty_cache``);
  :func:`memory_stats` reports the counters (:func:`reset_peak_memory_stats` restarts the peak).

Every block is aligned to 64 bytes. The allocator is C (``minidl/_kernels/_memory.h``) and
thread-safe.
"""
import os
import re

import numpy as np

from ._kernels import _memory as _kernel

__all__ = [
    "empty", "zeros", "output", "empty_cache", "memory_stats", "reset_peak_memory_stats",
    "set_cache_limit", "get_cache_limit", "DEFAULT_CACHE_LIMIT", "IDLE_ALLOCATIONS", "MIN_CACHED_BYTES",
    "HANDLER_NAME",
]

DEFAULT_CACHE_LIMIT = 512 << 20
# A cached block not taken during this many later cacheable allocations is released. A training
# step makes far fewer (measured: 20 for the MNIST CNN + BN at batch 64, 47 for the CIFAR CNN +
# BN at batch 128), so a block used once per step stays, and the blocks of another batch size go
# about 50 MNIST steps after the switch.
IDLE_ALLOCATIONS = 1024
MIN_CACHED_BYTES = _kernel.MIN_CACHED_BYTES
ALIGNMENT = _kernel.ALIGNMENT
HANDLER_NAME = _kernel.HANDLER_NAME

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _parse_bytes(text, what):
    """``"512M"`` -> 536870912: a number of bytes, or one with K, M or G (powers of 1024,
    optionally followed by B or iB)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:([KMG])(?:I?B)?)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{what}: expected a number of bytes such as 536870912, 512M or 1G, "
                         f"got {text!r}")
    return int(match.group(1)) * _SUFFIXES[(match.group(2) or "").upper()]


# empty(shape, dtype) and zeros(shape, dtype): the kernel module's functions themselves (their
# docstrings say what they return), not Python wrappers around them: every layer output and
# workspace is allocated here, and a wrapper's call was a twentieth of a Dense layer's Python
# time at batch 1.
empty = _kernel.empty
zeros = _kernel.zeros


def output(layer, array, shape, dtype, name="out"):
    """A caller's ``out`` array checked for ``shape`` and ``dtype``, or a new one if None.

    Args:
        layer (str): the function or layer, for the error message.
        array (np.ndarray or None): the caller's array.
        shape (tuple of int), dtype: what it must be.
        name (str): the argument's name, for the error message.
    Returns:
        np.ndarray: ``array`` itself, or a new :func:`empty` array.
    Raises:
        ValueError: ``array`` is not a writable C-contiguous array of that shape and dtype
            (the message names ``layer`` and ``name``).
    """
    if array is None:
        return empty(shape, dtype)
    if not (isinstance(array, np.ndarray) and array.shape == tuple(shape)
            and array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable):
        got = type(array).__name__
        if isinstance(array, np.ndarray):
            flaws = [flaw for flaw, bad in (("read-only", not array.flags.writeable),
                                            ("non-contiguous", not array.flags.c_contiguous))
                     if bad]
            got = " ".join(flaws + [f"{array.dtype} {array.shape}"])
        raise ValueError(f"{layer}: expected {name} to be a writable C-contiguous "
                         f"{np.dtype(dtype)} array of shape {tuple(shape)}, got {got}")
    return array


def empty_cache():
    """Return every cached (free) block to the system, like ``torch.cuda.empty_cache()``.

    Arrays still in use are not affected; later allocations start filling the cache again.
    """
    _kernel.empty_cache()


def memory_stats():
    """Counters of minidl's caching allocator.

    Returns:
        dict: ``allocated_bytes`` (data of live arrays minidl allocated), ``cached_bytes`` and
        ``cached_blocks`` (free blocks kept for reuse), ``peak_bytes`` (the most held at once,
        allocated + cached), ``hits`` / ``misses`` (allocations of at least 64 KiB served
        from the cache / by the system), ``releases`` (cached blocks returned to the system:
        over the limit, idle, or by :func:`empty_cache`) and ``cache_limit``. Sizes are in
        bytes, counted by block (a cached block's size is rounded up to 4 KiB).
    """
    return _kernel.stats()


def reset_peak_memory_stats():
    """Restart ``memory_stats()["peak_bytes"]`` from what the allocator holds now."""
    _kernel.reset_peak()


def set_cache_limit(nbytes):
    """Keep at most ``nbytes`` bytes of free blocks for reuse (0 turns caching off).

    Cached blocks above the new limit (the least recently freed first) are released now.

    Args:
        nbytes (int): >= 0. Default ``$MINIDL_CACHE_LIMIT`` or 512 MiB.
    Raises:
        ValueError: ``nbytes`` is not an integer >= 0.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        raise ValueError(f"set_cache_limit: expected a number of bytes >= 0, got {nbytes!r}")
    _kernel.set_limit(int(nbytes))


def get_cache_limit():
    """The byte limit on cached free blocks (see :func:`set_cache_limit`)."""
    return _kernel.stats()["cache_limit"]


def _configure():
    """Apply the default limits (and ``$MINIDL_CACHE_LIMIT``); called once at import."""
    env = os.environ.get("MINIDL_CACHE_LIMIT")
    limit = DEFAULT_CACHE_LIMIT if not env else _parse_bytes(env, "MINIDL_CACHE_LIMIT")
    _kernel.set_idle_allocations(IDLE_ALLOCATIONS)
    _kernel.set_limit(limit)


_configure()
