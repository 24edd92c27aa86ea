"""Dense, ReLU, Softmax, Flatten, Module and Sequential: gradients, dtypes, state, errors."""
import numpy as np
import pytest

from minidl.layers.activation import ReLU, Softmax
from minidl.layers.conv import Conv2D
from minidl.layers.dense import Dense
from minidl.layers.module import Module, Parameter
from minidl.layers.normalization import BatchNorm
from minidl.layers.pooling import MaxPool2D
from minidl.layers.shape import Flatten
from minidl.model import Sequential

from helpers import check_module_gradients


# ----------------------------------------------------------------------------- gradients (float64)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients(rng, bias):
    layer = Dense(5, 3, bias=bias, rng=rng).astype(np.float64)
    check_module_gradients(layer, rng.standard_normal((4, 5)), rng)


def test_relu_gradients(rng):
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink for finite differences
    check_module_gradients(ReLU(), x, rng)


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_softmax_gradients(rng, axis):
    check_module_gradients(Softmax(axis=axis), rng.standard_normal((3, 4, 2)), rng)


def test_sequential_gradients_through_all_layer_kinds(rng):
    model = Sequential(Flatten(), Dense(12, 6, rng=rng), BatchNorm(6), ReLU(), Dense(6, 4, rng=rng),
                       Softmax()).astype(np.float64)
    x = rng.standard_normal((5, 3, 2, 2))
    check_module_gradients(model, x, rng)


# ----------------------------------------------------------------------------- forward semantics
def test_dense_matches_definition(rng):
    layer = Dense(4, 3, rng=rng)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    expected = x.astype(np.float64) @ layer.weight.data.T.astype(np.float64) + layer.bias.data
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_dense_init_is_pytorch_default_and_seeded():
    a, b = Dense(50, 20, rng=7), Dense(50, 20, rng=7)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    bound = 1 / np.sqrt(50)
    assert np.abs(a.weight.data).max() <= bound and np.abs(a.weight.data).max() > 0.9 * bound
    assert a.weight.data.dtype == np.float32 and a.weight.data.shape == (20, 50)
    assert np.abs(a.bias.data).max() <= bound


def test_softmax_is_stable_and_normalized():
    x = np.array([[1e4, 0.0, -1e4], [3.0, 3.0, 3.0]], np.float32)
    y = Softmax()(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[1], 1 / 3, rtol=1e-6)


