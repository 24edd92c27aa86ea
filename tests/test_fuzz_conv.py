"""Fuzzing minidl.functional.conv (hypothesis): random shapes, kernels, strides, paddings,
dtypes, layouts and every method that applies, against the NumPy reference, forward and
backward (issue 10). No example may crash, and each must agree with the reference within a
rounding bound (see fuzz_helpers.assert_within)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fuzz_helpers import DTYPES, FUZZ, LAYOUTS, assert_within, relayout, values
from minidl.functional.conv import conv2d_backward, conv2d_forward
from minidl.reference import conv as ref


@st.composite
def conv_cases(draw, method, wide=False):
    """A valid convolution for ``method``: batch 1-8, channels 1-8, sizes 1-12 (at least the
    kernel, with padding), padding 0-3, kernel 1-7 (3x3 for Winograd), stride 1-4 (1 for the
    direct and Winograd methods). ``wide``: 32-40 input and output channels and padding 0-5,
    where im2col's products skip the padded taps (border classes, a packed weight, ``dcols``
    by class)."""
    n, c_in, c_out = (draw(st.integers(1, 8)) for _ in range(3))
    if wide:
        n = draw(st.integers(1, 4))
        c_in, c_out = draw(st.sampled_from([32, 33, 40])), draw(st.sampled_from([32, 37]))
    padding = (draw(st.integers(0, 5 if wide else 3)), draw(st.integers(0, 5 if wide else 3)))
    if method == "winograd":
        kernel = (3, 3)
    else:
        kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    h = draw(st.integers(max(1, kernel[0] - 2 * padding[0]), 12))
    w = draw(st.integers(max(1, kernel[1] - 2 * padding[1]), 12))
    if method in ("direct", "winograd"):
        stride = (1, 1)
    else:
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dtype = draw(DTYPES)
    x = relayout(values(draw, (n, c_in, h, w), dtype), draw(LAYOUTS))
    weight = values(draw, (c_out, c_in) + kernel, dtype)
    bias = values(draw, (c_out,), dtype) if draw(st.booleans()) else None
    return x, weight, bias, stride, padding


def _check(case, method, input_grad, data):
    x, weight, bias, stride, padding = case
    dtype = x.dtype
    out, cache = conv2d_forward(x, weight, bias, stride, padding, method=method)
    assert cache.method == method
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)
    expected = ref.conv2d_forward(x64, w64, b64, stride, padding)
    bound = ref.conv2d_forward(np.abs(x64), np.abs(w64), None if bias is None else np.abs(b64),
                               stride, padding)
    assert_within(out, expected, bound, dtype, f"forward ({cache.method})")

    dout = relayout(values(data.draw, out.shape, dtype), data.draw(LAYOUTS))
    dx, dweight, dbias = conv2d_backward(dout, cache, input_grad=input_grad)
    grads = ref.conv2d_backward(dout.astype(np.float64), x64, w64, bias is not None, stride,
                                padding)
    bounds = ref.conv2d_backward(np.abs(dout.astype(np.float64)), np.abs(x64), np.abs(w64),
                                 bias is not None, stride, padding)
    assert_within(dweight, grads[1], bounds[1], dtype, "dweight")
    if bias is None:
        assert dbias is None
    else:
        assert_within(dbias, grads[2], bounds[2], dtype, "dbias")
    if input_grad:
        assert_within(dx, grads[0], bounds[0], dtype, "dx")
    else:
        assert dx is None


@FUZZ
@given(conv_cases("direct"), st.booleans(), st.data())
def test_direct_conv2d_agrees_with_the_reference(case, input_grad, data):
    _check(case, "direct", input_grad, data)


@FUZZ
@given(conv_cases("winograd"), st.booleans(), st.data())
def test_winograd_conv2d_agrees_with_the_reference(case, input_grad, data):
    _check(case, "winograd", input_grad, data)


@FUZZ
@given(conv_cases("im2col"), st.booleans(), st.data())
def test_im2col_conv2d_agrees_with_the_reference(case, input_grad, data):
    _check(case, "im2col", input_grad, data)


@FUZZ
@given(conv_cases("im2col", wide=True), st.booleans(), st.data())
def test_im2col_conv2d_with_many_channels_agrees_with_the_reference(case, input_grad, data):
    _check(case, "im2col", input_grad, data)


@FUZZ
@given(conv_cases("unfold"), st.booleans(), st.data())
def test_unfold_conv2d_agrees_with_the_reference(case, input_grad, data):
    _check(case, "unfold", input_grad, data)
