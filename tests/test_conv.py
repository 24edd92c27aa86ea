"""Convolution: Cython kernels vs the NumPy reference, functional API, Conv2D layer, PyTorch.

Sections:
  1. kernels (im2col, col2im, the GEMM reorders) against minidl.reference.conv, float32/float64
  2. functional conv2d_forward/backward against the definition, incl. non-contiguous inputs
  3. Conv2D: numerical gradient checks (float64), dtypes, accumulation, init, errors
  4. against torch.nn.functional.conv2d
  5. input_grad=False;  6. the direct kernels;  7. Winograd F(2x2, 3x3)
Every method runs on every geometry it supports: direct for stride 1, Winograd for 3x3 kernels
with stride 1, im2col for all.
"""
import numpy as np
import pytest

from helpers import assert_close_to_torch, check_module_gradients
from minidl._kernels import _conv
from minidl.functional.conv import conv2d_backward, conv2d_forward
from minidl.layers.conv import Conv2D
from minidl.reference import conv as ref

DTYPES = [np.float32, np.float64]
METHODS = ["direct", "im2col", "winograd"]


def _supports(method, kernel, stride):
    """Whether ``method`` computes a convolution with this kernel size and stride."""
    stride_one = stride in (1, (1, 1))
    if method == "direct":
        return stride_one
    if method == "winograd":
        return stride_one and kernel in (3, (3, 3))
    return True


def _with_methods(cases, geometry_of, methods=METHODS, ids=None):
    """``(case, method)`` params for every method that supports the case;
    ``geometry_of(case)`` gives its ``(kernel_size, stride)``."""
    params = []
    for i, case in enumerate(cases):
        for method in methods:
            if not _supports(method, *geometry_of(case)):
                continue
            case_id = ids[i] if ids else str(i)
            params.append(pytest.param(case, method, id=f"{case_id}-{method}"))
    return params

# (N, C_in, H, W, kernel, stride, padding): odd and non-square sizes, strides that do not divide
# the input, padding larger than the kernel, 1x1 kernels and kernels as large as the input.
GEOMETRIES = [
    (2, 3, 7, 7, (3, 3), (1, 1), (1, 1)),
    (2, 3, 8, 6, (3, 3), (2, 2), (1, 1)),
    (1, 2, 9, 7, (2, 3), (2, 1), (0, 2)),
    (3, 1, 5, 5, (5, 5), (1, 1), (0, 0)),
    (2, 2, 4, 3, (1, 1), (1, 1), (0, 0)),
    (2, 3, 11, 10, (4, 3), (3, 2), (1, 0)),
    (1, 2, 3, 3, (2, 2), (1, 1), (3, 3)),
    (2, 2, 2, 1, (3, 3), (1, 2), (1, 1)),
    (2, 4, 6, 13, (1, 5), (1, 3), (0, 2)),
]
GEOMETRY_IDS = [f"x{g[:4]}-k{g[4]}-s{g[5]}-p{g[6]}".replace(" ", "") for g in GEOMETRIES]


def out_size(h, w, kernel, stride, padding):
    return (ref.output_size(h, kernel[0], stride[0], padding[0]),
            ref.output_size(w, kernel[1], stride[1], padding[1]))


def tolerances(dtype):
    """(rtol, atol scale) for comparing two summation orders in ``dtype``."""
    return (2e-5, 1e-5) if dtype == np.float32 else (1e-12, 1e-12)


def assert_close(actual, expected, dtype, what=""):
    rtol, scale = tolerances(dtype)
    atol = scale * max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def non_contiguous(array):
    """A copy of ``array`` with the same values but exotic strides (transposed, then sliced)."""
    n, c, h, w = array.shape
    base = np.zeros((n, 2 * c, w, h), dtype=array.dtype)
    base[:, ::2] = array.transpose(0, 1, 3, 2)
    view = base[:, ::2].transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous and np.array_equal(view, array)
    return view


