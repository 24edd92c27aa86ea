"""Shared by the hypothesis fuzz tests (tests/test_fuzz_*.py): settings, sizes and comparisons.

The budget keeps the suite fast and CI reproducible: ``derandomize=True`` (the same examples on
every run, no example database), no deadline (a shared machine is slow at times), and
``MINIDL_FUZZ_EXAMPLES`` examples per test (default 40; tests/test_build.py runs the fuzz tests
against the bounds-checked debug build with fewer).
"""
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=int(os.environ.get("MINIDL_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=True, database=None, suppress_health_check=list(HealthCheck))

DTYPES = st.sampled_from([np.float32, np.float64])
LAYOUTS = st.sampled_from(["contiguous", "fortran", "strided", "reversed"])


def relayout(x, layout):
    """``x``'s values in another memory layout (the kernels must not depend on it)."""
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided":
        wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        wide[..., 1::2] = x
        return wide[..., 1::2]
    if layout == "reversed":
        return np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    return x


def values(draw, shape, dtype, ties=False):
    """Random values of ``shape``: normal, or small integers (many ties) when ``ties``."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if ties:
        return rng.integers(-2, 3, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def assert_within(actual, expected, bound, dtype, what):
    """``|actual - expected| <= tol * bound`` elementwise, where ``bound`` is the same
    computation on absolute values (the size of the terms summed): a rounding-error bound that
    holds for every summation order, however the terms cancel."""
    assert actual.shape == expected.shape and actual.dtype == np.dtype(dtype), what
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    error = np.abs(actual.astype(np.float64) - expected)
    limit = tol * (bound + 1e-30)
    worst = np.unravel_index(np.argmax(error - limit), error.shape) if error.size else ()
    assert np.all(error <= limit), (f"{what}: |difference| {error[worst]:.3g} > "
                                    f"{limit[worst]:.3g} at {worst}")
