"""2-D convolution as a stateless forward/backward pair (validation + kernel dispatch).

Math (cross-correlation, as ``torch.nn.functional.conv2d``; see ``minidl/reference/conv.py``)::

    out[n, o, oh, ow] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_pad[n, c, oh*sH + i, ow*sW + j]

It is computed with im2col and ONE matrix product per batch (Chellapilla, Puri and Simard,
2006, "High Performance Convolutional Neural Networks for Document Processing"). With
``K = C_in*kH*kW`` and ``M = N*OH*OW``:

    forward    cols   (K, M)     = im2col(x)                         Cython, parallel
               rows   (C_out, M) = weight.reshape(C_out, K) @ cols   BLAS GEMM
               out    (N, C_out, OH, OW) = rows reordered + bias     Cython, parallel
    backward   drows  (C_out, M) = dout reordered; dbias = row sums  Cython, parallel
               dweight           = drows @ cols.T                    BLAS GEMM
               dcols  (K, M)     = weight.reshape(C_out, K).T @ drows  BLAS GEMM
               dx                = col2im(dcols)                     Cython, parallel

``cols[(c*kH + i)*kW + j, (n*OH + oh)*OW + ow] = x_pad[n, c, oh*sH + i, ow*sW + j]``; it is kept
in the cache so the backward pass does not unroll ``x`` again (memory: ``K*M`` elements).
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import _config
from .._checks import check_float_array, check_input, pair
from .._kernels import _conv as _kernel

__all__ = ["Conv2dCache", "conv2d_forward", "conv2d_backward", "conv2d_output_size"]


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass.

    Attributes:
        cols (np.ndarray): im2col of the input, ``(C_in*kH*kW, N*OH*OW)``, C-contiguous.
        weight (np.ndarray): the weight used, ``(C_out, C_in, kH, kW)``, C-contiguous.
        has_bias (bool): whether the forward added a bias.
        x_shape (tuple): ``(N, C_in, H, W)``.
        out_shape (tuple): ``(N, C_out, OH, OW)``.
        stride (tuple): ``(sH, sW)``.
        padding (tuple): ``(pH, pW)``.
    """

    cols: np.ndarray
    weight: np.ndarray
    has_bias: bool
    x_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, int, int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]


