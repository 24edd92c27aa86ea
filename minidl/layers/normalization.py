"""Normalization layers: BatchNorm (per channel and per activation), InstanceNorm, LayerNorm,
GroupNorm.

What each averages over, for an ``(N, C, H, W)`` input:

===================  =============================  ==========================================
layer                statistics over                parameters (gamma, beta)
===================  =============================  ==========================================
BatchNorm            N, H, W (per channel)          per channel; running estimates
PerActivationBN      N (per (c, h, w) position)     per position; running estimates
InstanceNorm         H, W (per sample and channel)  per channel, optional; running optional
GroupNorm            C/G, H, W (per sample, group)  per channel
LayerNorm            normalized_shape (per sample)  per element of normalized_shape
===================  =============================  ==========================================

The layers with running estimates share one base class, :class:`_NormBase`, which owns the
constructor, the parameters and buffers, the choice between batch and running statistics, and
forward/backward; the public classes only say which input ranks they accept and which
functional op they run. LayerNorm and GroupNorm have no state but their parameters
(:class:`_SampleNorm`). The math is in :mod:`minidl.functional.normalization`.
"""
import math

import numpy as np

from ..functional.normalization import (batch_norm_backward, batch_norm_forward,
                                        group_norm_backward, group_norm_forward,
                                        instance_norm_backward, instance_norm_forward,
                                        layer_norm_backward, layer_norm_forward)
from .._checks import check_float_array, check_grad, check_input, positive_int, shape_tuple
from .._grad_mode import save_for_backward, saved_for_backward
from .module import Module, Parameter

__all__ = ["BatchNorm", "BatchNorm1D", "BatchNorm2D", "PerActivationBatchNorm", "InstanceNorm",
           "InstanceNorm1D", "InstanceNorm2D", "LayerNorm", "GroupNorm"]


