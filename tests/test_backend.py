"""The backend switch (minidl._backend): default, context manager, plain calls, errors, threads."""
import threading

import pytest

import minidl
from minidl import _backend


@pytest.fixture(autouse=True)
def compiled_afterwards():
    """Every test starts and ends on the default backend, whatever it does in between."""
    assert minidl.get_backend() == "compiled"
    yield
    minidl.set_backend("compiled")


def test_public_names_and_default():
    assert minidl.backend is _backend.backend
    assert minidl.set_backend is _backend.set_backend
    assert minidl.get_backend is _backend.get_backend
    assert {"backend", "get_backend", "set_backend"} <= set(minidl.__all__)
    assert _backend.BACKENDS == ("compiled", "reference")
    assert minidl.get_backend() == "compiled"


def test_context_manager_switches_and_restores():
    with minidl.backend("reference") as name:
        assert name == "reference" and minidl.get_backend() == "reference"
        with minidl.backend("compiled"):
            assert minidl.get_backend() == "compiled"
        assert minidl.get_backend() == "reference"
    assert minidl.get_backend() == "compiled"


def test_context_manager_restores_after_an_exception():
    with pytest.raises(KeyError):
        with minidl.backend("reference"):
            raise KeyError("inside")
    assert minidl.get_backend() == "compiled"


def test_context_manager_restores_a_backend_set_by_a_plain_call():
    minidl.set_backend("reference")
    with minidl.backend("compiled"):
        assert minidl.get_backend() == "compiled"
    assert minidl.get_backend() == "reference"


def test_set_backend_returns_the_previous_one():
    assert minidl.set_backend("reference") == "compiled"
    assert minidl.get_backend() == "reference"
    assert minidl.set_backend("reference") == "reference"
    assert minidl.set_backend("compiled") == "reference"


def test_usable_as_a_decorator():
    @minidl.backend("reference")
    def inside():
        return minidl.get_backend()

    assert inside() == "reference" and inside() == "reference"
    assert minidl.get_backend() == "compiled"


@pytest.mark.parametrize("bad", ["Reference", "numpy", "", "cython"])
def test_unknown_names_are_rejected_and_change_nothing(bad):
    with pytest.raises(ValueError, match=r"minidl.set_backend: unknown backend .*'compiled'"):
        minidl.set_backend(bad)
    with pytest.raises(ValueError, match=r"minidl.backend: unknown backend .*'reference'"):
        with minidl.backend(bad):
            pytest.fail("the block must not run")
    assert minidl.get_backend() == "compiled"


@pytest.mark.parametrize("bad", [None, 1, b"reference", ("reference",)])
def test_non_strings_are_rejected(bad):
    with pytest.raises(TypeError, match="minidl.set_backend: expected a backend name"):
        minidl.set_backend(bad)
    with pytest.raises(TypeError, match="minidl.backend: expected a backend name"):
        with minidl.backend(bad):
            pass
    assert minidl.get_backend() == "compiled"


def test_the_setting_is_per_thread():
    """A switch in one thread neither leaks into another nor is undone by it."""
    seen = {}
    started, switched, done = threading.Event(), threading.Event(), threading.Event()

    def worker():
        seen["start"] = minidl.get_backend()
        started.set()
        assert switched.wait(10)
        seen["after main switched"] = minidl.get_backend()
        with minidl.backend("reference"):
            done.wait(10)
            seen["inside"] = minidl.get_backend()

    thread = threading.Thread(target=worker)
    try:
        thread.start()
        assert started.wait(10)
        minidl.set_backend("reference")  # in this thread only
        switched.set()
        with minidl.backend("compiled"):  # nor does this one reach the worker's block
            pass
        done.set()
        thread.join(10)
    finally:
        switched.set()
        done.set()
    assert seen == {"start": "compiled", "after main switched": "compiled", "inside": "reference"}
    assert minidl.get_backend() == "reference"
