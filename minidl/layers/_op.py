"""The base of parameter-free layers that are one functional forward/backward pair."""
from .._checks import check_grad
from .._grad_mode import saved_for_backward
from .module import Module

__all__ = ["OpLayer"]


class OpLayer(Module):
    """A layer without parameters whose forward pass is one functional ``*_forward`` call
    (returning ``(out, cache)``) and whose backward pass is the matching ``*_backward``.

    Subclasses implement ``_forward(x) -> (out, cache)`` and ``_backward(dout, cache) -> dx``
    with a cache that has ``out_shape`` and ``dtype`` (every cache of :mod:`minidl.functional`
    and :mod:`minidl.reference.functional` has them). This class keeps the cache for one
    backward pass (nothing under :class:`minidl.no_grad`) and checks ``dout`` when the input
    gradient is not wanted.
    """

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        """Apply the layer to ``x``; keep what the backward pass needs."""
        self._release_saved()  # frees the previous cache before the new arrays are allocated
        out, cache = self._forward(x)
        self._keep_for_backward(cache)
        return out

    def backward(self, dout, input_grad=True):
        """d loss / d x for the last forward pass (None when ``input_grad`` is False).

        Raises:
            RuntimeError: no forward pass has been run, or it ran under
                :class:`minidl.no_grad`.
            ValueError/TypeError: ``dout`` does not match the last output.
        """
        name = type(self).__name__
        cache = saved_for_backward(name, self._cache)
        if not input_grad:  # no parameters: nothing else to compute
            check_grad(name, dout, cache.out_shape, cache.dtype)
            return None
        return self._backward(dout, cache)

    def _forward(self, x):
        raise NotImplementedError

    def _backward(self, dout, cache):
        raise NotImplementedError
