"""Residual and Identity: gradients through both paths (identity and projection shortcuts,
nested blocks), PyTorch parity, one object twice, printing and summary, errors."""
import numpy as np
import pytest

import minidl
from minidl import layers
from minidl.model import Sequential

from helpers import assert_close_to_torch, check_module_gradients



def projection_block(cin, cout, rng, dtype=np.float32):
    """A ResNet basic block with a projection shortcut (1x1 conv stride 2 + BN), He et al. eq. 2."""
    body = Sequential(layers.Conv2D(cin, cout, 3, stride=2, padding=1, bias=False, rng=rng),
                      layers.BatchNorm(cout), layers.ReLU(),
                      layers.Conv2D(cout, cout, 3, padding=1, bias=False, rng=rng),
                      layers.BatchNorm(cout))
    shortcut = Sequential(layers.Conv2D(cin, cout, 1, stride=2, bias=False, rng=rng),
                          layers.BatchNorm(cout))
    return Sequential(layers.Residual(body, shortcut), layers.ReLU()).astype(dtype)


def torch_projection_block(cin, cout, torch, torch_models):
    nn = torch.nn
    body = nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
    shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential(torch_models.Residual(body, shortcut), nn.ReLU())


# ----------------------------------------------------------------------------- gradients
def test_identity_shortcut_gradients(rng):
    block = layers.Residual(Sequential(layers.Conv2D(3, 3, 3, padding=1, rng=rng),
                                       layers.BatchNorm(3), layers.ReLU()))
    check_module_gradients(block.astype(np.float64), rng.standard_normal((2, 3, 5, 5)), rng)


def test_projection_shortcut_gradients_in_train_and_eval(rng):
    block = projection_block(2, 4, rng, np.float64)
    x = rng.standard_normal((3, 2, 6, 6))
    block(x)  # running statistics away from their initial values for the eval-mode check
    report = minidl.gradcheck(block, x, seed=3)
    assert {c.mode for c in report.checks} == {"train", "eval"}
    assert len(report.checks) == 2 * (1 + len(block.parameters()))


def test_nested_residuals_gradients(rng):
    inner = layers.Residual(Sequential(layers.Dense(4, 4, rng=rng), layers.ReLU()))
    outer = layers.Residual(Sequential(inner, layers.Dense(4, 4, rng=rng)),
                            shortcut=layers.Dense(4, 4, rng=rng))
    check_module_gradients(outer.astype(np.float64), rng.standard_normal((5, 4)), rng)


def test_backward_sums_both_paths_exactly(rng):
    """With the identity as both body and a separate Identity shortcut: dx = 2 * dout, and
    the caller's dout is not modified in place."""
    block = layers.Residual(layers.Identity(), layers.Identity())
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y = block(x)
    np.testing.assert_array_equal(y, 2 * x)
    dout = rng.standard_normal((2, 3)).astype(np.float32)
    saved = dout.copy()
    np.testing.assert_array_equal(block.backward(dout), 2 * saved)
    np.testing.assert_array_equal(dout, saved)


def test_the_sum_does_not_overwrite_the_bodys_cached_output(rng):
    relu = layers.ReLU()
    block = layers.Residual(relu)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    y = block(x)
    np.testing.assert_array_equal(relu._cache.y, np.maximum(x, 0))  # ReLU keeps its output
    assert not np.shares_memory(y, relu._cache.y) and not np.shares_memory(y, x)


def test_input_grad_false_skips_the_input_gradient_but_not_the_parameters(rng):
    block = projection_block(2, 4, rng)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    dout = rng.standard_normal(block(x).shape).astype(np.float32)
    block.backward(dout)
    expected = [p.grad.copy() for p in block.parameters()]
    block.zero_grad()
    block(x)
    assert block.backward(dout, input_grad=False) is None
    for p, grad in zip(block.parameters(), expected):
        np.testing.assert_allclose(p.grad, grad, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection_block_matches_torch(rng, dtype, torch, torch_models):
    ours = projection_block(3, 8, rng, dtype)
    theirs = torch_models.load_from_minidl(torch_projection_block(3, 8, torch, torch_models), ours,
                                           torch.float64 if dtype == np.float64 else torch.float32)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for step in range(2):  # two training steps: running statistics move too
        x = rng.standard_normal((4, 3, 8, 8)).astype(dtype)
        dout = rng.standard_normal((4, 8, 4, 4)).astype(dtype)
        ours.zero_grad()
        theirs.zero_grad()
        y = ours(x)
        dx = ours.backward(dout)
        xt = torch.from_numpy(x).requires_grad_()
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dout))
        assert_close_to_torch(y, yt, **tol, what=f"output, step {step}")
        assert_close_to_torch(dx, xt.grad, **tol, what=f"input gradient, step {step}")
        for (name, p), tp in zip(ours.named_parameters(), theirs.parameters()):
            assert_close_to_torch(p.grad, tp.grad, **tol, what=f"{name}.grad, step {step}")
    tstate = theirs.state_dict()
    for key, value in ours.state_dict().items():
        assert_close_to_torch(np.asarray(value, np.float64), tstate[key].double(), **tol, what=key)


