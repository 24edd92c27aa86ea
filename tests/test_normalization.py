"""BatchNorm: kernels against the NumPy reference, numerics, gradients, running statistics, errors."""
import numpy as np
import pytest

from minidl.functional import normalization as F
from minidl.layers.dense import Dense
from minidl.layers.normalization import BatchNorm, BatchNorm1D, BatchNorm2D
from minidl.model import Sequential
from minidl.reference import normalization as ref

from helpers import check_module_gradients

SHAPES = [(4, 3), (7, 5), (2, 3, 5, 5), (3, 4, 1, 7), (5, 2, 3), (1, 2, 3, 3)]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _random_bn_input(rng, shape, dtype):
    channel_shift = rng.uniform(-3, 3, size=(1, shape[1]) + (1,) * (len(shape) - 2))
    return (rng.standard_normal(shape) * 2 + channel_shift).astype(dtype)


def _non_contiguous(x):
    """The same values as x, as a non-C-contiguous view."""
    y = np.asfortranarray(x)
    assert not y.flags.c_contiguous or x.ndim == 1 or y.size == 1
    return y


# ----------------------------------------------------------------------------- kernels vs reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_train_forward_backward_match_reference(rng, shape, dtype, contiguous):
    x = _random_bn_input(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape[1])
    beta = rng.standard_normal(shape[1])
    x_in = x if contiguous else _non_contiguous(x)
    dy_in = dy if contiguous else _non_contiguous(dy)

    mean, var = ref.batch_stats(x)
    out, cache = F.batch_norm_forward(x_in, gamma, beta, training=True, eps=1e-5)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, ref.batch_norm_forward(x, gamma, beta, mean, var, 1e-5), **TOL[dtype])

    dx, dgamma, dbeta = F.batch_norm_backward(dy_in, cache)
    rdx, rdgamma, rdbeta = ref.batch_norm_backward_train(dy, x, gamma, 1e-5)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, rdx, **TOL[dtype])
    np.testing.assert_allclose(dgamma, rdgamma, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-5)
    np.testing.assert_allclose(dbeta, rdbeta, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_backward_match_reference(rng, shape, dtype):
    x = _random_bn_input(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    running_mean = rng.standard_normal(shape[1]).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
    before = running_mean.copy(), running_var.copy()

    out, cache = F.batch_norm_forward(x, gamma, beta, running_mean, running_var, training=False)
    np.testing.assert_allclose(
        out, ref.batch_norm_forward(x, gamma, beta, running_mean, running_var, 1e-5), **TOL[dtype])
    dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    rdx, rdgamma, rdbeta = ref.batch_norm_backward_eval(dy, x, gamma, running_mean, running_var, 1e-5)
    np.testing.assert_allclose(dx, rdx, **TOL[dtype])
    np.testing.assert_allclose(dgamma, rdgamma, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(dbeta, rdbeta, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(running_mean, before[0])
    np.testing.assert_array_equal(running_var, before[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_stats_kernel_matches_two_pass_reference(rng, dtype):
    x = _random_bn_input(rng, (6, 5, 4, 3), dtype)
    mean, var = F.channel_stats(x.reshape(6, 5, 12))
    rmean, rvar = ref.batch_stats(x)
    np.testing.assert_allclose(mean, rmean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(var, rvar, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_sums_are_the_rows_sums_added_in_row_order(rng, dtype):
    """The kernels sum each row ``x[a, c, :]`` on one thread and add a channel's row sums in
    the order a = 0, 1, ... (the rows split among the threads, in memory order): the sums of
    ``grad_sums`` and ``backward`` are, bit for bit, ``grad_sums`` on every row as a channel
    of its own, added in that order by a Python loop, and so are dx and the statistics at 1, 2
    and 3 threads (3: an uneven split of the rows)."""
    from minidl._kernels import _batchnorm
    A, C, B = 7, 5, 300
    x = _random_bn_input(rng, (A, C, B), dtype)
    dy = rng.standard_normal((A, C, B)).astype(dtype)
    mean = x.mean(axis=(0, 2), dtype=np.float64)
    invstd, gamma = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    row_dy, row_dyx = np.empty(A * C), np.empty(A * C)
    _batchnorm.grad_sums(dy.reshape(1, A * C, B), x.reshape(1, A * C, B), np.tile(mean, A),
                         row_dy, row_dyx, 1)
    want_dy, want_dyx = [0.0] * C, [0.0] * C
    for a in range(A):
        for c in range(C):
            want_dy[c] += row_dy[a * C + c]
            want_dyx[c] += row_dyx[a * C + c]
    runs = []
    for threads in (1, 2, 3):
        sums = np.empty(C), np.empty(C)
        _batchnorm.grad_sums(dy, x, mean, *sums, threads)
        dx, fused = np.empty_like(x), (np.empty(C), np.empty(C))
        _batchnorm.backward(dy, x, mean, invstd, gamma, True, dx, *fused, threads)
        stats, out = (np.empty(C), np.empty(C)), np.empty_like(x)
        _batchnorm.forward_train(x, gamma, np.zeros(C), 1e-5, out, *stats, threads)
        for got in (sums, fused):
            assert got[0].tolist() == want_dy and got[1].tolist() == want_dyx
        runs.append([dx, out, *stats])
    for run in runs[1:]:
        for ours, theirs in zip(run, runs[0]):
            assert ours.tobytes() == theirs.tobytes()


# ----------------------------------------------------------------------------- numerics
def test_large_mean_small_std_float32_normalizes_correctly(rng):
    x = (1e4 + 1e-2 * rng.standard_normal((16, 3, 8, 8))).astype(np.float32)
    bn = BatchNorm(3, eps=1e-12)
    y = bn(x)
    # compare with the exact float64 computation on the same float32 values
    mean, var = ref.batch_stats(x)
    expected = (x.astype(np.float64) - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None])
    np.testing.assert_allclose(y, expected, atol=1e-4)
    assert np.allclose(y.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert np.allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)


def test_outlier_first_value_uses_corrected_second_pass(rng):
    # The one-pass shift is the channel's first value. A value can be at most sqrt(n - 1) standard
    # deviations from the mean, so a far outlier needs a long channel: 4e6 values, the first one
    # 2000 standard deviations away; the second pass must recover mean and variance exactly.
    n = 4_000_000
    x = 1e-3 * rng.standard_normal(n)
    x[0] = 1e3
    mean, var = F.channel_stats(x.reshape(n, 1, 1))
    rmean, rvar = ref.batch_stats(x.reshape(n, 1))
    assert (x[0] - rmean[0]) ** 2 > 1e6 * rvar[0]  # the case the second pass is for
    np.testing.assert_allclose(var, rvar, rtol=1e-10)
    np.testing.assert_allclose(mean, rmean, rtol=0, atol=1e-10 * np.sqrt(rvar[0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.1, -3.7e5, 1e4 + 0.5])
def test_constant_channel_gives_exactly_beta(dtype, value, rng):
    x = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
    x[:, 1] = value
    bn = BatchNorm(3, dtype=dtype)
    bn.weight.data[:] = [1.5, 2.5, -0.5]
    bn.bias.data[:] = [0.25, 0.3, 0.7]
    y = bn(x)
    assert np.all(y[:, 1] == dtype(0.3))
    dx = bn.backward(rng.standard_normal(x.shape).astype(dtype))
    assert np.all(np.isfinite(dx))


# ----------------------------------------------------------------------------- gradients (float64)
def _float64_model(*layers):
    return Sequential(*layers).astype(np.float64)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_gradients_batchnorm_after_dense_train(rng, momentum):
    model = _float64_model(Dense(5, 4, rng=rng), BatchNorm(4, momentum=momentum))
    model[1].weight.data[:] = rng.standard_normal(4)
    model[1].bias.data[:] = rng.standard_normal(4)
    check_module_gradients(model, rng.standard_normal((6, 5)), rng)


def test_gradients_batchnorm_after_dense_eval(rng):
    model = _float64_model(Dense(5, 4, rng=rng), BatchNorm(4))
    model.train()
    for _ in range(3):
        model(rng.standard_normal((6, 5)) * 2 + 1)
    model.eval()
    check_module_gradients(model, rng.standard_normal((6, 5)), rng)


@pytest.mark.parametrize("training", [True, False])
def test_gradients_batchnorm_4d(rng, training):
    bn = BatchNorm(3, dtype=np.float64)
    bn.weight.data[:] = rng.standard_normal(3)
    bn.running_mean[:] = rng.standard_normal(3)
    bn.running_var[:] = rng.uniform(0.5, 2, 3)
    bn.train(training)
    check_module_gradients(bn, _random_bn_input(rng, (3, 3, 4, 5), np.float64), rng)


def test_gradients_batchnorm_without_affine(rng):
    bn = BatchNorm(3, affine=False, dtype=np.float64)
    assert bn.parameters() == []
    check_module_gradients(bn, _random_bn_input(rng, (4, 3, 2, 3), np.float64), rng)


# ----------------------------------------------------------------------------- running statistics
def test_running_stats_momentum_and_unbiased_variance(rng):
    bn = BatchNorm(3, momentum=0.1)
    x = _random_bn_input(rng, (4, 3, 5, 5), np.float32)
    bn(x)
    mean, var = ref.batch_stats(x)
    unbiased = var * 100 / 99
    np.testing.assert_allclose(bn.running_mean, 0.9 * 0 + 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.9 * 1 + 0.1 * unbiased, rtol=1e-6)
    assert int(bn.num_batches_tracked) == 1


def test_momentum_none_is_cumulative_average(rng):
    bn = BatchNorm(2, momentum=None, dtype=np.float64)
    batches = [_random_bn_input(rng, (8, 2), np.float64) for _ in range(5)]
    for x in batches:
        bn(x)
    means = [ref.batch_stats(x)[0] for x in batches]
    unbiased = [ref.batch_stats(x)[1] * 8 / 7 for x in batches]
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean(unbiased, axis=0), rtol=1e-12)
    assert int(bn.num_batches_tracked) == 5


def test_eval_uses_running_stats_and_changes_nothing(rng):
    bn = BatchNorm(3)
    for _ in range(3):
        bn(_random_bn_input(rng, (8, 3, 4, 4), np.float32))
    state = bn.state_dict()
    bn.eval()
    x = _random_bn_input(rng, (5, 3, 4, 4), np.float32)
    y = bn(x)
    expected = ref.batch_norm_forward(x, np.ones(3), np.zeros(3), bn.running_mean, bn.running_var, 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_eval_output_of_a_sample_does_not_depend_on_its_batch(rng):
    bn = BatchNorm(3)
    bn.weight.data[:] = rng.standard_normal(3)
    for _ in range(2):
        bn(_random_bn_input(rng, (8, 3, 4, 4), np.float32))
    bn.eval()
    batch = _random_bn_input(rng, (6, 3, 4, 4), np.float32)
    together = bn(batch)
    other = bn(np.concatenate([batch[2:3], 100 * _random_bn_input(rng, (4, 3, 4, 4), np.float32)]))
    alone = bn(batch[2:3])
    np.testing.assert_array_equal(together[2:3], alone)
    np.testing.assert_array_equal(other[0:1], alone)


def test_train_output_depends_on_batch(rng):
    # the counterpart of the test above: in training mode the batch statistics are used
    bn = BatchNorm(3)
    batch = _random_bn_input(rng, (6, 3, 4, 4), np.float32)
    assert not np.allclose(bn(batch)[:2], bn(batch[:2]))


def test_no_running_stats_uses_batch_stats_in_eval(rng):
    bn = BatchNorm(3, track_running_stats=False).eval()
    x = _random_bn_input(rng, (4, 3, 2, 2), np.float32)
    assert "running_mean" not in bn.state_dict()
    mean, var = ref.batch_stats(x)
    np.testing.assert_allclose(bn(x), ref.batch_norm_forward(x, np.ones(3), np.zeros(3), mean, var, 1e-5),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- dtypes and state
def test_keeps_input_dtype_with_float32_parameters(rng):
    bn = BatchNorm(3)
    x = _random_bn_input(rng, (4, 3, 2, 2), np.float64)
    y = bn(x)
    assert y.dtype == np.float64
    dx = bn.backward(rng.standard_normal(x.shape))
    assert dx.dtype == np.float64 and bn.weight.grad.dtype == np.float32
    assert bn.running_mean.dtype == np.float32


def test_gradients_accumulate_until_zero_grad(rng):
    bn = BatchNorm(3)
    x = _random_bn_input(rng, (4, 3, 2, 2), np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    bn(x)
    bn.backward(dy)
    once = bn.weight.grad.copy()
    bn(x)
    bn.backward(dy)
    np.testing.assert_allclose(bn.weight.grad, 2 * once, rtol=1e-6)
    bn.zero_grad()
    assert not bn.weight.grad.any()


def test_state_dict_round_trip_restores_outputs(rng):
    bn = BatchNorm(3)
    bn.weight.data[:] = rng.standard_normal(3)
    for _ in range(3):
        bn(_random_bn_input(rng, (8, 3, 4, 4), np.float32))
    state = bn.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    other = BatchNorm(3)
    other.load_state_dict(state)
    x = _random_bn_input(rng, (2, 3, 4, 4), np.float32)
    np.testing.assert_array_equal(bn.eval()(x), other.eval()(x))
    assert int(other.num_batches_tracked) == 3


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "layer, x, match",
    [
        (BatchNorm(3), np.zeros((2, 4, 5, 5), np.float32), r"BatchNorm: expected input of shape .*\(N, 3, H, W\).*got shape \(2, 4, 5, 5\)"),
        (BatchNorm(3), np.zeros((2,), np.float32), r"BatchNorm: expected input.*got shape \(2,\)"),
        (BatchNorm1D(3), np.zeros((2, 3, 4, 4), np.float32), r"BatchNorm1D: expected input of shape \(N, 3\) or \(N, 3, L\), got shape \(2, 3, 4, 4\)"),
        (BatchNorm2D(3), np.zeros((2, 3), np.float32), r"BatchNorm2D: expected input of shape \(N, 3, H, W\), got shape \(2, 3\)"),
        (BatchNorm(3), np.zeros((1, 3, 1, 1), np.float32), r"BatchNorm: expected more than 1 value per channel when training"),
        (BatchNorm(3), np.zeros((1, 3), np.float32), r"more than 1 value per channel"),
    ],
)
def test_bad_input_raises_value_error(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer(x)


def test_bad_dtype_and_order_errors():
    bn = BatchNorm(3)
    with pytest.raises(TypeError, match="BatchNorm: expected input dtype float32 or float64, got int64"):
        bn(np.zeros((2, 3), np.int64))
    with pytest.raises(RuntimeError, match="BatchNorm: backward called before forward"):
        bn.backward(np.zeros((2, 3), np.float32))
    bn(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm: expected gradient of shape \(2, 3\) \(the output's\), got shape \(3, 2\)"):
        bn.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match=r"BatchNorm: expected gradient dtype float32 \(the output's\), got float64"):
        bn.backward(np.zeros((2, 3), np.float64))


def test_one_sample_is_fine_in_eval():
    bn = BatchNorm(3).eval()
    assert bn(np.ones((1, 3, 1, 1), np.float32)).shape == (1, 3, 1, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_features=0), "num_features"), (dict(num_features=3, eps=0), "eps"),
    (dict(num_features=3, momentum=1.5), "momentum"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchNorm(**kwargs)


@pytest.mark.parametrize("training", [True, False])
def test_gradients_batchnorm_after_conv2d(rng, training):
    from minidl.layers.conv import Conv2D

    model = _float64_model(Conv2D(2, 3, kernel_size=3, padding=1, bias=False, rng=rng), BatchNorm(3))
    model[1].weight.data[:] = rng.uniform(0.5, 1.5, 3)
    model[1].bias.data[:] = rng.standard_normal(3)
    if not training:
        for _ in range(3):
            model(rng.standard_normal((4, 2, 5, 5)))
        model.eval()
    check_module_gradients(model, rng.standard_normal((3, 2, 5, 4)), rng)


def test_outputs_the_caller_keeps_are_never_overwritten(rng):
    bn = BatchNorm(8)  # arrays of 256 KiB: large enough to come from the buffer pool
    x1 = _random_bn_input(rng, (8, 8, 32, 32), np.float32)
    x2 = _random_bn_input(rng, (8, 8, 32, 32), np.float32)
    y1 = bn(x1)
    kept = y1.copy()
    dx1 = bn.backward(rng.standard_normal(x1.shape).astype(np.float32))
    kept_dx = dx1.copy()
    view = y1[:, :1]  # a view keeps the array alive too
    del y1
    bn(x2)
    bn.backward(rng.standard_normal(x2.shape).astype(np.float32))
    np.testing.assert_array_equal(view, kept[:, :1])
    np.testing.assert_array_equal(dx1, kept_dx)


def test_outputs_nobody_holds_are_reused(rng):
    bn = BatchNorm(8)
    x = _random_bn_input(rng, (8, 8, 32, 32), np.float32)
    address = bn(x).__array_interface__["data"][0]  # the output is dropped at once
    assert bn(x).__array_interface__["data"][0] == address
    assert bn(x[:2]).shape == (2, 8, 32, 32)  # another shape gets another array


def test_functional_out_argument_is_checked(rng):
    x = _random_bn_input(rng, (4, 3), np.float32)
    with pytest.raises(ValueError, match=r"batch_norm: expected out to be a writable C-contiguous float32 array of shape \(4, 3\), got float64 \(4, 3\)"):
        F.batch_norm_forward(x, out=np.empty((4, 3)))
    out = np.empty((4, 3), np.float32)
    y, _ = F.batch_norm_forward(x, out=out)
    assert np.shares_memory(y, out)


# ------------------------------------------------ aliasing, arguments and caches (issue 10)
def test_out_and_running_statistics_must_be_memory_of_their_own(rng):
    x = _random_bn_input(rng, (4, 3, 2, 2), np.float32)
    stats = np.zeros(6, np.float32)
    mean, var = stats[:3], stats[3:]
    var[...] = 1
    with pytest.raises(ValueError, match="^batch_norm: out must not overlap input"):
        F.batch_norm_forward(x, out=x)
    with pytest.raises(ValueError, match="^batch_norm: running_mean must not overlap running_var"):
        F.batch_norm_forward(x, running_mean=mean, running_var=mean)
    with pytest.raises(ValueError, match="^batch_norm: running_mean must not overlap input"):
        F.batch_norm_forward(x, running_mean=x[0, :, 0, 0], running_var=var)
    buffer = np.zeros(x.size + 2, np.float32)
    out, shared = buffer[:x.size].reshape(x.shape), buffer[x.size - 1:]  # one element in common
    with pytest.raises(ValueError, match="^batch_norm: out must not overlap running_mean"):
        F.batch_norm_forward(x, running_mean=shared, running_var=var, out=out)
    with pytest.raises(ValueError, match="^batch_norm: out must not overlap weight"):
        F.batch_norm_forward(x, shared, out=out)
    np.testing.assert_array_equal(stats, [0, 0, 0, 1, 1, 1])  # nothing was updated
    # eval mode reads the statistics only: the same array for both is allowed
    F.batch_norm_forward(x, running_mean=var, running_var=var, training=False)
    y, cache = F.batch_norm_forward(x)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    with pytest.raises(ValueError, match="^batch_norm: out must not overlap gradient"):
        F.batch_norm_backward(dout, cache, out=dout)
    with pytest.raises(ValueError, match="^batch_norm: out must not overlap the cached input"):
        F.batch_norm_backward(dout, cache, out=cache.x3.reshape(x.shape))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(training=1), TypeError, "batch_norm: expected training to be True or False, got 1"),
    (dict(training=np.array([1, 0])), TypeError, "batch_norm: expected training to be True or"),
    (dict(eps="1e-5"), TypeError, "batch_norm: expected eps to be a real number, got '1e-5'"),
    (dict(eps=float("inf")), ValueError, "batch_norm: expected eps to be a finite number"),
    (dict(eps=-1.0), ValueError, r"batch_norm: eps must be > 0, got -1.0"),
    (dict(momentum="0.1"), TypeError, "batch_norm: expected momentum to be a real number"),
    (dict(momentum=float("nan")), ValueError, "batch_norm: expected momentum to be a finite"),
    (dict(momentum=-0.1), ValueError, r"batch_norm: expected momentum in \[0, 1\], got -0.1"),
    (dict(weight=np.array(["a", "b", "c"])), TypeError, "batch_norm: expected weight to be an "
                                                        "array of real numbers, got dtype <U1"),
    (dict(bias=[1.0, [2.0], 3.0]), TypeError, "batch_norm: expected bias to be an array of real"),
    (dict(weight=np.ones(4)), ValueError, r"batch_norm: expected weight of shape \(3,\), got \(4,\)"),
    (dict(running_mean=np.zeros(3, np.float16), running_var=np.ones(3)), TypeError,
     "batch_norm: expected running_mean dtype float32 or float64, got float16"),
])
def test_functional_arguments_of_the_wrong_kind_are_named(rng, kwargs, exc, match):
    x = _random_bn_input(rng, (4, 3), np.float32)
    with pytest.raises(exc, match=f"^{match}"):
        F.batch_norm_forward(x, **kwargs)


@pytest.mark.parametrize("field, value", [
    ("x3", lambda c: c.x3[:, :, :-1]), ("x3", lambda c: np.asfortranarray(c.x3)),
    ("x3", lambda c: c.x3.astype(np.float16)), ("mean", lambda c: c.mean[:2]),
    ("invstd", lambda c: c.invstd.astype(np.float32)), ("gamma", lambda c: c.gamma[::-1]),
    ("shape", lambda c: (4, 3, 2, 3)), ("shape", lambda c: None),
])
def test_batch_norm_backward_refuses_a_changed_cache(rng, field, value):
    x = _random_bn_input(rng, (4, 3, 2, 2), np.float32)
    y, cache = F.batch_norm_forward(x, np.ones(3), np.zeros(3))
    changed = cache._replace(**{field: value(cache)})
    with pytest.raises(ValueError, match=r"^batch_norm: the cache's "):
        F.batch_norm_backward(np.ones_like(y), changed)
    with pytest.raises(TypeError, match="batch_norm: expected the cache returned by "
                                        "batch_norm_forward, got tuple"):
        F.batch_norm_backward(np.ones_like(y), tuple(cache))


def test_channel_stats_checks_its_input():
    x = np.arange(24.0).reshape(2, 3, 4)
    mean, var = F.channel_stats(x[:, :, ::2])  # any strides
    np.testing.assert_allclose(mean, x[:, :, ::2].mean(axis=(0, 2)))
    for bad, exc in ((np.zeros((0, 3, 5)), ValueError), (np.zeros((2, 3)), ValueError),
                     (np.zeros((2, 3, 4), np.int32), TypeError), ([[[1.0]]], TypeError)):
        with pytest.raises(exc, match="^channel_stats: expected input"):
            F.channel_stats(bad)


def test_the_reference_backend_refuses_the_same_aliasing(rng):
    import minidl
    x = _random_bn_input(rng, (4, 3, 2, 2), np.float64)
    with minidl.backend("reference"):
        with pytest.raises(ValueError, match="^batch_norm: out must not overlap input"):
            F.batch_norm_forward(x, out=x)
        y, cache = F.batch_norm_forward(x)
    dout = rng.standard_normal(x.shape)
    with pytest.raises(ValueError, match="^batch_norm: out must not overlap gradient"):
        F.batch_norm_backward(dout, cache, out=dout)
    assert F.batch_norm_backward(dout, cache, out=np.empty_like(x))[0].shape == x.shape


# --------------------------------------------------------------- backward through a following ReLU
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 7), (3, 4, 5, 6), (2, 300)])
def test_backward_through_a_relu_equals_relu_backward_then_batch_norm_backward(
        rng, shape, dtype, training, backend):
    """relu_output: the kernel masks the gradient as it reads it (row and column layouts);
    the same bits as relu_backward followed by batch_norm_backward."""
    import minidl
    from minidl.functional import activation as A
    x = _random_bn_input(rng, shape, dtype)
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]), rng.standard_normal(shape[1])
    mean, var = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    with minidl.backend(backend):
        y, cache = F.batch_norm_forward(x, gamma, beta, mean, var, training=training, relu=True)
        assert 0 < np.count_nonzero(y) < y.size  # the ReLU cut something
        y.flat[np.flatnonzero(y > 0)[0]] = 0.0  # an exact zero: its gradient is 0
        dout = rng.standard_normal(shape).astype(dtype)
        got = F.batch_norm_backward(dout, cache, relu_output=y)
        want = F.batch_norm_backward(A.relu_backward(dout, A.ReluCache(y)), cache)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 7), (3, 4, 5, 6), (2, 300), (3, 2, 4, 4)])
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_relu_mask_recomputed_from_the_input_is_the_relu_outputs(rng, shape, dtype, training,
                                                                 backend):
    """relu=True: the kernel recomputes the ReLU's mask from x and the cached statistics and
    parameters instead of reading y (row and column layouts, with a pool after it, NaN, -0.0
    and exact zeros of the output, no affine parameters): the bits of relu_output=y."""
    import minidl
    from minidl.functional import pooling as P
    x = _random_bn_input(rng, shape, dtype)
    x.flat[1] = np.nan
    channels = shape[1]
    gamma, beta = rng.uniform(0.5, 1.5, channels), rng.standard_normal(channels)
    gamma[0], beta[0] = 0.0, -0.0  # channel 0: exactly -0.0 in eval, 0 * x + -0.0
    mean, var = rng.standard_normal(channels), rng.uniform(0.5, 2, channels)
    for weight, bias in ((gamma, beta), (None, None)):
        with minidl.backend(backend):
            y, cache = F.batch_norm_forward(x, weight, bias, mean.copy(), var.copy(),
                                            training=training, relu=True)
            dout = rng.standard_normal(shape).astype(dtype)
            got = F.batch_norm_backward(dout, cache, relu=True)
            want = F.batch_norm_backward(dout, cache, relu_output=y)
            if len(shape) == 4:
                pooled, pool_cache = P.max_pool2d_forward(y, 2)
                dpooled = rng.standard_normal(pooled.shape).astype(dtype)
                got += F.batch_norm_backward(dpooled, cache, relu=True, pool_cache=pool_cache)
                want += F.batch_norm_backward(dpooled, cache, relu_output=y,
                                              pool_cache=pool_cache)
        assert 0 < np.count_nonzero(y > 0) < y.size
        for a, b in zip(got, want):
            assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)


