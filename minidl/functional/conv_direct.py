"""Stride-1 convolution computed directly: Cython loops over the taps, no im2col, no GEMM.

For a first layer on 1 or 3 channels, ``C_in*kH*kW`` (the inner dimension of im2col's matrix
product) is too small for BLAS to pay for im2col's copy; the direct kernels of
``minidl/_kernels/_conv.pyx`` instead work on zero-padded input planes laid out on a wide grid
(rows of ``W + 2*pW``), where each tap reads one contiguous run of the plane. The forward
computes four output planes at a time, their sums in vector registers through every tap; the
gradients run one vectorized multiply-add per tap (fused 3x3 kernels do all nine taps in one
pass)::

    out[n, o, oh, ow] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_pad[n, c, oh + i, ow + j]
    dweight[o, c, i, j] = sum_{n,oh,ow} dout[n, o, oh, ow] * x_pad[n, c, oh + i, ow + j]
    dx[n, c, h, w] = sum_{o,i,j} dout[n, o, h + pH - i, w + pW - j] * weight[o, c, i, j]

Called by :func:`minidl.functional.conv.conv2d_forward` / ``conv2d_backward``, which validate
the arguments and choose the method; these functions trust them. Every array they allocate
comes from :mod:`minidl._memory`.
"""
import functools
from typing import NamedTuple, Tuple

import numpy as np

from .. import _config, _memory
from .._kernels import _conv as _kernel

__all__ = ["DirectCache", "forward", "backward"]


class DirectCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward` (immutable; serves any number of
    backward calls).

    Attributes:
        x_pad (np.ndarray): the zero-padded C-contiguous input ``(N, C_in, H + 2*pH, W + 2*pW)``.
        weight (np.ndarray): the C-contiguous weight ``(C_out, C_in, kH, kW)``.
        has_bias (bool): whether the forward added a bias.
        x_shape (tuple): ``(N, C_in, H, W)``.
        out_shape (tuple): ``(N, C_out, OH, OW)``.
        padding (tuple): ``(pH, pW)``.
        dtype (np.dtype): dtype of the input, output and gradients.
    """

    x_pad: np.ndarray
    weight: np.ndarray
    has_bias: bool
    x_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, int, int, int]
    padding: Tuple[int, int]
    dtype: np.dtype

    method = "direct"


def _padded(x, padding):
    """C-contiguous ``x`` with ``padding`` zeros on each side of H and W (x itself if none),
    written by the kernel ``_conv.pad`` in one pass."""
    pad_h, pad_w = padding
    if pad_h == 0 and pad_w == 0:
        return np.ascontiguousarray(x)
    n, c, h, w = x.shape
    x_pad = _memory.empty((n, c, h + 2 * pad_h, w + 2 * pad_w), x.dtype)
    _kernel.pad(x, x_pad, pad_h, pad_w, _config.threads_for(x_pad.size))
    return x_pad


def forward(x, weight, bias, padding, out):
    """Write the stride-1 convolution of ``x`` into ``out``; return the :class:`DirectCache`.

    Args:
        x: ``(N, C_in, H, W)`` float32/float64, any strides. weight: ``(C_out, C_in, kH, kW)``,
        x's dtype. bias: ``(C_out,)`` or None. padding: ``(pH, pW)``. out: C-contiguous
        ``(N, C_out, OH, OW)``.
    """
    x_pad = _padded(x, padding)
    weight = np.ascontiguousarray(weight)
    has_bias = bias is not None
    bias_vector = np.ascontiguousarray(bias) if has_bias else np.empty(0, x.dtype)
    out_channels, _, kernel_h, kernel_w = weight.shape
    # the kernel computes four output channels at a time: zero rows up to a multiple of 4
    weight_rows = _memory.empty((-(-out_channels // 4) * 4, weight[0].size), x.dtype)
    weight_rows[:out_channels] = weight.reshape(out_channels, -1)
    weight_rows[out_channels:] = 0
    wide_size = (out.shape[2] - 1) * x_pad.shape[3] + out.shape[3]
    threads = _config.threads_for(out.size * weight[0].size)
    scratch = _memory.empty((threads, 4 * wide_size), x.dtype)
    _kernel.direct_forward(x_pad, weight_rows, _tap_offsets(x_pad.shape[1:], kernel_h, kernel_w),
                           bias_vector, has_bias, out, scratch, threads)
    return DirectCache(x_pad, weight, has_bias, x.shape, out.shape, tuple(padding), x.dtype)


@functools.lru_cache(maxsize=16)
def _tap_offsets(plane_shape, kernel_h, kernel_w):
    """``offsets[(c*kH + i)*kW + j] = (c*Hp + i)*Wp + j`` in a padded image ``plane_shape = (C,
    Hp, Wp)``: where tap ``(c, i, j)`` starts (read-only ``np.intp``, cached by geometry)."""
    channels, height, width = plane_shape
    offsets = ((np.arange(channels)[:, None, None] * height + np.arange(kernel_h)[None, :, None])
               * width + np.arange(kernel_w)[None, None, :]).reshape(-1).astype(np.intp)
    offsets.flags.writeable = False
    return offsets


def backward(dout, cache, input_grad):
    """``(dx, dweight, dbias)`` of :func:`forward`; ``dx`` is None unless ``input_grad``,
    ``dbias`` None without bias."""
    x_pad, weight = cache.x_pad, cache.weight
    n, out_channels, out_h, out_w = cache.out_shape
    wide_w = x_pad.shape[3]
    dout = np.ascontiguousarray(dout)
    threads = _config.threads_for(dout.size * weight[0].size)
    dweight = np.empty(weight.shape, dtype=np.float64)
    bias_grad = np.empty(out_channels, dtype=np.float64)
    scratch = _memory.empty((threads, max(out_h, x_pad.shape[2]) * wide_w), cache.dtype)
    _kernel.direct_weight_grad(x_pad, dout, dweight, bias_grad, cache.has_bias, scratch,
                               threads)
    dweight = dweight.astype(cache.dtype)
    dbias = bias_grad.astype(cache.dtype) if cache.has_bias else None
    if not input_grad:
        return None, dweight, dbias
    dout_wide = _memory.empty((n, out_channels, out_h, wide_w), cache.dtype)
    _kernel.scatter_strided(dout, dout_wide, 1, 1, threads)  # rows of dout, then zeros
    dx = _memory.empty(cache.x_shape, cache.dtype)
    _kernel.direct_input_grad(dout_wide, weight, dx, *cache.padding, scratch, threads)
    return dx, dweight, dbias
