"""2-D convolution: validation, and the one place that chooses the algorithm.

Math (cross-correlation, as ``torch.nn.functional.conv2d``; see ``minidl/reference/conv.py``)::

    out[n, o, oh, ow] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_pad[n, c, oh*sH + i, ow*sW + j]

Five algorithms compute it, one module each, each with its own immutable cache type:

* :mod:`~minidl.functional.conv_pointwise` -- 1x1 kernels without padding (any stride): one
  matrix product per image on the NCHW data, no im2col.
* :mod:`~minidl.functional.conv_direct` -- direct Cython loops over the taps (stride 1; fast when
  ``C_in*kH*kW`` is small, e.g. a first layer on 1 or 3 channels, or when there are at most 8
  output channels): no im2col, no GEMM.
* :mod:`~minidl.functional.conv_winograd` -- Winograd's F(2x2, 3x3) and F(2x2, 5x5) (Lavin &
  Gray, 2016; 3x3 and 5x5 kernels, stride 1): 4 instead of 9 (9 instead of 25) multiply-adds per
  output and input channel, in fused kernels, no im2col matrix.
* :mod:`~minidl.functional.conv_im2col` -- im2col and matrix products (Chellapilla, Puri and
  Simard, 2006), the matrix read in place from the padded NHWC input: any kernel, stride and
  padding.
* :mod:`~minidl.functional.conv_unfold` -- im2col with the taps in the weight's order ``(c, i,
  j)``, the weight used where it lies: any kernel, stride and padding; for layers with few
  output positions (batch 1-2 on small maps), whose weight outweighs their activations.

All matrix products run on minidl's own OpenMP team (:func:`minidl._blas.matmul`).

:func:`choose_method` picks one ("auto") or checks the caller's choice; :func:`conv2d_forward`
validates the arguments, allocates the output (from :mod:`minidl._memory`) and calls the
algorithm; :func:`conv2d_backward` checks ``dout`` and calls the backward of the algorithm that
made the cache. A cache serves any number of backward calls (each gives the same result).

Under ``with minidl.backend("reference"):`` the validated arguments go instead to the textbook
convolution sum in :mod:`minidl.reference.functional.conv`, and a cache that it made sends the
backward pass there too (the two ``if`` statements marked "reference backend" below).
"""
import math

import numpy as np

from .. import _blas, _memory
from .._backend import get_backend
from .._checks import (check_allocation, check_cache_array, check_float_array, check_grad,
                       check_input, check_no_overlap, pair)
from ..reference.functional import conv as reference
from . import conv_direct, conv_im2col, conv_pointwise, conv_unfold, conv_winograd
from .conv_direct import DirectCache
from .conv_im2col import Im2colCache
from .conv_unfold import UnfoldCache
from .conv_pointwise import PointwiseCache
from .conv_winograd import WinogradCache

__all__ = [
    "conv2d_forward", "conv2d_backward", "conv2d_output_size", "choose_method", "check_method",
    "column_matrix_shape", "DirectCache", "Im2colCache", "PointwiseCache", "UnfoldCache",
    "WinogradCache",
    "METHODS",
    "DIRECT_MAX_TAPS", "DIRECT_PLANE_MAX_TAPS", "DIRECT_MIN_POSITIONS", "DIRECT_MAX_WORK",
    "DIRECT_NARROW_MAX_OUT_CHANNELS", "DIRECT_NARROW_MAX_TAPS", "DIRECT_NARROW_MIN_POSITIONS",
    "UNFOLD_MAX_POSITIONS",
    "POINTWISE_MIN_POSITIONS", "POINTWISE_MAX_SMALL_BATCH",
]

