"""minidl.gradcheck: passes on correct layers, fails (with the right index) on wrong ones, and
leaves the module as it was."""
import functools

import numpy as np
import pytest

import minidl
from minidl import GradcheckError, gradcheck
from minidl.functional.linear import linear_backward, linear_forward
from minidl.functional.normalization import batch_norm_backward, batch_norm_forward
from minidl.gradcheck import GradcheckReport, numerical_gradient
from minidl.layers import (BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, Module, Parameter, ReLU,
                           Softmax)
from minidl.model import Sequential


class Scale(Module):
    """y = x * weight (per feature) + offset buffer; its backward can be broken on purpose."""

    def __init__(self, features, bug=None):
        super().__init__()
        self.weight = Parameter(np.linspace(0.5, 1.5, features))
        self.register_buffer("offset", np.zeros(features))
        self.bug = bug
        self._x = None

    def forward(self, x):
        self._x = x
        return x * self.weight.data + self.offset

    def backward(self, dout, input_grad=True):
        dweight = (dout * self._x).sum(axis=0)
        dx = dout * self.weight.data
        if self.bug == "weight":
            dweight[2] *= 1.5  # wrong for one entry only
        elif self.bug == "input":
            dx = dx.copy()
            dx[1, 3] += 0.25
        elif self.bug == "shape":
            dx = dx.T
        self.weight.accumulate_grad(dweight)
        return dx


class Dropoutish(Module):
    """Inverted dropout drawing its mask from a module generator (as minidl's Dropout will)."""

    def __init__(self, p=0.5, rng=0, use_global=False):
        super().__init__()
        self.p = p
        self.rng = np.random.default_rng(rng)
        self.use_global = use_global
        self._mask = None

    def forward(self, x):
        if not self.training:
            self._mask = None
            return x
        draw = np.random.random_sample(x.shape) if self.use_global else self.rng.random(x.shape)
        self._mask = (draw >= self.p) / (1 - self.p)
        return x * self._mask

    def backward(self, dout, input_grad=True):
        return dout if self._mask is None else dout * self._mask


def test_passes_on_correct_layers_in_train_and_eval(rng):
    model = Sequential(Conv2D(2, 3, kernel_size=3, padding=1, bias=False, rng=rng), BatchNorm(3),
                       ReLU(), MaxPool2D(2), Flatten(), Dense(12, 5, rng=rng), Softmax())
    model.astype(np.float64)
    x = rng.standard_normal((4, 2, 4, 4))
    report = gradcheck(model, x)
    assert report.passed and bool(report)
    assert [(c.mode, c.name) for c in report.checks] == [
        (mode, name) for mode in ("train", "eval")
        for name in ("input", "0.weight", "1.weight", "1.bias", "5.weight", "5.bias")]
    for c in report.checks:
        assert c.max_abs_error < 1e-6 and c.failures == 0
        assert c.analytic_grad.shape == c.numeric_grad.shape == c.shape
    assert "gradcheck passed" in str(report) and "1.weight" in str(report)


def test_wrong_parameter_gradient_raises_with_the_worst_index(rng):
    layer = Scale(5, bug="weight")
    x = rng.standard_normal((3, 5))
    with pytest.raises(GradcheckError) as info:
        gradcheck(layer, x, modes=("train",))
    message = str(info.value)
    failed = info.value.report.check("weight")
    assert not failed.passed and failed.index == (2,) and failed.failures == 1
    assert failed.analytic == pytest.approx(1.5 * failed.numeric, rel=1e-6)
    assert f"the gradient of 'weight' (train mode) is wrong at index (2,): analytic {failed.analytic:.10g}, numeric {failed.numeric:.10g}" in message
    assert "1 of 5 entries are out of tolerance" in message
    assert info.value.report.check("input").passed
    assert isinstance(info.value, AssertionError)


def test_wrong_input_gradient_raises_with_the_worst_index(rng):
    layer = Scale(4, bug="input")
    with pytest.raises(GradcheckError, match=r"the gradient of 'input' \(eval mode\) is wrong at index \(1, 3\)") as info:
        gradcheck(layer, rng.standard_normal((2, 4)), modes="eval")
    check = info.value.report.check("input", "eval")
    assert check.analytic - check.numeric == pytest.approx(0.25, abs=1e-7)


