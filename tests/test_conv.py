"""Convolution: the dispatcher (minidl.functional.conv), the Conv2D layer and PyTorch.

Sections:
  1. functional conv2d_forward/backward against the definition, every method, incl.
     non-contiguous inputs, repeated backward calls, errors
  2. Conv2D: numerical gradient checks (float64), dtypes, accumulation, init, errors
  3. against torch.nn.functional.conv2d
  4. input_grad=False;  5. the choice of method and the out argument
Every method runs on every geometry it supports: direct for stride 1, Winograd for 3x3 and 5x5
kernels with stride 1, im2col for all. Each algorithm's own kernels are tested in
test_conv_direct.py, test_conv_im2col.py and test_conv_winograd.py.
"""
import numpy as np
import pytest

import minidl
from conv_helpers import (DTYPES, GEOMETRIES, GEOMETRY_IDS, METHODS, _with_methods, assert_close,
                          non_contiguous, out_size)
from helpers import assert_close_to_torch, check_module_gradients
from minidl.functional.conv import conv2d_backward, conv2d_forward
from minidl.layers.conv import Conv2D
from minidl.reference import conv as ref

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy < 2
    from numpy.core.multiarray import get_handler_name


# --------------------------------------------------------------------------- 1. functional
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


def _cache_arrays(cache):
    """Copies of every array a convolution cache holds, by field name."""
    return {name: value.copy() for name, value in cache._asdict().items()
            if isinstance(value, np.ndarray)}


@pytest.mark.parametrize("method, chunked", [(m, False) for m in METHODS] + [("im2col", True)])
def test_conv2d_cache_serves_repeated_backward(method, chunked, monkeypatch, rng):
    """A cache is only read: a second backward call gives the same gradients, and the forward's
    arrays are unchanged (no field is consumed). im2col also with its matrix in chunks."""
    if chunked:
        from minidl.functional import conv_im2col
        monkeypatch.setattr(conv_im2col, "CHUNK_BYTES", 1)
    x = rng.standard_normal((3, 2, 6, 5))
    weight = rng.standard_normal((3, 2, 3, 3))
    out, cache = conv2d_forward(x, weight, np.zeros(3), 1, 1, method=method)
    before = _cache_arrays(cache)
    dout = rng.standard_normal(out.shape)
    first = conv2d_backward(dout, cache)
    for name, value in _cache_arrays(cache).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    second = conv2d_backward(dout, cache)
    third = conv2d_backward(dout, cache, input_grad=False)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)  # new arrays each time
    assert third[0] is None
    np.testing.assert_array_equal(third[1], first[1])
    np.testing.assert_array_equal(third[2], first[2])


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


# --------------------------------------------------------------------------- 2. Conv2D layer
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


def test_conv2d_layer_reuses_memory_across_batches(rng):
    """The layer owns no workspace: its padded NHWC input (what the gathered products read)
    comes from minidl's allocator, and a batch size seen before is served from its cache (no
    new memory); results are right for every batch size."""
    layer = Conv2D(3, 4, 3, padding=1, rng=rng, dtype=np.float64, method="im2col")
    assert not hasattr(layer, "_workspace")
    for i, n in enumerate((4, 2, 4, 5)):  # 55 KiB of matrix per sample: cached sizes
        x = rng.standard_normal((n, 3, 16, 16))
        misses = minidl.memory_stats()["misses"]
        out = layer(x)
        assert layer._cache.cols is None and layer._cache.x_pad.shape == (n, 18, 18, 3)
        assert get_handler_name(layer._cache.x_pad) == "minidl_caching"
        if i == 2:  # batch 4 again
            assert minidl.memory_stats()["misses"] == misses
        dout = rng.standard_normal(out.shape)
        layer.zero_grad()
        dx = layer.backward(dout)
        expected = ref.conv2d_forward(x, layer.weight.data, layer.bias.data, (1, 1), (1, 1))
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        ref_dx, ref_dweight, _ = ref.conv2d_backward(dout, x, layer.weight.data, True,
                                                     (1, 1), (1, 1))
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.weight.grad, ref_dweight, rtol=1e-12, atol=1e-12)


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


# --------------------------------------------------------------------------- 3. PyTorch

