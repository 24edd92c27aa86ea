"""The networks our examples, experiments and benchmarks share."""
from .. import layers
from .._random import get_rng
from ..model import Sequential


def _conv_block(in_channels, out_channels, batch_norm, rng):
    """conv 3x3 pad 1 [+ BatchNorm] + ReLU + max-pool 2; the conv has a bias only without BN."""
    block = [layers.Conv2D(in_channels, out_channels, kernel_size=3, padding=1,
                           bias=not batch_norm, rng=rng)]
    if batch_norm:
        block.append(layers.BatchNorm(out_channels))
    return block + [layers.ReLU(), layers.MaxPool2D(2)]


def mnist_cnn(batch_norm=True, rng=None):
    """The MNIST CNN: two conv blocks (1→32, 32→64) and two dense layers (3136→128→10).

    ``conv 3x3 pad 1 – [BN] – ReLU – maxpool 2`` twice, then ``flatten – dense 3136→128 – [BN] –
    ReLU – dense 128→10``. With ``batch_norm`` every conv/dense before a BN has no bias (BN's beta
    replaces it), as in Ioffe & Szegedy (2015), section 3.2.

    Args:
        batch_norm (bool): insert BatchNorm after each conv and the hidden dense layer.
        rng: generator or seed for the initialization (default: the global one).
    Returns:
        Sequential: input ``(N, 1, 28, 28)`` float32, output logits ``(N, 10)``.
    """
    rng = get_rng(rng)  # one generator for all layers: an int seed must not restart per layer
    return Sequential(
        *_conv_block(1, 32, batch_norm, rng),
        *_conv_block(32, 64, batch_norm, rng),
        layers.Flatten(),
        layers.Dense(64 * 7 * 7, 128, bias=not batch_norm, rng=rng),
        *([layers.BatchNorm(128)] if batch_norm else []),
        layers.ReLU(),
        layers.Dense(128, 10, rng=rng),
    )


def _conv_bn_relu(in_channels, out_channels, batch_norm, rng):
    """conv 3x3 pad 1 [+ BatchNorm] + ReLU, without pooling; the conv has a bias only without BN."""
    block = [layers.Conv2D(in_channels, out_channels, kernel_size=3, padding=1,
                           bias=not batch_norm, rng=rng)]
    if batch_norm:
        block.append(layers.BatchNorm(out_channels))
    return block + [layers.ReLU()]


def cifar_cnn(batch_norm=True, rng=None):
    """A small VGG-style CIFAR-10 CNN: five 3x3 convs in three stages, then one dense layer.

    ``conv 3→32, conv 32→32, maxpool 2, conv 32→64, conv 64→64, maxpool 2, conv 64→128,
    maxpool 2, flatten, dense 2048→10``, where every conv is ``3x3 pad 1 – [BN] – ReLU``. With
    ``batch_norm`` the convs have no bias (BN's beta replaces it); without it they do.

    Args:
        batch_norm (bool): insert BatchNorm after each conv.
        rng: generator or seed for the initialization (default: the global one).
    Returns:
        Sequential: input ``(N, 3, 32, 32)`` float32, output logits ``(N, 10)``.
    """
    rng = get_rng(rng)  # one generator for all layers: an int seed must not restart per layer
    return Sequential(
        *_conv_bn_relu(3, 32, batch_norm, rng),
        *_conv_bn_relu(32, 32, batch_norm, rng),
        layers.MaxPool2D(2),
        *_conv_bn_relu(32, 64, batch_norm, rng),
        *_conv_bn_relu(64, 64, batch_norm, rng),
        layers.MaxPool2D(2),
        *_conv_bn_relu(64, 128, batch_norm, rng),
        layers.MaxPool2D(2),
        layers.Flatten(),
        layers.Dense(128 * 4 * 4, 10, rng=rng),
    )