def test_relu_mask_recomputed_needs_the_forwards_beta(rng):
    x = _random_bn_input(rng, (4, 3, 2, 2), np.float32)
    y, cache = F.batch_norm_forward(x, relu=True)
    dout = np.ones_like(y)
    with pytest.raises(ValueError, match="^bn: give relu_output or relu=True"):
        F.batch_norm_backward(dout, cache, layer="bn", relu_output=y, relu=True)
    with pytest.raises(ValueError, match="^bn: relu=True needs a cache with beta"):
        F.batch_norm_backward(dout, cache._replace(beta=None), layer="bn", relu=True)
    with pytest.raises(ValueError, match="^bn: the cache's beta"):
        F.batch_norm_backward(dout, cache._replace(beta=np.zeros(2)), layer="bn", relu=True)
    with pytest.raises(TypeError, match="^bn: expected relu to be True or False"):
        F.batch_norm_backward(dout, cache, layer="bn", relu=1)


def test_backward_through_a_relu_checks_the_relu_output(rng):
    x = _random_bn_input(rng, (4, 3, 2, 2), np.float32)
    y, cache = F.batch_norm_forward(x, relu=True)
    dout = np.ones_like(y)
    with pytest.raises(ValueError, match="^bn: expected relu_output of shape \\(4, 3, 2, 2\\)"):
        F.batch_norm_backward(dout, cache, layer="bn", relu_output=y[:2])
    with pytest.raises(TypeError, match="^bn: expected relu_output dtype float32"):
        F.batch_norm_backward(dout, cache, layer="bn", relu_output=y.astype(np.float64))
    with pytest.raises(ValueError, match="^bn: out must not overlap relu_output"):
        F.batch_norm_backward(dout, cache, layer="bn", out=y, relu_output=y)


