"""Dense, ReLU, Softmax, Flatten and Module: gradients, dtypes, state, errors (Sequential: test_model.py)."""
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


# ------------------------------------------------- adversarial inputs and arguments (issue 10)
_LAYERS = {  # name: (make, input shape)
    "Dense": (lambda: Dense(6, 3), (4, 6)),
    "Conv2D-direct": (lambda: Conv2D(2, 3, 3, padding=1), (2, 2, 6, 5)),
    "Conv2D-winograd": (lambda: Conv2D(4, 3, 3, padding=1, method="winograd"), (2, 4, 6, 5)),
    "Conv2D-im2col": (lambda: Conv2D(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)), (2, 2, 7, 5)),
    "BatchNorm": (lambda: BatchNorm(3), (4, 3, 2, 5)),
    "ReLU": (ReLU, (3, 4, 5)),
    "Softmax": (lambda: Softmax(axis=-1), (3, 4, 5)),
    "MaxPool2D": (lambda: MaxPool2D(3, stride=2), (2, 3, 7, 6)),
    "Flatten": (Flatten, (3, 4, 5)),
}


def _layouts(x):
    """The same values as ``x`` in other memory layouts: Fortran order, reversed and strided
    views, read-only, a broadcast (zero strides) and a byte-for-byte copy."""
    padded = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    padded[..., ::2] = x
    flipped = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    readonly = x.copy()
    readonly.flags.writeable = False
    return {"fortran": np.asfortranarray(x), "negative strides": flipped,
            "strided view": padded[..., ::2], "read-only": readonly,
            "broadcast": np.broadcast_to(x[:1], x.shape) if x.shape[0] == 1 else
            np.broadcast_to(x, (2,) + x.shape)[1]}


@pytest.mark.parametrize("name", list(_LAYERS))
def test_every_layout_of_the_input_gives_the_contiguous_result(rng, name):
    make, shape = _LAYERS[name]
    layer = make()
    x = rng.standard_normal(shape).astype(np.float32)
    y = layer(x)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dout)
    expected = [p.grad.copy() for p in layer.parameters()]
    for kind, variant in _layouts(x).items():
        layer.zero_grad()
        np.testing.assert_array_equal(layer(variant), y, err_msg=kind)
        np.testing.assert_array_equal(layer.backward(np.asfortranarray(dout)), dx, err_msg=kind)
        for p, g in zip(layer.parameters(), expected):
            np.testing.assert_array_equal(p.grad, g, err_msg=kind)


@pytest.mark.parametrize("name", list(_LAYERS))
@pytest.mark.parametrize("x, exc, match", [
    (np.zeros((2, 3), np.float16), TypeError, r"dtype float32 or float64, got float16 \(convert"),
    (np.zeros((2, 3), np.int64), TypeError, r"dtype float32 or float64, got int64"),
    (np.zeros((2, 3), bool), TypeError, r"dtype float32 or float64, got bool"),
    (np.zeros((2, 3), object), TypeError, r"dtype float32 or float64, got object"),
    (np.zeros((2, 3), ">f4"), TypeError, r"got >f4 \(non-native byte order"),
    (np.ma.zeros((2, 3), np.float32), TypeError, r"plain numpy.ndarray, got a numpy.ma"),
    ([[1.0, 2.0]], TypeError, r"expected input to be a numpy.ndarray, got list"),
    (np.float32(1.0), TypeError, r"expected input to be a numpy.ndarray, got float32"),
])
def test_unusable_inputs_are_type_errors_naming_the_layer(name, x, exc, match):
    layer = _LAYERS[name][0]()
    with pytest.raises(exc, match=f"^{type(layer).__name__}: .*{match}"):
        layer(x)


@pytest.mark.parametrize("name", [n for n in _LAYERS if n not in ("ReLU", "Flatten")])
@pytest.mark.parametrize("kind", ["0-d", "empty batch", "empty axis"])
def test_0d_and_empty_inputs_are_value_errors_naming_the_layer(name, kind):
    make, shape = _LAYERS[name]
    x = {"0-d": np.array(1.0, np.float32), "empty batch": np.zeros((0,) + shape[1:], np.float32),
         "empty axis": np.zeros(shape[:-1] + (0,), np.float32)}[kind]
    layer = make()
    if name == "Softmax" and kind == "empty batch":  # normalizes each of no rows, as PyTorch
        assert layer(x).shape == x.shape
        return
    with pytest.raises(ValueError, match=f"^{type(layer).__name__}: "):
        layer(x)


def test_relu_and_flatten_pass_empty_arrays_through_like_pytorch():
    assert ReLU()(np.zeros((0, 3), np.float32)).shape == (0, 3)
    flatten = Flatten()
    y = flatten(np.zeros((0, 3, 2), np.float32))
    assert y.shape == (0, 6)
    assert flatten.backward(np.zeros((0, 6), np.float32)).shape == (0, 3, 2)
    assert Flatten()(np.zeros((4, 0, 2), np.float32)).shape == (4, 0)
    with pytest.raises(ValueError, match=r"Flatten: expected input of shape \(N, ...\) with >= 2 "
                                         r"axes, got \(\)"):
        Flatten()(np.array(1.0, np.float32))


