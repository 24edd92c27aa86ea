"""The networks our examples, experiments and benchmarks share."""
from .. import layers
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
    return Sequential(
        *_conv_block(1, 32, batch_norm, rng),
        *_conv_block(32, 64, batch_norm, rng),
        layers.Flatten(),
        layers.Dense(64 * 7 * 7, 128, bias=not batch_norm, rng=rng),
        *([layers.BatchNorm(128)] if batch_norm else []),
        layers.ReLU(),
        layers.Dense(128, 10, rng=rng),
    )