def test_both_modes_are_reported_and_raise_exception_false_returns_the_report(rng):
    report = gradcheck(Scale(4, bug="weight"), rng.standard_normal((3, 4)), raise_exception=False)
    assert isinstance(report, GradcheckReport) and not report.passed and not bool(report)
    assert [(c.mode, c.name, c.passed) for c in report.checks] == [
        ("train", "input", True), ("train", "weight", False),
        ("eval", "input", True), ("eval", "weight", False)]
    assert "gradcheck FAILED" in str(report) and "NO" in str(report)
    with pytest.raises(GradcheckError, match=r"Also wrong: 'weight' \(eval\)"):
        gradcheck(Scale(4, bug="weight"), rng.standard_normal((3, 4)))


def test_gradient_of_the_wrong_shape_is_a_failure_not_a_crash(rng):
    with pytest.raises(GradcheckError, match=r"'input' \(train mode\): backward gave a gradient of shape \(4, 3\) for a tensor of shape \(3, 4\)"):
        gradcheck(Scale(4, bug="shape"), rng.standard_normal((3, 4)), modes=["train"])


def test_the_module_is_left_as_it_was(rng):
    model = Sequential(Dense(3, 4, rng=rng), BatchNorm(4), ReLU(), Dropoutish(0.3)).astype(np.float64)
    for _ in range(2):
        model(rng.standard_normal((6, 3)))
    model[1].eval()  # mixed modes must come back as they were
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.shape)
    before = model.state_dict()
    grads = [(p.grad, p.grad.copy()) for p in model.parameters()]
    data = [p.data for p in model.parameters()]
    generator_state = model[3].rng.bit_generator.state
    global_state = minidl._random.get_rng().bit_generator.state
    running_mean = model[1].running_mean

    assert gradcheck(model, rng.standard_normal((5, 3)))

    assert [m.training for _, m in model.named_modules()] == [True, True, False, True, True]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert model[1].running_mean is running_mean
    for p, (grad, values), d in zip(model.parameters(), grads, data):
        assert p.grad is grad and p.data is d
        np.testing.assert_array_equal(p.grad, values)
    assert model[3].rng.bit_generator.state == generator_state
    assert minidl._random.get_rng().bit_generator.state == global_state


def test_batchnorm_statistics_and_dropout_masks_do_not_drift(rng):
    """Without restoring, every forward in train mode would change the running statistics (eval
    checks afterwards would differ) and draw a new dropout mask (numeric garbage)."""
    bn = BatchNorm(3, momentum=None, dtype=np.float64)  # cumulative average: sensitive to count
    report = gradcheck(Sequential(Dense(4, 3, rng=rng).astype(np.float64), bn, Dropoutish(0.5)),
                       rng.standard_normal((6, 4)), atol=1e-7, rtol=1e-6)
    assert report.passed
    assert int(bn.num_batches_tracked) == 0
    np.testing.assert_array_equal(bn.running_mean, 0)
    assert gradcheck(Dropoutish(0.5, use_global=True), rng.standard_normal((4, 5)), modes="train")


def test_float32_module_is_checked_on_a_float64_copy(rng):
    layer = Dense(4, 3, rng=rng)
    weight = layer.weight.data.copy()
    report = gradcheck(layer, rng.standard_normal((2, 4)).astype(np.float32))
    assert report.passed and report.cast_to_float64
    assert "on a float64 copy of the module" in str(report)
    assert layer.weight.data.dtype == np.float32
    np.testing.assert_array_equal(layer.weight.data, weight)


def test_a_layer_that_casts_to_float32_is_refused(rng):
    class Cast(Module):
        def forward(self, x):
            return x.astype(np.float32)

        def backward(self, dout, input_grad=True):
            return dout

    with pytest.raises(TypeError, match=r"gradcheck: Cast's forward returned dtype float32 for float64 inputs; the check needs a float64 array"):
        gradcheck(Cast(), np.zeros((2, 2)))


def test_shared_parameter_is_checked_once(rng):
    first = Dense(3, 3, rng=rng).astype(np.float64)
    second = Dense(3, 3, rng=rng).astype(np.float64)
    second.weight = first.weight  # tied weights: gradients from both uses accumulate
    report = gradcheck(Sequential(first, ReLU(), second), rng.standard_normal((4, 3)) + 0.1,
                       modes="train")
    assert [c.name for c in report.checks] == ["input", "0.weight", "0.bias", "2.bias"]


