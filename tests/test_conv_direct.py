"""The direct convolution (minidl.functional.conv_direct): its Cython kernels against
minidl.reference.conv, and the multi-threaded first layer against the other methods."""
import numpy as np
import pytest

from conv_helpers import DTYPES, GEOMETRIES, GEOMETRY_IDS, METHODS, assert_close, out_size
from minidl._kernels import _conv
from minidl.functional.conv import conv2d_backward, conv2d_forward
from minidl.reference import conv as ref


def _direct_forward(x_pad, weight, bias, out, threads=2):
    """Call the forward kernel as minidl.functional.conv_direct does: the weight as rows, zero
    rows up to a multiple of 4, and the taps' offsets in the padded image."""
    out_channels, channels, kernel_h, kernel_w = weight.shape
    hp, wp = x_pad.shape[2:]
    rows = np.zeros((-(-out_channels // 4) * 4, weight[0].size), weight.dtype)
    rows[:out_channels] = weight.reshape(out_channels, -1)
    offsets = ((np.arange(channels)[:, None, None] * hp + np.arange(kernel_h)[None, :, None]) * wp
               + np.arange(kernel_w)[None, None, :]).reshape(-1).astype(np.intp)
    wide = (out.shape[2] - 1) * wp + out.shape[3]
    _conv.direct_forward(x_pad, rows, offsets, bias, True, out,
                         np.empty((threads, 4 * wide), x_pad.dtype), threads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_channels, shape, kernel", [
    (5, (2, 3, 20, 37), (3, 3)),   # a partial block of 4 channels; vectors and a scalar tail
    (8, (1, 1, 33, 40), (5, 2)),   # whole blocks; a plane of several vector blocks
    (1, (3, 2, 6, 70), (1, 7)),
])
def test_direct_forward_kernel_on_planes_of_many_vectors(out_channels, shape, kernel, dtype,
                                                          rng):
    """The forward kernel's vector blocks (2 SIMD vectors of positions; the planes above are
    wider than the small geometries), its scalar tail and its partial blocks of output
    channels, against the reference, on 1 and 3 threads; every element of out is written."""
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal((out_channels, shape[1]) + kernel).astype(dtype)
    bias = rng.standard_normal(out_channels).astype(dtype)
    padding = (kernel[0] // 2, kernel[1] // 2)
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    oh, ow = out_size(shape[2], shape[3], kernel, (1, 1), padding)
    expected = ref.conv2d_forward(x, weight, bias, (1, 1), padding)
    for threads in (1, 3):
        out = np.full((shape[0], out_channels, oh, ow), np.nan, dtype)
        _direct_forward(x_pad, weight, bias, out, threads)
        assert_close(out, expected, dtype, "out")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if g[5] == (1, 1)],
                         ids=[i for g, i in zip(GEOMETRIES, GEOMETRY_IDS) if g[5] == (1, 1)])
def test_direct_kernels_match_reference(geometry, dtype, rng):
    """The three direct kernels, called with several threads, against the reference."""
    n, c, h, w, kernel, stride, padding = geometry
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((3, c) + kernel).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    oh, ow = out_size(h, w, kernel, stride, padding)
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    hp, wp = x_pad.shape[2:]
    out = np.full((n, 3, oh, ow), np.nan, dtype)  # the kernels must overwrite everything
    _direct_forward(x_pad, weight, bias, out)
    assert_close(out, ref.conv2d_forward(x, weight, bias, stride, padding), dtype, "out")

    dout = rng.standard_normal(out.shape).astype(dtype)
    dout_wide = np.zeros((n, 3, oh, wp), dtype)
    dout_wide[..., :ow] = dout
    dweight = np.full(weight.shape, np.nan)
    dbias = np.full(3, np.nan)
    _conv.direct_weight_grad(x_pad, dout, dweight, dbias, True, np.empty((2, oh * wp), dtype), 2)
    dx = np.full(x.shape, np.nan, dtype)
    _conv.direct_input_grad(dout_wide, weight, dx, *padding, np.empty((2, hp * wp), dtype), 2)
    ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, True, stride, padding)
    assert_close(dx, ref_dx, dtype, "dx")
    assert_close(dweight, ref_dweight, dtype, "dweight")
    assert_close(dbias, ref_dbias, dtype, "dbias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_method_multithreaded_first_layer(dtype, rng):
    """An MNIST-like first layer, large enough for the multi-threaded path, against im2col."""
    x = rng.standard_normal((8, 1, 28, 28)).astype(dtype)
    weight = rng.standard_normal((32, 1, 3, 3)).astype(dtype)
    bias = rng.standard_normal(32).astype(dtype)
    results = []
    for method in METHODS:
        out, cache = conv2d_forward(x, weight, bias, 1, 1, method=method)
        dout = np.sin(out)
        results.append((out,) + conv2d_backward(dout, cache))
    for other in results[1:]:
        for ours, theirs in zip(results[0], other):
            assert_close(ours, theirs, dtype)



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_w", range(1, 10))
def test_direct_kernel_rows_of_every_width(kernel_w, dtype, rng):
    """Kernel rows of 2..8 taps run fused (one pass per row, _conv.h's minidl_conv_row and
    minidl_dot_row); 1 and 9 taps one at a time. Each width, on rows longer and shorter than a
    SIMD vector, against the reference."""
    for n, c, h, w, padding in ((2, 2, 6, 9 + kernel_w, (1, 0)), (3, 1, 4, kernel_w + 1, (0, 2))):
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        weight = rng.standard_normal((3, c, 2, kernel_w)).astype(dtype)
        bias = rng.standard_normal(3).astype(dtype)
        out, cache = conv2d_forward(x, weight, bias, 1, padding, method="direct")
        assert_close(out, ref.conv2d_forward(x, weight, bias, (1, 1), padding), dtype, "out")
        dout = rng.standard_normal(out.shape).astype(dtype)
        dx, dweight, dbias = conv2d_backward(dout, cache)
        ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, True, (1, 1),
                                                             padding)
        assert_close(dweight, ref_dweight, dtype, "dweight")
        assert_close(dbias, ref_dbias, dtype, "dbias")
        assert_close(dx, ref_dx, dtype, "dx")
