"""Dropout: inverted-dropout semantics, its own generator (seeding, gradcheck), both backends,
PyTorch's conventions, errors. (That a resumed Trainer run continues its masks is tested in
test_trainer.py.)"""
import numpy as np
import pytest

import minidl
import minidl.functional as F
import minidl.reference.functional as ref
from minidl import layers

from helpers import check_module_gradients

@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_drops_a_fraction_p_and_scales_the_rest(p, dtype, rng):
    x = rng.uniform(1, 2, (200, 500)).astype(dtype)
    drop = layers.Dropout(p, rng=0)
    y = drop(x)
    assert y.dtype == dtype and y.shape == x.shape and y is not x
    kept = y != 0
    assert abs(1 - kept.mean() - p) < 0.01  # 100,000 Bernoulli draws: std 0.0016
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert abs(y.mean() / x.mean() - 1) < 0.02  # inverted dropout keeps the expectation
    dout = rng.standard_normal(x.shape).astype(dtype)
    dx = drop.backward(dout)
    np.testing.assert_allclose(dx, np.where(kept, dout / (1 - p), 0), rtol=1e-6)
    assert dx.dtype == dtype


def test_scaling_matches_torch_dropout(rng, torch):
    """PyTorch's F.dropout: kept elements are x / (1 - p), the others 0; eval is the identity."""
    x = rng.uniform(1, 2, (64, 64)).astype(np.float32)
    ours = layers.Dropout(0.3, rng=1)(x)
    torch.manual_seed(0)
    theirs = torch.nn.functional.dropout(torch.from_numpy(x), 0.3, training=True).numpy()
    for y in (ours, theirs):
        kept = y != 0
        np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    module = torch.nn.Dropout(0.3).eval()
    drop = layers.Dropout(0.3).eval()
    np.testing.assert_array_equal(drop(x), module(torch.from_numpy(x)).numpy())


def test_eval_mode_and_p_zero_are_the_identity(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    dout = rng.standard_normal((4, 5)).astype(np.float32)
    for drop in (layers.Dropout(0.5).eval(), layers.Dropout(0.0)):
        state = drop.rng.bit_generator.state
        assert drop(x) is x
        assert drop.backward(dout) is dout
        assert drop.rng.bit_generator.state == state  # nothing drawn


def test_p_one_drops_everything_like_torch(rng, torch):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    drop = layers.Dropout(1.0)
    y = drop(x)
    np.testing.assert_array_equal(y, np.zeros_like(x))
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), np.zeros_like(x))
    theirs = torch.nn.functional.dropout(torch.from_numpy(x), 1.0, training=True)
    np.testing.assert_array_equal(y, theirs.numpy())


def test_the_generator_is_the_modules_own_and_seeded(rng):
    x = np.ones((8, 16), np.float32)
    a, b = layers.Dropout(rng=3), layers.Dropout(rng=3)
    np.testing.assert_array_equal(a(x), b(x))
    minidl.manual_seed(5)
    before = minidl._random.get_rng().bit_generator.state
    c = layers.Dropout()
    assert minidl._random.get_rng().bit_generator.state == before  # spawned, nothing drawn
    minidl.manual_seed(5)
    d = layers.Dropout()
    np.testing.assert_array_equal(c(x), d(x))  # reproducible after manual_seed
    generator = np.random.default_rng(0)
    assert layers.Dropout(rng=generator).rng is generator
    assert isinstance(layers.Dropout().rng, np.random.Generator)


def test_masks_differ_from_step_to_step():
    drop = layers.Dropout(0.5, rng=0)
    x = np.ones((16, 16), np.float32)
    assert not np.array_equal(drop(x), drop(x))


def test_gradcheck_sees_the_same_mask_in_every_forward(rng):
    """gradcheck restores the module's rng before each forward, so train mode is checkable."""
    model = minidl.Sequential(layers.Dense(6, 5, rng=rng, dtype=np.float64), layers.Dropout(0.4),
                              layers.Dense(5, 3, rng=rng, dtype=np.float64))
    check_module_gradients(model.train(), rng.standard_normal((4, 6)), rng)
    report = minidl.gradcheck(model, rng.standard_normal((4, 6)))
    assert report.passed and {c.mode for c in report.checks} == {"train", "eval"}


def test_both_backends_drop_the_same_elements(rng):
    x = rng.standard_normal((6, 7))
    compiled = layers.Dropout(0.5, rng=11)
    reference = layers.Dropout(0.5, rng=11)
    y = compiled(x)
    with minidl.backend("reference"):
        y_ref = reference(x)
        assert isinstance(reference._cache, ref.CACHE_TYPES)
    np.testing.assert_allclose(y_ref, y, rtol=1e-15)
    dout = rng.standard_normal(x.shape)
    np.testing.assert_allclose(reference.backward(dout), compiled.backward(dout), rtol=1e-15)
    for p in (0.0, 1.0):
        out, cache = ref.dropout_forward(x, p, True, np.random.default_rng(0))
        expected, compiled_cache = F.dropout_forward(x, p, True, np.random.default_rng(0))
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(ref.dropout_backward(dout, cache),
                                      F.dropout_backward(dout, compiled_cache))


@pytest.mark.parametrize("p", [-0.1, 1.5, True, "0.5", None, float("nan")])
def test_bad_p_is_refused(p):
    with pytest.raises(ValueError, match=r"Dropout: p must be a probability in \[0, 1\]"):
        layers.Dropout(p)


