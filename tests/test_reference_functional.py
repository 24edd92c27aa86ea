"""The textbook references (minidl.reference.functional) against the compiled ops and numerically.

Sections:
  1. the contract: same signatures as minidl.functional; caches of the reference's own types
  2. conv2d: forward and all gradients vs the compiled op (float32/float64, strides, padding,
     odd sizes, 1x1 and 5x5 kernels), input_grad, out=, numerical gradients
  3. batch_norm: train/eval, (N, C) / (N, C, L) / (N, C, H, W), running statistics, hard
     statistics, numerical gradients
  4. max_pool2d: ties, overlaps, NaNs, out=/argmax=, numerical gradients
  5. relu, softmax, linear
  6. a whole small network of references, gradient-checked end to end
"""
import inspect

import numpy as np
import pytest

import minidl.functional as compiled
import minidl.reference.functional as ref
from helpers import assert_close, numerical_grad

DTYPES = [np.float32, np.float64]

OPS = ["conv2d_forward", "conv2d_backward", "batch_norm_forward", "batch_norm_backward",
       "max_pool2d_forward", "max_pool2d_backward", "relu_forward", "relu_backward",
       "softmax_forward", "softmax_backward", "linear_forward", "linear_backward",
       "layer_norm_forward", "layer_norm_backward", "group_norm_forward", "group_norm_backward",
       "instance_norm_forward", "instance_norm_backward",
       "avg_pool2d_forward", "avg_pool2d_backward", "global_avg_pool2d_forward",
       "global_avg_pool2d_backward", "dropout_forward", "dropout_backward"]


def assert_gradient(analytic, f, array, dout, what):
    """``analytic`` equals the central-difference gradient of ``sum(f() * dout)`` (float64)."""
    np.testing.assert_allclose(analytic, numerical_grad(f, array, dout), rtol=1e-6, atol=1e-8,
                               err_msg=what)


# --------------------------------------------------------------------------- 1. the contract
@pytest.mark.parametrize("name", OPS)
def test_same_signature_as_the_compiled_op(name):
    """The functional layer can call the reference with the arguments it was given."""
    assert inspect.signature(getattr(ref, name)) == inspect.signature(getattr(compiled, name))


def test_forward_caches_are_reference_types_with_shape_and_dtype(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    forwards = [
        ref.conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)), padding=1),
        ref.batch_norm_forward(x),
        ref.max_pool2d_forward(x, 2),
        ref.relu_forward(x),
        ref.softmax_forward(x),
        ref.linear_forward(x.reshape(2, -1), rng.standard_normal((5, 108))),
        ref.layer_norm_forward(x, (6, 6)),
        ref.group_norm_forward(x, 3),
        ref.instance_norm_forward(x),
        ref.avg_pool2d_forward(x, 3, 2, 1),
        ref.dropout_forward(x, 0.5, True, np.random.default_rng(0)),
    ]
    for out, cache in forwards:
        assert isinstance(cache, ref.CACHE_TYPES) and isinstance(cache, tuple)
        assert cache.out_shape == out.shape and cache.dtype == out.dtype
    assert len({type(cache) for _, cache in forwards}) == len(ref.CACHE_TYPES)
    # a compiled cache is never mistaken for a reference one
    for _, cache in [compiled.conv2d_forward(x, rng.standard_normal((4, 3, 3, 3))),
                     compiled.batch_norm_forward(x), compiled.max_pool2d_forward(x, 2),
                     compiled.relu_forward(x), compiled.softmax_forward(x),
                     compiled.layer_norm_forward(x, (6, 6)), compiled.group_norm_forward(x, 3),
                     compiled.instance_norm_forward(x),
                     compiled.avg_pool2d_forward(x, 2), compiled.global_avg_pool2d_forward(x),
                     compiled.dropout_forward(x, 0.5, True, np.random.default_rng(0))]:
        assert not isinstance(cache, ref.CACHE_TYPES)


