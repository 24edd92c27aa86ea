"""The backend switch (minidl._backend): default, context manager, plain calls, errors, threads;
then what it switches: every op of minidl.functional runs its reference under "reference"
(validation first, backward by the cache's type), layer by layer and in a CNN trained on both
backends."""
import threading

import numpy as np
import pytest

import minidl
import minidl.functional as F
import minidl.reference.functional as ref
from helpers import assert_close
from minidl import _backend, layers
from minidl._backend import BACKENDS
from minidl.models import mnist_cnn


@pytest.fixture(autouse=True)
def compiled_afterwards():
    """Every test starts and ends on the default backend, whatever it does in between."""
    assert minidl.get_backend() == "compiled"
    yield
    minidl.set_backend("compiled")


def test_public_names_and_default():
    assert minidl.backend is _backend.backend
    assert minidl.set_backend is _backend.set_backend
    assert minidl.get_backend is _backend.get_backend
    assert {"backend", "get_backend", "set_backend"} <= set(minidl.__all__)
    assert _backend.BACKENDS == ("compiled", "reference")
    assert minidl.get_backend() == "compiled"


def test_context_manager_switches_and_restores():
    with minidl.backend("reference") as name:
        assert name == "reference" and minidl.get_backend() == "reference"
        with minidl.backend("compiled"):
            assert minidl.get_backend() == "compiled"
        assert minidl.get_backend() == "reference"
    assert minidl.get_backend() == "compiled"


def test_context_manager_restores_after_an_exception():
    with pytest.raises(KeyError):
        with minidl.backend("reference"):
            raise KeyError("inside")
    assert minidl.get_backend() == "compiled"


def test_context_manager_restores_a_backend_set_by_a_plain_call():
    minidl.set_backend("reference")
    with minidl.backend("compiled"):
        assert minidl.get_backend() == "compiled"
    assert minidl.get_backend() == "reference"


def test_set_backend_returns_the_previous_one():
    assert minidl.set_backend("reference") == "compiled"
    assert minidl.get_backend() == "reference"
    assert minidl.set_backend("reference") == "reference"
    assert minidl.set_backend("compiled") == "reference"


def test_usable_as_a_decorator():
    @minidl.backend("reference")
    def inside():
        return minidl.get_backend()

    assert inside() == "reference" and inside() == "reference"
    assert minidl.get_backend() == "compiled"


@pytest.mark.parametrize("bad", ["Reference", "numpy", "", "cython"])
def test_unknown_names_are_rejected_and_change_nothing(bad):
    with pytest.raises(ValueError, match=r"minidl.set_backend: unknown backend .*'compiled'"):
        minidl.set_backend(bad)
    with pytest.raises(ValueError, match=r"minidl.backend: unknown backend .*'reference'"):
        with minidl.backend(bad):
            pytest.fail("the block must not run")
    assert minidl.get_backend() == "compiled"


@pytest.mark.parametrize("bad", [None, 1, b"reference", ("reference",)])
def test_non_strings_are_rejected(bad):
    with pytest.raises(TypeError, match="minidl.set_backend: expected a backend name"):
        minidl.set_backend(bad)
    with pytest.raises(TypeError, match="minidl.backend: expected a backend name"):
        with minidl.backend(bad):
            pass
    assert minidl.get_backend() == "compiled"


def test_the_setting_is_per_thread():
    """A switch in one thread neither leaks into another nor is undone by it."""
    seen = {}
    started, switched, done = threading.Event(), threading.Event(), threading.Event()

    def worker():
        seen["start"] = minidl.get_backend()
        started.set()
        assert switched.wait(10)
        seen["after main switched"] = minidl.get_backend()
        with minidl.backend("reference"):
            done.wait(10)
            seen["inside"] = minidl.get_backend()

    thread = threading.Thread(target=worker)
    try:
        thread.start()
        assert started.wait(10)
        minidl.set_backend("reference")  # in this thread only
        switched.set()
        with minidl.backend("compiled"):  # nor does this one reach the worker's block
            pass
        done.set()
        thread.join(10)
    finally:
        switched.set()
        done.set()
    assert seen == {"start": "compiled", "after main switched": "compiled", "inside": "reference"}
    assert minidl.get_backend() == "reference"


