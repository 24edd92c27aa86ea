"""Plain convolutional networks: the MNIST CNN and the VGG-style CIFAR-10 CNN."""
import numbers

from .. import layers
from .._checks import positive_int
from .._random import get_rng
from ..model import Sequential
from .norms import check_norm, check_norm_position, conv_norm_act, has_bias

__all__ = ["mlp", "mnist_cnn", "vgg_cifar"]

ACTIVATIONS = {"relu": layers.ReLU, "sigmoid": layers.Sigmoid, "tanh": layers.Tanh}
"""The activations :func:`mlp` accepts, by name."""


def mlp(in_features=784, hidden=(100, 100, 100), num_classes=10, activation="relu", norm=None,
        norm_position="before", rng=None):
    """A fully connected network: ``flatten – (dense – [norm] – activation) x len(hidden) –
    dense``.

    The network of Ioffe & Szegedy (2015), section 4.1 / figure 1, is
    ``mlp(784, (100, 100, 100), activation="sigmoid", norm="batch")`` (and ``norm=None``
    without BatchNorm). A dense layer followed directly by a normalization has no bias.

    Args:
        in_features (int): inputs per sample after flattening (784 for 28x28 images).
        hidden (sequence of int): the widths of the hidden layers (may be empty).
        num_classes (int): outputs of the last layer.
        activation (str): ``"relu"`` (default), ``"sigmoid"`` or ``"tanh"``.
        norm: None (default), a name in :data:`minidl.models.NORMS` or a callable
            ``num_features -> Module``.
        norm_position (str): ``"before"`` (default, as the paper) or ``"after"`` the activation.
        rng: generator or seed for the initialization (default: minidl's global generator).
    Returns:
        Sequential: input ``(N, *)`` with ``in_features`` values per sample, float32; output
        logits ``(N, num_classes)``.
    Raises:
        ValueError/TypeError: a bad size, ``activation``, ``norm`` or ``norm_position``.
    """
    norm = check_norm(norm, "mlp")
    check_norm_position(norm_position, "mlp")
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: activation must be one of {sorted(ACTIVATIONS)}, got "
                         f"{activation!r}")
    widths = [positive_int(in_features, "in_features", "mlp")]
    widths += [positive_int(width, "hidden width", "mlp") for width in hidden]
    rng = get_rng(rng)
    body = []
    for fan_in, width in zip(widths[:-1], widths[1:]):
        dense = layers.Dense(fan_in, width, bias=has_bias(norm, norm_position), rng=rng)
        body += conv_norm_act(dense, width, norm, norm_position, "mlp",
                              activation=ACTIVATIONS[activation], feature_shape=(width,))
    last = layers.Dense(widths[-1], positive_int(num_classes, "num_classes", "mlp"), rng=rng)
    return Sequential(layers.Flatten(), *body, last)


def _conv3x3(in_channels, out_channels, size, norm, norm_position, rng, owner):
    """conv 3x3 pad 1 -> [norm] -> ReLU (the order of ``norm_position``) on ``size x size``
    maps."""
    conv = layers.Conv2D(in_channels, out_channels, kernel_size=3, padding=1,
                         bias=has_bias(norm, norm_position), rng=rng)
    return conv_norm_act(conv, out_channels, norm, norm_position, owner,
                         feature_shape=(out_channels, size, size))


