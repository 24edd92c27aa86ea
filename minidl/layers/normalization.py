"""Normalization layers: BatchNorm (per channel and per activation), InstanceNorm, LayerNorm,
GroupNorm.

What each averages over, for an ``(N, C, H, W)`` input:

===================  =============================  ==========================================
layer                statistics over                parameters (gamma, beta)
===================  =============================  ==========================================
BatchNorm            N, H, W (per channel)          per channel; running estimates
SyncBatchNorm        N, H, W of all processes       as BatchNorm
PerActivationBN      N (per (c, h, w) position)     per position; running estimates
InstanceNorm         H, W (per sample and channel)  per channel, optional; running optional
GroupNorm            C/G, H, W (per sample, group)  per channel
LayerNorm            normalized_shape (per sample)  per element of normalized_shape
===================  =============================  ==========================================

The layers with running estimates share one base class, :class:`_NormBase`, which owns the
constructor, the parameters and buffers, the choice between batch and running statistics, and
forward/backward; the public classes only say which input ranks they accept and which
functional op they run (SyncBatchNorm: the synchronized op in training, BatchNorm's in eval). LayerNorm and GroupNorm have no state but their parameters
(:class:`_SampleNorm`). The math is in :mod:`minidl.functional.normalization`.
"""
import functools
import math

import numpy as np

from ..functional.normalization import (SyncBatchNormCache, batch_norm_backward,
                                        batch_norm_forward, group_norm_backward,
                                        group_norm_forward, instance_norm_backward,
                                        instance_norm_forward, layer_norm_backward,
                                        layer_norm_forward, sync_batch_norm_backward,
                                        sync_batch_norm_forward)
from .._checks import (check_allocation, check_bool, check_eps, check_float_array, check_grad,
                       check_input, check_kept, check_number, float_dtype, positive_int,
                       shape_tuple)
from .. import _memory
from .._grad_mode import is_grad_enabled, saved_for_backward
from ..functional.activation import ReluCache
from ..functional.normalization import batch_norm_output
from ..functional.pooling import MaxPool2dCache
from .module import Module, Parameter

__all__ = ["BatchNorm", "BatchNorm1D", "BatchNorm2D", "SyncBatchNorm", "PerActivationBatchNorm",
           "InstanceNorm", "InstanceNorm1D", "InstanceNorm2D", "LayerNorm", "GroupNorm"]


