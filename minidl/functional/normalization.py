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
``(N, C, prod(spatial))``. LayerNorm, GroupNorm and InstanceNorm (``layer_norm_*``,
``group_norm_*``, ``instance_norm_*``, below "the sample norms") are other views of the same
core, followed by a separate affine step; the pieces a synchronized (multi-process) BatchNorm
needs are below "SyncBatchNorm".

Under ``with minidl.backend("reference"):`` the validated arguments go instead to Algorithm 1
written out line by line in :mod:`minidl.reference.functional.normalization`, and a cache that
it made sends the backward pass there too (the ``if`` statements marked "reference backend").
"""
import functools
import math
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .. import _config, _memory
from .._backend import get_backend
from .._checks import (FLOAT_DTYPES, check_allocation, check_bool, check_cache_array,
                       check_eps, check_float_array, check_grad, check_input, check_integer,
                       check_no_overlap, check_number, positive_int, shape_tuple)
from .._kernels import _batchnorm as _kernel
from ..reference.functional import normalization as reference
from . import pooling

__all__ = ["BatchNormCache", "batch_norm_forward", "batch_norm_backward", "batch_norm_output",
           "channel_stats", "update_running_stats", "batch_norm_stats", "combine_batch_norm_stats",
           "batch_norm_grad_sums", "batch_norm_input_grad", "SyncBatchNormCache",
           "sync_batch_norm_forward", "sync_batch_norm_backward", "SampleNormCache",
           "layer_norm_forward", "layer_norm_backward", "group_norm_forward",
           "group_norm_backward", "instance_norm_forward", "instance_norm_backward"]

_LAYOUTS = ("NC", "NCL", "NCHW")


class BatchNormCache(NamedTuple):
    """What :func:`batch_norm_backward` needs from the forward pass.

    Attributes:
        x3: the input as a C-contiguous ``(N, C, prod(spatial))`` array.
        mean, invstd: ``(C,)`` float64, the statistics used (batch or running).
        gamma: ``(C,)`` float64 weight (ones without affine parameters).
        training: whether mean/invstd were the batch's own statistics.
        shape: the input's shape. has_weight, has_bias: whether to return their gradients.
        beta: ``(C,)`` float64 bias (zeros without affine parameters), with which the
            backward pass recomputes a following ReLU's mask (``relu=True``); None in a cache
            made without it (then ``relu=True`` is refused).
    """

    x3: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    gamma: np.ndarray
    training: bool
    shape: Tuple[int, ...]
    has_weight: bool
    has_bias: bool
    beta: Optional[np.ndarray] = None


def _as_acb(x):
    """View ``(N, C, *spatial)`` as a C-contiguous ``(N, C, prod(spatial))`` array."""
    n, c = x.shape[:2]
    return np.ascontiguousarray(x).reshape(n, c, -1)


def _real_array(layer, value, shape, name):
    """``value`` (an array or nested list of real numbers of ``shape``, any shape when None) as
    a float64 array.

    Raises:
        TypeError: not numbers (strings, objects, a ragged list, complex).
        ValueError: another shape.
    """
    if (type(value) is np.ndarray and value.dtype.kind == "f" and shape is not None
            and value.shape == shape):  # the common case: a layer's parameter
        return value.astype(np.float64)
    try:
        value = np.asarray(value)
    except (TypeError, ValueError):  # e.g. a ragged list
        value = np.asarray(None)
    if value.dtype.kind not in "fiu":
        raise TypeError(f"{layer}: expected {name} to be an array of real numbers, got dtype "
                        f"{value.dtype}")
    if shape is not None and value.shape != tuple(shape):
        raise ValueError(f"{layer}: expected {name} of shape {tuple(shape)}, got {value.shape}")
    return value.astype(np.float64)


def _channel_vector(layer, value, num_channels, name, default=None):
    """A per-channel parameter/statistic as a float64 ``(C,)`` array; None gives ``default``
    (a constant vector) or None."""
    if value is None:
        return None if default is None else np.full(num_channels, float(default))
    return _real_array(layer, value, (num_channels,), name)


def _check_running_stats(layer, running_mean, running_var, num_channels, training, x):
    """Both running statistics or neither, each a float ``(C,)`` array (writable when
    training, where they are updated in place, and then sharing no memory with each other or
    with the input ``x``, which the cache keeps); eval mode needs both.

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
    if training:  # updated in place: sharing memory with each other would update them twice
        check_no_overlap(layer, "running_mean", running_mean, running_var=running_var)
        for name, value in (("running_mean", running_mean), ("running_var", running_var)):
            check_no_overlap(layer, name, value, input=x)  # x is cached for backward