# ------------------------------------------------------------- BatchNorm -> ReLU -> 2x2 max pool
@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (2, 3, 7, 9), (2, 2, 2, 2), (1, 3, 33, 40),
                                   (2, 40, 5, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_pooling_option_is_batch_norm_then_max_pool_bit_for_bit(rng, shape, dtype, training,
                                                                relu, backend):
    """pool_out / pool_argmax: the output pooled plane by plane equals max_pool2d_forward on
    the output (values, indices: ties, NaN), both ways of the 2x2 kernel (short and long rows,
    odd sizes); the backward with pool_cache equals max_pool2d_backward, then relu_backward,
    then batch_norm_backward, bit for bit (both the kernel's indices and MaxPool2D's)."""
    import minidl
    from minidl.functional import activation as A, pooling as P
    x = _non_contiguous(_random_bn_input(rng, shape, dtype))
    x[0, 0, 0, :2] = x[0, 0, 0, 0]  # a tie in a window
    x[-1, -1, -1, -1] = np.nan
    channels = shape[1]
    weight, bias = rng.standard_normal((2, channels)).astype(dtype)
    stats = rng.standard_normal(channels).astype(dtype), rng.random(channels).astype(dtype) + 0.5
    pooled_shape = shape[:2] + (shape[2] // 2, shape[3] // 2)
    dout = rng.standard_normal(pooled_shape).astype(dtype)
    with minidl.backend(backend):
        running = [s.copy() for s in stats]
        y, cache = F.batch_norm_forward(x, weight, bias, *running, training=training, relu=relu)
        want, pool_cache = P.max_pool2d_forward(y, 2)
        dy = P.max_pool2d_backward(dout, pool_cache)
        if relu:
            dy = A.relu_backward(dy, A.ReluCache(y))
        want_grads = F.batch_norm_backward(dy, cache)

        fused_running = [s.copy() for s in stats]
        pooled = np.full(pooled_shape, np.nan, dtype)
        argmax = np.full(pooled_shape, -1, np.int64)
        out, fused_cache = F.batch_norm_forward(x, weight, bias, *fused_running,
                                                training=training, relu=relu, pool_out=pooled,
                                                pool_argmax=argmax)
        values_only = np.full(pooled_shape, np.nan, dtype)
        F.batch_norm_forward(x, weight, bias, *(s.copy() for s in stats), training=training,
                             relu=relu, pool_out=values_only)
        relu_output = y if relu else None
        # the cache built from pool_argmax, and MaxPool2D's own
        made = P.MaxPool2dCache(argmax, shape, np.dtype(dtype), True) \
            if backend == "compiled" else pool_cache._replace(argmax=argmax)
        grads = [F.batch_norm_backward(dout, fused_cache, relu_output=relu_output,
                                       pool_cache=c) for c in (made, pool_cache)]
    assert np.array_equal(out, y, equal_nan=True)
    assert np.array_equal(pooled, want, equal_nan=True)
    assert np.array_equal(values_only, want, equal_nan=True)
    assert np.array_equal(argmax, pool_cache.argmax)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(running, fused_running))
    for got in grads:
        for a, b in zip(got, want_grads):
            assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (2, 3, 7, 9), (2, 40, 5, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_pooled_only_writes_the_pooled_output_and_the_output_can_be_recomputed(
        rng, shape, dtype, training, relu, backend):
    """pooled_only: the same pooled values, indices, running statistics and cache, without
    the output (None); batch_norm_output recomputes that output from the cache, bit for
    bit."""
    import minidl
    x = _random_bn_input(rng, shape, dtype)
    x[0, 0, 0, 0] = np.nan
    channels = shape[1]
    weight, bias = rng.standard_normal((2, channels)).astype(dtype)
    stats = rng.standard_normal(channels).astype(dtype), rng.random(channels).astype(dtype) + 0.5
    pooled_shape = shape[:2] + (shape[2] // 2, shape[3] // 2)
    results = []
    for pooled_only in (False, True):
        running = [s.copy() for s in stats]
        pooled, argmax = np.empty(pooled_shape, dtype), np.empty(pooled_shape, np.int64)
        with minidl.backend(backend):
            out, cache = F.batch_norm_forward(x, weight, bias, *running, training=training,
                                              relu=relu, pool_out=pooled, pool_argmax=argmax,
                                              pooled_only=pooled_only)
        results.append((out, pooled, argmax, running, cache))
    (out, *full), (none, *only) = results
    assert none is None and out is not None
    for a, b in zip(full[:2] + full[2], only[:2] + only[2]):
        assert np.array_equal(a, b, equal_nan=True)
    if backend == "compiled":
        assert np.array_equal(F.batch_norm_output(only[3], relu=relu), out, equal_nan=True)


def test_pooled_only_and_batch_norm_output_check_their_arguments(rng):
    x = _random_bn_input(rng, (2, 3, 4, 4), np.float32)
    pooled = np.empty((2, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="^bn: pooled_only needs pool_out and no out"):
        F.batch_norm_forward(x, layer="bn", pooled_only=True)
    with pytest.raises(ValueError, match="^bn: pooled_only needs pool_out and no out"):
        F.batch_norm_forward(x, layer="bn", out=np.empty_like(x), pool_out=pooled,
                             pooled_only=True)
    with pytest.raises(TypeError, match="^bn: expected pooled_only to be True or False"):
        F.batch_norm_forward(x, layer="bn", pool_out=pooled, pooled_only="yes")
    _, cache = F.batch_norm_forward(x)
    with pytest.raises(ValueError, match="^bn: the cache has no beta"):
        F.batch_norm_output(cache._replace(beta=None), layer="bn")
    with pytest.raises(TypeError, match="^bn: expected the cache returned by batch_norm_forward"):
        F.batch_norm_output(tuple(cache), layer="bn")


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_backward_through_any_max_pool_is_max_pool_backward_first(rng, backend):
    """A pool_cache of another geometry (3x3 windows, stride 2) goes through
    max_pool2d_backward before the kernel: the same bits as the layers one by one."""
    import minidl
    from minidl.functional import pooling as P
    x = _random_bn_input(rng, (3, 4, 9, 8), np.float64)
    with minidl.backend(backend):
        y, cache = F.batch_norm_forward(x)
        pooled, pool_cache = P.max_pool2d_forward(y, 3, 2)
        dout = rng.standard_normal(pooled.shape)
        got = F.batch_norm_backward(dout, cache, pool_cache=pool_cache)
        want = F.batch_norm_backward(P.max_pool2d_backward(dout, pool_cache), cache)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


def test_pooling_options_check_their_arrays(rng):
    import minidl
    from minidl.functional import pooling as P
    x = _random_bn_input(rng, (2, 3, 6, 5), np.float32)
    pooled = np.empty((2, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match="^bn: pool_argmax needs pool_out"):
        F.batch_norm_forward(x, layer="bn", pool_argmax=np.empty((2, 3, 3, 2), np.int64))
    with pytest.raises(ValueError, match="^bn: pool_out needs an \\(N, C, H, W\\) input with "
                                         "H, W >= 2"):
        F.batch_norm_forward(x[:, :, :1], layer="bn", pool_out=pooled)
    with pytest.raises(ValueError, match="^bn: pool_out needs an"):
        F.batch_norm_forward(x[:, :, 0], layer="bn", pool_out=pooled)
    with pytest.raises(ValueError, match="pool_out"):
        F.batch_norm_forward(x, layer="bn", pool_out=np.empty((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="^bn: expected pool_out to be a writable C-contiguous "
                                         "float32 array"):
        F.batch_norm_forward(x, layer="bn", pool_out=pooled.astype(np.float64))
    with pytest.raises(ValueError, match="^bn: expected pool_argmax to be a writable "
                                         "C-contiguous int64"):
        F.batch_norm_forward(x, layer="bn", pool_out=pooled, pool_argmax=pooled)
    inside_x = x.reshape(-1)[:pooled.size].reshape(pooled.shape)  # x is C-contiguous
    with pytest.raises(ValueError, match="^bn: pool_out must not overlap input"):
        F.batch_norm_forward(x, layer="bn", pool_out=inside_x)
    pooled64 = pooled.astype(np.float64)
    with pytest.raises(ValueError, match="^bn: pool_argmax must not overlap pool_out"):
        F.batch_norm_forward(x.astype(np.float64), layer="bn", pool_out=pooled64,
                             pool_argmax=pooled64.view(np.int64))
    # backward: the gradient must have the pooled shape; no indices under no_grad
    y, cache = F.batch_norm_forward(x, relu=True, pool_out=pooled,
                                    pool_argmax=np.empty(pooled.shape, np.int64))
    pool_cache = P.max_pool2d_forward(y, 2)[1]
    with pytest.raises(ValueError, match="^bn: expected gradient of shape \\(2, 3, 3, 2\\)"):
        F.batch_norm_backward(np.ones_like(y), cache, layer="bn", pool_cache=pool_cache)
    with pytest.raises(TypeError, match="^bn: expected pool_cache to be the cache returned by "
                                        "max_pool2d_forward, got tuple"):
        F.batch_norm_backward(np.ones_like(pooled), cache, layer="bn", pool_cache=(1, 2))
    with minidl.no_grad():
        no_indices = P.max_pool2d_forward(y, 2)[1]
    with pytest.raises(RuntimeError, match="no_grad"):
        F.batch_norm_backward(np.ones_like(pooled), cache, layer="bn", pool_cache=no_indices)
    other = P.max_pool2d_forward(y[:1], 2)[1]
    with pytest.raises(ValueError, match="^bn: pool_cache pooled an input of shape \\(1, 3, 6, 5\\)"):
        F.batch_norm_backward(np.ones((1, 3, 3, 2), np.float32), cache, layer="bn",
                              pool_cache=other)


# ----------------------------------------------------------------------------- SyncBatchNorm's pieces
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_backward_kernels_equal_the_fused_one_bit_for_bit(rng, dtype):
    from minidl._kernels import _batchnorm as kernel

    x3 = _random_bn_input(rng, (5, 3, 40), dtype)
    dy3 = rng.standard_normal(x3.shape).astype(dtype)
    mean, var = F.channel_stats(x3)
    invstd = 1 / np.sqrt(var + 1e-5)
    gamma = rng.standard_normal(3)
    dx, s_dy, s_dyx = np.empty_like(x3), np.empty(3), np.empty(3)
    kernel.backward(dy3, x3, mean, invstd, gamma, True, dx, s_dy, s_dyx, 2)
    sums = np.empty(3), np.empty(3)
    kernel.grad_sums(dy3, x3, mean, *sums, 2)
    np.testing.assert_array_equal(sums[0], s_dy)
    np.testing.assert_array_equal(sums[1], s_dyx)
    split = np.empty_like(x3)
    kernel.input_grad(dy3, x3, mean, invstd, gamma, *sums, 5 * 40.0, split, 2)
    np.testing.assert_array_equal(split, dx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, parts", [((12, 3, 4, 4), [5, 4, 3]), ((10, 4), [2, 8]),
                                          ((6, 2, 5), [1, 1, 4])])
def test_sync_batchnorm_pieces_over_shards_equal_one_batchnorm(rng, shape, parts, dtype):
    """Emulates a SyncBatchNorm over len(parts) processes, each with its slice of the batch:
    the global statistics, outputs, input and parameter gradients are those of one BatchNorm
    over the whole batch."""
    x = _random_bn_input(rng, shape, dtype) + np.float32(1e3)  # an offset: no cancellation
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]), rng.standard_normal(shape[1])
    bounds = np.cumsum([0] + parts)
    shards = [(x[a:b], dy[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    local = [F.batch_norm_stats(xs) for xs, _ in shards]  # forward: local statistics ...
    count, mean, var = F.combine_batch_norm_stats(*zip(*local))  # ... "all-gathered"
    assert count == x.size // shape[1]
    full_mean, full_var = ref.batch_stats(x)
    np.testing.assert_allclose(mean, full_mean, rtol=1e-12)
    np.testing.assert_allclose(var, full_var, rtol=1e-9)
    outputs = [F.batch_norm_forward(xs, gamma, beta, mean, var, training=False)[0]
               for xs, _ in shards]  # normalize with the global statistics
    sums = [F.batch_norm_grad_sums(dys, xs, mean) for xs, dys in shards]  # backward ...
    sum_dy, sum_dy_xmu = (sum(s[k] for s in sums) for k in (0, 1))  # ... "all-reduced"
    dxs = [F.batch_norm_input_grad(dys, xs, mean, var, gamma, sum_dy, sum_dy_xmu, count)
           for xs, dys in shards]

    expected, cache = F.batch_norm_forward(x, gamma, beta, training=True)
    edx, edgamma, edbeta = F.batch_norm_backward(dy, cache)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.concatenate(outputs), expected, **tol)
    np.testing.assert_allclose(np.concatenate(dxs), edx, **tol)
    np.testing.assert_allclose(sum_dy, edbeta, rtol=1e-6)
    np.testing.assert_allclose(sum_dy_xmu / np.sqrt(var + 1e-5), edgamma, rtol=1e-5)


def test_sync_batchnorm_pieces_validate_their_arguments(rng):
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"batch_norm: expected mean of shape \(3,\), got \(2,\)"):
        F.batch_norm_grad_sums(x, x, np.zeros(2))
    with pytest.raises(ValueError, match=r"batch_norm: expected gradient of shape \(4, 3\)"):
        F.batch_norm_grad_sums(np.zeros((3, 4), np.float32), x, np.zeros(3))
    with pytest.raises(ValueError, match="batch_norm: expected count > 0, got 0"):
        F.batch_norm_input_grad(x, x, np.zeros(3), np.ones(3), None, np.zeros(3), np.zeros(3), 0)
    with pytest.raises(ValueError, match="batch_norm: expected positive counts"):
        F.combine_batch_norm_stats([3, 0], np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"batch_norm: expected counts \(P,\) and means, variances \(P, C\)"):
        F.combine_batch_norm_stats([3, 4], np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(TypeError, match="SyncBatchNorm: expected input dtype float32 or float64"):
        F.batch_norm_stats(np.zeros((4, 3), np.int8), layer="SyncBatchNorm")


_X43 = np.arange(12, dtype=np.float32).reshape(4, 3)
_STATS = dict(mean=np.zeros(3), var=np.ones(3), weight=None, sum_dy=np.zeros(3),
              sum_dy_xmu=np.zeros(3), count=4)


def _input_grad(**changes):
    return F.batch_norm_input_grad(_X43.copy(), _X43, **{**_STATS, **changes})


@pytest.mark.parametrize("call, exc, match", [
    (lambda: F.combine_batch_norm_stats(["a"], [[1.0]], [[1.0]]), TypeError,
     "batch_norm: expected counts to be an array of real numbers, got dtype <U1"),
    (lambda: F.combine_batch_norm_stats([2], [[1.0], [1.0, 2.0]], [[1.0]]), TypeError,
     "batch_norm: expected means to be an array of real numbers, got dtype object"),
    (lambda: F.combine_batch_norm_stats([2.5], [[1.0]], [[1.0]]), ValueError,
     r"batch_norm: expected positive counts \(whole numbers\), got \[2.5\]"),
    (lambda: F.combine_batch_norm_stats([2, np.inf], [[1.0], [1.0]], [[1.0], [1.0]]), ValueError,
     r"batch_norm: expected positive counts \(whole numbers\), got \[2.0, inf\]"),
    (lambda: F.combine_batch_norm_stats([2], [[np.nan]], [[1.0]]), ValueError,
     "batch_norm: expected finite means"),
    (lambda: F.combine_batch_norm_stats([2], [[1.0]], [[-1.0]]), ValueError,
     r"batch_norm: expected finite variances >= 0, got \[\[-1.0\]\]"),
    (lambda: F.combine_batch_norm_stats([2], np.zeros((1, 0)), np.zeros((1, 0))), ValueError,
     r"batch_norm: expected counts \(P,\) and means, variances \(P, C\) of one P, P >= 1 and C >= 1"),
    (lambda: F.combine_batch_norm_stats([2], np.zeros((1, 2, 2)), np.zeros((1, 2, 2))), ValueError,
     r"batch_norm: expected counts \(P,\) and means"),
    (lambda: F.batch_norm_grad_sums(_X43, _X43, [[1], [2, 3]]), TypeError,
     "batch_norm: expected mean to be an array of real numbers"),
    (lambda: F.batch_norm_grad_sums(_X43, _X43, None), ValueError, "batch_norm: mean is required"),
    (lambda: F.batch_norm_grad_sums(_X43.tolist(), _X43, np.zeros(3)), TypeError,
     "batch_norm: expected gradient to be a numpy.ndarray, got list"),
    (lambda: F.batch_norm_stats(np.zeros((0, 3), np.float32)), ValueError,
     r"batch_norm: expected input of shape .* with no empty axis, got shape \(0, 3\)"),
    (lambda: F.batch_norm_stats(np.zeros((4, 3), np.float16)), TypeError,
     "batch_norm: expected input dtype float32 or float64, got float16"),
    (lambda: _input_grad(count="4"), TypeError, "batch_norm: expected count to be a real number, got '4'"),
    (lambda: _input_grad(count=np.inf), ValueError, "batch_norm: expected count to be a finite number"),
    (lambda: _input_grad(eps="1e-5"), TypeError, "batch_norm: expected eps to be a real number"),
    (lambda: _input_grad(eps=0.0), ValueError, "batch_norm: eps must be > 0, got 0.0"),
    (lambda: _input_grad(var=-np.ones(3)), ValueError, r"batch_norm: expected a finite var >= 0, got \[-1.0"),
    (lambda: _input_grad(var=np.full(3, np.nan)), ValueError, "batch_norm: expected a finite var >= 0"),
    (lambda: _input_grad(sum_dy=np.zeros(4)), ValueError, r"batch_norm: expected sum_dy of shape \(3,\), got \(4,\)"),
    (lambda: _input_grad(out=_X43), ValueError, "batch_norm: out must not overlap input"),
    (lambda: F.batch_norm_input_grad(_X43, _X43.copy(), **_STATS, out=_X43), ValueError,
     "batch_norm: out must not overlap gradient"),
    (lambda: _input_grad(out=np.empty((4, 3), np.float64)), ValueError,
     r"batch_norm: expected out to be a writable C-contiguous float32 array of shape \(4, 3\)"),
])
def test_sync_batchnorm_pieces_refuse_every_kind_of_bad_argument(call, exc, match):
    """Issue 10: the SyncBatchNorm pieces are public; a wrong statistic would be a silent wrong
    gradient on every process (negative or NaN variances, fractional or infinite counts)."""
    with pytest.raises(exc, match=f"^{match}"):
        call()


def test_sync_batchnorm_pieces_accept_any_memory_layout(rng):
    x = _random_bn_input(rng, (6, 3, 4, 5), np.float64)
    dy = rng.standard_normal(x.shape)
    count, mean, var = F.batch_norm_stats(x)
    for make in (np.asfortranarray, lambda a: a[..., ::-1].copy()[..., ::-1]):
        assert F.batch_norm_stats(make(x))[1].tobytes() == mean.tobytes()
        sums = F.batch_norm_grad_sums(make(dy), make(x), mean)
        assert [s.tobytes() for s in sums] == [s.tobytes() for s in F.batch_norm_grad_sums(dy, x, mean)]
        dx = F.batch_norm_input_grad(make(dy), make(x), mean, var, None, *sums, count)
        assert dx.flags.c_contiguous and dx.tobytes() == F.batch_norm_input_grad(
            dy, x, mean, var, None, *sums, count).tobytes()


# ----------------------------------------------------------------------------- the (A, C, 1) view
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_kernels_for_one_value_per_row_and_channel(rng, dtype):
    """BatchNorm on (N, C) (and per-activation BatchNorm) views its input as (N, C, 1): the
    column kernels, in blocks of 256 channels. Several blocks, a ragged last one, any thread
    count: the reference's results, and the same bits for every thread count."""
    from minidl._kernels import _batchnorm as kernel

    a, c = 37, 600
    x3 = _random_bn_input(rng, (a, c), dtype).reshape(a, c, 1)
    x3[:, 5] = 1e4 + 1e-2 * rng.standard_normal((a, 1))  # far from 0, small spread
    x3[:, 7] = -2.5  # constant
    dy3 = rng.standard_normal(x3.shape).astype(dtype)
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rmean, rvar = ref.batch_stats(x3[..., 0])
    results = []
    for threads in (1, 2, 3):
        mean, var, out = np.empty(c), np.empty(c), np.empty_like(x3)
        kernel.forward_train(x3, gamma, beta, 1e-5, out, mean, var, threads)
        stats = np.empty(c), np.empty(c)
        kernel.channel_stats(x3, *stats, threads)
        invstd = 1 / np.sqrt(var + 1e-5)
        dx, s_dy, s_dyx = np.empty_like(x3), np.empty(c), np.empty(c)
        kernel.backward(dy3, x3, mean, invstd, gamma, True, dx, s_dy, s_dyx, threads)
        sums = np.empty(c), np.empty(c)
        kernel.grad_sums(dy3, x3, mean, *sums, threads)
        split_dx = np.empty_like(x3)
        kernel.input_grad(dy3, x3, mean, invstd, gamma, *sums, float(a), split_dx, threads)
        evaluated = np.empty_like(x3)
        kernel.normalize(x3, mean, gamma * invstd, beta, evaluated, threads)
        results.append((mean, var, out, *stats, dx, s_dy, s_dyx, *sums, split_dx, evaluated))
    for other in results[1:]:
        for got, first in zip(other, results[0]):
            np.testing.assert_array_equal(got, first)
    mean, var, out, smean, svar, dx, s_dy, s_dyx, g_dy, g_dyx, split_dx, evaluated = results[0]
    np.testing.assert_allclose(mean, rmean, rtol=1e-13)
    np.testing.assert_allclose(var, rvar, rtol=1e-9, atol=1e-300)
    np.testing.assert_array_equal(smean, mean)
    np.testing.assert_array_equal(svar, var)
    assert np.all(out[:, 7] == dtype(beta[7]))  # a constant channel gives exactly beta
    np.testing.assert_allclose(out[..., 0], ref.batch_norm_forward(x3[..., 0], gamma, beta, mean, var, 1e-5),
                               **TOL[dtype])
    np.testing.assert_array_equal(evaluated, out)
    rdx, _, _ = ref.batch_norm_backward_train(dy3[..., 0], x3[..., 0], gamma, 1e-5)
    np.testing.assert_allclose(dx[..., 0], rdx, rtol=1e-4 if dtype == np.float32 else 1e-9,
                               atol=1e-4 if dtype == np.float32 else 1e-9)
    np.testing.assert_array_equal(g_dy, s_dy)
    np.testing.assert_array_equal(g_dyx, s_dyx)
    np.testing.assert_array_equal(split_dx, dx)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 7), (3, 4, 5, 5), (2, 40)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_relu_option_is_batch_norm_then_relu_bit_for_bit(rng, shape, dtype, training, backend):
    # (N, C) inputs take the column kernels; NaN stays NaN and -0.0 stays -0.0, as ReLU has it
    import minidl
    from minidl.functional.activation import relu_forward
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[0] = np.nan
    channels = shape[1]
    weight, bias = rng.standard_normal((2, channels)).astype(dtype)
    bias[1] = -0.0
    weight[1] = 0.0  # channel 1 is exactly -0.0 (in eval: 0 * x + -0.0)
    stats = rng.standard_normal(channels).astype(dtype), rng.random(channels).astype(dtype) + 0.5
    with minidl.backend(backend):
        plain, _ = F.batch_norm_forward(x, weight, bias, *(s.copy() for s in stats),
                                        training=training)
        expected, _ = relu_forward(plain)
        running = [s.copy() for s in stats]
        fused, cache = F.batch_norm_forward(x, weight, bias, *running, training=training,
                                            relu=True)
        unfused = [s.copy() for s in stats]
        F.batch_norm_forward(x, weight, bias, *unfused, training=training)
    assert np.array_equal(fused, expected, equal_nan=True)
    assert np.array_equal(np.signbit(fused), np.signbit(expected))
    assert (fused[np.isfinite(fused)] >= 0).all() and (fused < 0).sum() == 0
    # the running statistics are updated (in training) as without the option
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(running, unfused))


def test_relu_option_must_be_a_bool(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="^batch_norm: expected relu to be True or False"):
        F.batch_norm_forward(x, relu="yes")


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5, 5), (1, 70)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_scale_from_the_kernel_is_numpys_bit_for_bit(rng, shape, dtype):
    # normalize_running computes 1 / sqrt(running_var + eps) and gamma * invstd per channel in
    # C: the same operations, in the same order, as the NumPy expressions it replaced
    from minidl._kernels import _batchnorm as kernel
    channels = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    weight, bias, running_mean = rng.standard_normal((3, channels)).astype(dtype)
    running_var = (rng.random(channels) * 3).astype(dtype)
    out, cache = F.batch_norm_forward(x, weight, bias, running_mean, running_var,
                                      training=False, eps=1e-3)
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + 1e-3)
    x3 = x.reshape(shape[0], channels, -1)
    expected = np.empty_like(x3)
    kernel.normalize(x3, running_mean.astype(np.float64), weight.astype(np.float64) * invstd,
                     bias.astype(np.float64), expected, 1)
    assert np.array_equal(out, expected.reshape(shape))
    assert np.array_equal(cache.invstd, invstd)
    assert np.array_equal(cache.mean, running_mean.astype(np.float64))
    running_mean[0] += 1.0  # the cache keeps its own copy of the running mean
    assert cache.mean[0] != running_mean[0]
