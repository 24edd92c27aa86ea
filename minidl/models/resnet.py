"""ResNets for CIFAR-10 (He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image
Recognition", section 4.2), built from :class:`~minidl.layers.Residual` blocks.

The network of section 4.2: a 3x3 convolution with 16 channels, then three stages of ``n``
basic blocks on 32x32, 16x16 and 8x8 maps with 16, 32 and 64 channels, global average pooling
and a 10-way dense layer: ``6n + 2`` weighted layers (ResNet-20: n = 3, 0.27M parameters).
A basic block is ``conv 3x3 – BN – ReLU – conv 3x3 – BN``, added to the shortcut, then ReLU;
the first block of stages 2 and 3 halves the size with stride 2 and doubles the channels, and
its shortcut must change shape too:

* option A (the paper's CIFAR networks, section 4.2: "we use identity shortcuts in all cases"):
  the identity, subsampled with stride 2 and padded with zero channels -- no parameters
  (:class:`ZeroPadShortcut`);
* option B (section 3.3): a projection, 1x1 convolution with stride 2 and BN.
"""
import numbers

import numpy as np

from .. import _memory, layers
from .._checks import check_input, check_grad, positive_int
from .._grad_mode import save_for_backward, saved_for_backward
from .._random import get_rng
from ..model import Sequential
from .norms import check_norm, check_norm_position, conv_norm_act, has_bias, make_norm

__all__ = ["resnet_cifar", "basic_block", "ZeroPadShortcut", "SHORTCUTS"]

SHORTCUTS = ("A", "B")


class ZeroPadShortcut(layers.Module):
    """ResNet's option-A shortcut: subsample with ``stride``, append zero channels.

    ``out[:, :C_in] = x[:, :, ::stride, ::stride]`` and ``out[:, C_in:] = 0`` (He et al.
    2016, section 3.3, option A: "the shortcut still performs identity mapping, with extra zero
    entries padded for increasing dimensions", strided to match the body's stride 2). It has
    no parameters; its gradient is ``dout[:, :C_in]`` at the sampled positions, 0 elsewhere.

    Args:
        in_channels (int): ``C_in``.
        out_channels (int): ``C_out >= C_in``.
        stride (int): the subsampling step (the body's stride), >= 1.

    Shape:
        input ``(N, C_in, H, W)`` float32/float64 -> output
        ``(N, C_out, ceil(H / stride), ceil(W / stride))``, the size of a 3x3 convolution with
        padding 1 and this stride.

    Raises:
        ValueError: ``out_channels < in_channels`` or a non-positive argument; an input with
            another channel count; a gradient of the wrong shape.
        TypeError: a non-float input or gradient.
    """

    def __init__(self, in_channels, out_channels, stride=2):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels", "ZeroPadShortcut")
        self.out_channels = positive_int(out_channels, "out_channels", "ZeroPadShortcut")
        self.stride = positive_int(stride, "stride", "ZeroPadShortcut")
        if self.out_channels < self.in_channels:
            raise ValueError(f"ZeroPadShortcut: out_channels ({out_channels}) must be >= "
                             f"in_channels ({in_channels})")
        self._cache = None

    def forward(self, x):
        """``x`` subsampled and padded with zero channels (a new array)."""
        check_input("ZeroPadShortcut", x, "NCHW", {"C": self.in_channels})
        s = self.stride
        sampled = x[:, :, ::s, ::s]
        out = _memory.zeros((x.shape[0], self.out_channels) + sampled.shape[2:], x.dtype)
        out[:, :self.in_channels] = sampled
        self._cache = save_for_backward((x.shape, out.shape, x.dtype))
        return out

    def backward(self, dout, input_grad=True):
        """d loss / d x: ``dout``'s first ``C_in`` channels at the sampled positions."""
        x_shape, out_shape, dtype = saved_for_backward("ZeroPadShortcut", self._cache)
        check_grad("ZeroPadShortcut", dout, out_shape, dtype)
        if not input_grad:
            return None
        dx = _memory.zeros(x_shape, dtype)
        dx[:, :, ::self.stride, ::self.stride] = dout[:, :self.in_channels]
        return dx

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _conv3x3(in_channels, out_channels, stride, norm, norm_position, rng):
    return layers.Conv2D(in_channels, out_channels, kernel_size=3, stride=stride, padding=1,
                         bias=has_bias(norm, norm_position), rng=rng)