# ---------------------------------------------------------------- the switch runs the references
# Every public op of minidl.functional, the reference module it dispatches to, and arguments for
# a forward call (x first) and for its backward call after (dout, cache).
def _op_cases(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    return {
        "conv2d": ("conv", (x, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), 1, 1)),
        "batch_norm": ("normalization", (x, rng.standard_normal(3), rng.standard_normal(3))),
        "max_pool2d": ("pooling", (x, 2)),
        "relu": ("activation", (x,)),
        "softmax": ("activation", (x,)),
        "linear": ("linear", (x.reshape(2, -1), rng.standard_normal((5, 108)),
                              rng.standard_normal(5))),
    }


def _spy_on(monkeypatch, module, name, calls):
    """Replace ``module.name`` with a wrapper that records its name in ``calls``."""
    function = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return function(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)


@pytest.mark.parametrize("op", ["conv2d", "batch_norm", "max_pool2d", "relu", "softmax",
                                "linear"])
def test_each_op_calls_its_reference_and_the_backward_follows_the_cache(op, monkeypatch, rng):
    """Under "reference" the public op runs the reference and returns its cache type and
    result; its backward goes to the reference even when called back on "compiled"; under
    "compiled" nothing reaches the reference."""
    module_name, args = _op_cases(rng)[op]
    module = getattr(ref, module_name)
    forward, backward = getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward")
    calls = []
    for name in (f"{op}_forward", f"{op}_backward"):
        _spy_on(monkeypatch, module, name, calls)

    with minidl.backend("reference"):
        out, cache = forward(*args)
    assert calls == [f"{op}_forward"] and isinstance(cache, ref.CACHE_TYPES)
    expected_out, expected_cache = getattr(ref, f"{op}_forward")(*args)  # (not the spy)
    np.testing.assert_array_equal(out, expected_out)
    assert type(cache) is type(expected_cache)

    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)  # on the default backend again
    assert calls == [f"{op}_forward", f"{op}_backward"]
    expected = getattr(ref, f"{op}_backward")(dout, expected_cache)
    for ours, theirs in zip(*(g if isinstance(g, tuple) else (g,) for g in (grads, expected))):
        np.testing.assert_array_equal(ours, theirs)

    calls.clear()
    out, cache = forward(*args)
    backward(dout, cache)
    assert calls == [] and not isinstance(cache, ref.CACHE_TYPES)
    with minidl.backend("reference"):  # and a compiled cache stays compiled
        backward(dout, cache)
    assert calls == []


def _layers():
    """One of each layer with a functional op, float64, and an input for it."""
    conv = [layers.Conv2D(3, 4, kernel_size=3, padding=1, method=method, rng=0,
                          dtype=np.float64) for method in ("direct", "winograd", "im2col")]
    return [(layer, (2, 3, 6, 6)) for layer in conv] + [
        (layers.BatchNorm(3).astype(np.float64), (2, 3, 6, 6)),
        (layers.BatchNorm1D(3).astype(np.float64), (4, 3)),
        (layers.ReLU(), (2, 3, 6, 6)),
        (layers.Softmax(), (2, 5)),
        (layers.MaxPool2D(2), (2, 3, 6, 6)),
        (layers.Dense(5, 4, rng=0, dtype=np.float64), (2, 5)),
    ]


