"""AvgPool2D and GlobalAvgPool2D: the kernels against the NumPy references and PyTorch,
gradient checks, the reference backend, threads, errors."""
import numpy as np
import pytest

import minidl
import minidl.functional as F
import minidl.reference.functional as ref
from minidl import layers

from helpers import assert_close, assert_close_to_torch, check_module_gradients

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


def torch_avg_pool(x, dout, kernel, stride, padding, include, torch):
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, kernel, stride, padding, count_include_pad=include)
    yt.backward(torch.tensor(dout))
    return yt, xt.grad


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_avg_pool_matches_reference_and_torch(geometry, dtype, include, rng, torch):
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

    yt, dxt = torch_avg_pool(x, dout, kernel, stride or kernel, padding, include, torch)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    assert_close_to_torch(out, yt, **tol, what="forward")
    assert_close_to_torch(dx, dxt, **tol, what="input gradient")


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (4, 16, 1, 1), (1, 2, 5, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool_matches_reference_and_torch(shape, dtype, rng, torch):
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
    """Each (sample, channel) plane is one thread's: 1, 2 and 3 threads give the same bits."""
    x = rng.standard_normal((8, 32, 32, 32)).astype(np.float32)  # large enough for threads
    dout = rng.standard_normal((8, 32, 16, 16)).astype(np.float32)
    previous = minidl.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            minidl.set_num_threads(threads)
            run = []
            for include in (True, False):
                out, cache = F.avg_pool2d_forward(x, 3, 2, 1, include)
                run += [out, F.avg_pool2d_backward(dout, cache)]
            out, cache = F.global_avg_pool2d_forward(x)
            run += [out, F.global_avg_pool2d_backward(dout[:, :, 0, 0].copy(), cache)]
            results.append(run)
    finally:
        minidl.set_num_threads(previous)
    for run in results[1:]:
        for a, b in zip(run, results[0]):
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


# ---------------------------------------------------------------- adversarial cases (issue 10)
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kernel_size=float("nan")), ValueError, "kernel_size must be an int or a pair"),
    (dict(kernel_size=2.0), ValueError, "kernel_size must be an int or a pair"),
    (dict(kernel_size=True), ValueError, "kernel_size must be an int or a pair"),
    (dict(kernel_size=(2,)), ValueError, "kernel_size must be an int or a pair"),
    (dict(kernel_size=(2, 2, 2)), ValueError, "kernel_size must be an int or a pair"),
    (dict(kernel_size="2"), ValueError, "kernel_size must be an int or a pair"),
    (dict(kernel_size=2 ** 31), ValueError, "kernel_size must be .* to 2147483647"),
    (dict(kernel_size=2, stride=(1, 0)), ValueError, "stride must be"),
    (dict(kernel_size=2, stride=np.nan), ValueError, "stride must be"),
    (dict(kernel_size=2, padding=(0, -1)), ValueError, "padding must be"),
    (dict(kernel_size=2, padding=0.5), ValueError, "padding must be"),
    (dict(kernel_size=1, padding=1), ValueError, r"padding \(1, 1\) must be at most half"),
    (dict(kernel_size=2, count_include_pad=None), TypeError, "count_include_pad must be True"),
    (dict(kernel_size=2, count_include_pad="False"), TypeError, "count_include_pad must be True"),
])
def test_more_bad_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=f"AvgPool2D: {match}"):
        layers.AvgPool2D(**kwargs)
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(error, match=f"avg_pool2d: {match}"):
        F.avg_pool2d_forward(x, **kwargs)


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
def test_padding_is_refused_exactly_where_torch_refuses_it(kernel, torch):
    x = np.zeros((1, 1, 6, 6), np.float32)
    for padding in range(4):
        try:
            torch.nn.functional.avg_pool2d(torch.tensor(x), kernel, 1, padding)
            torch_accepts = True
        except RuntimeError:
            torch_accepts = False
        try:
            F.avg_pool2d_forward(x, kernel, 1, padding)
            ours = True
        except ValueError as error:
            assert "must be at most half of kernel_size" in str(error)
            ours = False
        assert ours == torch_accepts, (kernel, padding)


