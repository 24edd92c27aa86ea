"""CrossEntropyLoss: numerical gradients, stability, errors, and agreement with PyTorch."""
import numpy as np
import pytest

from minidl.losses import CrossEntropyLoss, cross_entropy, cross_entropy_backward
from helpers import numerical_grad


def reference_cross_entropy(logits, labels, reduction="mean"):
    """Float64 loss by the textbook formula (valid for moderate logits only)."""
    logits = logits.astype(np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    losses = -np.log(probs[np.arange(len(labels)), labels])
    return losses.mean() if reduction == "mean" else losses.sum()


def make_batch(rng, n=6, k=5, dtype=np.float64, scale=2.0):
    logits = (rng.standard_normal((n, k)) * scale).astype(dtype)
    labels = rng.integers(0, k, size=n)
    return logits, labels


# ----------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_matches_textbook_formula(rng, reduction):
    logits, labels = make_batch(rng)
    loss = CrossEntropyLoss(reduction)(logits, labels)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, reference_cross_entropy(logits, labels, reduction), rtol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_matches_central_differences(rng, reduction):
    logits, labels = make_batch(rng, n=7, k=4)
    loss_fn = CrossEntropyLoss(reduction=reduction)
    loss_fn(logits, labels)
    analytic = loss_fn.backward()
    # the loss is a scalar, so the upstream gradient is 1; eps=1e-5 balances truncation and
    # rounding error (about 1e-16 * |loss| / eps) in the central differences
    numeric = numerical_grad(lambda: cross_entropy(logits, labels, reduction)[0], logits, 1.0, eps=1e-5)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_gradient_is_softmax_minus_onehot(rng):
    logits, labels = make_batch(rng, n=4, k=3)
    loss_fn = CrossEntropyLoss()
    loss_fn(logits, labels)
    grad = loss_fn.backward()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(grad, (probs - onehot) / 4, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)  # each row sums to zero


def test_upstream_gradient_scales_backward(rng):
    logits, labels = make_batch(rng)
    loss_fn = CrossEntropyLoss()
    loss_fn(logits, labels)
    np.testing.assert_allclose(loss_fn.backward(2.5), 2.5 * loss_fn.backward(), rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_and_fresh_output(rng, dtype):
    logits, labels = make_batch(rng, dtype=dtype)
    original = logits.copy()
    loss_fn = CrossEntropyLoss()
    loss_fn(logits, labels)
    grad = loss_fn.backward()
    assert grad.dtype == dtype and grad.shape == logits.shape and grad.flags.c_contiguous
    assert not np.shares_memory(grad, logits)
    np.testing.assert_array_equal(logits, original)  # the input is not modified
    grad[...] = 0  # the caller may modify it: a second backward is unaffected
    assert np.any(loss_fn.backward() != 0)


def test_functional_pair_matches_class(rng):
    logits, labels = make_batch(rng)
    loss, cache = cross_entropy(logits, labels, reduction="sum")
    loss_fn = CrossEntropyLoss("sum")
    assert loss_fn.forward(logits, labels) == loss
    np.testing.assert_array_equal(cross_entropy_backward(cache), loss_fn.backward())


def test_non_contiguous_logits_and_unsigned_labels(rng):
    logits, labels = make_batch(rng, n=5, k=4)
    strided = np.asfortranarray(logits)[:, :]
    transposed_view = np.ascontiguousarray(logits.T).T  # same values, column-major strides
    expected = CrossEntropyLoss()(logits, labels)
    assert CrossEntropyLoss()(strided, labels.astype(np.uint8)) == pytest.approx(expected, rel=1e-15)
    assert CrossEntropyLoss()(transposed_view, labels.astype(np.int32)) == pytest.approx(expected, rel=1e-15)


# ----------------------------------------------------------------- numerical stability
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_are_finite_and_correct(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([0, 1, 2])
    loss_fn = CrossEntropyLoss(reduction="sum")
    loss = loss_fn(logits, labels)
    grad = loss_fn.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # row 0: p_0 = 1 (loss 0); row 1: loss = 1e4; row 2: uniform, loss = log 3
    np.testing.assert_allclose(loss, 1e4 + np.log(3.0), rtol=1e-12)
    expected_grad = np.array([[0, 0, 0], [1, -1, 0], [1 / 3, 1 / 3, -2 / 3]])
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-30)


def test_shift_invariance_at_large_offsets(rng):
    logits, labels = make_batch(rng)
    loss_fn = CrossEntropyLoss()
    base = loss_fn(logits, labels)
    base_grad = loss_fn.backward()
    for offset in (1e4, -1e4, 1e6):
        shifted_logits = logits + offset
        np.testing.assert_allclose(loss_fn(shifted_logits, labels), base, rtol=1e-9)
        np.testing.assert_allclose(loss_fn.backward(), base_grad, rtol=1e-8, atol=1e-12)


def test_random_large_logits_float32_close_to_float64(rng):
    logits64 = rng.standard_normal((16, 10)) * 1e4
    labels = rng.integers(0, 10, size=16)
    logits32 = logits64.astype(np.float32)
    loss_fn = CrossEntropyLoss()
    loss32 = loss_fn(logits32, labels)
    grad32 = loss_fn.backward()
    loss64 = loss_fn(logits32.astype(np.float64), labels)  # same (rounded) inputs
    grad64 = loss_fn.backward()
    assert np.isfinite(loss32) and np.all(np.isfinite(grad32))
    assert loss32 == loss64  # computed in float64 either way
    np.testing.assert_allclose(grad32, grad64, rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------- errors
def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.*before forward"):
        CrossEntropyLoss().backward()


def test_failed_forward_clears_cache(rng):
    logits, labels = make_batch(rng)
    loss_fn = CrossEntropyLoss()
    loss_fn(logits, labels)
    with pytest.raises(ValueError):
        loss_fn(logits, labels + 100)
    with pytest.raises(RuntimeError):
        loss_fn.backward()


def test_bad_reduction():
    with pytest.raises(ValueError, match="CrossEntropyLoss.*reduction.*'none'"):
        CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction="avg")


@pytest.mark.parametrize(
    "logits, labels, error, pattern",
    [
        (np.zeros(3), np.array([0]), ValueError, r"CrossEntropyLoss.*\(N, K\).*got shape \(3,\)"),
        (np.zeros((2, 3, 4)), np.array([0, 1]), ValueError, r"CrossEntropyLoss.*got shape \(2, 3, 4\)"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), ValueError, r"CrossEntropyLoss.*\(0, 3\)"),
        (np.zeros((2, 0)), np.array([0, 0]), ValueError, r"CrossEntropyLoss.*\(2, 0\)"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), ValueError, r"CrossEntropyLoss.*labels of shape \(2,\).*got shape \(3,\)"),
        (np.zeros((2, 3)), np.array([[0, 1]]), ValueError, r"CrossEntropyLoss.*labels of shape \(2,\).*got shape \(1, 2\)"),
        (np.zeros((2, 3)), np.array([0, 3]), ValueError, r"CrossEntropyLoss.*\[0, 3\).*got a label 3"),
        (np.zeros((2, 3)), np.array([-1, 0]), ValueError, r"CrossEntropyLoss.*\[0, 3\).*got a label -1"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), TypeError, r"CrossEntropyLoss.*integer labels.*float64"),
        (np.zeros((2, 3)), np.array([True, False]), TypeError, r"CrossEntropyLoss.*integer labels.*bool"),
        (np.zeros((2, 3), dtype=np.int64), np.array([0, 1]), TypeError, r"CrossEntropyLoss.*logits dtype float32 or float64.*int64"),
        (np.zeros((2, 3), dtype=np.float16), np.array([0, 1]), TypeError, r"CrossEntropyLoss.*float16"),
        ([[0.0, 1.0, 2.0]], np.array([0]), TypeError, r"CrossEntropyLoss.*numpy.ndarray.*list"),
    ],
)
def test_invalid_inputs(logits, labels, error, pattern):
    with pytest.raises(error, match=pattern):
        CrossEntropyLoss()(logits, labels)