# Stride-1 convolutions with at most this many taps per output (C_in*kH*kW) use the direct
# kernels where they pay (_direct_pays): on maps of at least DIRECT_MIN_POSITIONS output
# positions with at most DIRECT_PLANE_MAX_TAPS taps, or for at most DIRECT_MAX_WORK
# multiply-adds per forward (N*OH*OW*C_out*taps), where im2col's fixed costs (packing, layout
# passes, calls) outweigh its faster products. The direct kernels make one vector pass per
# pair of planes and tap (or kernel row) over OH*(W + 2*pW) elements, and on small maps those
# passes are too short to run at speed: (128, 8, 6, 6) -> 128 2x2 took 12x as long as im2col
# (1 thread), (32, 3, 6, 6) -> 160 2x2 pad 1 3.2x, 0.57x of PyTorch's speed. Measured, layer
# forward + backward with the input gradient, direct and im2col interleaved, on 288 layers (1,
# 2 or 3 input channels with 3x3 kernels, 1 with 5x5, 3 or 8 with 2x2; 6x6 to 28x28 maps; 16
# to 128 output channels; batch 2, 32, 128): the time of the method chosen over that of the
# faster one was 1.85 on average (up to 12.2) at 1 thread and 1.59 (up to 14.0) at 2 when all
# went to the direct kernels, 1.03 (up to 1.64) and 1.07 (up to 2.3, in a noisy run) with this
# rule. Its map threshold keeps the direct kernels for a network's first layer on 24x24 images
# and larger, which needs no input gradient: there the direct input gradient, their slowest
# part, is not run, and forward + weight gradient took, direct / im2col, ms, 2 threads: (128,
# 3, 32, 32) -> 64 3x3 pad 1 (CIFAR) 11.1 / 15.6; (64, 3, 24, 24) -> 64 3.3 / 4.1; (64, 1,
# 28, 28) -> 32 1.19 / 1.53; (64, 3, 28, 28) -> 32 2x2 1.50 / 3.48; but on 16x16 and 20x20
# maps im2col was faster there too ((128, 3, 16, 16) -> 64 3.4 / 4.0, (128, 3, 20, 20) -> 32
# 2.40 / 2.59).
DIRECT_MAX_TAPS = 32
DIRECT_PLANE_MAX_TAPS = 27
DIRECT_MIN_POSITIONS = 576
DIRECT_MAX_WORK = 100_000
# So do stride-1 convolutions other than 3x3 with at most this many output channels and taps:
# im2col's product then has at most 8 columns, half of the narrowest vector of columns.
# Measured, layer forward + backward (input gradient), 2 threads, direct against im2col:
# (512, 1, 28, 28) -> 8, 6x6: 9.9 / 26.6 ms; (128, 3, 32, 32) -> 8, 5x5 pad 2: 7.5 / 15.7 ms;
# (64, 8, 16, 16) -> 8, 5x5 pad 2: 2.5 / 3.4 ms; but (32, 32, 16, 16) -> 8, 5x5 (800 taps):
# 6.4 / 5.3 ms, and with 16 output channels im2col was faster from 36 taps on. On maps of fewer
# than DIRECT_NARROW_MIN_POSITIONS output positions the direct kernels' vector passes are too
# short (see DIRECT_MAX_TAPS), and im2col was faster: 1 thread, batch 64, direct / im2col,
# ms: (64, 64, 8, 8) -> 4 2x2 1.82 / 1.54 (a held-out sweep found -> 8 at 0.48x of PyTorch);
# (64, 4, 8, 8) -> 4 6x6 1.16 / 0.29; (64, 3, 8, 8) -> 8 7x7 pad 3 1.76 / 1.45; but at 10x10
# and 11x11 outputs the direct kernels were ahead, ((64, 16, 12, 12) -> 4 3x3 0.96 / 1.43;
# (64, 64, 12, 12) -> 4 2x2 2.24 / 2.85), and level at 12x12 (3 of 4 within 10%).
DIRECT_NARROW_MAX_OUT_CHANNELS = 8
DIRECT_NARROW_MAX_TAPS = 256
DIRECT_NARROW_MIN_POSITIONS = 100
# 1x1 convolutions with fewer output positions per image (OH*OW) than this, on batches of more
# than POINTWISE_MAX_SMALL_BATCH images (or an unknown batch), use im2col: the pointwise
# products have OH*OW columns, and with fewer than a micro-kernel strip (32 floats with
# AVX-512) most of each strip is padding, once per image. Measured (2 threads, forward /
# forward + backward, ms): (64, 128, 8, 8) -> 256 channels with stride 2 (16 positions),
# pointwise 1.14 / 2.94, im2col 0.55 / 1.77 (PyTorch 0.50 / 3.89); forward + backward, 1 / 2
# threads, pointwise / im2col: (128, 128, 3, 3) -> 512 (9) 10.3 / 6.5 and 5.8 / 3.4; (128, 32,
# 2, 2) -> 64 0.64 / 0.37 and 0.31 / 0.24. From 25 positions on, or on small batches, the
# pointwise products were the faster in 23 of 26 layers (the rule before sent all layers of
# fewer than 64 positions to im2col, and a held-out sweep found (2, 512, 6, 6) -> 128 at 0.83x
# of PyTorch): (2, 512, 6, 6) -> 128 0.45 / 0.71 (PyTorch 0.59), 1 thread; (2, 256, 5, 5) ->
# 256 0.50 / 0.93 and 0.33 / 0.70; (64, 256, 12, 12) -> 64 stride 2 (36) 5.2 / 8.4 and 3.1 /
# 5.0; (16, 256, 4, 4) -> 32 (16) 0.27 / 0.33 and 0.29 / 0.38; (1, 64, 14, 14) -> 256 stride 2
# (49) 0.15 / 0.23; but (64, 512, 7, 7) -> 128 (49) 17.1 / 18.8 and 9.9 / 8.5.
POINTWISE_MIN_POSITIONS = 25
POINTWISE_MAX_SMALL_BATCH = 16
METHODS = ("auto", "direct", "im2col", "pointwise", "unfold", "winograd")
# Layers with at most this many output positions in the batch (N*OH*OW), other than those of
# the direct kernels and of the pointwise products, use unfold under "auto" (conv_unfold: the
# weight in its own layout, where im2col rearranges and packs it around products that use each
# of its values at most this many times). Measured, one layer forward + backward with the input
# gradient, unfold / the method "auto" chose before (im2col or Winograd) / PyTorch, ms, 2
# threads: (1, 96, 6, 6) -> 512 5x5 stride 2 pad 2 (9 positions) 1.31 / 2.71 / 2.01; (1, 512,
# 7, 7) -> 512 3x3 pad 1 (49) 11.4 / 17.7 / 13.4; (2, 512, 4, 4) -> 512 (32) 8.5 / 16.3 /
# 12.8; (4, 256, 6, 6) -> 256 5x5 stride 2 (36) 5.9 / 9.7 / 9.5; (8, 64, 2, 2) -> 128 (32)
# 0.49 / 0.71 / 0.71. On 70 such layers (32 to 512 channels, 1 to 64 positions, batch 1-8)
# unfold was the fastest of the methods in 66 at 2 threads and 64 at 1; the others were at
# most 8% faster at 1 thread ((4, 64, 4, 4) -> 128 3x3 pad 1) and 34% at 2 ((8, 96, 2, 2) ->
# 512 3x3 pad 1, 0.96 ms against 1.29, a noisy run). Its gain is the weight's passes, so it is
# also taken only for weights of at least twice the elements of its matrix (C_out >= 2*M): in
# an inference forward of (1, 64, 8, 8) -> 64 3x3 pad 1 (C_out = M) Winograd took 119 us and
# unfold 192 (2 threads), where for (1, 512, 7, 7) -> 512 unfold took 2.16 ms and im2col 3.25.
# Beyond 64 positions (a held-out sweep found batch-1 layers of 81 to 144 positions at 0.66-0.95x
# of PyTorch) unfold was 5-30% faster than im2col at 1 thread on 15 layers of 72 to 162
# positions with C_out >= 2*M, and level on average at 2 threads (0.80-1.13x of im2col's time,
# mean 0.97): 1 / 2 threads, ms, unfold / im2col, (1, 256, 10, 10) -> 384 4x4 pad 1 (81) 9.6 /
# 13.6 and 5.3 / 6.2; (1, 384, 20, 20) -> 384 7x7 stride 2 pad 2 (81) 49.1 / 62.5 and 25.0 /
# 31.2; (2, 32, 8, 8) -> 192 3x3 (72) 0.39 / 0.47 and 0.34 / 0.43; (1, 512, 10, 10) -> 256 3x3
# pad 1 (100) 10.6 / 11.9 but 5.3 / 4.7; (2, 192, 7, 7) -> 384 (98) 5.0 / 5.6 but 2.6 / 2.3.
# From 200 positions on unfold was level with im2col at best ((1, 256, 16, 16) -> 512, 256
# positions: 20.8 / 21.1 and 10.2 / 10.4; (4, 128, 8, 8) -> 512 10.7 / 10.1 and 5.6 / 5.5).
# Where Winograd could take these layers, unfold was faster in all 6 measured: (1, 64, 12, 12)
# -> 512 3x3 pad 1 (144 positions) 2.9 ms against Winograd's 4.8 (1 thread), 1.6 / 3.2 (2).
UNFOLD_MAX_POSITIONS = 160
# the kernel sizes Winograd's method computes: F(2x2, 3x3) and F(2x2, 5x5)
WINOGRAD_KERNELS = ((3, 3), (5, 5))
# 5x5 stride-1 layers (padding <= 4) use F(2x2, 5x5) under "auto" only with at least this
# many input channels (and where it pays, below): 9 multiply-adds per output and channel pair
# instead of 25, but a tile's input transform costs about as much as 5 channels' products.
# Measured, one layer forward + backward, 1 thread, ms (im2col / Winograd / direct / PyTorch):
# (32, 4, 16, 16) -> 32 3.47 / 4.18 / 7.12 / 8.28; (32, 8, 16, 16) -> 32 4.67 / 3.52 / - /
# 4.99; (32, 16, 16, 16) -> 4 4.56 / 3.21 / 3.29 / 3.67; (32, 64, 8, 8) -> 64 13.1 / 8.6 / - /
# 11.7.
WINOGRAD5_MIN_IN_CHANNELS = 8
# Stride-1 3x3 and 5x5 layers use Winograd's F(2x2, r x r) under "auto" only where it pays
# (_winograd_pays): where the multiply-adds it saves on the batch pay for its fixed costs, the
# transforms of the weight and of its gradient (16 or 36 numbers per pair of channels, passes
# at memory speed) and products of few rows on small batches. Per pair of channels im2col
# multiplies r*r*v per output position (v: the fraction of its taps not in the padding, which
# it skips), Winograd (r+1)**2 per 2x2 tile, so "auto" takes Winograd when
# N*(r*r*v*OH*OW - (r+1)**2*tiles) >= WINOGRAD_BREAK_EVEN[r] * sqrt(C_in*C_out) (the
# constants and the exponent fitted to the measurements below), and 3x3 layers in any case
# only from WINOGRAD3_MIN_TILES 2x2 output tiles per image.
#
# Fitted on one layer's forward + backward with the input gradient, Winograd against the
# faster of im2col and unfold, interleaved: 49 3x3 and 55 5x5 layers that the rule before
# gave to Winograd (batch 1 to 64, 8 to 512 channels each way, 4x4 to 28x28 maps, padding 0
# to r-1), at 1 and 2 threads, and the 23 3x3 layers on which the rule before was fitted (2
# threads). Time of the method chosen over that of the fastest, mean (worst): 3x3, 1 thread
# 1.071 (1.81) with the rule before, 1.015 (1.23) with this one; 2 threads 1.111 (1.88) and
# 1.038 (1.70); the earlier 23 layers 1.007 (1.08) and 1.005 (1.08). 5x5, 1 thread 1.436
# (8.9) and 1.037 (1.45); 2 threads 1.406 (6.7) and 1.032 (1.63).
# Examples, 1 thread, ms, Winograd / the faster other: (8, 256, 7, 7) -> 96 5x5 12.5 / 4.8;
# (16, 192, 5, 5) -> 128 5x5 9.9 / 1.1; (4, 192, 7, 7) -> 256 3x3 5.9 / 3.3; (1, 64, 12, 12)
# -> 512 3x3 pad 1 4.8 / 2.9 (now im2col or unfold); but (4, 256, 24, 24) -> 64 5x5 pad 1
# 26.6 / 45.4, (1, 128, 24, 24) -> 64 3x3 1.95 / 3.01 (still Winograd). (The rule before
# counted im2col's work as 36*v per tile, too much for odd maps, and its threshold grew as
# (C_in*C_out)**0.75, too fast for small batches of wide layers; 5x5 went to Winograd from 8
# input channels whatever the map.)
WINOGRAD3_MIN_TILES = 4
WINOGRAD_BREAK_EVEN = {3: 3.0, 5: 60.0}
_BACKWARD = {DirectCache: conv_direct.backward, Im2colCache: conv_im2col.backward,
             PointwiseCache: conv_pointwise.backward, UnfoldCache: conv_unfold.backward,
             WinogradCache: conv_winograd.backward}


