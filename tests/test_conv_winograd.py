"""The Winograd F(2x2, 3x3) convolution (minidl.functional.conv_winograd): the NumPy spec against
the definition, the fused kernels with one-row blocks and uneven threads, float32 accuracy."""
import numpy as np
import pytest

from conv_helpers import DTYPES, assert_close
from minidl.functional import conv_winograd
from minidl.functional.conv import conv2d_backward, conv2d_forward
from minidl.reference import conv as ref


# (N, C_in, C_out, H, W, padding): odd and even outputs (a last row/column of tiles that is half
# outside), padding 0-2, outputs of one pixel, channel counts that are not multiples of the
# kernels' steps (4 rows, 16 columns); and for the NCHW <-> NHWC transposes (_transpose.h,
# 8x8 blocks): whole blocks only (16 channels, widths 16) and several blocks plus remainders.
WINOGRAD_GEOMETRIES = [
    (2, 16, 16, 16, 16, (1, 1)),
    (2, 19, 24, 13, 21, (1, 1)),
    (2, 3, 4, 5, 6, (1, 1)),
    (3, 5, 2, 8, 7, (0, 0)),
    (2, 4, 3, 6, 9, (2, 1)),
    (1, 2, 2, 3, 3, (0, 0)),
    (2, 37, 33, 7, 10, (1, 0)),
    (3, 64, 64, 12, 11, (1, 1)),
]


@pytest.mark.parametrize("geometry", WINOGRAD_GEOMETRIES)
def test_winograd_reference_matches_definition(geometry, rng):
    """The readable F(2x2, 3x3) spec (minidl.reference.winograd) against the definition."""
    from minidl.reference import winograd as wino
    n, c, k, h, w, padding = geometry
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((k, c, 3, 3))
    bias = rng.standard_normal(k)
    out = wino.conv2d_forward(x, weight, bias, padding)
    np.testing.assert_allclose(out, ref.conv2d_forward(x, weight, bias, (1, 1), padding),
                               rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    ours = wino.conv2d_backward(dout, x, weight, True, padding)
    theirs = ref.conv2d_backward(dout, x, weight, True, (1, 1), padding)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, c", [(1, 1), (4, 3), (33, 37), (64, 16)])
def test_weight_transforms_match_the_reference(k, c, dtype, rng):
    """The kernels' G g G^T and G^T dU G (float64 arithmetic, rows then columns) against the
    reference's one product with G kron G: equal to float64 rounding before the cast, zeros in
    the padded columns of U, every element of both outputs written."""
    from minidl.reference import winograd as wino
    weight = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    columns = conv_winograd._round_up(k, conv_winograd.COL_STEP)
    u = conv_winograd.weight_transform(weight, columns)
    assert u.shape == (16, c, columns) and u.dtype == dtype
    tolerance = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-14,
                                                                            atol=1e-15)
    np.testing.assert_allclose(u[:, :, :k], wino.weight_transform(weight), **tolerance)
    assert not u[:, :, k:].any()
    wide = rng.standard_normal((16, c + 3, k + 5))
    du = wide[:, 1:c + 1, 2:k + 2]  # a strided view, as the backward pass passes it
    dweight = conv_winograd.weight_grad_transform(du, dtype)
    assert dweight.shape == (k, c, 3, 3) and dweight.dtype == dtype
    np.testing.assert_allclose(dweight, wino.weight_grad_transform(du, dtype), **tolerance)


@pytest.mark.parametrize("block_bytes", [1, 1 << 30], ids=["one-row-blocks", "whole-images"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", WINOGRAD_GEOMETRIES)
def test_winograd_kernels_blocks_and_threads(geometry, dtype, block_bytes, monkeypatch, rng):
    """The fused kernels with one row of tiles per block or whole images, on 3 threads (so
    images are split unevenly, and some threads may get none), every output overwritten."""
    monkeypatch.setattr(conv_winograd, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(conv_winograd, "_threads", lambda n, work: 3)
    n, c, k, h, w, padding = geometry
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    out_shape = (n, k, h + 2 * padding[0] - 2, w + 2 * padding[1] - 2)
    out = np.full(out_shape, np.nan, dtype)
    conv2d_forward(x, weight, bias, 1, padding, method="winograd", out=out)
    assert_close(out, ref.conv2d_forward(x, weight, bias, (1, 1), padding), dtype, "out")
    out, cache = conv2d_forward(x, weight, bias, 1, padding, method="winograd")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, dbias = conv2d_backward(dout, cache)
    ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, True, (1, 1), padding)
    assert_close(dx, ref_dx, dtype, "dx")
    assert_close(dweight, ref_dweight, dtype, "dweight")
    assert_close(dbias, ref_dbias, dtype, "dbias")


def test_winograd_float32_accuracy_on_a_cifar_layer(rng):
    """F(2x2, 3x3) in float32 on a 64->64 layer of 16x16 maps stays within a few float32 ulps
    of the exact result (relative to the largest value), like im2col does."""
    x = rng.standard_normal((4, 64, 16, 16))
    weight = rng.standard_normal((64, 64, 3, 3)) / 24
    dout = rng.standard_normal((4, 64, 16, 16))
    exact = [ref.conv2d_forward(x, weight, None, (1, 1), (1, 1))]
    exact += ref.conv2d_backward(dout, x, weight, False, (1, 1), (1, 1))[:2]
    for method in ("winograd", "im2col"):
        out, cache = conv2d_forward(x.astype(np.float32), weight.astype(np.float32), None, 1, 1,
                                    method=method)
        dx, dweight, _ = conv2d_backward(dout.astype(np.float32), cache)
        for ours, theirs, what in zip((out, dx, dweight), exact, ("out", "dx", "dweight")):
            error = np.abs(ours - theirs).max() / np.abs(theirs).max()
            assert error < 2e-6, (method, what, error)
