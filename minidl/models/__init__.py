"""Ready-made networks, built from :mod:`minidl.layers` with deterministic initialization.

* :func:`mlp` -- fully connected networks (Ioffe & Szegedy's figure 1 network);
* :func:`mnist_cnn` -- the MNIST CNN of the examples and benchmarks;
* :func:`vgg_cifar` -- a small VGG-style CIFAR-10 CNN (the benchmark's "CIFAR CNN");
* :func:`resnet_cifar` -- the CIFAR-10 ResNets of He et al. (2016), section 4.2 (ResNet-20 ...).

Every builder takes ``norm`` (None, a name in :data:`NORMS` such as ``"batch"``, or a
callable ``num_channels -> Module``), ``norm_position`` (``"before"`` or ``"after"`` the
activation) and ``rng`` (a generator or seed; default minidl's global generator, so
``minidl.manual_seed(0)`` makes the weights reproducible)::

    import minidl
    minidl.manual_seed(0)
    model = minidl.models.resnet_cifar(depth=20, norm="batch")
    minidl.summary(model, (1, 3, 32, 32))
"""
from .cnn import mlp, mnist_cnn, vgg_cifar
from .norms import NORM_POSITIONS, NORMS, ShapedNorm
from .resnet import SHORTCUTS, ZeroPadShortcut, basic_block, resnet_cifar

__all__ = ["mlp", "mnist_cnn", "vgg_cifar", "resnet_cifar", "basic_block", "ZeroPadShortcut",
           "NORMS",
           "NORM_POSITIONS", "SHORTCUTS", "ShapedNorm"]
