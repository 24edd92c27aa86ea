"""Test helpers: numerical gradients and comparison against PyTorch.

Gradient checks follow ../DESIGN: float64, central differences, a *random* upstream gradient
(an all-ones upstream gradient makes BatchNorm's input gradient vanish and proves nothing).
"""
import numpy as np


def numerical_grad(f, array, dout, eps=1e-6):
    """Central-difference gradient of ``sum(f() * dout)`` with respect to ``array``.

    ``f`` takes no arguments and reads ``array`` (which is perturbed in place and restored).
    """
    grad = np.zeros_like(array, dtype=np.float64)
    flat = array.reshape(-1)  # a view: array must be contiguous
    assert np.shares_memory(flat, array)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = np.sum(f() * dout)
        flat[i] = old - eps
        minus = np.sum(f() * dout)
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return grad


def assert_close(actual, expected, dtype, what=""):
    """Equal up to two summation orders in ``dtype``: float32 ``rtol=1e-4``, float64
    ``rtol=1e-10``, each with an absolute floor (1e-5 / 1e-12) scaled to ``max |expected|``."""
    rtol, scale = (1e-4, 1e-5) if np.dtype(dtype) == np.float32 else (1e-10, 1e-12)
    atol = scale * max(1.0, float(np.max(np.abs(expected))))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def check_module_gradients(module, x, rng, rtol=1e-5, atol=1e-7):
    """Compare a module's backward with central differences, in float64.

    Checks the input gradient and the gradient of every parameter, with a random upstream
    gradient. The module must already be float64 and in the mode under test.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = module.forward(x)
    dout = rng.standard_normal(out.shape)
    module.zero_grad()
    dx = module.backward(dout)
    analytic = {name: p.grad.copy() for name, p in module.named_parameters()}

    num_dx = numerical_grad(lambda: module.forward(x), x, dout)
    np.testing.assert_allclose(dx, num_dx, rtol=rtol, atol=atol, err_msg="input gradient")
    for name, p in module.named_parameters():
        num = numerical_grad(lambda: module.forward(x), p.data, dout)
        np.testing.assert_allclose(analytic[name], num, rtol=rtol, atol=atol, err_msg=f"grad of {name}")
    return dx


def assert_close_to_torch(ours, theirs, rtol=1e-5, atol=1e-6, what=""):
    """Compare a NumPy array with a torch tensor (or array) elementwise."""
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)
