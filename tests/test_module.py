"""Module machinery: forward/backward hooks, the same object twice in one pass, a failed
backward pass, printing."""
import sys
import threading

import numpy as np
import pytest

import minidl
from minidl.layers import BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, Module, ReLU
from minidl.layers.module import RemovableHandle
from minidl.model import Sequential


def _model(rng):
    return Sequential(Dense(4, 6, rng=rng), ReLU(), Dense(6, 3, rng=rng))


# ----------------------------------------------------------------------------- forward hooks
def test_forward_hooks_see_and_replace_input_and_output(rng):
    model = _model(rng)
    relu = model[1]
    calls = []

    def pre(module, inputs):
        calls.append(("pre", module, len(inputs)))
        return inputs[0] * 2  # a single value is taken as (value,)

    def post(module, inputs, output):
        calls.append(("post", module, inputs[0].shape))
        return output + 1

    h1 = relu.register_forward_pre_hook(pre)
    h2 = relu.register_forward_hook(post)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    hidden = model[0](x)
    expected = model[2](np.maximum(hidden * 2, 0) + 1)
    np.testing.assert_allclose(model(x), expected, rtol=1e-6)
    assert calls == [("pre", relu, 1), ("post", relu, (5, 6))]
    assert isinstance(h1, RemovableHandle)
    h1.remove()
    h2.remove()
    h2.remove()  # twice is harmless
    np.testing.assert_allclose(model(x), model[2](np.maximum(hidden, 0)), rtol=1e-6)
    assert len(calls) == 2


def test_hook_order_prepend_and_context_manager(rng):
    layer = ReLU()
    order = []
    layer.register_forward_hook(lambda m, i, o: order.append("a"))
    layer.register_forward_hook(lambda m, i, o: order.append("b"))
    with layer.register_forward_hook(lambda m, i, o: order.append("first"), prepend=True):
        layer(np.ones(2))
    layer(np.ones(2))
    assert order == ["first", "a", "b", "a", "b"]


def test_hooks_run_through_call_only(rng):
    layer = ReLU()
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o))
    layer.forward(np.ones(2))
    assert seen == []
    layer(np.ones(2))
    assert len(seen) == 1


def test_recording_activation_statistics_during_training(rng):
    """Issue 11's use case: percentiles of every ReLU's input, recorded by hooks."""
    model = Sequential(Dense(4, 8, rng=rng), ReLU(), Dense(8, 8, rng=rng), ReLU(), Dense(8, 2, rng=rng))
    records = {}
    handles = [m.register_forward_pre_hook(
        lambda m, inputs, name=name: records.setdefault(name, []).append(
            np.percentile(inputs[0], [15, 50, 85])))
        for name, m in model.named_modules() if isinstance(m, ReLU)]
    for _ in range(3):
        out = model(rng.standard_normal((16, 4)).astype(np.float32))
        model.backward(np.ones_like(out))
    assert sorted(records) == ["1", "3"] and all(len(v) == 3 for v in records.values())
    assert all(np.all(np.diff(p) >= 0) for v in records.values() for p in v)
    for h in handles:
        h.remove()
    model(np.zeros((1, 4), np.float32))
    assert all(len(v) == 3 for v in records.values())


# ----------------------------------------------------------------------------- backward hooks
def test_backward_hooks_run_when_a_parent_calls_backward(rng):
    model = _model(rng)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    dy = rng.standard_normal((5, 3)).astype(np.float32)
    model(x)
    reference = model.backward(dy).copy()
    seen = []

    def hook(module, grad_input, grad_output):
        seen.append((module, grad_input[0].shape, grad_output[0].shape))
        return (grad_input[0] * 0,)

    model[2].register_full_backward_hook(hook)
    model(x)
    dx = model.backward(dy)
    assert seen == [(model[2], (5, 6), (5, 3))]
    np.testing.assert_array_equal(dx, 0)  # the replaced gradient flowed on
    assert not np.array_equal(reference, 0)


def test_backward_pre_hook_replaces_dout_and_sees_input_grad_false(rng):
    layer = Dense(3, 2, rng=rng)
    layer(np.ones((4, 3), np.float32))
    got = []
    layer.register_full_backward_pre_hook(lambda m, grad_output: (grad_output[0] * 0,))
    layer.register_full_backward_hook(lambda m, gi, go: got.append((gi, go)))
    assert layer.backward(np.ones((4, 2), np.float32), input_grad=False) is None
    (grad_input, grad_output), = got
    assert grad_input == (None,) and not np.any(grad_output[0])
    np.testing.assert_array_equal(layer.weight.grad, 0)


