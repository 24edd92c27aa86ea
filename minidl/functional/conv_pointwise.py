"""1x1 convolution (no padding, any stride) as one matrix product per image, on NCHW data.

A 1x1 kernel mixes channels at each position and nothing else, so with ``W = weight[:, :, 0, 0]``
``(C_out, C_in)`` and an image seen as a matrix ``x[n]`` ``(C_in, H*W)`` (a view of NCHW data,
no im2col, no layout change)::

    forward    out[n] (C_out, P) = W @ xs[n] (C_in, P)          (+ bias[:, None])
    backward   dW (C_out, C_in)  = sum_n dout[n] @ xs[n].T       summed over n in order
               dxs[n] (C_in, P)  = W.T @ dout[n]
               dx                = dxs, or dxs placed at the strided positions (zeros elsewhere)

where ``xs`` is ``x`` itself for stride 1 and ``x[:, :, ::sH, ::sW]`` (copied) otherwise, and
``P = OH*OW``. The products are :func:`minidl._blas.matmul` on minidl's OpenMP team (the
transposes are strides, not copies, except ``W.T`` for large batches, see
:func:`_transposed_weight`); the strided copy, the strided placement of ``dxs`` and the bias
gradient (per-channel sums in float64) are kernels of ``minidl/_kernels/_conv.pyx`` on the same
team (``pad``, ``scatter_strided``, ``channel_sums``); the first two split the batch image by
image as the batched products do, so each thread reads what it wrote.

Called by :func:`minidl.functional.conv.conv2d_forward` / ``conv2d_backward``, which validate
the arguments and choose the method (kernel 1x1, padding 0); these functions trust them. Every
array they allocate comes from :mod:`minidl._memory`.
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import _blas, _config, _memory
from .._kernels import _conv as _kernel
from .conv_im2col import bias_grad

# The input gradient multiplies by a contiguous copy of weight.T when its products have at least
# this many columns in all (N*OH*OW; see _transposed_weight).
TRANSPOSED_COPY_MIN_POSITIONS = 256

__all__ = ["PointwiseCache", "forward", "backward"]


class PointwiseCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward` (immutable; serves any number of
    backward calls).

    Attributes:
        xs (np.ndarray): the input at the output positions, C-contiguous ``(N, C_in, OH, OW)``
            (the input itself for stride 1, when it is C-contiguous).
        weight (np.ndarray): the weight as ``(C_out, C_in)``.
        has_bias (bool): whether the forward added a bias.
        x_shape (tuple): ``(N, C_in, H, W)``.
        out_shape (tuple): ``(N, C_out, OH, OW)``.
        stride (tuple): ``(sH, sW)``.
        dtype (np.dtype): dtype of the input, output and gradients.
    """

    xs: np.ndarray
    weight: np.ndarray
    has_bias: bool
    x_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, int, int, int]
    stride: Tuple[int, int]
    dtype: np.dtype

    method = "pointwise"


def _at_outputs(x, stride):
    """C-contiguous ``x[:, :, ::sH, ::sW]`` (``x`` itself for stride 1 if it is contiguous)."""
    if tuple(stride) == (1, 1):
        return np.ascontiguousarray(x)
    sampled = x[:, :, ::stride[0], ::stride[1]]
    xs = _memory.empty(sampled.shape, x.dtype)
    _kernel.pad(sampled, xs, 0, 0, _config.threads_for(xs.size))  # a copy, plane by plane
    return xs


def forward(x, weight, bias, stride, out):
    """Write the 1x1 convolution of ``x`` into ``out``; return the :class:`PointwiseCache`.

    Args:
        x: ``(N, C_in, H, W)`` float32/float64, any strides. weight: ``(C_out, C_in, 1, 1)``,
        x's dtype. bias: ``(C_out,)`` or None. stride: ``(sH, sW)``. out: C-contiguous
        ``(N, C_out, OH, OW)`` with ``OH = (H - 1) // sH + 1`` (likewise ``OW``).
    """
    n, out_channels, out_h, out_w = out.shape
    xs = _at_outputs(x, stride)
    w = np.ascontiguousarray(weight.reshape(out_channels, -1))
    out3 = out.reshape(n, out_channels, out_h * out_w)
    _blas.matmul(w, xs.reshape(n, xs.shape[1], -1), out=out3)
    if bias is not None:
        out3 += bias[:, None]
    return PointwiseCache(xs, w, bias is not None, x.shape, out.shape, tuple(stride), x.dtype)


def backward(dout, cache, input_grad):
    """``(dx, dweight, dbias)`` of :func:`forward`; ``dx`` is None unless ``input_grad``,
    ``dbias`` None without bias."""
    n, out_channels, out_h, out_w = cache.out_shape
    in_channels = cache.weight.shape[1]
    dout3 = np.ascontiguousarray(dout).reshape(n, out_channels, out_h * out_w)
    xs3 = cache.xs.reshape(n, in_channels, out_h * out_w)
    dweight = _memory.empty((out_channels, in_channels, 1, 1), cache.dtype)  # (owned, as
    # the layer takes it: a reshaped result would be a view, which the layer copies)
    _blas.matmul(dout3, xs3.transpose(0, 2, 1), out=dweight.reshape(out_channels, in_channels),
                 sum_batch=True)
    dbias = bias_grad(dout3, cache.dtype) if cache.has_bias else None
    if not input_grad:
        return None, dweight, dbias
    weight_t = _transposed_weight(cache.weight, n * out_h * out_w)
    if cache.stride == (1, 1):
        dx = _memory.empty(cache.x_shape, cache.dtype)
        _blas.matmul(weight_t, dout3, out=dx.reshape(n, in_channels, -1))
        return dx, dweight, dbias
    dxs = _blas.matmul(weight_t, dout3).reshape(n, in_channels, out_h, out_w)
    dx = _memory.empty(cache.x_shape, cache.dtype)
    _kernel.scatter_strided(dxs, dx, *cache.stride, _config.threads_for(dx.size))
    return dx, dweight, dbias


def _transposed_weight(weight, positions):
    """``weight.T`` ``(C_in, C_out)`` for the input gradient's products: a C-contiguous copy
    when the products have at least ``TRANSPOSED_COPY_MIN_POSITIONS`` columns in all (the
    copy, ``C_in*C_out`` elements, is then a small part of their work), else the view.

    The GEMM packs its left operand once per tile and batch item; packed from the transposed
    view of a weight with 256 output channels that was 13-15% slower. Measured, 1 thread,
    ``W.T @ dout`` over the batch, view / copy, ms: (16, 256, 8, 8) -> 128 channels 0.79 /
    0.69, (32, 256, 8, 8) -> 128 1.60 / 1.36; with 64 or 128 output channels the same
    (1.32 / 1.32, 0.098 / 0.099)."""
    if positions < TRANSPOSED_COPY_MIN_POSITIONS:
        return weight.T
    weight_t = _memory.empty(weight.shape[::-1], weight.dtype)
    np.copyto(weight_t, weight.T)
    return weight_t
