"""Fuzzing minidl.functional.activation (hypothesis): ReLU, softmax, sigmoid and tanh over random
shapes, dtypes, layouts and special values (NaN, +-0, +-inf, huge logits) against NumPy, forward
and backward (issue 10)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fuzz_helpers import DTYPES, FUZZ, LAYOUTS, relayout, values
from minidl.functional import activation as F
from minidl.functional.activation import (relu_backward, relu_forward, softmax_backward,
                                          softmax_forward)

SPECIAL = [np.nan, 0.0, -0.0, np.inf, -np.inf, 1e30, -1e30]


@st.composite
def arrays(draw, specials=True, min_rank=1):
    """An array of rank min_rank-4 with sizes 1-12 (up to 70,000 elements: both the one-thread
    and the threaded kernel calls), with special values at random places."""
    rank = draw(st.integers(min_rank, 4))
    shape = tuple(draw(st.integers(1, 12)) for _ in range(rank))
    if draw(st.integers(0, 4)) == 0:  # large enough for several threads
        shape = (draw(st.integers(40, 48)),) + (1,) * (rank - 1) if rank > 1 else (70_000,)
        shape = (shape[0],) + tuple(12 for _ in range(rank - 1)) if rank == 4 else shape
    dtype = draw(DTYPES)
    x = values(draw, shape, dtype)
    if specials and draw(st.booleans()):
        flat = x.reshape(-1)
        where = np.random.default_rng(draw(st.integers(0, 99))).integers(0, flat.size, 8)
        flat[where] = np.array(SPECIAL + [1.0], dtype)[:len(where)]
    return relayout(x, draw(LAYOUTS))


@FUZZ
@given(arrays(), st.data())
def test_relu_agrees_with_numpy(x, data):
    y, cache = relu_forward(x)
    expected = np.where(x < 0, np.zeros((), x.dtype), x)  # NaN stays, -0.0 stays
    assert y.tobytes() == np.ascontiguousarray(expected).tobytes()
    dout = relayout(values(data.draw, x.shape, x.dtype), data.draw(LAYOUTS))
    dx = relu_backward(dout, cache)
    np.testing.assert_array_equal(dx, np.where(y <= 0, 0, dout))  # from the output: NaN passes


@FUZZ
@given(arrays(specials=False, min_rank=2), st.sampled_from([1e-3, 1.0, 1e3]), st.data())
def test_softmax_agrees_with_numpy(x, scale, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    x = (x * scale).astype(x.dtype)
    y, cache = softmax_forward(x, axis)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    expected = e / e.sum(axis=axis, keepdims=True)
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=10 * tol)
    dout = values(data.draw, x.shape, x.dtype)
    dx = softmax_backward(dout, cache)
    d64 = dout.astype(np.float64)
    expected_dx = expected * (d64 - (d64 * expected).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(dx, expected_dx, rtol=10 * tol,
                               atol=10 * tol * np.abs(d64).max())


def _exact(op, x):
    """sigmoid or tanh in extended precision (the stable branches for sigmoid)."""
    x = x.astype(np.longdouble)
    if op == "tanh":
        return np.tanh(x)
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@FUZZ
@given(arrays(), st.sampled_from(["sigmoid", "tanh"]), st.sampled_from([1.0, 30.0, 1e3]),
       st.data())
def test_sigmoid_and_tanh_agree_with_extended_precision(x, op, scale, data):
    """No warning, no overflow for any |x|; NaN stays NaN; the output within a few ulps (its
    own dtype's) of the exact value; the gradient from the output."""
    with np.errstate(over="ignore"):
        x = (x * scale).astype(x.dtype)
    with np.errstate(all="raise"):
        y, cache = getattr(F, f"{op}_forward")(x)
    exact = _exact(op, x)
    assert y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    eps = np.finfo(x.dtype).eps
    np.testing.assert_allclose(y, exact.astype(np.float64), rtol=4 * eps, atol=eps)
    dout = relayout(values(data.draw, x.shape, x.dtype), data.draw(LAYOUTS))
    dx = getattr(F, f"{op}_backward")(dout, cache)
    y64, d64 = y.astype(np.float64), dout.astype(np.float64)
    expected = d64 * (y64 * (1 - y64) if op == "sigmoid" else 1 - y64 * y64)
    np.testing.assert_allclose(dx, expected, rtol=8 * eps, atol=8 * eps * np.abs(d64).max())
