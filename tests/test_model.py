"""minidl.model.Sequential: gradients through every layer kind, construction and indexing errors,
the empty model."""
import numpy as np
import pytest

from minidl.layers.activation import ReLU, Softmax
from minidl.layers.dense import Dense
from minidl.layers.normalization import BatchNorm
from minidl.layers.shape import Flatten
from minidl.model import Sequential

from helpers import check_module_gradients


def test_sequential_gradients_through_all_layer_kinds(rng):
    model = Sequential(Flatten(), Dense(12, 6, rng=rng), BatchNorm(6), ReLU(), Dense(6, 4, rng=rng),
                       Softmax()).astype(np.float64)
    x = rng.standard_normal((5, 3, 2, 2))
    check_module_gradients(model, x, rng)


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="Sequential: argument 1 is a int"):
        Sequential(ReLU(), 3)


def test_sequential_indexing_errors_name_the_model():
    model = Sequential(ReLU(), Flatten())
    assert isinstance(model[-1], Flatten) and len(model[:1]) == 1
    with pytest.raises(IndexError, match="^Sequential: index 3 is out of range for 2 layers"):
        model[3]
    with pytest.raises(TypeError, match="^Sequential: expected an int or a slice index, got str"):
        model["0"]


def test_an_empty_sequential_is_the_identity_both_ways(rng):
    model = Sequential()
    x = rng.standard_normal((2, 3))
    assert model(x) is x
    assert model.backward(x) is x
    assert model.backward(x, input_grad=False) is None


# ---------------------------------------------------------------- BatchNorm + ReLU in one pass
def _fused_pair(rng, norm=BatchNorm):
    return Sequential(Dense(6, 5, rng=rng), norm(5), ReLU(), Dense(5, 3, rng=rng))


def _run(model, x, dout, fused):
    """Output, input gradient and parameter gradients, through Sequential (fused) or layer by
    layer (each layer's own __call__: never fused)."""
    model.zero_grad()
    if fused:
        out = model(x)
        dx = model.backward(dout)
    else:
        out = x
        for layer in model:
            out = layer(out)
        dx = dout
        for layer in reversed(list(model)):
            dx = layer.backward(dx)
    return out, dx, [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_relu_fusion_changes_no_bit(rng, training, dtype):
    import copy
    from minidl.model import _fuses_relu
    model = _fused_pair(rng).astype(dtype)
    model.train(training)
    assert _fuses_relu(model[1], model[2]) and not _fuses_relu(model[0], model[1])
    twin = copy.deepcopy(model)
    x = rng.standard_normal((8, 6)).astype(dtype)
    dout = rng.standard_normal((8, 3)).astype(dtype)
    for _ in range(2):  # the running statistics too (two steps)
        got = _run(model, x, dout, fused=True)
        want = _run(twin, x, dout, fused=False)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert all(np.array_equal(a, b) for a, b in zip(got[2], want[2]))
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch, bias", [(1, True), (7, False), (300, True)])
def test_dense_relu_fusion_changes_no_bit(rng, training, dtype, batch, bias):
    import copy
    from minidl.model import _fuses_relu
    model = Sequential(Dense(40, 300, bias=bias, rng=rng), ReLU(), Dense(300, 16, rng=rng),
                       ReLU()).astype(dtype)  # the last pair ends the model
    model.train(training)
    assert _fuses_relu(model[0], model[1]) and _fuses_relu(model[2], model[3])
    twin = copy.deepcopy(model)
    x = rng.standard_normal((batch, 40)).astype(dtype)
    dout = rng.standard_normal((batch, 16)).astype(dtype)
    got = _run(model, x, dout, fused=True)
    want = _run(twin, x, dout, fused=False)
    assert got[0].min() == 0 and got[0].max() > 0  # the ReLU did cut something
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert all(np.array_equal(a, b) for a, b in zip(got[2], want[2]))


def test_dense_relu_fusion_under_no_grad_and_in_place_changes(rng):
    import minidl
    model = Sequential(Dense(6, 5, rng=rng), ReLU())
    x = rng.standard_normal((4, 6)).astype(np.float32)
    with minidl.no_grad():
        out = model(x)
    assert np.array_equal(out, np.maximum(model[0](x), 0))
    out = model(x)
    out[0, 0] += 1.0
    with pytest.raises(RuntimeError, match="ReLU: the output of the last forward pass was "
                                           "modified in place"):
        model.backward(np.ones_like(out))


def test_batchnorm_relu_fusion_in_a_cnn_under_no_grad(rng):
    # the MNIST CNN runs BatchNorm + ReLU + MaxPool2D twice and BatchNorm + ReLU once as one
    import copy
    import minidl
    from minidl import models
    model = models.mnist_cnn(norm="batch", rng=rng)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    model(x)  # training step: running statistics move
    model.eval()
    twin = copy.deepcopy(model)
    with minidl.no_grad():
        out = model(x)
        want = x
        for layer in twin:
            want = layer(want)
    assert np.array_equal(out, want)
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(out))