def test_labels_as_list_are_accepted(rng):
    logits, labels = make_batch(rng)
    assert CrossEntropyLoss()(logits, labels.tolist()) == CrossEntropyLoss()(logits, labels)


# ----------------------------------------------------------------- against PyTorch
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_against_torch(rng, dtype, rtol, reduction, scale, torch):
    logits, labels = make_batch(rng, n=32, k=10, dtype=dtype, scale=scale)
    loss_fn = CrossEntropyLoss(reduction=reduction)
    loss = loss_fn(logits, labels)
    grad = loss_fn.backward()

    logits_t = torch.tensor(logits, requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.tensor(labels), reduction=reduction)
    loss_t.backward()
    np.testing.assert_allclose(loss, loss_t.item(), rtol=rtol)
    grad_t = logits_t.grad.numpy()
    assert grad.dtype == grad_t.dtype
    # torch works in float32 for float32 inputs: compare relative to the largest entry
    atol = rtol * np.abs(grad_t).max()
    np.testing.assert_allclose(grad, grad_t, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dloss, error, pattern", [
    ("a", TypeError, r"CrossEntropyLoss.backward: expected dloss to be a real number, got 'a'"),
    (None, TypeError, r"expected dloss to be a real number, got None"),
    (np.ones(2), TypeError, r"expected dloss to be a real number"),
    (float("nan"), ValueError, r"CrossEntropyLoss.backward: expected dloss to be a finite number"),
    (float("inf"), ValueError, r"expected dloss to be a finite number"),
])
def test_backward_refuses_a_dloss_that_is_not_a_finite_number(rng, dloss, error, pattern):
    loss_fn = CrossEntropyLoss()
    loss_fn(*make_batch(rng))
    with pytest.raises(error, match=pattern):
        loss_fn.backward(dloss)
    np.testing.assert_allclose(loss_fn.backward(np.float32(2.0)), 2 * loss_fn.backward())
    np.testing.assert_allclose(loss_fn.backward(np.array(-0.5)), -0.5 * loss_fn.backward())
