"""Fuzzing minidl.functional.normalization (hypothesis): BatchNorm over random ranks, shapes,
dtypes, layouts, statistics and affine parameters, in training and eval mode, against the NumPy
reference, forward and backward (issue 10)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fuzz_helpers import DTYPES, FUZZ, LAYOUTS, relayout, values
from minidl.functional.normalization import batch_norm_backward, batch_norm_forward
from minidl.reference import normalization as ref

EPS = 1e-5


@st.composite
def bn_cases(draw):
    """(N, C), (N, C, L) or (N, C, H, W) with N, C 1-8 and L, H, W 1-12 (more than one value
    per channel when training), channels shifted and scaled (means up to 1e3 from 0)."""
    training = draw(st.booleans())
    rank = draw(st.sampled_from([2, 3, 4]))
    shape = (draw(st.integers(1, 8)), draw(st.integers(1, 8))) + tuple(
        draw(st.integers(1, 12)) for _ in range(rank - 2))
    if training and np.prod(shape) // shape[1] < 2:
        shape = (2,) + shape[1:]
    dtype = draw(DTYPES)
    channels = (1, shape[1]) + (1,) * (rank - 2)
    shift = values(draw, channels, np.float64) * draw(st.sampled_from([0.0, 1.0, 1e3]))
    x = (values(draw, shape, np.float64) * np.exp(values(draw, channels, np.float64)) + shift)
    gamma = values(draw, (shape[1],), dtype) if draw(st.booleans()) else None
    beta = values(draw, (shape[1],), dtype) if draw(st.booleans()) else None
    return relayout(x.astype(dtype), draw(LAYOUTS)), gamma, beta, training


@FUZZ
@given(bn_cases(), st.data())
def test_batch_norm_agrees_with_the_reference(case, data):
    x, gamma, beta, training = case
    dtype, channels = x.dtype, x.shape[1]
    x64 = x.astype(np.float64)
    g64 = np.ones(channels) if gamma is None else gamma.astype(np.float64)
    b64 = np.zeros(channels) if beta is None else beta.astype(np.float64)
    running_mean = values(data.draw, (channels,), dtype)
    running_var = np.exp(values(data.draw, (channels,), dtype)).astype(dtype)
    saved_mean, saved_var = running_mean.copy(), running_var.copy()
    out, cache = batch_norm_forward(x, gamma, beta, running_mean, running_var, training,
                                    momentum=0.25, eps=EPS)
    mean, var = ref.batch_stats(x64) if training else (saved_mean, saved_var)
    expected = ref.batch_norm_forward(x64, g64, b64, mean, var, EPS)
    tol = 2e-5 if dtype == np.float32 else 1e-9
    scale = np.abs(g64).reshape((1, channels) + (1,) * (x.ndim - 2))
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * (1 + scale.max()) * 10)
    if training:  # running statistics: PyTorch's momentum and the unbiased variance
        m = x.size // channels
        np.testing.assert_allclose(running_mean, 0.75 * saved_mean + 0.25 * mean, rtol=tol,
                                   atol=tol)
        np.testing.assert_allclose(running_var, 0.75 * saved_var + 0.25 * var * m / (m - 1),
                                   rtol=tol, atol=tol)
    else:
        np.testing.assert_array_equal(running_mean, saved_mean)

    dout = relayout(values(data.draw, x.shape, dtype), data.draw(LAYOUTS))
    dx, dweight, dbias = batch_norm_backward(dout, cache)
    if training:
        grads = ref.batch_norm_backward_train(dout.astype(np.float64), x64, g64, EPS)
    else:
        grads = ref.batch_norm_backward_eval(dout.astype(np.float64), x64, g64, saved_mean,
                                             saved_var, EPS)
    # dx's terms cancel (its exact value can be far below its terms): scale by the largest
    dx_scale = np.abs(grads[0]).max() + np.abs(dout).max() * np.abs(g64).max() / np.sqrt(
        (var if training else saved_var).min() + EPS)
    np.testing.assert_allclose(dx, grads[0], rtol=tol, atol=10 * tol * dx_scale)
    assert dx.dtype == dtype and dx.shape == x.shape
    for ours, theirs, given_ in ((dweight, grads[1], gamma), (dbias, grads[2], beta)):
        if given_ is None:
            assert ours is None
        else:
            np.testing.assert_allclose(ours, np.ravel(theirs), rtol=tol,
                                       atol=10 * tol * np.abs(dout).sum(axis=tuple(
                                           i for i in range(x.ndim) if i != 1)).max())
