"""The 1x1 convolution as one matrix product per image (minidl.functional.conv_pointwise):
against the convolution sum of minidl.reference.conv and PyTorch, gradient checks, strides,
odd shapes, batch 1, non-contiguous inputs, and the dispatcher's choice."""
import numpy as np
import pytest

import minidl
from conv_helpers import DTYPES, assert_close, non_contiguous
from minidl.functional.conv import (POINTWISE_MAX_SMALL_BATCH, POINTWISE_MIN_POSITIONS,
                                   PointwiseCache, choose_method, conv2d_backward,
                                   conv2d_forward)
from minidl.layers import Conv2D
from minidl.reference import conv as ref

# (x shape, C_out, stride, bias): strides that do and do not divide the input, batch 1, single
# channels, sizes that are not multiples of the product's tiles (6 rows, 8-32 columns), and a
# case large enough for several threads and several 256-long inner blocks
CASES = [
    ((2, 3, 5, 4), 4, (1, 1), True),
    ((1, 1, 1, 1), 1, (1, 1), False),
    ((3, 7, 9, 11), 13, (2, 2), True),
    ((2, 5, 8, 7), 6, (3, 2), False),
    ((1, 64, 6, 6), 128, (1, 1), False),
    ((2, 300, 9, 9), 70, (2, 1), True),
]
IDS = [f"x{c[0]}-o{c[1]}-s{c[2]}-b{int(c[3])}".replace(" ", "") for c in CASES]



def _arrays(case, dtype, rng):
    x_shape, out_channels, _, use_bias = case
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal((out_channels, x_shape[1], 1, 1)).astype(dtype)
    bias = rng.standard_normal(out_channels).astype(dtype) if use_bias else None
    return x, weight, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pointwise_matches_reference(case, dtype, rng):
    x, weight, bias = _arrays(case, dtype, rng)
    stride = case[2]
    out, cache = conv2d_forward(x, weight, bias, stride, 0, method="pointwise")
    assert isinstance(cache, PointwiseCache) and cache.method == "pointwise"
    assert_close(out, ref.conv2d_forward(x, weight, bias, stride, (0, 0)), dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, dbias = conv2d_backward(dout, cache)
    ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, bias is not None,
                                                         stride, (0, 0))
    assert_close(dx, ref_dx, dtype, "dx")
    assert_close(dweight, ref_dweight, dtype, "dweight")
    if bias is None:
        assert dbias is None
    else:
        assert_close(dbias, ref_dbias, dtype, "dbias")
    for array in (out, dx, dweight):
        assert array.dtype == dtype
    again = conv2d_backward(dout, cache)  # a cache serves any number of backward calls
    for first, second in zip((dx, dweight, dbias), again):
        np.testing.assert_array_equal(first, second)
    none, dweight2, _ = conv2d_backward(dout, cache, input_grad=False)
    assert none is None
    np.testing.assert_array_equal(dweight2, dweight)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_non_contiguous_input_and_gradient(dtype, rng):
    x, weight, bias = _arrays(((2, 4, 6, 5), 3, (1, 1), True), dtype, rng)
    for stride in ((1, 1), (2, 2)):
        out, cache = conv2d_forward(non_contiguous(x), weight, bias, stride, method="pointwise")
        expected, ref_cache = conv2d_forward(x, weight, bias, stride, method="pointwise")
        np.testing.assert_array_equal(out, expected)
        dout = rng.standard_normal(out.shape).astype(dtype)
        for ours, theirs in zip(conv2d_backward(non_contiguous(dout), cache),
                                conv2d_backward(dout, ref_cache)):
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
def test_pointwise_gradcheck(case, rng):
    x_shape, out_channels, stride, use_bias = case
    layer = Conv2D(x_shape[1], out_channels, 1, stride=stride, bias=use_bias, rng=rng,
                   dtype=np.float64, method="pointwise")
    minidl.gradcheck(layer, rng.standard_normal(x_shape), modes=("train",))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pointwise_matches_torch(case, dtype, torch, rng):
    x, weight, bias = _arrays(case, dtype, rng)
    stride = case[2]
    layer = Conv2D(x.shape[1], weight.shape[0], 1, stride=stride, bias=bias is not None,
                   dtype=dtype)
    layer.weight.data[...] = weight
    if bias is not None:
        layer.bias.data[...] = bias
    out = layer(x)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(weight, requires_grad=True)
    bt = torch.tensor(bias, requires_grad=True) if bias is not None else None
    outt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride)
    outt.backward(torch.tensor(dout))
    pairs = [(out, outt), (dx, xt.grad), (layer.weight.grad, wt.grad)]
    if bias is not None:
        pairs.append((layer.bias.grad, bt.grad))
    for ours, theirs in pairs:
        assert_close(ours, theirs.detach().numpy(), dtype)


