"""Test helpers: numerical gradients and comparison against PyTorch.

Gradient checks (``minidl.gradcheck``): float64, central differences, a *random* upstream gradient
(an all-ones upstream gradient makes BatchNorm's input gradient vanish and proves nothing).
"""
import numpy as np
import pytest

from minidl import gradcheck
from minidl.gradcheck import numerical_gradient as numerical_grad

__all__ = ["numerical_grad", "assert_close", "check_module_gradients", "assert_close_to_torch",
           "import_torch"]


def import_torch():
    """PyTorch, the oracle of the parity tests (minidl itself never imports it); skips the caller
    with the install command when it is absent. conftest.py's ``torch`` fixture returns it; a module
    that needs torch at import time (to build its parametrization or twins) calls it directly."""
    return pytest.importorskip("torch", reason="the PyTorch comparisons need torch==2.13.0 "
                               "(pip install torch==2.13.0)")


def assert_close(actual, expected, dtype, what=""):
    """Equal up to two summation orders in ``dtype``: float32 ``rtol=1e-4``, float64
    ``rtol=1e-10``, each with an absolute floor (1e-5 / 1e-12) scaled to ``max |expected|``."""
    rtol, scale = (1e-4, 1e-5) if np.dtype(dtype) == np.float32 else (1e-10, 1e-12)
    atol = scale * max(1.0, float(np.max(np.abs(expected))))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def check_module_gradients(module, x, rng, rtol=1e-5, atol=1e-7):
    """Compare a module's backward with central differences, in float64 (``minidl.gradcheck``).

    Checks the input gradient and the gradient of every parameter, with a random upstream
    gradient drawn from ``rng``, in the mode(s) the module is in now. Raises
    ``minidl.GradcheckError`` (an AssertionError) naming the tensor and the worst entry.

    Returns:
        np.ndarray: the module's input gradient.
    """
    report = gradcheck(module, x, rtol=rtol, atol=atol, modes=None,
                       seed=int(rng.integers(2**32)))
    return report.check("input").analytic_grad


def assert_close_to_torch(ours, theirs, rtol=1e-5, atol=1e-6, what=""):
    """Compare a NumPy array with a torch tensor (or array) elementwise."""
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)
