"""Pooling layers."""
from .._checks import check_grad
from .._grad_mode import saved_for_backward
from ..functional.pooling import max_pool2d_backward, max_pool2d_forward, pool_params
from ..functional.pooling import (avg_pool2d_backward, avg_pool2d_forward, avg_pool_params,
                                  global_avg_pool2d_backward, global_avg_pool2d_forward)
from ._op import OpLayer
from .module import Module

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D"]


class MaxPool2D(Module):
    """2-D max pooling, like ``torch.nn.MaxPool2d`` (no padding, dilation 1, floor mode).

    ``out[n, c, oh, ow] = max_{i < kH, j < kW} x[n, c, oh*sH + i, ow*sW + j]``; the gradient of
    each output goes to the first maximum of its window in row-major order (PyTorch's rule).
    See :mod:`minidl.functional.pooling`.

    Args:
        kernel_size (int or pair): window ``(kH, kW)``.
        stride (int or pair or None): step ``(sH, sW)``; None (default) means ``kernel_size``.

    Shape:
        input ``(N, C, H, W)`` float32 or float64 with ``H >= kH`` and ``W >= kW`` -> output
        ``(N, C, (H - kH) // sH + 1, (W - kW) // sW + 1)`` in the input's dtype.

    Raises:
        ValueError: bad ``kernel_size``/``stride``; an input of the wrong rank or smaller than
            the window; a gradient of the wrong shape.
        TypeError: a non-float input or gradient.
        RuntimeError: ``backward`` before ``forward``, or after a forward under
            :class:`minidl.no_grad`.

    Example::

        pool = MaxPool2D(2)
        y = pool(np.zeros((8, 16, 32, 32), np.float32))   # (8, 16, 16, 16)
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = pool_params(kernel_size, stride, "MaxPool2D")
        self._cache = None

    def forward(self, x):
        """Pool ``x`` ``(N, C, H, W)``; returns ``(N, C, OH, OW)`` in x's dtype (a new array)."""
        self._release_saved()  # frees the previous indices before new ones are allocated
        out, cache = max_pool2d_forward(x, self.kernel_size, self.stride, layer="MaxPool2D")
        self._keep_for_backward(cache)
        return out

    def backward(self, dout, input_grad=True):
        """Return d loss / d x for the last forward pass.

        Args:
            dout (np.ndarray): the shape and dtype of the last output.
            input_grad (bool): compute d loss / d x (default); with False, return None
                (a pooling layer has no parameters, so there is nothing else to do).
        Returns:
            np.ndarray or None: ``(N, C, H, W)`` in the dtype of the last input.
        Raises:
            RuntimeError: no forward pass has been run, or it ran under
                :class:`minidl.no_grad`.
            ValueError/TypeError: ``dout`` does not match the last output.
        """
        cache = saved_for_backward("MaxPool2D", self._cache)
        if not input_grad:
            check_grad("MaxPool2D", dout, cache.argmax.shape, cache.dtype)
            return None
        return max_pool2d_backward(dout, cache, layer="MaxPool2D")

    def _adopt_cache(self, cache):
        """Keep ``cache`` for ``backward`` as if this layer's forward had made it: the pooling
        of a layer that pooled its own output in its pass (``BatchNorm._forward_relu_pool``,
        through :meth:`Module._call_with_relu`)."""
        self._keep_for_backward(cache)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class AvgPool2D(OpLayer):
    """2-D average pooling, like ``torch.nn.AvgPool2d`` (floor mode, no divisor override).

    ``out[n, c, oh, ow]`` is the sum of the window ``(kH, kW)`` at ``(oh*sH - pH, ow*sW - pW)``
    of the input padded with zeros, divided by ``kH*kW`` (``count_include_pad=True``, PyTorch's
    default: the padded zeros count) or by the number of the window's elements that are not
    padding (``count_include_pad=False``). Every input element of a window receives
    ``dout / divisor`` in the backward pass. Goodfellow, Bengio & Courville (2016), "Deep
    Learning", section 9.3; see :mod:`minidl.functional.pooling`.

    Args:
        kernel_size (int or pair): window ``(kH, kW)``.
        stride (int or pair or None): step ``(sH, sW)``; None (default) means ``kernel_size``.
        padding (int or pair): zeros on each side ``(pH, pW)``, default 0; at most half the
            window, as in PyTorch.
        count_include_pad (bool): count the padded zeros in the divisor (default True).

    Shape:
        input ``(N, C, H, W)`` float32 or float64 with ``H + 2*pH >= kH`` and
        ``W + 2*pW >= kW`` -> output ``(N, C, (H + 2*pH - kH) // sH + 1,
        (W + 2*pW - kW) // sW + 1)`` in the input's dtype.

    Raises:
        ValueError: bad ``kernel_size``/``stride``/``padding``; an input of the wrong rank or
            smaller than the window; a gradient of the wrong shape.
        TypeError: a non-float input or gradient; ``count_include_pad`` not a bool.
        RuntimeError: ``backward`` before ``forward``, or after a forward under
            :class:`minidl.no_grad`.

    Example::

        pool = AvgPool2D(3, stride=2, padding=1)
        y = pool(np.zeros((8, 16, 32, 32), np.float32))   # (8, 16, 16, 16)
    """

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        (self.kernel_size, self.stride, self.padding,
         self.count_include_pad) = avg_pool_params(kernel_size, stride, padding,
                                                   count_include_pad, "AvgPool2D")

    def _forward(self, x):
        return avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                  self.count_include_pad, layer="AvgPool2D")

    def _backward(self, dout, cache):
        return avg_pool2d_backward(dout, cache, layer="AvgPool2D")

    def extra_repr(self):
        text = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        return text + ("" if self.count_include_pad else ", count_include_pad=False")


class GlobalAvgPool2D(OpLayer):
    """The mean of each channel over all positions: ``(N, C, H, W) -> (N, C)``.

    ``out[n, c] = sum_{h, w} x[n, c, h, w] / (H*W)``, the last pooling of ResNet (He et al.
    2016, section 3.4) and of Network In Network (Lin et al. 2014, section 3.2); the same as
    PyTorch's ``nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())``. Its gradient is
    ``dout[n, c] / (H*W)`` at every position. Any ``H, W`` (the layer has no settings).

    Shape:
        input ``(N, C, H, W)`` float32 or float64 -> output ``(N, C)`` in the input's dtype.

    Raises:
        ValueError: an input of the wrong rank or with an empty axis; a gradient of the wrong
            shape.
        TypeError: a non-float input or gradient.
        RuntimeError: ``backward`` before ``forward``, or after a forward under
            :class:`minidl.no_grad`.

    Example::

        pool = GlobalAvgPool2D()
        y = pool(np.zeros((8, 64, 8, 8), np.float32))   # (8, 64)
    """

    def _forward(self, x):
        return global_avg_pool2d_forward(x, layer="GlobalAvgPool2D")

    def _backward(self, dout, cache):
        return global_avg_pool2d_backward(dout, cache, layer="GlobalAvgPool2D")