# ----------------------------------------------------------------------------- one object twice
def test_the_same_block_as_body_and_shortcut_raises_at_the_forward_pass(rng):
    block = Sequential(layers.Dense(3, 3, rng=rng), layers.ReLU())
    twice = layers.Residual(block, block)
    with pytest.raises(RuntimeError, match=r"Sequential \(at 'body' and 'shortcut' in the "
                                           r"Residual\) was called twice in one forward pass"):
        twice(np.zeros((2, 3), np.float32))
    with minidl.no_grad():  # nothing is cached: allowed
        assert twice(np.ones((2, 3), np.float32)).shape == (2, 3)


# ----------------------------------------------------------------------------- display
def test_print_shows_nested_residual_blocks():
    inner = layers.Residual(Sequential(layers.ReLU()))
    model = Sequential(layers.Residual(Sequential(inner, layers.ReLU()), shortcut=layers.Identity()))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Residual(\n"
        "    (body): Sequential(\n"
        "      (0): Residual(\n"
        "        shortcut=identity\n"
        "        (body): Sequential(\n"
        "          (0): ReLU()\n"
        "        )\n"
        "      )\n"
        "      (1): ReLU()\n"
        "    )\n"
        "    (shortcut): Identity()\n"
        "  )\n"
        ")"
    )


def test_summary_of_nested_residual_blocks(rng):
    model = Sequential(layers.Conv2D(3, 4, 3, padding=1, bias=False, rng=rng),
                       projection_block(4, 8, rng),
                       layers.Residual(layers.Residual(layers.ReLU())),
                       layers.GlobalAvgPool2D(), layers.Dense(8, 10, rng=rng))
    result = minidl.summary(model, (2, 3, 8, 8), verbose=False)
    rows = {r.name: r for r in result.rows}
    assert rows["1.0.body.0"].output_shape == (2, 8, 4, 4) and rows["1.0.body.0"].depth == 4
    assert rows["1.0.shortcut.0"].flops == 2 * 4 * (2 * 8 * 4 * 4)  # 1x1 conv, no bias
    assert rows["1.0"].type == "Residual" and rows["1.0"].flops == 2 * 8 * 4 * 4  # the addition
    assert rows["2"].flops == rows["2.body"].flops == 2 * 8 * 4 * 4
    assert result.trainable_params == sum(p.data.size for p in model.parameters())
    assert result.output_shape == (2, 10)
    assert "    1.0.shortcut: Sequential" in str(result)


# ----------------------------------------------------------------------------- Identity
def test_identity_returns_its_input(rng):
    layer = layers.Identity()
    x = rng.standard_normal((2, 3)).astype(np.float32)
    assert layer(x) is x
    dout = rng.standard_normal((2, 3)).astype(np.float32)
    assert layer.backward(dout) is dout
    assert layer.backward(dout, input_grad=False) is None
    with pytest.raises(ValueError, match=r"Identity: expected gradient of shape \(2, 3\)"):
        layer.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="Identity: expected input to be a numpy.ndarray"):
        layer([1.0, 2.0])


# ----------------------------------------------------------------------------- errors
def test_bad_residuals_are_refused(rng):
    with pytest.raises(TypeError, match="Residual: body must be a Module, got function"):
        layers.Residual(lambda x: x)
    with pytest.raises(TypeError, match="Residual: shortcut must be a Module or None, got int"):
        layers.Residual(layers.ReLU(), 3)
    shrink = layers.Residual(layers.Conv2D(3, 8, 3, stride=2, padding=1, rng=rng))
    with pytest.raises(ValueError, match=r"Residual: the body's output \(2, 8, 4, 4\) and the "
                                         r"shortcut's \(2, 3, 8, 8\) must have the same shape.*"
                                         r"projection shortcut"):
        shrink(np.zeros((2, 3, 8, 8), np.float32))
    mixed = layers.Residual(layers.Dense(3, 3, rng=rng, dtype=np.float64),
                            layers.Dense(3, 3, rng=rng))
    mixed_input = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="Residual: the body's output is float32"):
        layers.Residual(layers.ReLU(), _Cast())(mixed_input)
    assert mixed(mixed_input).dtype == np.float32  # Dense keeps the input's dtype
    block = layers.Residual(layers.ReLU())
    with pytest.raises(RuntimeError, match="Residual: backward called before forward"):
        block.backward(np.zeros((2, 3), np.float32))
    block(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"Residual: expected gradient of shape \(2, 3\)"):
        block.backward(np.zeros((2, 4), np.float32))


class _Cast(layers.Module):
    """A shortcut that returns float64 (to provoke the dtype check)."""

    def forward(self, x):
        return x.astype(np.float64)

    def backward(self, dout, input_grad=True):
        return dout.astype(np.float32) if input_grad else None