@pytest.mark.parametrize("make", [lambda: layers.AvgPool2D(2), layers.GlobalAvgPool2D])
@pytest.mark.parametrize("x, error, match", [
    (np.zeros((1, 1, 4, 4), np.float16), TypeError, "dtype float32 or float64, got float16"),
    (np.zeros((1, 1, 4, 4), np.int32), TypeError, "dtype float32 or float64, got int32"),
    (np.zeros((1, 1, 4, 4), bool), TypeError, "dtype float32 or float64, got bool"),
    (np.zeros((1, 1, 4, 4), object), TypeError, "dtype float32 or float64, got object"),
    (np.zeros((1, 1, 4, 4), np.complex64), TypeError, "dtype float32 or float64, got complex64"),
    ([[[[1.0, 2.0], [3.0, 4.0]]]], TypeError, "to be a numpy.ndarray, got list"),
    (np.ma.zeros((1, 1, 4, 4)), TypeError, "plain numpy.ndarray"),
    (np.array(1.0), ValueError, r"expected input of shape \(N, C, H, W\), got shape \(\)"),
    (np.zeros((4, 4)), ValueError, r"got shape \(4, 4\)"),
    (np.zeros((1, 1, 1, 4, 4)), ValueError, r"got shape \(1, 1, 1, 4, 4\)"),
    (np.zeros((0, 1, 4, 4)), ValueError, "with no empty axis"),
    (np.zeros((1, 0, 4, 4)), ValueError, "with no empty axis"),
    (np.zeros((1, 1, 0, 4)), ValueError, "with no empty axis"),
    (np.zeros((1, 1, 4, 0)), ValueError, "with no empty axis"),
])
def test_bad_inputs_are_named(make, x, error, match):
    layer = make()
    with pytest.raises(error, match=f"{type(layer).__name__}: .*{match}"):
        layer(x)


@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_any_memory_layout_gives_the_same_bits(layout, dtype, rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    dout = rng.standard_normal((2, 3, 4, 3)).astype(dtype)
    dglobal = rng.standard_normal((2, 3)).astype(dtype)

    def relaid(a):
        if layout == "fortran":
            return np.asfortranarray(a)
        if layout == "strided":
            wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype)
            wide[..., ::2] = a
            return wide[..., ::2]
        if layout == "reversed":
            return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
        return np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)

    def run(x, dout, dglobal):
        out, cache = F.avg_pool2d_forward(x, 3, 2, 1, False)
        pooled, global_cache = F.global_avg_pool2d_forward(x)
        return (out, F.avg_pool2d_backward(dout, cache), pooled,
                F.global_avg_pool2d_backward(dglobal, global_cache))

    for a, b in zip(run(relaid(x), relaid(dout), relaid(dglobal)), run(x, dout, dglobal)):
        np.testing.assert_array_equal(a, b)


def test_out_arrays_that_alias_or_do_not_fit_are_refused(rng):
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    out, cache = F.avg_pool2d_forward(x, 3, 1, 1)  # output shape == input shape
    with pytest.raises(ValueError, match="avg_pool2d: out must not overlap input"):
        F.avg_pool2d_forward(x, 3, 1, 1, out=x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    before = dout.copy()
    with pytest.raises(ValueError, match="avg_pool2d: out must not overlap gradient"):
        F.avg_pool2d_backward(dout, cache, out=dout)
    np.testing.assert_array_equal(dout, before)
    readonly = np.empty(x.shape, np.float32)
    readonly.flags.writeable = False
    for bad, match in ((readonly, "got read-only float32"),
                       (np.empty((2, 3, 5, 10), np.float32)[..., ::2], "got non-contiguous"),
                       (np.empty(x.shape, np.float64), "got float64"),
                       (np.empty((2, 3, 5, 4), np.float32), r"got float32 \(2, 3, 5, 4\)")):
        with pytest.raises(ValueError, match=f"avg_pool2d: expected out to be a writable "
                                             f"C-contiguous float32 .*{match}"):
            F.avg_pool2d_forward(x, 3, 1, 1, out=bad)
        with pytest.raises(ValueError, match=f"avg_pool2d: expected out .*{match}"):
            F.avg_pool2d_backward(dout, cache, out=bad)
    flat = np.zeros((2, 3, 1, 1), np.float32)
    _, global_cache = F.global_avg_pool2d_forward(flat)
    with pytest.raises(ValueError, match="global_avg_pool2d: out must not overlap input"):
        F.global_avg_pool2d_forward(flat, out=flat.reshape(2, 3))
    grad = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="global_avg_pool2d: out must not overlap gradient"):
        F.global_avg_pool2d_backward(grad, global_cache, out=grad.reshape(2, 3, 1, 1))