def mnist_cnn(norm="batch", norm_position="before", rng=None):
    """The MNIST CNN: two conv blocks (1→32, 32→64) and two dense layers (3136→128→10).

    ``conv 3x3 pad 1 – [norm] – ReLU – maxpool 2`` twice, then ``flatten – dense 3136→128 –
    [norm] – ReLU – dense 128→10``. A convolution or dense layer followed directly by a
    normalization has no bias (its beta replaces it; Ioffe & Szegedy 2015, section 3.2).

    Args:
        norm: None (no normalization, every layer has a bias), a name in
            :data:`minidl.models.NORMS` (``"batch"``, default) or a callable
            ``num_channels -> Module``.
        norm_position (str): ``"before"`` (default) or ``"after"`` the ReLU; with ``"after"``
            the layers keep their bias (the ReLU sits between them and the normalization).
        rng: generator or seed for the initialization (default: minidl's global generator,
            see ``minidl.manual_seed``).
    Returns:
        Sequential: input ``(N, 1, 28, 28)`` float32, output logits ``(N, 10)``.
    Raises:
        ValueError/TypeError: a bad ``norm`` or ``norm_position``.
    """
    norm = check_norm(norm, "mnist_cnn")
    check_norm_position(norm_position, "mnist_cnn")
    rng = get_rng(rng)  # one generator for all layers: an int seed must not restart per layer
    hidden = layers.Dense(64 * 7 * 7, 128, bias=has_bias(norm, norm_position), rng=rng)
    return Sequential(
        *_conv3x3(1, 32, 28, norm, norm_position, rng, "mnist_cnn"), layers.MaxPool2D(2),
        *_conv3x3(32, 64, 14, norm, norm_position, rng, "mnist_cnn"), layers.MaxPool2D(2),
        layers.Flatten(),
        *conv_norm_act(hidden, 128, norm, norm_position, "mnist_cnn", feature_shape=(128,)),
        layers.Dense(128, 10, rng=rng),
    )


def vgg_cifar(norm="batch", width=1, norm_position="before", num_classes=10, rng=None):
    """A small VGG-style CIFAR-10 CNN: five 3x3 convolutions in three stages, one dense layer.

    ``conv 3→32, conv 32→32, maxpool 2, conv 32→64, conv 64→64, maxpool 2, conv 64→128,
    maxpool 2, flatten, dense 2048→10`` (channel counts times ``width``), where every conv is
    ``3x3 pad 1 – [norm] – ReLU``: the stacks of Simonyan & Zisserman (2015), "Very Deep
    Convolutional Networks", section 2.1, at CIFAR size. This is the network of the benchmark's
    "CIFAR CNN" workloads (``width=1``, ``norm="batch"``).

    Args:
        norm: None, a name in :data:`minidl.models.NORMS` (``"batch"``, default) or a callable
            ``num_channels -> Module``.
        width (float): multiplies every channel count (rounded, at least 1); default 1 gives
            32/64/128 channels.
        norm_position (str): ``"before"`` (default) or ``"after"`` the ReLU.
        num_classes (int): outputs of the last layer (default 10).
        rng: generator or seed for the initialization (default: minidl's global generator).
    Returns:
        Sequential: input ``(N, 3, 32, 32)`` float32, output logits ``(N, num_classes)``.
    Raises:
        ValueError/TypeError: a bad ``norm``, ``norm_position``, ``width`` or ``num_classes``.
    """
    norm = check_norm(norm, "vgg_cifar")
    check_norm_position(norm_position, "vgg_cifar")
    if (isinstance(width, bool) or not isinstance(width, numbers.Real) or not width > 0
            or width == float("inf")):
        raise ValueError(f"vgg_cifar: width must be a finite number > 0, got {width!r}")
    num_classes = positive_int(num_classes, "num_classes", "vgg_cifar")
    c1, c2, c3 = (max(1, round(channels * width)) for channels in (32, 64, 128))
    rng = get_rng(rng)

    def conv(cin, cout, size):
        return _conv3x3(cin, cout, size, norm, norm_position, rng, "vgg_cifar")

    return Sequential(
        *conv(3, c1, 32), *conv(c1, c1, 32), layers.MaxPool2D(2),
        *conv(c1, c2, 16), *conv(c2, c2, 16), layers.MaxPool2D(2),
        *conv(c2, c3, 8), layers.MaxPool2D(2),
        layers.Flatten(),
        layers.Dense(c3 * 4 * 4, num_classes, rng=rng),
    )
