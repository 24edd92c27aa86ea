"""Batch Normalization step by step: the readable, runnable twin of
:mod:`minidl.functional.normalization`.

Ioffe & Szegedy (2015), "Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift". Each channel ``c`` (axis 1) is normalized over its mini-batch
``B = {x_1, ..., x_m}``: the ``m = N`` values of ``(N, C)`` input, the ``m = N*L`` of
``(N, C, L)``, the ``m = N*H*W`` of ``(N, C, H, W)`` (the convolutional BatchNorm of section
3.2). The forward pass is the paper's Algorithm 1, the backward pass its chain-rule equations
of section 3, and eval mode uses fixed statistics as in Algorithm 2. Each line below carries
the formula it computes.

Running estimates follow PyTorch's convention, not Keras'::

    running_mean = (1 - momentum) * running_mean + momentum * mu_B
    running_var  = (1 - momentum) * running_var  + momentum * sigma_B^2 * m / (m - 1)

(the unbiased variance, as in Algorithm 2's ``Var[x] = m / (m - 1) * E[sigma_B^2]``).

Everything is computed in float64, the variance with two passes (the mean first, then the
squared deviations from it), and the output cast back to the input's dtype. Nothing here
validates its inputs; :func:`minidl.functional.batch_norm_forward` does that before it calls
this one.
"""
from typing import NamedTuple, Tuple

import numpy as np

from ._result import into

__all__ = ["BatchNormCache", "batch_sum", "batch_norm_forward", "batch_norm_backward"]


class BatchNormCache(NamedTuple):
    """What :func:`batch_norm_backward` needs from the forward pass.

    Attributes:
        x (np.ndarray): the input as float64 (a copy).
        mean, var (np.ndarray): float64 per-channel statistics the forward used, shaped
            ``(1, C, 1, ...)`` to broadcast against ``x``: the batch mean and biased variance
            (training), or the running estimates (eval).
        gamma (np.ndarray): float64 ``(1, C, 1, ...)`` scale (ones without a weight).
        eps (float): added to the variance.
        training (bool): whether ``mean``/``var`` are the batch's own (so ``dx`` flows through
            them).
        dtype (np.dtype): dtype of the input, the output and ``dx``.
        has_weight, has_bias (bool): whether to return ``dweight`` / ``dbias``.
    """

    x: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    gamma: np.ndarray
    eps: float
    training: bool
    dtype: np.dtype
    has_weight: bool
    has_bias: bool

    @property
    def out_shape(self) -> Tuple[int, ...]:
        """The shape of the output, and of ``dout``: the input's."""
        return self.x.shape


def batch_sum(a):
    """``sum over i in B`` for every channel: ``a`` summed over every axis but axis 1.

    The result keeps those axes with length 1, so it broadcasts against ``a`` again.
    """
    return a.sum(axis=(0,) + tuple(range(2, a.ndim)), keepdims=True)