@pytest.mark.parametrize("index", range(9))
def test_a_layer_under_the_reference_backend_keeps_a_reference_cache(index, rng):
    """Layer by layer: the forward pass under "reference" runs the reference (its cache type)
    and agrees with the compiled forward; backward gives the compiled gradients."""
    layer, shape = _layers()[index]
    x = rng.standard_normal(shape)
    expected = layer(x)
    assert not isinstance(layer._cache, ref.CACHE_TYPES)
    dout = rng.standard_normal(expected.shape)
    expected_dx = layer.backward(dout)
    expected_grads = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()

    with minidl.backend("reference"):
        out = layer(x)
        assert isinstance(layer._cache, ref.CACHE_TYPES)
    assert_close(out, expected, np.float64, "out")
    assert_close(layer.backward(dout), expected_dx, np.float64, "dx")
    for p, grad in zip(layer.parameters(), expected_grads):
        assert_close(p.grad, grad, np.float64, "parameter gradient")


def _train(model, backend, dtype, steps=3, batch=8):
    """``steps`` of SGD with momentum on random MNIST-shaped data; the losses."""
    model.astype(dtype).train()
    optimizer = minidl.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = minidl.losses.CrossEntropyLoss()
    data = np.random.default_rng(1)
    losses = []
    with minidl.backend(backend):
        for _ in range(steps):
            x = data.standard_normal((batch, 1, 28, 28)).astype(dtype)
            labels = data.integers(0, 10, batch)
            optimizer.zero_grad()
            losses.append(loss_fn(model(x), labels))
            model.backward(loss_fn.backward(), input_grad=False)
            optimizer.step()
    return np.array(losses)


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no-bn"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_training_the_mnist_cnn_agrees_on_both_backends(dtype, batch_norm):
    """The MNIST CNN (conv, BatchNorm, ReLU, max-pool, flatten, dense) from the same seed,
    3 steps of SGD with momentum on each backend: losses, parameters, running statistics and
    eval-mode logits agree to float64 rtol 1e-10 / float32 rtol 1e-4 (helpers.assert_close;
    measured: about 1e-15 and 1e-6 relative)."""
    compiled = mnist_cnn(norm="batch" if batch_norm else None, rng=0)
    reference = mnist_cnn(norm="batch" if batch_norm else None, rng=0)
    assert_close(_train(reference, "reference", dtype), _train(compiled, "compiled", dtype),
                 dtype, "losses")
    for (name, ours), (_, theirs) in zip(reference.named_parameters(),
                                         compiled.named_parameters()):
        assert_close(ours.data, theirs.data, dtype, name)
    for (name, ours), (_, theirs) in zip(reference.named_buffers(), compiled.named_buffers()):
        assert_close(np.asarray(ours, np.float64), np.asarray(theirs, np.float64), dtype, name)
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(dtype)
    with minidl.no_grad(), minidl.backend("reference"):
        logits = reference.eval()(x)
    assert logits.dtype == dtype
    assert_close(logits, compiled.eval()(x), dtype, "eval logits")


def test_switching_backends_between_forward_and_backward_is_safe(rng):
    """Each backward pass follows its forward pass's backend: a model run forward on
    "reference" and backward on "compiled" gives the gradients of an all-reference step
    exactly, and the other way round those of an all-compiled step."""
    x = rng.standard_normal((4, 1, 28, 28))
    dout = rng.standard_normal((4, 10))

    def gradients(forward_backend, backward_backend):
        model = mnist_cnn(rng=0).astype(np.float64)
        with minidl.backend(forward_backend):
            model(x)
        with minidl.backend(backward_backend):
            dx = model.backward(dout)
        return [dx] + [p.grad for p in model.parameters()]

    for mixed, pure in [(("reference", "compiled"), "reference"),
                        (("compiled", "reference"), "compiled")]:
        for ours, theirs in zip(gradients(*mixed), gradients(pure, pure)):
            np.testing.assert_array_equal(ours, theirs)


