"""The im2col + GEMM convolution (minidl.functional.conv_im2col): its Cython kernels (im2col,
col2im, the layout changes) against minidl.reference.conv, the caller's workspace, and the
matrix built a few samples at a time."""
import numpy as np
import pytest

from conv_helpers import (DTYPES, GEOMETRIES, GEOMETRY_IDS, assert_close, nhwc, out_size)
from minidl._kernels import _conv, _gemm
from minidl.functional import conv_im2col
from minidl.functional.conv import conv2d_backward, conv2d_forward
from minidl.reference import conv as ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_im2col_kernel_matches_reference(geometry, dtype, rng):
    n, c, h, w, kernel, stride, padding = geometry
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    expected = ref.im2col(x, kernel, stride, padding)
    oh, ow = out_size(h, w, kernel, stride, padding)
    assert expected.shape == (n * oh * ow, kernel[0] * kernel[1] * c)
    cols = np.full(expected.shape, np.nan, dtype=dtype)  # the kernel must overwrite everything
    _conv.im2col(nhwc(x), cols, *kernel, *stride, *padding, 2)
    np.testing.assert_array_equal(cols, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_col2im_kernel_matches_reference(geometry, dtype, rng):
    """col2im against the reference, and with its rows in another order (a row map)."""
    n, c, h, w, kernel, stride, padding = geometry
    oh, ow = out_size(h, w, kernel, stride, padding)
    cols = rng.standard_normal((n * oh * ow, kernel[0] * kernel[1] * c)).astype(dtype)
    dx_nhwc = np.full((n, h, w, c), np.nan, dtype=dtype)  # the kernel must overwrite everything
    _conv.col2im(cols, dx_nhwc, *kernel, *stride, *padding, 2)
    expected = ref.col2im(cols, (n, c, h, w), kernel, stride, padding)
    assert_close(dx_nhwc, nhwc(expected), dtype)
    # rows in another order, with a map from each output position to its row: the same sums
    rows = rng.permutation(cols.shape[0]).astype(np.intp)
    shuffled = np.empty_like(cols)
    shuffled[rows] = cols
    mapped = np.full_like(dx_nhwc, np.nan)
    _conv.col2im(shuffled, mapped, *kernel, *stride, *padding, 2, rows)
    np.testing.assert_array_equal(mapped, dx_nhwc)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_col2im_gives_the_same_bits_on_any_number_of_threads(geometry, rng):
    """With fewer samples than threads col2im splits each sample into bands of rows (the last
    ones possibly empty); every element still receives its terms in the same order."""
    n, c, h, w, kernel, stride, padding = geometry
    oh, ow = out_size(h, w, kernel, stride, padding)
    cols = rng.standard_normal((n * oh * ow, kernel[0] * kernel[1] * c)).astype(np.float32)
    results = []
    for threads in (1, 2, 3, 2 * h + 1):
        dx_nhwc = np.full((n, h, w, c), np.nan, np.float32)
        _conv.col2im(cols, dx_nhwc, *kernel, *stride, *padding, threads)
        results.append(dx_nhwc)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_col2im_is_the_adjoint_of_im2col(geometry, rng):
    """<im2col(x), c> == <x, col2im(c)> for the Cython kernels."""
    n, c, h, w, kernel, stride, padding = geometry
    oh, ow = out_size(h, w, kernel, stride, padding)
    x_nhwc = rng.standard_normal((n, h, w, c))
    cols_direction = rng.standard_normal((n * oh * ow, kernel[0] * kernel[1] * c))
    cols = np.empty_like(cols_direction)
    _conv.im2col(x_nhwc, cols, *kernel, *stride, *padding, 1)
    folded = np.empty_like(x_nhwc)
    _conv.col2im(cols_direction, folded, *kernel, *stride, *padding, 1)
    np.testing.assert_allclose(np.sum(cols * cols_direction), np.sum(x_nhwc * folded), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 70, 130), (1, 1, 65)])
