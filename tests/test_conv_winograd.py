"""The Winograd F(2x2, 3x3) and F(2x2, 5x5) convolutions (minidl.functional.conv_winograd): the
NumPy spec against the definition, the fused kernels with one-row blocks (for 5x5 also blocks
across images) and uneven threads, float32 accuracy."""
import numpy as np
import pytest

import minidl

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
    (2, 4, 3, 5, 5, (3, 3)),  # padding 3: the input gradient is not a forward (dout padded -1)
]
# The same for 5x5 kernels (6x6 tiles): paddings 0-4 (4 is the most F(2x2, 5x5) takes), an
# output of one pixel, and the shapes of a small-map layer with many channels.
WINOGRAD5_GEOMETRIES = [
    (2, 16, 16, 8, 8, (2, 2)),
    (2, 19, 24, 13, 21, (2, 2)),
    (2, 3, 4, 5, 6, (2, 1)),
    (3, 5, 2, 9, 7, (0, 0)),
    (2, 4, 3, 6, 9, (4, 3)),
    (1, 2, 2, 5, 5, (0, 0)),
    (2, 37, 33, 7, 10, (1, 2)),
]
# (kernel size, geometry)
CASES = [(3, g) for g in WINOGRAD_GEOMETRIES] + [(5, g) for g in WINOGRAD5_GEOMETRIES]
CASE_IDS = [f"{r}x{r}-{g}".replace(" ", "") for r, g in CASES]


def _out_shape(n, k, h, w, padding, r):
    return (n, k, h + 2 * padding[0] - r + 1, w + 2 * padding[1] - r + 1)


@pytest.mark.parametrize("r, geometry", CASES, ids=CASE_IDS)
def test_winograd_reference_matches_definition(r, geometry, rng):
    """The readable F(2x2, 3x3) and F(2x2, 5x5) spec (minidl.reference.winograd) against the
    definition."""
    from minidl.reference import winograd as wino
    n, c, k, h, w, padding = geometry
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((k, c, r, r))
    bias = rng.standard_normal(k)
    tolerance = 1e-12 if r == 3 else 1e-11  # (F(2x2, 5x5)'s larger coefficients)
    out = wino.conv2d_forward(x, weight, bias, padding)
    np.testing.assert_allclose(out, ref.conv2d_forward(x, weight, bias, (1, 1), padding),
                               rtol=tolerance, atol=tolerance)
    dout = rng.standard_normal(out.shape)
    ours = wino.conv2d_backward(dout, x, weight, True, padding)
    theirs = ref.conv2d_backward(dout, x, weight, True, (1, 1), padding)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("r", [3, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, c", [(1, 1), (4, 3), (33, 37), (64, 16)])
def test_weight_transforms_match_the_reference(k, c, dtype, r, rng, monkeypatch):
    """The kernels' G g G^T and G^T dU G (float64 arithmetic, rows then columns) against the
    reference's one product with G kron G: equal to float64 rounding before the cast, zeros in
    the padded columns of U, every element of both outputs written; the input gradient's U
    (filters rotated, channels swapped) from the weight, and for 3x3 from U itself."""
    from minidl.reference import winograd as wino
    planes = (r + 1) ** 2
    weight = rng.standard_normal((k, c, r, r)).astype(dtype)
    columns = conv_winograd._round_up(k, conv_winograd.COL_STEP)
    u = conv_winograd.weight_transform(weight, columns)
    assert u.shape == (planes, c, columns) and u.dtype == dtype
    tolerance = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-14,
                                                                            atol=1e-15)
    np.testing.assert_allclose(u[:, :, :k], wino.weight_transform(weight), **tolerance)
    assert not u[:, :, k:].any()
    flipped = conv_winograd.weight_transform(weight, conv_winograd._round_up(c, 16), flip=True)
    assert flipped.shape == (planes, k, conv_winograd._round_up(c, 16))
    np.testing.assert_allclose(  # the input gradient's kernel, without a flipped copy
        flipped[:, :, :c], wino.weight_transform(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]),
        **tolerance)
    assert not flipped[:, :, c:].any()
    if r == 3:  # the same from U, by permuting and transposing its planes
        poisoned = np.full((planes, k, conv_winograd._round_up(c, 16)), np.nan, dtype)
        monkeypatch.setattr(conv_winograd._memory, "empty", lambda shape, dt: poisoned)
        from_u = conv_winograd.flipped_transform(u[:, :, :k], poisoned.shape[2])
        monkeypatch.undo()
        assert from_u is poisoned  # every element overwritten: no NaN left below
        np.testing.assert_allclose(from_u, flipped, **tolerance)
        np.testing.assert_array_equal(  # and from a U whose rows are not contiguous
            conv_winograd.flipped_transform(np.asfortranarray(u[:, :, :k]), from_u.shape[2]),
            from_u)
    wide = rng.standard_normal((planes, c + 3, k + 5))
    du = wide[:, 1:c + 1, 2:k + 2]  # a strided view, as the backward pass passes it
    dweight = conv_winograd.weight_grad_transform(du, dtype)
    assert dweight.shape == (k, c, r, r) and dweight.dtype == dtype
    np.testing.assert_allclose(dweight, wino.weight_grad_transform(du, dtype), **tolerance)