# --------------------------------------------------------------------------- 1. kernels
def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


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
    n, c, h, w, kernel, stride, padding = geometry
    oh, ow = out_size(h, w, kernel, stride, padding)
    cols = rng.standard_normal((n * oh * ow, kernel[0] * kernel[1] * c)).astype(dtype)
    dx_nhwc = np.full((n, h, w, c), np.nan, dtype=dtype)  # the kernel must overwrite everything
    _conv.col2im(cols, dx_nhwc, *kernel, *stride, *padding, 2)
    expected = ref.col2im(cols, (n, c, h, w), kernel, stride, padding)
    assert_close(dx_nhwc, nhwc(expected), dtype)


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


# --------------------------------------------------------------------------- 2. functional
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry, method", _with_methods(GEOMETRIES, lambda g: g[4:6], ids=GEOMETRY_IDS))
def test_conv2d_forward_backward_match_reference(geometry, dtype, method, rng):
    n, c, h, w, kernel, stride, padding = geometry
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((5, c) + kernel).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    out, cache = conv2d_forward(x, weight, bias, stride, padding, method=method)
    assert cache.method == method
    assert out.dtype == dtype and out.shape == (n, 5) + out_size(h, w, kernel, stride, padding)
    assert_close(out, ref.conv2d_forward(x, weight, bias, stride, padding), dtype, "out")

    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, dbias = conv2d_backward(dout, cache)
    ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, True, stride, padding)
    for ours, theirs, what in ((dx, ref_dx, "dx"), (dweight, ref_dweight, "dweight"),
                               (dbias, ref_dbias, "dbias")):
        assert ours.dtype == dtype and ours.shape == theirs.shape, what
        assert_close(ours, theirs, dtype, what)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_non_contiguous_inputs(dtype, method, rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    weight = rng.standard_normal((4, 3, 3, 3 if method == "winograd" else 2)).astype(dtype)
    bias = rng.standard_normal(8).astype(dtype)[::2]
    stride = 2 if method == "im2col" else 1
    out, cache = conv2d_forward(non_contiguous(x), np.asfortranarray(weight), bias, stride, 1,
                                method=method)
    assert_close(out, ref.conv2d_forward(x, weight, bias, (stride,) * 2, (1, 1)), dtype)

    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, dbias = conv2d_backward(non_contiguous(dout), cache)
    ref_grads = ref.conv2d_backward(dout, x, weight, True, (stride,) * 2, (1, 1))
    for ours, theirs in zip((dx, dweight, dbias), ref_grads):
        assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("method", METHODS)
def test_conv2d_without_bias_returns_no_bias_gradient(method, rng):
    x = rng.standard_normal((2, 2, 5, 5))
    weight = rng.standard_normal((3, 2, 3, 3))
    out, cache = conv2d_forward(x, weight, None, 1, 0, method=method)
    np.testing.assert_allclose(out, ref.conv2d_forward(x, weight, None, (1, 1), (0, 0)), rtol=1e-12)
    dx, dweight, dbias = conv2d_backward(rng.standard_normal(out.shape), cache)
    assert dbias is None and dx.shape == x.shape and dweight.shape == weight.shape


@pytest.mark.parametrize("method", METHODS)
def test_conv2d_cache_serves_one_backward(method, rng):
    x = rng.standard_normal((2, 2, 6, 5))
    weight = rng.standard_normal((3, 2, 3, 3))
    out, cache = conv2d_forward(x, weight, np.zeros(3), 1, 1, method=method)
    dout = rng.standard_normal(out.shape)
    conv2d_backward(dout, cache)
    with pytest.raises(RuntimeError, match="conv2d.*already"):
        conv2d_backward(dout, cache)


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

    for bad in (np.zeros(needed - 1, dtype), np.zeros(needed, np.float16),
                np.zeros((needed, 2), dtype), np.zeros(2 * needed, dtype)[::2]):
        with pytest.raises(ValueError, match=f"conv2d.*workspace.*{needed}"):
            conv2d_forward(x, weight, None, 1, 1, workspace=bad, method="im2col")


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, kwargs, error, fragments",
    [
        ((2, 3, 5, 5), (4, 2, 3, 3), None, {}, ValueError,
         ["conv2d", "(C_out, 3, kH, kW)", "(4, 2, 3, 3)"]),
        ((2, 3, 5, 5), (4, 3, 3), None, {}, ValueError, ["conv2d", "weight", "(4, 3, 3)"]),
        ((3, 5, 5), (4, 3, 3, 3), None, {}, ValueError, ["conv2d", "(N, C, H, W)", "(3, 5, 5)"]),
        ((2, 3, 5, 5), (4, 3, 3, 3), (3,), {}, ValueError, ["conv2d", "bias", "(4,)", "(3,)"]),
        ((2, 3, 2, 5), (4, 3, 3, 3), None, {}, ValueError, ["conv2d", "(2, 3, 2, 5)", "too small"]),
        ((2, 3, 5, 5), (4, 3, 3, 3), None, {"stride": 0}, ValueError, ["conv2d", "stride"]),
        ((2, 3, 5, 5), (4, 3, 3, 3), None, {"padding": -1}, ValueError, ["conv2d", "padding"]),
        ((2, 3, 5, 5), (4, 3, 3, 3), None, {"stride": (1, 2, 3)}, ValueError, ["conv2d", "stride"]),
    ],
)
def test_conv2d_forward_errors(x_shape, w_shape, b_shape, kwargs, error, fragments):
    x = np.zeros(x_shape)
    weight = np.zeros(w_shape)
    bias = None if b_shape is None else np.zeros(b_shape)
    with pytest.raises(error) as info:
        conv2d_forward(x, weight, bias, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_conv2d_forward_dtype_errors():
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(TypeError, match=r"conv2d.*weight dtype float32.*float64"):
        conv2d_forward(x, np.zeros((4, 3, 3, 3)))
    with pytest.raises(TypeError, match=r"conv2d.*bias dtype float32.*float64"):
        conv2d_forward(x, np.zeros((4, 3, 3, 3), np.float32), np.zeros(4))
    with pytest.raises(TypeError, match=r"conv2d.*int64"):
        conv2d_forward(x.astype(np.int64), np.zeros((4, 3, 3, 3)))
    with pytest.raises(TypeError, match=r"conv2d.*list"):
        conv2d_forward([[1.0]], np.zeros((4, 3, 3, 3)))


def test_conv2d_backward_errors(rng):
    out, cache = conv2d_forward(np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"conv2d.*\(2, 4, 3, 3\).*\(2, 4, 3, 2\)"):
        conv2d_backward(np.zeros((2, 4, 3, 2)), cache)
    with pytest.raises(TypeError, match=r"conv2d.*float64.*float32"):
        conv2d_backward(np.zeros(out.shape, np.float32), cache)


# --------------------------------------------------------------------------- 3. Conv2D layer
LAYER_GRADIENT_CASES = [
    ({"in_channels": 2, "out_channels": 3, "kernel_size": 3}, (2, 2, 5, 6)),
    ({"in_channels": 2, "out_channels": 3, "kernel_size": 3, "bias": False}, (2, 2, 5, 6)),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "stride": 2, "padding": 1},
     (2, 2, 6, 5)),
    ({"in_channels": 3, "out_channels": 2, "kernel_size": (2, 3), "stride": (2, 1),
      "padding": (1, 0)}, (1, 3, 5, 5)),
]


