"""The networks of the benchmark: the breadth suite's configurations and PyTorch twins.

``BREADTH`` lists the breadth suite, layer configurations a user can build (kernel sizes 1-7,
strides 1-2, batches 1-512, Dense and BatchNorm1D, eval-mode inference); it is plain data, so
the orchestrating process of ``run.py`` can read names without importing NumPy. The builders
below run in the worker processes only: :func:`build_breadth` makes the minidl network of a
configuration and :func:`torch_twin` the same network with ``torch.nn`` modules, from the minidl
model itself (layer by layer), so both always have the same architecture; ``run.py`` then copies
minidl's initial parameters and buffers into it with a strict ``load_state_dict``.
"""

# id: (name, kind, batch, input shape of one sample). kind "train": forward, cross-entropy,
# backward, SGD step; "eval": an eval-mode forward (minidl.no_grad / torch.no_grad).
BREADTH = {
    "b1": ("MLP Dense 1024-wide + BatchNorm1D, train step", "train", 256, (784,)),
    "b2": ("1x1 convs 64<->128 on 16x16 + BN, train step", "train", 32, (64, 16, 16)),
    "b3": ("3x3 stride-2 convs + BN, train step", "train", 64, (3, 32, 32)),
    "b4": ("5x5 first layer + wide 3x3 convs + BN, train step", "train", 32, (3, 32, 32)),
    "b5": ("MNIST CNN + BN, train step", "train", 8, (1, 28, 28)),
    "b6": ("MNIST CNN no BN, train step", "train", 1, (1, 28, 28)),
    "b7": ("MNIST CNN + BN, train step", "train", 512, (1, 28, 28)),
    "b8": ("ResNet stem 7x7 stride 2 pad 3 + maxpool 3/2, train step", "train", 32, (3, 64, 64)),
    "b9": ("LeNet-5 (5x5 pad 0, bias, no BN), train step", "train", 64, (1, 28, 28)),
    "b10": ("MLP 784-256-256-10 with bias, train step", "train", 64, (784,)),
    "b11": ("MNIST CNN + BN, eval forward", "eval", 1, (1, 28, 28)),
    "b12": ("CIFAR CNN + BN, eval forward", "eval", 64, (3, 32, 32)),
    "b13": ("5x5 convs 32->64 (TensorFlow's MNIST tutorial), train step", "train", 64,
            (1, 28, 28)),
    "b14": ("MLP 784-512-512-10, eval forward", "eval", 1, (784,)),
    "b15": ("5x5 pad-2 convs 64->64 on 8x8 maps + BN, train step", "train", 32, (64, 8, 8)),
    "b16": ("ResNet-18-style downsampling: 3x3/2 128->256 on 8x8, 3x3 256->256 on 4x4 + BN, "
            "train step", "train", 16, (128, 8, 8)),
    "b17": ("DCGAN-style 4x4 stride-2 pad-1 convs 3->64->128->256 + BN, train step", "train",
            64, (3, 32, 32)),
    "b18": ("ResNet-50-style bottleneck: 1x1 256->64, 3x3 64->64, 1x1 64->256 on 8x8 + BN, "
            "train step", "train", 32, (256, 8, 8)),
    "b19": ("MLP 784-1024-1024-10 with bias, eval forward", "eval", 512, (784,)),
    "b20": ("5x5 stride-2 pad-2 convs 16->32->64 with bias on 64x64, train step", "train", 16,
            (16, 64, 64)),
    "b21": ("wide 3x3 convs 256->512->512 on 4x4 + BN at batch 2, train step", "train", 2,
            (256, 4, 4)),
    "b22": ("2x2 convs 3->160 pad 1, 160->8 on 6x6 maps + BN, train step", "train", 32,
            (3, 6, 6)),
    "b23": ("MLP 784-1024-1024-10 with bias, train step", "train", 1, (784,)),
    "b24": ("3x3 convs 64->512->128 pad 1 on 12x12 + BN at batch 1, train step", "train", 1,
            (64, 12, 12)),
}
NUM_CLASSES = 10