def test_the_fused_relu_output_is_watched_for_in_place_changes(rng):
    model = Sequential(BatchNorm(4), ReLU())
    out = model(rng.standard_normal((5, 4)).astype(np.float32))
    out[0, 0] += 1.0
    with pytest.raises(RuntimeError, match="ReLU: the output of the last forward pass was "
                                           "modified in place"):
        model.backward(np.ones_like(out))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_relu_backward_runs_as_one_call_and_changes_no_bit(rng, dtype, monkeypatch):
    """Sequential.backward sends the gradient through a fused BatchNorm + ReLU pair in one
    kernel call (the ReLU's backward is not run), unless a backward hook needs the gradient
    in between; the gradients are the layer-by-layer ones either way (conv maps and (N, C))."""
    import copy
    from minidl import models
    model = models.mnist_cnn(norm="batch", rng=rng).astype(dtype)
    twin = copy.deepcopy(model)
    x = rng.standard_normal((5, 1, 28, 28)).astype(dtype)
    dout = rng.standard_normal((5, 10)).astype(dtype)
    relu_calls = []
    backward = ReLU.backward
    monkeypatch.setattr(ReLU, "backward", lambda self, *a, **k: (relu_calls.append(self),
                                                                   backward(self, *a, **k))[1])
    got = _run(model, x, dout, fused=True)
    assert relu_calls == []  # every ReLU of this model follows a BatchNorm
    want = _run(twin, x, dout, fused=False)
    assert len(relu_calls) == 3
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert all(np.array_equal(a, b) for a, b in zip(got[2], want[2]))
    seen = []  # a hook on either layer of a pair: that pair runs layer by layer
    relus = [layer for layer in model if isinstance(layer, ReLU)]
    relus[0].register_full_backward_hook(lambda m, gin, gout: seen.append(gout[0].shape))
    relu_calls.clear()
    assert np.array_equal(_run(model, x, dout, fused=True)[1], want[1])
    assert relu_calls == [relus[0]] and seen == [(5, 32, 28, 28)]


def test_a_batchnorm_relu_pair_fused_in_forward_is_the_one_fused_in_backward(rng):
    """The fusion follows the last forward pass: layers replaced since then run alone."""
    model = _fused_pair(rng)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    model(x)
    assert model._backward_fused(list(model)) == {2: 1}  # the pair (1, 2)
    model(x)
    model._modules[list(model._modules)[2]] = ReLU()  # a new ReLU that has not run
    with pytest.raises(RuntimeError, match="^ReLU: backward called before forward"):
        model.backward(np.ones((4, 3), np.float32))


# ------------------------------------------------------ BatchNorm + ReLU + MaxPool2D in one pass
def _conv_block(rng, pool=None):
    from minidl.layers.conv import Conv2D
    from minidl.layers.pooling import MaxPool2D
    return Sequential(Conv2D(2, 4, 3, padding=1, rng=rng), BatchNorm(4), ReLU(),
                      pool or MaxPool2D(2), Flatten())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [(6, 6), (7, 5), (2, 2)])