# ----------------------------------------------------------------------------- functions
def test_function_pair_checks_every_returned_gradient(rng):
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((2, 3)), rng.standard_normal(2)
    report = gradcheck((linear_forward, linear_backward), (x, w, b))
    assert [(c.name, c.mode, c.shape) for c in report.checks] == [
        ("x", "function", (4, 3)), ("weight", "function", (2, 3)), ("bias", "function", (2,))]
    assert report.passed
    without_bias = gradcheck((linear_forward, linear_backward), (x, w, None))
    assert [c.name for c in without_bias.checks] == ["x", "weight"]
    only_x = gradcheck((lambda x: linear_forward(x, w), lambda d, c: linear_backward(d, c)[0]), x)
    assert [c.name for c in only_x.checks] == ["x"]


def test_function_inputs_updated_in_place_are_restored(rng):
    x = rng.standard_normal((5, 3))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    running_mean, running_var = np.zeros(3), np.ones(3)
    forward = functools.partial(batch_norm_forward, training=True, momentum=0.1)
    report = gradcheck((forward, batch_norm_backward), (x, gamma, beta, running_mean, running_var))
    assert [c.name for c in report.checks] == ["x", "weight", "bias"] and report.passed
    np.testing.assert_array_equal(running_mean, 0)  # the caller's arrays are never touched


def test_wrong_function_gradient_fails_at_the_right_index(rng):
    def backward(dout, cache):
        dx, dw, db = linear_backward(dout, cache)
        dw[1, 0] = -dw[1, 0] + 1.0
        return dx, dw, db

    with pytest.raises(GradcheckError, match=r"the gradient of 'weight' is wrong at index \(1, 0\)"):
        gradcheck((linear_forward, backward), (rng.standard_normal((4, 3)), rng.standard_normal((2, 3))))


@pytest.mark.parametrize("target, inputs, error, pattern", [
    (lambda x: x, np.zeros(3), TypeError, r"gradcheck: expected a Module or a \(forward, backward\) pair"),
    ((lambda x: x, lambda d, c: d), np.zeros(3), TypeError, r"gradcheck: expected <lambda> to return \(out, cache\), got ndarray"),
    ((lambda x, k: (x * k, None), lambda d, c: (d, d)), (np.zeros(2), 3), TypeError,
     r"backward returned a gradient at position 1, for k=3, which is not a float array"),
    (ReLU(), np.array(["a"]), TypeError, r"gradcheck: expected inputs to be an array of real numbers, got dtype <U1"),
])
def test_bad_arguments(target, inputs, error, pattern):
    with pytest.raises(error, match=pattern):
        gradcheck(target, inputs)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(eps=0), r"gradcheck: expected eps > 0"),
    (dict(atol=-1), r"gradcheck: expected atol to be a finite number >= 0, got -1"),
    (dict(rtol=float("nan")), r"gradcheck: expected rtol to be a finite number >= 0"),
    (dict(modes=("training",)), r"gradcheck: expected modes to be 'train' and/or 'eval' \(or None\), got \['training'\]"),
    (dict(modes=()), r"expected modes to be 'train' and/or 'eval'"),
])
def test_bad_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        gradcheck(ReLU(), np.ones((2, 2)), **kwargs)


def test_report_lookup_errors(rng):
    report = gradcheck(ReLU(), rng.standard_normal((2, 3)), modes="train")
    assert report.check("input", "train") is report.checks[0]
    with pytest.raises(KeyError, match="no check of 'weight'"):
        report.check("weight")
    with pytest.raises(KeyError, match="no check of 'input' in eval mode"):
        report.check("input", "eval")
    assert repr(report) == "GradcheckReport(1 checks, 0 failed)"


def test_numerical_gradient_of_a_known_function():
    a = np.array([1.0, -2.0, 3.0])
    dout = np.array([0.5, 1.0, -1.0])
    np.testing.assert_allclose(numerical_gradient(lambda: a**3, a, dout), 3 * a**2 * dout, rtol=1e-8)
    with pytest.raises(TypeError, match="not contiguous"):
        numerical_gradient(lambda: a, np.zeros((4, 4))[:, :3], 1.0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_function_with_integer_labels_and_a_scalar_output(rng, reduction):
    from minidl.losses import cross_entropy, cross_entropy_backward

    logits, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, size=5)
    report = gradcheck((lambda z, y: cross_entropy(z, y, reduction),
                        lambda d, cache: cross_entropy_backward(cache, d)), (logits, labels))
    assert [c.name for c in report.checks] == ["z"] and report.passed
