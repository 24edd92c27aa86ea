"""The one place that maps normalization names to layers, for every model builder.

A builder's ``norm`` argument is None (no normalization: the convolutions and dense layers get
a bias), a name in :data:`NORMS`, or a callable ``num_channels -> Module``. To offer a new
normalization to every builder, add its factory to :data:`NORMS`::

    NORMS["group4"] = lambda num_channels: layers.GroupNorm(4, num_channels)

A normalization whose parameters depend on more than the channel count (LayerNorm's per-element
gamma, per-activation BatchNorm's per-position statistics) is wrapped in :class:`ShapedNorm`:
its factory receives the whole feature shape, ``(C,)`` after a dense layer or ``(C, H, W)``
after a convolution. Builders that know their activation sizes (:func:`~minidl.models.mlp`,
:func:`~minidl.models.mnist_cnn`, :func:`~minidl.models.vgg_cifar`) pass it; one that accepts
any image size (:func:`~minidl.models.resnet_cifar`) does not, and a shaped norm is refused
there with a clear error.
"""
import math

from .. import layers

__all__ = ["NORMS", "NORM_POSITIONS", "ShapedNorm", "check_norm", "check_norm_position",
           "make_norm", "conv_norm_act", "has_bias"]


class ShapedNorm:
    """A normalization factory that needs the feature shape, not only the channel count.

    Args:
        build (callable): ``feature_shape -> Module``, where ``feature_shape`` is ``(C,)`` (the
            output of a dense layer) or ``(C, H, W)`` (of a convolution), without the batch axis.
    """

    def __init__(self, build):
        if not callable(build):
            raise TypeError(f"ShapedNorm: build must be callable feature_shape -> Module, got "
                            f"{type(build).__name__}")
        self.build = build

    def __call__(self, feature_shape):
        return self.build(tuple(feature_shape))


def _group_norm(num_channels):
    """GroupNorm with ``gcd(C, 8)`` groups: 8 when C is a multiple of 8 (Wu & He 2018, table 3:
    G = 8 is within 0.2% of their default G = 32, which small networks cannot divide)."""
    return layers.GroupNorm(math.gcd(num_channels, 8), num_channels)


def _instance_norm(feature_shape):
    """InstanceNorm with affine parameters (so it has BatchNorm's gamma and beta); refuses the
    output of a dense layer, which has no spatial positions to average over."""
    if len(feature_shape) < 2:
        raise ValueError(f"norm 'instance': a feature of shape {feature_shape} has no spatial "
                         f"positions to average over (InstanceNorm needs (C, L) or (C, H, W)); "
                         f"use it in a network whose dense layers are not normalized, "
                         f"e.g. vgg_cifar")
    return layers.InstanceNorm(feature_shape[0], affine=True)


NORMS = {
    # Ioffe & Szegedy 2015: statistics per channel over (N, H, W) (over N after a dense layer)
    "batch": layers.BatchNorm,
    # Ioffe & Szegedy 2015, section 3 (the fully connected case): one mean/variance per
    # activation, over N only
    "per-activation": ShapedNorm(layers.PerActivationBatchNorm),
    # Ba et al. 2016: per sample over (C, H, W), gamma/beta per element (PyTorch's LayerNorm)
    "layer": ShapedNorm(layers.LayerNorm),
    # Ulyanov et al. 2016: per sample and channel over (H, W); here with affine gamma/beta
    "instance": ShapedNorm(_instance_norm),
    # Wu & He 2018: per sample over groups of C/G channels and (H, W); G = gcd(C, 8)
    "group": _group_norm,
}
"""Name -> factory: the strings a builder's ``norm`` accepts. A factory is a callable
``num_channels -> Module`` or a :class:`ShapedNorm` (``feature_shape -> Module``)."""

NORM_POSITIONS = ("before", "after")
"""Where the normalization goes relative to the activation: ``"before"`` (conv -> norm -> ReLU,
as Ioffe & Szegedy 2015, section 3.2, and He et al. 2016) or ``"after"`` (conv -> ReLU ->
norm)."""


def check_norm(norm, owner):
    """Return ``norm`` if it is None, a name in :data:`NORMS` or a callable; else raise.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: neither None, a str nor a callable.
    """
    if norm is None or callable(norm):
        return norm
    if isinstance(norm, str):
        if norm not in NORMS:
            raise ValueError(f"{owner}: unknown norm {norm!r}; expected None, one of "
                             f"{sorted(NORMS)} or a callable num_channels -> Module")
        return norm
    raise TypeError(f"{owner}: norm must be None, a name ({sorted(NORMS)}) or a callable "
                    f"num_channels -> Module, got {type(norm).__name__}")


def check_norm_position(norm_position, owner):
    """Return ``norm_position`` if it is ``"before"`` or ``"after"``; else raise ValueError."""
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"{owner}: norm_position must be 'before' or 'after' (the activation), "
                         f"got {norm_position!r}")
    return norm_position


def make_norm(norm, num_channels, owner, feature_shape=None):
    """A new normalization layer for ``num_channels`` channels (None when ``norm`` is None).

    Args:
        feature_shape (tuple, optional): ``(C,)`` or ``(C, H, W)`` of the activations it
            normalizes, for a :class:`ShapedNorm`; None when the builder does not know it.
    Raises:
        ValueError: a :class:`ShapedNorm` without ``feature_shape``.
        TypeError: a callable ``norm`` returned something that is not a Module.
    """
    if norm is None:
        return None
    factory = NORMS[norm] if isinstance(norm, str) else norm
    if isinstance(factory, ShapedNorm):
        if feature_shape is None:
            raise ValueError(f"{owner}: norm {norm!r} needs the shape of the activations it "
                             f"normalizes, which {owner} does not fix (it accepts any input "
                             f"size); use a per-channel norm ({', '.join(_per_channel())})")
        layer = factory(feature_shape)
    else:
        layer = factory(num_channels)
    if not isinstance(layer, layers.Module):
        raise TypeError(f"{owner}: the norm factory returned a {type(layer).__name__} for "
                        f"{num_channels} channels; expected a Module")
    return layer


def _per_channel():
    return [name for name, factory in NORMS.items() if not isinstance(factory, ShapedNorm)]


def conv_norm_act(layer, num_channels, norm, norm_position, owner, activation=True,
                  feature_shape=None):
    """``[layer, norm, ReLU]`` in the order ``norm_position`` says (``[layer, ReLU, norm]`` for
    ``"after"``); without ``norm`` ``[layer, ReLU]``; without ``activation`` ``[layer, norm]``.
    ``activation`` may also be a Module class (e.g. ``layers.Sigmoid``) to use instead of ReLU;
    ``feature_shape`` is passed to :func:`make_norm`."""
    normalization = make_norm(norm, num_channels, owner, feature_shape)
    if activation is True:
        activation = layers.ReLU
    relu = [activation()] if activation else []
    if normalization is None:
        return [layer] + relu
    if norm_position == "after" and activation:
        return [layer] + relu + [normalization]
    return [layer, normalization] + relu


def has_bias(norm, norm_position):
    """Whether a conv/dense layer followed by this normalization needs a bias: not when the
    normalization comes right after it (its mean subtraction cancels a bias and its beta
    replaces it, Ioffe & Szegedy 2015, section 3.2); yes without a normalization, or when the
    activation sits in between."""
    return norm is None or norm_position == "after"