@pytest.mark.parametrize("layer", [Dense(4, 3), ReLU(), Softmax(), Flatten(), BatchNorm(4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_input_dtype(rng, layer, dtype):
    x = rng.standard_normal((5, 4)).astype(dtype)
    y = layer(x)
    assert y.dtype == dtype
    dx = layer.backward(rng.standard_normal(y.shape).astype(dtype))
    assert dx.dtype == dtype and dx.shape == x.shape
    for p in layer.parameters():
        assert p.grad.dtype == np.float32  # parameters keep their own dtype


def test_flatten_round_trip(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    f = Flatten()
    assert f(x).shape == (2, 60)
    np.testing.assert_array_equal(f.backward(f(x)), x)


# ----------------------------------------------------------------------------- module machinery
def _small_model(rng):
    return Sequential(Dense(4, 8, rng=rng), BatchNorm(8), ReLU(), Dense(8, 3, rng=rng))


def test_parameters_in_layer_order_and_buffers_excluded(rng):
    model = _small_model(rng)
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert all(isinstance(p, Parameter) for p in model.parameters())
    buffer_ids = {id(b) for _, b in model.named_buffers()}
    assert not buffer_ids & {id(p.data) for p in model.parameters()}
    assert list(model.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "3.weight", "3.bias"]


def test_train_eval_are_recursive(rng):
    model = _small_model(rng)
    assert model.training and model[1].training
    assert model.eval() is model
    assert not model.training and not model[1].training
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_state_dict_round_trip_restores_identical_outputs(rng):
    model = _small_model(rng)
    for _ in range(3):
        model(rng.standard_normal((16, 4)).astype(np.float32))
    state = model.state_dict()
    other = _small_model(np.random.default_rng(99))
    other.load_state_dict(state)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.eval()(x), other.eval()(x))
    # state_dict returns copies: changing the model does not change a saved state
    model[0].weight.data += 1
    assert not np.array_equal(model.state_dict()["0.weight"], state["0.weight"])


def test_load_state_dict_errors_leave_model_unchanged(rng):
    model = _small_model(rng)
    before = model.state_dict()
    bad = dict(before)
    bad["3.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"'3.weight' expected shape \(3, 8\), got \(2, 2\)"):
        model.load_state_dict(bad)
    missing = dict(before)
    del missing["1.running_var"]
    missing["0.weight"] = np.zeros((8, 4), np.float32)
    with pytest.raises(KeyError, match="1.running_var"):
        model.load_state_dict(missing)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_astype_converts_parameters_and_buffers(rng):
    model = _small_model(rng).astype(np.float64)
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in model.parameters())
    assert model[1].running_mean.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64
    with pytest.raises(TypeError, match="float32 or float64"):
        model.astype(np.int32)


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="Sequential: argument 1 is a int"):
        Sequential(ReLU(), 3)


def test_module_requires_super_init():
    class Broken(Module):
        def __init__(self):
            self.x = 1

    with pytest.raises(AttributeError, match="super"):
        Broken()


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("layer, x, exc, match", [
    (Dense(4, 3), np.zeros((2, 5), np.float32), ValueError, r"Dense: expected input of shape \(N, 4\), got shape \(2, 5\)"),
    (Dense(4, 3), np.zeros((2, 4, 1), np.float32), ValueError, r"Dense: expected input of shape \(N, 4\), got shape \(2, 4, 1\)"),
    (Dense(4, 3), np.zeros((2, 4), np.int32), TypeError, r"Dense: expected input dtype float32 or float64, got int32"),
    (Dense(4, 3), [[1.0] * 4], TypeError, r"Dense: expected input to be a numpy.ndarray, got list"),
    (ReLU(), np.zeros(3, np.uint8), TypeError, "ReLU: expected input dtype"),
    (Softmax(axis=2), np.zeros((2, 3), np.float32), ValueError, r"Softmax: axis 2 is out of range for input of shape \(2, 3\)"),
    (Flatten(), np.zeros(3, np.float32), ValueError, r"Flatten: expected input of shape \(N, ...\)"),
])
def test_bad_input_errors_name_the_layer(layer, x, exc, match):
    with pytest.raises(exc, match=match):
        layer(x)


@pytest.mark.parametrize("layer", [Dense(4, 3), ReLU(), Softmax(), Flatten()])
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}: backward called before forward"):
        layer.backward(np.zeros((2, 3), np.float32))


def test_backward_checks_gradient_shape(rng):
    layer = Dense(4, 3)
    layer(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"Dense: expected gradient of shape \(2, 3\) \(the output's\), got shape \(3, 2\)"):
        layer.backward(np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("args", [(0, 3), (3, -1), (2.5, 3), (True, 3)])
def test_dense_bad_constructor(args):
    with pytest.raises(ValueError, match="Dense: "):
        Dense(*args)


@pytest.mark.parametrize("make, shape", [
    (lambda: Dense(4, 3, dtype=np.float64), (2, 4)), (ReLU, (2, 4)), (Softmax, (2, 4)),
    (Flatten, (2, 4, 1)), (lambda: BatchNorm(4, dtype=np.float64), (2, 4)),
    (lambda: BatchNorm(3, dtype=np.float64), (2, 3, 4, 5)),
    (lambda: Conv2D(3, 2, 3, padding=1, dtype=np.float64), (2, 3, 5, 4)),
    (lambda: MaxPool2D(2), (2, 3, 4, 6)),
    (lambda: Sequential(Dense(4, 5, dtype=np.float64), ReLU(), Dense(5, 2, dtype=np.float64)),
     (3, 4)),
    (lambda: _small_model(np.random.default_rng(0)), (6, 4)),
], ids=["Dense", "ReLU", "Softmax", "Flatten", "BatchNorm-NC", "BatchNorm-NCHW", "Conv2D",
        "MaxPool2D", "Sequential", "Sequential-BN"])
def test_every_layer_accepts_input_grad_false(rng, make, shape):
    """The Module contract: backward(dout, input_grad=False) returns None and accumulates the
    same parameter gradients as input_grad=True; the gradient is still checked."""
    layer = make()
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(layer(x).shape)
    dx = layer.backward(dout)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    full = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()
    layer(x)
    assert layer.backward(dout, input_grad=False) is None
    for p, g in zip(layer.parameters(), full):
        np.testing.assert_array_equal(p.grad, g)
    layer(x)
    with pytest.raises(ValueError, match=r"expected gradient of shape"):
        layer.backward(np.zeros((1,) + dout.shape[1:]), input_grad=False)


def test_relu_never_overwrites_outputs_the_caller_keeps(rng):
    relu = ReLU()
    x1, x2 = rng.standard_normal((2, 64, 32, 32)).astype(np.float32)  # pooled sizes
    y1 = relu(x1)
    d1 = relu.backward(np.ones_like(y1))
    kept_y, kept_d = y1.copy(), d1.copy()
    relu(x2)
    relu.backward(np.full_like(y1, 2.0))
    np.testing.assert_array_equal(y1, kept_y)
    np.testing.assert_array_equal(d1, kept_d)


def test_relu_propagates_nan_like_pytorch():
    y = ReLU()(np.array([np.nan, -1.0, 2.0], np.float32))
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2


def test_empty_input_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match=r"Dense: expected input of shape \(N, 4\) with no empty axis, got shape \(0, 4\)"):
        Dense(4, 3)(np.zeros((0, 4), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernels_on_large_strided_inputs(rng, dtype):
    """The multi-threaded kernels against NumPy: a non-contiguous input large enough for
    several threads, with zeros, negative zeros and NaNs; the gradient comes from the output."""
    from minidl.functional.activation import relu_backward, relu_forward
    x = rng.standard_normal((8, 64, 40, 40)).astype(dtype)[:, ::2]
    x[0, 0, 0, :4] = [0.0, -0.0, np.nan, -np.nan]
    y, cache = relu_forward(x)
    assert y.flags.c_contiguous and y.dtype == dtype
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dout = rng.standard_normal(x.shape).astype(dtype)[..., ::-1]
    dx = relu_backward(dout, cache)
    np.testing.assert_array_equal(dx, np.where(x <= 0, 0, dout))
    # as torch.relu: 0 gets no gradient, a NaN passes it on
    assert dx[0, 0, 0, 0] == 0 and dx[0, 0, 0, 2] == dout[0, 0, 0, 2]


def test_relu_forward_out_must_not_overlap_the_input(rng):
    from minidl.functional.activation import relu_forward
    x = rng.standard_normal((4, 5))
    with pytest.raises(ValueError, match="relu.*overlap"):
        relu_forward(x, out=x)
    out = np.empty_like(x)
    assert relu_forward(x, out=out)[0] is out