def test_backward_hooks_run_once_when_backward_calls_super(rng):
    class LoudDense(Dense):
        def backward(self, dout, input_grad=True):
            return super().backward(dout, input_grad=input_grad)

    layer = LoudDense(3, 2, rng=rng)
    calls = []
    layer.register_full_backward_hook(lambda m, gi, go: calls.append(1))
    layer(np.ones((2, 3), np.float32))
    layer.backward(np.ones((2, 2), np.float32))
    assert calls == [1]
    assert type(layer).backward.__wrapped__.__qualname__ == "test_backward_hooks_run_once_when_backward_calls_super.<locals>.LoudDense.backward"


def test_backward_from_a_mixin_is_wrapped_too():
    class Doubling:
        def backward(self, dout, input_grad=True):
            return 2 * dout

    class Layer(Doubling, Module):
        def forward(self, x):
            return 2 * x

    layer = Layer()
    seen = []
    layer.register_full_backward_hook(lambda m, gi, go: seen.append(gi[0]))
    assert layer.backward(np.ones(2)).tolist() == [2.0, 2.0]
    assert len(seen) == 1


def test_hook_errors():
    layer = ReLU()
    with pytest.raises(TypeError, match="ReLU.register_forward_hook: expected a callable hook, got int"):
        layer.register_forward_hook(3)
    with pytest.raises(TypeError, match="ReLU.register_full_backward_hook: expected a callable hook"):
        layer.register_full_backward_hook(None)
    layer(np.ones(2))
    layer.register_full_backward_hook(lambda m, gi, go: (gi[0], gi[0]))
    with pytest.raises(ValueError, match=r"ReLU: a full backward hook returned 2 gradients; expected one"):
        layer.backward(np.ones(2))


# ----------------------------------------------------------------------------- same object twice
def test_a_layer_reused_in_a_sequential_raises_at_the_second_forward(rng):
    relu = ReLU()
    conv1 = Conv2D(1, 2, kernel_size=3, padding=1, rng=rng)
    conv2 = Conv2D(2, 2, kernel_size=3, padding=1, rng=rng)
    model = Sequential(conv1, relu, conv2, relu)
    with pytest.raises(RuntimeError, match=r"ReLU \(at '1' and '3' in the Sequential\) was called twice in one forward pass.*Create a separate instance for each position"):
        model(np.zeros((1, 1, 4, 4), np.float32))
    # a fixed model works, and the failed pass left nothing behind
    model = Sequential(conv1, relu, conv2, ReLU())
    assert model(np.zeros((1, 1, 4, 4), np.float32)).shape == (1, 2, 4, 4)


def test_a_reused_layer_is_allowed_under_no_grad(rng):
    """Under no_grad nothing is cached, so running one object twice is correct and allowed."""
    shared = Dense(3, 3, rng=rng)
    model = Sequential(shared, ReLU(), shared)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with minidl.no_grad():
        out = model(x)
    w, b = shared.weight.data, shared.bias.data
    expected = np.maximum(x @ w.T + b, 0) @ w.T + b
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="called twice"):
        model(x)


def test_a_layer_reused_in_a_nested_sequential_is_named(rng):
    shared = Dense(4, 4, rng=rng)
    model = Sequential(Sequential(shared, ReLU()), Sequential(Flatten(), Sequential(shared)))
    with pytest.raises(RuntimeError, match=r"Dense \(at '0.0' and '1.1.0' in the Sequential\) was called twice"):
        model(np.zeros((2, 4), np.float32))


