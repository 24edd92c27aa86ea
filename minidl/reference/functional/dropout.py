"""Dropout by its definition: the readable, runnable twin of :mod:`minidl.functional.dropout`.

Srivastava et al. (2014), "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
JMLR 15, section 4: each unit is kept with probability ``1 - p`` -- ``r ~ Bernoulli(1 - p)``
-- and the network sees ``r * x``. PyTorch (and this package) use *inverted* dropout: the kept
units are divided by ``1 - p`` during training, so the expected value of every unit is
unchanged and evaluation uses the network as it is (the paper instead scales the weights by
``1 - p`` at test time, section 10)::

    r = (u >= p) with u ~ U[0, 1),    y = r * x / (1 - p),    dx = r * dout / (1 - p)

For ``p = 1`` every unit is dropped and ``y = 0 * x`` (PyTorch's rule: no division by zero).
In evaluation, or for ``p = 0``, ``y = x``.

Nothing here validates its inputs; :func:`minidl.functional.dropout_forward` does that first.
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ..._random import get_rng

__all__ = ["DropoutCache", "dropout_forward", "dropout_backward"]


class DropoutCache(NamedTuple):
    """What :func:`dropout_backward` needs.

    Attributes:
        keep (np.ndarray or None): the Bernoulli draws ``r`` (bool, x's shape); None when the
            forward pass was the identity.
        p (float): the dropout probability.
        out_shape (tuple): the shape of the input, the output and ``dout``.
        dtype (np.dtype): their dtype.
    """

    keep: Optional[np.ndarray]
    p: float
    out_shape: Tuple[int, ...]
    dtype: np.dtype


def dropout_forward(x, p=0.5, training=True, rng=None, layer="dropout"):
    """``y = r * x / (1 - p)`` with ``r ~ Bernoulli(1 - p)`` elementwise (training), else ``x``.

    Same arguments and results as :func:`minidl.functional.dropout_forward` (``layer`` is
    ignored). The draws are ``rng.random(x.shape)`` in x's dtype, the numbers the compiled op
    draws, so both backends drop the same elements.
    """
    rng = get_rng(rng)  # None: minidl's global generator
    if not training or p == 0.0:
        return x, DropoutCache(None, p, x.shape, x.dtype)
    u = rng.random(x.shape, dtype=x.dtype)
    r = u >= p                                 # r_j ~ Bernoulli(1 - p): keep unit j
    if p == 1.0:
        y = x * x.dtype.type(0)                # every unit dropped
    else:
        y = x * r / x.dtype.type(1.0 - p)      # inverted dropout: E[y] = x
    return y.astype(x.dtype, copy=False), DropoutCache(r, p, x.shape, x.dtype)


def dropout_backward(dout, cache, layer="dropout"):
    """``dx = r * dout / (1 - p)``: the kept units pass their gradient, scaled the same way.

    Same arguments and results as :func:`minidl.functional.dropout_backward`.
    """
    if cache.keep is None:
        return dout
    if cache.p == 1.0:
        return (dout * cache.dtype.type(0)).astype(cache.dtype, copy=False)
    return (dout * cache.keep / cache.dtype.type(1.0 - cache.p)).astype(cache.dtype, copy=False)
