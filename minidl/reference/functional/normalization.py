"""Batch, Layer, Group and Instance Normalization step by step: the readable, runnable twins of
:mod:`minidl.functional.normalization` (BatchNorm first; the sample norms from "the sample
norms" below).

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
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ._result import into
from .pooling import max_pool2d_backward, max_pool2d_forward

__all__ = ["BatchNormCache", "SampleNormCache", "batch_sum", "batch_norm_forward",
           "batch_norm_backward", "layer_norm_forward", "layer_norm_backward",
           "group_norm_forward", "group_norm_backward", "instance_norm_forward",
           "instance_norm_backward"]


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
        beta (np.ndarray or None): float64 ``(1, C, 1, ...)`` shift (zeros without a bias), to
            recompute a following ReLU's output in the backward pass (``relu=True``).
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
    beta: Optional[np.ndarray] = None

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
                       training=True, momentum=0.1, eps=1e-5, layer="batch_norm", out=None,
                       relu=False, pool_out=None, pool_argmax=None, pooled_only=False):
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
        relu (bool): return ``max(y, 0)`` (the reference ReLU of the rounded output) instead.
        pool_out, pool_argmax (np.ndarray or None): where to write the 2x2, stride-2 max pool
            of the output (after the ReLU) and its indices: the reference
            :func:`~minidl.reference.functional.pooling.max_pool2d_forward`, run after this.
        pooled_only (bool): return None instead of the output (computed all the same).
    Returns:
        (out, cache): ``out`` has the shape and dtype of ``x``; ``cache`` is a
        :class:`BatchNormCache` (BatchNorm's own, also with ``relu``).
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
                           weight is not None, bias is not None, beta)
    y = y.astype(x.dtype)
    if relu:  # the ReLU that follows, applied here (minidl.Sequential's fusion)
        y = np.maximum(y, 0)
    y = into(out, y)
    if pool_out is not None:  # the MaxPool2D(2) that follows (minidl.Sequential's fusion)
        max_pool2d_forward(y, 2, out=pool_out, argmax=pool_argmax)
    return (None if pooled_only else y), cache


def batch_norm_backward(dout, cache, layer="batch_norm", out=None, relu_output=None,
                        pool_cache=None, relu=False):
    """Gradients of :func:`batch_norm_forward` by the chain rule of section 3.

    Same arguments and results as :func:`minidl.functional.batch_norm_backward` (``layer`` is
    ignored).

    Args:
        dout (np.ndarray): d loss / d y, the shape and dtype of the forward output.
        cache (BatchNormCache): the second value returned by :func:`batch_norm_forward`.
        out (np.ndarray or None): where to write ``dx``; a new array when None.
        relu_output (np.ndarray or None): the output of a ReLU applied to ``y``; ``dout`` is
            then d loss / d relu(y), and the ReLU's backward comes first: ``dout`` where
            ``relu_output > 0``, else 0.
        pool_cache (MaxPool2dCache or None): the cache of a max pool applied after that;
            ``dout`` is then d loss / d pooled output, and the pool's backward
            (:func:`~minidl.reference.functional.pooling.max_pool2d_backward`) comes first.
        relu (bool): as ``relu_output``, with the ReLU's output recomputed from the cache:
            ``max(gamma * xhat + beta, 0)`` rounded to the input's dtype, as the forward did.
    Returns:
        (dx, dweight, dbias): ``dx`` like the input; ``dweight`` and ``dbias`` float64
        ``(C,)`` (None where the forward had no weight / bias). In training mode ``dx``
        includes the paths through mu_B and sigma_B^2; in eval mode it is the affine part only.
    """
    x, mean, var, gamma, eps, training, dtype, has_weight, has_bias, beta = cache
    m = x.size // x.shape[1]
    if relu:  # the forward's output, recomputed as it computed it
        y = (gamma * ((x - mean) / np.sqrt(var + eps)) + beta).astype(dtype)
        relu_output = np.maximum(y, 0)
    if pool_cache is not None:  # the pool's backward
        dout = max_pool2d_backward(dout, pool_cache)
    if relu_output is not None:  # the ReLU's backward (its gradient at 0 is 0)
        dout = np.where(relu_output <= 0, 0, dout).astype(dtype)
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


# =============================================================================== the sample norms
# LayerNorm, GroupNorm and InstanceNorm take their statistics inside each sample. Wu & He (2018),
# "Group Normalization", section 3.1, write all of them (and BatchNorm) as one computation over a
# set S_i of values that share the statistics of value i:
#
#     mu_i    = 1/m sum_{k in S_i} x_k                       (eq. 2)
#     sigma_i = sqrt(1/m sum_{k in S_i} (x_k - mu_i)^2 + eps)  (eq. 2)
#     xhat_i  = (x_i - mu_i) / sigma_i                        (eq. 1)
#
# and they differ only in S_i. Below, each forward reshapes its input so that every set S_i is
# one row of the last axis (``_normalize_rows``), then applies its own gamma and beta.

class SampleNormCache(NamedTuple):
    """What :func:`layer_norm_backward`, :func:`group_norm_backward` and
    :func:`instance_norm_backward` (with the instances' own statistics) need.

    Attributes:
        x (np.ndarray): the input as float64 (a copy), reshaped so that each set S_i is one row
            of the last axis (LayerNorm ``(R, H)``, GroupNorm ``(N, G, C/G*H*W)``,
            InstanceNorm ``(N, C, H*W)``).
        mean, var (np.ndarray): float64 mean and biased variance of each row, with the last axis
            kept (length 1) so they broadcast against ``x``.
        eps (float): added to the variance.
        gamma (np.ndarray or None): float64 scale, shaped to broadcast against the *input*
            (None: no weight).
        param_axes (tuple of int): the input's axes that ``dgamma``, ``dbeta`` sum over.
        shape (tuple of int): the input's shape. dtype (np.dtype): its dtype.
        has_weight, has_bias (bool): whether to return ``dweight`` / ``dbias``.
    """

    x: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float
    gamma: np.ndarray
    param_axes: Tuple[int, ...]
    shape: Tuple[int, ...]
    dtype: np.dtype
    has_weight: bool
    has_bias: bool

    @property
    def out_shape(self) -> Tuple[int, ...]:
        """The shape of the output, and of ``dout``: the input's."""
        return self.shape


def _normalize_rows(x_rows, eps):
    """Normalize each row (last axis) of float64 ``x_rows``: Wu & He (2018), eqs. 1-2.

    Returns:
        (xhat, mean, var): ``xhat`` like ``x_rows``; ``mean`` and ``var`` with the last axis
        kept.
    """
    m = x_rows.shape[-1]                                       # |S_i|, the values per set
    mean = x_rows.sum(axis=-1, keepdims=True) / m              # mu_i      = 1/m sum_k x_k
    var = ((x_rows - mean) ** 2).sum(axis=-1, keepdims=True) / m  # sigma_i^2 = 1/m sum_k (x_k - mu_i)^2
    xhat = (x_rows - mean) / np.sqrt(var + eps)               # xhat_i    = (x_i - mu_i) / sqrt(sigma_i^2 + eps)
    return xhat, mean, var


def _sample_norm_backward(dout, cache, out):
    """Gradients of a sample norm: the affine step's, then the chain rule through eqs. 1-2.

    The same three chain-rule lines as BatchNorm's (:func:`batch_norm_backward`), with the sums
    over each set S_i (one row of the last axis) instead of over the mini-batch.
    """
    x, mean, var, eps, gamma, param_axes, shape, dtype, has_weight, has_bias = cache
    m = x.shape[-1]
    dy = dout.astype(np.float64)
    xhat = ((x - mean) / np.sqrt(var + eps)).reshape(shape)

    dbeta = dy.sum(axis=param_axes)                           # dl/dbeta  = sum dl/dy
    dgamma = (dy * xhat).sum(axis=param_axes)                 # dl/dgamma = sum dl/dy xhat
    dxhat = (dy if gamma is None else dy * gamma).reshape(x.shape)  # dl/dxhat = dl/dy gamma


    def row_sum(a):                                           # sum over k in S_i
        return a.sum(axis=-1, keepdims=True)

    # dl/dsigma_i^2 = sum_k dl/dxhat_k (x_k - mu_i) (-1/2) (sigma_i^2 + eps)^(-3/2)
    dvar = row_sum(dxhat * (x - mean)) * -0.5 * (var + eps) ** -1.5
    # dl/dmu_i = sum_k dl/dxhat_k (-1 / sqrt(sigma_i^2 + eps)) + dl/dsigma_i^2 sum_k -2 (x_k - mu_i) / m
    dmean = row_sum(-dxhat / np.sqrt(var + eps)) + dvar * row_sum(-2 * (x - mean)) / m
    # dl/dx_i = dl/dxhat_i / sqrt(sigma_i^2 + eps) + dl/dsigma_i^2 2 (x_i - mu_i) / m + dl/dmu_i / m
    dx = dxhat / np.sqrt(var + eps) + dvar * 2 * (x - mean) / m + dmean / m

    dweight = dgamma if has_weight else None
    dbias = dbeta if has_bias else None
    return into(out, dx.reshape(shape).astype(dtype)), dweight, dbias


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5, layer="layer_norm",
                       out=None):
    """Layer-normalize ``x`` over its last dimensions: Ba, Kiros & Hinton (2016), eqs. 3-4.

    "Layer Normalization" computes the statistics over the H hidden units of one layer, for each
    training case separately (Wu & He's S_i = all values of the same sample), and then applies a
    gain ``g`` and a bias ``b`` of their own to each unit. Here the "units" are the trailing
    ``normalized_shape`` dimensions, as in PyTorch. Same arguments and results as
    :func:`minidl.functional.layer_norm_forward` (``layer`` is ignored).

    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` is a :class:`SampleNormCache`.
    """
    H = int(np.prod(normalized_shape))                        # units per layer
    rows = x.astype(np.float64).reshape(-1, H)                # one row per case: its H units
    # eq. 3: mu = 1/H sum_i a_i, sigma = sqrt(1/H sum_i (a_i - mu)^2); eq. 4: (a - mu) / sigma
    # (eps inside the square root, as in PyTorch)
    xhat, mean, var = _normalize_rows(rows, eps)
    xhat = xhat.reshape(x.shape)
    gain = None if weight is None else np.asarray(weight, np.float64)   # g, per unit
    y = xhat if gain is None else gain * xhat                 # eq. 4: g / sigma (a - mu)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)                  #        ... + b
    param_axes = tuple(range(x.ndim - len(normalized_shape)))  # the gradients sum over the cases
    cache = SampleNormCache(rows, mean, var, float(eps), gain, param_axes, x.shape, x.dtype,
                            weight is not None, bias is not None)
    return into(out, y.astype(x.dtype)), cache