def test_bad_arguments_are_refused(rng):
    with pytest.raises(TypeError, match="Dropout: rng must be a numpy.random.Generator"):
        layers.Dropout(rng="seed")
    with pytest.raises(TypeError, match="dropout: rng must be a numpy.random.Generator or None"):
        F.dropout_forward(np.zeros(3), 0.5, True, rng=3)
    with pytest.raises(TypeError, match="dropout: training must be True or False"):
        F.dropout_forward(np.zeros(3), 0.5, training="yes")
    drop = layers.Dropout(0.5)
    with pytest.raises(TypeError, match="Dropout: expected input dtype float32 or float64"):
        drop(np.zeros(3, np.int32))
    with pytest.raises(RuntimeError, match="Dropout: backward called before forward"):
        drop.backward(np.zeros(3))
    drop(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"Dropout: expected gradient of shape \(2, 3\)"):
        drop.backward(np.zeros((3, 2), np.float32))
    assert drop.backward(np.zeros((2, 3), np.float32), input_grad=False) is None
    assert repr(drop) == "Dropout(p=0.5)"


def test_summary_counts_no_work_in_eval():
    model = minidl.Sequential(layers.Dense(4, 4, rng=0), layers.Dropout(0.5))
    result = minidl.summary(model, (2, 4), verbose=False)
    assert result.rows[2].flops == 0 and result.rows[2].is_view


# ---------------------------------------------------------------- adversarial cases (issue 10)
@pytest.mark.parametrize("p", [0, 1, np.float32(0.25), np.float64(0.75), 0.999999])
def test_every_real_probability_is_accepted(p):
    assert layers.Dropout(p).p == float(p)


@pytest.mark.parametrize("p", [np.array(0.5), [0.5], 1 + 0j, float("inf"), -0.0 - 1e-300])
def test_more_bad_p_is_refused(p):
    with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\]"):
        F.dropout_forward(np.zeros(3), p)


@pytest.mark.parametrize("bad", [np.random.RandomState(0), -1, True, 1.5, "0", object()])
def test_bad_generators_are_refused(bad):
    with pytest.raises(TypeError, match="Dropout: rng must be a numpy.random.Generator"):
        layers.Dropout(0.5, rng=bad)
    drop = layers.Dropout(0.5)
    drop.rng = bad  # replaced after construction: refused at the forward pass
    with pytest.raises(TypeError, match="Dropout: rng must be a numpy.random.Generator or None"):
        drop(np.zeros(3))


@pytest.mark.parametrize("x, match", [
    (np.zeros(3, np.float16), "got float16"), (np.zeros(3, bool), "got bool"),
    (np.zeros(3, object), "got object"), ([1.0, 2.0], "numpy.ndarray, got list"),
    (np.ma.zeros(3), "plain numpy.ndarray"),
])
def test_bad_inputs_are_named(x, match):
    with pytest.raises(TypeError, match=f"Dropout: expected input .*{match}"):
        layers.Dropout(0.5)(x)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2)])
def test_zero_dim_and_empty_inputs_work_like_torch(shape, torch):
    drop = layers.Dropout(0.5, rng=0)
    x = np.ones(shape, np.float32)
    y = drop(x)
    assert y.shape == shape and y.dtype == np.float32
    assert np.all((y == 0) | (y == 2))
    dx = drop.backward(np.ones(shape, np.float32))
    np.testing.assert_array_equal(dx, y)  # dout = 1: the mask itself
    assert torch.nn.functional.dropout(torch.ones(shape), 0.5).shape == shape


@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed"])
def test_non_contiguous_inputs_give_the_same_bits(layout, rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    dout = rng.standard_normal((4, 6)).astype(np.float32)
    relaid = {"fortran": np.asfortranarray,
              "strided": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
              "transposed": lambda a: np.ascontiguousarray(a.T).T}[layout]
    runs = []
    for a, d in ((x, dout), (relaid(x), relaid(dout))):
        out, cache = F.dropout_forward(a, 0.3, rng=np.random.default_rng(5))
        runs.append((out, F.dropout_backward(d, cache)))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_tampered_caches_are_refused(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    out, cache = F.dropout_forward(x, 0.5, rng=np.random.default_rng(0))
    dout = np.ones_like(out)
    for bad in (None, (cache.mask, cache.out_shape, cache.dtype),
                F.avg_pool2d_forward(np.zeros((1, 1, 2, 2)), 2)[1]):
        with pytest.raises(TypeError, match="dropout: expected the cache returned by "
                                            "dropout_forward"):
            F.dropout_backward(dout, bad)
    for mask in (np.ones(1, np.float32), np.ones(4, np.float32),  # would broadcast silently
                 cache.mask.astype(np.float64), [1.0] * 12):
        with pytest.raises(ValueError, match="dropout: the cache's mask is not what "
                                             "dropout_forward made"):
            F.dropout_backward(dout, cache._replace(mask=mask))
    with pytest.raises(ValueError, match="dropout: the cache's out_shape or dtype"):
        F.dropout_backward(dout, cache._replace(dtype=np.int32))
    with minidl.backend("reference"):
        _, ref_cache = F.dropout_forward(x, 0.5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(F.dropout_backward(dout, ref_cache),
                                  F.dropout_backward(dout, cache))
    with pytest.raises(ValueError, match="dropout: the cache's mask"):
        F.dropout_backward(dout, ref_cache._replace(keep=np.ones(4, bool)))
    with pytest.raises(ValueError, match="the cache's p: p must be a probability"):
        F.dropout_backward(dout, ref_cache._replace(p="x"))


def test_changing_the_input_after_forward_does_not_change_the_gradient(rng):
    """Dropout keeps its mask, not its input: the gradient depends only on dout and the mask."""
    drop = layers.Dropout(0.5, rng=1)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = drop(x)
    x *= 3
    dout = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(drop.backward(dout), np.where(y != 0, 2 * dout, 0))
