"""Pooling layers."""
from .._checks import check_grad
from .._grad_mode import save_for_backward, saved_for_backward
from ..functional.pooling import max_pool2d_backward, max_pool2d_forward, pool_params
from .module import Module

__all__ = ["MaxPool2D"]


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
        self._cache = None  # frees the previous indices before new ones are allocated
        out, cache = max_pool2d_forward(x, self.kernel_size, self.stride, layer="MaxPool2D")
        self._cache = save_for_backward(cache)
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

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