def layer_norm_backward(dout, cache, layer="layer_norm", out=None):
    """Gradients of :func:`layer_norm_forward` by the chain rule (see
    :func:`_sample_norm_backward`). Same arguments and results as
    :func:`minidl.functional.layer_norm_backward`.

    Returns:
        (dx, dweight, dbias): ``dx`` like the input; ``dweight`` and ``dbias`` float64 of
        ``normalized_shape`` (None where the forward had no weight / bias).
    """
    return _sample_norm_backward(dout, cache, out)


def _per_channel_param(value, ndim):
    """A ``(C,)`` parameter as float64 ``(1, C, 1, ...)``, or None."""
    if value is None:
        return None
    return np.asarray(value, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def _per_channel_affine(xhat, weight, bias):
    """``y = gamma_c xhat + beta_c`` with one gamma and beta per channel (axis 1)."""
    gamma = _per_channel_param(weight, xhat.ndim)
    y = xhat if gamma is None else gamma * xhat
    if bias is not None:
        y = y + _per_channel_param(bias, xhat.ndim)
    return y, gamma


def group_norm_forward(x, num_groups, weight=None, bias=None, eps=1e-5, layer="group_norm",
                       out=None):
    """Group-normalize ``x``: Wu & He (2018), "Group Normalization", eqs. 1-2 and section 3.2.

    The channels are split into ``G = num_groups`` groups of ``C/G`` consecutive channels; the
    set of GN is S_i = {k | k_N = i_N, floor(k_C / (C/G)) = floor(i_C / (C/G))}: the same sample,
    the same group (all their spatial positions). Each channel then gets its own gamma and beta
    ("a per-channel linear transform", section 3.1). Same arguments and results as
    :func:`minidl.functional.group_norm_forward` (``layer`` is ignored).

    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` is a :class:`SampleNormCache`.
    """
    n = x.shape[0]
    groups = x.astype(np.float64).reshape(n, num_groups, -1)  # row (n, g) = S_i of GN
    xhat, mean, var = _normalize_rows(groups, eps)            # eqs. 1-2
    y, gamma = _per_channel_affine(xhat.reshape(x.shape), weight, bias)  # y_i = gamma xhat_i + beta
    param_axes = (0,) + tuple(range(2, x.ndim))               # all but the channel axis
    cache = SampleNormCache(groups, mean, var, float(eps), gamma, param_axes, x.shape, x.dtype,
                            weight is not None, bias is not None)
    return into(out, y.astype(x.dtype)), cache


def group_norm_backward(dout, cache, layer="group_norm", out=None):
    """Gradients of :func:`group_norm_forward` by the chain rule (see
    :func:`_sample_norm_backward`). Same arguments and results as
    :func:`minidl.functional.group_norm_backward`.

    Returns:
        (dx, dweight, dbias): ``dx`` like the input; ``dweight``, ``dbias`` float64 ``(C,)``.
    """
    return _sample_norm_backward(dout, cache, out)


def instance_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                          training=True, momentum=0.1, eps=1e-5, layer="instance_norm",
                          out=None):
    """Instance-normalize ``x``: Ulyanov, Vedaldi & Lempitsky (2016), eq. 2.

    "Instance Normalization: The Missing Ingredient for Fast Stylization" normalizes each
    channel ``i`` of each image ``t`` over its own H x W positions:

        y_tijk = (x_tijk - mu_ti) / sqrt(sigma_ti^2 + eps)
        mu_ti = 1/(HW) sum_l sum_m x_tilm,   sigma_ti^2 = 1/(HW) sum_l sum_m (x_tilm - mu_ti)^2

    then (as in PyTorch, with ``weight``/``bias``) applies a per-channel gamma and beta.

    Running estimates (PyTorch's InstanceNorm with ``track_running_stats``): in training,
    ``running = (1 - momentum) * running + momentum * (the average over the batch of the
    instances' mu_ti, and of their unbiased variances sigma_ti^2 * HW / (HW - 1))``. With
    ``training=False`` the running estimates replace mu_ti and sigma_ti^2 for every instance:
    per channel, exactly BatchNorm's inference (Algorithm 2), so that is what runs.

    Same arguments and results as :func:`minidl.functional.instance_norm_forward` (``layer`` is
    ignored).

    Returns:
        (out, cache): ``out`` like ``x``; ``cache`` is a :class:`SampleNormCache` (training) or
        a :class:`BatchNormCache` (running statistics).
    """
    if not training:  # the running estimates for every instance: BatchNorm's Algorithm 2
        return batch_norm_forward(x, weight, bias, running_mean, running_var, False, momentum,
                                  eps, layer, out)
    n, c = x.shape[:2]
    instances = x.astype(np.float64).reshape(n, c, -1)        # row (t, i): channel i of image t
    xhat, mean, var = _normalize_rows(instances, eps)         # eq. 2: mu_ti, sigma_ti^2
    if running_mean is not None:
        hw = instances.shape[-1]
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean.mean(axis=0).ravel()
        running_var[...] = ((1 - momentum) * running_var
                            + momentum * (var * hw / (hw - 1)).mean(axis=0).ravel())
    y, gamma = _per_channel_affine(xhat.reshape(x.shape), weight, bias)
    param_axes = (0,) + tuple(range(2, x.ndim))
    cache = SampleNormCache(instances, mean, var, float(eps), gamma, param_axes, x.shape,
                            x.dtype, weight is not None, bias is not None)
    return into(out, y.astype(x.dtype)), cache


def instance_norm_backward(dout, cache, layer="instance_norm", out=None):
    """Gradients of :func:`instance_norm_forward`: the chain rule through eq. 2 (see
    :func:`_sample_norm_backward`), or with running statistics BatchNorm's affine-only backward.
    Same arguments and results as :func:`minidl.functional.instance_norm_backward`.

    Returns:
        (dx, dweight, dbias): ``dx`` like the input; ``dweight``, ``dbias`` float64 ``(C,)``.
    """
    if isinstance(cache, BatchNormCache):
        return batch_norm_backward(dout, cache, layer, out)
    return _sample_norm_backward(dout, cache, out)