def test_a_composite_calling_one_child_twice_raises(rng):
    class Twice(Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return self.block(self.block(x))

    with pytest.raises(RuntimeError, match=r"ReLU \(at 'block' in the Twice\) was called twice"):
        Twice(ReLU())(np.ones(3))


def test_an_unregistered_child_is_still_caught():
    class Hidden(Module):
        def __init__(self):
            super().__init__()
            self.__dict__["layers"] = [ReLU()]  # not registered

        def forward(self, x):
            return self.layers[0](self.layers[0](x))

    with pytest.raises(RuntimeError, match=r"ReLU \(not registered as a child of the Hidden being run\) was called twice"):
        Hidden()(np.ones(3))


def test_the_same_layer_in_separate_top_level_passes_is_fine(rng):
    model = _model(rng)
    relu = model[1]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    first = model(x).copy()
    relu(np.ones(2))  # a top-level call of the child alone is its own pass
    np.testing.assert_array_equal(model(x), first)
    for _ in range(3):
        model.backward(np.ones_like(model(x)))


def test_a_failed_pass_does_not_poison_the_next():
    class Boom(Module):
        def forward(self, x):
            raise ValueError("boom")

    model = Sequential(ReLU(), Boom())
    with pytest.raises(ValueError, match="boom"):
        model(np.ones(2))
    relu = ReLU()
    assert Sequential(relu)(np.ones(2)).tolist() == [1.0, 1.0]
    assert relu(np.ones(2)).tolist() == [1.0, 1.0]


def test_passes_in_two_threads_do_not_mix(rng):
    """A pass running in one thread does not make another thread's calls part of it."""
    inside, release = threading.Event(), threading.Event()

    class Waits(Module):
        def forward(self, x):
            inside.set()
            release.wait(5)
            return x

    errors = []

    def slow_pass():
        try:
            Sequential(ReLU(), Waits())(np.ones(2))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=slow_pass)
    thread.start()
    assert inside.wait(5)
    model = Sequential(ReLU(), ReLU())
    for _ in range(3):  # would be "called twice" if this thread joined the other's pass
        model(np.ones(2))
    release.set()
    thread.join(5)
    assert errors == []


# ----------------------------------------------------------------------------- printing
def test_print_shows_nested_structure_like_pytorch(torch):
    ours = Sequential(ReLU(), Sequential(ReLU(), Sequential(ReLU()), ReLU()), Sequential(), ReLU())
    theirs = torch.nn.Sequential(
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Sequential(torch.nn.ReLU()), torch.nn.ReLU()),
        torch.nn.Sequential(), torch.nn.ReLU())
    assert repr(ours) == repr(theirs)


def test_print_of_a_model_with_nested_blocks():
    block = Sequential(Conv2D(1, 4, 3, padding=1, bias=False), BatchNorm(4), ReLU())
    model = Sequential(block, MaxPool2D(2), Flatten())
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Sequential(\n"
        "    (0): Conv2D(1, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)\n"
        "    (1): BatchNorm(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "    (2): ReLU()\n"
        "  )\n"
        "  (1): MaxPool2D(kernel_size=(2, 2), stride=(2, 2))\n"
        "  (2): Flatten()\n"
        ")"
    )


