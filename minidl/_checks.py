"""Input validation shared by the functional layer, the layers, the optimizers and the trainer.

The Cython kernels trust their inputs (no bounds checks), so everything that reaches them passes
through these checks first. Errors name the layer, what was expected and what was received.

Besides shapes and dtypes this module holds the rules that keep a kernel from touching memory it
should not (see README, "Errors and guarantees"):

* :func:`check_no_overlap`: an ``out=``/``argmax=``/``workspace=`` array must not share memory
  with any input (NumPy's exact ``np.shares_memory`` after the cheap bounds test
  ``np.may_share_memory``; a case too hard to decide exactly counts as overlapping).
* :func:`check_allocation`: an array minidl is about to allocate must fit in the machine's
  physical memory, so a giant-but-valid shape fails with a MemoryError naming the layer before
  anything is allocated (and every size a kernel computes stays far below ``2**63``).
* :data:`MAX_SIZE`: kernel sizes, strides and paddings are at most ``2**31 - 1``, so no index
  product in a kernel (all ``Py_ssize_t``) can overflow.
* :class:`Fingerprint`: a cheap check that an array a layer keeps for its backward pass was not
  modified in place in between.
"""
import math
import os
from numbers import Integral, Real

import numpy as np

from ._kernels._memory import data_address

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: The largest kernel size, stride or padding accepted (any larger one is refused).
MAX_SIZE = 2 ** 31 - 1

# np.shares_memory's exact test solves a small integer program; beyond this much work (never
# reached by C-contiguous outputs and ordinary views) the arrays count as overlapping.
_OVERLAP_WORK = 1 << 16


def _describe(layout, sizes):
    parts = [str(sizes[d]) if sizes and d in sizes else d for d in layout]
    return "(" + ", ".join(parts) + ")"


def _dtype_hint(dtype):
    """What to do about an array of an unsupported ``dtype``, for an error message."""
    if dtype.kind == "f" and dtype.itemsize in (4, 8) and not dtype.isnative:
        return (f" (non-native byte order: convert it with "
                f".astype(np.float{dtype.itemsize * 8}))")
    if dtype.kind in "biuf":
        return " (convert it with .astype(np.float32))"
    return ""


def check_float_array(layer, x, arg="input"):
    """Raise TypeError unless ``x`` is a float32/float64 NumPy array; return it.

    Subclasses that are arrays of the same memory (``np.memmap``) are accepted; masked arrays
    (whose masked entries a kernel would read as data) and ``np.matrix`` (whose operators differ)
    are not.
    """
    if type(x) is np.ndarray:  # the common case: no subclass to look at
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{layer}: expected {arg} dtype float32 or float64, got "
                            f"{x.dtype}{_dtype_hint(x.dtype)}")
        return x
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: expected {arg} to be a numpy.ndarray, got {type(x).__name__}")
    if isinstance(x, (np.ma.MaskedArray, np.matrix)):
        raise TypeError(f"{layer}: expected {arg} to be a plain numpy.ndarray, got a "
                        f"{type(x).__module__}.{type(x).__name__} (masked entries or matrix "
                        f"semantics are not supported: pass np.asarray(...) or .filled(...))")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: expected {arg} dtype float32 or float64, got "
                        f"{x.dtype}{_dtype_hint(x.dtype)}")
    return x


def check_input(layer, x, layouts, sizes=None, arg="input", empty_batch=False):
    """Check dtype, rank and named sizes of ``x``.

    Args:
        layer (str): name used in the error message, e.g. ``"Conv2D"``.
        x (np.ndarray): the array to check.
        layouts (str or tuple of str): allowed layouts, one letter per axis, e.g. ``"NCHW"`` or
            ``("NC", "NCHW")``.
        sizes (dict, optional): required sizes by letter, e.g. ``{"C": 3}``.
        arg (str): what ``x`` is, for the message.
        empty_batch (bool): accept a first axis of size 0 (a SyncBatchNorm rank without samples).
    Returns:
        str: the layout that matched.
    Raises:
        TypeError: not a float32/float64 ndarray.
        ValueError: wrong rank, a wrong named size, or a zero-sized axis.
    """
    check_float_array(layer, x, arg)
    if isinstance(layouts, str):
        layouts = (layouts,)
    for layout in layouts:
        if x.ndim == len(layout):
            break
    else:
        raise ValueError(f"{layer}: expected {arg} of shape {_expected(layouts, sizes)}, got "
                         f"shape {x.shape}")
    if sizes:
        for axis, size in zip(layout, x.shape):
            if axis in sizes and size != sizes[axis]:
                raise ValueError(f"{layer}: expected {arg} of shape "
                                 f"{_expected(layouts, sizes)}, got shape {x.shape}")
    if 0 in (x.shape[1:] if empty_batch else x.shape):
        raise ValueError(f"{layer}: expected {arg} of shape {_expected(layouts, sizes)} with no "
                         f"empty axis, got shape {x.shape}")
    return layout