def breadth_batch(config_id, tiny):
    """The batch size of a configuration (at most 2 with the tiny sizes of ``--quick``)."""
    batch = BREADTH[config_id][2]
    return min(batch, 2) if tiny else batch


def build_breadth(config_id, minidl):
    """The minidl network of breadth configuration ``config_id``, from ``minidl.manual_seed(0)``.

    Returns:
        minidl.Sequential: logits ``(N, 10)`` for inputs of ``BREADTH[config_id][3]``.
    """
    layers, models = minidl.layers, minidl.models
    minidl.manual_seed(0)

    def conv_bn_relu(cin, cout, k, stride=1, padding=0):
        return [layers.Conv2D(cin, cout, k, stride=stride, padding=padding, bias=False),
                layers.BatchNorm2D(cout), layers.ReLU()]

    def dense_bn_relu(fin, fout):
        return [layers.Dense(fin, fout, bias=False), layers.BatchNorm1D(fout), layers.ReLU()]

    if config_id == "b1":
        body = dense_bn_relu(784, 1024) + dense_bn_relu(1024, 1024) + dense_bn_relu(1024, 1024)
        return minidl.Sequential(*body, layers.Dense(1024, NUM_CLASSES))
    if config_id == "b2":
        body = (conv_bn_relu(64, 128, 1) + conv_bn_relu(128, 64, 1)
                + conv_bn_relu(64, 128, 1) + conv_bn_relu(128, 64, 1))
        return minidl.Sequential(*body, layers.MaxPool2D(2), layers.Flatten(),
                                 layers.Dense(64 * 8 * 8, NUM_CLASSES))
    if config_id == "b3":
        body = (conv_bn_relu(3, 32, 3, 1, 1) + conv_bn_relu(32, 64, 3, 2, 1)
                + conv_bn_relu(64, 128, 3, 2, 1) + conv_bn_relu(128, 256, 3, 2, 1))
        return minidl.Sequential(*body, layers.Flatten(), layers.Dense(256 * 4 * 4, NUM_CLASSES))
    if config_id == "b4":
        return minidl.Sequential(
            *conv_bn_relu(3, 64, 5, 1, 2), layers.MaxPool2D(2),
            *conv_bn_relu(64, 128, 3, 1, 1), *conv_bn_relu(128, 128, 3, 1, 1), layers.MaxPool2D(2),
            layers.Flatten(), layers.Dense(128 * 8 * 8, NUM_CLASSES))
    if config_id in ("b5", "b7", "b11"):
        return models.mnist_cnn(norm="batch")
    if config_id == "b6":
        return models.mnist_cnn(norm=None)
    if config_id == "b8":
        return minidl.Sequential(
            *conv_bn_relu(3, 64, 7, 2, 3), layers.MaxPool2D(3, stride=2),
            *conv_bn_relu(64, 64, 3, 1, 1), layers.MaxPool2D(2),
            layers.Flatten(), layers.Dense(64 * 7 * 7, NUM_CLASSES))
    if config_id == "b9":
        return minidl.Sequential(
            layers.Conv2D(1, 6, 5), layers.ReLU(), layers.MaxPool2D(2),
            layers.Conv2D(6, 16, 5), layers.ReLU(), layers.MaxPool2D(2), layers.Flatten(),
            layers.Dense(16 * 4 * 4, 120), layers.ReLU(), layers.Dense(120, 84), layers.ReLU(),
            layers.Dense(84, NUM_CLASSES))
    if config_id == "b10":
        return minidl.Sequential(layers.Dense(784, 256), layers.ReLU(), layers.Dense(256, 256),
                                 layers.ReLU(), layers.Dense(256, NUM_CLASSES))
    if config_id == "b12":
        return models.vgg_cifar(norm="batch")
    if config_id == "b13":
        return minidl.Sequential(
            layers.Conv2D(1, 32, 5, padding=2), layers.ReLU(), layers.MaxPool2D(2),
            layers.Conv2D(32, 64, 5, padding=2), layers.ReLU(), layers.MaxPool2D(2),
            layers.Flatten(), layers.Dense(64 * 7 * 7, 1024), layers.ReLU(),
            layers.Dense(1024, NUM_CLASSES))
    if config_id == "b14":
        return minidl.Sequential(layers.Dense(784, 512), layers.ReLU(), layers.Dense(512, 512),
                                 layers.ReLU(), layers.Dense(512, NUM_CLASSES))
    if config_id == "b15":
        body = conv_bn_relu(64, 64, 5, 1, 2) + conv_bn_relu(64, 64, 5, 1, 2)
        return minidl.Sequential(*body, layers.Flatten(), layers.Dense(64 * 8 * 8, NUM_CLASSES))
    if config_id == "b16":
        body = conv_bn_relu(128, 256, 3, 2, 1) + conv_bn_relu(256, 256, 3, 1, 1)
        return minidl.Sequential(*body, layers.Flatten(), layers.Dense(256 * 4 * 4, NUM_CLASSES))
    if config_id == "b17":
        body = (conv_bn_relu(3, 64, 4, 2, 1) + conv_bn_relu(64, 128, 4, 2, 1)
                + conv_bn_relu(128, 256, 4, 2, 1))
        return minidl.Sequential(*body, layers.Flatten(), layers.Dense(256 * 4 * 4, NUM_CLASSES))
    if config_id == "b18":
        body = (conv_bn_relu(256, 64, 1) + conv_bn_relu(64, 64, 3, 1, 1)
                + conv_bn_relu(64, 256, 1))
        return minidl.Sequential(*body, layers.Flatten(), layers.Dense(256 * 8 * 8, NUM_CLASSES))
    if config_id == "b19":
        return minidl.Sequential(layers.Dense(784, 1024), layers.ReLU(), layers.Dense(1024, 1024),
                                 layers.ReLU(), layers.Dense(1024, NUM_CLASSES))
    if config_id == "b20":
        return minidl.Sequential(
            layers.Conv2D(16, 32, 5, stride=2, padding=2), layers.ReLU(),
            layers.Conv2D(32, 64, 5, stride=2, padding=2), layers.ReLU(),
            layers.GlobalAvgPool2D(), layers.Dense(64, NUM_CLASSES))
    if config_id == "b21":
        body = conv_bn_relu(256, 512, 3, 1, 1) + conv_bn_relu(512, 512, 3, 1, 1)
        return minidl.Sequential(*body, layers.GlobalAvgPool2D(), layers.Dense(512, NUM_CLASSES))
    if config_id == "b22":
        body = conv_bn_relu(3, 160, 2, 1, 1) + conv_bn_relu(160, 8, 2, 1, 0)
        return minidl.Sequential(*body, layers.Flatten(), layers.Dense(8 * 6 * 6, NUM_CLASSES))
    if config_id == "b23":
        return minidl.Sequential(layers.Dense(784, 1024), layers.ReLU(), layers.Dense(1024, 1024),
                                 layers.ReLU(), layers.Dense(1024, NUM_CLASSES))
    if config_id == "b24":
        body = conv_bn_relu(64, 512, 3, 1, 1) + conv_bn_relu(512, 128, 3, 1, 1)
        return minidl.Sequential(*body, layers.GlobalAvgPool2D(), layers.Dense(128, NUM_CLASSES))
    raise KeyError(f"unknown breadth configuration {config_id!r}")