def test_pointwise_same_bits_for_any_thread_count(rng):
    """Each output element is summed by one thread in a fixed order: no dependence on threads."""
    x, weight, bias = _arrays(((4, 96, 12, 12), 64, (1, 1), True), np.float32, rng)
    dout = rng.standard_normal((4, 64, 12, 12)).astype(np.float32)
    results = []
    before = minidl.get_num_threads()
    try:
        for threads in (1, 2, 3):
            minidl.set_num_threads(threads)
            out, cache = conv2d_forward(x, weight, bias, method="pointwise")
            results.append((out,) + conv2d_backward(dout, cache))
    finally:
        minidl.set_num_threads(before)
    for other in results[1:]:
        for first, second in zip(results[0], other):
            np.testing.assert_array_equal(first, second)


def test_auto_picks_pointwise_for_1x1_without_padding(rng):
    assert choose_method("auto", 64, kernel_size=(1, 1)) == "pointwise"
    assert choose_method("auto", 4, stride=(2, 2), kernel_size=(1, 1)) == "pointwise"
    assert choose_method("auto", 64, kernel_size=(1, 1), padding=(1, 0)) == "im2col"
    # small images in large batches: the per-image products would be too narrow for the
    # micro-kernel, once per image
    small = (POINTWISE_MIN_POSITIONS // 8 - 1, 8)
    assert choose_method("auto", 64, kernel_size=(1, 1), out_size=small) == "im2col"
    assert choose_method("auto", 64, kernel_size=(1, 1), out_size=small,
                         batch=POINTWISE_MAX_SMALL_BATCH + 1) == "im2col"
    assert choose_method("auto", 64, kernel_size=(1, 1), out_size=small,
                         batch=POINTWISE_MAX_SMALL_BATCH) == "pointwise"
    assert choose_method("auto", 64, kernel_size=(1, 1), out_size=(5, 5), batch=512) == \
        "pointwise"
    x = np.ones((POINTWISE_MAX_SMALL_BATCH + 1, 4, 4, 4), np.float32)
    _, cache = conv2d_forward(x, np.ones((3, 4, 1, 1), np.float32))
    assert cache.method == "im2col"
    _, cache = conv2d_forward(x[:2], np.ones((3, 4, 1, 1), np.float32))
    assert cache.method == "pointwise"
    x = np.ones((2, 4, 5, 5), np.float32)
    _, cache = conv2d_forward(x, np.ones((3, 4, 1, 1), np.float32), method="pointwise")
    assert cache.method == "pointwise"
    _, cache = conv2d_forward(rng.standard_normal((1, 8, 20, 20)),
                              rng.standard_normal((2, 8, 1, 1)), stride=2)  # 10x10 outputs
    assert isinstance(cache, PointwiseCache)
    _, cache = conv2d_forward(rng.standard_normal((2, 40, 5, 5)),
                              rng.standard_normal((2, 40, 1, 1)), padding=1)
    assert cache.method == "im2col"  # 40 taps: too many for the direct kernels


def test_pointwise_refuses_other_kernels_and_padding(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"conv2d.*pointwise.*kernel_size \(1, 1\).*\(3, 3\)"):
        conv2d_forward(x, rng.standard_normal((2, 2, 3, 3)), method="pointwise")
    with pytest.raises(ValueError, match=r"conv2d.*pointwise.*padding \(0, 0\).*\(1, 1\)"):
        conv2d_forward(x, rng.standard_normal((2, 2, 1, 1)), padding=1, method="pointwise")
    with pytest.raises(ValueError, match=r"Conv2D.*pointwise.*kernel_size"):
        Conv2D(2, 2, 3, method="pointwise")
    with pytest.raises(ValueError, match=r"Conv2D.*pointwise.*padding"):
        Conv2D(2, 2, 1, padding=2, method="pointwise")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_input_grad_same_bits_from_the_weight_view_or_its_copy(monkeypatch, stride, dtype, rng):
    """The input gradient multiplies by weight.T as a view or as a contiguous copy
    (TRANSPOSED_COPY_MIN_POSITIONS): the same bits either way, and the reference's values."""
    from minidl.functional import conv_pointwise
    x = rng.standard_normal((3, 5, 8, 8)).astype(dtype)
    w = rng.standard_normal((7, 5, 1, 1)).astype(dtype)
    out, cache = conv2d_forward(x, w, None, stride, 0, method="pointwise")
    dout = rng.standard_normal(out.shape).astype(dtype)
    results = []
    for threshold in (0, 1 << 30):  # always the copy, never the copy
        monkeypatch.setattr(conv_pointwise, "TRANSPOSED_COPY_MIN_POSITIONS", threshold)
        results.append(conv2d_backward(dout, cache)[0])
    np.testing.assert_array_equal(results[0], results[1])
    expected = ref.conv2d_backward(dout, x, w, False, (stride, stride), (0, 0))[0]
    assert_close(results[0], expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,stride", [((2, 3, 7, 5), (2, 2)), ((1, 4, 6, 6), (3, 1)),
                                          ((3, 2, 5, 9), (1, 4)), ((2, 1, 1, 1), (2, 2))])
