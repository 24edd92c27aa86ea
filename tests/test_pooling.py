"""Max pooling: Cython kernels vs the NumPy reference, functional API, MaxPool2D, PyTorch.

Sections:
  1. kernels against minidl.reference.pooling, float32/float64, incl. ties and overlaps
  2. functional max_pool2d_forward/backward, non-contiguous inputs, errors
  3. MaxPool2D: numerical gradient check (float64), dtypes, errors
  4. against torch.nn.functional.max_pool2d (skipped when torch is missing)
"""
import numpy as np
import pytest

from helpers import assert_close_to_torch, check_module_gradients
from minidl._kernels import _pool
from minidl.functional.pooling import max_pool2d_backward, max_pool2d_forward
from minidl.layers.pooling import MaxPool2D
from minidl.reference import pooling as ref

DTYPES = [np.float32, np.float64]

# (N, C, H, W, kernel, stride): floor mode (sizes the stride does not divide), overlapping
# windows (stride < kernel), gaps (stride > kernel), non-square, 1x1 and whole-plane windows.
GEOMETRIES = [
    (2, 3, 8, 8, (2, 2), (2, 2)),
    (2, 3, 7, 9, (2, 2), (2, 2)),
    (1, 2, 7, 7, (3, 3), (1, 1)),
    (2, 2, 9, 8, (3, 3), (2, 2)),
    (2, 1, 9, 10, (2, 3), (1, 2)),
    (3, 2, 5, 6, (1, 1), (1, 1)),
    (2, 2, 5, 4, (5, 4), (1, 1)),
    (1, 3, 11, 11, (2, 2), (4, 3)),
    (4, 8, 48, 48, (2, 2), (2, 2)),  # large enough for the multi-threaded path
    # 2x2 kernels: rows of >= 16 windows go along the row, shorter ones (above) through a
    # table; both with and without an uncovered last row and column
    (2, 3, 33, 35, (2, 2), (2, 2)),
    (1, 2, 6, 32, (2, 2), (2, 2)),
]
GEOMETRY_IDS = [f"x{g[:4]}-k{g[4]}-s{g[5]}".replace(" ", "") for g in GEOMETRIES]