TORCH_CASES = [
    # (x shape, C_out, kernel, stride, padding, bias)
    ((4, 3, 10, 9), 5, (3, 3), 1, 1, True),
    ((2, 4, 11, 8), 3, (3, 2), (2, 1), (0, 1), True),
    ((3, 2, 7, 7), 4, (5, 5), 2, 2, False),
    ((2, 16, 12, 12), 32, (3, 3), 1, 1, True),
    ((4, 8, 20, 20), 16, (3, 3), 1, 1, True),  # large enough for the multi-threaded path
    ((3, 16, 9, 10), 12, (5, 5), 1, 2, True),   # F(2x2, 5x5) under "auto"
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


# --------------------------------------------------------------------------- 4. input_grad=False
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
    again = conv2d_backward(dout, cache2, input_grad=False)  # a cache serves repeated calls
    assert again[0] is None
    np.testing.assert_array_equal(again[1], dweight)


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


# --------------------------------------------------------------------------- 5. choice of method, out
def test_auto_method_choice(rng):
    """auto: direct for few taps on large maps or little work, unfold for few output
    positions, Winograd for other 3x3 stride-1 kernels and 5x5 ones on 8+ input channels
    (padding <= 4), direct again for other stride-1 kernels with few output channels on maps
    large enough, else im2col."""
    from minidl.functional.conv import (DIRECT_MAX_TAPS, DIRECT_PLANE_MAX_TAPS, DirectCache,
                                        Im2colCache, WinogradCache, choose_method)
    assert choose_method("auto", DIRECT_MAX_TAPS) == "direct"
    assert choose_method("auto", DIRECT_MAX_TAPS + 1) == "im2col"
    # few taps: direct on large maps with few taps, or for little work; im2col otherwise
    def few_taps(taps, out_size, out_channels, batch, kernel_size=(3, 3)):
        return choose_method("auto", taps, kernel_size=kernel_size, out_size=out_size,
                             out_channels=out_channels, batch=batch)
    assert few_taps(9, (28, 28), 128, 256) == "direct"  # MNIST's first layer
    assert few_taps(DIRECT_PLANE_MAX_TAPS, (32, 32), 64, 128) == "direct"  # CIFAR's
    assert few_taps(DIRECT_PLANE_MAX_TAPS + 1, (32, 32), 64, 128, (2, 2)) == "im2col"
    assert few_taps(9, (24, 24), 64, 64) == "direct"
    assert few_taps(9, (23, 25), 64, 64) == "im2col"  # 575 positions
    assert few_taps(27, (16, 16), 64, 128) == "im2col"
    assert few_taps(12, (7, 7), 160, 32, (2, 2)) == "im2col"  # the case that found it
    assert few_taps(27, (6, 6), 16, 2) == "direct"  # 31104 multiply-adds
    assert few_taps(27, (6, 6), 16, 8) == "im2col"
    assert few_taps(27, (6, 6), 16, None) == "im2col"  # batch unknown: on the map alone
    assert few_taps(27, (10, 10), 8, 128) == "direct"  # few output channels (below)
    assert few_taps(27, (6, 6), 8, 128) == "im2col"  # ... on a map too small for them
    assert few_taps(27, None, 16, 128) == "direct"  # map unknown: direct
    assert choose_method("auto", DIRECT_MAX_TAPS + 1, kernel_size=(3, 3)) == "winograd"
    # few output channels: direct for stride-1 kernels other than 3x3, up to 256 taps
    assert choose_method("auto", 36, kernel_size=(6, 6), out_channels=8) == "direct"
    assert choose_method("auto", 256, kernel_size=(4, 4), out_channels=1) == "direct"
    # ... on maps of at least DIRECT_NARROW_MIN_POSITIONS positions (the case that found it)
    assert choose_method("auto", 256, kernel_size=(2, 2), out_size=(7, 7), out_channels=8,
                         batch=64) == "im2col"
    assert choose_method("auto", 256, kernel_size=(2, 2), out_size=(10, 10), out_channels=8,
                         batch=64) == "direct"
    assert choose_method("auto", 275, kernel_size=(5, 6), out_channels=8) == "im2col"
    # 5x5 (map and batch not known): Winograd from 8 input channels on, padding <= 4
    assert choose_method("auto", 200, kernel_size=(5, 5), out_channels=8) == "winograd"
    assert choose_method("auto", 200, kernel_size=(5, 5), padding=(4, 4)) == "winograd"
    assert choose_method("auto", 200, kernel_size=(5, 5), padding=(5, 4)) == "im2col"
    assert choose_method("auto", 175, kernel_size=(5, 5), out_channels=8) == "direct"
    assert choose_method("auto", 175, kernel_size=(5, 5), out_channels=9) == "im2col"
    assert choose_method("auto", 200, kernel_size=(5, 5), stride=(2, 2)) == "im2col"
    assert choose_method("auto", 36, kernel_size=(6, 6), out_channels=9) == "im2col"
    assert choose_method("auto", 75, kernel_size=(5, 5), stride=(2, 2), out_channels=8) == "im2col"
    assert choose_method("auto", 72, kernel_size=(3, 3), out_channels=8) == "winograd"
    assert choose_method("auto", 36, kernel_size=(6, 6)) == "im2col"  # out_channels unknown
    assert choose_method("auto", 72, stride=(2, 2), kernel_size=(3, 3)) == "im2col"
    _, cache = conv2d_forward(rng.standard_normal((1, 1, 5, 5)), rng.standard_normal((2, 1, 3, 3)))
    assert cache.method == "direct" and isinstance(cache, DirectCache)  # no im2col matrix
    _, cache = conv2d_forward(rng.standard_normal((2, 8, 10, 10)),
                              rng.standard_normal((2, 8, 3, 3)))
    assert cache.method == "winograd" and isinstance(cache, WinogradCache)  # no im2col matrix
    _, cache = conv2d_forward(rng.standard_normal((8, 8, 5, 5)), rng.standard_normal((9, 8, 3, 2)))
    assert cache.method == "im2col" and isinstance(cache, Im2colCache)
    _, cache = conv2d_forward(rng.standard_normal((2, 8, 12, 12)),
                              rng.standard_normal((8, 8, 3, 2)))
    assert cache.method == "direct"  # few output channels, on 10x11 outputs
    _, cache = conv2d_forward(rng.standard_normal((1, 8, 5, 5)), rng.standard_normal((24, 8, 3, 2)))
    assert cache.method == "unfold"  # 12 output positions in all, 24 output channels
    with pytest.raises(ValueError, match="conv2d.*method.*'gemm'"):
        conv2d_forward(rng.standard_normal((1, 1, 5, 5)), rng.standard_normal((2, 1, 3, 3)),
                       method="gemm")
    with pytest.raises(ValueError, match="Conv2D.*method"):
        Conv2D(1, 2, 3, method="fft")
    with pytest.raises(ValueError, match="Conv2D.*direct.*stride"):
        Conv2D(1, 2, 3, stride=2, method="direct")
    with pytest.raises(ValueError, match="Conv2D.*winograd.*stride"):
        Conv2D(4, 2, 3, stride=2, method="winograd")
    with pytest.raises(ValueError, match=r"Conv2D.*winograd.*kernel_size \(3, 3\) or \(5, 5\).*"
                                         r"\(7, 7\)"):
        Conv2D(4, 2, 7, method="winograd")
    with pytest.raises(ValueError, match=r"Conv2D.*winograd.*\(5, 5\).*padding of at most 4.*"
                                         r"\(5, 5\)"):
        Conv2D(4, 2, 5, padding=5, method="winograd")
    _, cache = conv2d_forward(rng.standard_normal((2, 8, 10, 10)),
                              rng.standard_normal((3, 8, 5, 5)))
    assert cache.method == "winograd" and cache.kernel == 5
    with pytest.raises(ValueError, match=r"conv2d.*winograd.*\(3, 2\)"):
        conv2d_forward(rng.standard_normal((1, 8, 5, 5)), rng.standard_normal((2, 8, 3, 2)),
                       method="winograd")
    _, cache = conv2d_forward(rng.standard_normal((8, 1, 9, 9)), rng.standard_normal((2, 1, 3, 3)),
                              stride=2)
    assert cache.method == "im2col"  # auto: the direct and Winograd kernels are for stride 1


@pytest.mark.parametrize("kernel, batch, in_channels, out_channels, out_size, padding, expected", [
    (3, 64, 64, 64, (2, 2), 1, "im2col"),      # 1 tile, whatever the batch
    (3, 16, 16, 16, (2, 4), 1, "im2col"),      # 2 tiles per image
    (3, 64, 16, 16, (3, 4), 1, "winograd"),    # odd maps round up: 2 x 2 tiles
    (3, 1, 32, 32, (4, 4), 1, "im2col"),       # 4 tiles, but 1 image: too little saved
    (3, 16, 256, 256, (4, 4), 1, "im2col"),    # 16*(9*v*16 - 16*4) < 3*256 multiply-adds
    (3, 32, 256, 256, (4, 4), 1, "winograd"),
    (3, 16, 128, 128, (4, 4), 1, "winograd"),
    (3, 32, 512, 512, (4, 4), 1, "im2col"),
    (3, 64, 512, 512, (4, 4), 1, "winograd"),
    (3, 8, 512, 512, (7, 7), 1, "im2col"),
    (3, 4, 256, 256, (8, 8), 1, "winograd"),   # less padding: more saved per tile
    (3, 1, 256, 256, (8, 8), 1, "im2col"),
    (3, 4, 192, 256, (5, 5), 0, "im2col"),     # odd maps: 9 tiles for 25 outputs
    (3, 1, 128, 64, (22, 22), 0, "winograd"),  # a large map pays even at batch 1
    (3, 8, 512, 512, (14, 14), 1, "winograd"),
    (3, 64, 32, 64, (14, 14), 1, "winograd"),  # the MNIST CNN's second layer
    (3, None, 512, 512, (4, 4), 1, "winograd"),  # batch not known: 4 tiles per image suffice
    (5, 8, 256, 96, (3, 3), 0, "im2col"),      # 5x5 on small maps: 12.5 ms against 4.8
    (5, 1, 192, 64, (6, 6), 1, "im2col"),
    (5, 4, 256, 64, (22, 22), 1, "winograd"),
    (5, 32, 8, 32, (16, 16), 2, "winograd"),   # from 8 input channels (WINOGRAD5_MIN_IN_...)
    (5, 32, 4, 32, (16, 16), 2, "im2col"),
    (5, None, 8, 8, (4, 4), 0, "winograd"),    # batch not known: 8 input channels suffice
])
def test_auto_gives_winograd_only_where_it_pays(kernel, batch, in_channels, out_channels,
                                                out_size, padding, expected, rng):
    """"auto" and F(2x2, 3x3) / F(2x2, 5x5): enough multiply-adds saved on the batch to pay
    for the transforms (``WINOGRAD_BREAK_EVEN``; 3x3 at least 4 tiles per image, 5x5 at least
    8 input channels); the layers' path (conv2d_forward, which knows the batch) follows the
    rule, except for batches of at most ``UNFOLD_MAX_POSITIONS`` output positions and twice as
    many output channels, which go to unfold first."""
    from minidl.functional.conv import UNFOLD_MAX_POSITIONS, _winograd_pays, choose_method
    pad = (padding, padding)
    assert _winograd_pays(kernel, in_channels, out_channels, out_size, pad, batch) == (
        expected == "winograd")
    positions = batch * out_size[0] * out_size[1] if batch is not None else None
    if positions is not None and positions <= UNFOLD_MAX_POSITIONS and \
            2 * positions <= out_channels:
        expected = "unfold"
    assert choose_method("auto", kernel * kernel * in_channels, kernel_size=(kernel, kernel),
                         padding=pad, out_size=out_size, out_channels=out_channels,
                         batch=batch) == expected
    if batch is None:
        return
    in_size = tuple(o + kernel - 1 - 2 * padding for o in out_size)
    x = np.zeros((batch, in_channels) + in_size, np.float32)
    weight = np.zeros((out_channels, in_channels, kernel, kernel), np.float32)
    _, cache = conv2d_forward(x, weight, None, 1, padding)  # the layers' path: method "auto"
    assert cache.method == expected


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



# ----------------------------------------------- 6. aliasing, caches and sizes (issue 10)
def _conv_args(rng, method):
    channels = 8 if method == "winograd" else 2
    x = rng.standard_normal((2, channels, 6, 6))
    return x, rng.standard_normal((channels, channels, 3, 3)), rng.standard_normal(channels)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", ["input", "weight", "bias", "part of input"])
def test_conv2d_out_must_not_share_memory_with_an_input(rng, method, target):
    x, weight, bias = _conv_args(rng, method)
    n, c, h, w = x.shape
    if target == "part of input":  # out is a contiguous block inside a larger input
        big = rng.standard_normal((2 * n, c, h, w))
        x, out = big[::2], big[1:n + 1]
        target = "input"
    else:
        flat = {"input": x, "weight": weight, "bias": bias}[target].reshape(-1)
        buffer = np.zeros(flat.size - 1 + n * c * h * w)  # out shares target's last element
        buffer[:flat.size] = flat
        arrays = {"input": x, "weight": weight, "bias": bias}
        arrays[target] = buffer[:flat.size].reshape(arrays[target].shape)
        x, weight, bias = arrays["input"], arrays["weight"], arrays["bias"]
        out = buffer[flat.size - 1:].reshape(n, c, h, w)
    expected, _ = conv2d_forward(x.copy(), weight.copy(), bias.copy(), 1, 1, method=method)
    with pytest.raises(ValueError, match=f"^conv2d: out must not overlap {target}"):
        conv2d_forward(x, weight, bias, 1, 1, method=method, out=out)
    result, _ = conv2d_forward(x, weight, bias, 1, 1, method=method)  # unchanged inputs
    np.testing.assert_array_equal(result, expected)


def _read_only(shape):
    array = np.zeros(shape)
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("make_out, fragment", [
    (lambda shape: np.zeros(shape, np.float32), "writable C-contiguous float64 array"),
    (lambda shape: np.zeros(shape[:3] + (shape[3] + 1,)), "of shape (2, 2, 6, 6), got float64 (2, 2, 6, 7)"),
    (lambda shape: np.zeros(shape[::-1]).T, "C-contiguous"),
    (_read_only, "writable"),
    (lambda shape: [[0.0]], "got list"),
], ids=["dtype", "shape", "Fortran", "read-only", "list"])
def test_conv2d_out_of_the_wrong_kind_is_refused(rng, make_out, fragment):
    x, weight, bias = _conv_args(rng, "direct")
    with pytest.raises(ValueError, match="^conv2d: expected out to be a writable") as info:
        conv2d_forward(x, weight, bias, 1, 1, out=make_out((2, 2, 6, 6)))
    assert fragment in str(info.value)


def test_conv2d_workspace_is_checked_and_must_be_memory_of_its_own(rng):
    x, weight, bias = _conv_args(rng, "im2col")
    size = 2 * 6 * 6 * 9 * 2
    for workspace in (np.zeros(size - 1), np.zeros(size, np.float32), np.zeros((size, 1)),
                      np.zeros(2 * size)[::2], "memory"):
        with pytest.raises(ValueError, match="conv2d: expected workspace to be a writable"):
            conv2d_forward(x, weight, bias, 1, 1, method="im2col", workspace=workspace)
    buffer = np.zeros(size + x.size)
    inside = buffer[size:].reshape(x.shape)
    inside[...] = x
    with pytest.raises(ValueError, match="conv2d: workspace must not overlap input"):
        conv2d_forward(inside, weight, bias, 1, 1, method="im2col", workspace=buffer)
    workspace = np.zeros(size)
    out = workspace[:2 * 2 * 6 * 6].reshape(2, 2, 6, 6)
    with pytest.raises(ValueError, match="conv2d: out must not overlap workspace"):
        conv2d_forward(x, weight, bias, 1, 1, method="im2col", workspace=workspace, out=out)
    result, _ = conv2d_forward(x, weight, bias, 1, 1, method="im2col", workspace=np.zeros(size))
    np.testing.assert_allclose(result, ref.conv2d_forward(x, weight, bias, (1, 1), (1, 1)),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method, field, value", [
    ("direct", "x_pad", lambda c: c.x_pad[:, :, :-1]),
    ("direct", "weight", lambda c: c.weight[:, :, :2]),
    ("direct", "out_shape", lambda c: c.out_shape[:3] + (c.out_shape[3] + 4,)),
    ("direct", "x_pad", lambda c: np.asfortranarray(c.x_pad)),
    ("winograd", "x", lambda c: c.x[:1]),
    ("winograd", "u", lambda c: c.u[:, :2]),
    ("winograd", "padding", lambda c: (3, 3)),
    ("winograd", "block_rows", lambda c: 0),
    ("winograd", "dtype", lambda c: np.dtype(np.float32)),
    ("winograd", "kernel", lambda c: 4),
    ("winograd5", "kernel", lambda c: 3),
    ("winograd", "spans", lambda c: "yes"),
    ("winograd", "u", lambda c: c.u[:-1]),
    ("winograd5", "u", lambda c: c.u[:16]),
    ("winograd5", "weight", lambda c: c.weight[:, :, :3, :3]),
    ("winograd5", "weight", lambda c: None),
    ("winograd5", "padding", lambda c: (5, 5)),
    ("im2col", "x_pad", lambda c: c.x_pad[:, :-1]),
    ("im2col", "x_pad", lambda c: np.asfortranarray(c.x_pad)),
    ("im2col", "cols", lambda c: np.zeros((3, 3))),
    ("im2col", "weight_rows", lambda c: c.weight_rows.astype(np.float32)),
    ("im2col", "stride", lambda c: (0, 1)),
    ("im2col", "chunk", lambda c: 0),
    ("im2col", "x_shape", lambda c: (2, 2, 9, 6)),
    ("im2col", "x_shape", lambda c: "shape"),
])
def test_conv2d_backward_refuses_a_changed_cache(rng, method, field, value):
    """A cache is a tuple the caller can rebuild; arrays whose shapes do not fit its geometry
    would make the kernels read or write out of bounds, so they are refused."""
    x, weight, bias = _conv_args(rng, "winograd" if method == "winograd5" else method)
    if method == "winograd5":  # F(2x2, 5x5)
        weight = np.repeat(np.repeat(weight, 2, axis=2), 2, axis=3)[:, :, :5, :5]
        method = "winograd"
    out, cache = conv2d_forward(x, weight, bias, 1, 1, method=method)
    changed = cache._replace(**{field: value(cache)})
    with pytest.raises(ValueError, match=r"^conv2d: the cache's .* (not what conv2d_forward made|"
                                         r"geometry)"):
        conv2d_backward(np.ones(changed.out_shape if field == "out_shape" else out.shape), changed)
    dx, _, _ = conv2d_backward(np.ones_like(out), cache)  # the original still works
    assert dx.shape == x.shape


