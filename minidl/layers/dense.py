"""Dense (fully connected) layer."""
import numpy as np

from .._checks import check_allocation, check_bool, check_kept, float_dtype, positive_int
from .._grad_mode import saved_for_backward
from ..functional.linear import linear_backward, linear_forward
from .init import uniform_fan_in
from .module import Module, Parameter

__all__ = ["Dense"]


class Dense(Module):
    """Fully connected layer: ``y = x @ weight.T + bias`` (PyTorch's ``nn.Linear``).

    Args:
        in_features (int): size of each input vector.
        out_features (int): size of each output vector.
        bias (bool): learn an additive bias. Default True.
        rng (np.random.Generator or int, optional): for the initialization; default: the global
            generator seeded by :func:`minidl.manual_seed`.
        dtype: float32 (default) or float64 parameters.

    Attributes:
        weight (Parameter): ``(out_features, in_features)``, U(-1/sqrt(in_features), +) at init.
        bias (Parameter or None): ``(out_features,)``, same init.

    Shape:
        input ``(N, in_features)``, float32 or float64; output ``(N, out_features)``, same dtype.

    Raises:
        TypeError: non-float input; a ``dtype`` other than float32/float64; a non-bool ``bias``.
        ValueError: input not ``(N, in_features)``; sizes that are not integers >= 1.
        MemoryError: a weight too large for this machine (at construction).
        RuntimeError: ``backward`` before ``forward``; the input or the weight was modified in
            place between ``forward`` and ``backward`` (PyTorch raises there too).
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features = positive_int(in_features, "in_features", "Dense")
        self.out_features = positive_int(out_features, "out_features", "Dense")
        dtype = float_dtype("Dense", dtype)
        bias = check_bool("Dense", "bias", bias)
        shape = (self.out_features, self.in_features)
        check_allocation("Dense", "weight", (2,) + shape, dtype)  # with its grad
        self.weight = Parameter(uniform_fan_in(shape, self.in_features, rng, dtype))
        self.bias = (Parameter(uniform_fan_in((self.out_features,), self.in_features, rng, dtype))
                     if bias else None)
        self._cache = None
        self._watched = ()  # fingerprints of the arrays the cache refers to (see forward)

    def forward(self, x):
        return self._affine(x)

    def _forward_relu(self, x):
        """``relu(self(x))``, for :meth:`Module._call_with_relu` (a Dense layer and the ReLU
        after it, fused by :class:`~minidl.Sequential`): the ReLU applied by the product's own
        call as it finishes each tile of the output (the same values bit for bit, one layer
        call, one pass and one array less); this layer keeps its usual cache."""
        return self._affine(x, relu=True)

    def _affine(self, x, relu=False):
        self._release_saved()
        out, cache = linear_forward(
            x, self.weight.data, None if self.bias is None else self.bias.data, layer="Dense",
            relu=relu,
        )
        self._keep_for_backward(cache, input=x, weight=self.weight.data)
        return out

    def backward(self, dout, input_grad=True):
        """Accumulate parameter gradients; return d loss / d x, or None when ``input_grad`` is
        False (see :meth:`Module.backward`)."""
        cache = saved_for_backward("Dense", self._cache)
        check_kept("Dense", self._watched)
        dx, dweight, dbias = linear_backward(dout, cache, layer="Dense", input_grad=input_grad)
        # both are new arrays that only this call holds: a gradient set to None takes them over
        self.weight.accumulate_grad(dweight, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(dbias, owned=True)
        return dx

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
