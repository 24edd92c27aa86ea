"""LayerNorm, GroupNorm, InstanceNorm and per-activation BatchNorm: the compiled ops against the
textbook references, float64 gradient checks, float32 numerics, statistics and state, errors.

PyTorch parity is in test_normalization_torch.py; BatchNorm itself in test_normalization.py.
"""
import re

import numpy as np
import pytest

import minidl
from minidl import gradcheck
from minidl._kernels import _batchnorm as kernel
from minidl.functional import normalization as F
from minidl.layers.conv import Conv2D
from minidl.layers.dense import Dense
from minidl.layers.normalization import (GroupNorm, InstanceNorm, InstanceNorm1D, InstanceNorm2D,
                                         LayerNorm, PerActivationBatchNorm)
from minidl.model import Sequential
from minidl.reference.functional import normalization as ref

from helpers import assert_close, check_module_gradients

DTYPES = [np.float32, np.float64]


def _input(rng, shape, dtype, shift=3.0):
    """Random values with a different offset per channel (axis 1) and per sample."""
    offsets = rng.uniform(-shift, shift, size=shape[:2] + (1,) * (len(shape) - 2))
    return (rng.standard_normal(shape) * rng.uniform(0.5, 2.0) + offsets).astype(dtype)


def _affine(rng, shape, dtype=np.float64):
    return rng.uniform(0.5, 1.5, shape).astype(dtype), rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------- the ops under test
# (name, shape, forward(x, weight, bias, **kw) -> (out, cache), backward, parameter shape)
LN_CASES = [((6, 10), (10,)), ((2, 3, 5), (5,)), ((2, 3, 5), (3, 5)), ((3, 4, 3, 5), (4, 3, 5)),
            ((4, 7), (4, 7))]
GN_CASES = [((3, 6, 4, 5), 3), ((3, 6, 4, 5), 1), ((3, 6, 4, 5), 6), ((5, 4), 2),
            ((2, 8, 7), 4), ((1, 4, 1, 1), 2)]
IN_CASES = [(4, 3, 5), (2, 3, 4, 5), (1, 2, 3, 3), (3, 5, 2)]


def _ln(normalized_shape):
    def forward(x, w=None, b=None, **kw):
        return F.layer_norm_forward(x, normalized_shape, w, b, **kw)
    return forward, F.layer_norm_backward


def _gn(groups):
    def forward(x, w=None, b=None, **kw):
        return F.group_norm_forward(x, groups, w, b, **kw)
    return forward, F.group_norm_backward


def _in(x, w=None, b=None, **kw):
    return F.instance_norm_forward(x, w, b, **kw)


CASES = ([("layer_norm", s, _ln(ns), ns) for s, ns in LN_CASES]
         + [("group_norm", s, _gn(g), (s[1],)) for s, g in GN_CASES]
         + [("instance_norm", s, (_in, F.instance_norm_backward), (s[1],)) for s in IN_CASES])
IDS = [f"{name}-{shape}-{param}" for name, shape, _, param in CASES]


def _reference_of(forward):
    """Run ``forward`` under the reference backend (the textbook twin)."""
    def run(*args, **kw):
        with minidl.backend("reference"):
            return forward(*args, **kw)
    return run


# ---------------------------------------------------------------------- compiled vs reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("name, shape, ops, param_shape", CASES, ids=IDS)
def test_compiled_matches_reference(rng, name, shape, ops, param_shape, affine, dtype):
    forward, backward = ops
    x = _input(rng, shape, dtype)
    w, b = _affine(rng, param_shape)
    w = w if affine in ("both", "weight") else None
    b = b if affine in ("both", "bias") else None
    dy = rng.standard_normal(shape).astype(dtype)

    out, cache = forward(x, w, b)
    ref_out, ref_cache = _reference_of(forward)(x, w, b)
    assert isinstance(ref_cache, ref.SampleNormCache) and not isinstance(cache, ref.SampleNormCache)
    assert out.dtype == dtype and out.shape == shape
    assert_close(out, ref_out, dtype, "out")

    dx, dw, db = backward(dy, cache)
    rdx, rdw, rdb = backward(dy, ref_cache)  # a reference cache runs the reference backward
    assert dx.dtype == dtype
    assert_close(dx, rdx, dtype, "dx")
    for got, expected, present in ((dw, rdw, w is not None), (db, rdb, b is not None)):
        if present:
            assert got.shape == param_shape
            assert_close(got, expected, dtype, "parameter gradient")
        else:
            assert got is None and expected is None