def test_scatter_strided_kernel_places_values_and_zeros(dtype, shape, stride, rng):
    """_conv.scatter_strided: dst[:, :, ::sH, ::sW] = src, zeros elsewhere (over whatever dst
    held), for sizes that the strides divide or not, on 1 to 3 threads."""
    from minidl._kernels import _conv
    n, c, h, w = shape
    src = rng.standard_normal((n, c, -(-h // stride[0]), -(-w // stride[1]))).astype(dtype)
    expected = np.zeros(shape, dtype)
    expected[:, :, ::stride[0], ::stride[1]] = src
    for threads in (1, 2, 3):
        dst = np.full(shape, np.nan, dtype)
        _conv.scatter_strided(src, dst, *stride, threads)
        np.testing.assert_array_equal(dst, expected)
    # a wider dst (the direct kernels' dout_wide): src's rows, then zeros to the end of each row
    wide = np.full(shape[:3] + (w + 5,), np.nan, dtype)
    _conv.scatter_strided(src, wide, *stride, 2)
    np.testing.assert_array_equal(wide[..., :w], expected)
    assert not wide[..., w:].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 19), (1, 2, 8), (2, 3, 5), (4, 1, 64), (0, 3, 5),
                                   (2, 3, 0)])
def test_channel_sums_kernel(dtype, shape, rng):
    """_conv.channel_sums: per-channel sums over the batch and positions in float64, the same
    bits on 1 to 3 threads, close to NumPy's float64 sum."""
    from minidl._kernels import _conv
    x = rng.standard_normal(shape).astype(dtype)
    results = []
    for threads in (1, 2, 3):
        sums = np.full(shape[1], np.nan)
        _conv.channel_sums(x, sums, threads)
        results.append(sums)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_allclose(results[0], x.astype(np.float64).sum(axis=(0, 2)), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("stride", [(2, 2), (3, 2)])
def test_strided_pointwise_layer_matches_reference_with_bias(stride, rng):
    """A strided 1x1 Conv2D with bias (the copy, the placement of dx and the bias sums in
    kernels) against the reference, on odd sizes."""
    x = rng.standard_normal((3, 5, 9, 7))
    w = rng.standard_normal((4, 5, 1, 1))
    b = rng.standard_normal(4)
    out, cache = conv2d_forward(x, w, b, stride, 0, method="pointwise")
    dout = rng.standard_normal(out.shape)
    dx, dweight, dbias = conv2d_backward(dout, cache)
    assert_close(out, ref.conv2d_forward(x, w, b, stride, (0, 0)), np.float64, "out")
    ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, w, True, stride, (0, 0))
    assert_close(dx, ref_dx, np.float64, "dx")
    assert_close(dweight, ref_dweight, np.float64, "dweight")
    assert_close(dbias, ref_dbias, np.float64, "dbias")