def channel_stats(x3, layer="channel_stats"):
    """Per-channel mean and biased variance of an ``(A, C, B)`` array (any strides).

    Returns:
        (mean, var): two float64 arrays of shape ``(C,)``.
    Raises:
        TypeError: ``x3`` is not a float32/float64 ndarray.
        ValueError: ``x3`` is not 3-D, or has an empty axis.
    """
    check_input(layer, x3, "ACB")
    x3 = np.ascontiguousarray(x3)
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
                       training=True, momentum=0.1, eps=1e-5, layer="batch_norm", out=None,
                       relu=False, pool_out=None, pool_argmax=None, pooled_only=False):
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
        relu (bool): return ``relu(BN(x))`` instead, the ReLU applied as each value is written
            (one pass over memory less than :func:`~minidl.functional.activation.relu_forward`
            after this; bit for bit the same values). The cache is still BatchNorm's: give
            :func:`batch_norm_backward` d loss / d ``BN(x)``, i.e. pass the gradient through
            the ReLU first (``relu_backward`` with ``ReluCache(out)``). Default False.
        pool_out (np.ndarray, optional): for an ``(N, C, H, W)`` input with ``H, W >= 2``: a
            C-contiguous ``(N, C, H // 2, W // 2)`` array of x's dtype into which the output
            (after the ReLU when ``relu``) is also max-pooled with 2x2 windows and stride 2,
            each ``(H, W)`` plane right after it is written (while it is in cache: one pass over
            memory less than :func:`~minidl.functional.pooling.max_pool2d_forward` after this,
            the same values bit for bit). ``minidl.Sequential`` runs BatchNorm -> ReLU ->
            MaxPool2D(2) so.
        pool_argmax (np.ndarray, optional): with ``pool_out``: a C-contiguous int64 array of
            its shape for the pool's indices (as ``max_pool2d_forward``'s ``argmax``; the cache
            ``MaxPool2dCache(pool_argmax, x.shape, x.dtype, True)`` then serves
            :func:`~minidl.functional.pooling.max_pool2d_backward`, or this function's
            backward with its ``pool_cache``). None: the maxima only.
        pooled_only (bool): with ``pool_out``: do not write the output itself anywhere (each
            plane goes through a per-thread scratch plane and is pooled from there), and
            return None in its place: one pass over memory less when nothing reads it (the
            backward pass needs only the cache: ``relu=True`` recomputes a ReLU's mask).
            Compiled backend only (the reference one computes the output anyway). Default
            False.
    Returns:
        (out, cache): ``out`` has the shape and dtype of ``x`` (None with ``pooled_only``);
        ``cache`` is for
        :func:`batch_norm_backward` (a :class:`BatchNormCache`, or under the reference backend
        a :class:`minidl.reference.functional.normalization.BatchNormCache`).
    Raises:
        TypeError: ``x``, ``running_mean`` or ``running_var`` is not a float32/float64 ndarray.
        ValueError: wrong rank or parameter shape; training with one value per channel;
            eval without running statistics; only one of the running statistics given; a
            read-only running statistic when training, or running statistics sharing memory
            with each other, the input or ``out``; eps <= 0 or not finite; momentum outside
            [0, 1]; an unusable ``out``, ``pool_out`` or ``pool_argmax`` (wrong shape/dtype/
            layout, read-only, or sharing memory with an argument); ``pool_argmax`` without
            ``pool_out``, or ``pool_out`` for an input that is not ``(N, C, H, W)`` with
            ``H, W >= 2``; ``pooled_only`` without ``pool_out`` or with ``out``.
        TypeError: ``training`` is not a bool; ``eps``/``momentum`` are not real numbers;
            ``weight``/``bias`` are not arrays of real numbers.
        MemoryError: the output would not fit in this machine's memory.
    """
    check_input(layer, x, _LAYOUTS)
    num_channels = x.shape[1]
    training = check_bool(layer, "training", training)
    relu = check_bool(layer, "relu", relu)
    pooled_only = check_bool(layer, "pooled_only", pooled_only)
    if pooled_only and (pool_out is None or out is not None):
        raise ValueError(f"{layer}: pooled_only needs pool_out and no out (it writes the "
                         f"pooled output only)")
    eps = check_eps(layer, eps)
    momentum = check_number(layer, "momentum", momentum, low=0.0, high=1.0)
    gamma = _channel_vector(layer, weight, num_channels, "weight", default=1.0)
    beta = _channel_vector(layer, bias, num_channels, "bias", default=0.0)
    _check_running_stats(layer, running_mean, running_var, num_channels, training, x)
    count = x.size // num_channels  # values per channel
    if training and count <= 1:
        raise ValueError(
            f"{layer}: expected more than 1 value per channel when training, "
            f"got input of shape {x.shape}"
        )
    reference_backend = get_backend() == "reference"
    if not pooled_only or reference_backend:
        out = _output(layer, out, x, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var)
    pooled = _pool_outputs(layer, x, out, pool_out, pool_argmax, weight=weight, bias=bias,
                           running_mean=running_mean, running_var=running_var)
    if reference_backend:  # reference backend: Algorithm 1, line by line
        return reference.batch_norm_forward(x, weight, bias, running_mean, running_var,
                                            training, momentum, eps, layer, out, relu, pool_out,
                                            pool_argmax, pooled_only)
    x3 = _as_acb(x)
    out3 = None if out is None else out.reshape(x3.shape)
    threads = _config.threads_for(x3.size)
    if training:
        mean = np.empty(num_channels, np.float64)
        var = np.empty(num_channels, np.float64)
        _kernel.forward_train(x3, gamma, beta, float(eps), out3, mean, var, threads, relu,
                              *pooled)
        if running_mean is not None:
            update_running_stats(running_mean, running_var, mean, var, count, momentum)
        invstd = 1.0 / np.sqrt(var + eps)
    else:
        mean = running_mean.astype(np.float64)  # (a copy: the cache's, whatever updates follow)
        invstd = np.empty(num_channels, np.float64)  # 1 / sqrt(running_var + eps), by the kernel
        _kernel.normalize_running(x3, mean, running_var.astype(np.float64, copy=False), gamma,
                                  beta, float(eps), invstd, out3, threads, relu, *pooled)
    cache = BatchNormCache(x3, mean, invstd, gamma, bool(training), x.shape, weight is not None,
                           bias is not None, beta)
    return out, cache


def batch_norm_output(cache, relu=False, layer="batch_norm"):
    """The output of the forward pass that made ``cache``, recomputed from it (the input, the
    statistics, gamma and beta it keeps): the same values bit for bit, e.g. for a ReLU after a
    forward with ``pooled_only``, whose output was not kept.

    Args:
        cache (BatchNormCache): from :func:`batch_norm_forward` (compiled backend), with beta.
        relu (bool): the forward's ``relu``.
        layer (str): name used in error messages.
    Returns:
        np.ndarray: the forward input's shape (``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``)
        and dtype (float32/float64), a new array.
    Raises:
        TypeError: not a :class:`BatchNormCache` (a reference backend's cache included: that
            backend keeps its outputs).
        ValueError: a cache made without beta, or whose arrays were changed.
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError(f"{layer}: expected the cache returned by batch_norm_forward, got "
                        f"{type(cache).__name__}")
    _check_cache(layer, cache)
    beta = _cache_beta(layer, cache, "the cache has no beta to recompute the output with")
    x3 = cache.x3
    out = _memory.empty(x3.shape, x3.dtype)
    # scale as the forward's kernels computed it: gamma * (1 / sqrt(var + eps)) = gamma * invstd
    _kernel.normalize(x3, cache.mean, cache.gamma * cache.invstd, beta, out,
                      _config.threads_for(x3.size), relu)
    return out.reshape(cache.shape)


_NEEDS_BETA = ("relu=True needs a cache with beta (made by batch_norm_forward); pass "
               "relu_output instead")


def _cache_beta(layer, cache, missing):
    """The cache's ``beta``, checked (``(C,)`` float64; a compiled cache's).

    Raises:
        ValueError: a cache made without beta (the message: ``missing``), or one whose beta was
            changed.
    """
    if cache.beta is None:
        raise ValueError(f"{layer}: {missing}")
    if isinstance(cache, BatchNormCache):
        check_cache_array(layer, "batch_norm_forward", "beta", cache.beta,
                          (cache.x3.shape[1],), np.float64)
    return cache.beta


def _output(layer, out, x, **others):
    """``out`` for a forward pass on ``x``, validated (see :func:`minidl._memory.output`; it must
    share no memory with ``x`` or any of ``others``), or a new array after checking it fits in
    memory."""
    if out is None:
        check_allocation(layer, "output", x.shape, x.dtype)
        return _memory.output(layer, None, x.shape, x.dtype)
    out = _memory.output(layer, out, x.shape, x.dtype)
    check_no_overlap(layer, "out", out, input=x, **others)
    return out


def _pool_outputs(layer, x, out, pool_out, pool_argmax, **others):
    """The kernels' pooling arguments ``(pool_out, pool_argmax, width)`` as ``(A, C, OH*OW)``
    views, validated (see :func:`batch_norm_forward`; they must share no memory with ``x``,
    ``out``, each other or the ``others``), or ``(None, None, 0)`` without ``pool_out``."""
    if pool_out is None:
        if pool_argmax is not None:
            raise ValueError(f"{layer}: pool_argmax needs pool_out (the pooled output)")
        return None, None, 0
    if x.ndim != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"{layer}: pool_out needs an (N, C, H, W) input with H, W >= 2 (2x2 "
                         f"windows), got shape {x.shape}")
    n, c, height, width = x.shape
    shape = (n, c, height // 2, width // 2)
    pool_out = _memory.output(layer, pool_out, shape, x.dtype, "pool_out")
    check_no_overlap(layer, "pool_out", pool_out, input=x, out=out, **others)
    if pool_argmax is not None:
        pool_argmax = _memory.output(layer, pool_argmax, shape, np.int64, "pool_argmax")
        check_no_overlap(layer, "pool_argmax", pool_argmax, input=x, out=out, pool_out=pool_out,
                         **others)
        pool_argmax = pool_argmax.reshape(n, c, -1)
    return pool_out.reshape(n, c, -1), pool_argmax, width


def _grad_output(layer, out, shape, dtype, dout, kept, **others):
    """``out`` for a backward pass, validated: besides :func:`minidl._memory.output`'s rules it
    must share no memory with the gradient ``dout``, the cached input ``kept`` (the cache
    serves further backward calls, so its arrays must stay intact) or the ``others`` the
    kernel reads (keyword: the argument's name; None values are skipped)."""
    if out is None:
        return _memory.output(layer, None, shape, dtype)
    out = _memory.output(layer, out, shape, dtype)
    check_no_overlap(layer, "out", out, gradient=dout, **{"the cached input": kept}, **others)
    return out


def _check_cache(layer, cache):
    """The arrays of a :class:`BatchNormCache` as the kernels need them (see
    :func:`minidl._checks.check_cache_array`)."""
    x3 = cache.x3
    ok = isinstance(x3, np.ndarray) and x3.ndim == 3 and x3.dtype in (np.float32, np.float64)
    shape = tuple(cache.shape) if isinstance(cache.shape, tuple) else ()
    if not ok or len(shape) < 2 or math.prod(shape) != x3.size or shape[:2] != x3.shape[:2]:
        raise ValueError(f"{layer}: the cache's x3 or shape is not what batch_norm_forward "
                         f"made; pass the cache it returned, unchanged")
    check_cache_array(layer, "batch_norm_forward", "x3", x3, x3.shape, x3.dtype)
    for field in ("mean", "invstd", "gamma"):
        check_cache_array(layer, "batch_norm_forward", field, getattr(cache, field),
                          (x3.shape[1],), np.float64)


def batch_norm_backward(dout, cache, layer="batch_norm", out=None, relu_output=None,
                        pool_cache=None, relu=False):
    """Gradients of :func:`batch_norm_forward`.

    Args:
        dout (np.ndarray): d loss / d out, the shape and dtype of the forward output.
        cache: the second value returned by :func:`batch_norm_forward`.
        out (np.ndarray, optional): where to write ``dx`` (C-contiguous, x's shape and dtype).
        relu_output (np.ndarray, optional): the output ``y = relu(out)`` of a ReLU applied to
            this BatchNorm's output (the forward's ``relu=True``, or a following ReLU layer);
            ``dout`` is then d loss / d y, and the gradient goes through the ReLU first
            (``dout`` where ``y > 0``, else 0, as :func:`~minidl.functional.activation.
            relu_backward`) inside the kernel's passes, with no array in between. Same results
            as ``relu_backward`` then this function, bit for bit.
        pool_cache (MaxPool2dCache, optional): the cache of a max pool applied to the forward
            output (after the ReLU, with ``relu_output``): returned by
            :func:`~minidl.functional.pooling.max_pool2d_forward`, or built from the forward's
            ``pool_argmax``. ``dout`` is then d loss / d pooled output, and the result is that
            of ``max_pool2d_backward``, (``relu_backward``,) then this function, bit for bit.
            With 2x2 windows and stride 2 (compiled backend) the pool's gradient is written
            plane by plane inside the kernel's passes, with no full-size gradient array.
        relu (bool): as ``relu_output`` (a ReLU followed; ``dout`` is the gradient of its
            output, or of the pool after it), but without that output: the kernel recomputes
            the ReLU's mask from the cached input and parameters (``y <= 0`` where
            ``(x - mean) * gamma * invstd + beta``, rounded to x's dtype, is, as the forward
            computed it), one pass over memory less; the same bits. Not with
            ``relu_output``. Default False.
    Returns:
        (dx, dweight, dbias): ``dx`` like ``x``; ``dweight`` and ``dbias`` float64 ``(C,)``
        (None where the forward had no weight/bias). In training mode ``dx`` includes the paths
        through the batch mean and variance; in eval mode it is the affine part only.
    Raises:
        ValueError/TypeError: ``dout`` or ``relu_output`` does not match the forward output
            (the pooled output, with ``pool_cache``); ``pool_cache`` is not a max pool's cache
            of that output; ``relu`` with ``relu_output``, or with a cache that has no
            ``beta``; ``relu`` not a bool.
        RuntimeError: ``pool_cache`` is from a forward pass under :func:`minidl.no_grad`.
    """
    relu = check_bool(layer, "relu", relu)
    if relu and relu_output is not None:
        raise ValueError(f"{layer}: give relu_output or relu=True (the mask recomputed), not "
                         f"both")
    if pool_cache is not None and not _fuses_pool(layer, pool_cache, cache):
        dout = pooling.max_pool2d_backward(dout, pool_cache, layer=layer)  # MaxPool2D's first
        pool_cache = None
    if isinstance(cache, reference.BatchNormCache):  # reference backend: made by its forward
        if relu:
            _cache_beta(layer, cache, _NEEDS_BETA)
        backward = functools.partial(reference.batch_norm_backward, relu=relu)
        return _reference_backward(backward, dout, cache, layer, out, relu_output=relu_output)
    if not isinstance(cache, BatchNormCache):
        raise TypeError(f"{layer}: expected the cache returned by batch_norm_forward, got "
                        f"{type(cache).__name__}")
    x3, mean, invstd, gamma, training, shape, has_weight, has_bias = cache[:8]
    _check_cache(layer, cache)
    shift = _cache_beta(layer, cache, _NEEDS_BETA) if relu else None
    argmax3, width = None, 0
    if pool_cache is None:
        check_grad(layer, dout, shape, x3.dtype)
    else:
        check_grad(layer, dout, pool_cache.argmax.shape, x3.dtype)
        argmax3, width = pool_cache.argmax.reshape(x3.shape[0], x3.shape[1], -1), shape[3]
    if relu_output is not None:
        check_grad(layer, relu_output, shape, x3.dtype, what="relu_output")
    dy3 = _as_acb(dout)
    num_channels = x3.shape[1]
    sum_dy = np.empty(num_channels, np.float64)
    sum_dy_xmu = np.empty(num_channels, np.float64)
    dx3 = _grad_output(layer, out, shape, x3.dtype, dout, x3, relu_output=relu_output,
                       argmax=argmax3).reshape(x3.shape)
    y3 = None if relu_output is None else _as_acb(relu_output)
    _kernel.backward(dy3, x3, mean, invstd, gamma, training, dx3, sum_dy, sum_dy_xmu,
                     _config.threads_for(x3.size), y3, argmax3, width, shift)
    dweight = sum_dy_xmu * invstd if has_weight else None
    dbias = sum_dy if has_bias else None
    return dx3.reshape(shape), dweight, dbias


def _fuses_pool(layer, pool_cache, cache):
    """Whether :func:`batch_norm_backward` runs the max pool's gradient in its kernel: a
    compiled 2x2, stride-2 pool's cache (checked: indices present, of the output's geometry)
    with a compiled BatchNorm cache. Any other max pool's cache goes through
    ``max_pool2d_backward`` first (which checks it)."""
    if not isinstance(pool_cache, (pooling.MaxPool2dCache, pooling.reference.MaxPool2dCache)):
        raise TypeError(f"{layer}: expected pool_cache to be the cache returned by "
                        f"max_pool2d_forward, got {type(pool_cache).__name__}")
    if not (isinstance(pool_cache, pooling.MaxPool2dCache) and pool_cache.two_by_two
            and pool_cache.argmax is not None and isinstance(cache, BatchNormCache)):
        return False
    pooling.check_max_pool_cache(layer, pool_cache)
    if tuple(pool_cache.x_shape) != cache.shape:
        raise ValueError(f"{layer}: pool_cache pooled an input of shape "
                         f"{tuple(pool_cache.x_shape)}, not this BatchNorm's output "
                         f"{tuple(cache.shape)}")
    return True


# =============================================================================== SyncBatchNorm
# The pieces a data-parallel (synchronized) BatchNorm needs, mirroring PyTorch's
# batch_norm_stats / batch_norm_gather_stats_with_counts / batch_norm_backward_reduce /
# batch_norm_backward_elemt. Forward: each process computes its local statistics
# (batch_norm_stats), gathers everyone's and combines them (combine_batch_norm_stats), then
# normalizes with the global ones (batch_norm_forward(..., training=False) does exactly that).
# Backward: local sums (batch_norm_grad_sums), summed over the processes, then dx
# (batch_norm_input_grad). All statistics and sums are float64. These are building blocks on
# the compiled kernels for either backend (no textbook twin: the math is BatchNorm's above).
# sync_batch_norm_forward/backward put them together (layers.SyncBatchNorm runs them); the
# communication comes in as callables, so nothing here imports minidl.distributed (which sits
# above the layers: DistributedDataParallel wraps a model).

def _as_view(layer, x, what="input"):
    """Validated ``(N, C, *spatial)`` input as a C-contiguous ``(N, C, prod(spatial))`` view."""
    check_input(layer, x, _LAYOUTS, arg=what)
    return _as_acb(x)


def batch_norm_stats(x, layer="batch_norm"):
    """Per-channel count, mean and biased variance of a local batch (a SyncBatchNorm's forward).

    Args:
        x (np.ndarray): ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64.
        layer (str): name used in error messages.
    Returns:
        (count, mean, var): ``count`` (int) the values per channel, ``N * H * W``; ``mean`` and
        ``var`` float64 ``(C,)``, computed as BatchNorm's forward does (shifted float64 sums).
    Raises:
        TypeError/ValueError: ``x`` is not a float array of one of those shapes.
    """
    x3 = _as_view(layer, x)
    mean, var = channel_stats(x3)
    return x3.shape[0] * x3.shape[2], mean, var


def combine_batch_norm_stats(counts, means, variances, layer="batch_norm"):
    """The statistics of a union of batches from each batch's (count, mean, biased variance).

    The law of total variance (Chan, Golub & LeVeque 1983's pairwise update, for all parts at
    once): ``mean = sum n_p mean_p / n`` and ``var = sum n_p (var_p + (mean_p - mean)^2) / n``,
    in float64 (no raw sum of squares, so no cancellation).

    Args:
        counts: ``(P,)`` values per channel in each part (> 0).
        means, variances: ``(P, C)`` each part's per-channel mean and biased variance.
        layer (str): name used in error messages.
    Returns:
        (count, mean, var): the total count (int) and float64 ``(C,)`` mean and biased variance.
    Raises:
        TypeError: an argument that is not an array of real numbers.
        ValueError: mismatched shapes (or none with a part, or none with a channel); a count
            that is not a positive integer; a mean that is not finite; a variance that is not
            finite and >= 0.
    """
    counts = _real_array(layer, counts, None, "counts").reshape(-1)
    means = np.atleast_2d(_real_array(layer, means, None, "means"))
    variances = np.atleast_2d(_real_array(layer, variances, None, "variances"))
    if (means.ndim != 2 or means.shape != variances.shape or means.shape[0] != counts.shape[0]
            or 0 in means.shape):
        raise ValueError(f"{layer}: expected counts (P,) and means, variances (P, C) of one P, "
                         f"P >= 1 and C >= 1, got {counts.shape}, {means.shape}, "
                         f"{variances.shape}")
    if not np.all((counts > 0) & np.isfinite(counts) & (counts == np.round(counts))):
        raise ValueError(f"{layer}: expected positive counts (whole numbers), got {counts.tolist()}")
    if not np.all(np.isfinite(means)):
        raise ValueError(f"{layer}: expected finite means, got {means.tolist()}")
    if not np.all((variances >= 0) & np.isfinite(variances)):
        raise ValueError(f"{layer}: expected finite variances >= 0, got {variances.tolist()}")
    total = counts.sum()
    weights = (counts / total)[:, None]
    mean = (weights * means).sum(axis=0)
    var = (weights * (variances + (means - mean) ** 2)).sum(axis=0)
    return int(round(total)), mean, var


def _stat_vector(layer, value, num_channels, name):
    """A required ``(C,)`` statistic as float64."""
    if value is None:
        raise ValueError(f"{layer}: {name} is required")
    return _channel_vector(layer, value, num_channels, name)


def batch_norm_grad_sums(dout, x, mean, layer="batch_norm"):
    """The two per-channel sums of BatchNorm's backward, for a local batch.

    Args:
        dout (np.ndarray): d loss / d out, ``x``'s shape and dtype.
        x (np.ndarray): the forward input, ``(N, C, *spatial)``.
        mean: ``(C,)`` the mean the forward normalized with (a SyncBatchNorm's global mean).
        layer (str): name used in error messages.
    Returns:
        (sum_dy, sum_dy_xmu): float64 ``(C,)``: ``sum dout`` and ``sum dout * (x - mean)`` per
        channel (sum them over the processes, then call :func:`batch_norm_input_grad`;
        ``sum_dy`` is d loss / d bias and ``sum_dy_xmu * invstd`` d loss / d weight).
    Raises:
        TypeError/ValueError: bad shapes or dtypes (``mean`` not real numbers of shape
            ``(C,)``), naming ``layer``.
    """
    x3 = _as_view(layer, x)
    check_grad(layer, dout, x.shape, x.dtype)
    mean = _stat_vector(layer, mean, x3.shape[1], "mean")
    sum_dy = np.empty(x3.shape[1], np.float64)
    sum_dy_xmu = np.empty(x3.shape[1], np.float64)
    _kernel.grad_sums(_as_acb(dout), x3, mean, sum_dy, sum_dy_xmu, _config.threads_for(x3.size))
    return sum_dy, sum_dy_xmu


def batch_norm_input_grad(dout, x, mean, var, weight, sum_dy, sum_dy_xmu, count, eps=1e-5,
                          layer="batch_norm", out=None):
    """d loss / d x of a training-mode BatchNorm from given per-channel sums.

    ``dx = gamma * invstd * (dout - sum_dy / count - (x - mean) * invstd^2 * sum_dy_xmu / count)``
    with ``invstd = 1 / sqrt(var + eps)`` (Ioffe & Szegedy 2015, section 3): with the sums and
    statistics of the whole (global) batch, this is a SyncBatchNorm's input gradient.

    Args:
        dout, x (np.ndarray): the local batch's upstream gradient and input, one shape and dtype.
        mean, var: ``(C,)`` the statistics the forward normalized with (biased variance).
        weight: ``(C,)`` gamma, or None (1).
        sum_dy, sum_dy_xmu: ``(C,)`` the sums of :func:`batch_norm_grad_sums` over all ``count``
            values of each channel.
        count (int): values per channel behind the sums and statistics (> 0).
        eps (float): as in the forward pass.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write dx (C-contiguous, x's shape and dtype).
    Returns:
        np.ndarray: dx, ``x``'s shape and dtype.
    Raises:
        TypeError: bad dtypes; ``count`` or ``eps`` not a real number.
        ValueError: bad shapes; ``count`` not finite and > 0; ``eps`` not finite and > 0; a
            ``var`` that is not finite and >= 0; an unusable ``out`` (as for
            :func:`batch_norm_forward`, or sharing memory with ``dout`` or ``x``).
    """
    x3 = _as_view(layer, x)
    check_grad(layer, dout, x.shape, x.dtype)
    c = x3.shape[1]
    eps = check_eps(layer, eps)
    count = check_number(layer, "count", count, low=-math.inf)
    if not count > 0:
        raise ValueError(f"{layer}: expected count > 0, got {count}")
    mean = _stat_vector(layer, mean, c, "mean")
    var = _stat_vector(layer, var, c, "var")
    if not np.all((var >= 0) & np.isfinite(var)):
        raise ValueError(f"{layer}: expected a finite var >= 0, got {var.tolist()}")
    invstd = 1.0 / np.sqrt(var + eps)
    gamma = _channel_vector(layer, weight, c, "weight", default=1.0)
    sum_dy = _stat_vector(layer, sum_dy, c, "sum_dy")
    sum_dy_xmu = _stat_vector(layer, sum_dy_xmu, c, "sum_dy_xmu")
    dx = _output(layer, out, x, gradient=dout)
    _kernel.input_grad(_as_acb(dout), x3, mean, invstd, gamma, sum_dy, sum_dy_xmu, float(count),
                       dx.reshape(x3.shape), _config.threads_for(x3.size))
    return dx


def _single_process_gather(array):
    """The all-gather of a world of one process: ``array`` as the only row."""
    return array[None]


class SyncBatchNormCache(NamedTuple):
    """What :func:`sync_batch_norm_backward` needs from :func:`sync_batch_norm_forward`.

    Attributes:
        x: this process's input, C-contiguous (its first axis may be 0).
        mean, var: ``(C,)`` float64, the global mean and biased variance it was normalized with.
        count (int): values per channel in the global batch (all processes).
        gamma: ``(C,)`` float64 weight (ones without affine parameters).
        eps (float): as in the forward pass.
        has_weight, has_bias: whether to return their gradients.
    """

    x: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    count: int
    gamma: np.ndarray
    eps: float
    has_weight: bool
    has_bias: bool


def sync_batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                            momentum=0.1, eps=1e-5, all_gather=None, layer="sync_batch_norm",
                            out=None):
    """Training-mode BatchNorm with the statistics of the union of every process's batch.

    PyTorch's ``SyncBatchNorm`` forward. Each process computes its local per-channel count,
    mean and biased variance (:func:`batch_norm_stats`) and sends them, ``1 + 2C`` float64
    numbers, through one ``all_gather``; every process then combines the rows in rank order
    (:func:`combine_batch_norm_stats`: Chan et al.'s parallel formula, no raw sums of squares),
    so every process gets bit-identical global statistics, with BatchNorm's float32
    guarantees. The running estimates are updated with the global count (unbiased variance),
    and the local input is normalized with the global statistics (:func:`batch_norm_forward`
    with ``training=False``). In one process this is exactly :func:`batch_norm_forward` in
    training mode, bit for bit.

    The communication is a callable, so this module needs no MPI: pass
    ``lambda a: minidl.distributed.all_gather(a, group)``.

    Args:
        x (np.ndarray): this process's batch, ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``,
            float32 or float64; ``N`` may be 0 (the process then contributes no values but
            must still take part).
        weight, bias (np.ndarray or None): gamma and beta, ``(C,)``; None means 1 and 0.
        running_mean, running_var (np.ndarray or None): ``(C,)`` float arrays updated in place
            with ``momentum`` (PyTorch's convention), or both None.
        momentum (float): running-average factor.
        eps (float): added to the variance before the square root.
        all_gather (callable or None): ``all_gather(a)`` of a float64 ``(K,)`` array returns a
            ``(P, K)`` array holding every process's ``a``, row ``r`` from rank ``r``, the same
            on every process; None for a single process.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (C-contiguous, x's shape and dtype).
    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` a :class:`SyncBatchNormCache`.
    Raises:
        TypeError/ValueError: as :func:`batch_norm_forward` (naming ``layer``: eps finite and
            > 0, momentum in [0, 1], an ``out`` sharing no memory with any argument, all
            checked before the running statistics change); an ``all_gather`` that is not
            callable or returns an array of the wrong shape; one value per channel or fewer
            over all processes together (raised on every process alike).
    """
    check_input(layer, x, _LAYOUTS, empty_batch=True)
    c = x.shape[1]
    eps = check_eps(layer, eps)
    momentum = check_number(layer, "momentum", momentum, low=0.0, high=1.0)
    gamma = _channel_vector(layer, weight, c, "weight", default=1.0)
    _channel_vector(layer, bias, c, "bias")
    _check_running_stats(layer, running_mean, running_var, c, True, x)
    if all_gather is not None and not callable(all_gather):
        raise TypeError(f"{layer}: all_gather must be a callable or None, got "
                        f"{type(all_gather).__name__}")
    # checked before the running statistics change (a failed call changes nothing)
    out = _output(layer, out, x, weight=weight, bias=bias, running_mean=running_mean,
                  running_var=running_var)
    local = np.zeros(1 + 2 * c, np.float64)  # [count, mean (C), var (C)]; zeros without samples
    if x.shape[0] > 0:
        local[0], local[1:c + 1], local[c + 1:] = batch_norm_stats(x, layer)
    table = (all_gather or _single_process_gather)(local)
    if not (isinstance(table, np.ndarray) and table.ndim == 2 and table.shape[0] >= 1
            and table.shape[1] == local.size):
        got = table.shape if isinstance(table, np.ndarray) else type(table).__name__
        raise ValueError(f"{layer}: all_gather must return a (processes, {local.size}) array, "
                         f"got {got}")
    counts = table[:, 0]
    if counts.sum() <= 1:
        raise ValueError(f"{layer}: expected more than 1 value per channel over all processes "
                         f"when training, got {int(counts.sum())} (this process's input has shape "
                         f"{x.shape})")
    present = counts > 0  # processes without samples add nothing (Chan's formula needs n > 0)
    count, mean, var = combine_batch_norm_stats(counts[present], table[present, 1:c + 1],
                                                table[present, c + 1:], layer)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    if x.shape[0] > 0:
        batch_norm_forward(x, weight, bias, mean, var, training=False, eps=eps, layer=layer,
                           out=out)
    return out, SyncBatchNormCache(np.ascontiguousarray(x), mean, var, count, gamma, float(eps),
                                   weight is not None, bias is not None)


