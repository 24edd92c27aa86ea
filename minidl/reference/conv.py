"""The column layout of the im2col convolution kernels, and short forms of the convolution: the
test oracles of ``minidl/_kernels/_conv.pyx``.

Definition (cross-correlation, as ``torch.nn.Conv2d``), for ``x`` of shape ``(N, C_in, H, W)``,
``weight`` of shape ``(C_out, C_in, kH, kW)``, stride ``(sH, sW)`` and zero padding
``(pH, pW)``::

    out[n, o, oh, ow] = bias[o] + sum over c, i, j of
                        weight[o, c, i, j] * x_padded[n, c, oh*sH + i, ow*sW + j]

    OH = (H + 2*pH - kH) // sH + 1,   OW = (W + 2*pW - kW) // sW + 1

:func:`conv2d_forward` and :func:`conv2d_backward` here are short forms of the textbook
convolution in :mod:`minidl.reference.functional.conv` (the sum above, one kernel tap at a
time, without im2col, so it checks the im2col route independently): they take the input and
weight directly and return plain arrays. :func:`im2col` and :func:`col2im` define the column
layout used by the Cython kernels (Chellapilla et al., 2006): one row per output position,
taps ordered ``(i, j, c)``::

    cols[(n*OH + oh)*OW + ow, (i*kW + j)*C + c] = x_padded[n, c, oh*sH + i, ow*sW + j]

so that ``out = cols @ weight.transpose(0, 2, 3, 1).reshape(C_out, -1).T`` gives the output
as ``(N*OH*OW, C_out)``, i.e. in NHWC order.

Nothing here validates its inputs; ``kernel_size``, ``stride`` and ``padding`` are pairs of ints.
"""
import numpy as np

from .functional import conv as _textbook
from .functional.conv import output_size, pad as _pad, tap as _tap

__all__ = ["output_size", "im2col", "col2im", "conv2d_forward", "conv2d_backward"]


def im2col(x, kernel_size, stride, padding):
    """Copy every receptive field of ``x`` into one row.

    Args:
        x (np.ndarray): ``(N, C, H, W)``.
        kernel_size, stride, padding: pairs ``(kH, kW)``, ``(sH, sW)``, ``(pH, pW)``.
    Returns:
        np.ndarray: ``cols`` of shape ``(N*OH*OW, kH*kW*C)``, dtype of ``x``, laid out as in
        the module docstring.
    """
    n, c, h, w = x.shape
    kh, kw = kernel_size
    out_hw = (output_size(h, kh, stride[0], padding[0]), output_size(w, kw, stride[1], padding[1]))
    x_padded = _pad(x, padding)
    cols = np.empty((n,) + out_hw + (kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # (N, C, OH, OW) -> (N, OH, OW, C)
            cols[:, :, :, i, j, :] = _tap(x_padded, i, j, out_hw, stride).transpose(0, 2, 3, 1)
    return cols.reshape(n * out_hw[0] * out_hw[1], kh * kw * c)


def col2im(cols, x_shape, kernel_size, stride, padding):
    """Fold rows back into an image, adding overlapping taps (the adjoint of :func:`im2col`).

    Args:
        cols (np.ndarray): ``(N*OH*OW, kH*kW*C)``.
        x_shape (tuple): ``(N, C, H, W)``, the shape of the image im2col was applied to.
        kernel_size, stride, padding: pairs, as for :func:`im2col`.
    Returns:
        np.ndarray: ``(N, C, H, W)``, dtype of ``cols``; contributions that land in the
        padding are dropped.
    """
    n, c, h, w = x_shape
    kh, kw = kernel_size
    ph, pw = padding
    out_hw = (output_size(h, kh, stride[0], ph), output_size(w, kw, stride[1], pw))
    cols = cols.reshape((n,) + out_hw + (kh, kw, c))
    dx_padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            # within one tap the target positions are distinct, so "+=" on the slice is exact
            tap_grad = cols[:, :, :, i, j, :].transpose(0, 3, 1, 2)  # (N, C, OH, OW)
            _tap(dx_padded, i, j, out_hw, stride)[...] += tap_grad
    return dx_padded[:, :, ph:ph + h, pw:pw + w]


def conv2d_forward(x, weight, bias, stride, padding):
    """The output of :func:`minidl.reference.functional.conv2d_forward` (the convolution sum).

    Args:
        x (np.ndarray): ``(N, C_in, H, W)``.
        weight (np.ndarray): ``(C_out, C_in, kH, kW)``.
        bias (np.ndarray or None): ``(C_out,)``.
        stride, padding: pairs ``(sH, sW)``, ``(pH, pW)``.
    Returns:
        np.ndarray: ``(N, C_out, OH, OW)`` in the dtype of ``x``.
    """
    return _textbook.conv2d_forward(x, weight, bias, stride, padding)[0]


def conv2d_backward(dout, x, weight, has_bias, stride, padding):
    """The gradients of :func:`minidl.reference.functional.conv2d_backward`, from ``x`` and
    ``weight`` instead of a cache.

    Args:
        dout (np.ndarray): ``(N, C_out, OH, OW)``, d loss / d out.
        x, weight: the forward inputs.
        has_bias (bool): whether the forward had a bias.
        stride, padding: pairs, as in the forward.
    Returns:
        (dx, dweight, dbias): shapes of ``x``, ``weight`` and ``(C_out,)`` (``None`` without
        bias).
    """
    cache = _textbook.Conv2dCache(_pad(x, padding), weight, has_bias, tuple(stride),
                                  tuple(padding), dout.shape)
    return _textbook.conv2d_backward(dout, cache)
