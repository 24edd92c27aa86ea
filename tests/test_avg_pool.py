"""AvgPool2D and GlobalAvgPool2D: the kernels against the NumPy references and PyTorch,
gradient checks, the reference backend, threads, errors."""
import numpy as np
import pytest

import minidl
import minidl.functional as F
import minidl.reference.functional as ref
from minidl import layers

from helpers import assert_close, assert_close_to_torch, check_module_gradients

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]
# (N, C, H, W, kernel, stride, padding)
GEOMETRIES = [
    (2, 3, 8, 8, (2, 2), None, (0, 0)),        # the usual 2x2 / 2
    (2, 3, 7, 9, (3, 3), (2, 2), (1, 1)),      # overlapping, padded, odd sizes
    (1, 2, 6, 5, (3, 2), (1, 2), (1, 1)),      # unequal kernel and stride
    (3, 1, 5, 5, (5, 5), (1, 1), (2, 2)),      # every window reaches into the padding
    (2, 4, 9, 4, (4, 1), (3, 1), (2, 0)),
    (1, 1, 1, 1, (1, 1), None, (0, 0)),
]
IDS = [f"x{g[:4]}-k{g[4]}-s{g[5]}-p{g[6]}".replace(" ", "") for g in GEOMETRIES]


def torch_avg_pool(x, dout, kernel, stride, padding, include):
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, kernel, stride, padding, count_include_pad=include)
    yt.backward(torch.tensor(dout))
    return yt, xt.grad


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_avg_pool_matches_reference_and_torch(geometry, dtype, include, rng):
    n, c, h, w, kernel, stride, padding = geometry
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    out, cache = F.avg_pool2d_forward(x, kernel, stride, padding, include)
    expected, ref_cache = ref.avg_pool2d_forward(x, kernel, stride, padding, include)
    assert out.dtype == dtype and out.flags.c_contiguous
    assert_close(out, expected, dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = F.avg_pool2d_backward(dout, cache)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, ref.avg_pool2d_backward(dout, ref_cache), dtype, "dx")

    yt, dxt = torch_avg_pool(x, dout, kernel, stride or kernel, padding, include)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    assert_close_to_torch(out, yt, **tol, what="forward")
    assert_close_to_torch(dx, dxt, **tol, what="input gradient")


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (4, 16, 1, 1), (1, 2, 5, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool_matches_reference_and_torch(shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    pool = layers.GlobalAvgPool2D()
    y = pool(x)
    assert y.shape == shape[:2] and y.dtype == dtype
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = pool.backward(dout)
    expected, cache = ref.global_avg_pool2d_forward(x)
    assert_close(y, expected, dtype, "out")
    assert_close(dx, ref.global_avg_pool2d_backward(dout, cache), dtype, "dx")
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(xt, 1), 1)
    yt.backward(torch.tensor(dout))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    assert_close_to_torch(y, yt, **tol, what="forward")
    assert_close_to_torch(dx, xt.grad, **tol, what="input gradient")


@pytest.mark.parametrize("include", [True, False])
def test_avg_pool_layer_gradients(rng, include):
    pool = layers.AvgPool2D(3, stride=2, padding=1, count_include_pad=include)
    check_module_gradients(pool, rng.standard_normal((2, 2, 7, 6)), rng)


def test_global_avg_pool_gradients_behind_a_conv(rng):
    model = minidl.Sequential(layers.Conv2D(2, 3, 3, rng=rng, dtype=np.float64),
                              layers.GlobalAvgPool2D(), layers.Dense(3, 2, rng=rng,
                                                                     dtype=np.float64))
    check_module_gradients(model, rng.standard_normal((2, 2, 6, 5)), rng)


def test_reference_backend_runs_the_references(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    for layer in (layers.AvgPool2D(2), layers.GlobalAvgPool2D()):
        compiled = layer(x)
        dout = rng.standard_normal(compiled.shape)
        dx = layer.backward(dout)
        with minidl.backend("reference"):
            out = layer(x)
            assert isinstance(layer._cache, ref.CACHE_TYPES)
        assert_close(out, compiled, np.float64, type(layer).__name__)
        assert_close(layer.backward(dout), dx, np.float64, type(layer).__name__)


def test_threads_give_the_same_result(rng):
    x = rng.standard_normal((8, 32, 32, 32)).astype(np.float32)  # large enough for threads
    previous = minidl.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            minidl.set_num_threads(threads)
            out, cache = F.avg_pool2d_forward(x, 3, 2, 1)
            results.append((out, F.avg_pool2d_backward(np.ones_like(out), cache)))
    finally:
        minidl.set_num_threads(previous)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_out_argument_and_strided_input(rng):
    x = rng.standard_normal((2, 3, 8, 9)).astype(np.float32)[:, :, ::2, 1::2]  # not contiguous
    given = np.empty((2, 3, 2, 2), np.float32)
    out, _ = F.avg_pool2d_forward(x, 2, out=given)
    assert out is given
    blocks = np.ascontiguousarray(x).reshape(2, 3, 2, 2, 2, 2)
    assert_close(out, blocks.mean(axis=(3, 5)), np.float32)


def test_repr_and_defaults():
    pool = layers.AvgPool2D(2)
    assert (pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad) == (
        (2, 2), (2, 2), (0, 0), True)
    assert repr(pool) == "AvgPool2D(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"
    assert "count_include_pad=False" in repr(layers.AvgPool2D(3, 1, 1, count_include_pad=False))
    assert repr(layers.GlobalAvgPool2D()) == "GlobalAvgPool2D()"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kernel_size=0), ValueError, "kernel_size must be an int or a pair of ints from 1 to 2147483647"),
    (dict(kernel_size=2, stride=0), ValueError, "stride must be"),
    (dict(kernel_size=2, padding=-1), ValueError, "padding must be"),
    (dict(kernel_size=3, padding=2), ValueError, r"padding \(2, 2\) must be at most half"),
    (dict(kernel_size=(2, 4), padding=(1, 3)), ValueError, r"padding \(1, 3\) must be at most half"),
    (dict(kernel_size=2, count_include_pad=1), TypeError, "count_include_pad must be True or False"),
])
def test_bad_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=f"AvgPool2D: {match}"):
        layers.AvgPool2D(**kwargs)


