"""Sigmoid and Tanh: stability for large |x|, dtypes, gradients (float64), PyTorch parity, errors.

(ReLU and Softmax are tested in test_layers.py and test_torch_parity.py.)
"""
import warnings

import numpy as np
import pytest

import minidl
from minidl import gradcheck
from minidl.functional import activation as F
from minidl.layers.activation import Sigmoid, Tanh
from minidl.layers.dense import Dense
from minidl.model import Sequential

from helpers import check_module_gradients

DTYPES = [np.float32, np.float64]
EXTREMES = [0.0, -0.0, 1e-8, -1e-8, 20.0, -20.0, 88.8, -88.8, 100.0, -100.0, 710.0, -710.0,
            1e30, -1e30, np.inf, -np.inf]


def _exact_sigmoid(x):
    """The logistic function in extended precision, from the two stable branches."""
    x = np.asarray(x, np.longdouble)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_is_stable_and_accurate_for_any_x(dtype):
    x = np.array(EXTREMES + list(np.linspace(-30, 30, 121)), dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):  # no overflow, no warning
        warnings.simplefilter("error")
        y, _ = F.sigmoid_forward(x)
    assert y.dtype == dtype
    expected = _exact_sigmoid(x).astype(dtype)
    finfo = np.finfo(dtype)
    np.testing.assert_allclose(y, expected, rtol=4 * finfo.eps, atol=0)  # relative, also tiny ones
    assert y[EXTREMES.index(np.inf)] == 1 and y[EXTREMES.index(-np.inf)] == 0
    assert y[EXTREMES.index(-100.0)] > 0 if dtype == np.float64 else True  # 3.7e-44, not 0
    assert np.all((y >= 0) & (y <= 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_is_stable_for_any_x(dtype):
    x = np.array(EXTREMES, dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        y, cache = F.tanh_forward(x)
        dx = F.tanh_backward(np.ones_like(x), cache)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(y, np.tanh(x))
    assert np.all(np.abs(y) <= 1) and np.all(dx >= 0)


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_nan_propagates(op):
    forward = getattr(F, f"{op}_forward")
    y, _ = forward(np.array([np.nan, 1.0], np.float32))
    assert np.isnan(y[0]) and not np.isnan(y[1])


@pytest.mark.parametrize("layer", [Sigmoid, Tanh])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_keep_the_dtype_and_shape(rng, layer, dtype):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    m = layer()
    y = m(x)
    dx = m.backward(rng.standard_normal(x.shape).astype(dtype))
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == x.shape


@pytest.mark.parametrize("layer", [Sigmoid, Tanh])
def test_gradients(rng, layer):
    check_module_gradients(layer(), rng.standard_normal((3, 4, 5)) * 3, rng)
    model = Sequential(Dense(4, 5, rng=rng), layer(), Dense(5, 3, rng=rng)).astype(np.float64)
    check_module_gradients(model, rng.standard_normal((6, 4)), rng)


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_functional_gradcheck(rng, op):
    pair = (getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward"))
    gradcheck(pair, (rng.standard_normal((4, 6)) * 4,), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_same_result_on_both_backends(rng, op):
    """Sigmoid and tanh have no reference twin: the NumPy formula runs on both backends."""
    x = rng.standard_normal((3, 4))
    forward = getattr(F, f"{op}_forward")
    with minidl.backend("reference"):
        on_reference, _ = forward(x)
    np.testing.assert_array_equal(on_reference, forward(x)[0])


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_out_arguments(rng, op):
    forward, backward = getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward")
    x = rng.standard_normal((3, 4)).astype(np.float32)
    out = np.empty_like(x)
    y, cache = forward(x, out=out)
    assert y is out
    dx_out = np.empty_like(x)
    assert backward(np.ones_like(x), cache, out=dx_out) is dx_out
    with pytest.raises(ValueError, match=f"{op}: out must not overlap the input"):
        forward(x, out=x)
    with pytest.raises(ValueError, match=rf"{op}: expected out to be a writable C-contiguous float32 array of shape \(3, 4\)"):
        forward(x, out=np.empty((4, 3), np.float32))


@pytest.mark.parametrize("layer", [Sigmoid, Tanh])
def test_errors_name_the_layer(layer):
    m = layer()
    name = layer.__name__
    with pytest.raises(TypeError, match=f"{name}: expected input dtype float32 or float64, got int64"):
        m(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match=f"{name}: expected input to be a numpy.ndarray, got list"):
        m([1.0, 2.0])
    with pytest.raises(RuntimeError, match=f"{name}: backward called before forward"):
        m.backward(np.zeros(3, np.float32))
    m(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=rf"{name}: expected gradient of shape \(2, 3\)"):
        m.backward(np.zeros((3, 2), np.float32))
    assert m.backward(np.zeros((2, 3), np.float32), input_grad=False) is None


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_backward_refuses_a_foreign_cache_and_an_out_sharing_memory(rng, op):
    """Issue 10: the cache holds the output, which the backward reads while it writes ``out``."""
    forward, backward = getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward")
    other = "tanh" if op == "sigmoid" else "sigmoid"
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y, cache = forward(x)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    with pytest.raises(TypeError, match=f"^{op}: expected the cache returned by {op}_forward, got NoneType"):
        backward(dout, None)
    with pytest.raises(TypeError, match=f"^{op}: expected the cache returned by {op}_forward, got "):
        backward(dout, getattr(F, f"{other}_forward")(x)[1])  # the other op's cache
    with pytest.raises(TypeError, match=f"^{op}: expected the cache's y .* to be a numpy.ndarray"):
        backward(dout, cache._replace(y=[1.0]))
    with pytest.raises(ValueError, match=f"^{op}: out must not overlap the cached output"):
        backward(dout, cache, out=y)
    with pytest.raises(ValueError, match=f"^{op}: out must not overlap gradient"):
        backward(dout, cache, out=dout)
    expected = backward(dout, cache)
    np.testing.assert_array_equal(backward(dout, cache, out=np.empty_like(x)), expected)


@pytest.mark.parametrize("layer", [Sigmoid, Tanh])
def test_empty_0d_and_strided_inputs_work(rng, layer):
    """As in PyTorch: an empty batch gives an empty output and gradient; 0-d arrays and any
    memory layout work (the same bits as the contiguous input)."""
    m = layer()
    assert m(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert m.backward(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert m(np.array(0.5)).shape == ()
    x = rng.standard_normal((4, 6))
    dout = rng.standard_normal((4, 6))
    expected = m(x), m.backward(dout)
    got = m(np.asfortranarray(x)[:, ::-1][:, ::-1]), m.backward(np.repeat(dout, 2, axis=1)[:, ::2])
    for ours, theirs in zip(got, expected):
        assert ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("layer", [Sigmoid, Tanh])
def test_modifying_the_output_in_place_before_backward_is_a_runtime_error(rng, layer):
    """The backward pass reads the output (as PyTorch's), so changing it is an error there too."""
    m = layer()
    y = m(rng.standard_normal((3, 4)).astype(np.float32))
    y += 1
    with pytest.raises(RuntimeError, match=f"^{layer.__name__}: the output of the last forward "
                                           f"pass was modified in place before backward"):
        m.backward(np.ones_like(y))


# ---------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["Sigmoid", "Tanh"])
def test_matches_torch(rng, name, dtype, torch):
    x = np.concatenate([rng.standard_normal(500) * 5, np.array(EXTREMES[:-2])]).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    ours = getattr(minidl.layers, name)()
    y = ours(x)
    dx = ours.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn, name)()(xt)
    yt.backward(torch.tensor(dout))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=4 * eps, atol=4 * eps * 1e-3)
    # 1 - y^2 and y (1 - y) amplify y's last-bit differences relative to themselves where |y|
    # nears 1 (or 0): an absolute error of a few eps * |dout| either way
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=16 * eps,
                               atol=4 * eps * np.abs(dout).max())


# --------------------------------------------------------------------------- add (residual sum)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_add_is_numpys_sum_and_relu_bit_for_bit(rng, dtype, relu, backend):
    # 3 * 2**16 + 5 values: several blocks of the kernel (2 threads), strided and NaN inputs
    a = rng.standard_normal((3, 2 ** 16 + 2)).astype(dtype)[:, 1:-1]
    b = np.asfortranarray(rng.standard_normal(a.shape).astype(dtype))
    a[0, 0], b[0, 1] = np.nan, np.nan
    a[0, 2], b[0, 2] = -0.0, -0.0  # a sum of -0.0
    with minidl.backend(backend):
        out = F.add(a, b, relu=relu)
        expected = a + b
        if relu:
            expected, _ = F.relu_forward(expected)
    assert out.flags.c_contiguous and out.dtype == dtype and out.shape == a.shape
    assert np.array_equal(out, expected, equal_nan=True)
    assert np.array_equal(np.signbit(out), np.signbit(expected))


def test_add_refuses_what_would_broadcast_or_mix_dtypes(rng):
    a = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^Residual: expected operands of the same shape, got "
                                         r"\(4, 3\) and \(1, 3\)"):
        F.add(a, a[:1], layer="Residual")
    with pytest.raises(TypeError, match="^add: expected operands of the same dtype, got float32 "
                                        "and float64"):
        F.add(a, a.astype(np.float64))
    with pytest.raises(TypeError, match="^add: expected the second operand dtype float32 or "
                                        "float64, got int64"):
        F.add(a, np.zeros((4, 3), np.int64))