def test_conv2d_backward_refuses_another_operations_cache(rng):
    from minidl.functional import max_pool2d_forward
    _, cache = max_pool2d_forward(rng.standard_normal((1, 1, 4, 4)), 2)
    with pytest.raises(TypeError, match="conv2d: expected the cache returned by conv2d_forward"):
        conv2d_backward(np.ones((1, 1, 2, 2)), cache)


@pytest.mark.parametrize("x_shape, w_shape, padding, method, what", [
    ((1, 1, 3, 3), (1, 1, 3, 3), 2 ** 20, "auto", "output"),
    ((1, 4096, 1, 1), (1, 4096, 1, 1), 2 ** 14, "direct", "padded input"),
    ((1, 1, 1024, 1024), (1, 1, 1024, 1024), 1023, "im2col", "im2col matrix"),
])
def test_giant_but_valid_shapes_fail_before_anything_is_allocated(x_shape, w_shape, padding,
                                                                  method, what):
    x, weight = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
    before = minidl.memory_stats()
    with pytest.raises(MemoryError, match=f"^conv2d: the {what} of shape .* would need .*, more "
                                          f"than this machine's"):
        conv2d_forward(x, weight, None, 1, padding, method=method)
    after = minidl.memory_stats()
    assert after["allocated_bytes"] == before["allocated_bytes"]
    assert after["misses"] == before["misses"] and after["hits"] == before["hits"]