def test_tampered_caches_are_refused_before_the_kernel(rng):
    """A cache is a tuple the caller can change; the backward kernel trusts its geometry (an
    out_shape with another batch made it read past dout)."""
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    out, cache = F.avg_pool2d_forward(x, 3, 2, 1)
    dout = np.ones(out.shape, np.float32)
    for bad in (None, (1, 2), F.max_pool2d_forward(x, 2)[1], F.dropout_forward(x)[1]):
        with pytest.raises(TypeError, match="avg_pool2d: expected the cache returned by "
                                            "avg_pool2d_forward"):
            F.avg_pool2d_backward(dout, bad)
    for change in (dict(out_shape=(1, 1, 3, 3)), dict(out_shape=(2, 3, 4, 4)),
                   dict(kernel_size=(0, 0)), dict(stride=(0, 1)), dict(padding=(2, 2)),
                   dict(count_include_pad="yes"), dict(x_shape=(2, 3, 6)),
                   dict(x_shape=(2, 3, 6, 6.5)), dict(dtype=np.float16), dict(kernel_size=None)):
        with pytest.raises(ValueError, match="avg_pool2d: the cache's shapes or window .* are "
                                             "not what avg_pool2d_forward made"):
            F.avg_pool2d_backward(dout, cache._replace(**change))
    giant = cache._replace(x_shape=(2 ** 20, 2 ** 20, 6, 6), out_shape=(2 ** 20, 2 ** 20, 3, 3))
    with pytest.raises(MemoryError, match="avg_pool2d: the input gradient of shape"):
        F.avg_pool2d_backward(dout, giant)
    pooled, global_cache = F.global_avg_pool2d_forward(x)
    for change in (dict(out_shape=(1, 1)), dict(kernel_size=(3, 3)), dict(stride=(2, 2))):
        with pytest.raises(ValueError, match="global_avg_pool2d: the cache's shapes or window"):
            F.global_avg_pool2d_backward(np.ones((2, 3), np.float32),
                                         global_cache._replace(**change))
    with pytest.raises(ValueError, match="global_avg_pool2d: the cache's shapes or window"):
        F.global_avg_pool2d_backward(dout, cache)  # the windowed op's cache
    with minidl.backend("reference"):
        _, ref_cache = F.avg_pool2d_forward(x, 3, 2, 1)
    with pytest.raises(ValueError, match="avg_pool2d: the cache's shapes or window"):
        F.avg_pool2d_backward(dout, ref_cache._replace(divisor=np.ones(3)))  # would broadcast
    np.testing.assert_array_equal(F.avg_pool2d_backward(dout, ref_cache),
                                  F.avg_pool2d_backward(dout, cache))


def test_the_largest_window_does_not_overflow():
    """kernel_size 2**31 - 1 (MAX_SIZE) with the padding that lets it fit: kH*kW and every
    window offset stay far inside the kernels' 64-bit integers."""
    k = 2 ** 31 - 1
    x = np.full((1, 2, 1, 1), 3.0)
    out, cache = F.avg_pool2d_forward(x, k, 1, k // 2)
    assert out.shape == (1, 2, 1, 1)
    np.testing.assert_array_equal(out, 3.0 / (float(k) * float(k)))
    out, cache = F.avg_pool2d_forward(x, k, 1, k // 2, count_include_pad=False)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(F.avg_pool2d_backward(np.ones_like(out), cache), 1.0)


def test_changing_the_input_after_forward_does_not_change_the_gradient(rng):
    """Average pooling keeps no array for backward (its gradient depends only on dout), so
    unlike a layer that keeps its input there is nothing to guard."""
    pool = layers.AvgPool2D(3, 2, 1)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    y = pool(x)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    expected = layers.AvgPool2D(3, 2, 1)
    expected(x.copy())
    x *= 2
    np.testing.assert_array_equal(pool.backward(dout), expected.backward(dout))