def pooled_size(h, w, kernel, stride):
    return (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1


def input_with_ties(shape, dtype, rng):
    """Few distinct values, so most windows contain several equal maxima."""
    return rng.integers(-2, 3, size=shape).astype(dtype)


def non_contiguous(array):
    """The same values as ``array`` with exotic strides (transposed, then sliced)."""
    n, c, h, w = array.shape
    base = np.zeros((n, c, w, 2 * h), dtype=array.dtype)
    base[:, :, :, 1::2] = array.transpose(0, 1, 3, 2)
    view = base[:, :, :, 1::2].transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous and np.array_equal(view, array)
    return view


# --------------------------------------------------------------------------- 1. kernels
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_pool_kernels_match_reference(geometry, dtype, ties, rng):
    n, c, h, w, kernel, stride = geometry
    shape = (n, c, h, w)
    x = input_with_ties(shape, dtype, rng) if ties else rng.standard_normal(shape).astype(dtype)
    ref_out, ref_argmax = ref.max_pool2d_forward(x, kernel, stride)
    out = np.full(ref_out.shape, np.nan, dtype=dtype)  # the kernels must overwrite everything
    argmax = np.full(ref_out.shape, -1, dtype=np.int64)
    _pool.max_pool2d_forward(x, out, argmax, *kernel, *stride, 2)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(argmax, ref_argmax)

    dout = rng.standard_normal(out.shape).astype(dtype)
    ref_dx = ref.max_pool2d_backward(dout, ref_argmax, shape)
    # the general backward, and the one for non-overlapping 2x2 windows where it applies
    for two_by_two in {False, kernel == stride == (2, 2)}:
        dx = np.full(shape, np.nan, dtype=dtype)
        _pool.max_pool2d_backward(dout, argmax, dx, 2, two_by_two)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("values", ["distinct", "ties", "nan"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_values_kernel_matches_the_forward_bit_for_bit(geometry, dtype, values, rng):
    """max_pool2d_values (inference: no indices) writes exactly the forward kernel's maxima,
    NaN payloads included."""
    n, c, h, w, kernel, stride = geometry
    shape = (n, c, h, w)
    x = input_with_ties(shape, dtype, rng) if values == "ties" else rng.standard_normal(shape)
    x = x.astype(dtype)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    if values == "nan":
        x[rng.random(shape) < 0.2] = np.nan
        payloads = rng.integers(1, 1 << 20, size=int(np.isnan(x).sum())).astype(bits)
        x.view(bits)[np.isnan(x)] |= payloads  # distinct NaNs: the kernel must pick the same
    out = np.empty((n, c) + pooled_size(h, w, kernel, stride), dtype)
    _pool.max_pool2d_forward(x, out, np.empty(out.shape, np.int64), *kernel, *stride, 2)
    maxima = np.full(out.shape, 7, dtype)  # the kernel must overwrite everything
    _pool.max_pool2d_values(x, maxima, *kernel, *stride, 2)
    np.testing.assert_array_equal(maxima.view(bits), out.view(bits))


def test_reference_pool_matches_brute_force(rng):
    """The vectorized reference agrees with a loop over windows written from the definition."""
    x = input_with_ties((2, 2, 7, 8), np.float64, rng)
    kernel, stride = (3, 2), (2, 3)
    out, argmax = ref.max_pool2d_forward(x, kernel, stride)
    dout = rng.standard_normal(out.shape)
    dx = ref.max_pool2d_backward(dout, argmax, x.shape)
    expected_dx = np.zeros_like(x)
    for n, c, oh, ow in np.ndindex(out.shape):
        window = x[n, c, oh * 2:oh * 2 + 3, ow * 3:ow * 3 + 2]
        i, j = np.unravel_index(np.argmax(window), window.shape)  # first max, row-major
        assert out[n, c, oh, ow] == window.max()
        assert argmax[n, c, oh, ow] == (oh * 2 + i) * 8 + ow * 3 + j
        expected_dx[n, c, oh * 2 + i, ow * 3 + j] += dout[n, c, oh, ow]
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-14)


def test_ties_send_gradient_to_first_max_in_row_major_order():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 5.0  # two maxima in the top-left window; (0, 1) comes first
    out, cache = max_pool2d_forward(x, 2)
    dx = max_pool2d_backward(np.ones_like(out), cache)
    assert out[0, 0, 0, 0] == 5.0
    assert dx[0, 0, 0, 1] == 1.0 and dx[0, 0, 1, 0] == 0.0
    # a constant window: the first element wins
    assert dx[0, 0, 2, 2] == 1.0 and dx[0, 0, 2:, 2:].sum() == 1.0


def test_overlapping_windows_add_their_gradients():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the centre wins all four 2x2 windows with stride 1
    out, cache = max_pool2d_forward(x, 2, stride=1)
    dout = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dx = max_pool2d_backward(dout, cache)
    np.testing.assert_array_equal(out, np.ones((1, 1, 2, 2)))
    assert dx[0, 0, 1, 1] == 10.0 and dx.sum() == 10.0


def test_nan_propagates_like_torch():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = np.nan
    out, cache = max_pool2d_forward(x, 2)
    assert np.isnan(out[0, 0, 0, 0]) and not np.isnan(out[0, 0, 1, 1])
    assert cache.argmax[0, 0, 0, 0] == 0


# --------------------------------------------------------------------------- 2. functional
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_non_contiguous_inputs(dtype, rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    out, cache = max_pool2d_forward(non_contiguous(x), (3, 2), (2, 1))
    ref_out, ref_argmax = ref.max_pool2d_forward(x, (3, 2), (2, 1))
    np.testing.assert_array_equal(out, ref_out)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = max_pool2d_backward(non_contiguous(dout), cache)
    np.testing.assert_allclose(dx, ref.max_pool2d_backward(dout, ref_argmax, x.shape), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_stride_defaults_to_kernel_and_floors(dtype, rng):
    x = rng.standard_normal((2, 3, 9, 7)).astype(dtype)
    out, _ = max_pool2d_forward(x, 3)
    explicit, _ = max_pool2d_forward(x, (3, 3), (3, 3))
    assert out.shape == (2, 3, 3, 2) and out.dtype == dtype
    np.testing.assert_array_equal(out, explicit)
    np.testing.assert_array_equal(out[:, :, 1, 1], x[:, :, 3:6, 3:6].max(axis=(2, 3)))


@pytest.mark.parametrize(
    "shape, kwargs, error, fragments",
    [
        ((3, 5, 5), {"kernel_size": 2}, ValueError, ["max_pool2d", "(N, C, H, W)", "(3, 5, 5)"]),
        ((2, 3, 1, 5), {"kernel_size": 2}, ValueError, ["max_pool2d", "(2, 3, 1, 5)", "(2, 2)"]),
        ((2, 3, 5, 5), {"kernel_size": 0}, ValueError, ["max_pool2d", "kernel_size"]),
        ((2, 3, 5, 5), {"kernel_size": 2, "stride": (1, 0)}, ValueError, ["max_pool2d", "stride"]),
    ],
)
def test_max_pool2d_forward_errors(shape, kwargs, error, fragments):
    with pytest.raises(error) as info:
        max_pool2d_forward(np.zeros(shape), **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
    with pytest.raises(TypeError, match="max_pool2d.*int64"):
        max_pool2d_forward(np.zeros((2, 3, 4, 4), np.int64), 2)


def test_max_pool2d_backward_errors():
    out, cache = max_pool2d_forward(np.zeros((2, 3, 4, 4), np.float32), 2)
    with pytest.raises(ValueError, match=r"max_pool2d.*\(2, 3, 2, 2\).*\(2, 3, 2, 3\)"):
        max_pool2d_backward(np.zeros((2, 3, 2, 3), np.float32), cache)
    with pytest.raises(TypeError, match="max_pool2d.*float32.*float64"):
        max_pool2d_backward(np.zeros(out.shape), cache)


# --------------------------------------------------------------------------- 3. MaxPool2D
@pytest.mark.parametrize(
    "kernel_size, stride, shape",
    [(2, None, (2, 3, 6, 6)), (3, 2, (2, 2, 7, 8)), ((2, 3), (1, 2), (1, 2, 5, 7))],
    ids=["2x2", "overlap", "non-square"],
)
def test_maxpool2d_layer_gradients(kernel_size, stride, shape, rng):
    # distinct values at least 1e-3 apart, so a 1e-6 perturbation never changes a window's winner
    x = rng.permutation(np.prod(shape)).reshape(shape) * 1e-2
    check_module_gradients(MaxPool2D(kernel_size, stride), x, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_layer_preserves_dtype(dtype, rng):
    layer = MaxPool2D(2)
    x = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    out = layer(x)
    dx = layer.backward(np.ones_like(out))
    assert out.dtype == dtype and dx.dtype == dtype
    assert out.shape == (2, 3, 3, 2) and dx.shape == x.shape
    assert layer.parameters() == []


def test_maxpool2d_layer_errors():
    layer = MaxPool2D(3, stride=2)
    with pytest.raises(RuntimeError, match="MaxPool2D.*before forward"):
        layer.backward(np.zeros((1, 1, 1, 1)))
    with pytest.raises(ValueError, match=r"MaxPool2D.*\(N, C, H, W\).*\(4, 5, 6\)"):
        layer(np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match=r"MaxPool2D.*\(1, 2, 2, 6\).*\(3, 3\)"):
        layer(np.zeros((1, 2, 2, 6)))
    with pytest.raises(TypeError, match="MaxPool2D.*int32"):
        layer(np.zeros((1, 2, 6, 6), np.int32))
    out = layer(np.zeros((1, 2, 6, 6)))
    with pytest.raises(ValueError, match=r"MaxPool2D.*\(1, 2, 2, 2\).*\(1, 2, 3, 3\)"):
        layer.backward(np.zeros((1, 2, 3, 3)))
    with pytest.raises(TypeError, match="MaxPool2D.*float64.*float32"):
        layer.backward(np.zeros(out.shape, np.float32))
    with pytest.raises(ValueError, match="MaxPool2D.*kernel_size"):
        MaxPool2D((2, 0))
    with pytest.raises(ValueError, match="MaxPool2D.*stride"):
        MaxPool2D(2, stride=-1)


def test_maxpool2d_layer_repr():
    assert repr(MaxPool2D(2)) == "MaxPool2D(kernel_size=(2, 2), stride=(2, 2))"
    assert repr(MaxPool2D((3, 2), 1)) == "MaxPool2D(kernel_size=(3, 2), stride=(1, 1))"


# --------------------------------------------------------------------------- 4. PyTorch

@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_max_pool2d_matches_torch(geometry, dtype, ties, torch, rng):
    n, c, h, w, kernel, stride = geometry
    shape = (n, c, h, w)
    x = input_with_ties(shape, dtype, rng) if ties else rng.standard_normal(shape).astype(dtype)
    layer = MaxPool2D(kernel, stride)
    out = layer(x)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout)

    xt = torch.tensor(x, requires_grad=True)
    outt, indices = torch.nn.functional.max_pool2d(xt, kernel, stride, return_indices=True)
    outt.backward(torch.tensor(dout))
    assert_close_to_torch(out, outt, rtol=0, atol=0, what="out")
    np.testing.assert_array_equal(layer._cache.argmax, indices.numpy())
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    assert_close_to_torch(dx, xt.grad, rtol=rtol, atol=0, what="dx")


@pytest.mark.parametrize("width", [8, 35], ids=["short-rows", "long-rows"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride", [((2, 2), (2, 2)), ((3, 3), (1, 1)), ((3, 2), (2, 1))])
def test_max_pool2d_nan_matches_torch(kernel, stride, dtype, width, torch, rng):
    """NaNs propagate, and the index is the one PyTorch's CPU kernel reports (the last NaN)."""
    x = rng.standard_normal((2, 3, 9, width)).astype(dtype)
    x[rng.random(x.shape) < 0.15] = np.nan
    out, cache = max_pool2d_forward(x, kernel, stride)
    outt, indices = torch.nn.functional.max_pool2d(torch.tensor(x), kernel, stride,
                                                   return_indices=True)
    assert np.isnan(out).any() and not np.isnan(out).all()
    np.testing.assert_array_equal(out, outt.numpy())  # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(cache.argmax, indices.numpy())


# --------------------------------------------------------------------------- 5. fast paths, out=
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (1, 2, 7, 5), (3, 4, 2, 3)])
def test_2x2_kernel_nan_anywhere_matches_reference(shape, dtype, rng):
    """The specialized 2x2/stride-2 kernel: NaN in every window position, alone and in pairs."""
    x = input_with_ties(shape, dtype, rng)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, size=flat.size // 4, replace=False)] = np.nan
    out, cache = max_pool2d_forward(x, 2)
    width = shape[3]
    for n, c, oh, ow in np.ndindex(out.shape):  # the rule: the last NaN, else the first max
        positions = [(2 * oh + i) * width + 2 * ow + j for i in (0, 1) for j in (0, 1)]
        values = flat.reshape(shape)[n, c].reshape(-1)[positions]
        nans = [p for p, v in zip(positions, values) if np.isnan(v)]
        expected = nans[-1] if nans else positions[int(np.argmax(values))]
        assert cache.argmax[n, c, oh, ow] == expected
        np.testing.assert_array_equal(out[n, c, oh, ow], x[n, c].reshape(-1)[expected])


@pytest.mark.parametrize("dtype", DTYPES)
def test_2x2_kernel_odd_sizes_match_reference(dtype, rng):
    x = input_with_ties((3, 5, 13, 10), dtype, rng)
    out_fast, argmax_fast = np.empty((3, 5, 6, 5), dtype), np.empty((3, 5, 6, 5), np.int64)
    _pool.max_pool2d_forward(x, out_fast, argmax_fast, 2, 2, 2, 2, 2)
    ref_out, ref_argmax = ref.max_pool2d_forward(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(out_fast, ref_out)
    np.testing.assert_array_equal(argmax_fast, ref_argmax)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_out_arguments(dtype, rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    out = np.full((2, 3, 3, 3), np.nan, dtype)
    argmax = np.full((2, 3, 3, 3), -1, np.int64)
    result, cache = max_pool2d_forward(x, 2, out=out, argmax=argmax)
    assert result is out and cache.argmax is argmax
    ref_out, ref_argmax = ref.max_pool2d_forward(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(out, ref_out)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    assert max_pool2d_backward(dout, cache, out=dx) is dx
    np.testing.assert_array_equal(dx, ref.max_pool2d_backward(dout, ref_argmax, x.shape))
    for bad in (np.empty((2, 3, 3, 3), np.float16), np.empty((2, 3, 3, 4), dtype),
                np.empty((2, 3, 3, 6), dtype)[..., ::2]):
        with pytest.raises(ValueError, match="max_pool2d.*out"):
            max_pool2d_forward(x, 2, out=bad)
    with pytest.raises(ValueError, match="max_pool2d.*argmax"):
        max_pool2d_forward(x, 2, argmax=np.empty((2, 3, 3, 3), np.int32))
    with pytest.raises(ValueError, match="max_pool2d.*out"):
        max_pool2d_backward(dout, cache, out=np.empty(x.shape, np.float16))


def test_maxpool2d_layer_never_overwrites_a_kept_output(rng):
    layer = MaxPool2D(2)
    x1, x2 = rng.standard_normal((2, 2, 8, 8, 8))  # 64 KiB+ arrays come from the buffer pool
    x1, x2 = np.repeat(x1, 8, axis=1), np.repeat(x2, 8, axis=1)
    y1 = layer(x1)
    kept = y1.copy()
    dx1 = layer.backward(np.ones_like(y1))
    kept_dx = dx1.copy()
    y2 = layer(x2)
    dx2 = layer.backward(np.ones_like(y2))
    np.testing.assert_array_equal(y1, kept)
    np.testing.assert_array_equal(dx1, kept_dx)
    np.testing.assert_array_equal(y2, ref.max_pool2d_forward(x2, (2, 2), (2, 2))[0])
    assert dx2.shape == x2.shape


def test_maxpool2d_layer_input_grad_false_returns_none(rng):
    layer = MaxPool2D(2)
    y = layer(rng.standard_normal((2, 3, 4, 4)))
    assert layer.backward(np.ones_like(y), input_grad=False) is None
    with pytest.raises(ValueError, match="MaxPool2D"):
        layer.backward(np.ones((2, 3, 3, 3)), input_grad=False)


# ------------------------------------------------ aliasing and the cache's argmax (issue 10)
def test_max_pool2d_out_and_argmax_must_be_memory_of_their_own(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    with pytest.raises(ValueError, match="^max_pool2d: out must not overlap input"):
        max_pool2d_forward(x, 1, out=x)
    with pytest.raises(ValueError, match="^max_pool2d: argmax must not overlap input"):
        max_pool2d_forward(x, 2, argmax=x.reshape(-1)[:24].view(np.int64).reshape(2, 3, 2, 2))
    buffer = np.empty(24)
    with pytest.raises(ValueError, match="^max_pool2d: out must not overlap argmax"):
        max_pool2d_forward(x, 2, out=buffer.reshape(2, 3, 2, 2),
                           argmax=buffer.view(np.int64).reshape(2, 3, 2, 2))
    out, cache = max_pool2d_forward(x, 1)  # output and gradient have the input's shape
    dout = rng.standard_normal(out.shape)
    with pytest.raises(ValueError, match="^max_pool2d: out must not overlap gradient"):
        max_pool2d_backward(dout, cache, out=dout)
    with pytest.raises(ValueError, match="^max_pool2d: out must not overlap argmax"):
        max_pool2d_backward(dout, cache, out=cache.argmax.view(np.float64))
    np.testing.assert_array_equal(max_pool2d_backward(dout, cache), dout)  # cache intact


@pytest.mark.parametrize("bad", [-1, 16, 10 ** 12, -(10 ** 12)])
def test_a_changed_argmax_is_refused_before_the_kernel_writes_with_it(rng, bad):
    """The general backward kernel writes dx at the argmax indices: an index outside the
    (H, W) plane (the caller's own argmax array, changed after the forward) is a ValueError,
    not a write outside dx. The 2x2 kernel only compares indices, so it stays in bounds."""
    x = rng.standard_normal((2, 3, 4, 4))
    argmax = np.empty((2, 3, 2, 2), np.int64)
    out, cache = max_pool2d_forward(x, 3, stride=1, argmax=argmax)
    argmax[1, 2, 0, 1] = bad
    with pytest.raises(ValueError, match=r"^max_pool2d: the cache's argmax holds indices outside "
                                         r"\[0, 16\) \(H\*W of the input\)"):
        max_pool2d_backward(np.ones_like(out), cache)
    out, cache = max_pool2d_forward(x, 2, argmax=argmax)
    argmax[...] = bad
    assert max_pool2d_backward(np.ones_like(out), cache).shape == x.shape


@pytest.mark.parametrize("field, value", [
    ("argmax", lambda c: c.argmax.astype(np.int32)),
    ("argmax", lambda c: c.argmax[:, :, :1]),
    ("argmax", lambda c: np.asfortranarray(c.argmax)),
    ("argmax", lambda c: c.argmax.tolist()),
    ("x_shape", lambda c: (2, 3, 5, 5)[:3]),
    ("x_shape", lambda c: (1, 3, 6, 6)),
    ("two_by_two", lambda c: True),
])
def test_max_pool2d_backward_refuses_a_changed_cache(rng, field, value):
    x = rng.standard_normal((2, 3, 6, 6))
    out, cache = max_pool2d_forward(x, 3, stride=1)
    changed = cache._replace(**{field: value(cache)})
    with pytest.raises(ValueError, match=r"^max_pool2d: the cache's "):
        max_pool2d_backward(np.ones_like(out), changed)
    with pytest.raises(TypeError, match="max_pool2d: expected the cache returned by "
                                        "max_pool2d_forward, got tuple"):
        max_pool2d_backward(np.ones_like(out), tuple(cache))


@pytest.mark.parametrize("geometry", [((2, 3, 8, 8), 2, None), ((2, 3, 9, 9), 3, 2)])
def test_no_grad_forward_computes_no_indices(geometry, rng):
    """Under minidl.no_grad the forward pass writes the maxima only (the same output), allocates
    no int64 indices, and its cache cannot be backpropagated; MaxPool2D likewise."""
    import minidl
    shape, kernel, stride = geometry
    x = rng.standard_normal(shape).astype(np.float32)
    expected, cache = max_pool2d_forward(x, kernel, stride)
    assert cache.argmax is not None
    with minidl.no_grad():
        out, cache = max_pool2d_forward(x, kernel, stride)
        layer_out = MaxPool2D(kernel, stride)(x)
        given = np.empty(expected.shape, np.int64)  # indices asked for explicitly are written
        _, kept = max_pool2d_forward(x, kernel, stride, argmax=given)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(layer_out, expected)
    assert cache.argmax is None and kept.argmax is given
    with pytest.raises(RuntimeError, match="max_pool2d: backward after a forward pass under "
                                           "minidl.no_grad"):
        max_pool2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(max_pool2d_backward(np.ones_like(out), kept),
                                  max_pool2d_backward(np.ones_like(out), max_pool2d_forward(
                                      x, kernel, stride)[1]))