def _expected(layouts, sizes):
    """``"(N, 3, H, W)"`` or ``"(N, C) or (N, C, L)"``: the shapes an error message expects
    (built only when there is an error: checks run on every layer call)."""
    return " or ".join(_describe(l, sizes) for l in layouts)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(value, name, owner):
    """Return ``value`` as an int, or raise ValueError naming ``owner`` unless it is an int >= 1."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def pair(value, name, layer, minimum=0):
    """Turn an int or a pair of ints into a tuple of two Python ints in
    ``[minimum, MAX_SIZE]`` (bools, floats and NaN are refused).

    Raises:
        ValueError: naming ``layer``, ``name`` and the value.
    """
    if type(value) is tuple and len(value) == 2:  # the common case, already normalized
        a, b = value
        if (type(a) is int and type(b) is int and minimum <= a <= MAX_SIZE
                and minimum <= b <= MAX_SIZE):
            return value
    elif type(value) is int and minimum <= value <= MAX_SIZE:
        return value, value
    given = value
    if _is_int(value):
        value = (value, value)
    try:
        items = tuple(value)
        ok = len(items) == 2 and all(_is_int(v) for v in items)
    except TypeError:
        ok = False
    if ok:
        a, b = int(items[0]), int(items[1])
        ok = minimum <= a <= MAX_SIZE and minimum <= b <= MAX_SIZE
    if not ok:
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints from {minimum} to "
                         f"{MAX_SIZE}, got {given!r}")
    return a, b


def check_pool_padding(padding, kernel_size, layer):
    """Pooling padding as PyTorch allows it: at most half the window on each axis.

    Args:
        padding, kernel_size: pairs of ints (from :func:`pair`).
    Raises:
        ValueError: ``padding[i] > kernel_size[i] / 2`` (a window could then lie entirely in the
            padding), with PyTorch's rule in the message.
    """
    for pad, size in zip(padding, kernel_size):
        if 2 * pad > size:
            raise ValueError(f"{layer}: padding must be at most half of kernel_size (as in "
                             f"PyTorch), got padding {tuple(padding)} for kernel_size "
                             f"{tuple(kernel_size)}")
    return padding


def check_bool(owner, name, value):
    """Return ``value`` as a bool; raise TypeError unless it is a bool (or NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: expected {name} to be True or False, got {value!r}")
    return bool(value)


def check_number(where, name, value, low=0.0, high=None, high_inclusive=True):
    """Return ``value`` as a Python float in ``[low, high]`` (or ``[low, high)``), else raise.

    Args:
        where (str): who is asking, e.g. ``"SGD"``; starts the error message.
        name (str): the setting, e.g. ``"momentum"``.
        value: a real number (a Python or NumPy scalar, or a 0-d array); not a bool.
        low, high (float): the accepted range (``high=None``: no upper bound).
        high_inclusive (bool): whether ``high`` itself is accepted.
    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is NaN, infinite or out of range.
    """
    if type(value) is float or type(value) is int:  # the common case (a bool's type is bool)
        number = float(value)
        if math.isfinite(number) and low <= number and (
                high is None or number < high or (high_inclusive and number == high)):
            return number
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a 0-d array, e.g. read back from an .npz file
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(
            f"{where}: expected {name} to be a real number, got {value!r} ({type(value).__name__})"
        )
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where}: expected {name} to be a finite number, got {value!r}")
    if high is None:
        ok = number >= low
        expected = f"{name} >= {low:g}"
    elif high_inclusive:
        ok = low <= number <= high
        expected = f"{name} in [{low:g}, {high:g}]"
    else:
        ok = low <= number < high
        expected = f"{name} in [{low:g}, {high:g})"
    if not ok:
        raise ValueError(f"{where}: expected {expected}, got {value!r}")
    return number


def check_eps(owner, eps):
    """Return ``eps`` (a normalization's variance offset) as a float > 0.

    Raises:
        TypeError: ``eps`` is not a real number.
        ValueError: ``eps`` is not finite, or not > 0.
    """
    eps = check_number(owner, "eps", eps, low=-math.inf)
    if not eps > 0:
        raise ValueError(f"{owner}: eps must be > 0, got {eps!r}")
    return eps