def basic_block(in_channels, out_channels, stride=1, norm="batch", shortcut="A",
                norm_position="before", rng=None):
    """One basic block: ``Sequential(Residual(body, shortcut), ReLU())``.

    ``body = conv 3x3 (stride) – [norm] – ReLU – conv 3x3 – [norm]`` (He et al. 2016, figure 2
    left, BN after each convolution as in section 3.4). The shortcut is the identity when the
    shape stays, else option A (:class:`ZeroPadShortcut`) or B (``conv 1x1 (stride) –
    [norm]``). With ``norm_position="after"`` the first norm follows the ReLU; the second one
    stays before the addition (no activation comes between them).

    Args:
        in_channels, out_channels (int): channels in and out.
        stride (int): 1, or 2 to halve the size.
        norm, norm_position, rng: as in :func:`resnet_cifar`.
        shortcut (str): ``"A"`` or ``"B"``, used only when the shape changes.
    Returns:
        Sequential: ``(N, C_in, H, W) -> (N, C_out, ceil(H/stride), ceil(W/stride))``.
    """
    rng = get_rng(rng)
    body = Sequential(
        *conv_norm_act(_conv3x3(in_channels, out_channels, stride, norm, norm_position, rng),
                       out_channels, norm, norm_position, "resnet_cifar"),
        *conv_norm_act(_conv3x3(out_channels, out_channels, 1, norm, "before", rng),
                       out_channels, norm, "before", "resnet_cifar", activation=False),
    )
    if stride == 1 and in_channels == out_channels:
        side = None
    elif shortcut == "A":
        side = ZeroPadShortcut(in_channels, out_channels, stride)
    else:
        projection = layers.Conv2D(in_channels, out_channels, kernel_size=1, stride=stride,
                                   bias=norm is None, rng=rng)
        normalization = make_norm(norm, out_channels, "resnet_cifar")
        side = Sequential(projection, *([normalization] if normalization else []))
    return Sequential(layers.Residual(body, side), layers.ReLU())


def resnet_cifar(depth=20, norm="batch", shortcut="A", norm_position="before", num_classes=10,
                 rng=None):
    """The CIFAR-10 ResNet of He et al. (2016), section 4.2: depth ``6n + 2``.

    ``conv 3x3 3→16 – [norm] – ReLU``, three stages of ``n`` :func:`basic_block` s (16, 32, 64
    channels; the first block of stages 2 and 3 has stride 2), global average pooling, dense
    64→``num_classes``. ResNet-20 (``n = 3``, default) has 269,722 parameters with BatchNorm
    and option A (the paper's 0.27M); 32, 44, 56 and 110 are the paper's other depths.

    The default shortcut is option A, as in the paper's CIFAR experiments (and its parameter
    counts): identity shortcuts add no parameters, and the paper found the projections of
    option B only marginally better (section 3.3 / table 3, on ImageNet). A convolution
    followed directly by a normalization has no bias; without normalization every convolution
    has one (the "plain" networks of the comparison with and without BatchNorm).

    Args:
        depth (int): ``6n + 2`` with ``n >= 1``: 8, 14, 20 (default), 32, 44, 56, 110, ...
        norm: None, a name in :data:`minidl.models.NORMS` (``"batch"``, default) or a callable
            ``num_channels -> Module``.
        shortcut (str): ``"A"`` (default: zero-padding identity) or ``"B"`` (1x1 projection +
            norm) where the shape changes; elsewhere the identity.
        norm_position (str): ``"before"`` (default) or ``"after"`` the ReLU, for the stem and
            the first convolution of every block (the second is always followed by its norm,
            then the addition).
        num_classes (int): outputs of the last layer (default 10).
        rng: generator or seed for the initialization (default: minidl's global generator).
    Returns:
        Sequential: input ``(N, 3, H, W)`` float32 (32x32 for CIFAR-10), output logits
        ``(N, num_classes)``. Children: ``0`` conv, ``1`` norm, ``2`` ReLU (without norm:
        ``0`` conv, ``1`` ReLU), then the three stages, :class:`~minidl.layers.GlobalAvgPool2D`
        and the dense layer.
    Raises:
        ValueError: ``depth`` is not ``6n + 2`` with ``n >= 1``; an unknown ``shortcut``,
            ``norm`` or ``norm_position``; ``num_classes`` not an integer >= 1.
        TypeError: a ``norm`` of the wrong type.
    """
    if (isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 8
            or (depth - 2) % 6):
        raise ValueError(f"resnet_cifar: depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, "
                         f"56, 110, ...), got {depth!r}")
    norm = check_norm(norm, "resnet_cifar")
    check_norm_position(norm_position, "resnet_cifar")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"resnet_cifar: shortcut must be 'A' (zero-padding identity) or 'B' "
                         f"(1x1 projection), got {shortcut!r}")
    num_classes = positive_int(num_classes, "num_classes", "resnet_cifar")
    n = (int(depth) - 2) // 6
    rng = get_rng(rng)
    stem = conv_norm_act(_conv3x3(3, 16, 1, norm, norm_position, rng), 16, norm, norm_position,
                         "resnet_cifar")
    stages, channels = [], 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        blocks = []
        for i in range(n):
            blocks.append(basic_block(channels, width, stride if i == 0 else 1, norm, shortcut,
                                      norm_position, rng))
            channels = width
        stages.append(Sequential(*blocks))
    return Sequential(*stem, *stages, layers.GlobalAvgPool2D(),
                      layers.Dense(64, num_classes, rng=rng))
