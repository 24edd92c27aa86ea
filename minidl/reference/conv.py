"""Pure-NumPy reference of 2-D convolution: the readable spec and the test oracle.

Definition (cross-correlation, as ``torch.nn.Conv2d``), for ``x`` of shape ``(N, C_in, H, W)``,
``weight`` of shape ``(C_out, C_in, kH, kW)``, stride ``(sH, sW)`` and zero padding
``(pH, pW)``::

    out[n, o, oh, ow] = bias[o] + sum over c, i, j of
                        weight[o, c, i, j] * x_padded[n, c, oh*sH + i, ow*sW + j]

    OH = (H + 2*pH - kH) // sH + 1,   OW = (W + 2*pW - kW) // sW + 1

:func:`conv2d_forward` and :func:`conv2d_backward` follow this definition directly, one
kernel tap ``(i, j)`` at a time, and do not use im2col, so they check the im2col route
independently. :func:`im2col` and :func:`col2im` define the column layout used by the Cython
kernels (Chellapilla et al., 2006): one row per output position, taps ordered ``(i, j, c)``::

    cols[(n*OH + oh)*OW + ow, (i*kW + j)*C + c] = x_padded[n, c, oh*sH + i, ow*sW + j]

so that ``out = cols @ weight.transpose(0, 2, 3, 1).reshape(C_out, -1).T`` gives the output
as ``(N*OH*OW, C_out)``, i.e. in NHWC order.

Nothing here validates its inputs; ``kernel_size``, ``stride`` and ``padding`` are pairs of ints.
"""
import numpy as np

__all__ = ["output_size", "im2col", "col2im", "conv2d_forward", "conv2d_backward"]


def output_size(size, kernel, stride, padding):
    """Output length along one axis: ``(size + 2*padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def _pad(x, padding):
    """``x`` of shape ``(N, C, H, W)`` with ``padding = (pH, pW)`` zeros around H and W."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _tap(x_padded, i, j, out_hw, stride):
    """The ``(N, C, OH, OW)`` slice of ``x_padded`` that kernel tap ``(i, j)`` multiplies."""
    oh, ow = out_hw
    sh, sw = stride
    return x_padded[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


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
    """Convolution by its definition, summing one kernel tap at a time.

    Args:
        x (np.ndarray): ``(N, C_in, H, W)``.
        weight (np.ndarray): ``(C_out, C_in, kH, kW)``.
        bias (np.ndarray or None): ``(C_out,)``.
        stride, padding: pairs ``(sH, sW)``, ``(pH, pW)``.
    Returns:
        np.ndarray: ``(N, C_out, OH, OW)`` in the dtype of ``x``.
    """
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    out_hw = (output_size(h, kh, stride[0], padding[0]), output_size(w, kw, stride[1], padding[1]))
    x_padded = _pad(x, padding)
    out = np.zeros((n, c_out) + out_hw, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = _tap(x_padded, i, j, out_hw, stride)
            out += np.einsum("oc,nchw->nohw", weight[:, :, i, j], tap)
    if bias is not None:
        out += bias.reshape(1, c_out, 1, 1)
    return out


def conv2d_backward(dout, x, weight, has_bias, stride, padding):
    """Gradients of :func:`conv2d_forward` by the definition.

    Args:
        dout (np.ndarray): ``(N, C_out, OH, OW)``, d loss / d out.
        x, weight: the forward inputs.
        has_bias (bool): whether the forward had a bias.
        stride, padding: pairs, as in the forward.
    Returns:
        (dx, dweight, dbias): shapes of ``x``, ``weight`` and ``(C_out,)`` (``None`` without
        bias).
    """
    _, _, h, w = x.shape
    _, _, kh, kw = weight.shape
    ph, pw = padding
    out_hw = dout.shape[2:]
    x_padded = _pad(x, padding)
    dx_padded = np.zeros_like(x_padded)
    dweight = np.zeros_like(weight)
    for i in range(kh):
        for j in range(kw):
            tap = _tap(x_padded, i, j, out_hw, stride)
            dweight[:, :, i, j] = np.einsum("nohw,nchw->oc", dout, tap)
            _tap(dx_padded, i, j, out_hw, stride)[...] += np.einsum(
                "oc,nohw->nchw", weight[:, :, i, j], dout
            )
    dx = dx_padded[:, :, ph:ph + h, pw:pw + w]
    dbias = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dweight, dbias