def test_replacing_a_child_or_parameter_keeps_its_place(rng):
    """As in PyTorch: assigning a new layer to a Sequential's name keeps it in the same position
    (the forward order), and a new Parameter keeps its state_dict position."""
    model = _model(rng)
    model.__setattr__("1", Flatten())
    assert [type(m).__name__ for m in model] == ["Dense", "Flatten", "Dense"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    model[0].weight = minidl.layers.Parameter(np.zeros((6, 4), np.float32))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    model.__setattr__("1", minidl.layers.Parameter(np.zeros(2, np.float32)))  # module -> parameter
    assert [type(m).__name__ for m in model] == ["Dense", "Dense"] and "1" in model._parameters


# ------------------------------------------------------------------- a failed backward pass
def _cnn(rng):
    return Sequential(Conv2D(2, 3, 3, padding=1, rng=rng), BatchNorm(3), ReLU(), MaxPool2D(2),
                      Flatten(), Dense(3 * 2 * 2, 5, rng=rng), ReLU(), Dense(5, 4, rng=rng))


def _grads(model):
    return [(p.grad, p.grad.copy()) for p in model.parameters()]


def _assert_grads_unchanged(saved, model):
    for (array, values), p in zip(saved, model.parameters()):
        assert p.grad is array  # the same array object (optimizers may hold it)
        np.testing.assert_array_equal(p.grad, values)


class _Fails(Module):
    """Passes x through; its backward accumulates into its own parameter, then raises."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.scale = minidl.layers.Parameter(np.ones(1, np.float32))

    def forward(self, x):
        return x

    def backward(self, dout, input_grad=True):
        if self.how == "accumulate_grad":
            self.scale.accumulate_grad(np.full(1, 7.0))
        else:
            self.scale.grad += 7.0  # written directly, not through accumulate_grad
        raise ZeroDivisionError("custom layer failed")


@pytest.mark.parametrize("accumulated", [False, True])
def test_a_wrong_dout_midway_leaves_every_grad_as_it_was(rng, accumulated):
    model = _cnn(rng)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    if accumulated:  # gradients from an earlier pass, to accumulate onto
        model.backward(rng.standard_normal(model(x).shape).astype(np.float32))
    saved = _grads(model)
    model(x)
    # the first Dense's backward hook hands a wrongly shaped gradient to Flatten, after both
    # Dense layers have accumulated theirs
    hook = model[5].register_full_backward_hook(lambda *args: np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match=r"Flatten: expected gradient of shape \(2, 12\)") as info:
        model.backward(rng.standard_normal((2, 4)).astype(np.float32))
    hook.remove()
    _assert_grads_unchanged(saved, model)
    if sys.version_info >= (3, 11):  # exceptions carry notes
        assert any("Parameter.grad was put back" in note for note in info.value.__notes__)
    model(x)  # and the model trains on: one more backward accumulates once
    model.backward(np.ones((2, 4), np.float32))
    assert any(not np.array_equal(p.grad, values) for (_, values), p in zip(saved, model.parameters()))


def test_a_failed_pass_after_zero_grad_set_to_none_leaves_every_grad_none(rng):
    model = Sequential(Dense(3, 4, rng=rng), _Fails("accumulate_grad"), ReLU(), Dense(4, 2, rng=rng))
    model.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    model(rng.standard_normal((5, 3)).astype(np.float32))
    with pytest.raises(ZeroDivisionError, match="custom layer failed"):
        model.backward(rng.standard_normal((5, 2)).astype(np.float32))
    assert all(p.grad is None for p in model.parameters())  # the last Dense's new grad undone
    model.zero_grad()  # zeros in place: a None gradient stays None
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(TypeError, match=r"^Sequential.zero_grad: expected set_to_none to be "
                                        r"True or False"):
        model.zero_grad(set_to_none="yes")


def test_parameters_lists_named_parameters_in_order(rng):
    model = Sequential(Dense(3, 4, rng=rng), Sequential(ReLU(), Dense(4, 2, rng=rng)))
    assert [id(p) for p in model.parameters()] == [id(p) for _, p in model.named_parameters()]


@pytest.mark.parametrize("how", ["accumulate_grad", "direct"])
def test_an_exception_in_a_custom_layer_leaves_every_grad_as_it_was(rng, how):
    model = Sequential(Dense(3, 4, rng=rng), _Fails(how), ReLU(), Dense(4, 2, rng=rng))
    saved = _grads(model)
    model(rng.standard_normal((5, 3)).astype(np.float32))
    with pytest.raises(ZeroDivisionError, match="custom layer failed"):
        model.backward(rng.standard_normal((5, 2)).astype(np.float32))
    _assert_grads_unchanged(saved, model)  # the Dense after it, and its own direct write


def test_a_failing_backward_hook_and_keyboard_interrupt_restore_too(rng):
    model = _model(rng)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    saved = _grads(model)
    model(x)
    with model[0].register_full_backward_hook(lambda *args: 1 / 0):
        with pytest.raises(ZeroDivisionError):
            model.backward(np.ones((3, 3), np.float32))
    _assert_grads_unchanged(saved, model)

    def interrupt(module, grad_output):
        raise KeyboardInterrupt

    model(x)
    with model[0].register_full_backward_pre_hook(interrupt):
        with pytest.raises(KeyboardInterrupt):
            model.backward(np.ones((3, 3), np.float32))
    _assert_grads_unchanged(saved, model)


def test_grads_set_to_none_come_back_as_none(rng):
    model = _model(rng)
    for p in model.parameters():
        p.grad = None
    model(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError):
        model.backward(np.ones((2, 3), np.float64))  # wrong dtype: nothing accumulated
    assert all(p.grad is None for p in model.parameters())
    model(np.ones((2, 4), np.float32))
    model.backward(np.ones((2, 3), np.float32))  # None starts again from the gradient
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_a_successful_backward_is_unchanged_and_nested_calls_save_once(rng):
    """Gradients accumulate exactly as before; a layer's own backward called at top level is
    its own pass (and restores only its own parameters)."""
    model = _model(rng)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    dout = rng.standard_normal((3, 3)).astype(np.float32)
    model(x)
    model.backward(dout)
    once = [p.grad.copy() for p in model.parameters()]
    model(x)
    model.backward(dout)
    for p, g in zip(model.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6)
    dense = model[2]
    dense(rng.standard_normal((3, 6)).astype(np.float32))
    before = [p.grad.copy() for p in model.parameters()]
    with pytest.raises(ValueError):
        dense.backward(np.ones((4, 3), np.float32))
    for p, g in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.grad, g)


def test_accumulate_grad_refuses_a_gradient_that_would_broadcast():
    p = minidl.layers.Parameter(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(2, 3\), got shape \(3,\)"):
        p.accumulate_grad(np.ones(3))


def test_accumulate_grad_takes_over_only_owned_arrays_of_its_dtype():
    """owned=True: a gradient set to None becomes the given array itself (no copy) when it owns
    its memory and has the parameter's dtype; a view, another dtype or owned=False is copied,
    and a later call adds into whichever array grad is."""
    p = minidl.layers.Parameter(np.zeros((2, 3), np.float32))
    g = np.ones((2, 3), np.float32)
    p.accumulate_grad(g, owned=True)  # a grad of zeros exists: added into, not replaced
    assert p.grad is not g and (p.grad == 1).all()
    p.grad = None
    p.accumulate_grad(g, owned=True)
    assert p.grad is g
    p.accumulate_grad(np.full((2, 3), 2.0, np.float32), owned=True)
    assert p.grad is g and (g == 3).all()
    for given in (np.ones((2, 6), np.float32)[:, ::2], np.ones((2, 3), np.float64),
                  np.ones((3, 2), np.float32).T):
        p.grad = None
        p.accumulate_grad(given, owned=True)
        assert p.grad is not given and not np.shares_memory(p.grad, given)
        assert p.grad.dtype == np.float32 and (p.grad == 1).all()
    g = np.ones((2, 3), np.float32)
    p.grad = None
    p.accumulate_grad(g)  # not owned: copied, so the caller may reuse g
    assert p.grad is not g


def test_dense_gradients_after_set_to_none_equal_the_accumulated_ones(rng):
    """Dense hands its fresh weight and bias gradients over (owned=True): training with
    zero_grad(set_to_none=True) gives the gradients of zero_grad(), and two backward passes
    still add up."""
    x = rng.standard_normal((5, 4)).astype(np.float32)
    dout = rng.standard_normal((5, 3)).astype(np.float32)
    a = Dense(4, 3, rng=np.random.default_rng(0))
    b = Dense(4, 3, rng=np.random.default_rng(0))
    a.zero_grad(set_to_none=True)
    b.zero_grad()  # gradients of zeros, added into
    for layer in (a, b):
        layer(x)
        layer.backward(dout)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    a(x)
    a.backward(dout)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.grad, 2 * q.grad, rtol=1e-6)
    for p in a.parameters():
        assert not any(np.shares_memory(p.grad, q.grad) for q in a.parameters() if q is not p)


@pytest.mark.parametrize("method,kernel,stride", [
    ("direct", 3, 1), ("winograd", 3, 1), ("winograd", 5, 1), ("pointwise", 1, 1),
    ("pointwise", 1, 2), ("im2col", 3, 2), ("im2col", 4, 1), ("unfold", 3, 1),
    ("unfold", 2, 2)])
def test_conv2d_gradients_handed_over_are_fresh_arrays(rng, method, kernel, stride):
    """Conv2D hands its weight and bias gradients over (owned=True), on every method: with
    zero_grad(set_to_none=True) they equal the accumulated ones, a gradient kept from one step
    is not changed by the next (no buffer is reused under it), and no gradient shares memory
    with a parameter or another gradient."""
    x = rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    a = Conv2D(4, 5, kernel, stride=stride, padding=kernel // 2, method=method,
               rng=np.random.default_rng(0))
    b = Conv2D(4, 5, kernel, stride=stride, padding=kernel // 2, method=method,
               rng=np.random.default_rng(0))
    dout = rng.standard_normal(a(x).shape).astype(np.float32)
    a.zero_grad(set_to_none=True)
    b.zero_grad()
    for layer in (a, b):
        layer(x)
        layer.backward(dout)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    kept = [p.grad for p in a.parameters()]
    copies = [g.copy() for g in kept]
    a.zero_grad(set_to_none=True)
    a(x)
    a.backward(2 * dout)
    for g, c, p in zip(kept, copies, a.parameters()):
        np.testing.assert_array_equal(g, c)
        np.testing.assert_allclose(p.grad, 2 * c, rtol=1e-5, atol=1e-6)
    arrays = [p.data for p in a.parameters()] + [p.grad for p in a.parameters()]
    for i, u in enumerate(arrays):
        assert not any(np.shares_memory(u, v) for v in arrays[i + 1:])