@pytest.mark.parametrize("case, method", _with_methods(
    LAYER_GRADIENT_CASES, lambda case: (case[0]["kernel_size"], case[0].get("stride", 1)),
    ids=["bias", "no-bias", "stride2-pad1", "non-square"]))
def test_conv2d_layer_gradients(case, method, rng):
    kwargs, x_shape = case
    layer = Conv2D(**kwargs, rng=rng, dtype=np.float64, method=method)
    check_module_gradients(layer, rng.standard_normal(x_shape), rng)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_layer_preserves_dtype(dtype, method, rng):
    layer = Conv2D(3, 4, 3, padding=1, rng=rng, dtype=dtype, method=method)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    out = layer(x)
    dx = layer.backward(np.ones_like(out))
    assert out.dtype == dtype and dx.dtype == dtype
    assert layer.weight.grad.dtype == dtype and layer.bias.grad.dtype == dtype
    assert out.shape == (2, 4, 6, 6) and dx.shape == x.shape


@pytest.mark.parametrize("param_dtype, x_dtype",
                         [(np.float32, np.float64), (np.float64, np.float32)])
def test_conv2d_layer_computes_in_input_dtype(param_dtype, x_dtype, rng):
    layer = Conv2D(2, 3, 3, stride=2, padding=1, rng=rng, dtype=param_dtype)
    x = rng.standard_normal((2, 2, 7, 7)).astype(x_dtype)
    out = layer(x)
    dout = rng.standard_normal(out.shape).astype(x_dtype)
    dx = layer.backward(dout)
    assert out.dtype == x_dtype and dx.dtype == x_dtype
    assert layer.weight.data.dtype == param_dtype and layer.weight.grad.dtype == param_dtype
    assert layer.bias.grad.dtype == param_dtype

    weight = layer.weight.data.astype(x_dtype)
    bias = layer.bias.data.astype(x_dtype)
    assert_close(out, ref.conv2d_forward(x, weight, bias, (2, 2), (1, 1)), np.float32)
    ref_dx, ref_dweight, ref_dbias = ref.conv2d_backward(dout, x, weight, True, (2, 2), (1, 1))
    assert_close(dx, ref_dx, np.float32)
    assert_close(layer.weight.grad, ref_dweight, np.float32)
    assert_close(layer.bias.grad, ref_dbias, np.float32)