def test_no_grad_under_the_reference_backend():
    """no_grad keeps nothing for backward on the reference backend too; the outputs and the
    running statistics (BatchNorm in training mode still updates them) are those with
    gradients enabled."""
    x = np.random.default_rng(3).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with_grad, without_grad = mnist_cnn(rng=0), mnist_cnn(rng=0)
    with minidl.backend("reference"):
        expected = with_grad(x)
        with minidl.no_grad():
            out = without_grad(x)
    np.testing.assert_array_equal(out, expected)
    for (name, ours), (_, theirs) in zip(without_grad.named_buffers(),
                                         with_grad.named_buffers()):
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    assert without_grad[1].num_batches_tracked == 1
    kept = [isinstance(getattr(layer, "_cache", None), ref.CACHE_TYPES)
            for model in (with_grad, without_grad) for layer in model]
    assert sum(kept[:len(with_grad)]) == len(with_grad) - 1 and not any(kept[len(with_grad):])
    with pytest.raises(RuntimeError, match=r"Dense: backward after a forward pass under "
                                           r"minidl.no_grad"):
        with minidl.backend("reference"):
            without_grad.backward(np.ones_like(out))


# Bad calls: the public ops validate before they dispatch, so both backends reject them alike.
def _bad_calls(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    _, ref_conv = ref.conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)))
    _, ref_relu = ref.relu_forward(x)
    return [
        lambda: F.conv2d_forward(x, rng.standard_normal((4, 2, 3, 3))),
        lambda: F.conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)), stride=2,
                                 method="winograd"),
        lambda: F.conv2d_forward(x.astype(np.float32), rng.standard_normal((4, 3, 3, 3))),
        lambda: F.conv2d_forward(x[:, :, :1, :1], rng.standard_normal((4, 3, 3, 3))),
        lambda: F.conv2d_backward(np.ones((2, 4, 3, 3)), ref_conv),
        lambda: F.batch_norm_forward(x, training=False),
        lambda: F.batch_norm_forward(x, running_mean=np.zeros(3)),
        lambda: F.batch_norm_forward(x[:1, :, :1, :1]),
        lambda: F.batch_norm_forward(x, eps=0.0),
        lambda: F.max_pool2d_forward(x, 7),
        lambda: F.max_pool2d_forward(x, 2, out=np.empty((2, 3, 3, 3), np.float32)),
        lambda: F.relu_forward(x, out=x),
        lambda: F.relu_backward(np.ones((2, 3, 6, 6), np.float32), ref_relu),
        lambda: F.softmax_forward(x, axis=4),
        lambda: F.linear_forward(x, rng.standard_normal((5, 108))),
        lambda: F.linear_forward(x.reshape(2, -1), rng.standard_normal((5, 108)),
                                 np.zeros(1)),
    ]


@pytest.mark.parametrize("index", range(16))
def test_both_backends_reject_bad_arguments_with_the_same_error(index, rng):
    errors = []
    for name in BACKENDS:
        with minidl.backend(name), pytest.raises((TypeError, ValueError)) as caught:
            _bad_calls(rng)[index]()
        errors.append((caught.type, str(caught.value)))
    assert errors[0] == errors[1]


def test_gradcheck_of_a_small_cnn_on_the_reference_backend(monkeypatch, rng):
    """minidl.gradcheck (train and eval mode) passes for conv -> BatchNorm -> ReLU -> max-pool ->
    dense run entirely on the references."""
    calls = []
    _spy_on(monkeypatch, ref.conv, "conv2d_backward", calls)
    model = minidl.Sequential(
        layers.Conv2D(2, 3, kernel_size=3, padding=1, rng=0), layers.BatchNorm(3),
        layers.ReLU(), layers.MaxPool2D(2), layers.Flatten(), layers.Dense(12, 4, rng=0))
    with minidl.backend("reference"):
        minidl.gradcheck(model, rng.standard_normal((2, 2, 4, 4)))
    assert calls == ["conv2d_backward"] * 2  # one backward pass per mode, on the reference