def test_softmax_axis_must_be_an_int_and_the_classes_not_empty():
    for axis in (1.5, None, "1", True):
        with pytest.raises(TypeError, match=f"Softmax: expected axis to be an int, got {axis!r}"):
            Softmax(axis=axis)
    with pytest.raises(ValueError, match=r"Softmax: expected at least one entry along axis 1 "
                                         r"\(the classes"):
        Softmax()(np.zeros((3, 0), np.float32))
    assert Softmax(axis=np.int64(0))(np.zeros((2, 3), np.float32)).shape == (2, 3)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: Conv2D(1, 1, True), ValueError, r"Conv2D: kernel_size must be an int or a pair of ints from 1"),
    (lambda: Conv2D(1, 1, float("nan")), ValueError, r"Conv2D: kernel_size must be .*, got nan"),
    (lambda: Conv2D(1, 1, 3, stride=0), ValueError, r"Conv2D: stride must be .*from 1 to .*, got 0"),
    (lambda: Conv2D(1, 1, 3, padding=-1), ValueError, r"Conv2D: padding must be .*from 0 to .*, got -1"),
    (lambda: Conv2D(1, 1, 3, padding=2 ** 40), ValueError, r"Conv2D: padding must be .*2147483647"),
    (lambda: Conv2D(1, 1, 3, dtype=np.float16), TypeError, r"Conv2D: dtype must be float32 or float64, got float16"),
    (lambda: Conv2D(1, 1, 3, dtype="foo"), TypeError, r"Conv2D: dtype must be float32 or float64, got 'foo'"),
    (lambda: Conv2D(1, 1, 3, bias="yes"), TypeError, r"Conv2D: expected bias to be True or False"),
    (lambda: Conv2D(1, 1, 3, rng="seed"), TypeError, r"rng: expected a numpy Generator or an int seed"),
    (lambda: Conv2D(1, 1, 3, rng=-5), ValueError, r"rng: expected a numpy Generator or an int seed"),
    (lambda: Conv2D(2 ** 20, 2 ** 20, 2 ** 10), MemoryError, r"Conv2D: the weight of shape .* would need"),
    (lambda: Dense(10 ** 7, 10 ** 7), MemoryError, r"Dense: the weight of shape \(2, 10000000, 10000000\) \(float32\) would need"),
    (lambda: Dense(3, 2, dtype=int), TypeError, r"Dense: dtype must be float32 or float64, got int"),
    (lambda: Dense(3, 2, bias=None), TypeError, r"Dense: expected bias to be True or False, got None"),
    (lambda: BatchNorm(3, eps="a"), TypeError, r"BatchNorm: expected eps to be a real number, got 'a'"),
    (lambda: BatchNorm(3, eps=0.0), ValueError, r"BatchNorm: eps must be > 0, got 0.0"),
    (lambda: BatchNorm(3, eps=float("nan")), ValueError, r"BatchNorm: expected eps to be a finite number"),
    (lambda: BatchNorm(3, momentum="0.1"), TypeError, r"BatchNorm: expected momentum \(or None\) to be a real number, got '0.1'"),
    (lambda: BatchNorm(3, momentum=True), TypeError, r"BatchNorm: expected momentum \(or None\) to be a real number, got True"),
    (lambda: BatchNorm(3, momentum=1.5), ValueError, r"BatchNorm: expected momentum \(or None\) in \[0, 1\], got 1.5"),
    (lambda: BatchNorm(3, affine="no"), TypeError, r"BatchNorm: expected affine to be True or False, got 'no'"),
    (lambda: BatchNorm(3, track_running_stats=1), TypeError, r"BatchNorm: expected track_running_stats to be True or False"),
    (lambda: BatchNorm(3, dtype=np.int8), TypeError, r"BatchNorm: dtype must be float32 or float64"),
    (lambda: BatchNorm(2 ** 62), MemoryError, r"BatchNorm: the parameters and buffers of shape"),
    (lambda: MaxPool2D(2, stride=2 ** 70), ValueError, r"MaxPool2D: stride must be .*from 1 to 2147483647"),
    (lambda: MaxPool2D((2, 0)), ValueError, r"MaxPool2D: kernel_size must be"),
])
def test_bad_constructor_arguments_name_the_layer(make, exc, match):
    with pytest.raises(exc, match=f"^{match}"):
        make()


