"""Short forms of the Batch Normalization reference: the test oracles of
``minidl/_kernels/_batchnorm.pyx``.

Ioffe & Szegedy (2015), Algorithm 1 and section 3; the step-by-step code is in
:mod:`minidl.reference.functional.normalization`. The functions here take the statistics and
parameters as plain arrays. Everything is computed in float64 with a two-pass variance; results
are cast back to the input's dtype.
"""
import numpy as np

from .functional import normalization as _textbook

__all__ = ["batch_stats", "batch_norm_forward", "batch_norm_backward_train",
           "batch_norm_backward_eval"]


def batch_stats(x):
    """Per-channel mean and biased variance of ``(N, C, ...)`` ``x``: two float64 ``(C,)`` arrays."""
    cache = _textbook.batch_norm_forward(x)[1]
    return cache.mean.ravel(), cache.var.ravel()


def batch_norm_forward(x, gamma, beta, mean, var, eps):
    """``y = gamma * (x - mean) / sqrt(var + eps) + beta``, per channel (axis 1), with the
    given statistics."""
    return _textbook.batch_norm_forward(x, gamma, beta, np.asarray(mean), np.asarray(var),
                                        training=False, eps=eps)[0]


def batch_norm_backward_train(dy, x, gamma, eps):
    """``(dx, dgamma, dbeta)`` through the batch statistics of ``x`` (training mode)."""
    _, cache = _textbook.batch_norm_forward(x, gamma, np.zeros(x.shape[1]), eps=eps)
    return _textbook.batch_norm_backward(dy, cache)


def batch_norm_backward_eval(dy, x, gamma, mean, var, eps):
    """``(dx, dgamma, dbeta)`` with fixed (running) statistics: the affine part only."""
    _, cache = _textbook.batch_norm_forward(x, gamma, np.zeros(x.shape[1]), np.asarray(mean),
                                            np.asarray(var), training=False, eps=eps)
    return _textbook.batch_norm_backward(dy, cache)