def conv2d_output_size(in_size, kernel_size, stride, padding):
    """``(OH, OW)`` of a convolution; every argument is a pair ``(h, w)`` of ints.

    ``O = (I + 2*padding - kernel) // stride + 1`` per axis (PyTorch's ``Conv2d`` with
    dilation 1); a result < 1 means the input is too small.
    """
    return tuple((i + 2 * p - k) // s + 1 for i, k, s, p in zip(in_size, kernel_size, stride, padding))


def check_gradient(layer, dout, shape, dtype, what="gradient"):
    """Raise unless ``dout`` is an ndarray of exactly ``shape`` and ``dtype``.

    Raises:
        TypeError: not a float ndarray, or the wrong dtype.
        ValueError: the wrong shape.
    """
    check_float_array(layer, dout, what)
    if dout.shape != tuple(shape):
        raise ValueError(f"{layer}: expected {what} of shape {tuple(shape)} (the output's), got shape {dout.shape}")
    if dout.dtype != dtype:
        raise TypeError(f"{layer}: expected {what} dtype {dtype} (the output's), got {dout.dtype}")


def _check_weight_and_bias(layer, x, weight, bias):
    """Validate ``weight`` (and ``bias`` unless None) against the input ``x``."""
    in_channels = x.shape[1]
    check_float_array(layer, weight, "weight")
    if weight.ndim != 4 or weight.shape[1] != in_channels or 0 in weight.shape:
        raise ValueError(
            f"{layer}: expected weight of shape (C_out, {in_channels}, kH, kW) for an input with "
            f"{in_channels} channels, got shape {weight.shape}"
        )
    if weight.dtype != x.dtype:
        raise TypeError(f"{layer}: expected weight dtype {x.dtype} (like the input), got {weight.dtype}")
    if bias is None:
        return
    out_channels = weight.shape[0]
    check_float_array(layer, bias, "bias")
    if bias.shape != (out_channels,):
        raise ValueError(f"{layer}: expected bias of shape ({out_channels},), got shape {bias.shape}")
    if bias.dtype != x.dtype:
        raise TypeError(f"{layer}: expected bias dtype {x.dtype} (like the input), got {bias.dtype}")


def check_spatial_size(layer, x_shape, kernel_size, stride, padding):
    """Return ``(OH, OW)``; raise ValueError naming ``layer`` if either is < 1."""
    out_hw = conv2d_output_size(x_shape[2:], kernel_size, stride, padding)
    if min(out_hw) < 1:
        raise ValueError(
            f"{layer}: input of shape {tuple(x_shape)} is too small for kernel_size {kernel_size} "
            f"with padding {padding}: expected H + 2*{padding[0]} >= {kernel_size[0]} and "
            f"W + 2*{padding[1]} >= {kernel_size[1]}"
        )
    return out_hw


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, layer="conv2d"):
    """2-D convolution (cross-correlation) of a batch, like ``torch.nn.functional.conv2d``.

    Args:
        x (np.ndarray): ``(N, C_in, H, W)``, float32 or float64, any strides.
        weight (np.ndarray): ``(C_out, C_in, kH, kW)``, the dtype of ``x``.
        bias (np.ndarray or None): ``(C_out,)``, the dtype of ``x``.
        stride (int or pair): step ``(sH, sW)`` >= 1 (default 1).
        padding (int or pair): zeros ``(pH, pW)`` >= 0 added on each side (default 0).
        layer (str): name used in error messages.
    Returns:
        (out, cache): ``out`` is ``(N, C_out, OH, OW)`` in the dtype of ``x`` with
        ``OH = (H + 2*pH - kH) // sH + 1`` (likewise ``OW``); ``cache`` is a
        :class:`Conv2dCache` for :func:`conv2d_backward`.
    Raises:
        TypeError: an argument is not a float32/float64 ndarray, or dtypes differ.
        ValueError: a wrong shape, a bad stride/padding, or an input smaller than the kernel.
    """
    check_input(layer, x, "NCHW")
    _check_weight_and_bias(layer, x, weight, bias)
    stride = pair(stride, "stride", layer, minimum=1)
    padding = pair(padding, "padding", layer, minimum=0)
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = check_spatial_size(layer, x.shape, (kernel_h, kernel_w), stride, padding)

    n = x.shape[0]
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    threads = _config.get_num_threads()
    cols = np.empty((weight[0].size, n * out_h * out_w), dtype=x.dtype)
    _kernel.im2col(x, cols, kernel_h, kernel_w, *stride, *padding, threads)
    rows = np.matmul(weight.reshape(out_channels, -1), cols)

    out = np.empty((n, out_channels, out_h, out_w), dtype=x.dtype)
    has_bias = bias is not None
    bias_vector = np.ascontiguousarray(bias) if has_bias else np.zeros(out_channels, x.dtype)
    _kernel.rows_to_nchw(rows, bias_vector, has_bias, out.reshape(n, out_channels, -1), threads)
    cache = Conv2dCache(cols, weight, has_bias, x.shape, out.shape, stride, padding)
    return out, cache


def conv2d_backward(dout, cache, layer="conv2d"):
    """Gradients of :func:`conv2d_forward` with respect to the input, weight and bias.

    Args:
        dout (np.ndarray): d loss / d out, ``(N, C_out, OH, OW)``, the dtype of the forward
            output; any strides.
        cache (Conv2dCache): the second value returned by :func:`conv2d_forward`.
        layer (str): name used in error messages.
    Returns:
        (dx, dweight, dbias): ``(N, C_in, H, W)``, ``(C_out, C_in, kH, kW)`` and ``(C_out,)``,
        all in the dtype of ``x``; ``dbias`` is None when the forward had no bias.
    Raises:
        TypeError/ValueError: ``dout`` does not match the forward output.
    """
    cols, weight, has_bias, x_shape, out_shape, stride, padding = cache
    check_gradient(layer, dout, out_shape, cols.dtype)
    n, out_channels = out_shape[:2]
    threads = _config.get_num_threads()

    dout = np.ascontiguousarray(dout).reshape(n, out_channels, -1)
    drows = np.empty((out_channels, cols.shape[1]), dtype=cols.dtype)
    bias_grad = np.empty(out_channels, dtype=np.float64)
    _kernel.nchw_to_rows(dout, drows, bias_grad, has_bias, threads)

    weight_rows = weight.reshape(out_channels, -1)
    dweight = np.matmul(drows, cols.T).reshape(weight.shape)
    dcols = np.matmul(weight_rows.T, drows)
    dx = np.empty(x_shape, dtype=cols.dtype)
    _kernel.col2im(dcols, dx, weight.shape[2], weight.shape[3], *stride, *padding, threads)
    dbias = bias_grad.astype(cols.dtype) if has_bias else None
    return dx, dweight, dbias
