"""The fully connected (affine) layer by its formula: the readable, runnable twin of
:mod:`minidl.functional.linear`.

``y = x W^T + b`` with ``W`` in PyTorch's ``(out_features, in_features)`` layout
(``torch.nn.functional.linear``); for ``dout = d loss / d y`` the chain rule gives
(Goodfellow, Bengio & Courville, 2016, "Deep Learning", section 6.5: back-propagation through
a matrix product)::

    dx = dout W,     dW = dout^T x,     db = sum over the batch of dout

Nothing here validates its inputs; :func:`minidl.functional.linear_forward` does that before
it calls this one.
"""
from typing import NamedTuple

import numpy as np

__all__ = ["LinearCache", "linear_forward", "linear_backward"]


class LinearCache(NamedTuple):
    """What :func:`linear_backward` needs: the input ``x``, the weight ``w`` (in x's dtype) and
    whether there was a bias."""

    x: np.ndarray
    w: np.ndarray
    has_bias: bool

    @property
    def out_shape(self):
        """``(N, out_features)``, the shape of the output and of ``dout``."""
        return (self.x.shape[0], self.w.shape[0])

    @property
    def dtype(self):
        """dtype of the input, the output and the gradients."""
        return self.x.dtype


def linear_forward(x, weight, bias=None, layer="linear", relu=False):
    """``y = x W^T + b`` for a batch ``x`` of shape ``(N, in_features)``; ``max(y, 0)`` with
    ``relu``.

    Same arguments and results as :func:`minidl.functional.linear_forward` (``layer`` is
    ignored; ``weight`` and ``bias`` are used in x's dtype).

    Returns:
        (out, cache): ``out`` is ``(N, out_features)`` in x's dtype; a :class:`LinearCache`.
    """
    w = weight.astype(x.dtype)  # a copy: the cache keeps the weight of this forward pass
    y = x @ w.T
    if bias is not None:
        y = y + bias.astype(x.dtype)
    if relu:
        y = np.maximum(y, 0)  # the reference ReLU (NaN passes through)
    return y, LinearCache(x, w, bias is not None)


def linear_backward(dout, cache, layer="linear", input_grad=True):
    """``dx = dout W``, ``dW = dout^T x``, ``db = sum_n dout[n]``.

    Same arguments and results as :func:`minidl.functional.linear_backward`.

    Returns:
        (dx, dweight, dbias): ``(N, in_features)`` (None when ``input_grad`` is False),
        ``(out_features, in_features)`` and ``(out_features,)`` (None without bias), in x's
        dtype.
    """
    x, w, has_bias = cache
    dx = dout @ w if input_grad else None
    dweight = dout.T @ x
    dbias = dout.sum(axis=0) if has_bias else None
    return dx, dweight, dbias
