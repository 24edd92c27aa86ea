"""The 2-D convolution layer."""
import numpy as np

from .._checks import (check_allocation, check_bool, check_input, check_kept, float_dtype, pair,
                       positive_int)
from .._grad_mode import saved_for_backward
from ..functional.conv import check_method, conv2d_backward, conv2d_forward
from .init import uniform_fan_in
from .module import Module, Parameter

__all__ = ["Conv2D"]


class Conv2D(Module):
    """2-D convolution over a batch of images, like ``torch.nn.Conv2d`` (dilation 1, groups 1).

    ``out[n, o] = bias[o] + sum_c cross_correlate(x[n, c], weight[o, c])`` with the given stride
    and zero padding; computed as a matrix product per image for 1x1 kernels without padding
    (unless images of fewer than 25 output positions come in large batches), with direct
    loops when ``C_in*kH*kW`` is small and the stride 1, with Winograd's F(2x2, 3x3) for other
    3x3 stride-1 convolutions and F(2x2, 5x5) for 5x5 stride-1 ones with at least 8 input
    channels and a padding of at most 4 where the work it saves pays for its transforms (Lavin
    & Gray, 2016), with direct loops again for other stride-1 kernels with at most 8 output
    channels, and with im2col (or unfold, im2col in the weight's order) and GEMMs otherwise
    (Chellapilla et al., 2006); see :mod:`minidl.functional.conv`.

    Args:
        in_channels (int): ``C_in``.
        out_channels (int): ``C_out``.
        kernel_size (int or pair): ``(kH, kW)``.
        stride (int or pair): ``(sH, sW)``, default 1.
        padding (int or pair): zeros on each side ``(pH, pW)``, default 0.
        bias (bool): learn a per-channel bias (default True).
        rng (np.random.Generator or int or None): initialization randomness (default: minidl's
            global generator, see ``minidl.manual_seed``).
        dtype: float32 (default) or float64, the dtype of the parameters.
        method (str): ``"auto"`` (default), ``"direct"``, ``"winograd"``, ``"pointwise"``,
            ``"unfold"`` or ``"im2col"``: how the convolution is computed (see
            :func:`minidl.functional.conv.choose_method`); ``"auto"`` uses one matrix product
            per image for 1x1 kernels without padding (unless images of fewer than 25 output
            positions come in batches of more than 16), direct loops when ``C_in*kH*kW`` is
            small (on large maps, or for little work), unfold (im2col in the weight's order)
            for at most 160 output positions in the batch and at least twice as many output
            channels, Winograd for other 3x3 stride-1 kernels and for 5x5 stride-1 kernels on
            8 or more input channels (padding at most 4) where it pays (large enough maps and
            batches), direct loops for other stride-1 kernels with at most 8 output channels
            (and 256 taps), else im2col and matrix products.

    Parameters are initialized as PyTorch does: U(-b, b) with ``b = 1/sqrt(C_in*kH*kW)`` for
    both ``weight`` and ``bias`` (see :mod:`minidl.layers.init`).

    Shape:
        input ``(N, C_in, H, W)`` float32 or float64 -> output ``(N, C_out, OH, OW)`` in the
        input's dtype, ``OH = (H + 2*pH - kH) // sH + 1``, ``OW = (W + 2*pW - kW) // sW + 1``.
        If the input's dtype differs from the parameters', the parameters are cast for the
        computation and the gradients cast back when accumulated.

    Raises:
        ValueError: bad constructor arguments; an input of the wrong rank, channel count or
            too small for the kernel; a gradient of the wrong shape.
        TypeError: a non-float input or gradient; a ``dtype`` other than float32/float64; a
            ``bias`` that is not a bool.
        MemoryError: a weight (at construction) or an output too large for this machine.
        RuntimeError: ``backward`` before ``forward``, or after a forward under
            :class:`minidl.no_grad`; the input or the weight was modified in place between
            ``forward`` and ``backward`` (PyTorch raises there too).

    Example::

        conv = Conv2D(3, 16, kernel_size=3, padding=1)
        y = conv(np.zeros((8, 3, 32, 32), np.float32))   # (8, 16, 32, 32)
        dx = conv.backward(np.ones_like(y))               # accumulates conv.weight.grad
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 rng=None, dtype=np.float32, method="auto"):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels", "Conv2D")
        self.out_channels = positive_int(out_channels, "out_channels", "Conv2D")
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2D", minimum=1)
        self.stride = pair(stride, "stride", "Conv2D", minimum=1)
        self.padding = pair(padding, "padding", "Conv2D", minimum=0)
        self.method = method
        check_method(method, "Conv2D", self.stride, self.kernel_size, self.padding)
        dtype = float_dtype("Conv2D", dtype)
        bias = check_bool("Conv2D", "bias", bias)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        weight_shape = (self.out_channels, self.in_channels) + self.kernel_size
        check_allocation("Conv2D", "weight", (2,) + weight_shape, dtype)  # with its grad
        self.weight = Parameter(uniform_fan_in(weight_shape, fan_in, rng, dtype))
        if bias:
            self.bias = Parameter(uniform_fan_in((self.out_channels,), fan_in, rng, dtype))
        else:
            self.bias = None
        self._cache = None
        self._watched = ()  # fingerprints of the arrays the cache refers to (see forward)

    def _params_as(self, dtype):
        """``(weight, bias)`` data in ``dtype`` (no copy when it already matches)."""
        weight = self.weight.data.astype(dtype, copy=False)
        bias = None if self.bias is None else self.bias.data.astype(dtype, copy=False)
        return weight, bias

    def forward(self, x):
        """Convolve ``x`` ``(N, C_in, H, W)``; returns ``(N, C_out, OH, OW)`` in x's dtype."""
        check_input("Conv2D", x, "NCHW", {"C": self.in_channels})
        self._release_saved()  # frees the previous step's arrays before this one allocates
        weight, bias = self._params_as(x.dtype)
        out, cache = conv2d_forward(x, weight, bias, self.stride, self.padding, layer="Conv2D",
                                    method=self.method)
        self._keep_for_backward(cache, input=x, weight=self.weight.data)
        return out

    def backward(self, dout, input_grad=True):
        """Accumulate ``weight.grad`` / ``bias.grad`` and return d loss / d x.

        Each forward pass supports one backward pass, as PyTorch's autograd without
        ``retain_graph``: the backward pass releases what the forward pass kept for it.

        Args:
            dout (np.ndarray): ``(N, C_out, OH, OW)``, the shape and dtype of the last output.
            input_grad (bool): compute d loss / d x (default). With False that work is skipped
                and None is returned (the parameter gradients are the same).
        Returns:
            np.ndarray or None: ``(N, C_in, H, W)`` in the dtype of the last input, or None.
        Raises:
            RuntimeError: no forward pass has been run since the last backward pass, or it ran
                under :class:`minidl.no_grad`; the input or weight of the forward pass was
                modified in place since (when the cache refers to it rather than a copy).
            ValueError/TypeError: ``dout`` does not match the last output.
        """
        cache = saved_for_backward("Conv2D", self._cache, " (each forward allows one backward)")
        check_kept("Conv2D", self._watched)
        dx, dweight, dbias = conv2d_backward(dout, cache, layer="Conv2D", input_grad=input_grad)
        self._release_saved()
        self.weight.accumulate_grad(dweight, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(dbias, owned=True)
        return dx

    def extra_repr(self):
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.bias is None:
            text += ", bias=False"
        return text