def test_batchnorm_relu_pool_fusion_changes_no_bit(rng, training, dtype, size, monkeypatch):
    """Sequential runs BatchNorm -> ReLU -> MaxPool2D(2) as one forward and one backward
    call (neither the pool's nor the ReLU's own forward/backward runs); outputs, gradients and
    running statistics are the layer-by-layer ones, bit for bit."""
    import copy
    from minidl.layers.pooling import MaxPool2D
    model = _conv_block(rng).astype(dtype)
    model.train(training)
    twin = copy.deepcopy(model)
    x = rng.standard_normal((3, 2) + size).astype(dtype)
    dout = rng.standard_normal((3, 4 * (size[0] // 2) * (size[1] // 2))).astype(dtype)
    calls = []
    for cls in (MaxPool2D, ReLU):
        for name in ("forward", "backward"):
            method = getattr(cls, name)
            monkeypatch.setattr(cls, name, lambda self, *a, _m=method, _n=name, **k: (
                calls.append((type(self).__name__, _n)), _m(self, *a, **k))[1])
    for _ in range(2):  # the running statistics too (two steps)
        got = _run(model, x, dout, fused=True)
        assert calls == []
        want = _run(twin, x, dout, fused=False)
        calls.clear()
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert all(np.array_equal(a, b) for a, b in zip(got[2], want[2]))
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert np.array_equal(a, b)
    # the ReLU's output is not kept (only the pooled output was written) but made on demand:
    # the pool's and the ReLU's backward run on their own too
    from minidl.functional.activation import ReluCache
    assert not isinstance(model[2]._cache, ReluCache)
    dpooled = rng.standard_normal(model[3]._cache.argmax.shape).astype(dtype)
    model(x)
    out = x
    for layer in list(twin)[:4]:
        out = layer(out)
    assert np.array_equal(model[2].backward(model[3].backward(dpooled)),
                          twin[2].backward(twin[3].backward(dpooled)))


def test_batchnorm_relu_pool_fusion_follows_hooks_and_geometry(rng):
    """A backward hook on the pool: the pool's backward runs alone (the hook sees its
    gradient) and the BatchNorm + ReLU pair stays one call; a forward hook on the pool, or
    another window or stride, runs the pool alone in the forward pass; all give the same
    bits. An input too small for the window raises MaxPool2D's own error."""
    import copy
    from minidl.layers.pooling import MaxPool2D
    from minidl.model import _fuses_pool
    model = _conv_block(rng)
    twin = copy.deepcopy(model)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    dout = rng.standard_normal((2, 36)).astype(np.float32)
    want = _run(twin, x, dout, fused=False)
    seen = []
    handle = model[3].register_full_backward_hook(lambda m, gin, gout: seen.append(gin[0].shape))
    got = _run(model, x, dout, fused=True)
    assert model._backward_fused(list(model)) == {2: 1} and seen == [(2, 4, 6, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(got[:2], want[:2]))
    handle.remove()
    handle = model[3].register_forward_hook(lambda m, inp, out: seen.append(inp[0].min()))
    got = _run(model, x, dout, fused=True)
    assert seen[-1] == 0  # the hook saw the ReLU's output, the pool's input
    assert model.__dict__["_fused_relu"][1] == {1: 2}
    assert all(np.array_equal(a, b) for a, b in zip(got[:2], want[:2]))
    handle.remove()
    for pool in (MaxPool2D(3, 2), MaxPool2D(2, 1), MaxPool2D((2, 1), (2, 2))):
        assert not _fuses_pool(model[1], pool, x)
        other = _conv_block(rng, pool)
        want = x
        for layer in copy.deepcopy(other):
            want = layer(want)
        assert np.array_equal(other(x), want) and other.__dict__["_fused_relu"][1] == {1: 2}
    assert _fuses_pool(model[1], model[3], x) and not _fuses_pool(model[1], model[3], x[:, :, :1])
    with pytest.raises(ValueError, match="^MaxPool2D: input of shape \\(2, 4, 1, 6\\) is smaller "
                                         "than kernel_size"):
        model(x[:, :, :1])


def test_batchnorm_relu_pool_fusion_checks_the_gradient_as_the_pool(rng):
    # (under no_grad: test_batchnorm_relu_fusion_in_a_cnn_under_no_grad, whose CNN fuses both)
    inner = Sequential(*list(_conv_block(rng))[1:4])  # BatchNorm, ReLU, MaxPool2D
    inner(rng.standard_normal((3, 4, 8, 8)).astype(np.float32))
    with pytest.raises(ValueError, match="^MaxPool2D: expected gradient of shape "
                                         "\\(3, 4, 4, 4\\)"):
        inner.backward(np.ones((3, 4, 8, 8), np.float32))


def test_hooks_or_other_classes_are_not_fused(rng):
    import minidl
    from minidl.model import _fuses_relu
    seen = []

    class MyNorm(BatchNorm):
        def forward(self, x):
            seen.append("MyNorm.forward")
            return super().forward(x)

    model = _fused_pair(rng, MyNorm)
    model(rng.standard_normal((4, 6)).astype(np.float32))
    assert seen == ["MyNorm.forward"]  # a subclass runs its own forward
    model = _fused_pair(rng)
    with minidl.backend("reference"):
        assert not _fuses_relu(model[1], model[2])
    handle = model[1].register_forward_hook(lambda m, inp, out: seen.append(out.min()))
    model(rng.standard_normal((64, 6)).astype(np.float32))
    assert seen[-1] < 0  # the hook saw BatchNorm's own output, before the ReLU
    handle.remove()
    handle = model[2].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].min()))
    model(rng.standard_normal((64, 6)).astype(np.float32))
    assert seen[-1] < 0
    handle.remove()


def test_a_relu_after_two_batchnorms_runs_twice_only_under_no_grad(rng):
    import minidl
    relu = ReLU()
    model = Sequential(BatchNorm(4), relu, BatchNorm(4), relu)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(RuntimeError, match="ReLU"):
        model(x)
    with minidl.no_grad():
        assert model(x).shape == (5, 4)