def test_a_failed_batchnorm_forward_changes_no_state(rng):
    bn = BatchNorm(3, momentum=None)
    bn(rng.standard_normal((4, 3)).astype(np.float32))
    state = {k: v.copy() for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(rng.standard_normal((1, 3)).astype(np.float32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    bn(rng.standard_normal((4, 3)).astype(np.float32))  # the cumulative average counts 2 batches
    assert int(bn.num_batches_tracked) == 2


# ------------------------------------------------ arrays modified between forward and backward
@pytest.mark.parametrize("name, modify", [
    ("Dense", "input"), ("Dense", "weight"), ("Conv2D-direct", "weight"),
    ("Conv2D-winograd", "input"), ("BatchNorm", "input"), ("ReLU", "output"),
    ("Softmax", "output"),
])
def test_modifying_a_kept_array_in_place_before_backward_is_a_runtime_error(rng, name, modify):
    make, shape = _LAYERS[name]
    layer = make()
    if name == "Conv2D-direct":
        layer.padding = (0, 0)  # without padding the direct cache refers to x and the weight
    x = rng.standard_normal(shape).astype(np.float32)
    y = layer(x)
    target = {"input": x, "output": y, "weight": getattr(layer, "weight", None)}[modify]
    target = target.data if modify == "weight" else target
    target *= 2
    with pytest.raises(RuntimeError, match=f"^{type(layer).__name__}: the {modify} of the last "
                                           f"forward pass was modified in place before backward"):
        layer.backward(np.ones_like(y))
    layer(x)  # a new forward pass takes the new values
    assert layer.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize("method, padding, kept", [
    ("direct", 0, True), ("winograd", 1, True), ("direct", 1, False), ("im2col", 0, False)])
def test_conv2d_refuses_a_modified_input_when_its_cache_refers_to_it(rng, method, padding, kept):
    """The direct method without padding and Winograd keep a view of a contiguous input; the
    direct method with padding keeps a padded copy and im2col (for a small batch) its matrix,
    and then a modified input cannot change the gradient, so it is allowed."""
    conv = Conv2D(4, 2, 3, padding=padding, method=method, rng=rng)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    y = conv(x)
    expected = conv.backward(np.ones_like(y))
    conv(x)
    x[1, 0, 2, 3] += 1  # one element: in a sample this small every element is watched
    if kept:
        with pytest.raises(RuntimeError, match="Conv2D: the input of the last forward pass"):
            conv.backward(np.ones_like(y))
    else:
        np.testing.assert_array_equal(conv.backward(np.ones_like(y)), expected)


def test_an_optimizer_step_between_forward_and_backward_is_refused(rng):
    from minidl import optim
    layer = Dense(3, 2, rng=rng)
    opt = optim.SGD(layer.parameters(), lr=0.1)
    y = layer(rng.standard_normal((4, 3)).astype(np.float32))
    layer.weight.grad[...] = 1
    opt.step()
    with pytest.raises(RuntimeError, match="Dense: the weight of the last forward pass"):
        layer.backward(np.ones_like(y))


def test_reassigning_a_parameter_or_modifying_a_copy_is_fine(rng):
    layer = Dense(3, 2, rng=rng)
    x = rng.standard_normal((4, 3))  # float64 input: the layer keeps a float64 copy of W
    y = layer(x)
    layer.weight.data *= 2  # the cache holds its own cast copy
    layer.weight.data = np.zeros((2, 3), np.float32)  # a new array: the old one is intact
    assert layer.backward(np.ones_like(y)).shape == x.shape


def test_relu_backward_out_must_not_overlap_the_gradient_or_the_cached_output(rng):
    from minidl.functional.activation import ReluCache, relu_backward, relu_forward
    x = rng.standard_normal((4, 5))
    y, cache = relu_forward(x)
    dout = rng.standard_normal(x.shape)
    expected = relu_backward(dout, cache)
    with pytest.raises(ValueError, match="^relu: out must not overlap gradient"):
        relu_backward(dout, cache, out=dout)
    with pytest.raises(ValueError, match="^relu: out must not overlap the cached output"):
        relu_backward(dout, cache, out=y)
    np.testing.assert_array_equal(relu_backward(dout, cache), expected)  # the cache is intact
    with pytest.raises(TypeError, match="relu: expected the cache returned by relu_forward"):
        relu_backward(dout, (y,))
    with pytest.raises(ValueError, match="relu: the cache's y is not what relu_forward made"):
        relu_backward(dout[:, ::2], ReluCache(y[:, ::2]))


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_relu_option_is_linear_then_relu_bit_for_bit(rng, backend, dtype):
    import minidl
    from minidl.functional.activation import relu_forward
    from minidl.functional.linear import linear_forward
    x = rng.standard_normal((9, 12)).astype(dtype)
    weight = rng.standard_normal((70, 12)).astype(dtype)
    bias = rng.standard_normal(70).astype(dtype)
    with minidl.backend(backend):
        plain, _ = linear_forward(x, weight, bias)
        expected, _ = relu_forward(plain)
        fused, cache = linear_forward(x, weight, bias, relu=True)
    assert (expected == 0).any() and (expected > 0).any()
    assert np.array_equal(fused, expected) and fused.dtype == dtype
    assert cache[0] is x  # the usual cache: the backward pass is Dense's own
    with pytest.raises(TypeError, match="^linear: expected relu to be True or False"):
        linear_forward(x, weight, bias, relu=1)