def test_conv2d_layer_accumulates_gradients(rng):
    layer = Conv2D(2, 3, 3, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 2, 5, 5))
    dout = rng.standard_normal(layer(x).shape)
    layer.backward(dout)
    once_w, once_b = layer.weight.grad.copy(), layer.bias.grad.copy()
    assert np.any(once_w != 0) and np.any(once_b != 0)
    layer(x)
    layer.backward(dout)
    np.testing.assert_allclose(layer.weight.grad, 2 * once_w, rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, 2 * once_b, rtol=1e-12)
    layer.zero_grad()
    assert not np.any(layer.weight.grad) and not np.any(layer.bias.grad)


def test_conv2d_layer_reuses_its_workspace_across_batches(rng):
    layer = Conv2D(3, 4, 3, padding=1, rng=rng, dtype=np.float64, method="im2col")
    for n in (4, 2, 4, 5):  # a smaller batch fits in the buffer; a larger one replaces it
        x = rng.standard_normal((n, 3, 6, 5))
        before = layer._workspace
        out = layer(x)
        if before is not None and n <= 4:
            assert layer._workspace is before
        assert np.shares_memory(layer._cache.cols, layer._workspace)
        dout = rng.standard_normal(out.shape)
        layer.zero_grad()
        dx = layer.backward(dout)
        expected = ref.conv2d_forward(x, layer.weight.data, layer.bias.data, (1, 1), (1, 1))
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        ref_dx, ref_dweight, _ = ref.conv2d_backward(dout, x, layer.weight.data, True,
                                                     (1, 1), (1, 1))
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.weight.grad, ref_dweight, rtol=1e-12, atol=1e-12)
    assert layer._workspace.size == 5 * 6 * 5 * 27


def test_conv2d_layer_non_contiguous_input(rng):
    layer = Conv2D(3, 2, (3, 2), stride=(1, 2), padding=1, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 3, 6, 7))
    out = layer(non_contiguous(x))
    expected = ref.conv2d_forward(x, layer.weight.data, layer.bias.data, (1, 2), (1, 1))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_conv2d_layer_parameters_and_init(rng):
    layer = Conv2D(3, 8, (3, 5), rng=np.random.default_rng(7))
    bound = 1 / np.sqrt(3 * 3 * 5)
    assert layer.weight.shape == (8, 3, 3, 5) and layer.bias.shape == (8,)
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
    assert np.all(np.abs(layer.weight.data) <= bound) and np.all(np.abs(layer.bias.data) <= bound)
    assert np.abs(layer.weight.data).max() > 0.8 * bound  # spread over the whole interval
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    same = Conv2D(3, 8, (3, 5), rng=np.random.default_rng(7))
    np.testing.assert_array_equal(same.weight.data, layer.weight.data)
    other = Conv2D(3, 8, (3, 5), rng=np.random.default_rng(8))
    assert not np.array_equal(other.weight.data, layer.weight.data)

    no_bias = Conv2D(3, 8, 3, bias=False, rng=rng)
    assert no_bias.bias is None and len(no_bias.parameters()) == 1