def check_integer(where, name, value, low):
    """Return ``value`` as a Python int ``>= low``: an integer, or a float/0-d array holding one."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        ok = False
    elif isinstance(value, Integral):
        ok = True
    else:
        ok = isinstance(value, Real) and math.isfinite(value) and float(value).is_integer()
    if not ok or int(value) < low:
        raise ValueError(f"{where}: expected {name} to be an integer >= {low}, got {value!r}")
    return int(value)


def float_dtype(owner, dtype):
    """``dtype`` as ``np.dtype(float32)`` or ``np.dtype(float64)``; TypeError naming ``owner``
    for anything else (e.g. float16, int, or a string NumPy does not know)."""
    try:
        resolved = np.dtype(dtype) if dtype is not None else None
    except TypeError:
        resolved = None
    if resolved is None or not any(resolved == d for d in FLOAT_DTYPES):
        name = getattr(dtype, "__name__", None) or repr(dtype)
        raise TypeError(f"{owner}: dtype must be float32 or float64, got {name}")
    return resolved


# ------------------------------------------------------------------------- memory and aliasing
def overlaps(a, b):
    """Whether arrays ``a`` and ``b`` share memory.

    The bounds test ``np.may_share_memory`` first (cheap; enough when the arrays' extents are
    apart), then NumPy's exact ``np.shares_memory`` with bounded work: interleaved views such
    as ``x[:, ::2]`` and ``x[:, 1::2]`` do not overlap. A case too hard to decide within the
    bound (never a C-contiguous array against an ordinary view) counts as overlapping.
    """
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=_OVERLAP_WORK))
    except np.exceptions.TooHardError:
        return True


def check_no_overlap(layer, name, array, **others):
    """Raise ValueError if ``array`` (the argument ``name``) shares memory with any array in
    ``others`` (keyword: the other argument's name; None values are skipped).

    A kernel writing into an array it also reads from would read values it has already
    overwritten, so every ``out``, ``argmax`` and ``workspace`` must be memory of its own.
    """
    for other_name, other in others.items():
        if isinstance(other, np.ndarray) and overlaps(array, other):
            raise ValueError(f"{layer}: {name} must not overlap {other_name} (they share "
                             f"memory); pass a separate array, or none to get a new one")


def _physical_memory():
    """Bytes of physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows, or the names are unknown
        return None


_MEMORY = {"physical": _physical_memory()}


def _format_bytes(nbytes):
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.4g} {unit}"
    return f"{nbytes} bytes"


def check_allocation(layer, what, shape, dtype):
    """Raise MemoryError, before anything is allocated, if an array of ``shape`` and ``dtype``
    would not fit in this machine's physical memory (or its byte count in ``Py_ssize_t``).

    The sizes are multiplied as Python ints, so a giant shape cannot overflow here; every array
    that passes is far smaller than ``2**63`` bytes, which bounds the index arithmetic of the
    kernels. An allocation that passes can still fail later (NumPy then raises MemoryError) if
    other programs hold the memory.

    Args:
        layer (str): for the message. what (str): the array, e.g. ``"output"``.
        shape (tuple of int), dtype: the array to be allocated.
    """
    itemsize = dtype.itemsize if isinstance(dtype, np.dtype) else np.dtype(dtype).itemsize
    nbytes = math.prod(map(int, shape)) * itemsize
    limit = _MEMORY["physical"] or (2 ** 63 - 1)
    if nbytes > limit:
        machine = (f"this machine's {_format_bytes(limit)} of memory"
                   if _MEMORY["physical"] else "what a process can address")
        raise MemoryError(f"{layer}: the {what} of shape {tuple(shape)} ({np.dtype(dtype)}) "
                          f"would need {_format_bytes(nbytes)}, more than {machine}")


# ------------------------------------------------------------------ arrays kept for backward
def _sample_positions(size):
    """Up to ``Fingerprint.SAMPLES`` flat positions in ``[0, size)``, the same for every array
    of that size: all of them for a small array, else spread pseudo-randomly (a modified
    channel, image or row of a large array is hit as surely as a modified whole)."""
    positions = _POSITIONS.get(size)
    if positions is None:
        if size <= Fingerprint.SAMPLES:
            positions = np.arange(size)
        else:
            positions = np.sort(np.random.default_rng(size).choice(
                size, Fingerprint.SAMPLES, replace=False))
        if len(_POSITIONS) >= 256:
            _POSITIONS.clear()
        _POSITIONS[size] = positions
    return positions


_POSITIONS = {}