# --------------------------------------------------------------------------- 2. conv2d
# (N, C_in, H, W, C_out, kernel, stride, padding)
CONV_GEOMETRIES = [
    (2, 3, 7, 7, 4, (3, 3), (1, 1), (1, 1)),
    (2, 3, 8, 6, 5, (3, 3), (2, 2), (1, 1)),     # stride 2
    (3, 2, 9, 7, 3, (5, 5), (1, 1), (2, 2)),     # 5x5, "same" padding
    (2, 4, 5, 6, 3, (1, 1), (1, 1), (0, 0)),     # 1x1
    (1, 2, 11, 10, 2, (4, 3), (3, 2), (1, 0)),   # odd sizes, unequal strides
    (2, 1, 6, 13, 3, (1, 5), (2, 3), (0, 2)),
    (1, 2, 3, 3, 2, (2, 2), (1, 1), (3, 3)),     # padding larger than the kernel
]
CONV_IDS = [f"x{g[:4]}-o{g[4]}-k{g[5]}-s{g[6]}-p{g[7]}".replace(" ", "") for g in CONV_GEOMETRIES]


def conv_case(geometry, dtype, rng):
    n, c_in, h, w, c_out, kernel, stride, padding = geometry
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    weight = rng.standard_normal((c_out, c_in) + kernel).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    return x, weight, bias, stride, padding


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=CONV_IDS)
def test_conv2d_matches_compiled(geometry, dtype, rng):
    x, weight, bias, stride, padding = conv_case(geometry, dtype, rng)
    out, cache = ref.conv2d_forward(x, weight, bias, stride, padding)
    expected_out, expected_cache = compiled.conv2d_forward(x, weight, bias, stride, padding)
    assert out.dtype == dtype
    assert_close(out, expected_out, dtype, "out")

    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = ref.conv2d_backward(dout, cache)
    expected = compiled.conv2d_backward(dout, expected_cache)
    for name, ours, theirs in zip(("dx", "dweight", "dbias"), grads, expected):
        assert ours.dtype == dtype, name
        assert_close(ours, theirs, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_without_bias_input_grad_and_out(dtype, rng):
    x, weight, _, stride, padding = conv_case(CONV_GEOMETRIES[1], dtype, rng)
    given = np.full((2, 5, 4, 3), np.nan, dtype)
    out, cache = ref.conv2d_forward(x, weight, None, stride, padding, out=given)
    assert out is given
    assert_close(out, compiled.conv2d_forward(x, weight, None, stride, padding)[0], dtype)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dweight, dbias = ref.conv2d_backward(dout, cache)
    assert dbias is None and dx.shape == x.shape
    none, dweight_only, _ = ref.conv2d_backward(dout, cache, input_grad=False)
    assert none is None
    np.testing.assert_array_equal(dweight_only, dweight)


def test_conv2d_cache_does_not_see_later_changes_to_the_input(rng):
    x, weight, bias, stride, padding = conv_case(CONV_GEOMETRIES[3], np.float64, rng)
    out, cache = ref.conv2d_forward(x, weight, bias, stride, padding)
    dout = rng.standard_normal(out.shape)
    before = ref.conv2d_backward(dout, cache)[1]
    x[...] = 0
    np.testing.assert_array_equal(ref.conv2d_backward(dout, cache)[1], before)


@pytest.mark.parametrize("geometry", [CONV_GEOMETRIES[i] for i in (1, 2, 4)],
                         ids=[CONV_IDS[i] for i in (1, 2, 4)])
def test_conv2d_numerical_gradients(geometry, rng):
    x, weight, bias, stride, padding = conv_case(geometry, np.float64, rng)
    out, cache = ref.conv2d_forward(x, weight, bias, stride, padding)
    dout = rng.standard_normal(out.shape)
    dx, dweight, dbias = ref.conv2d_backward(dout, cache)

    def f():
        return ref.conv2d_forward(x, weight, bias, stride, padding)[0]

    assert_gradient(dx, f, x, dout, "dx")
    assert_gradient(dweight, f, weight, dout, "dweight")
    assert_gradient(dbias, f, bias, dout, "dbias")


# --------------------------------------------------------------------------- 3. batch_norm
BN_SHAPES = [(6, 3), (5, 4, 7), (4, 3, 5, 5), (3, 2, 1, 7), (1, 5, 3, 3), (2, 3, 7, 1)]


def bn_case(shape, dtype, rng):
    c = shape[1]
    shift = rng.uniform(-3, 3, size=(1, c) + (1,) * (len(shape) - 2))
    x = (rng.standard_normal(shape) * 2 + shift).astype(dtype)
    weight = rng.uniform(0.5, 1.5, c).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    running = (rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype))
    return x, weight, bias, running


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_matches_compiled(shape, dtype, training, affine, rng):
    x, weight, bias, (running_mean, running_var) = bn_case(shape, dtype, rng)
    if not affine:
        weight = bias = None
    ours_mean, ours_var = running_mean.copy(), running_var.copy()
    out, cache = ref.batch_norm_forward(x, weight, bias, ours_mean, ours_var, training,
                                        momentum=0.3, eps=1e-3)
    expected_out, expected_cache = compiled.batch_norm_forward(
        x, weight, bias, running_mean, running_var, training, momentum=0.3, eps=1e-3)
    assert out.dtype == dtype
    assert_close(out, expected_out, dtype, "out")
    # the running statistics: updated alike in training (unbiased variance), untouched in eval
    assert_close(ours_mean, running_mean, dtype, "running_mean")
    assert_close(ours_var, running_var, dtype, "running_var")

    dout = rng.standard_normal(shape).astype(dtype)
    dx, dweight, dbias = ref.batch_norm_backward(dout, cache)
    expected_dx, expected_dweight, expected_dbias = compiled.batch_norm_backward(dout,
                                                                                 expected_cache)
    assert dx.dtype == dtype
    assert_close(dx, expected_dx, dtype, "dx")
    if affine:
        assert dweight.dtype == dbias.dtype == np.float64  # as the compiled op
        assert_close(dweight, expected_dweight, dtype, "dweight")
        assert_close(dbias, expected_dbias, dtype, "dbias")
    else:
        assert dweight is None and dbias is None and expected_dweight is None