@pytest.mark.parametrize("backward", ["per-image", "across"])
@pytest.mark.parametrize("blocks", ["one-row", "three-rows", "whole"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r, geometry", CASES, ids=CASE_IDS)
def test_winograd_kernels_blocks_and_threads(r, geometry, dtype, blocks, backward, monkeypatch,
                                             rng):
    """The fused kernels with one row of tiles per block, three rows (the forward's blocks, and
    the weight gradient's where they span images, run on from one image into the next), or
    whole images (those blocks: the whole batch), on 3 threads (so images are split unevenly,
    and some threads may get none), every output overwritten; a 3x3 layer's backward pass by
    its per-image kernel and by blocks across images (weight_grad and a forward for dx, where
    the padding allows: at most 2)."""
    across = backward == "across" and max(geometry[-1]) <= r - 1
    monkeypatch.setattr(conv_winograd, "ACROSS_MAX_TILES", 1 << 30 if across else 0)
    monkeypatch.setattr(conv_winograd, "ACROSS_MIN_CHUNKS", 2 if across else 0)
    monkeypatch.setattr(conv_winograd, "ACROSS_MIN_U_BYTES", 0 if across else 1 << 60)
    monkeypatch.setattr(conv_winograd, "BLOCK_BYTES", 1 << 30 if blocks == "whole" else 1)
    monkeypatch.setattr(conv_winograd, "BLOCK_MIN_TILES", 1)
    if blocks == "three-rows":
        monkeypatch.setattr(conv_winograd, "_block_rows", lambda *args, **kwargs: 3)
        monkeypatch.setattr(conv_winograd, "_block_rows_across",
                            lambda n, rows, *args: min(3, n * rows))
    monkeypatch.setattr(conv_winograd, "_threads", lambda n, work: 3)
    monkeypatch.setattr(conv_winograd._config, "threads_for", lambda work: 3)
    n, c, k, h, w, padding = geometry
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c, r, r)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    out = np.full(_out_shape(n, k, h, w, padding, r), np.nan, dtype)
    conv2d_forward(x, weight, bias, 1, padding, method="winograd", out=out)
    assert_close(out, ref.conv2d_forward(x, weight, bias, (1, 1), padding), dtype, "out")
    out, cache = conv2d_forward(x, weight, bias, 1, padding, method="winograd")
    assert cache.kernel == r and cache.spans == (across or r == 5)
    assert (cache.weight is not None) == (r == 5)  # (a 3x3 dx takes its U from the forward's)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, dbias = conv2d_backward(dout, cache)
    ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, True, (1, 1), padding)
    assert_close(dx, ref_dx, dtype, "dx")
    assert_close(dweight, ref_dweight, dtype, "dweight")
    assert_close(dbias, ref_dbias, dtype, "dbias")