def test_the_backward_matrix_is_checked_for_a_sample_per_thread(monkeypatch):
    # One sample's im2col matrix (1024 x 576 float32, 2.4 MB) fits in 3 MB, but the input
    # gradient builds dcols for a sample per thread: 4.7 MB at 2 threads.
    from minidl import _checks
    x, weight = np.zeros((2, 64, 32, 32), np.float32), np.zeros((8, 64, 3, 3), np.float32)
    monkeypatch.setitem(_checks._MEMORY, "physical", 3 << 20)
    previous = minidl.get_num_threads()
    try:
        minidl.set_num_threads(1)
        conv2d_forward(x, weight, None, 1, 1, method="im2col")
        minidl.set_num_threads(2)
        with pytest.raises(MemoryError, match=r"^conv2d: the im2col matrix of shape \(2048, 576\)"):
            conv2d_forward(x, weight, None, 1, 1, method="im2col")
    finally:
        minidl.set_num_threads(previous)


def test_public_helpers_and_other_caches_check_their_arguments(rng):
    from minidl.functional import conv2d_output_size, linear_backward, softmax_backward
    assert conv2d_output_size((7, 5), 3, (2, 1), 1) == (4, 5)
    for bad in ({"stride": 0}, {"padding": -1}, {"kernel_size": 2.5}, {"in_size": (5,)}):
        args = {"in_size": (7, 5), "kernel_size": 3, "stride": 1, "padding": 0, **bad}
        with pytest.raises(ValueError, match=f"^conv2d_output_size: {next(iter(bad))} must be"):
            conv2d_output_size(**args)
    with pytest.raises(TypeError, match="^linear: expected the cache returned by linear_forward"):
        linear_backward(np.ones((2, 2)), (1, 2))
    with pytest.raises(TypeError, match="^softmax: expected the cache returned by softmax_forward"):
        softmax_backward(np.ones(2), None)