def test_conv2d_layer_repr():
    assert repr(Conv2D(3, 16, 3, padding=1)) == \
        "Conv2D(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert repr(Conv2D(1, 2, (3, 1), stride=2, bias=False)) == \
        "Conv2D(1, 2, kernel_size=(3, 1), stride=(2, 2), padding=(0, 0), bias=False)"


def test_conv2d_layer_input_errors():
    layer = Conv2D(3, 4, 3)
    with pytest.raises(ValueError) as info:
        layer(np.zeros((2, 4, 5, 5), np.float32))
    assert str(info.value) == "Conv2D: expected input of shape (N, 3, H, W), got shape (2, 4, 5, 5)"
    with pytest.raises(ValueError, match=r"Conv2D.*\(N, 3, H, W\).*\(3, 5, 5\)"):
        layer(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D.*\(2, 3, 2, 5\).*too small"):
        layer(np.zeros((2, 3, 2, 5), np.float32))
    with pytest.raises(TypeError, match=r"Conv2D.*int64"):
        layer(np.zeros((2, 3, 5, 5), np.int64))


def test_conv2d_layer_backward_errors():
    layer = Conv2D(3, 4, 3)
    with pytest.raises(RuntimeError, match="Conv2D.*before forward"):
        layer.backward(np.zeros((2, 4, 3, 3), np.float32))
    out = layer(np.zeros((2, 3, 5, 5), np.float32))
    layer.backward(np.zeros(out.shape, np.float32))
    with pytest.raises(RuntimeError, match="Conv2D.*before forward"):  # one backward per forward
        layer.backward(np.zeros(out.shape, np.float32))
    out = layer(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D.*\(2, 4, 3, 3\).*\(2, 4, 3, 4\)"):
        layer.backward(np.zeros((2, 4, 3, 4), np.float32))
    with pytest.raises(TypeError, match=r"Conv2D.*float32.*float64"):
        layer.backward(np.zeros(out.shape, np.float64))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"in_channels": 0, "out_channels": 2, "kernel_size": 3}, "in_channels"),
        ({"in_channels": 2, "out_channels": 2.5, "kernel_size": 3}, "out_channels"),
        ({"in_channels": 2, "out_channels": 2, "kernel_size": 0}, "kernel_size"),
        ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "stride": 0}, "stride"),
        ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": (1, -1)}, "padding"),
    ],
)
def test_conv2d_layer_constructor_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=f"Conv2D.*{fragment}"):
        Conv2D(**kwargs)


# --------------------------------------------------------------------------- 4. PyTorch
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


TORCH_CASES = [
    # (x shape, C_out, kernel, stride, padding, bias)
    ((4, 3, 10, 9), 5, (3, 3), 1, 1, True),
    ((2, 4, 11, 8), 3, (3, 2), (2, 1), (0, 1), True),
    ((3, 2, 7, 7), 4, (5, 5), 2, 2, False),
    ((2, 16, 12, 12), 32, (3, 3), 1, 1, True),
    ((4, 8, 20, 20), 16, (3, 3), 1, 1, True),  # large enough for the multi-threaded path
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, method", _with_methods(TORCH_CASES, lambda case: case[2:4]))
def test_conv2d_matches_torch(case, dtype, method, torch, rng):
    x_shape, out_channels, kernel, stride, padding, use_bias = case
    layer = Conv2D(x_shape[1], out_channels, kernel, stride, padding, bias=use_bias, rng=rng,
                   dtype=dtype, method=method)
    x = rng.standard_normal(x_shape).astype(dtype)
    out = layer(x)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.weight.data, requires_grad=True)
    bt = torch.tensor(layer.bias.data, requires_grad=True) if use_bias else None
    outt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    outt.backward(torch.tensor(dout))

    pairs = [(out, outt, "out"), (dx, xt.grad, "dx"), (layer.weight.grad, wt.grad, "dweight")]
    if use_bias:
        pairs.append((layer.bias.grad, bt.grad, "dbias"))
    rtol, scale = (1e-5, 1e-5) if dtype == np.float32 else (1e-10, 1e-12)
    for ours, theirs, what in pairs:
        assert ours.dtype == dtype, what
        atol = scale * max(1.0, float(theirs.detach().abs().max()))
        assert_close_to_torch(ours, theirs, rtol=rtol, atol=atol, what=what)


