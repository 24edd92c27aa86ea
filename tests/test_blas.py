"""minidl._blas: minidl's matrix products run NumPy's BLAS on one thread, the user's do not."""
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from minidl import _blas
from minidl.functional import linear


def _blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_one_thread_limits_blas_and_restores_it():
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert before and all(n == 2 for n in before)  # NumPy's BLAS was found
        with _blas.one_thread():
            assert all(n == 1 for n in _blas_threads())
        assert _blas_threads() == before


def test_linear_runs_blas_on_one_thread(monkeypatch, rng):
    seen = []
    real_matmul = np.ndarray.__matmul__

    class Probe(np.ndarray):
        def __matmul__(self, other):
            seen.append(_blas_threads())
            return real_matmul(np.asarray(self), np.asarray(other))

    x = rng.standard_normal((4, 3)).view(Probe)
    weight = rng.standard_normal((2, 3))
    with threadpool_limits(limits=2, user_api="blas"):
        out, cache = linear.linear_forward(x, weight)
        linear.linear_backward(np.ones((4, 2)).view(Probe), cache)
        assert all(n == 2 for n in _blas_threads())
    assert len(seen) == 3 and all(n == 1 for threads in seen for n in threads)


def test_winograd_weight_transforms_run_blas_on_one_thread(monkeypatch, rng):
    from minidl.functional import conv_winograd as winograd
    seen = []

    def probe(function):
        def wrapper(*args):
            seen.append(_blas_threads())
            return function(*args)
        return wrapper

    monkeypatch.setattr(winograd, "weight_transform", probe(winograd.weight_transform))
    monkeypatch.setattr(winograd, "weight_grad_transform", probe(winograd.weight_grad_transform))
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    out = np.empty((2, 4, 6, 6), np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        cache = winograd.forward(x, weight, None, (1, 1), out)
        winograd.backward(np.ones_like(out), cache, True)
        assert all(n == 2 for n in _blas_threads())
    assert len(seen) == 2 and all(n == 1 for threads in seen for n in threads)


def test_the_reference_backend_runs_blas_on_one_thread(monkeypatch, rng):
    """The references' matrix products (conv2d's einsums, linear's @) run under one_thread too."""
    import minidl
    from minidl.functional import conv
    from minidl.reference.functional import conv as ref_conv, linear as ref_linear
    seen = []

    def probe(module, name):
        function = getattr(module, name)

        def wrapper(*args):
            seen.append(_blas_threads())
            return function(*args)
        monkeypatch.setattr(module, name, wrapper)

    for module, op in [(ref_conv, "conv2d"), (ref_linear, "linear")]:
        probe(module, f"{op}_forward")
        probe(module, f"{op}_backward")
    x = rng.standard_normal((2, 3, 6, 6))
    with threadpool_limits(limits=2, user_api="blas"), minidl.backend("reference"):
        out, cache = conv.conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)))
        conv.conv2d_backward(np.ones_like(out), cache)
        out, cache = linear.linear_forward(x.reshape(2, -1), rng.standard_normal((5, 108)))
        linear.linear_backward(np.ones_like(out), cache)
        assert all(n == 2 for n in _blas_threads())
    assert len(seen) == 4 and all(n == 1 for threads in seen for n in threads)


def test_one_thread_nests_and_restores_after_an_exception():
    with threadpool_limits(limits=2, user_api="blas"):
        try:
            with _blas.one_thread():
                with _blas.one_thread():  # already one thread: nothing to change or restore
                    assert all(n == 1 for n in _blas_threads())
                assert all(n == 1 for n in _blas_threads())
                raise KeyError("inside")
        except KeyError:
            pass
        assert all(n == 2 for n in _blas_threads())
