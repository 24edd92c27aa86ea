"""Pure-NumPy Batch Normalization: the readable spec and the test oracle of the Cython kernels.

Ioffe & Szegedy (2015), Algorithm 1 and section 3. Everything is computed in float64 with a
two-pass variance; results are cast back to the input's dtype.
"""
import numpy as np


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, x):
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


def batch_stats(x):
    """Per-channel mean and biased variance of ``(N, C, ...)`` ``x``, two-pass, float64."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=_axes(x))
    var = ((x64 - _per_channel(mean, x)) ** 2).mean(axis=_axes(x))
    return mean, var


def batch_norm_forward(x, gamma, beta, mean, var, eps):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel (axis 1)."""
    xhat = (x.astype(np.float64) - _per_channel(mean, x)) / np.sqrt(_per_channel(var, x) + eps)
    return (_per_channel(gamma, x) * xhat + _per_channel(beta, x)).astype(x.dtype)


def batch_norm_backward_train(dy, x, gamma, eps):
    """(dx, dgamma, dbeta) through the batch statistics of ``x`` (training mode)."""
    mean, var = batch_stats(x)
    m = x.size // x.shape[1]
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    dy64 = dy.astype(np.float64)
    dbeta = dy64.sum(axis=_axes(x))
    dgamma = (dy64 * xhat).sum(axis=_axes(x))
    dx = _per_channel(np.asarray(gamma) * invstd, x) * (
        dy64 - _per_channel(dbeta / m, x) - xhat * _per_channel(dgamma / m, x)
    )
    return dx.astype(x.dtype), dgamma, dbeta


def batch_norm_backward_eval(dy, x, gamma, mean, var, eps):
    """(dx, dgamma, dbeta) with fixed (running) statistics: the affine part only."""
    invstd = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    xhat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    dy64 = dy.astype(np.float64)
    dx = _per_channel(np.asarray(gamma) * invstd, x) * dy64
    return dx.astype(x.dtype), (dy64 * xhat).sum(axis=_axes(x)), dy64.sum(axis=_axes(x))