class _NormBase(Module):
    """Shared state and logic of the BatchNorm and InstanceNorm variants (see :class:`BatchNorm`).

    A subclass sets ``_layouts`` (the input ranks it accepts) and, to run another functional
    op with BatchNorm's arguments, ``_forward_op`` / ``_backward_op``.
    """

    _layouts = ("NC", "NCL", "NCHW")
    _forward_op = staticmethod(batch_norm_forward)
    _backward_op = staticmethod(batch_norm_backward)
    _empty_batch_when_training = False  # SyncBatchNorm: a process may hold no samples

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        num_features = positive_int(num_features, "num_features", name)
        eps = check_eps(name, eps)
        if momentum is not None:
            momentum = check_number(name, "momentum (or None)", momentum, low=0.0, high=1.0)
        dtype = float_dtype(name, dtype)
        check_allocation(name, "parameters and buffers", (6, num_features), dtype)
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = check_bool(name, "affine", affine)
        self.track_running_stats = check_bool(name, "track_running_stats", track_running_stats)
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
        self._watched = ()  # fingerprint of the input when the cache refers to it

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
        return self._normalize(x)

    def _normalize(self, x, **options):
        """The forward pass; ``options`` go to the functional op (BatchNorm's ``relu=True``:
        see :meth:`BatchNorm._forward_relu`)."""
        name = type(self).__name__
        check_input(name, x, self._layouts, {"C": self.num_features},
                    empty_batch=self._empty_batch_when_training and self.training)
        use_batch_stats = self.training or not self.track_running_stats
        factor = 0.0
        update = self.training and self.track_running_stats
        if update:  # num_batches_tracked counts this batch only once the forward succeeded
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / (float(self.num_batches_tracked) + 1.0)
            else:
                factor = self.momentum
        self._release_saved()  # drops the previous step's input before this pass allocates
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
            **options,
        )
        if update:
            self.num_batches_tracked += 1
        self._keep_for_backward(cache, input=x)
        return out

    def backward(self, dout, input_grad=True):
        """Accumulate parameter gradients; return d loss / d x, or None when ``input_grad`` is
        False (see :meth:`Module.backward`).

        Raises:
            RuntimeError: no forward pass to backpropagate through, or its input was modified
                in place since (PyTorch raises there too).
            ValueError/TypeError: ``dout`` does not match the last output.
        """
        return self._backward(dout, input_grad)

    def _backward(self, dout, input_grad, **options):
        """:meth:`backward`; ``options`` go to the functional op (BatchNorm's
        ``relu_output``: see :meth:`BatchNorm._backward_relu`)."""
        cache = saved_for_backward(type(self).__name__, self._cache)
        check_kept(type(self).__name__, self._watched)
        dx, dweight, dbias = self._backward_op(dout, cache, layer=type(self).__name__,
                                               **options)
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
        TypeError: a non-float input; a non-numeric ``eps``/``momentum``; non-bool ``affine``
            or ``track_running_stats``; a ``dtype`` other than float32/float64.
        ValueError: wrong rank or channel count, or training with one value per channel
            (N*H*W == 1); ``eps`` <= 0 or ``momentum`` outside [0, 1]. A failed forward
            changes nothing (running statistics, ``num_batches_tracked``).
        RuntimeError: ``backward`` without a forward, or after its input was modified in place.

    Example:
        >>> bn = BatchNorm(32)
        >>> y = bn(np.random.randn(8, 32, 14, 14).astype(np.float32))   # training mode
        >>> bn.eval(); y = bn(x)                                          # running statistics
    """

    def _forward_relu(self, x):
        """``relu(self(x))`` in one kernel pass, for :meth:`Module._call_with_relu`: the ReLU
        is applied as BatchNorm's output is written (the same values bit for bit, one pass over
        memory less); this layer keeps its usual cache."""
        return self._normalize(x, relu=True)

    def _backward_relu(self, relu, dout, input_grad=True):
        """``self.backward(relu.backward(dout))`` in one kernel call, for
        :meth:`minidl.Sequential.backward` when this layer's output went straight into the
        ReLU layer ``relu``: the kernel zeroes the gradient where the ReLU's output is <= 0 as
        it reads it, row by row, the mask recomputed from this layer's input (no
        gradient array in between, and the ReLU's output is not read: two passes over memory
        less). The same results bit for bit, and the same errors: those of ``relu.backward``
        (no forward pass, its output modified in place), then this layer's."""
        relu._need_cache(make=False)  # (its errors: the kernel recomputes the mask)
        return self._backward(dout, input_grad, relu=True)

    def _forward_relu_pool(self, pool, x):
        """``pool(relu(self(x)))`` in one kernel pass, for :meth:`Module._call_with_relu`
        (``pool`` is a MaxPool2D with 2x2 windows and stride 2, ``x`` an ``(N, C, H, W)``
        array with ``H, W >= 2``): each plane of the output is max-pooled right after it is
        computed, and only the pooled output is written (the same values bit for bit, two
        passes over memory saved). Returns ``(pooled output, the pool's cache, the ReLU's
        output recomputed on demand)``; this layer keeps its usual cache."""
        pool._release_saved()  # the previous indices can serve this pass
        n, c, height, width = x.shape
        shape = (n, c, height // 2, width // 2)
        pooled = _memory.empty(shape, x.dtype)
        argmax = _memory.empty(shape, np.int64) if is_grad_enabled() else None
        self._normalize(x, relu=True, pool_out=pooled, pool_argmax=argmax, pooled_only=True)
        cache, watched = self._cache, self._watched

        def relu_output():  # for a backward pass of the ReLU layer alone (hooks, by hand)
            check_kept(type(self).__name__, watched)
            return ReluCache(batch_norm_output(cache, relu=True, layer=type(self).__name__))
        return pooled, MaxPool2dCache(argmax, x.shape, x.dtype, True), relu_output

    def _backward_relu_pool(self, relu, pool, dout, input_grad=True):
        """``self.backward(relu.backward(pool.backward(dout)))`` in one kernel call, for
        :meth:`minidl.Sequential.backward` when the three ran as one forward pass
        (:meth:`_forward_relu_pool`): the kernel writes each plane of the pool's gradient,
        masks it by the ReLU (recomputed from this layer's input, as in :meth:`_backward_relu`)
        and sums it while it is in cache (no full-size gradient array).
        The same results bit for bit, and the same errors: those of ``pool.backward``, then
        ``relu.backward``, then this layer's."""
        pool_cache = saved_for_backward("MaxPool2D", pool._cache)
        check_grad("MaxPool2D", dout, pool_cache.argmax.shape, pool_cache.dtype)
        relu._need_cache(make=False)  # (its errors; the kernel recomputes the ReLU's mask)
        return self._backward(dout, input_grad, relu=True, pool_cache=pool_cache)


class BatchNorm1D(BatchNorm):
    """:class:`BatchNorm` that accepts only ``(N, C)`` or ``(N, C, L)`` inputs."""

    _layouts = ("NC", "NCL")


class BatchNorm2D(BatchNorm):
    """:class:`BatchNorm` that accepts only ``(N, C, H, W)`` inputs."""

    _layouts = ("NCHW",)


def _collectives():
    """:mod:`minidl.distributed.collectives`, imported when a SyncBatchNorm first needs it.

    Not at the top of this module: :mod:`minidl.distributed` sits above the layers (its
    DistributedDataParallel wraps a model), so importing it while ``minidl.layers`` is being
    imported would run the import arrow backwards. The collectives themselves use nothing of
    minidl, and importing them never imports mpi4py.
    """
    from ..distributed import collectives
    return collectives


class SyncBatchNorm(BatchNorm):
    r"""BatchNorm whose training statistics are those of the union of every process's batch
    (data-parallel training); PyTorch's ``torch.nn.SyncBatchNorm``.

    With data parallelism each of the W processes holds a part of every batch. A plain
    :class:`BatchNorm` then normalizes with the statistics of its own part: with a small
    per-process batch these are noisy, and training degrades as the batch per process shrinks
    (Wu & He 2018, "Group Normalization", section 1 and figure 1). SyncBatchNorm computes the
    statistics over all processes' samples together, so W processes with batch B/W each
    normalize exactly as one process with batch B (Ioffe & Szegedy 2015, Algorithm 1, with the
    mini-batch being the union).

    In training mode, per channel (see :func:`minidl.functional.sync_batch_norm_forward` and
    ``sync_batch_norm_backward`` for the math):

    * forward: each process's count, mean and biased variance (float64 shifted sums, as
      BatchNorm) go through one ``all_gather`` of ``1 + 2C`` float64 numbers; every process
      combines them in rank order with the law of total variance (Chan, Golub & LeVeque 1983),
      ``mean = sum n_p mean_p / n``, ``var = sum n_p (var_p + (mean_p - mean)^2) / n``, and
      normalizes its own samples with the result. Every process gets bit-identical statistics;
      BatchNorm's float32 guarantees hold (a channel with mean 1e4 and standard deviation 1e-2
      normalizes correctly, a constant channel gives exactly ``beta``);
    * running estimates: updated with the global mean and the *unbiased* global variance
      ``var * n / (n - 1)``, ``n`` the global count, so they stay identical on every process;
    * backward: the two per-channel sums ``sum dy`` and ``sum dy * (x - mean)`` are summed over
      the processes with one ``all_reduce`` of ``2C`` float64 numbers, and each process forms
      its ``dx`` from the global sums. ``weight.grad`` and ``bias.grad`` hold this process's
      share; :class:`~minidl.distributed.DistributedDataParallel` averages them with the other
      gradients, as in PyTorch.

    Processes may hold batches of different sizes (each contributes its own count), and a
    process may hold no samples at all (``N == 0``; it still takes part in the collectives).
    Every process of the group must run the layer's forward and backward in the same order.

    Eval mode is :class:`BatchNorm`'s: the running estimates, no communication (with
    ``track_running_stats=False``, each process's own batch statistics, as PyTorch). In a single
    process -- before :func:`minidl.distributed.init`, or in a world of one -- the layer
    computes exactly what :class:`BatchNorm` computes, bit for bit (the same kernels, split
    where the communication goes).

    Convert a model's BatchNorm layers with :meth:`convert_sync_batchnorm` before wrapping it in
    :class:`~minidl.distributed.DistributedDataParallel`.

    Args:
        num_features (int): C, the number of channels.
        eps (float): added to the variance. Default 1e-5.
        momentum (float or None): running-average factor (PyTorch's convention; None for a
            cumulative average). Default 0.1.
        affine (bool): learn ``weight`` (init 1) and ``bias`` (init 0). Default True.
        track_running_stats (bool): keep ``running_mean``, ``running_var`` and
            ``num_batches_tracked``. Default True.
        process_group (ProcessGroup or None): the processes whose batches are combined
            (:func:`minidl.distributed.new_group`); None (default): the world once
            :func:`minidl.distributed.init` has run, else this process alone.
        dtype: dtype of the parameters and buffers, float32 (default) or float64.

    Shape:
        input ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``, float32 or float64 (``N`` may be 0
        in training); output: the same shape and dtype.

    Raises:
        TypeError: a ``process_group`` that is not a ProcessGroup; a non-float input.
        ValueError: wrong rank or channel count; training with at most one value per channel
            over all processes together (raised on every process).

    Example:
        >>> dist.init()                     # under mpiexec: one process per rank
        >>> model = SyncBatchNorm.convert_sync_batchnorm(mnist_cnn())
        >>> model = dist.DistributedDataParallel(model)
    """

    _empty_batch_when_training = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, dtype=np.float32):
        if process_group is not None and not isinstance(process_group,
                                                        _collectives().ProcessGroup):
            raise TypeError(f"{type(self).__name__}: process_group must be a "
                            f"minidl.distributed.ProcessGroup or None, got "
                            f"{type(process_group).__name__}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)
        self.process_group = process_group

    def _group(self):
        """The group to synchronize over, or None for this process alone."""
        if self.process_group is not None:
            return self.process_group
        collectives = _collectives()
        return collectives.init() if collectives.is_initialized() else None  # init(): the world

    def _forward_op(self, x, weight, bias, running_mean, running_var, training, momentum, eps,
                    layer):
        """BatchNorm's eval mode, or the synchronized training forward (called by
        :meth:`_NormBase.forward` with the same arguments as :func:`batch_norm_forward`)."""
        if not self.training:
            return batch_norm_forward(x, weight, bias, running_mean, running_var,
                                      training=training, momentum=momentum, eps=eps, layer=layer)
        group = self._group()
        gather = None if group is None else functools.partial(_collectives().all_gather,
                                                              group=group)
        return sync_batch_norm_forward(x, weight, bias, running_mean, running_var, momentum, eps,
                                       all_gather=gather, layer=layer)

    def _backward_op(self, dout, cache, layer):
        if not isinstance(cache, SyncBatchNormCache):  # the forward ran in eval mode
            return batch_norm_backward(dout, cache, layer=layer)
        group = self._group()
        reduce = None if group is None else functools.partial(_collectives().all_reduce,
                                                              op="sum", group=group)
        return sync_batch_norm_backward(dout, cache, all_reduce=reduce, layer=layer)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Replace every :class:`BatchNorm` in ``module`` (and its children) by a SyncBatchNorm.

        PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``: each BatchNorm, BatchNorm1D and
        BatchNorm2D (and SyncBatchNorm, given the new ``process_group``) becomes a SyncBatchNorm
        with its ``num_features``, ``eps``, ``momentum``, ``affine``, ``track_running_stats``
        and train/eval mode, holding the *same* ``weight`` and ``bias`` Parameters and the same
        running-statistics arrays (so an optimizer built before the conversion still updates
        them). Other layers (PerActivationBatchNorm, InstanceNorm, ...) are left as they are.
        The children are replaced in place.

        Args:
            module (Module): a layer or a model.
            process_group (ProcessGroup or None): for the new layers (see the class).
        Returns:
            Module: ``module`` with its BatchNorm layers replaced, or the new SyncBatchNorm if
            ``module`` itself is a BatchNorm.
        Raises:
            TypeError: ``module`` is not a Module, or a bad ``process_group``.

        Example:
            >>> model = SyncBatchNorm.convert_sync_batchnorm(mnist_cnn())
        """
        if not isinstance(module, Module):
            raise TypeError(f"{cls.__name__}.convert_sync_batchnorm: module must be a minidl "
                            f"Module, got {type(module).__name__}")
        if isinstance(module, BatchNorm):
            dtype = (module.weight.dtype if module.affine else module.running_mean.dtype
                     if module.track_running_stats else np.float32)
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group, dtype)
            if module.affine:
                converted.weight, converted.bias = module.weight, module.bias
            if module.track_running_stats:
                converted.running_mean = module.running_mean
                converted.running_var = module.running_var
                converted.num_batches_tracked = module.num_batches_tracked
            converted.train(module.training)
            return converted
        for name, child in list(module._modules.items()):
            converted = cls.convert_sync_batchnorm(child, process_group)
            if converted is not child:
                setattr(module, name, converted)
        return module


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
        TypeError: a non-float input; a non-numeric ``eps``/``momentum``; non-bool ``affine``
            or ``track_running_stats``; a ``dtype`` other than float32/float64.
        ValueError: a bad ``feature_shape``; an input whose shape after N differs from it, or an
            empty batch; training with N == 1; ``eps`` <= 0 or ``momentum`` outside [0, 1].
        MemoryError: parameters and buffers that would not fit in memory.
        RuntimeError: ``backward`` without a forward, or after its input was modified in place.

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
            raise ValueError(f"{name}: expected input of shape (N, {dims}) with N >= 1, got "
                             f"shape {x.shape}")
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
        TypeError: a non-float input; a non-numeric ``eps``/``momentum``; non-bool ``affine``
            or ``track_running_stats``; a ``dtype`` other than float32/float64.
        ValueError: wrong rank or channel count, or an empty axis; one spatial value per
            instance (L or H*W == 1) when the instances' statistics are used; ``eps`` <= 0 or
            ``momentum`` outside [0, 1].
        RuntimeError: ``backward`` without a forward, or after its input was modified in place.

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
    difference. A subclass's ``forward`` runs its functional op through :meth:`_run` (which
    keeps the cache and a fingerprint of the input it refers to), and the subclass sets
    ``_backward_op``.
    """

    def __init__(self, eps, shape, weight, bias, dtype):
        super().__init__()
        name = type(self).__name__
        self.eps = check_eps(name, eps)
        dtype = float_dtype(name, dtype)
        check_allocation(name, "parameters", (2,) + tuple(shape), dtype)
        self.weight = Parameter(np.ones(shape, dtype)) if weight else None
        self.bias = Parameter(np.zeros(shape, dtype)) if bias else None
        self._cache = None
        self._watched = ()  # fingerprint of the input when the cache refers to it

    def _run(self, forward_op, x, *args):
        """``forward_op(x, *args, weight, bias, eps)``; keeps its cache for backward, with a
        fingerprint of ``x`` when the cache refers to it."""
        self._release_saved()  # drops the previous step's input before this pass allocates
        weight, bias = self._parameter_data()
        out, cache = forward_op(x, *args, weight, bias, self.eps, layer=type(self).__name__)
        self._keep_for_backward(cache, input=x)
        return out

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
        False (see :meth:`Module.backward`).

        Raises:
            RuntimeError: no forward pass to backpropagate through, or its input was modified
                in place since (PyTorch raises there too).
            ValueError/TypeError: ``dout`` does not match the last output.
        """
        name = type(self).__name__
        cache = saved_for_backward(name, self._cache)
        check_kept(name, self._watched)
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
        TypeError: a non-float input; a non-numeric ``eps``; non-bool ``elementwise_affine`` or
            ``bias``; a ``dtype`` other than float32/float64.
        ValueError: a bad ``normalized_shape``; ``eps`` not finite and > 0; an input whose last
            dimensions differ from ``normalized_shape``, or with an empty axis.
        MemoryError: parameters that would not fit in memory.
        RuntimeError: ``backward`` without a forward, or after its input was modified in place.

    Example:
        >>> ln = LayerNorm((32, 14, 14))
        >>> y = ln(np.random.randn(8, 32, 14, 14).astype(np.float32))
    """

    _backward_op = staticmethod(layer_norm_backward)

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        name = type(self).__name__
        shape = shape_tuple(normalized_shape, "normalized_shape", name)
        affine = check_bool(name, "elementwise_affine", elementwise_affine)
        bias = check_bool(name, "bias", bias)
        super().__init__(eps, shape, affine, affine and bias, dtype)
        self.normalized_shape = shape
        self.elementwise_affine = affine

    def forward(self, x):
        return self._run(layer_norm_forward, x, self.normalized_shape)

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
        TypeError: a non-float input; a non-numeric ``eps``; a non-bool ``affine``; a ``dtype``
            other than float32/float64.
        ValueError: ``num_channels`` not divisible by ``num_groups``; ``eps`` not finite and
            > 0; wrong rank or channel count, or an empty axis.
        RuntimeError: ``backward`` without a forward, or after its input was modified in place.

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
        affine = check_bool(name, "affine", affine)
        super().__init__(eps, (channels,), affine, affine, dtype)
        self.num_groups = groups
        self.num_channels = channels
        self.affine = affine

    def forward(self, x):
        check_input(type(self).__name__, x, ("NC", "NCL", "NCHW"), {"C": self.num_channels})
        return self._run(group_norm_forward, x, self.num_groups)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
