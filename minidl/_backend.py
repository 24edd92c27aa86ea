"""Which implementation the functional ops run: the compiled kernels or the NumPy references.

Two backends exist:

* ``"compiled"`` (the default): the Cython kernels behind :mod:`minidl.functional`.
* ``"reference"``: the plain-NumPy textbook versions in :mod:`minidl.reference.functional`,
  slow but readable, so a whole model can be stepped through in a debugger.

The setting is per thread (and per asyncio task), like :func:`decimal.localcontext` or
``torch.no_grad``: it lives in a :class:`contextvars.ContextVar`, so switching it in one thread
never changes what another thread computes; set it in the thread that runs the model. A
cache records which backend made it (its type), so a backward pass runs on the backend of its
forward pass even if the setting changed in between, and both backends validate arguments the
same way (the checks in :mod:`minidl.functional` run first).

Example::

    import minidl

    with minidl.backend("reference"):        # everything inside runs the NumPy references
        logits = model(x)
    minidl.get_backend()                      # "compiled" again, even after an exception

    minidl.set_backend("reference")           # or switch until further notice (this thread)
"""
import contextlib
import contextvars

__all__ = ["BACKENDS", "backend", "get_backend", "set_backend"]

BACKENDS = ("compiled", "reference")

_current = contextvars.ContextVar("minidl_backend", default="compiled")


def _checked(name, caller):
    """Return ``name`` if it is a known backend, else raise naming ``caller``."""
    if not isinstance(name, str):
        raise TypeError(
            f"{caller}: expected a backend name (str) out of {BACKENDS}, got {type(name).__name__}"
        )
    if name not in BACKENDS:
        raise ValueError(f"{caller}: unknown backend {name!r}; expected one of {BACKENDS}")
    return name


def get_backend():
    """The backend the functional ops use in this thread: ``"compiled"`` or ``"reference"``."""
    return _current.get()


def set_backend(name):
    """Make ``name`` the backend of this thread until it is set again.

    Prefer ``with minidl.backend(name):``, which restores the previous backend on exit.

    Args:
        name (str): ``"compiled"`` (the Cython kernels, the default) or ``"reference"`` (the
            NumPy references in :mod:`minidl.reference.functional`).
    Returns:
        str: the backend that was in force before.
    Raises:
        TypeError: ``name`` is not a str.
        ValueError: ``name`` is not one of :data:`BACKENDS`.
    """
    previous = _current.get()
    _current.set(_checked(name, "minidl.set_backend"))
    return previous


@contextlib.contextmanager
def backend(name):
    """Run the enclosed code on the backend ``name``; restore the previous one on exit.

    The previous backend comes back however the block ends (normally, by an exception or by
    ``return``), and blocks nest. Also usable as a decorator (``@minidl.backend("reference")``).

    Args:
        name (str): ``"compiled"`` or ``"reference"``.
    Yields:
        str: ``name``.
    Raises:
        TypeError: ``name`` is not a str.
        ValueError: ``name`` is not one of :data:`BACKENDS` (raised when the block is entered,
            before anything in it runs).

    Example::

        with minidl.backend("reference"):
            y = minidl.layers.BatchNorm(8)(x)   # runs minidl/reference/functional/normalization.py
    """
    token = _current.set(_checked(name, "minidl.backend"))
    try:
        yield name
    finally:
        _current.reset(token)