class Fingerprint:
    """A cheap record of an array: where its data is, its shape and strides, and the bytes of
    ``SAMPLES`` of its elements (all of them when it has no more).

    A layer keeps one for each array its backward pass reads through a reference (its input,
    output or weight, when the cache holds a view of it rather than a copy), and checks it in
    backward: ``x *= 2``, ``x[...] = 0``, ``np.copyto(x, y)``, an optimizer step or a change of
    a sampled element between forward and backward is then a RuntimeError, as it is in PyTorch.
    A change of a few elements that are not sampled is not detected (the chance of missing a
    change to a fraction ``f`` of a large array is ``(1 - f)**512``: 1.8e-4 for one of 64
    images, 1e-7 for one of 32 channels). Cost: about 4 microseconds per array and pass.
    """

    SAMPLES = 512
    __slots__ = ("array", "layout", "sample")

    def __init__(self, array):
        self.array = array
        self.layout = self._layout(array)
        self.sample = self._sample(array)

    @staticmethod
    def _layout(array):
        return data_address(array), array.shape, array.strides

    @staticmethod
    def _sample(array):
        if array.size <= Fingerprint.SAMPLES:  # every element, in C order
            return array.tobytes()
        positions = _sample_positions(array.size)
        if array.flags.c_contiguous:
            values = array.reshape(-1)[positions]
        else:
            values = array[np.unravel_index(positions, array.shape)]
        return values.tobytes()

    def changed(self):
        """Whether the array moved, changed shape or strides, or a sampled element changed."""
        array = self.array
        return self._layout(array) != self.layout or self._sample(array) != self.sample


def watch_kept(cache, **arrays):
    """Fingerprints of the ``arrays`` (keyword: what it is, e.g. ``input``) that ``cache`` holds
    a view of, as ``((name, Fingerprint), ...)``; an array the cache copied is left out (changing
    it cannot change the gradient). ``cache`` is a tuple (e.g. a NamedTuple) of the forward's
    results; None values are skipped."""
    kept = [item for item in cache if isinstance(item, np.ndarray)] if isinstance(
        cache, tuple) else []
    if not kept:  # e.g. nothing kept under no_grad
        return ()
    return tuple((name, Fingerprint(array)) for name, array in arrays.items()
                 if isinstance(array, np.ndarray)
                 and any(np.may_share_memory(array, item) for item in kept))


def check_kept(layer, watched):
    """Raise RuntimeError naming ``layer`` if an array recorded by :func:`watch_kept` changed."""
    for name, fingerprint in watched:
        if fingerprint.changed():
            raise RuntimeError(
                f"{layer}: the {name} of the last forward pass was modified in place before "
                f"backward, which needs its old values (the gradients would be wrong). Run "
                f"forward again after modifying it, or modify a copy (PyTorch raises here too: "
                f"'a variable needed for gradient computation has been modified by an inplace "
                f"operation')")


def check_cache_array(layer, op, field, array, shape, dtype, contiguous=True):
    """Raise ValueError unless a cache's ``field`` is an array of ``shape`` and ``dtype`` (and
    C-contiguous): a cache is a plain tuple the caller can change, and its arrays reach kernels
    that trust their shapes.

    Args:
        layer (str): for the message. op (str): the forward function that makes the cache.
    """
    ok = (isinstance(array, np.ndarray) and array.shape == tuple(shape)
          and array.dtype == dtype and (array.flags.c_contiguous or not contiguous))
    if not ok:
        got = (f"{'' if array.flags.c_contiguous else 'non-contiguous '}{array.dtype} array of "
               f"shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__)
        layout = "C-contiguous " if contiguous else ""
        raise ValueError(f"{layer}: the cache's {field} is not what {op} made (expected a "
                         f"{layout}{np.dtype(dtype)} array of shape {tuple(shape)}, got {got}); "
                         f"pass the cache {op} returned, unchanged")


def check_grad(layer, dout, shape, dtype, what="gradient"):
    """Raise unless ``dout`` is an ndarray of the forward output's ``shape`` and ``dtype``.

    Raises:
        TypeError: not a float ndarray, or another dtype.
        ValueError: another shape.
    """
    check_float_array(layer, dout, what)
    if dout.shape != tuple(shape):
        raise ValueError(
            f"{layer}: expected {what} of shape {tuple(shape)} (the output's), got shape {dout.shape}"
        )
    if dout.dtype != dtype:
        raise TypeError(f"{layer}: expected {what} dtype {np.dtype(dtype)} (the output's), got {dout.dtype}")


def shape_tuple(value, name, owner):
    """``value`` (an int or a non-empty sequence of ints >= 1) as a tuple of Python ints.

    Raises:
        ValueError: naming ``owner`` and ``name`` otherwise (bools, zeros, empty tuples,
            strings included).
    """
    shape = (value,) if isinstance(value, (int, np.integer)) else value
    try:
        shape = tuple(shape)
        ok = len(shape) > 0 and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                    and d >= 1 for d in shape)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{owner}: {name} must be an int or a non-empty tuple of ints >= 1, "
                         f"got {value!r}")
    return tuple(int(d) for d in shape)