def check_method(method, layer="conv2d", stride=(1, 1), kernel_size=None, padding=None):
    """Check that ``method`` can compute a convolution with this stride, kernel size and
    padding.

    Raises:
        ValueError: ``method`` is not one of ``"auto"``, ``"direct"``, ``"im2col"``,
            ``"pointwise"``, ``"unfold"``, ``"winograd"``; ``"direct"`` or ``"winograd"``
            with a stride other than 1; ``"winograd"`` with a kernel_size other than ``(3,
            3)`` or ``(5, 5)``, or 5x5 with a padding above 4; or ``"pointwise"`` with a
            kernel_size other than ``(1, 1)`` or a padding other than ``(0, 0)``
            (kernel_size and padding are checked when given).
    """
    if method not in METHODS:
        raise ValueError(f"{layer}: method must be one of {METHODS}, got {method!r}")
    if method in ("direct", "winograd") and tuple(stride) != (1, 1):
        raise ValueError(f"{layer}: method {method!r} needs stride 1, got stride {tuple(stride)}")
    if method == "winograd" and kernel_size is not None and \
            tuple(kernel_size) not in WINOGRAD_KERNELS:
        raise ValueError(f"{layer}: method 'winograd' needs kernel_size (3, 3) or (5, 5), got "
                         f"{tuple(kernel_size)}")
    if method == "winograd" and kernel_size is not None and tuple(kernel_size) == (5, 5) and \
            padding is not None and max(padding) > 4:
        raise ValueError(f"{layer}: method 'winograd' with kernel_size (5, 5) needs padding of "
                         f"at most 4, got {tuple(padding)}")
    if method == "pointwise" and kernel_size is not None and tuple(kernel_size) != (1, 1):
        raise ValueError(f"{layer}: method 'pointwise' needs kernel_size (1, 1), got "
                         f"{tuple(kernel_size)}")
    if method == "pointwise" and padding is not None and tuple(padding) != (0, 0):
        raise ValueError(f"{layer}: method 'pointwise' needs padding (0, 0), got "
                         f"{tuple(padding)}")