def test_batch_norm_running_statistics_follow_pytorch_convention(rng):
    x = rng.standard_normal((4, 3, 2, 5)) * 3 + 1
    running_mean, running_var = np.full(3, 0.5), np.full(3, 2.0)
    ref.batch_norm_forward(x, running_mean=running_mean, running_var=running_var, momentum=0.25)
    m = 4 * 2 * 5
    batch_mean = x.mean(axis=(0, 2, 3))
    unbiased = x.var(axis=(0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(running_mean, 0.75 * 0.5 + 0.25 * batch_mean, rtol=1e-14)
    np.testing.assert_allclose(running_var, 0.75 * 2.0 + 0.25 * unbiased, rtol=1e-14)


def test_batch_norm_eval_uses_a_copy_of_the_running_statistics(rng):
    x, weight, bias, (running_mean, running_var) = bn_case((4, 3, 2, 2), np.float64, rng)
    out, cache = ref.batch_norm_forward(x, weight, bias, running_mean, running_var, False)
    dout = rng.standard_normal(x.shape)
    before = ref.batch_norm_backward(dout, cache)[0]
    running_var[...] = 100.0
    np.testing.assert_array_equal(ref.batch_norm_backward(dout, cache)[0], before)


def test_batch_norm_hard_statistics_and_out(rng):
    """Mean 1e4 with std 1e-2 in float32 normalizes correctly; a constant channel gives beta."""
    x = (1e4 + 1e-2 * rng.standard_normal((16, 2, 4, 4))).astype(np.float32)
    x[:, 1] = np.float32(3.25)
    beta = np.array([0.0, 0.5], np.float32)
    given = np.empty_like(x)
    out, _ = ref.batch_norm_forward(x, None, beta, out=given)
    assert out is given
    x0 = x[:, 0].astype(np.float64)
    exact = (x0 - x0.mean()) / np.sqrt(x0.var() + 1e-5)
    np.testing.assert_allclose(out[:, 0], exact, rtol=1e-5, atol=1e-5)
    assert_close(out, compiled.batch_norm_forward(x, None, beta)[0], np.float32)
    np.testing.assert_array_equal(out[:, 1], np.float32(0.5))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 4)])
def test_batch_norm_numerical_gradients(shape, training, rng):
    x, weight, bias, (running_mean, running_var) = bn_case(shape, np.float64, rng)
    dout = rng.standard_normal(shape)
    # eval reads the running statistics; training would update them on every call of f
    running = (None, None) if training else (running_mean, running_var)

    def f():
        return ref.batch_norm_forward(x, weight, bias, *running, training)[0]

    _, cache = ref.batch_norm_forward(x, weight, bias, running_mean.copy(), running_var.copy(),
                                      training)
    dx, dweight, dbias = ref.batch_norm_backward(dout, cache)
    assert_gradient(dx, f, x, dout, "dx")
    assert_gradient(dweight, f, weight, dout, "dweight")
    assert_gradient(dbias, f, bias, dout, "dbias")