def _check_sync_cache(layer, cache):
    """Raise unless ``cache`` is a :class:`SyncBatchNormCache` whose fields are what
    :func:`sync_batch_norm_forward` makes (a cache is a tuple the caller can change; a process
    without samples would otherwise pass a bad one on to no check)."""
    if not isinstance(cache, SyncBatchNormCache):
        raise TypeError(f"{layer}: expected the cache returned by sync_batch_norm_forward, got "
                        f"{type(cache).__name__}")
    x = cache.x
    if not (isinstance(x, np.ndarray) and 2 <= x.ndim <= 4 and x.dtype in FLOAT_DTYPES
            and x.shape[1] >= 1):
        raise ValueError(f"{layer}: the cache's x is not what sync_batch_norm_forward made; "
                         f"pass the cache it returned, unchanged")
    check_cache_array(layer, "sync_batch_norm_forward", "x", x, x.shape, x.dtype)
    for field in ("mean", "var", "gamma"):
        check_cache_array(layer, "sync_batch_norm_forward", field, getattr(cache, field),
                          (x.shape[1],), np.float64)
    check_integer(layer, "the cache's count", cache.count, low=2)
    check_eps(layer, cache.eps)


def sync_batch_norm_backward(dout, cache, all_reduce=None, layer="sync_batch_norm", out=None):
    """Gradients of :func:`sync_batch_norm_forward` (PyTorch's ``SyncBatchNorm`` backward).

    Each process computes its two per-channel sums (:func:`batch_norm_grad_sums`), the ``2C``
    float64 numbers are summed over the processes by one ``all_reduce``, and each process forms
    its ``dx`` from the global sums and count (:func:`batch_norm_input_grad`). ``dweight`` and
    ``dbias`` are this process's own sums, as in PyTorch: averaging them over the processes is
    the job of :class:`~minidl.distributed.DistributedDataParallel`, with all other gradients.

    Args:
        dout (np.ndarray): d loss / d out of this process, the forward output's shape and dtype.
        cache (SyncBatchNormCache): from :func:`sync_batch_norm_forward`.
        all_reduce (callable or None): ``all_reduce(a)`` sums a float64 ``(2C,)`` array over the
            processes in place; None for a single process.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write ``dx`` (C-contiguous, x's shape and dtype).
    Returns:
        (dx, dweight, dbias): ``dx`` like ``x``, including the paths through the global mean and
        variance; ``dweight``, ``dbias`` float64 ``(C,)`` of this process's samples (None where
        the forward had no weight/bias).
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output; a cache that is not
            the one the forward returned (its type, or a field of another shape, dtype or
            range); an ``all_reduce`` that is not callable; an ``out`` as in the forward, or
            sharing memory with ``dout`` or the cached input.
    """
    _check_sync_cache(layer, cache)
    if all_reduce is not None and not callable(all_reduce):
        raise TypeError(f"{layer}: all_reduce must be a callable or None, got "
                        f"{type(all_reduce).__name__}")
    x, mean, var, count, gamma, eps, has_weight, has_bias = cache
    check_grad(layer, dout, x.shape, x.dtype)
    c = x.shape[1]
    dx = _grad_output(layer, out, x.shape, x.dtype, dout, x)
    local = np.zeros(2 * c, np.float64)  # [sum dy (C), sum dy * (x - mean) (C)]
    if x.shape[0] > 0:
        local[:c], local[c:] = batch_norm_grad_sums(dout, x, mean, layer)
    total = local.copy()
    if all_reduce is not None:
        all_reduce(total)
    if x.shape[0] > 0:
        batch_norm_input_grad(dout, x, mean, var, gamma, total[:c], total[c:], count, eps, layer,
                              out=dx)
    dweight = local[c:] * (1.0 / np.sqrt(var + eps)) if has_weight else None
    dbias = local[:c] if has_bias else None
    return dx, dweight, dbias