def test_bad_inputs_and_gradients_are_refused(rng):
    pool = layers.AvgPool2D(3)
    with pytest.raises(ValueError, match=r"AvgPool2D: expected input of shape \(N, C, H, W\)"):
        pool(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="AvgPool2D: expected input dtype float32 or float64"):
        pool(np.zeros((1, 1, 8, 8), np.int64))
    with pytest.raises(ValueError, match=r"smaller than kernel_size \(3, 3\)"):
        pool(np.zeros((1, 1, 2, 8), np.float32))
    with pytest.raises(RuntimeError, match="AvgPool2D: backward called before forward"):
        pool.backward(np.zeros((1, 1, 2, 2), np.float32))
    y = pool(np.zeros((1, 1, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"expected gradient of shape \(1, 1, 2, 2\)"):
        pool.backward(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(TypeError, match="expected gradient dtype float32"):
        pool.backward(np.zeros(y.shape, np.float64))
    assert pool.backward(np.zeros(y.shape, np.float32), input_grad=False) is None
    with minidl.no_grad():
        pool(np.zeros((1, 1, 6, 6), np.float32))
    with pytest.raises(RuntimeError, match="no_grad"):
        pool.backward(np.zeros(y.shape, np.float32))
    glob = layers.GlobalAvgPool2D()
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D: expected input of shape \(N, C, H, W\)"):
        glob(np.zeros((4, 8), np.float32))
    glob(np.zeros((4, 8, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D: expected gradient of shape \(4, 8\)"):
        glob.backward(np.zeros((4, 8, 1, 1), np.float32))


def test_summary_counts_average_pooling():
    model = minidl.Sequential(layers.AvgPool2D(2), layers.GlobalAvgPool2D())
    result = minidl.summary(model, (2, 3, 8, 8), verbose=False)
    _, avg, glob = result.rows
    assert (avg.output_shape, avg.flops) == ((2, 3, 4, 4), 4 * 2 * 3 * 4 * 4)
    assert (glob.output_shape, glob.flops) == ((2, 3), 2 * 3 * 4 * 4)
