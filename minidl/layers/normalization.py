"""Batch Normalization layers.

One base class, :class:`_NormBase`, owns the constructor, the parameters and buffers, the choice
between batch and running statistics, and forward/backward; the public classes only say which
input ranks they accept. The math is in :mod:`minidl.functional.normalization`.
"""
import numpy as np

from ..functional.normalization import batch_norm_backward, batch_norm_forward
from .._checks import (check_allocation, check_bool, check_input, check_kept, check_number,
                       float_dtype, positive_int, watch_kept)
from .._grad_mode import save_for_backward, saved_for_backward
from .module import Module, Parameter

__all__ = ["BatchNorm", "BatchNorm1D", "BatchNorm2D"]


class _NormBase(Module):
    """Shared state and logic of the BatchNorm variants (see :class:`BatchNorm`)."""

    _layouts = ("NC", "NCL", "NCHW")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        num_features = positive_int(num_features, "num_features", name)
        eps = check_number(name, "eps", eps, low=-np.inf)
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
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
        name = type(self).__name__
        check_input(name, x, self._layouts, {"C": self.num_features})
        use_batch_stats = self.training or not self.track_running_stats
        factor = 0.0
        update = self.training and self.track_running_stats
        if update:  # num_batches_tracked counts this batch only once the forward succeeded
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / (float(self.num_batches_tracked) + 1.0)
            else:
                factor = self.momentum
        self._cache = None  # drops the previous step's input before this pass allocates
        self._watched = ()  # (and the fingerprints' references to them)
        out, cache = batch_norm_forward(
            x,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            self.running_mean if (update or not use_batch_stats) else None,
            self.running_var if (update or not use_batch_stats) else None,
            training=use_batch_stats,
            momentum=factor,
            eps=self.eps,
            layer=name,
        )
        if update:
            self.num_batches_tracked += 1
        self._cache = save_for_backward(cache)
        self._watched = watch_kept(self._cache, input=x)
        return out

    def backward(self, dout, input_grad=True):
        """Accumulate parameter gradients; return d loss / d x, or None when ``input_grad`` is
        False (see :meth:`Module.backward`).

        Raises:
            RuntimeError: no forward pass to backpropagate through, or its input was modified
                in place since (PyTorch raises there too).
            ValueError/TypeError: ``dout`` does not match the last output.
        """
        cache = saved_for_backward(type(self).__name__, self._cache)
        check_kept(type(self).__name__, self._watched)
        dx, dweight, dbias = batch_norm_backward(dout, cache, layer=type(self).__name__)
        if self.affine:
            self.weight.accumulate_grad(dweight)
            self.bias.accumulate_grad(dbias)
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


class BatchNorm1D(BatchNorm):
    """:class:`BatchNorm` that accepts only ``(N, C)`` or ``(N, C, L)`` inputs."""

    _layouts = ("NC", "NCL")


class BatchNorm2D(BatchNorm):
    """:class:`BatchNorm` that accepts only ``(N, C, H, W)`` inputs."""

    _layouts = ("NCHW",)