# =============================================================================== the sample norms
# LayerNorm, GroupNorm and InstanceNorm normalize inside each sample. Each sees its input as
# (R, S, L): R rows (samples, or LayerNorm's leading positions), S segments per row, L values
# per segment, and normalizes every segment with its own statistics:
#
#     LayerNorm     (R, 1, D)            D = prod(normalized_shape)
#     GroupNorm     (N, G, C/G * H*W)
#     InstanceNorm  (N, C, H*W)
#
# The core is BatchNorm's kernel on the (1, R*S, L) view, with gamma = 1 and beta = 0
# (statistics per view-channel = per segment, float64 shifted sums with the corrected second
# pass). Their gamma and beta are not per segment (LayerNorm: one per position of D; GroupNorm
# and InstanceNorm: one per channel), so the affine step is a separate kernel call, and its
# backward comes before the core's backward.

class SampleNormCache(NamedTuple):
    """What :func:`layer_norm_backward`, :func:`group_norm_backward` and
    :func:`instance_norm_backward` (with the instances' own statistics) need.

    Attributes:
        x3: the input as a C-contiguous ``(R, S, L)`` array (see the comment above).
        mean, invstd: ``(R, S)`` float64, each segment's mean and ``1 / sqrt(var + eps)``.
        weight: float64 ``(P,)`` the affine step's gamma (ones with only a bias), or None when
            there is no affine step; each of the ``P`` values serves ``repeat`` consecutive
            positions of a row (``P * repeat == S * L``).
        repeat (int): 1 for LayerNorm, H*W for GroupNorm and InstanceNorm.
        param_shape: the shape of the parameter gradients (``normalized_shape`` or ``(C,)``).
        shape: the input's shape. has_weight, has_bias: whether to return their gradients.
    """

    x3: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    weight: np.ndarray
    repeat: int
    param_shape: Tuple[int, ...]
    shape: Tuple[int, ...]
    has_weight: bool
    has_bias: bool


