"""Shared pytest configuration and the fixtures every test module may use.

In CI (``CI`` set in the environment) a skipped test is an error: everything the suite names
must actually run there, including the PyTorch comparisons.

Fixtures: ``rng`` (a seeded NumPy Generator per test), ``torch`` (PyTorch, the test oracle; the
test skips with the reason when it is absent; ``helpers.import_torch`` is the same import for the
few modules that need torch at import time), ``torch_models`` (PyTorch twins of minidl's
networks), ``real_mirror`` (the folder or URL holding the real datasets:
``$MINIDL_DATA_MIRROR``, else ``../shared/data`` beside the repository; skips when neither
exists), ``real_data_root`` (a data root with the real datasets, copied once) and its
alias ``experiment_root``, ``one_kernel_thread`` (minidl's kernels on one thread for the test,
restored after).
"""
import os
from pathlib import Path

import numpy as np
import pytest

FALLBACK_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def rng():
    """A seeded NumPy Generator, fresh for every test."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def torch():
    """PyTorch, imported once: the oracle of the parity tests (minidl never imports it)."""
    from helpers import import_torch
    return import_torch()



@pytest.fixture(scope="session")
def torch_models(torch):
    """tests/torch_models.py (PyTorch twins of minidl's networks), imported once torch is."""
    import torch_models
    return torch_models

def resolve_mirror():
    """``$MINIDL_DATA_MIRROR`` if set, else ``../shared/data`` if it exists, else None."""
    env = os.environ.get("MINIDL_DATA_MIRROR", "").strip()
    if env:
        return env
    return str(FALLBACK_MIRROR) if FALLBACK_MIRROR.is_dir() else None


@pytest.fixture(scope="session")
def real_mirror():
    """The mirror holding the real datasets (see :func:`resolve_mirror`); skips without one."""
    mirror = resolve_mirror()
    if mirror is None:
        pytest.skip(f"no dataset mirror: set MINIDL_DATA_MIRROR or provide {FALLBACK_MIRROR}")
    return mirror


@pytest.fixture(scope="session")
def real_data_root(real_mirror, tmp_path_factory):
    """A data root holding the real MNIST, Fashion-MNIST and CIFAR-10 files, copied once per
    session through the mirror (for the model, example and experiment tests; the tests of the
    readers build their own)."""
    from minidl import data
    from datahelpers import PUBLIC_MIRRORS
    root = tmp_path_factory.mktemp("real_data_root")
    with pytest.MonkeyPatch.context() as mp:
        for cls in PUBLIC_MIRRORS:
            mp.setattr(cls, "mirrors", ())
        mp.setenv(data.MIRROR_ENV, real_mirror)
        for cls in (data.MNIST, data.FashionMNIST, data.CIFAR10):
            cls(root, train=True)
            cls(root, train=False)
    return str(root)


@pytest.fixture(scope="session")
def experiment_root(real_data_root):
    """The data root the tests of minidl.experiments read (:func:`real_data_root`)."""
    return real_data_root


@pytest.fixture
def one_kernel_thread():
    """minidl's kernels on one OpenMP thread during the test (the previous count restored
    after): the tiny runs of the experiment tests are faster on one thread, and much faster
    when other processes compete for the cores (a parallel kernel waits for its slowest
    thread)."""
    import minidl
    previous = minidl.get_num_threads()
    minidl.set_num_threads(1)
    yield
    minidl.set_num_threads(previous)


def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        reporter.write_line(f"CI: {skipped} test(s) were skipped; every test must run in CI", red=True)
        session.exitstatus = 1