# --------------------------------------------------------------------------- 5. input_grad=False
INPUT_GRAD_CASES = [
    # (x shape, C_out, kernel, stride, padding): few input channels (direct kernels) and many
    ((3, 1, 9, 8), 4, (3, 3), 1, 1),
    ((2, 3, 8, 7), 5, (3, 2), (2, 1), (1, 0)),
    ((2, 8, 7, 6), 6, (3, 3), 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, method", _with_methods(INPUT_GRAD_CASES, lambda case: case[2:4],
                                                       methods=["auto"] + METHODS))
def test_conv2d_backward_without_input_grad(case, dtype, method, rng):
    x_shape, out_channels, kernel, stride, padding = case
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal((out_channels, x_shape[1]) + kernel).astype(dtype)
    bias = rng.standard_normal(out_channels).astype(dtype)
    out, cache = conv2d_forward(x, weight, bias, stride, padding, method=method)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, dbias = conv2d_backward(dout, cache)
    out2, cache2 = conv2d_forward(x, weight, bias, stride, padding, method=method)
    none, dweight2, dbias2 = conv2d_backward(dout, cache2, input_grad=False)
    assert none is None
    np.testing.assert_array_equal(dweight2, dweight)
    np.testing.assert_array_equal(dbias2, dbias)
    with pytest.raises(RuntimeError, match="already"):
        conv2d_backward(dout, cache2, input_grad=False)


def test_conv2d_layer_backward_without_input_grad(rng):
    layer = Conv2D(2, 3, 3, padding=1, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 2, 6, 5))
    dout = rng.standard_normal((2, 3, 6, 5))
    layer(x)
    dx = layer.backward(dout)
    grads = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer.zero_grad()
    layer(x)
    assert layer.backward(dout, input_grad=False) is None
    np.testing.assert_array_equal(layer.weight.grad, grads[0])
    np.testing.assert_array_equal(layer.bias.grad, grads[1])
    assert dx.shape == x.shape
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(dout, input_grad=False)


