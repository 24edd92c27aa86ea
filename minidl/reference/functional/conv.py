"""2-D convolution by its definition: the readable, runnable twin of :mod:`minidl.functional.conv`.

The convolution sum (a cross-correlation: the kernel is not flipped, as in
``torch.nn.functional.conv2d``). Goodfellow, Bengio & Courville (2016), "Deep Learning",
section 9.5, eq. 9.8 (there with 1-based indices and no padding), for an input ``x`` of shape
``(N, C_in, H, W)`` padded with ``(pH, pW)`` zeros on each side, a weight of shape
``(C_out, C_in, kH, kW)`` and a stride ``(sH, sW)``::

    out[n, o, oh, ow] = bias[o] + sum over c, i, j of
                        weight[o, c, i, j] * x_padded[n, c, oh*sH + i, ow*sW + j]

    OH = (H + 2*pH - kH) // sH + 1,   OW = (W + 2*pW - kW) // sW + 1

Its gradients, for ``dout = d loss / d out`` (the same book, eqs. 9.11 and 9.13)::

    dbias[o]            = sum over n, oh, ow of dout[n, o, oh, ow]
    dweight[o, c, i, j] = sum over n, oh, ow of dout[n, o, oh, ow] * x_padded[n, c, oh*sH + i, ow*sW + j]
    dx_padded[n, c, oh*sH + i, ow*sW + j] += sum over o of weight[o, c, i, j] * dout[n, o, oh, ow]

and ``dx`` is ``dx_padded`` without its border. The code below computes exactly these sums,
one kernel tap ``(i, j)`` at a time: for a fixed tap, the input elements it multiplies form one
strided slice of ``x_padded`` (:func:`tap`), and the sum over ``c`` is one ``np.einsum``
(``optimize=True`` lets NumPy compute that sum as a matrix product: the same sum, faster).

Like everything in :mod:`minidl.reference`, nothing here validates its inputs; the public op
:func:`minidl.functional.conv2d_forward` does that before it calls this one.
"""
from typing import NamedTuple, Tuple

import numpy as np

from ..._checks import pair
from ._result import into

__all__ = ["Conv2dCache", "output_size", "pad", "tap", "conv2d_forward", "conv2d_backward"]


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass.

    Attributes:
        x_padded (np.ndarray): the input with its zero border, ``(N, C_in, H + 2*pH, W + 2*pW)``
            (a copy: changing the input afterwards does not change the gradients).
        weight (np.ndarray): ``(C_out, C_in, kH, kW)``.
        has_bias (bool): whether the forward added a bias.
        stride (tuple): ``(sH, sW)``.
        padding (tuple): ``(pH, pW)``.
        out_shape (tuple): ``(N, C_out, OH, OW)``, the shape ``dout`` must have.
    """

    x_padded: np.ndarray
    weight: np.ndarray
    has_bias: bool
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    out_shape: Tuple[int, int, int, int]

    @property
    def dtype(self):
        """dtype of the input, the output and every gradient."""
        return self.x_padded.dtype


def output_size(size, kernel, stride, padding):
    """Output length along one axis: ``(size + 2*padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def pad(x, padding):
    """``x`` of shape ``(N, C, H, W)`` with ``padding = (pH, pW)`` zeros around H and W (a copy)."""
    pad_h, pad_w = padding
    return np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))


