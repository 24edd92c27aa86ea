"""minidl._grad_mode: no_grad / enable_grad / is_grad_enabled, and what layers keep under them."""
import threading
import weakref

import numpy as np
import pytest

import minidl
from minidl import layers
from minidl.models import mnist_cnn


def test_no_grad_is_a_context_manager_that_restores_the_mode():
    assert minidl.is_grad_enabled()
    with minidl.no_grad():
        assert not minidl.is_grad_enabled()
        with minidl.enable_grad():
            assert minidl.is_grad_enabled()
        assert not minidl.is_grad_enabled()
        with minidl.no_grad():
            assert not minidl.is_grad_enabled()
        assert not minidl.is_grad_enabled()
    assert minidl.is_grad_enabled()
    with pytest.raises(KeyError):
        with minidl.no_grad():
            raise KeyError("inside")
    assert minidl.is_grad_enabled()


def test_the_same_context_object_can_be_nested():
    mode = minidl.no_grad()
    with mode:
        with minidl.enable_grad():
            with mode:
                assert not minidl.is_grad_enabled()
            assert minidl.is_grad_enabled()
        assert not minidl.is_grad_enabled()
    assert minidl.is_grad_enabled()


def test_no_grad_and_enable_grad_decorate_functions():
    @minidl.no_grad()
    def inside(value):
        """Docstring kept."""
        return minidl.is_grad_enabled(), value

    @minidl.no_grad
    def bare():
        return minidl.is_grad_enabled()

    @minidl.enable_grad()
    def reenabled():
        return minidl.is_grad_enabled()

    assert inside(3) == (False, 3) and inside.__doc__ == "Docstring kept."
    assert bare() is False
    with minidl.no_grad():
        assert reenabled() is True
        assert not minidl.is_grad_enabled()
    assert minidl.is_grad_enabled()
    with pytest.raises(TypeError, match="no_grad"):
        minidl.no_grad(3)


def test_grad_mode_is_per_thread():
    seen = []
    with minidl.no_grad():
        thread = threading.Thread(target=lambda: seen.append(minidl.is_grad_enabled()))
        thread.start()
        thread.join()
        assert not minidl.is_grad_enabled()
    assert seen == [True]


LAYERS = [
    (lambda: layers.Conv2D(3, 4, 3, padding=1), (2, 3, 8, 8)),          # direct
    (lambda: layers.Conv2D(8, 4, 3, padding=1), (2, 8, 8, 8)),          # Winograd
    (lambda: layers.Conv2D(8, 4, 3, stride=2), (2, 8, 9, 9)),           # im2col
    (lambda: layers.BatchNorm(3), (4, 3, 5, 5)),
    (lambda: layers.BatchNorm(3).eval(), (4, 3)),
    (layers.ReLU, (4, 6)),
    (layers.Softmax, (4, 6)),
    (lambda: layers.MaxPool2D(2), (2, 3, 6, 6)),
    (lambda: layers.Dense(6, 2), (4, 6)),
    (lambda: minidl.Sequential(layers.Dense(6, 5), layers.ReLU(), layers.Dense(5, 2)), (4, 6)),
]
IDS = ["Conv2D-direct", "Conv2D-winograd", "Conv2D-im2col", "BatchNorm-train", "BatchNorm-eval",
       "ReLU", "Softmax", "MaxPool2D", "Dense", "Sequential"]


@pytest.mark.parametrize("make, shape", LAYERS, ids=IDS)
def test_no_grad_forward_keeps_nothing(make, shape, rng):
    """Same output; the input is collectable right after forward; backward then raises a
    RuntimeError naming the layer."""
    layer = make()
    x = rng.standard_normal(shape).astype(np.float32)
    expected = layer(x).copy()
    layer.backward(np.ones_like(expected))  # grad mode: backward works
    with minidl.no_grad():
        out = layer(x)
    np.testing.assert_array_equal(out, expected)
    alive = weakref.ref(x)
    del x
    assert alive() is None
    name = type(layer[-1] if isinstance(layer, minidl.Sequential) else layer).__name__
    with pytest.raises(RuntimeError, match=f"{name}: backward after a forward pass under "
                                           r"minidl.no_grad\(\)"):
        layer.backward(np.ones_like(out))


def test_flatten_under_no_grad():
    layer = layers.Flatten()
    with minidl.no_grad():
        out = layer(np.zeros((2, 3, 4), np.float32))
    assert out.shape == (2, 12)
    with pytest.raises(RuntimeError, match=r"Flatten: backward after a forward pass under "
                                           r"minidl.no_grad\(\)"):
        layer.backward(out)


def test_enable_grad_inside_no_grad_keeps_the_cache(rng):
    layer = layers.Dense(3, 2)
    with minidl.no_grad(), minidl.enable_grad():
        out = layer(rng.standard_normal((4, 3)).astype(np.float32))
    assert layer.backward(np.ones_like(out)).shape == (4, 3)


def test_inference_holds_no_intermediate_arrays(rng):
    """A no_grad eval forward of the MNIST CNN + BN leaves no array of minidl's allocator alive
    but its output (every intermediate went back); with gradients the caches keep megabytes."""
    model = mnist_cnn(norm="batch", rng=0).eval()
    x = rng.random((256, 1, 28, 28), dtype=np.float32)
    base = minidl.memory_stats()["allocated_bytes"]
    with minidl.no_grad():
        logits = model(x)
    assert logits.shape == (256, 10)
    # nothing but the logits themselves (the last Dense layer's product may come from minidl's
    # allocator)
    assert minidl.memory_stats()["allocated_bytes"] in (base, base + logits.nbytes)
    kept = model(x)
    assert minidl.memory_stats()["allocated_bytes"] > base + (8 << 20)
    np.testing.assert_array_equal(kept, logits)
    dx = model.backward(np.ones_like(kept))  # eval mode without no_grad supports backward
    assert dx.shape == x.shape


def test_batchnorm_in_training_mode_updates_running_stats_under_no_grad(rng):
    bn = layers.BatchNorm(3)
    with minidl.no_grad():
        bn(rng.standard_normal((8, 3, 4, 4)).astype(np.float32) + 5)
    assert np.all(bn.running_mean > 0.4) and int(bn.num_batches_tracked) == 1