# --------------------------------------------------------------------------- 4. max_pool2d
# (N, C, H, W, kernel, stride)
POOL_GEOMETRIES = [
    (2, 3, 6, 6, (2, 2), (2, 2)),
    (2, 2, 7, 5, (2, 2), (2, 2)),    # odd sizes: the last row/column is dropped
    (1, 3, 9, 8, (3, 3), (2, 2)),    # overlapping windows
    (2, 2, 7, 8, (3, 2), (2, 3)),
    (1, 2, 5, 5, (5, 5), (1, 1)),    # one window
    (2, 1, 4, 6, (1, 1), (1, 2)),
]
POOL_IDS = [f"x{g[:4]}-k{g[4]}-s{g[5]}".replace(" ", "") for g in POOL_GEOMETRIES]


def with_ties(shape, dtype, rng):
    """Values from a small set, so most windows hold their maximum more than once."""
    return rng.integers(-2, 3, size=shape).astype(dtype)


@pytest.mark.parametrize("values", ["distinct", "ties", "nans"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", POOL_GEOMETRIES, ids=POOL_IDS)
def test_max_pool2d_matches_compiled(geometry, dtype, values, rng):
    n, c, h, w, kernel, stride = geometry
    if values == "distinct":
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
    else:
        x = with_ties((n, c, h, w), dtype, rng)
    if values == "nans":
        x.reshape(-1)[rng.choice(x.size, x.size // 4, replace=False)] = np.nan
    out, cache = ref.max_pool2d_forward(x, kernel, stride)
    expected_out, expected_cache = compiled.max_pool2d_forward(x, kernel, stride)
    np.testing.assert_array_equal(out, expected_out)  # a max is exact, NaN where PyTorch's is
    np.testing.assert_array_equal(cache.argmax, expected_cache.argmax)  # the same winners
    assert cache.argmax.dtype == np.int64 and cache.x_shape == x.shape

    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = ref.max_pool2d_backward(dout, cache)
    assert dx.dtype == dtype
    assert_close(dx, compiled.max_pool2d_backward(dout, expected_cache), dtype, "dx")


def test_max_pool2d_first_maximum_wins_and_overlaps_add():
    x = np.array([[[[1.0, 3.0, 3.0],
                    [3.0, 0.0, 2.0],
                    [0.0, 3.0, 1.0]]]])
    out, cache = ref.max_pool2d_forward(x, 2, 1)
    np.testing.assert_array_equal(out[0, 0], [[3.0, 3.0], [3.0, 3.0]])
    # windows (0, 1) and (1, 0) hold two 3s each: the first in row-major order wins
    np.testing.assert_array_equal(cache.argmax[0, 0], [[1, 1], [3, 7]])
    dx = ref.max_pool2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0, 2, 0], [1, 0, 0], [0, 1, 0]])


def test_max_pool2d_out_and_argmax_arguments(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    out, argmax = np.full((2, 3, 3, 3), np.nan), np.full((2, 3, 3, 3), -1, np.int64)
    result, cache = ref.max_pool2d_forward(x, 2, out=out, argmax=argmax)
    assert result is out and cache.argmax is argmax
    dx = np.full(x.shape, np.nan)
    assert ref.max_pool2d_backward(np.ones_like(out), cache, out=dx) is dx
    np.testing.assert_array_equal(dx.reshape(2, 3, 3, 2, 3, 2).sum(axis=(3, 5)), 1.0)


def test_max_pool2d_numerical_gradient(rng):
    x = rng.permutation(2 * 2 * 7 * 8).reshape(2, 2, 7, 8) * 0.1  # distinct, far apart: no ties
    out, cache = ref.max_pool2d_forward(x, (3, 2), (2, 3))
    dout = rng.standard_normal(out.shape)
    assert_gradient(ref.max_pool2d_backward(dout, cache),
                    lambda: ref.max_pool2d_forward(x, (3, 2), (2, 3))[0], x, dout, "dx")


# --------------------------------------------------------------------------- 5. relu, softmax, linear
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_compiled_including_zero_and_nan(dtype, rng):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x[0, 0, :3] = [0.0, -0.0, np.nan]
    out, cache = ref.relu_forward(x)
    expected_out, expected_cache = compiled.relu_forward(x)
    np.testing.assert_array_equal(out, expected_out)
    dout = rng.standard_normal(x.shape).astype(dtype)
    given = np.empty_like(x)
    dx = ref.relu_backward(dout, cache, out=given)
    assert dx is given and dx.dtype == dtype
    np.testing.assert_array_equal(dx, compiled.relu_backward(dout, expected_cache))
    assert dx[0, 0, 0] == 0 and dx[0, 0, 2] == dout[0, 0, 2]  # 0 at x = 0; NaN passes it on


def test_relu_numerical_gradient(rng):
    x = rng.standard_normal((4, 6))
    x[np.abs(x) < 0.05] = 0.5  # no kink within the finite-difference step
    _, cache = ref.relu_forward(x)
    dout = rng.standard_normal(x.shape)
    assert_gradient(ref.relu_backward(dout, cache), lambda: ref.relu_forward(x)[0], x, dout, "dx")


@pytest.mark.parametrize("axis", [1, -1, 0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_matches_compiled_and_numerical_gradient(dtype, axis, rng):
    x = (rng.standard_normal((4, 5, 3)) * 5).astype(dtype)
    x[0, 0, 0] = 1e3 if dtype == np.float64 else 100  # exp overflows without the shift
    out, cache = ref.softmax_forward(x, axis)
    expected_out, expected_cache = compiled.softmax_forward(x, axis)
    assert_close(out, expected_out, dtype, "out")
    np.testing.assert_allclose(out.sum(axis=axis), 1, rtol=1e-5)
    dout = rng.standard_normal(x.shape).astype(dtype)
    assert_close(ref.softmax_backward(dout, cache),
                 compiled.softmax_backward(dout, expected_cache), dtype, "dx")
    if dtype == np.float64:
        x64 = rng.standard_normal((4, 5, 3))
        _, cache = ref.softmax_forward(x64, axis)
        assert_gradient(ref.softmax_backward(dout, cache),
                        lambda: ref.softmax_forward(x64, axis)[0], x64, dout, "dx")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_compiled_and_numerical_gradient(dtype, bias, rng):
    x = rng.standard_normal((5, 7)).astype(dtype)
    weight = rng.standard_normal((3, 7)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype) if bias else None
    out, cache = ref.linear_forward(x, weight, b)
    expected_out, expected_cache = compiled.linear_forward(x, weight, b)
    assert out.dtype == dtype
    assert_close(out, expected_out, dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = ref.linear_backward(dout, cache)
    for name, ours, theirs in zip(("dx", "dweight", "dbias"), grads,
                                  compiled.linear_backward(dout, expected_cache)):
        if theirs is None:
            assert ours is None, name
        else:
            assert_close(ours, theirs, dtype, name)
    assert ref.linear_backward(dout, cache, input_grad=False)[0] is None
    if dtype == np.float64:
        def f():
            return ref.linear_forward(x, weight, b)[0]
        assert_gradient(grads[0], f, x, dout, "dx")
        assert_gradient(grads[1], f, weight, dout, "dweight")
        if bias:
            assert_gradient(grads[2], f, b, dout, "dbias")


# --------------------------------------------------------------------------- 6. a whole network
def test_reference_network_gradients_end_to_end(rng):
    """conv -> BatchNorm -> ReLU -> max-pool -> linear -> softmax, all references, float64: the
    gradients of x and of the conv weight (reaching it through BatchNorm) are the numerical
    ones."""
    x = rng.standard_normal((3, 2, 6, 6))
    conv_w = rng.standard_normal((3, 2, 3, 3))
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    dense_w = rng.standard_normal((4, 27))

    def forward():
        y1, c1 = ref.conv2d_forward(x, conv_w, None, 1, 1)
        y2, c2 = ref.batch_norm_forward(y1, gamma, beta)
        y3, c3 = ref.relu_forward(y2)
        y4, c4 = ref.max_pool2d_forward(y3, 2)
        y5, c5 = ref.linear_forward(y4.reshape(3, -1), dense_w)
        y6, c6 = ref.softmax_forward(y5)
        return y6, (c1, c2, c3, c4, c5, c6)

    out, (c1, c2, c3, c4, c5, c6) = forward()
    dout = rng.standard_normal(out.shape)
    g = ref.softmax_backward(dout, c6)
    g, _, _ = ref.linear_backward(g, c5)
    g = ref.max_pool2d_backward(g.reshape(c4.argmax.shape), c4)
    g = ref.relu_backward(g, c3)
    g, _, _ = ref.batch_norm_backward(g, c2)
    dx, dconv_w, _ = ref.conv2d_backward(g, c1)
    assert_gradient(dx, lambda: forward()[0], x, dout, "dx")
    assert_gradient(dconv_w, lambda: forward()[0], conv_w, dout, "dconv_w")