def _param_array(layer, value, shape, name):
    """A parameter of ``shape`` as float64 (flattened), or None."""
    return None if value is None else _real_array(layer, value, shape, name).reshape(-1)


def _sample_norm_forward(x, view, weight, bias, repeat, param_shape, eps, out):
    """Normalize each segment of ``x`` seen as ``view = (R, S, L)``, then the affine step.

    Args:
        weight, bias: float64 ``(P,)`` or None, one value per ``repeat`` positions of a row.
    Returns:
        (out, cache, var): ``var`` the ``(R, S)`` biased variances (for running statistics).
    """
    r, s, l = view
    x3 = np.ascontiguousarray(x).reshape(view)
    segments = x3.reshape(1, r * s, l)
    out_segments = out.reshape(1, r * s, l)
    threads = _config.threads_for(x3.size)
    mean = np.empty(r * s, np.float64)
    var = np.empty(r * s, np.float64)
    # 1. the core: every segment to mean 0, variance 1 (gamma = 1, beta = 0)
    _kernel.forward_train(segments, np.ones(r * s), np.zeros(r * s), float(eps), out_segments,
                          mean, var, threads)
    # 2. the affine step, in place on the normalized values
    has_weight, has_bias = weight is not None, bias is not None
    if has_weight or has_bias:
        p = s * l // repeat  # parameters per row
        weight = np.ones(p) if weight is None else weight
        bias = np.zeros(p) if bias is None else bias
        if repeat == 1:  # one parameter per position (LayerNorm; GroupNorm on (N, C))
            rows = out.reshape(r, p)
            _kernel.scale_shift(rows, weight, bias, rows, threads)
        else:  # one per channel of `repeat` positions: the core's per-channel normalize
            channels = out.reshape(r, p, repeat)
            _kernel.normalize(channels, np.zeros(p), weight, bias, channels, threads)
    invstd = 1.0 / np.sqrt(var + eps)
    cache = SampleNormCache(x3, mean.reshape(r, s), invstd.reshape(r, s), weight, int(repeat),
                            tuple(param_shape), x.shape, has_weight, has_bias)
    return out, cache, var.reshape(r, s)