def choose_method(method, taps, layer="conv2d", stride=(1, 1), kernel_size=None,
                  padding=(0, 0), out_size=None, out_channels=None, batch=None):
    """``"direct"``, ``"winograd"``, ``"pointwise"``, ``"unfold"`` or ``"im2col"`` for a
    convolution with ``taps = C_in*kH*kW``, output images of ``out_size = (OH, OW)``,
    ``out_channels`` and a batch of ``batch`` images (None: not known).

    ``"auto"`` picks the pointwise products for a ``(1, 1)`` kernel without padding (any
    stride) unless ``OH*OW < POINTWISE_MIN_POSITIONS`` on a batch of more than
    ``POINTWISE_MAX_SMALL_BATCH`` images (or an unknown one); for stride 1 the direct kernels when
    ``taps <= DIRECT_MAX_TAPS`` (there the product's inner dimension is too small to pay for
    im2col's copy) and the maps are large enough or the work small enough for them
    (:func:`_direct_pays`; im2col otherwise), else unfold when the batch has at most
    ``UNFOLD_MAX_POSITIONS`` output positions in all (``batch*OH*OW``) and at least twice as
    many output channels (:func:`_unfold_pays`), else Winograd F(2x2, 3x3) or F(2x2, 5x5)
    when ``kernel_size`` is ``(3, 3)`` or ``(5, 5)`` (then with a padding of at most 4 and at
    least ``WINOGRAD5_MIN_IN_CHANNELS`` input channels) and the multiply-adds it saves pay for
    its fixed costs (:func:`_winograd_pays`, ``WINOGRAD_BREAK_EVEN``), else the
    direct kernels again for a kernel larger than 1x1 with at most
    ``DIRECT_NARROW_MAX_OUT_CHANNELS`` output channels and ``DIRECT_NARROW_MAX_TAPS`` taps
    on maps of at least ``DIRECT_NARROW_MIN_POSITIONS`` positions (im2col's product would have
    too few columns to fill a vector; :func:`_narrow_direct`); im2col for everything
    else. Any other ``method`` is checked (:func:`check_method`) and returned.

    Raises:
        ValueError: as :func:`check_method`.
    """
    check_method(method, layer, stride, kernel_size, padding)
    if method != "auto":
        return method
    if kernel_size is not None and tuple(kernel_size) == (1, 1) and tuple(padding) == (0, 0):
        few = (out_size is not None and out_size[0] * out_size[1] < POINTWISE_MIN_POSITIONS
               and (batch is None or batch > POINTWISE_MAX_SMALL_BATCH))
        return "im2col" if few else "pointwise"
    stride_one = tuple(stride) == (1, 1)
    narrow = stride_one and _narrow_direct(taps, kernel_size, out_size, out_channels)
    if stride_one and taps <= DIRECT_MAX_TAPS:
        pays = narrow or _direct_pays(taps, out_size, out_channels, batch)
        return "direct" if pays else "im2col"
    if _unfold_pays(out_size, out_channels, batch):
        return "unfold"
    square = tuple(kernel_size or ())
    if stride_one and square in WINOGRAD_KERNELS and _winograd_pays(
            square[0], taps // (square[0] * square[1]), out_channels, out_size, padding, batch):
        return "winograd"
    return "direct" if narrow else "im2col"


def _unfold_pays(out_size, out_channels, batch):
    """Whether "auto" gives a layer to unfold (see ``UNFOLD_MAX_POSITIONS``): at most that
    many output positions in the batch, ``M = batch*OH*OW``, and a weight with at least twice
    the elements of the unfolded matrix (``C_out >= 2*M``); None (not known): no."""
    if batch is None or out_size is None or out_channels is None:
        return False
    positions = batch * out_size[0] * out_size[1]
    return positions <= UNFOLD_MAX_POSITIONS and 2 * positions <= out_channels


def _narrow_direct(taps, kernel_size, out_size, out_channels):
    """Whether the direct kernels take a stride-1 layer for its few output channels (see
    ``DIRECT_NARROW_MAX_OUT_CHANNELS``): at most that many, at most ``DIRECT_NARROW_MAX_TAPS``
    taps, a kernel other than 1x1, and at least ``DIRECT_NARROW_MIN_POSITIONS`` output
    positions per image (``out_size`` None: not known, yes); ``out_channels`` None: no."""
    return (out_channels is not None and out_channels <= DIRECT_NARROW_MAX_OUT_CHANNELS
            and taps <= DIRECT_NARROW_MAX_TAPS and tuple(kernel_size or ()) != (1, 1)
            and (out_size is None or out_size[0] * out_size[1] >= DIRECT_NARROW_MIN_POSITIONS))


def _direct_pays(taps, out_size, out_channels=None, batch=None):
    """Whether "auto" gives a stride-1 layer of ``taps <= DIRECT_MAX_TAPS`` to the direct
    kernels rather than im2col (see ``DIRECT_MAX_TAPS``): ``out_size`` None (not known): yes;
    else when ``OH*OW >= DIRECT_MIN_POSITIONS`` and ``taps <= DIRECT_PLANE_MAX_TAPS``, or
    when ``batch*OH*OW*out_channels*taps <= DIRECT_MAX_WORK`` (``batch`` or ``out_channels``
    None: not known, no)."""
    if out_size is None:
        return True
    positions = out_size[0] * out_size[1]
    if positions >= DIRECT_MIN_POSITIONS and taps <= DIRECT_PLANE_MAX_TAPS:
        return True
    return (batch is not None and out_channels is not None
            and batch * positions * out_channels * taps <= DIRECT_MAX_WORK)


def _winograd_pays(kernel, in_channels, out_channels, out_size, padding=(1, 1), batch=None):
    """Whether "auto" gives a stride-1 layer with a ``kernel`` x ``kernel`` weight (3 or 5) of
    this ``padding`` to Winograd's F(2x2, r x r): see ``WINOGRAD_BREAK_EVEN``. 3x3 needs at least
    ``WINOGRAD3_MIN_TILES`` 2x2 tiles per image, 5x5 ``WINOGRAD5_MIN_IN_CHANNELS`` input channels
    (and a padding of at most 4). ``out_channels`` or ``out_size`` None (not known), or
    ``batch`` None: on those conditions alone."""
    if kernel == 5 and (in_channels < WINOGRAD5_MIN_IN_CHANNELS or max(padding) > 4):
        return False
    if out_channels is None or out_size is None:
        return True
    tiles = -(-out_size[0] // 2) * -(-out_size[1] // 2)
    if kernel == 3 and tiles < WINOGRAD3_MIN_TILES:
        return False
    if batch is None:
        return True
    in_size = tuple(o + kernel - 1 - 2 * p for o, p in zip(out_size, padding))  # (stride 1)
    valid = 1.0 - conv_im2col.padded_fraction((batch, in_channels) + in_size, (kernel, kernel),
                                               (1, 1), tuple(padding), tuple(out_size))
    saved = batch * (kernel * kernel * valid * out_size[0] * out_size[1]
                     - (kernel + 1) ** 2 * tiles)
    return saved >= WINOGRAD_BREAK_EVEN[kernel] * math.sqrt(in_channels * out_channels)


def conv2d_output_size(in_size, kernel_size, stride, padding):
    """``(OH, OW)`` of a convolution; every argument is an int or a pair ``(h, w)`` of ints.

    ``O = (I + 2*padding - kernel) // stride + 1`` per axis (PyTorch's ``Conv2d`` with
    dilation 1); a result < 1 means the input is too small.

    Raises:
        ValueError: an argument that is not an int or a pair of ints (>= 1; padding >= 0).
    """
    in_h, in_w = pair(in_size, "in_size", "conv2d_output_size", minimum=1)
    kernel_h, kernel_w = pair(kernel_size, "kernel_size", "conv2d_output_size", minimum=1)
    stride_h, stride_w = pair(stride, "stride", "conv2d_output_size", minimum=1)
    pad_h, pad_w = pair(padding, "padding", "conv2d_output_size", minimum=0)
    return ((in_h + 2 * pad_h - kernel_h) // stride_h + 1,
            (in_w + 2 * pad_w - kernel_w) // stride_w + 1)


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


def column_matrix_shape(layer, x_shape, kernel_size, stride, padding, dtype=np.float32):
    """Shape ``(S*OH*OW, kH*kW*C_in)`` of im2col's matrix for ``S`` samples at a time.

    ``S`` is the number of samples per chunk (about ``conv_im2col.CHUNK_BYTES`` of matrix in
    ``dtype``; the whole batch ``N`` when it is small): the size a ``workspace`` for
    :func:`conv2d_forward` must have.

    Raises:
        ValueError: like :func:`check_spatial_size`.
    """
    out_hw = check_spatial_size(layer, x_shape, kernel_size, stride, padding)
    return conv_im2col.matrix_shape(x_shape, kernel_size, out_hw, dtype)


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
        raise TypeError(
            f"{layer}: expected weight dtype {x.dtype} (like the input), got {weight.dtype}"
        )
    if bias is None:
        return
    out_channels = weight.shape[0]
    check_float_array(layer, bias, "bias")
    if bias.shape != (out_channels,):
        raise ValueError(
            f"{layer}: expected bias of shape ({out_channels},), got shape {bias.shape}"
        )
    if bias.dtype != x.dtype:
        raise TypeError(
            f"{layer}: expected bias dtype {x.dtype} (like the input), got {bias.dtype}"
        )


def _check_workspace_sizes(layer, x, weight_shape, out_shape, padding, method, new_out):
    """MemoryError, before anything is allocated, if the output ``out_shape``, the padded input
    (direct) or im2col's matrix would not fit in memory (see
    :func:`minidl._checks.check_allocation`)."""
    n, channels, height, width = x.shape
    kernel_size = weight_shape[2:]
    if new_out:
        check_allocation(layer, "output", out_shape, x.dtype)
    if method == "direct":
        check_allocation(layer, "padded input",
                         (n, channels, height + 2 * padding[0], width + 2 * padding[1]), x.dtype)
    elif method == "im2col":
        check_allocation(layer, "padded NHWC input",
                         (n, height + 2 * padding[0], width + 2 * padding[1], channels), x.dtype)
        # the backward pass's dcols (a chunk of samples, at least one per thread)
        check_allocation(layer, "im2col matrix", conv_im2col.dcols_shape(
            x.shape, kernel_size, out_shape[2:], x.dtype), x.dtype)
    elif method == "unfold":
        check_allocation(layer, "unfolded input", (n * out_shape[2] * out_shape[3],
                                                   channels * kernel_size[0] * kernel_size[1]),
                         x.dtype)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, layer="conv2d", workspace=None,
                   method="auto", out=None):
    """2-D convolution (cross-correlation) of a batch, like ``torch.nn.functional.conv2d``.

    Args:
        x (np.ndarray): ``(N, C_in, H, W)``, float32 or float64, any strides.
        weight (np.ndarray): ``(C_out, C_in, kH, kW)``, the dtype of ``x``.
        bias (np.ndarray or None): ``(C_out,)``, the dtype of ``x``.
        stride (int or pair): step ``(sH, sW)`` >= 1 (default 1).
        padding (int or pair): zeros ``(pH, pW)`` >= 0 added on each side (default 0).
        layer (str): name used in error messages.
        workspace (np.ndarray or None): im2col method only: an optional writable contiguous
            1-D array of x's dtype with at least as many elements as
            :func:`column_matrix_shape` gives (``N*OH*OW*kH*kW*C_in`` for a small batch; one
            chunk of samples for a large one) in which im2col's matrix is built; it belongs to
            the returned cache while the cache is used. Default: no matrix (the products
            read it in place from the padded input, see
            :mod:`~minidl.functional.conv_im2col`). Unused by the other methods.
        method (str): ``"auto"`` (default; see :func:`choose_method`), ``"direct"`` (direct
            Cython loops: fast when ``C_in*kH*kW`` is small or ``C_out`` at most 8; stride 1
            only), ``"winograd"`` (F(2x2, 3x3) or F(2x2, 5x5); 3x3 kernels, or 5x5 with a
            padding of at most 4; stride 1), ``"pointwise"`` (a
            matrix product per image; 1x1 kernels, padding 0), ``"im2col"`` (im2col +
            matrix products) or ``"unfold"`` (im2col in the weight's order; any geometry,
            fast for few output positions). All give the same results up to rounding.
        out (np.ndarray or None): where to write the result (C-contiguous, ``(N, C_out, OH, OW)``,
            x's dtype); a new array when None.
    Returns:
        (out, cache): ``out`` is ``(N, C_out, OH, OW)`` in the dtype of ``x`` with
        ``OH = (H + 2*pH - kH) // sH + 1`` (likewise ``OW``); ``cache`` is the chosen
        algorithm's :class:`DirectCache`, :class:`WinogradCache`, :class:`PointwiseCache`,
        :class:`UnfoldCache` or :class:`Im2colCache` (its
        ``method`` attribute names it) for :func:`conv2d_backward`; under the reference
        backend a :class:`minidl.reference.functional.conv.Conv2dCache`, whatever ``method``
        says (``method`` is checked, then unused there, like ``workspace``).
    Raises:
        TypeError: an argument is not a float32/float64 ndarray, or dtypes differ.
        ValueError: a wrong shape, a bad stride/padding, an input smaller than the kernel, an
            unknown method, or an unusable workspace or out (wrong shape, dtype or layout,
            read-only, or sharing memory with an input or with each other).
        MemoryError: the output (or the padded input, or im2col's or unfold's matrix) would
            not fit in this machine's memory; raised before anything is allocated.
    """
    check_input(layer, x, "NCHW")
    _check_weight_and_bias(layer, x, weight, bias)
    stride = pair(stride, "stride", layer, minimum=1)
    padding = pair(padding, "padding", layer, minimum=0)
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    out_h, out_w = check_spatial_size(layer, x.shape, (kernel_h, kernel_w), stride, padding)
    out_shape = (x.shape[0], out_channels, out_h, out_w)
    method = choose_method(method, kernel_h * kernel_w * in_channels, layer, stride,
                           (kernel_h, kernel_w), padding, (out_h, out_w), out_channels,
                           x.shape[0])
    _check_workspace_sizes(layer, x, weight.shape, out_shape, padding, method, out is None)
    if method == "im2col" and isinstance(workspace, np.ndarray):
        check_no_overlap(layer, "workspace", workspace, input=x, weight=weight, bias=bias)
    given = out is not None
    out = _memory.output(layer, out, out_shape, x.dtype)
    if given:
        check_no_overlap(layer, "out", out, input=x, weight=weight, bias=bias,
                         workspace=workspace if method == "im2col" else None)
    if get_backend() == "reference":  # reference backend: the convolution sum, in NumPy
        with _blas.one_thread():  # its einsums are matrix products, on one thread like ours
            return reference.conv2d_forward(x, weight, bias, stride, padding, layer, workspace,
                                            method, out)
    if method == "direct":
        cache = conv_direct.forward(x, weight, bias, padding, out)
    elif method == "winograd":
        cache = conv_winograd.forward(x, weight, bias, padding, out)
    elif method == "pointwise":
        cache = conv_pointwise.forward(x, weight, bias, stride, out)
    elif method == "unfold":
        cache = conv_unfold.forward(x, weight, bias, stride, padding, out)
    else:
        cache = conv_im2col.forward(x, weight, bias, stride, padding, out, workspace, layer)
    return out, cache


def conv2d_backward(dout, cache, layer="conv2d", input_grad=True):
    """Gradients of :func:`conv2d_forward` with respect to the input, weight and bias.

    The cache is only read: calling this again with the same cache gives the same result.

    Args:
        dout (np.ndarray): d loss / d out, ``(N, C_out, OH, OW)``, the dtype of the forward
            output; any strides.
        cache: the second value returned by :func:`conv2d_forward`.
        layer (str): name used in error messages.
        input_grad (bool): compute ``dx`` (default). With False the input gradient's work is
            skipped and ``dx`` is None; ``dweight``/``dbias`` are the same.
    Returns:
        (dx, dweight, dbias): ``(N, C_in, H, W)``, ``(C_out, C_in, kH, kW)`` and ``(C_out,)``,
        all in the dtype of ``x`` (new arrays); ``dbias`` is None when the forward had no bias;
        ``dx`` is None when ``input_grad`` is False.
    Raises:
        TypeError: ``cache`` is not a convolution cache; ``dout`` has the wrong dtype.
        ValueError: ``dout`` has the wrong shape.
    """
    if isinstance(cache, reference.Conv2dCache):  # reference backend: made by its forward
        check_grad(layer, dout, cache.out_shape, cache.dtype)
        with _blas.one_thread():
            return reference.conv2d_backward(dout, cache, layer, input_grad)
    backward = _BACKWARD.get(type(cache))
    if backward is None:
        raise TypeError(f"{layer}: expected the cache returned by conv2d_forward, got "
                        f"{type(cache).__name__}")
    _check_cache(layer, cache)
    check_grad(layer, dout, cache.out_shape, cache.dtype)
    return backward(dout, cache, input_grad)


def _check_cache(layer, cache):
    """Check that the arrays of a compiled method's cache have the shapes its geometry implies
    (a cache is a tuple the caller could have changed; its arrays reach the kernels).

    Raises:
        ValueError: naming the field and what it should be.
    """
    def array(field, shape, contiguous=True):
        check_cache_array(layer, "conv2d_forward", field, getattr(cache, field), shape,
                          cache.dtype, contiguous)

    try:
        n, channels, height, width = (int(v) for v in cache.x_shape)
        _, out_channels, out_h, out_w = (int(v) for v in cache.out_shape)
        padding = (0, 0) if isinstance(cache, PointwiseCache) else cache.padding  # 1x1: none
        pad_h, pad_w = (int(v) for v in padding)
        dtype_ok = np.dtype(cache.dtype) in (np.float32, np.float64)
    except (TypeError, ValueError):
        dtype_ok = False
    if not dtype_ok or min(n, channels, height, width, out_channels, out_h, out_w) < 1 or \
            min(pad_h, pad_w) < 0:
        raise ValueError(f"{layer}: the cache's shapes, padding or dtype are not what "
                         f"conv2d_forward made; pass the cache it returned, unchanged")
    if isinstance(cache, DirectCache):
        weight = cache.weight
        kernel_h, kernel_w = weight.shape[2:] if isinstance(weight, np.ndarray) and \
            weight.ndim == 4 else (1, 1)
        padded = (n, channels, height + 2 * pad_h, width + 2 * pad_w)
        array("x_pad", padded)
        array("weight", (out_channels, channels, kernel_h, kernel_w))
        geometry = (padded[2] - kernel_h + 1, padded[3] - kernel_w + 1)
    elif isinstance(cache, PointwiseCache):
        stride = tuple(int(v) for v in cache.stride)
        array("xs", (n, channels, out_h, out_w))
        array("weight", (out_channels, channels))
        geometry = conv2d_output_size((height, width), (1, 1), stride, (0, 0)) if (
            len(stride) == 2 and min(stride) >= 1) else None
    elif isinstance(cache, UnfoldCache):
        _, _, kernel_h, kernel_w = (int(v) for v in cache.weight_shape)
        stride = tuple(int(v) for v in cache.stride)
        taps = kernel_h * kernel_w * channels
        array("cols", (n * out_h * out_w, taps))
        array("weight", (out_channels, taps))
        geometry = conv2d_output_size((height, width), (kernel_h, kernel_w), stride,
                                      (pad_h, pad_w)) if (
            len(stride) == 2 and min(kernel_h, kernel_w, *stride) >= 1) else None
    elif isinstance(cache, WinogradCache):
        kernel = cache.kernel if cache.kernel in (3, 5) else 3
        array("x", (n, channels, height, width))
        array("u", ((kernel + 1) ** 2, channels, out_channels), contiguous=False)
        spans = kernel == 5 or cache.spans is True  # (the backward's blocks span images)
        if kernel == 5:
            array("weight", (out_channels, channels, kernel, kernel))
        geometry = (height + 2 * pad_h - kernel + 1, width + 2 * pad_w - kernel + 1)
        if not isinstance(cache.block_rows, (int, np.integer)) or cache.block_rows < 1 or \
                cache.kernel not in (3, 5) or cache.spans not in (True, False) or \
                (spans and max(pad_h, pad_w) > kernel - 1):
            geometry = None
    else:
        _, _, kernel_h, kernel_w = (int(v) for v in cache.weight_shape)
        stride = tuple(int(v) for v in cache.stride)
        taps = kernel_h * kernel_w * channels
        array("weight_rows", (out_channels, taps))
        if cache.cols is not None:
            array("cols", (n * out_h * out_w, taps))
        array("x_pad", (n, height + 2 * pad_h, width + 2 * pad_w, channels))
        chunk = int(cache.chunk)
        valid = min(kernel_h, kernel_w, *stride, chunk) >= 1 and len(stride) == 2 and (
            cache.cols is None or chunk >= n)
        geometry = conv2d_output_size((height, width), (kernel_h, kernel_w), stride,
                                      (pad_h, pad_w)) if valid else None
    if geometry != (out_h, out_w):
        raise ValueError(f"{layer}: the cache's geometry (input {cache.x_shape}, output "
                         f"{cache.out_shape}, padding {padding}) is not what "
                         f"conv2d_forward made; pass the cache it returned, unchanged")