# --------------------------------------------------------------------------- 6. direct kernels
def test_auto_method_choice(rng):
    """auto: direct for few taps, Winograd for other 3x3 stride-1 kernels, else im2col."""
    from minidl.functional.conv import DIRECT_MAX_TAPS, choose_method
    assert choose_method("auto", DIRECT_MAX_TAPS) == "direct"
    assert choose_method("auto", DIRECT_MAX_TAPS + 1) == "im2col"
    assert choose_method("auto", DIRECT_MAX_TAPS + 1, kernel_size=(3, 3)) == "winograd"
    assert choose_method("auto", 72, stride=(2, 2), kernel_size=(3, 3)) == "im2col"
    _, cache = conv2d_forward(rng.standard_normal((1, 1, 5, 5)), rng.standard_normal((2, 1, 3, 3)))
    assert cache.method == "direct" and cache.cols is None
    _, cache = conv2d_forward(rng.standard_normal((1, 8, 5, 5)), rng.standard_normal((2, 8, 3, 3)))
    assert cache.method == "winograd" and cache.cols is None
    _, cache = conv2d_forward(rng.standard_normal((1, 8, 5, 5)), rng.standard_normal((2, 8, 3, 2)))
    assert cache.method == "im2col"
    with pytest.raises(ValueError, match="conv2d.*method.*'gemm'"):
        conv2d_forward(rng.standard_normal((1, 1, 5, 5)), rng.standard_normal((2, 1, 3, 3)),
                       method="gemm")
    with pytest.raises(ValueError, match="Conv2D.*method"):
        Conv2D(1, 2, 3, method="fft")
    with pytest.raises(ValueError, match="Conv2D.*direct.*stride"):
        Conv2D(1, 2, 3, stride=2, method="direct")
    with pytest.raises(ValueError, match="Conv2D.*winograd.*stride"):
        Conv2D(4, 2, 3, stride=2, method="winograd")
    with pytest.raises(ValueError, match=r"Conv2D.*winograd.*kernel_size \(3, 3\).*\(5, 5\)"):
        Conv2D(4, 2, 5, method="winograd")
    with pytest.raises(ValueError, match=r"conv2d.*winograd.*\(3, 2\)"):
        conv2d_forward(rng.standard_normal((1, 8, 5, 5)), rng.standard_normal((2, 8, 3, 2)),
                       method="winograd")
    _, cache = conv2d_forward(rng.standard_normal((1, 1, 5, 5)), rng.standard_normal((2, 1, 3, 3)),
                              stride=2)
    assert cache.method == "im2col"  # auto: the direct and Winograd kernels are for stride 1


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
    _conv.direct_forward(x_pad, weight, bias, True, out, np.empty((2, oh * wp), dtype), 2)
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


def test_conv2d_forward_out_argument(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    weight = rng.standard_normal((4, 3, 3, 3))
    for method in METHODS:
        out = np.full((2, 4, 6, 6), np.nan)
        result, _ = conv2d_forward(x, weight, None, 1, 1, method=method, out=out)
        assert result is out
        assert_close(out, ref.conv2d_forward(x, weight, None, (1, 1), (1, 1)), np.float64)
    with pytest.raises(ValueError, match="conv2d.*out"):
        conv2d_forward(x, weight, None, 1, 1, out=np.empty((2, 4, 6, 6), np.float32))


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=GEOMETRY_IDS[:3])
def test_im2col_in_chunks_matches_reference(geometry, dtype, input_grad, monkeypatch, rng):
    """im2col's matrix built a few samples at a time (and again in the backward pass)."""
    import minidl.functional.conv as fconv
    monkeypatch.setattr(fconv, "CHUNK_BYTES", 1)  # one sample per chunk
    n, c, h, w, kernel, stride, padding = geometry
    x = rng.standard_normal((n + 2, c, h, w)).astype(dtype)
    weight = rng.standard_normal((5, c) + kernel).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    rows, taps = fconv.column_matrix_shape("conv2d", x.shape, kernel, stride, padding, dtype)
    workspace = np.full(rows * taps, np.nan, dtype)
    out, cache = conv2d_forward(x, weight, bias, stride, padding, method="im2col",
                                workspace=workspace)
    assert cache.chunk == 1 and cache.x_nhwc is not None
    assert np.shares_memory(cache.cols, workspace)
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


# --------------------------------------------------------------------------- 7. Winograd
# (N, C_in, C_out, H, W, padding): odd and even outputs (a last row/column of tiles that is half
# outside), padding 0-2, outputs of one pixel, channel counts that are not multiples of the
# kernels' steps (4 rows, 32 columns).
WINOGRAD_GEOMETRIES = [
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


@pytest.mark.parametrize("block_bytes", [1, 1 << 30], ids=["one-row-blocks", "whole-images"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", WINOGRAD_GEOMETRIES)
def test_winograd_kernels_blocks_and_threads(geometry, dtype, block_bytes, monkeypatch, rng):
    """The fused kernels with one row of tiles per block or whole images, on 3 threads (so
    images are split unevenly, and some threads may get none), every output overwritten."""
    import minidl.functional.winograd as fwino
    monkeypatch.setattr(fwino, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(fwino, "_threads", lambda n, work: 3)
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