def torch_twin(model, minidl, torch, flat_input=False):
    """The ``torch.nn`` network with the same layers as the minidl ``model`` (same child names,
    so ``state_dict`` keys match), with PyTorch's default initialization.

    Args:
        flat_input (bool): the module's input is ``(N, C)`` (a minidl ``BatchNorm`` then becomes
            ``BatchNorm1d``, else ``BatchNorm2d``); inside a Sequential it is known from the
            layer before (a Dense or Flatten gives flat outputs).
    Raises:
        TypeError: a minidl layer this function does not know.
    """
    nn, layers = torch.nn, minidl.layers
    if isinstance(model, minidl.Sequential):
        children = []
        for child in model:
            children.append(torch_twin(child, minidl, torch, flat_input))
            if isinstance(child, (layers.Dense, layers.Flatten)):
                flat_input = True
            elif isinstance(child, (layers.Conv2D, layers.MaxPool2D)):
                flat_input = False
        return nn.Sequential(*children)
    if isinstance(model, layers.Conv2D):
        return nn.Conv2d(model.in_channels, model.out_channels, model.kernel_size,
                         stride=model.stride, padding=model.padding, bias=model.bias is not None)
    if isinstance(model, layers.Dense):
        return nn.Linear(model.in_features, model.out_features, bias=model.bias is not None)
    if isinstance(model, layers.BatchNorm):
        flat = isinstance(model, layers.BatchNorm1D) or (
            flat_input and not isinstance(model, layers.BatchNorm2D))
        twin = nn.BatchNorm1d if flat else nn.BatchNorm2d
        return twin(model.num_features, eps=model.eps, momentum=model.momentum,
                    affine=model.affine, track_running_stats=model.track_running_stats)
    if isinstance(model, layers.ReLU):
        return nn.ReLU()
    if isinstance(model, layers.MaxPool2D):
        return nn.MaxPool2d(model.kernel_size, model.stride)
    if isinstance(model, layers.Flatten):
        return nn.Flatten()
    if isinstance(model, layers.Residual):
        return _TorchResidual(torch, torch_twin(model.body, minidl, torch, flat_input),
                              None if model.shortcut is None
                              else torch_twin(model.shortcut, minidl, torch, flat_input))
    if isinstance(model, layers.GlobalAvgPool2D):
        return _TorchGlobalAvgPool(torch)
    if isinstance(model, layers.Identity):
        return nn.Identity()
    if isinstance(model, minidl.models.resnet.ZeroPadShortcut):
        return _TorchZeroPadShortcut(torch, model.out_channels - model.in_channels, model.stride)
    raise TypeError(f"torch_twin: no PyTorch twin for {type(model).__name__}")


