"""Short forms of the max-pooling reference: the test oracles of ``minidl/_kernels/_pool.pyx``.

The definition, the winner rule (first maximum in row-major window order, NaNs as PyTorch) and
the code are in :mod:`minidl.reference.functional.pooling`; the functions here take and return
plain arrays instead of a cache. ``argmax[n, c, oh, ow]`` is the flat index ``h*W + w`` of the
window's winner inside its ``(H, W)`` plane. Nothing here validates its inputs;
``kernel_size`` and ``stride`` are pairs of ints.
"""
from .functional import pooling as _textbook

__all__ = ["max_pool2d_forward", "max_pool2d_backward"]


def max_pool2d_forward(x, kernel_size, stride):
    """Max pooling by its definition.

    Args:
        x (np.ndarray): ``(N, C, H, W)``.
        kernel_size, stride: pairs ``(kH, kW)``, ``(sH, sW)``.
    Returns:
        (out, argmax): ``out`` of shape ``(N, C, OH, OW)`` in the dtype of ``x``; ``argmax``
        int64 of the same shape, flat indices into each ``(H, W)`` plane.
    """
    out, cache = _textbook.max_pool2d_forward(x, kernel_size, stride)
    return out, cache.argmax


def max_pool2d_backward(dout, argmax, x_shape):
    """Scatter ``dout`` to the winning inputs recorded in ``argmax``.

    Args:
        dout (np.ndarray): ``(N, C, OH, OW)``.
        argmax (np.ndarray): int64 ``(N, C, OH, OW)`` from :func:`max_pool2d_forward`.
        x_shape (tuple): ``(N, C, H, W)``.
    Returns:
        np.ndarray: ``dx`` of shape ``x_shape`` in the dtype of ``dout``.
    """
    cache = _textbook.MaxPool2dCache(argmax, tuple(x_shape), dout.dtype)
    return _textbook.max_pool2d_backward(dout, cache)
