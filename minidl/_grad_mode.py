"""Gradient mode: whether a forward pass keeps what its backward pass needs.

Like PyTorch's ``torch.no_grad``: inside ``with minidl.no_grad():`` (or in a function decorated
with ``@minidl.no_grad()``) every layer's forward pass keeps nothing for a backward pass -- no
cache, no reference to its input or to intermediate arrays -- so an inference pass holds only
the arrays it is working on, and each goes back to minidl's allocator as soon as the next layer
has read it. A backward pass after such a forward pass raises a RuntimeError naming the layer.
:func:`enable_grad` turns keeping back on inside a ``no_grad`` block. The mode is per thread
(PyTorch's is too) and independent of ``train()``/``eval()``: a model in eval mode with
gradients enabled still supports backward (a gradient check in eval mode needs it), and a
BatchNorm in training mode still updates its running statistics under ``no_grad``.

Layers use :func:`save_for_backward` on what their forward pass would keep and
:func:`saved_for_backward` in their backward pass.
"""
import functools
import threading

__all__ = ["no_grad", "enable_grad", "is_grad_enabled", "save_for_backward",
           "saved_for_backward"]

_state = threading.local()


def is_grad_enabled():
    """Whether forward passes in this thread keep what backward passes need (default True)."""
    return getattr(_state, "enabled", True)


class _GradMode:
    """A context manager and decorator that sets the gradient mode to ``ENABLED`` inside."""

    ENABLED = True

    def __new__(cls, func=None):
        self = super().__new__(cls)
        self._previous = []
        if func is None:
            return self
        if not callable(func):
            raise TypeError(f"{cls.__name__}: expected a function to decorate or no argument, "
                            f"got {type(func).__name__}")
        return self(func)  # used as @no_grad without parentheses

    def __enter__(self):
        self._previous.append(is_grad_enabled())
        _state.enabled = self.ENABLED
        return self

    def __exit__(self, *exc_info):
        _state.enabled = self._previous.pop()
        return False

    def __call__(self, func):
        """Decorate ``func`` so that it runs in this mode."""
        mode = type(self)

        @functools.wraps(func)
        def run_in_mode(*args, **kwargs):
            with mode():
                return func(*args, **kwargs)
        return run_in_mode


class no_grad(_GradMode):  # noqa: N801 (named like torch.no_grad)
    """Context manager and decorator for inference: forward passes keep nothing for backward.

    Example::

        with minidl.no_grad():
            logits = model(x)        # no caches; x and the intermediates can be freed

        @minidl.no_grad()            # or @minidl.no_grad
        def predict(model, x):
            return model(x).argmax(axis=1)
    """

    ENABLED = False


class enable_grad(_GradMode):  # noqa: N801 (named like torch.enable_grad)
    """Context manager and decorator that turns gradient keeping back on (inside ``no_grad``)."""

    ENABLED = True


class _NotKept:
    """What a layer holds instead of a cache after a forward pass under :class:`no_grad`."""

    def __repr__(self):
        return "<not kept: forward ran under minidl.no_grad()>"


_NOT_KEPT = _NotKept()


def save_for_backward(cache):
    """``cache`` when gradients are enabled, else a marker (the cache itself is dropped)."""
    return cache if is_grad_enabled() else _NOT_KEPT


def saved_for_backward(layer, saved, hint=""):
    """What :func:`save_for_backward` kept, for ``layer``'s backward pass.

    Args:
        layer (str): the layer's name, for the message.
        saved: the layer's attribute holding the value (None before any forward pass).
        hint (str): appended to the "before forward" message.
    Raises:
        RuntimeError: no forward pass yet, or the last one ran under :class:`no_grad`.
    """
    if saved is None:
        raise RuntimeError(f"{layer}: backward called before forward{hint}")
    if saved is _NOT_KEPT:
        raise RuntimeError(f"{layer}: backward after a forward pass under minidl.no_grad(), "
                           f"which keeps nothing for backward; run forward again with "
                           f"gradients enabled")
    return saved