def _TorchResidual(torch, body, shortcut):
    """``body(x) + shortcut(x)`` (identity when None), children named like minidl's Residual."""
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))
    return Residual()


def _TorchGlobalAvgPool(torch):
    """``(N, C, H, W) -> (N, C)``: the mean over H and W, one module like minidl's."""
    class GlobalAvgPool(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))
    return GlobalAvgPool()


def _TorchZeroPadShortcut(torch, extra, stride):
    """ResNet's option A: subsample with ``stride`` and append ``extra`` zero channels."""
    class ZeroPadShortcut(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, extra))
    return ZeroPadShortcut()


def torch_network(kind, batch_norm, torch):
    """``minidl.models.mnist_cnn`` (``kind="mnist"``) or ``vgg_cifar`` (``"cifar"``)
    written with ``torch.nn`` modules, children numbered as in minidl: for processes that
    measure PyTorch without importing minidl (the peak-memory workloads)."""
    nn = torch.nn

    def conv(cin, cout):
        block = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
        return block + ([nn.BatchNorm2d(cout)] if batch_norm else []) + [nn.ReLU()]

    if kind == "mnist":
        hidden = [nn.Linear(64 * 7 * 7, 128, bias=not batch_norm)]
        hidden += [nn.BatchNorm1d(128)] if batch_norm else []
        return nn.Sequential(*conv(1, 32), nn.MaxPool2d(2), *conv(32, 64), nn.MaxPool2d(2),
                             nn.Flatten(), *hidden, nn.ReLU(), nn.Linear(128, NUM_CLASSES))
    return nn.Sequential(*conv(3, 32), *conv(32, 32), nn.MaxPool2d(2),
                         *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
                         *conv(64, 128), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(128 * 4 * 4, NUM_CLASSES))