class _NormBase(Module):
    """Shared state and logic of the BatchNorm and InstanceNorm variants (see :class:`BatchNorm`).

    A subclass sets ``_layouts`` (the input ranks it accepts) and, to run another functional
    op with BatchNorm's arguments, ``_forward_op`` / ``_backward_op``.
    """

    _layouts = ("NC", "NCL", "NCHW")
    _forward_op = staticmethod(batch_norm_forward)
    _backward_op = staticmethod(batch_norm_backward)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        num_features = positive_int(num_features, "num_features", name)
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, dtype))
            self.bias = Parameter(np.zeros(self.num_features, dtype))
        else:
            self.weight = None
            self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(self.num_features, dtype))
            self.register_buffer("running_var", np.ones(self.num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._cache = None

    def reset_running_stats(self):
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        """Reset the running statistics, gamma to 1 and beta to 0."""
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def forward(self, x):
        name = type(self).__name__
        check_input(name, x, self._layouts, {"C": self.num_features})
        use_batch_stats = self.training or not self.track_running_stats
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
            else:
                factor = self.momentum
        update = self.training and self.track_running_stats
        self._cache = None  # drops the previous step's input before this pass allocates
        running = update or not use_batch_stats
        out, cache = self._forward_op(
            x,
            None if self.weight is None else self.weight.data.reshape(-1),
            None if self.bias is None else self.bias.data.reshape(-1),
            self.running_mean.reshape(-1) if running else None,
            self.running_var.reshape(-1) if running else None,
            training=use_batch_stats,
            momentum=factor,
            eps=self.eps,
            layer=name,
        )
        self._cache = save_for_backward(cache)
        return out

    def backward(self, dout, input_grad=True):
        """Accumulate parameter gradients; return d loss / d x, or None when ``input_grad`` is
        False (see :meth:`Module.backward`)."""
        cache = saved_for_backward(type(self).__name__, self._cache)
        dx, dweight, dbias = self._backward_op(dout, cache, layer=type(self).__name__)
        if self.affine:
            self.weight.accumulate_grad(dweight.reshape(self.weight.shape))
            self.bias.accumulate_grad(dbias.reshape(self.bias.shape))
        # the kernel forms dx together with the parameter gradients' sums, so nothing is saved
        # without input_grad; dx is dropped (its memory goes back to the cache)
        return dx if input_grad else None

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm(_NormBase):
    r"""Batch Normalization over the channel axis (axis 1) of ``(N, C)``, ``(N, C, L)`` or
    ``(N, C, H, W)`` inputs.

    Ioffe & Szegedy, 2015, "Batch Normalization: Accelerating Deep Network Training by Reducing
    Internal Covariate Shift", Algorithm 1:

        y = (x - E[x]) / sqrt(Var[x] + eps) * gamma + beta

    with one ``gamma`` (``weight``) and one ``beta`` (``bias``) per channel. The statistics are
    per channel, over N values for ``(N, C)`` and over N*H*W values for ``(N, C, H, W)``
    (the "convolutional" BatchNorm of section 3.2).

    In training mode the layer normalizes with the batch mean and the *biased* batch variance,
    and updates the running estimates with the *unbiased* variance:

        running_mean = (1 - momentum) * running_mean + momentum * batch_mean
        running_var  = (1 - momentum) * running_var  + momentum * batch_var * m / (m - 1)

    This is PyTorch's momentum convention (Keras/TensorFlow use ``1 - momentum``). With
    ``momentum=None`` the running estimates are the cumulative average over
    ``num_batches_tracked`` batches. ``eps=1e-5`` is PyTorch's default too. In eval mode the
    running estimates are used and nothing is updated, so each sample's output is independent of
    the rest of its batch; the backward pass is then the affine part only.

    Args:
        num_features (int): C, the number of channels.
        eps (float): added to the variance for stability. Default 1e-5.
        momentum (float or None): running-average factor. Default 0.1.
        affine (bool): learn ``weight`` (init 1) and ``bias`` (init 0). Default True.
        track_running_stats (bool): keep ``running_mean`` (init 0), ``running_var`` (init 1) and
            ``num_batches_tracked``; if False, batch statistics are used in eval mode too.
        dtype: dtype of the parameters and buffers, float32 (default) or float64.

    Shape:
        input ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64; output: the same
        shape and dtype.

    Raises:
        TypeError: a non-float input. ValueError: wrong rank or channel count, or training with
        one value per channel (N*H*W == 1).

    Example:
        >>> bn = BatchNorm(32)
        >>> y = bn(np.random.randn(8, 32, 14, 14).astype(np.float32))   # training mode
        >>> bn.eval(); y = bn(x)                                          # running statistics
    """


class BatchNorm1D(BatchNorm):
    """:class:`BatchNorm` that accepts only ``(N, C)`` or ``(N, C, L)`` inputs."""

    _layouts = ("NC", "NCL")


class BatchNorm2D(BatchNorm):
    """:class:`BatchNorm` that accepts only ``(N, C, H, W)`` inputs."""

    _layouts = ("NCHW",)


class PerActivationBatchNorm(_NormBase):
    r"""Batch Normalization with statistics per activation: every ``(c, h, w)`` position is
    normalized over the N samples of the batch.

    Ioffe & Szegedy (2015), Algorithm 1 as the paper states it for a fully connected layer: each
    activation ``x^(k)`` gets its own mean, variance, ``gamma^(k)`` and ``beta^(k)``. For a conv
    map that means C*H*W statistics and parameters, the alternative that section 3.2 sets aside
    in favour of :class:`BatchNorm`'s per-channel statistics (which respect the convolutional
    property: every location of a feature map is normalized the same way). This layer lets you
    compare the two. It is exactly ``BatchNorm1D(C*H*W)`` applied to ``x.reshape(N, -1)``, and
    runs the same kernel (the ``(N, C*H*W, 1)`` view of ``_batchnorm.pyx``).

    It is its own class rather than an option of :class:`BatchNorm` because its parameters and
    running estimates have one entry per position: it must know the whole shape of a sample,
    ``(C, H, W)``, when it is built, where BatchNorm needs only ``C``.

    Training, eval, ``momentum`` (PyTorch's convention, ``None`` for a cumulative average),
    ``eps`` and the unbiased running variance are exactly :class:`BatchNorm`'s, with m = N.

    Args:
        feature_shape (int or tuple of int): the shape of one sample, e.g. ``(C, H, W)``,
            ``(C, L)`` or ``C``.
        eps (float): added to the variance. Default 1e-5.
        momentum (float or None): running-average factor. Default 0.1.
        affine (bool): learn ``weight`` (init 1) and ``bias`` (init 0), of ``feature_shape``.
        track_running_stats (bool): keep ``running_mean``, ``running_var`` (of ``feature_shape``)
            and ``num_batches_tracked``.
        dtype: dtype of the parameters and buffers, float32 (default) or float64.

    Shape:
        input ``(N, *feature_shape)``, float32 or float64; output: the same shape and dtype.

    Raises:
        TypeError: a non-float input. ValueError: a bad ``feature_shape``; an input whose shape
        after N differs from it; training with N == 1.

    Example:
        >>> bn = PerActivationBatchNorm((32, 14, 14))
        >>> y = bn(np.random.randn(8, 32, 14, 14).astype(np.float32))
    """

    _layouts = ("NC",)

    def __init__(self, feature_shape, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        shape = shape_tuple(feature_shape, "feature_shape", type(self).__name__)
        super().__init__(math.prod(shape), eps, momentum, affine, track_running_stats, dtype)
        self.feature_shape = shape
        if self.affine:
            self.weight = Parameter(self.weight.data.reshape(shape))
            self.bias = Parameter(self.bias.data.reshape(shape))
        if self.track_running_stats:
            self.running_mean = self.running_mean.reshape(shape)
            self.running_var = self.running_var.reshape(shape)
        self._input = None  # (shape, dtype) of the last input, to check dout against

    def forward(self, x):
        name = type(self).__name__
        check_float_array(name, x)
        if x.shape[1:] != self.feature_shape or x.shape[0] == 0:
            dims = ", ".join(map(str, self.feature_shape))
            raise ValueError(f"{name}: expected input of shape (N, {dims}), got shape {x.shape}")
        if self.training and x.shape[0] == 1:
            raise ValueError(f"{name}: expected more than 1 sample per activation when training, "
                             f"got input of shape {x.shape}")
        self._input = (x.shape, x.dtype)
        return super().forward(x.reshape(x.shape[0], -1)).reshape(x.shape)

    def backward(self, dout, input_grad=True):
        """Accumulate parameter gradients; return d loss / d x (None when ``input_grad`` is
        False)."""
        name = type(self).__name__
        saved_for_backward(name, self._cache)  # raises if there is no forward pass to use
        shape, dtype = self._input
        check_grad(name, dout, shape, dtype)
        dx = super().backward(dout.reshape(shape[0], -1), input_grad)
        return None if dx is None else dx.reshape(shape)

    def extra_repr(self):
        return (f"{self.feature_shape}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class InstanceNorm(_NormBase):
    r"""Instance Normalization: each channel of each sample normalized over its own positions;
    ``(N, C, L)`` or ``(N, C, H, W)`` inputs.

    Ulyanov, Vedaldi & Lempitsky (2016), "Instance Normalization: The Missing Ingredient for
    Fast Stylization", eq. 2:

        y_nc = (x_nc - mean(x_nc)) / sqrt(var(x_nc) + eps) * gamma_c + beta_c

    over the L (or H*W) values of channel c of sample n, with the biased variance. PyTorch's
    ``InstanceNorm1d``/``InstanceNorm2d`` semantics and defaults: no ``weight``/``bias`` unless
    ``affine=True``, no running estimates unless ``track_running_stats=True``. With them, training
    updates ``running = (1 - momentum) * running + momentum * average over the batch of the
    instances' mean (and unbiased variance)``, and eval mode normalizes every instance with the
    running estimates (then a sample's output does not depend on its own statistics); without
    them, both modes use each instance's own statistics.

    Differences from PyTorch: ``momentum=None`` gives a cumulative average here, as in
    :class:`BatchNorm`, and ``num_batches_tracked`` counts the batches (PyTorch's InstanceNorm
    then uses momentum 0, so its running estimates never move, and leaves the counter at 0); an
    input whose channel count differs from ``num_features`` is an error even without affine
    parameters (PyTorch only warns); unbatched ``(C, L)`` input is not accepted.

    Args:
        num_features (int): C, the number of channels.
        eps (float): added to the variance. Default 1e-5.
        momentum (float or None): running-average factor. Default 0.1.
        affine (bool): learn ``weight`` (init 1) and ``bias`` (init 0), ``(C,)``. Default False.
        track_running_stats (bool): keep ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` and use them in eval mode. Default False.
        dtype: dtype of the parameters and buffers, float32 (default) or float64.

    Shape:
        input ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64; output: the same.

    Raises:
        TypeError: a non-float input. ValueError: wrong rank or channel count; one spatial
        value per instance (L or H*W == 1) when the instances' statistics are used.

    Example:
        >>> norm = InstanceNorm(16, affine=True)
        >>> y = norm(np.random.randn(4, 16, 32, 32).astype(np.float32))
    """

    _layouts = ("NCL", "NCHW")
    _forward_op = staticmethod(instance_norm_forward)
    _backward_op = staticmethod(instance_norm_backward)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)


class InstanceNorm1D(InstanceNorm):
    """:class:`InstanceNorm` that accepts only ``(N, C, L)`` inputs (PyTorch's InstanceNorm1d)."""

    _layouts = ("NCL",)


class InstanceNorm2D(InstanceNorm):
    """:class:`InstanceNorm` that accepts only ``(N, C, H, W)`` inputs (PyTorch's
    InstanceNorm2d)."""

    _layouts = ("NCHW",)


class _SampleNorm(Module):
    """Shared parts of LayerNorm and GroupNorm: optional ``weight``/``bias`` and the backward.

    Their statistics are each sample's own, so there are no buffers and no train/eval
    difference. A subclass's ``forward`` stores its functional cache in ``_cache`` and sets
    ``_backward_op``.
    """

    def __init__(self, eps, shape, weight, bias, dtype):
        super().__init__()
        name = type(self).__name__
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        self.eps = float(eps)
        self.weight = Parameter(np.ones(shape, dtype)) if weight else None
        self.bias = Parameter(np.zeros(shape, dtype)) if bias else None
        self._cache = None

    def reset_parameters(self):
        """gamma to 1 and beta to 0."""
        if self.weight is not None:
            self.weight.data[...] = 1
        if self.bias is not None:
            self.bias.data[...] = 0

    def _parameter_data(self):
        return (None if self.weight is None else self.weight.data,
                None if self.bias is None else self.bias.data)

    def backward(self, dout, input_grad=True):
        """Accumulate parameter gradients; return d loss / d x, or None when ``input_grad`` is
        False (see :meth:`Module.backward`)."""
        name = type(self).__name__
        cache = saved_for_backward(name, self._cache)
        dx, dweight, dbias = self._backward_op(dout, cache, layer=name)
        if self.weight is not None:
            self.weight.accumulate_grad(dweight)
        if self.bias is not None:
            self.bias.accumulate_grad(dbias)
        return dx if input_grad else None


class LayerNorm(_SampleNorm):
    r"""Layer Normalization over the last dimensions of the input.

    Ba, Kiros & Hinton (2016), "Layer Normalization", eqs. 3-4: each sample (each position of
    the leading dimensions) is normalized over the D = prod(normalized_shape) values behind it,

        y = (x - mean) / sqrt(var + eps) * gamma + beta

    with the biased variance and one gamma and beta per element of ``normalized_shape``
    ("elementwise affine"), as PyTorch's ``nn.LayerNorm``. Training and eval mode compute the
    same thing; there are no running estimates, and a sample's output never depends on the
    rest of its batch.

    For a conv map ``(N, C, H, W)`` use ``normalized_shape=(C, H, W)`` (gamma, beta per
    position); ``GroupNorm(1, C)`` normalizes over the same values with per-channel gamma, beta.

    Args:
        normalized_shape (int or tuple of int): the trailing dimensions to normalize over.
        eps (float): added to the variance. Default 1e-5.
        elementwise_affine (bool): learn ``weight`` (init 1) and ``bias`` (init 0) of
            ``normalized_shape``. Default True.
        bias (bool): with ``elementwise_affine``, learn ``bias`` too (PyTorch's ``bias=False``
            keeps only ``weight``). Default True.
        dtype: dtype of the parameters, float32 (default) or float64.

    Shape:
        input ``(*, *normalized_shape)``, float32 or float64; output: the same shape and dtype.

    Raises:
        TypeError: a non-float input. ValueError: a bad ``normalized_shape`` or ``eps``; an input
        whose last dimensions differ from ``normalized_shape``.

    Example:
        >>> ln = LayerNorm((32, 14, 14))
        >>> y = ln(np.random.randn(8, 32, 14, 14).astype(np.float32))
    """

    _backward_op = staticmethod(layer_norm_backward)

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        shape = shape_tuple(normalized_shape, "normalized_shape", type(self).__name__)
        affine = bool(elementwise_affine)
        super().__init__(eps, shape, affine, affine and bool(bias), dtype)
        self.normalized_shape = shape
        self.elementwise_affine = affine

    def forward(self, x):
        name = type(self).__name__
        self._cache = None
        weight, bias = self._parameter_data()
        out, cache = layer_norm_forward(x, self.normalized_shape, weight, bias, self.eps,
                                        layer=name)
        self._cache = save_for_backward(cache)
        return out

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class GroupNorm(_SampleNorm):
    r"""Group Normalization: the channels in groups, each (sample, group) normalized on its own.

    Wu & He (2018), "Group Normalization", eqs. 1-2 and section 3.2: the C channels are split into
    ``num_groups`` groups of C/G consecutive channels, and each group of each sample is
    normalized over its C/G * H * W values (biased variance); then each *channel* gets its own
    gamma and beta. ``GroupNorm(1, C)`` normalizes each sample over ``(C, H, W)`` (a LayerNorm
    with per-channel parameters), ``GroupNorm(C, C)`` is an InstanceNorm with affine
    parameters. PyTorch's ``nn.GroupNorm`` semantics; the same in training and eval mode, no
    running estimates, so it behaves the same at any batch size (the paper's point: batch 2 as
    batch 32).

    Args:
        num_groups (int): G, the number of groups; must divide ``num_channels``.
        num_channels (int): C.
        eps (float): added to the variance. Default 1e-5.
        affine (bool): learn ``weight`` (init 1) and ``bias`` (init 0), ``(C,)``. Default True.
        dtype: dtype of the parameters, float32 (default) or float64.

    Shape:
        input ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64; output: the same.

    Raises:
        TypeError: a non-float input. ValueError: ``num_channels`` not divisible by
        ``num_groups``; a bad ``eps``; wrong rank or channel count.

    Example:
        >>> gn = GroupNorm(8, 32)
        >>> y = gn(np.random.randn(2, 32, 14, 14).astype(np.float32))
    """

    _backward_op = staticmethod(group_norm_backward)

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        name = type(self).__name__
        groups = positive_int(num_groups, "num_groups", name)
        channels = positive_int(num_channels, "num_channels", name)
        if channels % groups:
            raise ValueError(f"{name}: num_channels ({channels}) must be divisible by "
                             f"num_groups ({groups})")
        super().__init__(eps, (channels,), affine, affine, dtype)
        self.num_groups = groups
        self.num_channels = channels
        self.affine = bool(affine)

    def forward(self, x):
        name = type(self).__name__
        check_input(name, x, ("NC", "NCL", "NCHW"), {"C": self.num_channels})
        self._cache = None
        weight, bias = self._parameter_data()
        out, cache = group_norm_forward(x, self.num_groups, weight, bias, self.eps, layer=name)
        self._cache = save_for_backward(cache)
        return out

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
