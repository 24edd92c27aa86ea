"""The one place that maps normalization names to layers, for every model builder.

A builder's ``norm`` argument is None (no normalization: the convolutions and dense layers get
a bias), a name in :data:`NORMS`, or a callable ``num_channels -> Module``. To offer a new
normalization to every builder, add its factory to :data:`NORMS`::

    NORMS["group"] = lambda num_channels: layers.GroupNorm(8, num_channels)
"""
from .. import layers

__all__ = ["NORMS", "NORM_POSITIONS", "check_norm", "check_norm_position", "make_norm",
           "conv_norm_act", "has_bias"]

NORMS = {
    "batch": layers.BatchNorm,  # Ioffe & Szegedy 2015: statistics per channel over (N, H, W)
}
"""Name -> factory ``num_channels -> Module``: the strings a builder's ``norm`` accepts."""

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


def make_norm(norm, num_channels, owner):
    """A new normalization layer for ``num_channels`` channels (None when ``norm`` is None).

    Raises:
        TypeError: a callable ``norm`` returned something that is not a Module.
    """
    if norm is None:
        return None
    factory = NORMS[norm] if isinstance(norm, str) else norm
    layer = factory(num_channels)
    if not isinstance(layer, layers.Module):
        raise TypeError(f"{owner}: the norm factory returned a {type(layer).__name__} for "
                        f"{num_channels} channels; expected a Module")
    return layer


def conv_norm_act(layer, num_channels, norm, norm_position, owner, activation=True):
    """``[layer, norm, ReLU]`` in the order ``norm_position`` says (``[layer, ReLU, norm]`` for
    ``"after"``); without ``norm`` ``[layer, ReLU]``; without ``activation`` ``[layer, norm]``."""
    normalization = make_norm(norm, num_channels, owner)
    relu = [layers.ReLU()] if activation else []
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