def _per_channel(vector, x):
    """A ``(C,)`` vector as float64 shaped ``(1, C, 1, ...)`` to broadcast against ``x`` (a copy)."""
    return np.array(vector, dtype=np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


def batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                       training=True, momentum=0.1, eps=1e-5, layer="batch_norm", out=None):
    """Batch-normalize ``x`` per channel: Algorithm 1 (training) or fixed statistics (eval).

    Same arguments and results as :func:`minidl.functional.batch_norm_forward` (``layer`` is
    ignored).

    Args:
        x (np.ndarray): ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64.
        weight, bias (np.ndarray or None): gamma and beta, ``(C,)``; None means 1 and 0.
        running_mean, running_var (np.ndarray or None): ``(C,)``. Training: updated in place
            (when given) with ``momentum``. Eval: the statistics to normalize with.
        training (bool): use the batch statistics (True) or the running ones.
        momentum (float): PyTorch's running-average factor (see the module docstring).
        eps (float): added to the variance before the square root.
        out (np.ndarray or None): where to write the result; a new array when None.
    Returns:
        (out, cache): ``out`` has the shape and dtype of ``x``; ``cache`` is a
        :class:`BatchNormCache`.
    """
    x64 = x.astype(np.float64)
    num_channels = x.shape[1]
    m = x.size // num_channels  # values per channel in the mini-batch
    gamma = _per_channel(np.ones(num_channels) if weight is None else weight, x)
    beta = _per_channel(np.zeros(num_channels) if bias is None else bias, x)

    if training:
        # Algorithm 1, the mini-batch statistics:
        mean = batch_sum(x64) / m                  # mu_B      = 1/m sum_i x_i
        var = batch_sum((x64 - mean) ** 2) / m     # sigma_B^2 = 1/m sum_i (x_i - mu_B)^2
        if running_mean is not None:
            # PyTorch's running estimates, with the unbiased variance m/(m-1) sigma_B^2
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean.ravel()
            running_var[...] = (1 - momentum) * running_var + momentum * var.ravel() * m / (m - 1)
    else:
        # Algorithm 2, step 10: at inference the population estimates replace mu_B, sigma_B^2
        mean = _per_channel(running_mean, x)
        var = _per_channel(running_var, x)

    xhat = (x64 - mean) / np.sqrt(var + eps)       # x^_i = (x_i - mu_B) / sqrt(sigma_B^2 + eps)
    y = gamma * xhat + beta                        # y_i  = gamma x^_i + beta   (scale and shift)

    cache = BatchNormCache(x64, mean, var, gamma, float(eps), bool(training), x.dtype,
                           weight is not None, bias is not None)
    return into(out, y.astype(x.dtype)), cache


def batch_norm_backward(dout, cache, layer="batch_norm", out=None):
    """Gradients of :func:`batch_norm_forward` by the chain rule of section 3.

    Same arguments and results as :func:`minidl.functional.batch_norm_backward` (``layer`` is
    ignored).

    Args:
        dout (np.ndarray): d loss / d y, the shape and dtype of the forward output.
        cache (BatchNormCache): the second value returned by :func:`batch_norm_forward`.
        out (np.ndarray or None): where to write ``dx``; a new array when None.
    Returns:
        (dx, dweight, dbias): ``dx`` like the input; ``dweight`` and ``dbias`` float64
        ``(C,)`` (None where the forward had no weight / bias). In training mode ``dx``
        includes the paths through mu_B and sigma_B^2; in eval mode it is the affine part only.
    """
    x, mean, var, gamma, eps, training, dtype, has_weight, has_bias = cache
    m = x.size // x.shape[1]
    dy = dout.astype(np.float64)
    xhat = (x - mean) / np.sqrt(var + eps)

    dbeta = batch_sum(dy)                          # dl/dbeta  = sum_i dl/dy_i
    dgamma = batch_sum(dy * xhat)                  # dl/dgamma = sum_i dl/dy_i x^_i
    dxhat = dy * gamma                             # dl/dx^_i  = dl/dy_i gamma
    if training:
        # dl/dsigma_B^2 = sum_i dl/dx^_i (x_i - mu_B) (-1/2) (sigma_B^2 + eps)^(-3/2)
        dvar = batch_sum(dxhat * (x - mean)) * -0.5 * (var + eps) ** -1.5
        # dl/dmu_B = sum_i dl/dx^_i (-1 / sqrt(sigma_B^2 + eps)) + dl/dsigma_B^2 sum_i -2 (x_i - mu_B) / m
        dmean = batch_sum(dxhat * -1 / np.sqrt(var + eps)) + dvar * batch_sum(-2 * (x - mean)) / m
        # dl/dx_i = dl/dx^_i / sqrt(sigma_B^2 + eps) + dl/dsigma_B^2 2 (x_i - mu_B) / m + dl/dmu_B / m
        dx = dxhat / np.sqrt(var + eps) + dvar * 2 * (x - mean) / m + dmean / m
    else:
        # mu and sigma^2 are constants here (the running estimates): y is affine in x
        dx = dxhat / np.sqrt(var + eps)

    dweight = dgamma.ravel() if has_weight else None
    dbias = dbeta.ravel() if has_bias else None
    return into(out, dx.astype(dtype)), dweight, dbias