@pytest.mark.parametrize("n, size, padding, spans", [
    (1, 16, 1, True),    # one image: one chunk, which the per-image kernel runs on one thread
    (3, 14, 1, True),    # 147 tiles: fewer than 2 * CHUNK_TILES, one chunk
    (4, 16, 1, False),   # 256 tiles: 2 chunks
    (1, 16, 3, False),   # padding 3: the input gradient cannot be a forward
])
def test_3x3_backward_spans_images_when_the_batch_is_one_chunk(n, size, padding, spans, rng):
    """A 3x3 layer whose batch would be summed in one chunk (ACROSS_MIN_CHUNKS) takes the
    backward pass whose blocks span images (and split by planes), whatever the thread count;
    both routes give the reference's gradients."""
    x = rng.standard_normal((n, 16, size, size)).astype(np.float32)
    weight = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    out, cache = conv2d_forward(x, weight, None, 1, padding, method="winograd")
    assert cache.spans == spans
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx, dweight, _ = conv2d_backward(dout, cache)
    ref_dx, ref_dweight, _ = ref.conv2d_backward(dout.astype(np.float64), x.astype(np.float64),
                                                 weight.astype(np.float64), False, (1, 1),
                                                 (padding, padding))
    assert_close(dx, ref_dx, np.float32, "dx")
    assert_close(dweight, ref_dweight, np.float32, "dweight")


@pytest.mark.parametrize("r, across", [(3, False), (3, True), (5, True)])
def test_winograd_results_do_not_depend_on_threads_or_blocks(r, across, monkeypatch, rng):
    """Forward, input, weight and bias gradients: the same bits on 1 and 2 threads; the
    forward (whose blocks may span images) and the input gradient where it is a forward also
    with other block sizes (the weight gradient's sums follow the blocks)."""
    monkeypatch.setattr(conv_winograd, "ACROSS_MAX_TILES", 1 << 30 if across else 0)
    monkeypatch.setattr(conv_winograd, "ACROSS_MIN_CHUNKS", 2 if across else 0)
    x = rng.standard_normal((5, 24, 9, 8)).astype(np.float32)
    weight = rng.standard_normal((20, 24, r, r)).astype(np.float32)
    bias = rng.standard_normal(20).astype(np.float32)
    results = []
    before = minidl.get_num_threads()
    try:
        for threads, block_bytes in ((1, 384 << 10), (2, 384 << 10), (2, 1), (1, 1 << 30)):
            monkeypatch.setattr(conv_winograd, "BLOCK_BYTES", block_bytes)
            monkeypatch.setattr(conv_winograd, "BLOCK_MIN_TILES", 1 if block_bytes == 1 else 128)
            minidl.set_num_threads(threads)
            out, cache = conv2d_forward(x, weight, bias, 1, 2, method="winograd")
            grads = conv2d_backward(np.cos(out), cache)
            results.append([out, *grads])
    finally:
        minidl.set_num_threads(before)
    for a, b in zip(results[0], results[1]):  # 1 and 2 threads
        np.testing.assert_array_equal(a, b)
    for other in results[2:]:  # other blocks: out and dx
        for a, b in zip(results[0][:2], other[:2]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("across", [False, True])
def test_winograd_float32_accuracy_on_a_cifar_layer(across, monkeypatch, rng):
    """F(2x2, 3x3) in float32 on a 64->64 layer of 16x16 maps stays within a few float32 ulps
    of the exact result (relative to the largest value), like im2col does, with either
    backward pass."""
    monkeypatch.setattr(conv_winograd, "ACROSS_MAX_TILES", 1 << 30 if across else 0)
    monkeypatch.setattr(conv_winograd, "ACROSS_MIN_CHUNKS", 2 if across else 0)
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


def test_winograd5_float32_accuracy(rng):
    """F(2x2, 5x5) in float32 on a 64->64 layer of 8x8 maps with padding 2: its transforms
    have larger coefficients (B^T's 4 and 5, G's 1/24 .. 2/3), so it rounds more than im2col
    (measured about 3e-6 against 5e-7 of the largest value), but stays within 2e-5."""
    x = rng.standard_normal((8, 64, 8, 8))
    weight = rng.standard_normal((64, 64, 5, 5)) / 40
    dout = rng.standard_normal((8, 64, 8, 8))
    exact = [ref.conv2d_forward(x, weight, None, (1, 1), (2, 2))]
    exact += ref.conv2d_backward(dout, x, weight, False, (1, 1), (2, 2))[:2]
    for method, bound in (("winograd", 2e-5), ("im2col", 2e-6)):
        out, cache = conv2d_forward(x.astype(np.float32), weight.astype(np.float32), None, 1, 2,
                                    method=method)
        dx, dweight, _ = conv2d_backward(dout.astype(np.float32), cache)
        for ours, theirs, what in zip((out, dx, dweight), exact, ("out", "dx", "dweight")):
            error = np.abs(ours - theirs).max() / np.abs(theirs).max()
            assert error < bound, (method, what, error)