@pytest.mark.parametrize("name, shape, ops, param_shape", CASES, ids=IDS)
def test_non_contiguous_input_and_gradient(rng, name, shape, ops, param_shape):
    forward, backward = ops
    x = _input(rng, shape, np.float64)
    dy = rng.standard_normal(shape)
    w, b = _affine(rng, param_shape)
    out, cache = forward(np.asfortranarray(x), w, b)
    expected, expected_cache = forward(x, w, b)
    np.testing.assert_array_equal(out, expected)
    for got, want in zip(backward(np.asfortranarray(dy), cache), backward(dy, expected_cache)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------- gradients (float64)
SMALL = [(case, i) for case, i in zip(CASES, IDS) if np.prod(case[1]) <= 130]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("name, shape, ops, param_shape", [c for c, _ in SMALL],
                         ids=[i for _, i in SMALL])
def test_functional_gradcheck(rng, name, shape, ops, param_shape, affine):
    forward, backward = ops
    x = _input(rng, shape, np.float64)
    w, b = _affine(rng, param_shape) if affine else (None, None)
    report = gradcheck((forward, backward), (x, w, b), rtol=1e-5, atol=1e-7,
                       seed=int(rng.integers(2**32)))
    assert [c.name for c in report.checks] == (["x", "w", "b"] if affine else ["x"])


def _layer_cases():
    return [
        (lambda: LayerNorm(5, dtype=np.float64), (4, 5)),
        (lambda: LayerNorm((3, 2, 3), dtype=np.float64), (3, 3, 2, 3)),
        (lambda: LayerNorm((2, 3), bias=False, dtype=np.float64), (2, 4, 2, 3)),
        (lambda: LayerNorm(6, elementwise_affine=False, dtype=np.float64), (3, 6)),
        (lambda: GroupNorm(2, 4, dtype=np.float64), (3, 4, 2, 3)),
        (lambda: GroupNorm(1, 3, dtype=np.float64), (2, 3, 5)),
        (lambda: GroupNorm(3, 3, affine=False, dtype=np.float64), (2, 3, 2, 2)),
        (lambda: GroupNorm(2, 6, dtype=np.float64), (4, 6)),
        (lambda: InstanceNorm(3, affine=True, dtype=np.float64), (2, 3, 2, 4)),
        (lambda: InstanceNorm(2, dtype=np.float64), (3, 2, 5)),
        (lambda: InstanceNorm(3, affine=True, track_running_stats=True, dtype=np.float64),
         (2, 3, 3, 3)),
        (lambda: PerActivationBatchNorm((2, 2, 3), dtype=np.float64), (5, 2, 2, 3)),
        (lambda: PerActivationBatchNorm(4, affine=False, dtype=np.float64), (6, 4)),
    ]


@pytest.mark.parametrize("index", range(len(_layer_cases())))
def test_layer_gradcheck_in_train_and_eval(rng, index):
    make, shape = _layer_cases()[index]
    layer = make()
    for p in layer.parameters():
        p.data[...] = rng.uniform(0.5, 1.5, p.shape) if p is getattr(layer, "weight", None) \
            else rng.standard_normal(p.shape)
    if getattr(layer, "track_running_stats", False):  # meaningful running estimates for eval
        for _ in range(3):
            layer(_input(rng, shape, np.float64))
    report = gradcheck(layer, _input(rng, shape, np.float64), rtol=1e-5, atol=1e-7,
                       seed=int(rng.integers(2**32)))
    assert {c.mode for c in report.checks} == {"train", "eval"}


@pytest.mark.parametrize("norm", [lambda: GroupNorm(2, 4), lambda: InstanceNorm(4, affine=True),
                                  lambda: LayerNorm((4, 5, 4))])
def test_gradients_through_a_convolution_before_the_norm(rng, norm):
    model = Sequential(Conv2D(2, 4, kernel_size=3, padding=1, bias=True, rng=rng),
                       norm()).astype(np.float64)
    check_module_gradients(model, rng.standard_normal((2, 2, 5, 4)), rng)


def test_gradients_per_activation_batchnorm_after_dense(rng):
    model = Sequential(Dense(5, 6, rng=rng), PerActivationBatchNorm(6)).astype(np.float64)
    model[1].weight.data[:] = rng.uniform(0.5, 1.5, 6)
    check_module_gradients(model, rng.standard_normal((4, 5)), rng)


# ---------------------------------------------------------------------- float32 numerics
def _segments(name, y):
    """The values that share statistics, one per row."""
    n = y.shape[0]
    return {"layer": y.reshape(n, -1), "group": y.reshape(n * 2, -1),
            "instance": y.reshape(n * y.shape[1], -1)}[name]


def _norm_layer(name, c, eps, dtype=np.float32):
    if name == "layer":
        return LayerNorm((c, 6, 6), eps=eps, dtype=dtype)
    if name == "group":
        return GroupNorm(2, c, eps=eps, dtype=dtype)
    return InstanceNorm(c, eps=eps, affine=True, dtype=dtype)


@pytest.mark.parametrize("name", ["layer", "group", "instance"])
def test_large_mean_small_std_float32_normalizes_correctly(rng, name):
    x = (1e4 + 1e-2 * rng.standard_normal((4, 4, 6, 6))).astype(np.float32)
    y = _norm_layer(name, 4, eps=1e-12)(x)
    # the exact float64 normalization of the same float32 values
    rows = _segments(name, x.astype(np.float64))
    mean = rows.mean(axis=1, keepdims=True)
    std = np.sqrt(((rows - mean) ** 2).mean(axis=1, keepdims=True))
    np.testing.assert_allclose(_segments(name, y), (rows - mean) / std, atol=1e-4)
    np.testing.assert_allclose(_segments(name, y).std(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(_segments(name, y).mean(axis=1), 0.0, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.1, -3.7e5, 1e4 + 0.5])
@pytest.mark.parametrize("name", ["layer", "group", "instance"])
def test_constant_segment_gives_exactly_beta(rng, name, value, dtype):
    x = rng.standard_normal((3, 4, 6, 6)).astype(dtype)
    layer = _norm_layer(name, 4, eps=1e-5, dtype=dtype)
    layer.weight.data[...] = rng.uniform(0.5, 2.0, layer.weight.shape)
    layer.bias.data[...] = rng.standard_normal(layer.bias.shape)
    if name == "layer":
        x[1] = value  # the whole second sample
        constant, beta = (slice(1, 2),), layer.bias.data[None]
    elif name == "group":
        x[1, 2:] = value  # sample 1, group 1 (channels 2 and 3)
        constant, beta = (1, slice(2, 4)), layer.bias.data[2:4, None, None]
    else:
        x[1, 3] = value  # sample 1, channel 3
        constant, beta = (1, 3), layer.bias.data[3]
    y = layer(x)
    np.testing.assert_array_equal(y[constant], np.broadcast_to(beta, y[constant].shape))
    dx = layer.backward(rng.standard_normal(x.shape).astype(dtype))
    assert np.all(np.isfinite(dx)) and all(np.all(np.isfinite(p.grad)) for p in layer.parameters())


# ---------------------------------------------------------------------- batch independence
@pytest.mark.parametrize("make", [lambda: LayerNorm((3, 4, 4)), lambda: GroupNorm(3, 3),
                                  lambda: InstanceNorm(3, affine=True)])
@pytest.mark.parametrize("training", [True, False])
def test_sample_norms_never_depend_on_the_batch(rng, make, training):
    layer = make().train(training)
    batch = _input(rng, (6, 3, 4, 4), np.float32)
    alone = layer(batch[2:3])
    np.testing.assert_array_equal(layer(batch)[2:3], alone)
    other = np.concatenate([batch[2:3], 100 * _input(rng, (4, 3, 4, 4), np.float32)])
    np.testing.assert_array_equal(layer(other)[:1], alone)


@pytest.mark.parametrize("make, shape", [
    (lambda: InstanceNorm(3, track_running_stats=True), (6, 3, 4, 4)),
    (lambda: PerActivationBatchNorm((3, 4, 4)), (6, 3, 4, 4)),
])
def test_running_estimates_make_eval_independent_of_the_batch(rng, make, shape):
    layer = make()
    for _ in range(3):
        layer(_input(rng, shape, np.float32))
    layer.eval()
    batch = _input(rng, shape, np.float32)
    alone = layer(batch[2:3])
    np.testing.assert_array_equal(layer(batch)[2:3], alone)
    np.testing.assert_array_equal(layer(np.concatenate([batch[2:3], 50 * batch[3:]]))[:1], alone)


def test_per_activation_batchnorm_depends_on_the_batch_when_training(rng):
    layer = PerActivationBatchNorm((3, 4, 4))
    batch = _input(rng, (6, 3, 4, 4), np.float32)
    assert not np.allclose(layer(batch)[:2], layer(batch[:2]))


# ---------------------------------------------------------------------- statistics
def test_per_activation_batchnorm_statistics_are_per_position_over_n(rng):
    layer = PerActivationBatchNorm((2, 3, 3), momentum=0.1, dtype=np.float64)
    x = _input(rng, (8, 2, 3, 3), np.float64)
    y = layer(x)
    mean, var = x.mean(axis=0), x.var(axis=0)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.running_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * var * 8 / 7, rtol=1e-12)
    assert layer.running_mean.shape == layer.weight.shape == (2, 3, 3)
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_instance_norm_running_stats_average_the_instances(rng, momentum):
    layer = InstanceNorm(3, momentum=momentum, track_running_stats=True, dtype=np.float64)
    x = _input(rng, (4, 3, 5, 2), np.float64)
    layer(x)
    instances = x.reshape(4, 3, -1)
    mean = instances.mean(axis=2).mean(axis=0)
    unbiased = instances.var(axis=2, ddof=1).mean(axis=0)
    np.testing.assert_allclose(layer.running_mean, momentum * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, (1 - momentum) + momentum * unbiased, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 1


def test_instance_norm_momentum_none_is_a_cumulative_average(rng):
    layer = InstanceNorm(2, momentum=None, track_running_stats=True, dtype=np.float64)
    batches = [_input(rng, (3, 2, 6), np.float64) for _ in range(4)]
    for x in batches:
        layer(x)
    means = [x.mean(axis=2).mean(axis=0) for x in batches]
    np.testing.assert_allclose(layer.running_mean, np.mean(means, axis=0), rtol=1e-12)
    assert int(layer.num_batches_tracked) == 4


def test_instance_norm_eval_uses_running_stats_only_when_tracked(rng):
    x = _input(rng, (2, 3, 8), np.float32)
    untracked = InstanceNorm(3).eval()
    np.testing.assert_array_equal(untracked(x), InstanceNorm(3)(x))  # instance statistics
    tracked = InstanceNorm(3, track_running_stats=True)
    tracked.running_mean[:] = [1, 2, 3]
    tracked.running_var[:] = [4, 5, 6]
    tracked.eval()
    expected = (x - tracked.running_mean[:, None]) / np.sqrt(tracked.running_var[:, None] + 1e-5)
    np.testing.assert_allclose(tracked(x), expected, rtol=1e-6, atol=1e-6)
    before = tracked.state_dict()
    tracked.backward(np.ones_like(x))
    for key, value in tracked.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_layer_and_group_norm_have_no_buffers_and_train_equals_eval(rng):
    for layer in (LayerNorm(4), GroupNorm(2, 4)):
        assert list(layer.state_dict()) == ["weight", "bias"]
        x = _input(rng, (3, 4), np.float32)
        np.testing.assert_array_equal(layer.train()(x), layer.eval()(x))


def test_group_norm_extremes_equal_layer_and_instance_norm(rng):
    x = _input(rng, (3, 4, 5, 5), np.float64)
    layer_norm = LayerNorm((4, 5, 5), elementwise_affine=False, dtype=np.float64)
    np.testing.assert_allclose(GroupNorm(1, 4, dtype=np.float64)(x), layer_norm(x), rtol=1e-13,
                               atol=1e-13)
    np.testing.assert_allclose(GroupNorm(4, 4, dtype=np.float64)(x),
                               InstanceNorm(4, dtype=np.float64)(x), rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------- backends and state
@pytest.mark.parametrize("index", range(len(_layer_cases())))
def test_reference_backend_equals_compiled(rng, index):
    make, shape = _layer_cases()[index]
    compiled, textbook = make(), make()
    for p, q in zip(compiled.parameters(), textbook.parameters()):
        p.data[...] = q.data[...] = rng.uniform(0.5, 1.5, p.shape)
    for step in range(3):
        x = _input(rng, shape, np.float64)
        dy = rng.standard_normal(shape)
        y, dx = compiled(x), compiled.backward(dy)
        with minidl.backend("reference"):
            ry = textbook(x)
        rdx = textbook.backward(dy)
        assert_close(y, ry, np.float64, f"out, step {step}")
        assert_close(dx, rdx, np.float64, f"dx, step {step}")
    for p, q in zip(compiled.parameters(), textbook.parameters()):
        assert_close(p.grad, q.grad, np.float64, "parameter gradient")
    for (key, a), (_, b) in zip(compiled.state_dict().items(), textbook.state_dict().items()):
        if a.dtype.kind == "f":
            assert_close(a, b, np.float64, key)


@pytest.mark.parametrize("make, shape", [
    (lambda: LayerNorm((3, 4)), (2, 3, 4)), (lambda: GroupNorm(2, 4), (2, 4, 3)),
    (lambda: InstanceNorm(3, affine=True, track_running_stats=True), (2, 3, 5)),
    (lambda: PerActivationBatchNorm((3, 2)), (4, 3, 2)),
])
def test_state_dict_round_trip_and_dtypes(rng, make, shape):
    layer = make()
    for p in layer.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    for _ in range(2):
        layer(_input(rng, shape, np.float32))
    other = make()
    other.load_state_dict(layer.state_dict())
    x = _input(rng, shape, np.float64)
    y = layer.eval()(x)
    assert y.dtype == np.float64  # the input's dtype, with float32 parameters
    np.testing.assert_array_equal(y, other.eval()(x))
    dx = layer.backward(rng.standard_normal(shape))
    assert dx.dtype == np.float64
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())


@pytest.mark.parametrize("make, shape", [
    (lambda: GroupNorm(2, 4), (3, 4, 2, 2)), (lambda: LayerNorm((4, 2)), (3, 4, 2)),
    (lambda: InstanceNorm(4, affine=True), (3, 4, 5)),
    (lambda: PerActivationBatchNorm((4, 2)), (3, 4, 2)),
])
def test_gradients_accumulate_and_input_grad_false(rng, make, shape):
    layer = make()
    x = _input(rng, shape, np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer(x)
    assert layer.backward(dy).shape == shape
    once = layer.weight.grad.copy()
    layer(x)
    assert layer.backward(dy, input_grad=False) is None
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)


def test_per_activation_batchnorm_is_batchnorm1d_on_the_flattened_input(rng):
    from minidl.layers.normalization import BatchNorm1D

    per_activation, flat = PerActivationBatchNorm((2, 3, 2)), BatchNorm1D(12)
    for _ in range(2):
        x = _input(rng, (5, 2, 3, 2), np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        np.testing.assert_array_equal(per_activation(x), flat(x.reshape(5, -1)).reshape(x.shape))
        np.testing.assert_array_equal(per_activation.backward(dy),
                                      flat.backward(dy.reshape(5, -1)).reshape(x.shape))
    np.testing.assert_array_equal(per_activation.weight.grad.ravel(), flat.weight.grad)
    np.testing.assert_array_equal(per_activation.running_var.ravel(), flat.running_var)


# ---------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_shift_backward_does_not_depend_on_the_thread_count(rng, dtype):
    r, s, l = 9, 3, 70
    dy = rng.standard_normal((r, s, l)).astype(dtype)
    x = rng.standard_normal((r, s, l)).astype(dtype)
    mean, invstd = rng.standard_normal((r, s)), rng.uniform(0.5, 2, (r, s))
    weight = rng.standard_normal((s, l))
    results = []
    for threads in (1, 2, 3):
        dxhat, dw, db = np.empty_like(dy), np.empty((s, l)), np.empty((s, l))
        kernel.scale_shift_backward(dy, x, mean, invstd, weight, dxhat, dw, db, threads)
        results.append((dxhat, dw, db))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    xhat = (x - mean[..., None]) * invstd[..., None]
    np.testing.assert_allclose(results[0][1], (dy * xhat).sum(axis=0), rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(results[0][2], dy.sum(axis=0, dtype=np.float64), rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(results[0][0], (dy * weight).astype(dtype))


def test_scale_shift_is_exact_for_zero_and_works_in_place(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    x[2] = 0
    w, b = rng.standard_normal(5), rng.standard_normal(5).astype(np.float32).astype(np.float64)
    expected = (x * w + b).astype(np.float32)
    kernel.scale_shift(x, w, b, x, 2)
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    np.testing.assert_array_equal(x[2], b.astype(np.float32))


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("layer, x, exc, match", [
    (LayerNorm((4, 5)), np.zeros((2, 4, 6), np.float32), ValueError,
     r"LayerNorm: expected input of shape \(\*, 4, 5\) \(its last 2 dimension\(s\) equal to "
     r"normalized_shape \(4, 5\)\), got shape \(2, 4, 6\)"),
    (LayerNorm(3), np.zeros((2,), np.float32), ValueError, r"LayerNorm: expected input of shape \(\*, 3\)"),
    (LayerNorm(3), np.zeros((0, 3), np.float32), ValueError, r"LayerNorm: expected input with no empty axis"),
    (LayerNorm(3), np.zeros((2, 3), np.int32), TypeError, "LayerNorm: expected input dtype float32 or float64, got int32"),
    (GroupNorm(2, 4), np.zeros((2, 6, 3, 3), np.float32), ValueError,
     r"GroupNorm: expected input of shape \(N, 4\) or \(N, 4, L\) or \(N, 4, H, W\), got shape \(2, 6, 3, 3\)"),
    (InstanceNorm(3), np.zeros((2, 3), np.float32), ValueError,
     r"InstanceNorm: expected input of shape \(N, 3, L\) or \(N, 3, H, W\), got shape \(2, 3\)"),
    (InstanceNorm(3), np.zeros((2, 4, 5), np.float32), ValueError, r"InstanceNorm: expected input of shape \(N, 3, L\)"),
    (InstanceNorm(3), np.zeros((2, 3, 1), np.float32), ValueError,
     r"InstanceNorm: expected more than 1 spatial element when training, got input of shape \(2, 3, 1\)"),
    (InstanceNorm(3).eval(), np.zeros((2, 3, 1, 1), np.float32), ValueError, "more than 1 spatial element"),
    (InstanceNorm1D(3), np.zeros((2, 3, 4, 4), np.float32), ValueError, r"InstanceNorm1D: expected input of shape \(N, 3, L\), got"),
    (InstanceNorm2D(3), np.zeros((2, 3, 4), np.float32), ValueError, r"InstanceNorm2D: expected input of shape \(N, 3, H, W\), got"),
    (PerActivationBatchNorm((3, 4)), np.zeros((2, 3, 5), np.float32), ValueError,
     r"PerActivationBatchNorm: expected input of shape \(N, 3, 4\) with N >= 1, got shape \(2, 3, 5\)"),
    (PerActivationBatchNorm(3), np.zeros((1, 3), np.float32), ValueError,
     "PerActivationBatchNorm: expected more than 1 sample per activation when training"),
])
def test_bad_input_errors_name_the_layer(layer, x, exc, match):
    with pytest.raises(exc, match=match):
        layer(x)


def test_one_spatial_element_is_fine_with_running_stats_in_eval():
    layer = InstanceNorm(3, track_running_stats=True).eval()
    assert layer(np.ones((2, 3, 1), np.float32)).shape == (2, 3, 1)
    assert PerActivationBatchNorm(3).eval()(np.ones((1, 3), np.float32)).shape == (1, 3)


@pytest.mark.parametrize("make, match", [
    (lambda: GroupNorm(4, 6), r"GroupNorm: num_channels \(6\) must be divisible by num_groups \(4\)"),
    (lambda: GroupNorm(0, 6), "GroupNorm: num_groups must be an integer >= 1, got 0"),
    (lambda: GroupNorm(2, 4, eps=0), "GroupNorm: eps must be > 0"),
    (lambda: LayerNorm(0), r"LayerNorm: normalized_shape must be an int or a non-empty tuple of ints >= 1, got 0"),
    (lambda: LayerNorm(()), "LayerNorm: normalized_shape must be"),
    (lambda: LayerNorm((3, True)), "LayerNorm: normalized_shape must be"),
    (lambda: LayerNorm("ab"), "LayerNorm: normalized_shape must be"),
    (lambda: LayerNorm(4, eps=-1), "LayerNorm: eps must be > 0"),
    (lambda: InstanceNorm(0), "InstanceNorm: num_features must be an integer >= 1"),
    (lambda: InstanceNorm(3, momentum=2), r"InstanceNorm: expected momentum \(or None\) in \[0, 1\], got 2"),
    (lambda: PerActivationBatchNorm((3, 0)), r"PerActivationBatchNorm: feature_shape must be an int or a non-empty tuple of ints >= 1, got \(3, 0\)"),
])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("call, exc, match", [
    (lambda x: F.group_norm_forward(x, 4), ValueError,
     r"group_norm: expected the number of channels to be divisible by num_groups=4, got input "
     r"of shape \(2, 6, 3\) with 6 channels"),
    (lambda x: F.group_norm_forward(x, 3, weight=np.ones(3)), ValueError,
     r"group_norm: expected weight of shape \(6,\), got \(3,\)"),
    (lambda x: F.layer_norm_forward(x, (3,), bias=np.ones(4)), ValueError,
     r"layer_norm: expected bias of shape \(3,\), got \(4,\)"),
    (lambda x: F.layer_norm_forward(x, (3,), weight=np.array(["a", "b", "c"])), TypeError,
     "layer_norm: expected weight to be an array of real numbers"),
    (lambda x: F.instance_norm_forward(x, running_mean=np.zeros(6)), ValueError,
     "instance_norm: running_mean and running_var must be given together"),
    (lambda x: F.instance_norm_forward(x, training=False), ValueError,
     "instance_norm: eval mode needs running_mean and running_var"),
    (lambda x: F.instance_norm_forward(x, eps=0), ValueError, "instance_norm: eps must be > 0"),
    (lambda x: F.layer_norm_forward(x, 3, out=np.empty((2, 6, 3))), ValueError,
     r"layer_norm: expected out to be a writable C-contiguous float32 array"),
])
def test_functional_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.zeros((2, 6, 3), np.float32))


@pytest.mark.parametrize("make, shape", [(lambda: LayerNorm(3), (2, 3)), (lambda: GroupNorm(1, 3), (2, 3)),
                                         (lambda: InstanceNorm(3), (2, 3, 4)),
                                         (lambda: PerActivationBatchNorm((3, 4)), (2, 3, 4))])
def test_backward_errors(make, shape):
    layer = make()
    name = type(layer).__name__
    with pytest.raises(RuntimeError, match=f"{name}: backward called before forward"):
        layer.backward(np.zeros(shape, np.float32))
    layer(np.ones(shape, np.float32))
    wrong = shape[::-1]
    message = f"{name}: expected gradient of shape {shape} (the output's), got shape {wrong}"
    with pytest.raises(ValueError, match=re.escape(message)):
        layer.backward(np.zeros(wrong, np.float32))
    with pytest.raises(TypeError, match=f"{name}: expected gradient dtype float32"):
        layer.backward(np.zeros(shape, np.float64))
    with minidl.no_grad():
        layer(np.ones(shape, np.float32))
    with pytest.raises(RuntimeError, match=f"{name}: backward after a forward pass under minidl.no_grad"):
        layer.backward(np.zeros(shape, np.float32))


# ---------------------------------------------------------------------- adversarial arguments
# (issue 10: every bad argument is an exception naming the layer, the expected and the received)
@pytest.mark.parametrize("make, exc, match", [
    (lambda: LayerNorm(3, eps="a"), TypeError, r"LayerNorm: expected eps to be a real number, got 'a'"),
    (lambda: LayerNorm(3, eps=float("inf")), ValueError, "LayerNorm: expected eps to be a finite number"),
    (lambda: LayerNorm(3, elementwise_affine="no"), TypeError,
     "LayerNorm: expected elementwise_affine to be True or False, got 'no'"),
    (lambda: LayerNorm(3, bias=0), TypeError, "LayerNorm: expected bias to be True or False, got 0"),
    (lambda: LayerNorm(3, dtype=np.float16), TypeError, "LayerNorm: dtype must be float32 or float64, got float16"),
    (lambda: LayerNorm((10 ** 6, 10 ** 7)), MemoryError,
     r"LayerNorm: the parameters of shape \(2, 1000000, 10000000\) \(float32\) would need"),
    (lambda: GroupNorm(2, 4, eps=None), TypeError, "GroupNorm: expected eps to be a real number, got None"),
    (lambda: GroupNorm(2, 4, affine=1), TypeError, "GroupNorm: expected affine to be True or False, got 1"),
    (lambda: GroupNorm(2, 4, dtype=np.int32), TypeError, "GroupNorm: dtype must be float32 or float64, got int32"),
    (lambda: GroupNorm(2.0, 4), ValueError, "GroupNorm: num_groups must be an integer >= 1, got 2.0"),
    (lambda: InstanceNorm(3, eps=float("nan")), ValueError, "InstanceNorm: expected eps to be a finite number"),
    (lambda: InstanceNorm(3, affine="yes"), TypeError, "InstanceNorm: expected affine to be True or False"),
    (lambda: InstanceNorm2D(3, dtype="float16"), TypeError, "InstanceNorm2D: dtype must be float32 or float64"),
    (lambda: PerActivationBatchNorm((3, 4), momentum="0.1"), TypeError,
     r"PerActivationBatchNorm: expected momentum \(or None\) to be a real number, got '0.1'"),
    (lambda: PerActivationBatchNorm((2 ** 31, 2 ** 31)), MemoryError,
     "PerActivationBatchNorm: the parameters and buffers of shape"),
])
def test_bad_constructor_arguments_of_every_kind_name_the_layer(make, exc, match):
    with pytest.raises(exc, match=f"^{match}"):
        make()


@pytest.mark.parametrize("make", [lambda: LayerNorm(3), lambda: GroupNorm(1, 3),
                                  lambda: InstanceNorm(3), lambda: PerActivationBatchNorm(3)])
@pytest.mark.parametrize("x, exc, match", [
    (np.zeros((2, 3, 4), np.float16), TypeError, "expected input dtype float32 or float64, got float16"),
    (np.zeros((2, 3, 4), bool), TypeError, "expected input dtype float32 or float64, got bool"),
    (np.zeros((2, 3, 4), object), TypeError, "expected input dtype float32 or float64, got object"),
    (np.float32(1.0), TypeError, "expected input to be a numpy.ndarray, got float32"),
    ([[1.0, 2.0, 3.0]], TypeError, "expected input to be a numpy.ndarray, got list"),
    (np.array(1.0), ValueError, r"expected input .*got shape \(\)"),
    (np.zeros((0, 3, 4), np.float32), ValueError, r"expected input .*got shape \(0, 3, 4\)"),
])
def test_bad_inputs_name_the_layer(make, x, exc, match):
    layer = make()
    if isinstance(layer, (LayerNorm, PerActivationBatchNorm)) and getattr(x, "ndim", 0) == 3:
        x = x[:, :, 0] if x.dtype.kind != "O" else x[:, :, 0]  # their features are (3,)
        match = match.replace(r"\(0, 3, 4\)", r"\(0, 3\)")
    with pytest.raises(exc, match=f"^{type(layer).__name__}: {match}"):
        layer(x)



_FORWARD_ARGS = {"layer_norm": (3,), "group_norm": (3,), "instance_norm": ()}


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "instance_norm"])
def test_out_arrays_that_share_memory_are_refused(rng, name, backend):
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    forward, backward = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    args = _FORWARD_ARGS[name]
    block = np.ones(x.size, np.float32)  # an out whose first elements are the weight
    weight = block[:3 if name == "layer_norm" else 6]
    dout = rng.standard_normal(x.shape).astype(np.float32)
    with minidl.backend(backend):
        with pytest.raises(ValueError, match=f"^{name}: out must not overlap input"):
            forward(x, *args, out=x)
        with pytest.raises(ValueError, match=f"^{name}: out must not overlap weight"):
            forward(x, *args, weight, out=block.reshape(x.shape))
        y, cache = forward(x, *args, weight.copy())
        with pytest.raises(ValueError, match=f"^{name}: out must not overlap gradient"):
            backward(dout, cache, out=dout)
        if backend == "compiled":  # (the reference's cache holds a float64 copy)
            with pytest.raises(ValueError, match=f"^{name}: out must not overlap the cached input"):
                backward(dout, cache, out=x)
        first = backward(dout, cache, out=np.empty_like(x))[0].copy()
        np.testing.assert_array_equal(backward(dout, cache)[0], first)  # the cache is intact


@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "instance_norm"])
@pytest.mark.parametrize("field, value, exc", [
    (None, lambda c: (c.x3, c.mean), TypeError),
    ("x3", lambda c: c.x3[:, :, :-1], ValueError),
    ("x3", lambda c: np.asfortranarray(c.x3), ValueError),
    ("x3", lambda c: c.x3.astype(np.float16), ValueError),
    ("mean", lambda c: c.mean[:1], ValueError),
    ("invstd", lambda c: c.invstd.astype(np.float32), ValueError),
    ("weight", lambda c: c.weight[:-1], ValueError),
    ("repeat", lambda c: 0, ValueError),
    ("repeat", lambda c: 7, ValueError),
    ("shape", lambda c: (2, 6, 4), ValueError),
    ("param_shape", lambda c: (5,), ValueError),
])
def test_backward_refuses_a_changed_cache(rng, name, field, value, exc):
    """A cache is a plain NamedTuple the caller can change; its arrays reach kernels that trust
    their shapes, so a changed one is an error naming the op, never a crash."""
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    forward, backward = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    _, cache = forward(x, *_FORWARD_ARGS[name], np.ones(3 if name == "layer_norm" else 6))
    bad = value(cache) if field is None else cache._replace(**{field: value(cache)})
    expected = (f"expected the cache returned by {name}_forward" if field is None
                else f"the cache's .* not what {name}_forward made")
    with pytest.raises(exc, match=f"^{name}: {expected}"):
        backward(np.ones_like(x), bad)


@pytest.mark.parametrize("call, exc, match", [
    (lambda x: F.layer_norm_forward(x, 3, eps="1e-5"), TypeError, "layer_norm: expected eps to be a real number"),
    (lambda x: F.group_norm_forward(x, 3, eps=float("nan")), ValueError, "group_norm: expected eps to be a finite number"),
    (lambda x: F.group_norm_forward(x, True), ValueError, "group_norm: num_groups must be an integer >= 1, got True"),
    (lambda x: F.layer_norm_forward(x, 3, weight=[[1.0], [1.0, 2.0]]), TypeError,
     "layer_norm: expected weight to be an array of real numbers, got dtype object"),
    (lambda x: F.group_norm_forward(x, 3, bias=np.ones(6, complex)), TypeError,
     "group_norm: expected bias to be an array of real numbers, got dtype complex128"),
    (lambda x: F.instance_norm_forward(x, training="yes"), TypeError,
     "instance_norm: expected training to be True or False, got 'yes'"),
    (lambda x: F.instance_norm_forward(x, momentum="0.1"), TypeError,
     "instance_norm: expected momentum to be a real number"),
    (lambda x: F.instance_norm_forward(x, None, None, np.zeros(6), np.ones(6), momentum=5), ValueError,
     r"instance_norm: expected momentum in \[0, 1\], got 5"),
    (lambda x: F.instance_norm_forward(x, None, None, x[0, :, 0], np.ones(6, np.float32)), ValueError,
     "instance_norm: running_mean must not overlap input"),
    (lambda x: (lambda s: F.instance_norm_forward(x, None, None, s[:6], s[3:]))(np.zeros(9, np.float32)),
     ValueError, "instance_norm: running_mean must not overlap running_var"),
])
def test_functional_arguments_of_the_wrong_kind_are_named(call, exc, match):
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    with pytest.raises(exc, match=f"^{match}"):
        call(x)


@pytest.mark.parametrize("make, shape", [(lambda: LayerNorm(3), (4, 3)),
                                         (lambda: GroupNorm(2, 4), (2, 4, 3)),
                                         (lambda: InstanceNorm(4, affine=True), (2, 4, 3)),
                                         (lambda: PerActivationBatchNorm((4, 3)), (2, 4, 3))])
def test_modifying_the_input_in_place_before_backward_is_a_runtime_error(rng, make, shape):
    """As in PyTorch: the backward pass needs the input's old values (the cache refers to it)."""
    layer = make()
    name = type(layer).__name__
    x = rng.standard_normal(shape).astype(np.float32)
    y = layer(x)
    x *= 2
    with pytest.raises(RuntimeError, match=f"^{name}: the input of the last forward pass was "
                                           f"modified in place before backward"):
        layer.backward(np.ones_like(y))
    for parameter in layer.parameters():  # nothing accumulated by the failed pass
        assert not parameter.grad.any()
    layer(x)  # a new forward pass takes the new values
    assert layer.backward(np.ones_like(y)).shape == shape


@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed"])
@pytest.mark.parametrize("make, shape", [(lambda: LayerNorm((3, 4)), (2, 3, 4)),
                                         (lambda: GroupNorm(3, 3), (2, 3, 4)),
                                         (lambda: InstanceNorm1D(3, affine=True), (2, 3, 4)),
                                         (lambda: PerActivationBatchNorm((3, 4)), (2, 3, 4))])
def test_any_memory_layout_gives_the_same_bits(rng, make, shape, layout):
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(shape)
    expected_layer, layer = make(), make()
    expected = expected_layer(x.astype(np.float32)), expected_layer.backward(dout.astype(np.float32))
    strided = {"fortran": np.asfortranarray, "reversed": lambda a: np.ascontiguousarray(a[..., ::-1])[..., ::-1],
               "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2]}[layout]
    got = layer(strided(x.astype(np.float32))), layer.backward(strided(dout.astype(np.float32)))
    for ours, theirs in zip(got, expected):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("make, shape", [(lambda: LayerNorm(256), (288, 256)),
                                         (lambda: GroupNorm(4, 16), (5, 16, 32, 32)),
                                         (lambda: InstanceNorm2D(16, affine=True), (5, 16, 32, 32)),
                                         (lambda: PerActivationBatchNorm((16, 8, 8)), (72, 16, 8, 8))])
def test_results_do_not_depend_on_the_thread_count(rng, make, shape):
    """Issue 10, determinism: every reduction sums in an order fixed by the shape (per segment,
    per position or per channel), so 1, 2 and 3 threads give the same bits (the inputs are
    large enough for the kernels to use them all)."""
    assert np.prod(shape) >= minidl._config.PARALLEL_MIN_ELEMENTS
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    previous = minidl.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            minidl.set_num_threads(threads)
            layer = make()
            y = layer(x)
            runs.append([y, layer.backward(dout)] + [p.grad for p in layer.parameters()])
    finally:
        minidl.set_num_threads(previous)
    for run in runs[1:]:
        for ours, theirs in zip(run, runs[0]):
            assert ours.tobytes() == theirs.tobytes()