def _check_sample_cache(layer, op, cache):
    """Raise unless ``cache`` is a :class:`SampleNormCache` as ``op`` made it (its arrays reach
    the kernels, which trust their shapes; see :func:`minidl._checks.check_cache_array`)."""
    if not isinstance(cache, SampleNormCache):
        raise TypeError(f"{layer}: expected the cache returned by {op}, got "
                        f"{type(cache).__name__}")
    x3, weight, repeat, shape = cache.x3, cache.weight, cache.repeat, cache.shape
    ok = (isinstance(x3, np.ndarray) and x3.ndim == 3 and x3.dtype in (np.float32, np.float64)
          and isinstance(shape, tuple) and math.prod(shape) == x3.size
          and _is_count(repeat) and x3.shape[1] * x3.shape[2] % repeat == 0
          and isinstance(cache.param_shape, tuple))
    if ok and weight is not None:
        per_row = x3.shape[1] * x3.shape[2] // repeat
        ok = math.prod(cache.param_shape) == per_row
        check_cache_array(layer, op, "weight", weight, (per_row,), np.float64)
    if not ok:
        raise ValueError(f"{layer}: the cache's x3, weight, repeat or shapes are not what {op} "
                         f"made; pass the cache it returned, unchanged")
    check_cache_array(layer, op, "x3", x3, x3.shape, x3.dtype)
    for field in ("mean", "invstd"):
        check_cache_array(layer, op, field, getattr(cache, field), x3.shape[:2], np.float64)


