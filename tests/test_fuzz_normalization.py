"""Fuzzing minidl.functional.normalization (hypothesis), forward and backward, over random ranks,
shapes, dtypes, layouts and parameters (issue 10): BatchNorm in training and eval mode against
the NumPy reference; LayerNorm, GroupNorm and InstanceNorm against the reference backend; the
SyncBatchNorm pieces over random shards against one BatchNorm."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import minidl
from fuzz_helpers import DTYPES, FUZZ, LAYOUTS, relayout, values
from minidl.functional import normalization as F
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


@st.composite
def sample_norm_cases(draw):
    """A sample norm (layer, group or instance) with its extra argument, on (N, C), (N, C, L) or
    (N, C, H, W) with N, C 1-8 and L, H, W 1-12, per-sample offsets up to 1e3."""
    name = draw(st.sampled_from(["layer_norm", "group_norm", "instance_norm"]))
    rank = draw(st.sampled_from([3, 4] if name == "instance_norm" else [2, 3, 4]))
    shape = (draw(st.integers(1, 8)), draw(st.integers(1, 8))) + tuple(
        draw(st.integers(1, 12)) for _ in range(rank - 2))
    if name == "instance_norm" and np.prod(shape[2:]) < 2:
        shape = shape[:2] + (2,) + shape[3:]
    if name == "layer_norm":
        extra = shape[draw(st.integers(1, rank - 1)):]  # normalized_shape: 1 to rank-1 dims
        param_shape = extra
    elif name == "group_norm":
        extra = draw(st.sampled_from([g for g in range(1, shape[1] + 1) if shape[1] % g == 0]))
        param_shape = (shape[1],)
    else:
        extra, param_shape = None, (shape[1],)
    dtype = draw(DTYPES)
    rows = shape[:1] + (1,) * (rank - 1)
    x = values(draw, shape, np.float64) * np.exp(values(draw, rows, np.float64)) + values(
        draw, rows, np.float64) * draw(st.sampled_from([0.0, 1.0, 1e3]))
    weight = values(draw, param_shape, dtype) if draw(st.booleans()) else None
    bias = values(draw, param_shape, dtype) if draw(st.booleans()) else None
    return name, extra, relayout(x.astype(dtype), draw(LAYOUTS)), weight, bias


def _sample_norm(name, extra, x, weight, bias):
    args = () if extra is None else (extra,)
    return getattr(F, f"{name}_forward")(x, *args, weight, bias, eps=EPS)


@FUZZ
@given(sample_norm_cases(), st.data())
def test_sample_norms_agree_with_the_reference_backend(case, data):
    name, extra, x, weight, bias = case
    dtype = x.dtype
    out, cache = _sample_norm(name, extra, x, weight, bias)
    as64 = (lambda a: None if a is None else a.astype(np.float64))
    with minidl.backend("reference"):  # the textbook formulas, in float64
        expected, ref_cache = _sample_norm(name, extra, x.astype(np.float64), as64(weight),
                                           as64(bias))
    assert out.dtype == dtype and out.shape == x.shape
    tol = 2e-5 if dtype == np.float32 else 1e-9
    scale = 1 + max(np.abs(weight).max() if weight is not None else 1,
                    np.abs(bias).max() if bias is not None else 0)
    np.testing.assert_allclose(out, expected, rtol=tol, atol=10 * tol * scale)

    dout = relayout(values(data.draw, x.shape, dtype), data.draw(LAYOUTS))
    backward = getattr(F, f"{name}_backward")
    dx, dweight, dbias = backward(dout, cache)
    edx, edweight, edbias = backward(dout.astype(np.float64), ref_cache)
    assert dx.dtype == dtype and dx.shape == x.shape
    # dx's terms cancel: scale by the largest term, |dout| * |gamma| / sqrt(var + eps)
    gamma = 1 if weight is None else np.abs(weight).max()
    dx_scale = np.abs(edx).max() + np.abs(dout).max() * gamma / np.sqrt(ref_cache.var.min() + EPS)
    np.testing.assert_allclose(dx, edx, rtol=10 * tol, atol=10 * tol * dx_scale)
    for ours, theirs, given_ in ((dweight, edweight, weight), (dbias, edbias, bias)):
        if given_ is None:
            assert ours is None
        else:
            assert ours.shape == given_.shape
            np.testing.assert_allclose(ours, theirs, rtol=10 * tol,
                                       atol=10 * tol * np.abs(dout).sum())


@FUZZ
@given(bn_cases(), st.data())
def test_sync_batchnorm_pieces_over_random_shards_equal_one_batchnorm(case, data):
    """Each shard's statistics, combined; each shard normalized with the global ones; gradient
    sums added up; each shard's dx: the results of one training-mode BatchNorm on the batch."""
    x, gamma, _, _ = case
    n = x.shape[0]
    if n < 2 or x.size // x.shape[1] < 2:
        x = np.concatenate([x, x[::-1] + 1])  # training needs more than one value per channel
        n = x.shape[0]
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=3))) if n > 1 else []
    bounds = [0] + cuts + [n]
    dout = values(data.draw, x.shape, x.dtype)
    shards = [(x[a:b], dout[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    count, mean, var = F.combine_batch_norm_stats(*zip(*[F.batch_norm_stats(xs) for xs, _ in shards]))
    assert count == x.size // x.shape[1]
    sums = [F.batch_norm_grad_sums(d, xs, mean) for xs, d in shards]
    sum_dy, sum_dy_xmu = sum(s[0] for s in sums), sum(s[1] for s in sums)
    dx = np.concatenate([F.batch_norm_input_grad(d, xs, mean, var, gamma, sum_dy, sum_dy_xmu,
                                                 count, eps=EPS) for xs, d in shards])
    expected, cache = batch_norm_forward(x, gamma, None, training=True, eps=EPS)
    out = np.concatenate([batch_norm_forward(xs, gamma, None, mean, var, training=False,
                                             eps=EPS)[0] for xs, _ in shards])
    edx, edweight, _ = batch_norm_backward(dout, cache)
    tol = 1e-4 if x.dtype == np.float32 else 1e-9
    g = 1 if gamma is None else np.abs(gamma).max()
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * (1 + g) * 10)
    invstd = 1 / np.sqrt(var + EPS)
    dx_scale = np.abs(edx).max() + np.abs(dout).max() * g * invstd.max()
    np.testing.assert_allclose(dx, edx, rtol=tol, atol=10 * tol * dx_scale)
    channel_sums = dout.astype(np.float64).sum(axis=tuple(i for i in range(x.ndim) if i != 1))
    np.testing.assert_allclose(sum_dy, channel_sums, rtol=0, atol=1e-12 * np.abs(dout).sum())
    if gamma is not None:
        np.testing.assert_allclose(sum_dy_xmu * invstd, edweight, rtol=10 * tol,
                                   atol=10 * tol * np.abs(dout).sum() * invstd.max())