def tap(x_padded, i, j, out_hw, stride):
    """The elements kernel tap ``(i, j)`` multiplies, for every output position.

    Returns the ``(N, C, OH, OW)`` view ``v`` of ``x_padded`` with
    ``v[n, c, oh, ow] = x_padded[n, c, oh*sH + i, ow*sW + j]`` (writing into ``v`` writes into
    ``x_padded``).
    """
    out_h, out_w = out_hw
    stride_h, stride_w = stride
    return x_padded[:, :, i:i + stride_h * (out_h - 1) + 1:stride_h,
                    j:j + stride_w * (out_w - 1) + 1:stride_w]


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, layer="conv2d", workspace=None,
                   method="auto", out=None):
    """2-D convolution (cross-correlation) of a batch by the convolution sum.

    Same arguments and results as :func:`minidl.functional.conv2d_forward`; ``layer``,
    ``workspace`` and ``method`` are accepted for that reason and ignored (there is one method
    here: the definition).

    Args:
        x (np.ndarray): ``(N, C_in, H, W)``, float32 or float64.
        weight (np.ndarray): ``(C_out, C_in, kH, kW)``, the dtype of ``x``.
        bias (np.ndarray or None): ``(C_out,)``.
        stride (int or pair): ``(sH, sW)``, default 1.
        padding (int or pair): zeros ``(pH, pW)`` on each side, default 0.
        out (np.ndarray or None): where to write the result; a new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C_out, OH, OW)`` in the dtype of ``x``; ``cache`` is a
        :class:`Conv2dCache`.
    """
    stride = pair(stride, "stride", layer, minimum=1)
    padding = pair(padding, "padding", layer, minimum=0)
    n, _, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_hw = (output_size(height, kernel_h, stride[0], padding[0]),
              output_size(width, kernel_w, stride[1], padding[1]))
    x_padded = pad(x, padding)

    result = np.zeros((n, out_channels) + out_hw, dtype=x.dtype)
    for i in range(kernel_h):
        for j in range(kernel_w):
            # out[n, o, oh, ow] += sum over c of weight[o, c, i, j] * x_padded[n, c, oh*sH + i, ow*sW + j]
            result += np.einsum("oc,nchw->nohw", weight[:, :, i, j],
                                tap(x_padded, i, j, out_hw, stride), optimize=True)
    if bias is not None:
        result += bias.reshape(1, out_channels, 1, 1)

    cache = Conv2dCache(x_padded, weight, bias is not None, stride, padding, result.shape)
    return into(out, result), cache


def conv2d_backward(dout, cache, layer="conv2d", input_grad=True):
    """Gradients of :func:`conv2d_forward` by the sums in the module docstring.

    Same arguments and results as :func:`minidl.functional.conv2d_backward` (``layer`` is
    ignored). Unlike the compiled op, a cache may be used more than once.

    Args:
        dout (np.ndarray): d loss / d out, ``(N, C_out, OH, OW)``, the dtype of the output.
        cache (Conv2dCache): the second value returned by :func:`conv2d_forward`.
        input_grad (bool): compute ``dx`` (default); with False it is None.
    Returns:
        (dx, dweight, dbias): ``(N, C_in, H, W)`` (or None), ``(C_out, C_in, kH, kW)`` and
        ``(C_out,)`` (None without bias), in the dtype of the input.
    """
    x_padded, weight, has_bias, stride, padding, out_shape = cache
    _, _, kernel_h, kernel_w = weight.shape
    out_hw = out_shape[2:]

    # dbias[o] = sum over n, oh, ow of dout[n, o, oh, ow]
    dbias = dout.sum(axis=(0, 2, 3)) if has_bias else None
    dweight = np.empty_like(weight)
    dx_padded = np.zeros_like(x_padded) if input_grad else None
    for i in range(kernel_h):
        for j in range(kernel_w):
            x_tap = tap(x_padded, i, j, out_hw, stride)
            # dweight[o, c, i, j] = sum over n, oh, ow of dout[n, o, oh, ow] * x_tap[n, c, oh, ow]
            dweight[:, :, i, j] = np.einsum("nohw,nchw->oc", dout, x_tap, optimize=True)
            if input_grad:
                # every x_padded[n, c, oh*sH + i, ow*sW + j] gets sum over o of
                # weight[o, c, i, j] * dout[n, o, oh, ow]; within one tap the targets are
                # distinct, across taps they overlap, hence "+="
                tap(dx_padded, i, j, out_hw, stride)[...] += np.einsum(
                    "oc,nohw->nchw", weight[:, :, i, j], dout, optimize=True)
    if not input_grad:
        return None, dweight, dbias
    pad_h, pad_w = padding
    height = x_padded.shape[2] - 2 * pad_h
    width = x_padded.shape[3] - 2 * pad_w
    dx = dx_padded[:, :, pad_h:pad_h + height, pad_w:pad_w + width]  # the border was padding
    return dx, dweight, dbias