def _is_count(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _sample_norm_backward(dout, cache, layer, out, op):
    """Gradients of :func:`_sample_norm_forward`: the affine step's backward, then the core's.
    ``op`` is the forward function that made ``cache`` (for error messages)."""
    _check_sample_cache(layer, op, cache)
    x3, mean, invstd, weight, repeat, param_shape, shape, has_weight, has_bias = cache
    check_grad(layer, dout, shape, x3.dtype)
    r, s, l = x3.shape
    dy3 = np.ascontiguousarray(dout).reshape(x3.shape)
    dx3 = _grad_output(layer, out, shape, x3.dtype, dout, x3).reshape(x3.shape)
    threads = _config.threads_for(x3.size)
    dweight = dbias = None
    if weight is not None:
        # 1. the affine step: d xhat = dy * gamma (into dx3), and the parameter gradients
        per_position = np.repeat(weight, repeat).reshape(s, l)
        dw = np.empty((s, l), np.float64)
        db = np.empty((s, l), np.float64)
        _kernel.scale_shift_backward(dy3, x3, mean, invstd, per_position, dx3, dw, db, threads)
        dy3 = dx3
        if has_weight:
            dweight = dw.reshape(-1, repeat).sum(axis=1).reshape(param_shape)
        if has_bias:
            dbias = db.reshape(-1, repeat).sum(axis=1).reshape(param_shape)
    # 2. the core's backward with gamma = 1 (in place when dy3 is dx3)
    segments = (1, r * s, l)
    ones = np.ones(r * s)
    _kernel.backward(dy3.reshape(segments), x3.reshape(segments), mean.reshape(-1),
                     invstd.reshape(-1), ones, True, dx3.reshape(segments),
                     np.empty(r * s), np.empty(r * s), threads)
    return dx3.reshape(shape), dweight, dbias


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5, layer="layer_norm",
                       out=None):
    """Layer-normalize ``x`` over its last ``len(normalized_shape)`` dimensions; like
    ``torch.nn.functional.layer_norm``.

    Ba, Kiros & Hinton (2016), "Layer Normalization", eqs. 3-4: for every position of the
    leading dimensions, over the D = prod(normalized_shape) values behind it,

        mu = 1/D sum x,  var = 1/D sum (x - mu)^2,  y = (x - mu) / sqrt(var + eps) * gamma + beta

    with one gamma and beta per element of ``normalized_shape``. The statistics are the
    sample's own: the same in training and evaluation, no running estimates.

    Args:
        x (np.ndarray): ``(*, *normalized_shape)``, float32 or float64.
        normalized_shape (int or tuple of int): the trailing dimensions to normalize over, e.g.
            ``(C, H, W)`` for a conv map or ``D`` for ``(N, D)`` features.
        weight, bias (np.ndarray or None): gamma and beta of shape ``normalized_shape``; None
            means 1 and 0.
        eps (float): added to the variance before the square root (default 1e-5, as PyTorch).
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (C-contiguous, x's shape and dtype).
    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` for :func:`layer_norm_backward` (a
        :class:`SampleNormCache`, or under the reference backend the reference's).
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray; a parameter or ``eps`` is not
            numeric.
        ValueError: a bad ``normalized_shape``; ``x``'s last dimensions differ from it; an empty
            axis; ``weight``/``bias`` not of ``normalized_shape``; eps not finite and > 0; an
            unusable ``out`` (wrong shape/dtype/layout, read-only, or sharing memory with an
            argument).
        MemoryError: the output would not fit in this machine's memory.
    """
    normalized_shape = shape_tuple(normalized_shape, "normalized_shape", layer)
    check_float_array(layer, x)
    k = len(normalized_shape)
    if x.ndim < k or x.shape[x.ndim - k:] != normalized_shape:
        expected = "(*, " + ", ".join(map(str, normalized_shape)) + ")"
        raise ValueError(f"{layer}: expected input of shape {expected} (its last {k} "
                         f"dimension(s) equal to normalized_shape {normalized_shape}), "
                         f"got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{layer}: expected input with no empty axis, got shape {x.shape}")
    eps = check_eps(layer, eps)
    w = _param_array(layer, weight, normalized_shape, "weight")
    b = _param_array(layer, bias, normalized_shape, "bias")
    out = _output(layer, out, x, weight=weight, bias=bias)
    if get_backend() == "reference":  # reference backend: Ba et al., eqs. 3-4
        return reference.layer_norm_forward(x, normalized_shape, weight, bias, eps, layer, out)
    d = int(np.prod(normalized_shape))
    out, cache, _ = _sample_norm_forward(x, (x.size // d, 1, d), w, b, 1, normalized_shape,
                                         eps, out)
    return out, cache


def layer_norm_backward(dout, cache, layer="layer_norm", out=None):
    """Gradients of :func:`layer_norm_forward`.

    The affine step's backward (``dgamma = sum dy * xhat``, ``dbeta = sum dy`` over the leading
    positions, ``dxhat = dy * gamma``), then the normalization's, per row of D values:
    ``dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps)``.

    Args:
        dout (np.ndarray): d loss / d out, the shape and dtype of the forward output.
        cache: the second value returned by :func:`layer_norm_forward`.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write ``dx`` (C-contiguous, x's shape and dtype).
    Returns:
        (dx, dweight, dbias): ``dx`` like ``x``; ``dweight``, ``dbias`` float64 of
        ``normalized_shape`` (None where the forward had no weight / bias).
    Raises:
        ValueError/TypeError: ``dout`` does not match the forward output; a cache that is not
            the one the forward returned; an unusable ``out`` (wrong shape/dtype/layout,
            read-only, or sharing memory with ``dout`` or the cached input).
    """
    if isinstance(cache, reference.SampleNormCache):  # reference backend: made by its forward
        return _reference_backward(reference.layer_norm_backward, dout, cache, layer, out)
    return _sample_norm_backward(dout, cache, layer, out, "layer_norm_forward")


def _reference_backward(backward, dout, cache, layer, out, **arrays):
    """Check ``dout``, ``out`` and the other gradient-shaped ``arrays`` (keyword: the argument's
    name, passed on to ``backward``; None values are not checked) against a reference cache and
    run the reference ``backward``."""
    check_grad(layer, dout, cache.out_shape, cache.dtype)
    for name, array in arrays.items():
        if array is not None:
            check_grad(layer, array, cache.out_shape, cache.dtype, what=name)
    given = out is not None
    dx = _memory.output(layer, out, cache.out_shape, cache.dtype)
    if given:
        check_no_overlap(layer, "out", dx, gradient=dout, **arrays, **{
            f"the cached {name}": value for name, value in cache._asdict().items()})
    return backward(dout, cache, layer, dx, **arrays)


def group_norm_forward(x, num_groups, weight=None, bias=None, eps=1e-5, layer="group_norm",
                       out=None):
    """Group-normalize ``x``; like ``torch.nn.functional.group_norm``.

    Wu & He (2018), "Group Normalization", eqs. 1-2 and section 3.2: the C channels are split
    into ``G = num_groups`` groups of C/G consecutive channels, and each (sample, group) is
    normalized over its C/G * H * W values; then every channel gets its own gamma and beta.
    ``G = 1`` is LayerNorm over ``(C, H, W)`` with per-channel parameters, ``G = C`` is
    InstanceNorm. The same in training and evaluation, no running estimates.

    Args:
        x (np.ndarray): ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64.
        num_groups (int): G, dividing C.
        weight, bias (np.ndarray or None): gamma and beta, ``(C,)``; None means 1 and 0.
        eps (float): added to the variance before the square root (default 1e-5, as PyTorch).
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result (C-contiguous, x's shape and dtype).
    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` for :func:`group_norm_backward`.
    Raises:
        TypeError: ``x`` is not a float32/float64 ndarray; a parameter or ``eps`` is not
            numeric.
        ValueError: wrong rank or an empty axis; ``num_groups`` not an int >= 1 or not dividing
            C; parameter shapes; eps not finite and > 0; an unusable ``out`` (wrong
            shape/dtype/layout, read-only, or sharing memory with an argument).
        MemoryError: the output would not fit in this machine's memory.
    """
    check_input(layer, x, _LAYOUTS)
    n, c = x.shape[:2]
    groups = positive_int(num_groups, "num_groups", layer)
    if c % groups:
        raise ValueError(f"{layer}: expected the number of channels to be divisible by "
                         f"num_groups={groups}, got input of shape {x.shape} with {c} channels")
    eps = check_eps(layer, eps)
    w = _param_array(layer, weight, (c,), "weight")
    b = _param_array(layer, bias, (c,), "bias")
    out = _output(layer, out, x, weight=weight, bias=bias)
    if get_backend() == "reference":  # reference backend: Wu & He, eqs. 1-2
        return reference.group_norm_forward(x, groups, weight, bias, eps, layer, out)
    hw = x.size // (n * c)
    out, cache, _ = _sample_norm_forward(x, (n, groups, c // groups * hw), w, b, hw, (c,), eps,
                                         out)
    return out, cache


def group_norm_backward(dout, cache, layer="group_norm", out=None):
    """Gradients of :func:`group_norm_forward`: the per-channel affine step's backward, then the
    normalization's per (sample, group).

    Args:
        dout (np.ndarray): d loss / d out, the shape and dtype of the forward output.
        cache: the second value returned by :func:`group_norm_forward`.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write ``dx``.
    Returns:
        (dx, dweight, dbias): ``dx`` like ``x``; ``dweight``, ``dbias`` float64 ``(C,)`` (None
        where the forward had no weight / bias).
    Raises:
        ValueError/TypeError: ``dout`` does not match the forward output; a cache that is not
            the one the forward returned; an unusable ``out`` (wrong shape/dtype/layout,
            read-only, or sharing memory with ``dout`` or the cached input).
    """
    if isinstance(cache, reference.SampleNormCache):  # reference backend: made by its forward
        return _reference_backward(reference.group_norm_backward, dout, cache, layer, out)
    return _sample_norm_backward(dout, cache, layer, out, "group_norm_forward")


def instance_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                          training=True, momentum=0.1, eps=1e-5, layer="instance_norm",
                          out=None):
    """Instance-normalize ``x``; like ``torch.nn.functional.instance_norm``.

    Ulyanov, Vedaldi & Lempitsky (2016), eq. 2: each channel of each sample is normalized over
    its own L (or H*W) values, then (optionally) scaled and shifted per channel.

    With running statistics (PyTorch's InstanceNorm with ``track_running_stats=True``): in
    training they are updated in place with the batch average of the instances' means and of
    their *unbiased* variances, ``running = (1 - momentum) * running + momentum * average``;
    with ``training=False`` they normalize every instance, which is BatchNorm's eval mode
    (:func:`batch_norm_forward` runs it, and returns its cache).

    Args:
        x (np.ndarray): ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64.
        weight, bias (np.ndarray or None): gamma and beta, ``(C,)``; None means 1 and 0.
        running_mean, running_var (np.ndarray or None): ``(C,)`` running estimates (both or
            neither); updated in place when training, used when not.
        training (bool): normalize with each instance's own statistics (True) or the running
            ones (False; needs them).
        momentum (float): running-average factor (PyTorch's convention).
        eps (float): added to the variance before the square root (default 1e-5).
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write the result.
    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` for :func:`instance_norm_backward`.
    Raises:
        TypeError: ``x`` or a running statistic is not a float32/float64 ndarray; ``training``
            is not a bool; ``eps``, ``momentum`` or a parameter is not numeric.
        ValueError: wrong rank or an empty axis; one spatial value per instance when training;
            parameter or statistic shapes; only one running statistic, none in eval, or when
            training a read-only one or one sharing memory with the other or the input; eps not
            finite and > 0; momentum outside [0, 1]; an unusable ``out`` (wrong
            shape/dtype/layout, read-only, or sharing memory with an argument).
        MemoryError: the output would not fit in this machine's memory.
    """
    check_input(layer, x, ("NCL", "NCHW"))
    n, c = x.shape[:2]
    hw = x.size // (n * c)
    training = check_bool(layer, "training", training)
    eps = check_eps(layer, eps)
    momentum = check_number(layer, "momentum", momentum, low=0.0, high=1.0)
    w = _param_array(layer, weight, (c,), "weight")
    b = _param_array(layer, bias, (c,), "bias")
    _check_running_stats(layer, running_mean, running_var, c, training, x)
    if not training:  # the running estimates for every instance: BatchNorm's eval mode
        return batch_norm_forward(x, weight, bias, running_mean, running_var, training=False,
                                  eps=eps, layer=layer, out=out)
    if hw <= 1:
        raise ValueError(f"{layer}: expected more than 1 spatial element when training, got "
                         f"input of shape {x.shape}")
    out = _output(layer, out, x, weight=weight, bias=bias, running_mean=running_mean,
                  running_var=running_var)
    if get_backend() == "reference":  # reference backend: Ulyanov et al., eq. 2
        return reference.instance_norm_forward(x, weight, bias, running_mean, running_var,
                                               training, momentum, eps, layer, out)
    out, cache, var = _sample_norm_forward(x, (n, c, hw), w, b, hw, (c,), eps, out)
    if running_mean is not None:  # the batch average of the instances' statistics
        update_running_stats(running_mean, running_var, cache.mean.mean(axis=0),
                             var.mean(axis=0), hw, momentum)
    return out, cache


def instance_norm_backward(dout, cache, layer="instance_norm", out=None):
    """Gradients of :func:`instance_norm_forward`: as :func:`group_norm_backward` with one
    group per channel, or with running statistics BatchNorm's affine-only backward.

    Args:
        dout (np.ndarray): d loss / d out, the shape and dtype of the forward output.
        cache: the second value returned by :func:`instance_norm_forward`.
        layer (str): name used in error messages.
        out (np.ndarray, optional): where to write ``dx``.
    Returns:
        (dx, dweight, dbias): ``dx`` like ``x``; ``dweight``, ``dbias`` float64 ``(C,)`` (None
        where the forward had no weight / bias).
    Raises:
        ValueError/TypeError: ``dout`` does not match the forward output; a cache that is not
            the one the forward returned; an unusable ``out`` (wrong shape/dtype/layout,
            read-only, or sharing memory with ``dout`` or the cached input).
    """
    if isinstance(cache, (BatchNormCache, reference.BatchNormCache)):  # running statistics
        return batch_norm_backward(dout, cache, layer, out)
    if isinstance(cache, reference.SampleNormCache):  # reference backend: made by its forward
        return _reference_backward(reference.instance_norm_backward, dout, cache, layer, out)
    return _sample_norm_backward(dout, cache, layer, out, "instance_norm_forward")
