"""Batch Normalization as a stateless forward/backward pair (validation + kernel dispatch).

Math (Ioffe & Szegedy, 2015, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", Algorithm 1 and the backprop equations of section 3), per
channel c over the m = N*H*W values of a mini-batch:

    mu_c      = 1/m * sum x                     (batch mean)
    var_c     = 1/m * sum (x - mu_c)^2          (biased batch variance, used to normalize)
    xhat      = (x - mu_c) / sqrt(var_c + eps)
    y         = gamma_c * xhat + beta_c

    dbeta_c   = sum dy
    dgamma_c  = sum dy * xhat
    dx        = gamma_c / sqrt(var_c + eps) * (dy - mean(dy) - xhat * mean(dy * xhat))

With running statistics (eval mode) mu and var are constants, so dx = gamma / sqrt(var + eps) * dy.

The kernels work on a ``(A, C, B)`` view of the input and reduce over axes 0 and 2 (see
``minidl/_kernels/_batchnorm.pyx``); BatchNorm's view of ``(N, C, *spatial)`` is
``(N, C, prod(spatial))``. LayerNorm, GroupNorm and InstanceNorm are other views of the same core.
An input without spatial positions (``(N, C)``, BatchNorm1D after a Dense layer) would give
``(N, C, 1)``, whose channels are columns ``C`` elements apart: the kernels would read one
element per cache line (measured 13 ms per call on (256, 1024) float32). Such an input is
transposed to ``(1, C, N)`` instead (a tiled, parallel copy), and the result back.

Under ``with minidl.backend("reference"):`` the validated arguments go instead to Algorithm 1
written out line by line in :mod:`minidl.reference.functional.normalization`, and a cache that
it made sends the backward pass there too (the ``if`` statements marked "reference backend").
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import _config, _memory
from .._backend import get_backend
from .._checks import check_float_array, check_grad, check_input
from .._kernels import _batchnorm as _kernel
from .._kernels import _conv as _layout
from ..reference.functional import normalization as reference

__all__ = ["BatchNormCache", "batch_norm_forward", "batch_norm_backward", "channel_stats", "update_running_stats"]

_LAYOUTS = ("NC", "NCL", "NCHW")


class BatchNormCache(NamedTuple):
    """What :func:`batch_norm_backward` needs from the forward pass.

    Attributes:
        x3: the input as a C-contiguous ``(N, C, prod(spatial))`` array, or ``(1, C, N)`` for an
            input without spatial positions (see the module docstring).
        mean, invstd: ``(C,)`` float64, the statistics used (batch or running).
        gamma: ``(C,)`` float64 weight (ones without affine parameters).
        training: whether mean/invstd were the batch's own statistics.
        shape: the input's shape. has_weight, has_bias: whether to return their gradients.
    """

    x3: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    gamma: np.ndarray
    training: bool
    shape: Tuple[int, ...]
    has_weight: bool
    has_bias: bool


def _as_acb(x):
    """``(N, C, *spatial)`` as a C-contiguous ``(N, C, prod(spatial))`` array (a view when x is
    contiguous); without spatial positions ``(1, C, N)``, a transposed copy."""
    n, c = x.shape[:2]
    if x.size != n * c or n == 1:
        return np.ascontiguousarray(x).reshape(n, c, -1)
    columns = _memory.empty((1, c, n), x.dtype)
    _transpose(np.ascontiguousarray(x).reshape(1, n, c), columns)
    return columns


def _transpose(src, dst):
    """``dst[0] = src[0].T`` with the tiled, parallel transpose of the convolution kernels."""
    _layout.transpose_batched(src, np.empty(0, src.dtype), False, dst,
                              _config.threads_for(src.size))


def _from_acb(x3, out):
    """Write the ``(A, C, B)`` result ``x3`` of a kernel into ``out`` (the input's shape):
    nothing to do when ``x3`` is a view of ``out``, else the transpose of :func:`_as_acb`."""
    if x3.shape[0] != out.shape[0]:
        _transpose(x3, out.reshape(1, out.shape[0], out.shape[1]))
    return out


def _channel_vector(layer, value, num_channels, name, default=None):
    """A per-channel parameter/statistic as a float64 ``(C,)`` array; None gives ``default``
    (a constant vector) or None."""
    if value is None:
        return None if default is None else np.full(num_channels, float(default))
    value = np.asarray(value)
    if value.shape != (num_channels,):
        raise ValueError(f"{layer}: expected {name} of shape ({num_channels},), got {value.shape}")
    return value.astype(np.float64)


def _check_running_stats(layer, running_mean, running_var, num_channels, training):
    """Both running statistics or neither, each a float ``(C,)`` array (writable when
    training, where they are updated in place); eval mode needs both.

    Raises:
        TypeError/ValueError: naming ``layer``, the argument and what it should be.
    """
    if running_mean is None and running_var is None:
        if not training:
            raise ValueError(f"{layer}: eval mode needs running_mean and running_var")
        return
    for name, value in (("running_mean", running_mean), ("running_var", running_var)):
        if value is None:
            raise ValueError(f"{layer}: running_mean and running_var must be given together, "
                             f"got {name}=None")
        check_float_array(layer, value, name)
        if value.shape != (num_channels,):
            raise ValueError(
                f"{layer}: expected {name} of shape ({num_channels},), got {value.shape}")
        if training and not value.flags.writeable:
            raise ValueError(f"{layer}: {name} is updated in place when training, but it is "
                             f"read-only")


def channel_stats(x3):
    """Per-channel mean and biased variance of a C-contiguous ``(A, C, B)`` array.

    Returns:
        (mean, var): two float64 arrays of shape ``(C,)``.
    """
    c = x3.shape[1]
    mean = np.empty(c, np.float64)
    var = np.empty(c, np.float64)
    _kernel.channel_stats(x3, mean, var, _config.threads_for(x3.size))
    return mean, var


def update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """Update running estimates in place, following PyTorch's convention.

    ``running = (1 - momentum) * running + momentum * batch``, where the batch variance is the
    *unbiased* one, ``var * count / (count - 1)``. (Keras' ``momentum`` is ``1 -`` this one.)

    Args:
        running_mean, running_var: ``(C,)`` float arrays, updated in place.
        mean, var: ``(C,)`` float64 batch mean and biased variance.
        count (int): values per channel in the batch, > 1.
        momentum (float): the averaging factor in [0, 1].
    """
    unbiased = var * (count / (count - 1.0))
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += momentum * unbiased


def batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                       training=True, momentum=0.1, eps=1e-5, layer="batch_norm", out=None):
    """Batch-normalize ``x`` per channel (axis 1); like ``torch.nn.functional.batch_norm``.

    Args:
        x (np.ndarray): ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64.
        weight, bias (np.ndarray or None): gamma and beta, ``(C,)``; None means 1 and 0.
        running_mean, running_var (np.ndarray or None): ``(C,)`` running estimates. In training
            they are updated in place (if given) with ``momentum``; in eval (``training=False``)
            they are used to normalize and must be given.
        training (bool): normalize with the batch statistics (True) or the running ones.
        momentum (float): running-average factor (PyTorch convention:
            ``running = (1 - momentum) * running + momentum * batch``).
        eps (float): added to the variance before the square root (default 1e-5, as PyTorch).
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (C-contiguous, x's shape and dtype).
    Returns:
        (out, cache): ``out`` has the shape and dtype of ``x``; ``cache`` is for
        :func:`batch_norm_backward` (a :class:`BatchNormCache`, or under the reference backend
        a :class:`minidl.reference.functional.normalization.BatchNormCache`).
    Raises:
        TypeError: ``x``, ``running_mean`` or ``running_var`` is not a float32/float64 ndarray.
        ValueError: wrong rank or parameter shape; training with one value per channel;
            eval without running statistics; only one of the running statistics given; a
            read-only running statistic when training; eps <= 0; an unusable ``out``.
    """
    check_input(layer, x, _LAYOUTS)
    num_channels = x.shape[1]
    if not eps > 0:
        raise ValueError(f"{layer}: eps must be > 0, got {eps}")
    gamma = _channel_vector(layer, weight, num_channels, "weight", default=1.0)
    beta = _channel_vector(layer, bias, num_channels, "bias", default=0.0)
    _check_running_stats(layer, running_mean, running_var, num_channels, training)
    count = x.size // num_channels  # values per channel
    if training and count <= 1:
        raise ValueError(
            f"{layer}: expected more than 1 value per channel when training, "
            f"got input of shape {x.shape}"
        )
    out = _memory.output(layer, out, x.shape, x.dtype)
    if get_backend() == "reference":  # reference backend: Algorithm 1, line by line
        return reference.batch_norm_forward(x, weight, bias, running_mean, running_var, training,
                                            momentum, eps, layer, out)
    x3 = _as_acb(x)
    out3 = out.reshape(x3.shape) if x3.shape[0] == x.shape[0] else _memory.empty(x3.shape,
                                                                                  x.dtype)
    threads = _config.threads_for(x3.size)
    if training:
        mean = np.empty(num_channels, np.float64)
        var = np.empty(num_channels, np.float64)
        _kernel.forward_train(x3, gamma, beta, float(eps), out3, mean, var, threads)
        if running_mean is not None:
            update_running_stats(running_mean, running_var, mean, var, count, momentum)
        invstd = 1.0 / np.sqrt(var + eps)
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        _kernel.normalize(x3, mean, gamma * invstd, beta, out3, threads)
    cache = BatchNormCache(x3, mean, invstd, gamma, bool(training), x.shape, weight is not None,
                           bias is not None)
    return _from_acb(out3, out), cache


def batch_norm_backward(dout, cache, layer="batch_norm", out=None):
    """Gradients of :func:`batch_norm_forward`.

    Args:
        dout (np.ndarray): d loss / d out, the shape and dtype of the forward output.
        cache: the second value returned by :func:`batch_norm_forward`.
        out (np.ndarray, optional): where to write ``dx`` (C-contiguous, x's shape and dtype).
    Returns:
        (dx, dweight, dbias): ``dx`` like ``x``; ``dweight`` and ``dbias`` float64 ``(C,)``
        (None where the forward had no weight/bias). In training mode ``dx`` includes the paths
        through the batch mean and variance; in eval mode it is the affine part only.
    Raises:
        ValueError/TypeError: ``dout`` does not match the forward output.
    """
    if isinstance(cache, reference.BatchNormCache):  # reference backend: made by its forward
        check_grad(layer, dout, cache.out_shape, cache.dtype)
        dx = _memory.output(layer, out, cache.out_shape, cache.dtype)
        return reference.batch_norm_backward(dout, cache, layer, dx)
    x3, mean, invstd, gamma, training, shape, has_weight, has_bias = cache
    check_grad(layer, dout, shape, x3.dtype)
    dy3 = _as_acb(dout)
    num_channels = x3.shape[1]
    sum_dy = np.empty(num_channels, np.float64)
    sum_dy_xmu = np.empty(num_channels, np.float64)
    dx = _memory.output(layer, out, shape, x3.dtype)
    dx3 = dx.reshape(x3.shape) if x3.shape[0] == shape[0] else _memory.empty(x3.shape, x3.dtype)
    _kernel.backward(dy3, x3, mean, invstd, gamma, training, dx3,
                     sum_dy, sum_dy_xmu, _config.threads_for(x3.size))
    dweight = sum_dy_xmu * invstd if has_weight else None
    dbias = sum_dy if has_bias else None
    return _from_acb(dx3, dx), dweight, dbias