def test_transpose_batched_kernel(shape, dtype, use_bias, rng):
    """Tiles are 64 x 64: the shapes cover partial, multiple and single-row tiles."""
    n, a, b = shape
    src = rng.standard_normal((n, a, b)).astype(dtype)
    bias = rng.standard_normal(b).astype(dtype)
    dst = np.full((n, b, a), np.nan, dtype=dtype)
    _conv.transpose_batched(src, bias, use_bias, dst, 2)
    expected = src.transpose(0, 2, 1) + (bias[:, None] if use_bias else 0)
    np.testing.assert_array_equal(dst, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 4, 5), (25, 3, 70), (1, 2, 3), (17, 1, 9), (8, 5, 16)])
@pytest.mark.parametrize("threads", [1, 3])
def test_swap_outer_axes_kernel(shape, threads, dtype, rng):
    """dst[c, b, a] = src[a, b, c]: blocks of 8 rows of src, whole and partial, every element
    of dst written, on 1 and 3 threads."""
    src = rng.standard_normal(shape).astype(dtype)
    dst = np.full(shape[::-1], np.nan, dtype=dtype)
    _conv.swap_outer_axes(src, dst, threads)
    np.testing.assert_array_equal(dst, src.transpose(2, 1, 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("want_bias_grad", [True, False])
def test_nchw_to_rows_kernel(dtype, want_bias_grad, rng):
    n, c, p = 3, 4, 5
    dout = rng.standard_normal((n, c, p)).astype(dtype)
    rows = np.full((c, n * p), np.nan, dtype=dtype)
    bias_grad = np.full(c, -7.0)
    _conv.nchw_to_rows(dout, rows, bias_grad, want_bias_grad, 2)
    np.testing.assert_array_equal(rows, dout.transpose(1, 0, 2).reshape(c, n * p))
    if want_bias_grad:
        np.testing.assert_allclose(bias_grad, dout.astype(np.float64).sum(axis=(0, 2)), rtol=1e-12)
    else:
        np.testing.assert_array_equal(bias_grad, -7.0)


@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=GEOMETRY_IDS[:4])
def test_reference_im2col_agrees_with_reference_definition(geometry, rng):
    """The two readable specs (im2col + GEMM and the tap-by-tap definition) agree."""
    n, c, h, w, kernel, stride, padding = geometry
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((4, c) + kernel)
    oh, ow = out_size(h, w, kernel, stride, padding)
    weight_rows = weight.transpose(0, 2, 3, 1).reshape(4, -1)
    out_rows = ref.im2col(x, kernel, stride, padding) @ weight_rows.T
    via_im2col = out_rows.reshape(n, oh, ow, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(via_im2col, ref.conv2d_forward(x, weight, None, stride, padding),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_workspace(dtype, rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    needed = 2 * 7 * 6 * 27  # N*OH*OW * kH*kW*C_in with padding 1
    workspace = np.full(needed + 5, np.nan, dtype=dtype)
    out, cache = conv2d_forward(x, weight, None, 1, 1, workspace=workspace, method="im2col")
    assert np.shares_memory(cache.cols, workspace)
    assert_close(out, ref.conv2d_forward(x, weight, None, (1, 1), (1, 1)), dtype)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, _ = conv2d_backward(dout, cache)
    ref_dx, ref_dweight, _ = ref.conv2d_backward(dout, x, weight, False, (1, 1), (1, 1))
    assert_close(dx, ref_dx, dtype)
    assert_close(dweight, ref_dweight, dtype)

    readonly = np.zeros(needed, dtype)
    readonly.flags.writeable = False
    for bad in (np.zeros(needed - 1, dtype), np.zeros(needed, np.float16),
                np.zeros((needed, 2), dtype), np.zeros(2 * needed, dtype)[::2], readonly):
        with pytest.raises(ValueError, match=f"conv2d.*workspace.*{needed}"):
            conv2d_forward(x, weight, None, 1, 1, workspace=bad, method="im2col")


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=GEOMETRY_IDS[:3])
def test_im2col_in_chunks_matches_reference(geometry, dtype, input_grad, monkeypatch, rng):
    """im2col's matrix built a few samples at a time (and again in the backward pass)."""
    import minidl.functional.conv as fconv
    monkeypatch.setattr(conv_im2col, "CHUNK_BYTES", 1)  # one sample per chunk
    n, c, h, w, kernel, stride, padding = geometry
    x = rng.standard_normal((n + 2, c, h, w)).astype(dtype)
    weight = rng.standard_normal((5, c) + kernel).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    rows, taps = fconv.column_matrix_shape("conv2d", x.shape, kernel, stride, padding, dtype)
    workspace = np.full(rows * taps, np.nan, dtype)
    out, cache = conv2d_forward(x, weight, bias, stride, padding, method="im2col",
                                workspace=workspace)
    assert cache.chunk == 1 and cache.x_pad is not None and cache.cols is None
    # the matrix was built in the workspace, one sample at a time (the last one is left there)
    np.testing.assert_array_equal(workspace.reshape(rows, taps),
                                  ref.im2col(x[-1:], kernel, stride, padding))
    assert_close(out, ref.conv2d_forward(x, weight, bias, stride, padding), dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, dbias = conv2d_backward(dout, cache, input_grad=input_grad)
    ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, True, stride, padding)
    assert_close(dweight, ref_dweight, dtype, "dweight")
    assert_close(dbias, ref_dbias, dtype, "dbias")
    if input_grad:
        assert_close(dx, ref_dx, dtype, "dx")
    else:
        assert dx is None



# (C_in, C_out, kernel, padding, image): stride 1, few output channels -> dx by convolution
CONVOLUTION_DX = [(16, 8, (5, 5), (2, 2), (9, 9)), (16, 16, (6, 6), (0, 0), (11, 11)),
                  (20, 3, (3, 5), (1, 2), (7, 10)), (16, 32, (4, 2), (3, 1), (5, 6)),
                  (17, 5, (2, 2), (0, 0), (4, 4))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONVOLUTION_DX, ids=[str(c) for c in CONVOLUTION_DX])
def test_stride_one_input_gradient_as_a_convolution(case, dtype, monkeypatch, rng):
    """A stride-1 layer with few output channels and enough input channels takes dx from the
    convolution of dout with the flipped kernel (no dcols, no col2im): the reference's
    gradient, and that of the dcols path within rounding, for odd, even and non-square
    kernels, paddings up to kernel - 1 and outputs larger than the input."""
    c_in, c_out, kernel, padding, (h, w) = case
    x = rng.standard_normal((3, c_in, h, w)).astype(dtype)
    weight = rng.standard_normal((c_out, c_in) + kernel).astype(dtype)
    out, cache = conv2d_forward(x, weight, None, 1, padding, method="im2col")
    # (whatever share of the convolution's work reads the zeros it pads dout with)
    monkeypatch.setattr(conv_im2col, "CONV_INPUT_GRAD_MAX_PADDED_FRACTION", 1.01)
    assert conv_im2col._input_grad_as_convolution(cache)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, _ = conv2d_backward(dout, cache)
    ref_dx, ref_dweight, _ = ref.conv2d_backward(dout, x, weight, False, (1, 1), padding)
    assert_close(dx, ref_dx, dtype, "dx")
    assert_close(dweight, ref_dweight, dtype, "dweight")
    monkeypatch.setattr(conv_im2col, "CONV_INPUT_GRAD_MAX_OUT_CHANNELS", 0)
    assert not conv_im2col._input_grad_as_convolution(cache)
    dx_dcols, dweight_dcols, _ = conv2d_backward(dout, cache)
    assert_close(dx, dx_dcols, dtype, "dx of the dcols path")
    np.testing.assert_array_equal(dweight, dweight_dcols)


def test_input_gradient_as_a_convolution_only_where_it_pays():
    """Strided layers, many output channels (unless the convolution skips padded taps, which
    needs 32 channels each way, and the weight has fewer than CONV_INPUT_GRAD_MAX_WEIGHT_RATIO
    times the elements of dout), few input channels, 1x1 kernels, a padding of the whole
    kernel, and convolutions that would mostly multiply dout's zero padding keep dcols +
    col2im."""
    def takes_it(c_in, c_out, kernel, stride, padding, size=8, batch=2):
        x = np.zeros((batch, c_in, size, size), np.float32)
        weight = np.zeros((c_out, c_in) + kernel, np.float32)
        _, cache = conv2d_forward(x, weight, None, stride, padding, method="im2col")
        return conv_im2col._input_grad_as_convolution(cache)
    assert takes_it(16, 16, (5, 5), 1, 2)
    assert not takes_it(16, 16, (5, 5), 2, 2)
    assert not takes_it(16, 64, (5, 5), 1, 2)
    assert takes_it(32, 64, (5, 5), 1, 2) and not takes_it(32, 64, (5, 5), 1, 2, size=32)
    # weight / dout = C_in*kH*kW / (N*OH*OW): 32*25/64 = 12.5 at batch 1, 6.25 at batch 2
    assert not takes_it(32, 64, (5, 5), 1, 2, batch=1)
    assert not takes_it(256, 256, (3, 3), 1, 1, size=4, batch=16)  # b16's layer: 9
    assert takes_it(256, 256, (3, 3), 1, 1, size=4, batch=32)  # 4.5
    assert not takes_it(6, 16, (5, 5), 1, 0)
    assert not takes_it(16, 16, (1, 1), 1, 0)
    assert not takes_it(16, 16, (3, 3), 1, 3)
    # few output channels, but most of the convolution would multiply dout's zero padding
    assert conv_im2col.padded_fraction(*conv_im2col._input_grad_plan_key(conv2d_forward(
        np.zeros((2, 192, 14, 14), np.float32), np.zeros((24, 192, 7, 7), np.float32),
        method="im2col")[1])) > conv_im2col.CONV_INPUT_GRAD_MAX_PADDED_FRACTION
    assert not takes_it(192, 24, (7, 7), 1, 0, size=14)  # (held-out sweep: 0.85x)
    assert takes_it(192, 24, (7, 7), 1, 3, size=14)
    assert not takes_it(32, 16, (5, 5), 1, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_pad_nhwc_kernel(geometry, dtype, rng):
    n, c, h, w, _, _, padding = geometry
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    x_pad = np.full((n, h + 2 * padding[0], w + 2 * padding[1], c), np.nan, dtype)
    _conv.pad_nhwc(x, x_pad, *padding, 2)
    expected = np.pad(nhwc(x), ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    np.testing.assert_array_equal(x_pad, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_gathered_products_give_the_matrix_bits(geometry, dtype, rng):
    """The product that reads im2col's matrix in place from the padded input (no workspace)
    gives the same output bits as the matrix built in a workspace, and its offsets address
    exactly that matrix; so does the weight gradient (which reads the matrix transposed, in
    place); the gradients agree with the reference."""
    import minidl.functional.conv as fconv
    n, c, h, w, kernel, stride, padding = geometry
    for out_channels in (3, 11):  # weight gradients of few rows (built matrix) and of more
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        weight = rng.standard_normal((out_channels, c) + kernel).astype(dtype)
        bias = rng.standard_normal(out_channels).astype(dtype)
        out, cache = conv2d_forward(x, weight, bias, stride, padding, method="im2col")
        assert cache.cols is None
        rows, taps = conv_im2col.gather_offsets(cache.x_pad.shape, kernel, stride,
                                                out.shape[2:])
        np.testing.assert_array_equal(cache.x_pad.reshape(-1)[np.add.outer(rows, taps)],
                                      ref.im2col(x, kernel, stride, padding))
        size = np.prod(fconv.column_matrix_shape("conv2d", x.shape, kernel, stride, padding,
                                                 dtype))
        built, built_cache = conv2d_forward(x, weight, bias, stride, padding, method="im2col",
                                            workspace=np.empty(size, dtype))
        np.testing.assert_array_equal(out, built)
        dout = rng.standard_normal(out.shape).astype(dtype)
        dx, dweight, dbias = conv2d_backward(dout, cache)
        if built_cache.cols is not None:  # the weight gradient from the built matrix: same bits
            np.testing.assert_array_equal(dweight, conv2d_backward(dout, built_cache)[1])
        ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, True, stride,
                                                             padding)
        assert_close(dweight, ref_dweight, dtype, "dweight")
        assert_close(dbias, ref_dbias, dtype, "dbias")
        assert_close(dx, ref_dx, dtype, "dx")


# (N, C_in, H, W, C_out, kernel, stride, padding): layers whose products skip padded taps
SKIPPING = [(2, 32, 8, 8, 32, (5, 5), (1, 1), (2, 2)),
            (3, 32, 9, 7, 40, (5, 3), (2, 1), (2, 1)),
            (2, 33, 6, 6, 32, (7, 7), (1, 1), (3, 3)),
            (2, 32, 8, 8, 64, (4, 2), (1, 2), (3, 1)),
            (2, 32, 5, 6, 32, (3, 3), (2, 2), (4, 3))]  # outputs that read only padding
SKIPPING_IDS = [str(case) for case in SKIPPING]


def _marked_input(case):
    """x_pad of ``case`` with ones where the input is and zeros in the padding."""
    n, c, h, w, _, _, _, (ph, pw) = case
    return np.pad(np.ones((n, h, w, c)), ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def _plan(case):
    n, c, h, w, _, kernel, stride, padding = case
    out = out_size(h, w, kernel, stride, padding)
    return conv_im2col.border_plan((n, c, h, w), kernel, stride, padding, out), out


@pytest.mark.parametrize("case", SKIPPING, ids=SKIPPING_IDS)
def test_border_plan_reads_each_valid_tap_once_and_no_padding(case):
    """The forward's classes and the weight gradient's kernel positions cover exactly the
    (output position, tap) pairs of im2col's matrix that read the input, each once."""
    n, c, h, w, _, kernel, stride, padding = case
    plan, out = _plan(case)
    x_pad = _marked_input(case)
    rows, taps = conv_im2col.gather_offsets(x_pad.shape, kernel, stride, out)
    matrix = x_pad.reshape(-1)[np.add.outer(rows, taps)]
    valid = set(zip(*np.nonzero(matrix)))
    assert plan.saving == pytest.approx(1 - len(valid) / matrix.size)
    assert plan.saving == pytest.approx(conv_im2col.padded_fraction(
        (n, c, h, w), kernel, stride, padding, out))

    forward_pairs = []
    for m0, m, k0, k in plan.groups:
        block = x_pad.reshape(-1)[np.add.outer(plan.rows[m0:m0 + m], plan.taps[k0:k0 + k])]
        assert block.size == 0 or block.min() == 1  # never the padding
        forward_pairs += [(p, t) for p in plan.order[m0:m0 + m]
                          for t in plan.tap_index[k0:k0 + k]]
    assert len(forward_pairs) == len(valid) and set(forward_pairs) == valid
    assert sorted(plan.order) == list(range(matrix.shape[0]))

    weight_pairs = []
    for position, (start, count) in enumerate(plan.field_groups):
        tap_rows = plan.tap_rows[position * c:(position + 1) * c]
        fields = plan.fields[start:start + count]
        block = x_pad.reshape(-1)[np.add.outer(tap_rows, fields)]
        assert block.size == 0 or block.min() == 1
        weight_pairs += [(p, t) for p in plan.field_index[start:start + count]
                         for t in range(position * c, (position + 1) * c)]
    assert len(weight_pairs) == len(valid) and set(weight_pairs) == valid


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SKIPPING, ids=SKIPPING_IDS)
def test_products_that_skip_padded_taps(case, dtype, monkeypatch, rng):
    """A layer whose products skip the padded taps: the reference's output and gradients, and
    those of the full products within rounding, for odd, even and non-square kernels, strides
    1 and 2 and paddings wider than the kernel."""
    n, c, h, w, c_out, kernel, stride, padding = case
    plan, out_hw = _plan(case)
    key = ((n, c, h, w), kernel, stride, padding, out_hw)
    monkeypatch.setattr(conv_im2col, "SKIP_MIN_SAVING_WEIGHT_GRAD", 0.01)
    assert conv_im2col._skip_padded_taps(key, c_out)
    assert conv_im2col._skip_padded_taps(key, c_out, weight_grad=True)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((c_out, c) + kernel).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    out, cache = conv2d_forward(x, weight, bias, stride, padding, method="im2col")
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = conv2d_backward(dout, cache)
    assert_close(out, ref.conv2d_forward(x, weight, bias, stride, padding), dtype, "out")
    for got, expected, name in zip(grads, ref.conv2d_backward(dout, x, weight, True, stride,
                                                             padding), ("dx", "dw", "db")):
        assert_close(got, expected, dtype, name)
    monkeypatch.setattr(conv_im2col, "SKIP_MIN_CHANNELS", 10 ** 9)
    assert not conv_im2col._skip_padded_taps(key, c_out)
    full, full_cache = conv2d_forward(x, weight, bias, stride, padding, method="im2col")
    assert_close(out, full, dtype, "out of the full product")
    for got, expected in zip(grads, conv2d_backward(dout, full_cache)):
        assert_close(got, expected, dtype, "gradients of the full products")



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [SKIPPING[1], SKIPPING[4], (7, 32, 8, 8, 48, (5, 5), (2, 2),
                                                            (2, 2)),
                                  (5, 32, 1, 2, 32, (1, 2), (2, 2), (1, 1))],  # all in padding
                         ids=str)
def test_input_gradient_by_border_class_in_chunks(case, dtype, monkeypatch, rng):
    """A strided layer's dcols by border class, without the entries of padded taps, two
    samples at a time (the last chunk smaller): the reference's dx, though every array minidl
    allocates starts as NaN (col2im never reads the entries left out); with C_in not a multiple
    of the micro-kernel's width, the full product."""
    n, c, h, w, c_out, kernel, stride, padding = case
    n = max(n, 5)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((c_out, c) + kernel).astype(dtype)
    out, cache = conv2d_forward(x, weight, None, stride, padding, method="im2col")
    assert conv_im2col._skip_padded_input_taps(cache)
    per_sample = out.shape[2] * out.shape[3] * np.prod(kernel) * c * x.itemsize
    monkeypatch.setattr(conv_im2col, "CHUNK_BYTES", 2 * per_sample)
    monkeypatch.setattr(conv_im2col._memory, "empty", lambda shape, dt: np.full(shape, np.nan, dt))
    plans = []
    tasks = conv_im2col._input_grad_tasks
    monkeypatch.setattr(conv_im2col, "_input_grad_tasks",
                        lambda key, *args: plans.append(key) or tasks(key, *args))
    dout = np.cos(out)
    dx, _, _ = conv2d_backward(dout, cache)
    assert [key[0][0] for key in plans] == [2] * (n // 2) + [1] * (n % 2)
    expected = ref.conv2d_backward(dout, x, weight, True, stride, padding)[0]
    assert_close(dx, expected, dtype, "dx")
    extra = max(1, _gemm.NR[np.dtype(dtype).name] // 2)  # C_in + NR/2: not a multiple of NR
    x, weight = (np.concatenate((a, a[:, :extra]), axis=1) for a in (x, weight))
    out, cache = conv2d_forward(x, weight, None, stride, padding, method="im2col")
    assert conv_im2col._skip_padded_taps((x.shape, kernel, stride, padding, out.shape[2:]),
                                         c_out)  # (as the forward does)
    assert not conv_im2col._skip_padded_input_taps(cache)
    assert_close(conv2d_backward(dout, cache)[0],
                 ref.conv2d_backward(dout, x, weight, True, stride, padding)[0],
                 dtype, "dx of the full product")

def test_padded_taps_are_skipped_only_where_it_pays(monkeypatch):
    """Not without padding, not with fewer than 32 input or output channels, not when the
    padding is a small part of the work, not when the plan would be too large; the weight
    gradient only from a larger part."""
    def skips(c_in, c_out, kernel, stride, padding, size, weight_grad=False):
        out = (size + 2 * padding - kernel) // stride + 1
        key = ((4, c_in, size, size), (kernel, kernel), (stride,) * 2, (padding,) * 2,
               (out, out))
        return conv_im2col._skip_padded_taps(key, c_out, weight_grad)
    assert skips(64, 64, 5, 1, 2, 8) and skips(64, 64, 5, 1, 2, 8, weight_grad=True)
    assert skips(64, 64, 5, 1, 2, 16) and not skips(64, 64, 5, 1, 2, 16, weight_grad=True)
    assert not skips(64, 64, 5, 1, 0, 8)
    assert not skips(16, 64, 5, 1, 2, 8) and not skips(64, 16, 5, 1, 2, 8)
    assert not skips(64, 64, 5, 1, 2, 32)  # 7% of the work
    assert not skips(3, 64, 7, 2, 3, 32)
    pairs = 4 * 8 * 8 * 25  # (output position, kernel position) pairs of the first case
    assert conv_im2col.SKIP_MAX_PAIRS >= pairs
    monkeypatch.setattr(conv_im2col, "SKIP_MAX_PAIRS", pairs - 1)
    assert not skips(64, 64, 5, 1, 2, 8)  # its plan would be too large
