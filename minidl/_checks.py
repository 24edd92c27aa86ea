"""Input validation shared by the functional layer and the layers.

The Cython kernels trust their inputs (no bounds checks), so everything that reaches them passes
through these checks first. Errors name the layer, what was expected and what was received.
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(layout, sizes):
    parts = [str(sizes[d]) if sizes and d in sizes else d for d in layout]
    return "(" + ", ".join(parts) + ")"


def check_float_array(layer, x, arg="input"):
    """Raise TypeError unless ``x`` is a float32/float64 NumPy array; return it."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: expected {arg} to be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: expected {arg} dtype float32 or float64, got {x.dtype}")
    return x


def check_input(layer, x, layouts, sizes=None, arg="input"):
    """Check dtype, rank and named sizes of ``x``.

    Args:
        layer (str): name used in the error message, e.g. ``"Conv2D"``.
        x (np.ndarray): the array to check.
        layouts (str or tuple of str): allowed layouts, one letter per axis, e.g. ``"NCHW"`` or
            ``("NC", "NCHW")``.
        sizes (dict, optional): required sizes by letter, e.g. ``{"C": 3}``.
        arg (str): what ``x`` is, for the message.
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
    bad = sizes and any(d in sizes and x.shape[i] != sizes[d] for i, d in enumerate(layout))
    if bad:
        raise ValueError(f"{layer}: expected {arg} of shape {_expected(layouts, sizes)}, got "
                         f"shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{layer}: expected {arg} of shape {_expected(layouts, sizes)} with no "
                         f"empty axis, got shape {x.shape}")
    return layout


def _expected(layouts, sizes):
    """``"(N, 3, H, W)"`` or ``"(N, C) or (N, C, L)"``: the shapes an error message expects
    (built only when there is an error: checks run on every layer call)."""
    return " or ".join(_describe(l, sizes) for l in layouts)


def positive_int(value, name, owner):
    """Return ``value`` as an int, or raise ValueError naming ``owner`` unless it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def pair(value, name, layer, minimum=0):
    """Turn an int or a pair of ints into a tuple of two Python ints >= ``minimum``."""
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        a, b = (int(v) for v in value)
        ok = all(isinstance(v, (int, np.integer)) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok or a < minimum or b < minimum:
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return a, b


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
