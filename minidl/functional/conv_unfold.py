"""Convolution of few output positions (batch 1-2 on small maps): im2col with the taps in the
weight's own order, so that the weight is used where it lies.

With few output positions ``M = N*OH*OW``, a layer's weight (``C_out*C_in*kH*kW`` values) is
larger than its im2col matrix (``M*C_in*kH*kW``), and moving the weight costs more than the
products, which use each of its values only ``M`` times. :mod:`conv_im2col` orders its taps
``(i, j, c)`` (runs of channels, read in place from NHWC data), so it rearranges the weight into
``weight_rows`` and back for every step and packs it for each product: four to five passes over
the weight. Here the columns are ordered like the weight's axes ``(c, i, j)``, the order of
``torch.nn.functional.unfold`` (transposed) and of Caffe's im2col::

    cols[(n*OH + oh)*OW + ow, (c*kH + i)*kW + j] = x_pad[n, c, oh*sH + i, ow*sW + j]

so that ``W = weight.reshape(C_out, C_in*kH*kW)`` is an operand as it is (Chellapilla, Puri and
Simard, 2006, with this layout)::

    forward    out_rows (M, C_out) = cols @ W.T                    (+ bias, in the product)
    backward   dW (C_out, K)       = drows (C_out, M) @ cols       (the weight's own layout)
               dcols (M, K)        = drows.T @ W,  folded (col2im) into dx

where ``drows[o, (n*OH + oh)*OW + ow] = dout[n, o, oh, ow]`` and ``K = C_in*kH*kW``. The products
are :func:`minidl._blas.matmul` (for ``M <= 8`` dot products that read ``W`` in place, else the
GEMM, which packs ``W`` tile by tile); ``unfold``, ``fold`` and the layout changes of the
output and of ``dout`` are kernels of ``minidl/_kernels/_conv.pyx``. "auto" takes this method
for at most ``minidl.functional.conv.UNFOLD_MAX_POSITIONS`` output positions in the batch and
a weight of at least twice the elements of the matrix (the measurements are there). The
columns are materialized (``M*K`` values, small here), and the taps in the padding are
multiplied (their zeros), unlike in :mod:`conv_im2col`.

Called by :func:`minidl.functional.conv.conv2d_forward` / ``conv2d_backward``, which validate
the arguments and choose the method; these functions trust them. Every array they allocate
comes from :mod:`minidl._memory`.
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import _blas, _config, _memory
from .._kernels import _conv as _kernel
from .conv_im2col import _no_bias, dout_rows

__all__ = ["UnfoldCache", "forward", "backward"]


class UnfoldCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward` (immutable; serves any number of
    backward calls).

    Attributes:
        cols (np.ndarray): the unfolded input, ``(N*OH*OW, C_in*kH*kW)``, taps ordered
            ``(c, i, j)``.
        weight (np.ndarray): the C-contiguous weight as ``(C_out, C_in*kH*kW)``.
        has_bias (bool): whether the forward added a bias.
        x_shape (tuple): ``(N, C_in, H, W)``.
        weight_shape (tuple): ``(C_out, C_in, kH, kW)``.
        out_shape (tuple): ``(N, C_out, OH, OW)``.
        stride (tuple): ``(sH, sW)``.
        padding (tuple): ``(pH, pW)``.
        dtype (np.dtype): dtype of the input, output and gradients.
    """

    cols: np.ndarray
    weight: np.ndarray
    has_bias: bool
    x_shape: Tuple[int, int, int, int]
    weight_shape: Tuple[int, int, int, int]
    out_shape: Tuple[int, int, int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dtype: np.dtype

    method = "unfold"


def forward(x, weight, bias, stride, padding, out):
    """Write the convolution of ``x`` into ``out``; return the :class:`UnfoldCache`.

    Args:
        x: ``(N, C_in, H, W)`` float32/float64, any strides. weight: ``(C_out, C_in, kH, kW)``,
        x's dtype. bias: ``(C_out,)`` or None. stride, padding: pairs. out: C-contiguous
        ``(N, C_out, OH, OW)``.
    """
    n, out_channels, out_h, out_w = out.shape
    kernel_h, kernel_w = weight.shape[2:]
    positions = out_h * out_w
    taps = weight[0].size
    threads = _config.threads_for(n * positions * taps)
    cols = _memory.empty((n * positions, taps), x.dtype)
    _kernel.unfold(np.ascontiguousarray(x), cols, kernel_h, kernel_w, *stride, *padding, threads)
    w = np.ascontiguousarray(weight).reshape(out_channels, taps)
    rows = _blas.matmul(cols, w.T, bias=None if bias is None else np.ascontiguousarray(bias))
    _kernel.transpose_batched(rows.reshape(n, positions, out_channels), _no_bias(x.dtype), False,
                              out.reshape(n, out_channels, positions), threads)
    return UnfoldCache(cols, w, bias is not None, x.shape, weight.shape, out.shape,
                       tuple(stride), tuple(padding), x.dtype)


def backward(dout, cache, input_grad):
    """``(dx, dweight, dbias)`` of :func:`forward`; ``dx`` is None unless ``input_grad``,
    ``dbias`` None without bias."""
    n, out_channels, out_h, out_w = cache.out_shape
    positions = out_h * out_w
    threads = _config.threads_for(cache.cols.size)
    dout3 = np.ascontiguousarray(dout).reshape(n, out_channels, positions)
    drows, dbias = dout_rows(dout3, cache.has_bias, cache.dtype, threads)
    dweight = _memory.empty(cache.weight_shape, cache.dtype)  # (owned: the layer keeps it)
    _blas.matmul(drows, cache.cols, out=dweight.reshape(out_channels, -1))
    if not input_grad:
        return None, dweight, dbias
    dcols = _blas.matmul(drows.T, cache.weight)
    dx = _memory.empty(cache.x_shape, cache.dtype)
    _kernel.fold(dcols, dx, *cache.weight_shape[2:], *cache.stride, *cache.padding, threads)
    return dx, dweight, dbias
