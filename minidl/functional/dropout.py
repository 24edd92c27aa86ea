"""Inverted dropout as a stateless forward/backward pair.

Dropout (Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov 2014, "Dropout: A Simple Way
to Prevent Neural Networks from Overfitting", JMLR 15, section 4: ``r ~ Bernoulli(1 - p)``,
``y = r * x``) in the "inverted" form of ``torch.nn.functional.dropout``: in training each
element is kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``, so the expected
output is the input and evaluation needs no rescaling::

    u ~ U[0, 1) elementwise (rng.random in x's dtype),   keep = u >= p
    out = x * keep / (1 - p),   dx = dout * keep / (1 - p)      (0 <= p < 1)
    out = x * 0,                dx = dout * 0                   (p = 1, as PyTorch)

In evaluation (``training=False``) and for ``p = 0`` the input is returned as it is (the same
array, as PyTorch returns its input), and the backward pass returns ``dout``.

The mask is elementwise NumPy on both backends (no kernel: one comparison and one product per
element). Both backends draw the same uniform numbers from ``rng``, so a seeded model drops the
same elements on either; under ``with minidl.backend("reference"):`` the validated arguments go
to :mod:`minidl.reference.functional.dropout` (the ``if`` statements marked "reference
backend").
"""
import numbers
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .. import _memory
from .._backend import get_backend
from .._checks import check_cache_array, check_float_array, check_grad
from .._random import get_rng
from ..reference.functional import dropout as reference

__all__ = ["DropoutCache", "dropout_forward", "dropout_backward", "dropout_probability"]


class DropoutCache(NamedTuple):
    """What :func:`dropout_backward` needs.

    Attributes:
        mask (np.ndarray or None): ``keep / (1 - p)`` (zeros for ``p = 1``) in x's dtype and
            shape; None when the forward pass was the identity (evaluation or ``p = 0``).
        out_shape (tuple): the shape of the input, the output and ``dout``.
        dtype (np.dtype): their dtype.
    """

    mask: Optional[np.ndarray]
    out_shape: Tuple[int, ...]
    dtype: np.dtype


def dropout_probability(p, owner):
    """``p`` as a float, or raise naming ``owner`` unless it is a real number in [0, 1].

    Raises:
        ValueError: not a real number (bools are refused) or outside [0, 1].
    """
    if (isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real)
            or not 0.0 <= float(p) <= 1.0):
        raise ValueError(f"{owner}: p must be a probability in [0, 1] (the chance of zeroing "
                         f"an element), got {p!r}")
    return float(p)


def _check_generator(rng, owner):
    if rng is None:
        return get_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{owner}: rng must be a numpy.random.Generator or None (minidl's "
                        f"global generator), got {type(rng).__name__}")
    return rng


def dropout_forward(x, p=0.5, training=True, rng=None, layer="dropout"):
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Args:
        x (np.ndarray): any shape, float32 or float64.
        p (float): probability of zeroing an element, in [0, 1]. Default 0.5.
        training (bool): apply dropout (default); False returns ``x`` itself.
        rng (np.random.Generator or None): where the uniform numbers come from; None uses
            minidl's global generator (``minidl.manual_seed``).
        layer (str): name used in error messages.
    Returns:
        (out, cache): ``out`` like ``x`` (``x`` itself when ``training`` is False or ``p`` is
        0); ``cache`` a :class:`DropoutCache` (under the reference backend the one of
        :mod:`minidl.reference.functional.dropout`).
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray; ``rng`` is not a Generator;
            ``training`` not a bool.
        ValueError: ``p`` is not a number in [0, 1].
    """
    check_float_array(layer, x)
    p = dropout_probability(p, layer)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{layer}: training must be True or False, got {training!r}")
    rng = _check_generator(rng, layer)
    if get_backend() == "reference":  # reference backend: Bernoulli mask by its definition
        return reference.dropout_forward(x, p, training, rng, layer)
    if not training or p == 0.0:
        return x, DropoutCache(None, x.shape, x.dtype)
    uniform = rng.random(x.shape, dtype=x.dtype)
    mask = _memory.empty(x.shape, x.dtype)
    if p == 1.0:
        mask.fill(0)
    else:
        np.greater_equal(uniform, p, out=mask)  # 1 where kept, 0 where dropped
        mask *= x.dtype.type(1.0 / (1.0 - p))
    out = np.multiply(x, mask, out=_memory.empty(x.shape, x.dtype))
    return out, DropoutCache(mask, x.shape, x.dtype)


def _check_cache(layer, cache):
    """Raise unless ``cache`` is a Dropout cache whose mask (if any) has the output's shape and
    dtype (bool for the reference backend's): a cache is a tuple the caller can change, and a
    mask of another shape would broadcast silently in the product."""
    if not isinstance(cache, (DropoutCache, reference.DropoutCache)):
        raise TypeError(f"{layer}: expected the cache returned by dropout_forward, got "
                        f"{type(cache).__name__}")
    try:
        shape, dtype = tuple(cache.out_shape), np.dtype(cache.dtype)
    except TypeError:
        shape, dtype = None, None
    if shape is None or dtype not in (np.float32, np.float64):
        raise ValueError(f"{layer}: the cache's out_shape or dtype is not what dropout_forward "
                         f"made; pass the cache it returned, unchanged")
    if isinstance(cache, reference.DropoutCache):
        dropout_probability(cache.p, f"{layer}: the cache's p")
        mask, mask_dtype = cache.keep, np.bool_
    else:
        mask, mask_dtype = cache.mask, dtype
    if mask is not None:
        check_cache_array(layer, "dropout_forward", "mask", mask, shape, mask_dtype,
                          contiguous=False)


def dropout_backward(dout, cache, layer="dropout"):
    """Gradient of :func:`dropout_forward`: ``dout`` times the same mask.

    Args:
        dout (np.ndarray): d loss / d out, the shape and dtype of the forward output.
        cache (DropoutCache): the second value returned by :func:`dropout_forward`.
        layer (str): name used in error messages.
    Returns:
        np.ndarray: ``dx`` like ``dout`` (``dout`` itself when the forward pass was the
        identity).
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output; a cache that is not
            the one the forward returned (another type, or a mask of another shape or dtype).
    """
    _check_cache(layer, cache)
    check_grad(layer, dout, cache.out_shape, cache.dtype)
    if isinstance(cache, reference.DropoutCache):  # reference backend: made by its forward
        return reference.dropout_backward(dout, cache, layer)
    if cache.mask is None:
        return dout
    return np.multiply(dout, cache.mask, out=_memory.empty(cache.out_shape, cache.dtype))
