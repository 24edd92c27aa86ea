"""Fuzzing minidl.functional.pooling (hypothesis): random shapes, windows, strides, dtypes,
layouts, ties and NaNs against the NumPy reference, forward and backward (issue 10). Max pooling
must be exact: a max and its index involve no rounding, and the backward kernels add the
gradients of a shared winner in the reference's order. Average pooling (also padded, with and
without counting the padding, and global) must agree with the float64 reference to rounding."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import minidl.reference.functional as reffn
from fuzz_helpers import DTYPES, FUZZ, LAYOUTS, assert_within, relayout, values
from minidl.functional.pooling import (avg_pool2d_backward, avg_pool2d_forward,
                                       global_avg_pool2d_backward, global_avg_pool2d_forward,
                                       max_pool2d_backward, max_pool2d_forward)
from minidl.reference import pooling as ref


@st.composite
def pool_cases(draw):
    """Batch 1-8, channels 1-8, sizes 1-12, a window that fits (2x2 with stride 2, the
    specialized kernel, a third of the time), stride 1-4, values with ties or NaNs at times."""
    n, c = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    if h >= 2 and w >= 2 and draw(st.integers(0, 2)) == 0:
        kernel, stride = (2, 2), (2, 2)
    else:
        kernel = (draw(st.integers(1, h)), draw(st.integers(1, w)))
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dtype = draw(DTYPES)
    x = values(draw, (n, c, h, w), dtype, ties=draw(st.booleans()))
    if draw(st.integers(0, 3)) == 0:  # NaNs win their windows, as in PyTorch
        mask = np.random.default_rng(draw(st.integers(0, 99))).random(x.shape) < 0.1
        x[mask] = np.nan
    return relayout(x, draw(LAYOUTS)), kernel, stride


@FUZZ
@given(pool_cases(), st.data())
def test_max_pool2d_agrees_with_the_reference(case, data):
    x, kernel, stride = case
    out, cache = max_pool2d_forward(x, kernel, stride)
    expected, argmax = ref.max_pool2d_forward(np.ascontiguousarray(x), kernel, stride)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(cache.argmax, argmax)
    dout = relayout(values(data.draw, out.shape, x.dtype), data.draw(LAYOUTS))
    dx = max_pool2d_backward(dout, cache)
    np.testing.assert_array_equal(dx, ref.max_pool2d_backward(np.ascontiguousarray(dout), argmax,
                                                              x.shape))
    assert dx.dtype == x.dtype and dx.flags.c_contiguous


@st.composite
def avg_pool_cases(draw):
    """Batch 1-8, channels 1-8, sizes 1-12, any window that fits the padded input (up to twice
    the size), padding up to half the window (PyTorch's limit), stride 1-4."""
    n, c = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    size, kernel, padding = [], [], []
    for _ in range(2):
        s = draw(st.integers(1, 12))
        k = draw(st.integers(1, 2 * s))
        size.append(s)
        kernel.append(k)
        padding.append(draw(st.integers(max(0, -(-(k - s) // 2)), k // 2)))  # k <= s + 2p
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    x = values(draw, (n, c, *size), draw(DTYPES), ties=draw(st.booleans()))
    return relayout(x, draw(LAYOUTS)), tuple(kernel), stride, tuple(padding), draw(st.booleans())


@FUZZ
@given(avg_pool_cases(), st.data())
def test_avg_pool2d_agrees_with_the_reference(case, data):
    x, kernel, stride, padding, include = case
    out, cache = avg_pool2d_forward(x, kernel, stride, padding, include)
    x64 = x.astype(np.float64)
    expected, ref_cache = reffn.avg_pool2d_forward(x64, kernel, stride, padding, include)
    bound, _ = reffn.avg_pool2d_forward(np.abs(x64), kernel, stride, padding, include)
    assert_within(out, expected, bound, x.dtype, "out")
    dout = relayout(values(data.draw, out.shape, x.dtype), data.draw(LAYOUTS))
    dx = avg_pool2d_backward(dout, cache)
    dout64 = dout.astype(np.float64)
    assert_within(dx, reffn.avg_pool2d_backward(dout64, ref_cache),
                  reffn.avg_pool2d_backward(np.abs(dout64), ref_cache), x.dtype, "dx")
    assert dx.flags.c_contiguous


@FUZZ
@given(pool_cases(), st.data())
def test_global_avg_pool2d_agrees_with_the_reference(case, data):
    x = case[0]
    out, cache = global_avg_pool2d_forward(x)
    x64 = x.astype(np.float64)
    expected, ref_cache = reffn.global_avg_pool2d_forward(x64)
    finite = np.isfinite(x64).all(axis=(2, 3))  # NaN planes: NaN on both sides
    np.testing.assert_array_equal(np.isnan(out), ~finite)
    bound, _ = reffn.global_avg_pool2d_forward(np.nan_to_num(np.abs(x64)))
    assert_within(np.where(finite, out, 0).astype(x.dtype), np.where(finite, expected, 0), bound,
                  x.dtype, "out")
    dout = relayout(values(data.draw, out.shape, x.dtype), data.draw(LAYOUTS))
    dout64 = dout.astype(np.float64)
    assert_within(global_avg_pool2d_backward(dout, cache),
                  reffn.global_avg_pool2d_backward(dout64, ref_cache),
                  reffn.global_avg_pool2d_backward(np.abs(dout64), ref_cache), x.dtype, "dx")