# ---------------------------------------------------------------- adversarial cases (issue 10)
class _Returns(layers.Module):
    """A custom child whose forward and backward return what it is told (to provoke checks)."""

    def __init__(self, forward=None, backward=None):
        super().__init__()
        self._out, self._grad = forward, backward

    def forward(self, x):
        return x if self._out is None else self._out(x)

    def backward(self, dout, input_grad=True):
        return (dout if self._grad is None else self._grad(dout)) if input_grad else None


@pytest.mark.parametrize("body, shortcut, error, match", [
    (_Returns(lambda x: x[:, :, :1, :1]), None, ValueError,  # (2, 3, 1, 1) would broadcast
     r"Residual: the body's output \(2, 3, 1, 1\) and the shortcut's \(2, 3, 4, 4\)"),
    (layers.Identity(), _Returns(lambda x: x[:1]), ValueError,
     r"Residual: the body's output \(2, 3, 4, 4\) and the shortcut's \(1, 3, 4, 4\)"),
    (_Returns(lambda x: x.tolist()), None, TypeError,
     "Residual: expected the body's output to be a numpy.ndarray, got list"),
    (layers.Identity(), _Returns(lambda x: None), TypeError,
     "Residual: expected the shortcut's output to be a numpy.ndarray, got NoneType"),
    (_Returns(lambda x: x.astype(np.float16)), None, TypeError,
     "Residual: expected the body's output dtype float32 or float64, got float16"),
])
def test_outputs_that_cannot_be_added_are_named(body, shortcut, error, match):
    with pytest.raises(error, match=match):
        layers.Residual(body, shortcut)(np.zeros((2, 3, 4, 4), np.float32))


@pytest.mark.parametrize("path", ["body", "shortcut"])
@pytest.mark.parametrize("grad, got", [
    (lambda d: d[:1], r"got float32 \(1, 3\)"),          # would broadcast
    (lambda d: d[:, :1], r"got float32 \(2, 1\)"),       # would broadcast
    (lambda d: d.astype(np.float64), r"got float64 \(2, 3\)"),
    (lambda d: None, "got NoneType"),
    (lambda d: d.tolist(), "got list"),
])
def test_a_child_gradient_of_the_wrong_shape_is_refused_and_changes_nothing(path, grad, got, rng):
    """A custom child's backward returning another shape is an error naming Residual and the
    path (never a broadcast), and the other child's parameter gradients are left as they were."""
    dense = layers.Dense(3, 3, rng=rng)
    bad = _Returns()
    block = layers.Residual(dense, bad) if path == "shortcut" else layers.Residual(bad, dense)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    block(x)
    block.backward(np.ones((2, 3), np.float32))
    before = dense.weight.grad.copy(), dense.bias.grad.copy()
    bad._grad = grad
    block(x)
    with pytest.raises(ValueError, match=rf"Residual: the {path}'s backward must return the "
                                         rf"gradient of the input, float32 \(2, 3\), {got}"):
        block.backward(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(dense.weight.grad, before[0])
    np.testing.assert_array_equal(dense.bias.grad, before[1])


def test_an_input_modified_before_backward_is_caught_inside_the_block(rng):
    block = layers.Residual(Sequential(layers.Dense(3, 3, rng=rng), layers.ReLU()))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    block(x)
    x += 1
    with pytest.raises(RuntimeError, match="Dense: the input of the last forward pass was "
                                           "modified in place before backward"):
        block.backward(np.ones((4, 3), np.float32))
    assert not block.body[0].weight.grad.any()  # nothing accumulated


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_non_contiguous_inputs_give_the_same_bits(layout, rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    relaid = np.asfortranarray(x) if layout == "fortran" else np.repeat(x, 2, axis=3)[..., ::2]
    results = []
    for a in (x, relaid):
        block = projection_block(3, 4, np.random.default_rng(0))
        y = block(a)
        results.append((y, block.backward(np.ones_like(y))))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("training", [True, False])
def test_a_residual_and_its_relu_fused_by_sequential_change_no_bit(rng, training):
    import copy
    import minidl.model as model_module
    block = projection_block(3, 8, rng)
    block.train(training)
    assert model_module._fuses_relu(block[0], block[1])  # the path under test is taken
    twin = copy.deepcopy(block)
    x = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
    dout = rng.standard_normal((4, 8, 5, 5)).astype(np.float32)
    out = block(x)
    dx = block.backward(dout)
    fuses = model_module._fuses_relu
    model_module._fuses_relu = lambda layer, following: False  # the twin: layer by layer
    try:
        twin_out = twin(x)
        twin_dx = twin.backward(dout)
    finally:
        model_module._fuses_relu = fuses
    assert np.array_equal(out, twin_out) and (out >= 0).all()
    assert np.array_equal(dx, twin_dx)
    for p, q in zip(block.parameters(), twin.parameters()):
        assert np.array_equal(p.grad, q.grad)
    for a, b in zip(block.state_dict().values(), twin.state_dict().values()):
        assert np.array_equal(a, b)
