"""Fuzzing minidl.functional.pooling (hypothesis): random shapes, windows, strides, dtypes,
layouts, ties and NaNs against the NumPy reference, forward and backward (issue 10). The
results must be exact: a max and its index involve no rounding, and the backward kernels add
the gradients of a shared winner in the reference's order."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fuzz_helpers import DTYPES, FUZZ, LAYOUTS, relayout, values
from minidl.functional.pooling import max_pool2d_backward, max_pool2d_forward
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
