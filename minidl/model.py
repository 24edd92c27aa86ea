"""Models built from layers."""
import numpy as np

from ._backend import get_backend
from .layers.activation import ReLU
from .layers.dense import Dense
from .layers.module import Module
from .layers.normalization import BatchNorm, BatchNorm1D, BatchNorm2D
from .layers.pooling import MaxPool2D
from .layers.residual import Residual

__all__ = ["Sequential"]


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Children are named ``"0"``, ``"1"``, ... so ``state_dict`` keys look like PyTorch's
    (``"1.running_mean"``).

    Args:
        *layers (Module): the layers, in forward order.
    Raises:
        TypeError: an argument is not a :class:`~minidl.layers.Module`.

    Example:
        >>> model = Sequential(layers.Dense(4, 8), layers.ReLU(), layers.Dense(8, 2))
        >>> logits = model(x)                    # x: (N, 4) float32
        >>> dx = model.backward(dlogits)         # accumulates parameter gradients
    """

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i} is a {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        layers = list(self._modules.values())
        try:
            return layers[index]
        except IndexError:
            raise IndexError(f"Sequential: index {index} is out of range for {len(layers)} "
                             f"layers") from None
        except TypeError:
            raise TypeError(f"Sequential: expected an int or a slice index, got "
                            f"{type(index).__name__}") from None

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        """Run every layer in order; returns the last layer's output.

        A BatchNorm, Dense or Residual layer followed directly by a ReLU runs as one pass (see
        :func:`_fuses_relu`): the kernel applies the ReLU as it writes BatchNorm's output or
        the residual sum, or in place on the Dense layer's new output. A BatchNorm -> ReLU ->
        MaxPool2D(2) triple on an ``(N, C, H, W)`` input runs as one pass too (see
        :func:`_fuses_pool`): each plane is pooled right after it is written. The outputs are
        the same bit for bit, passes over memory (one array for Dense) and layer calls are
        saved, and every layer keeps what its usual backward pass needs.
        """
        layers = list(self._modules.values())
        fused = {}  # where a BatchNorm fed a ReLU (and a pool): first index -> layers run
        i = 0
        while i < len(layers):
            if i + 1 < len(layers) and _fuses_relu(layers[i], layers[i + 1]):
                if i + 2 < len(layers) and _fuses_pool(layers[i], layers[i + 2], x):
                    x = layers[i]._call_with_relu(layers[i + 1], x, pool=layers[i + 2])
                    fused[i] = 3
                    i += 3
                    continue
                x = layers[i]._call_with_relu(layers[i + 1], x)
                if type(layers[i]) in _BACKWARD_FUSES_RELU:
                    fused[i] = 2
                i += 2
            else:
                x = layers[i](x)
                i += 1
        self.__dict__["_fused_relu"] = (layers, fused)
        return x

    def backward(self, dout, input_grad=True):
        """Backpropagate ``dout`` (d loss / d output) through the layers in reverse.

        Parameter gradients are accumulated into each ``Parameter.grad``. A BatchNorm whose
        ReLU the last forward pass fused (see :meth:`forward`) takes the ReLU's gradient in
        the same call (``BatchNorm._backward_relu``: the kernel zeroes it where the ReLU's
        output is <= 0 as it reads it), and the pool's too when the pool was fused
        (``BatchNorm._backward_relu_pool``: the kernel writes each plane of the pool's
        gradient just before it masks and reads it), unless a layer of the run has backward
        hooks; the gradients are the same bit for bit.

        Args:
            dout (np.ndarray): d loss / d output, the shape and dtype of the last output.
            input_grad (bool): compute d loss / d input (default). With False the first layer
                may skip that work (PyTorch never computes it for an input that does not
                require grad); the return value is then None.
        Returns:
            d loss / d input, or None when ``input_grad`` is False. An empty Sequential is
            the identity: it returns ``dout``.
        Raises:
            Exception: whatever a layer raises; the parameter gradients are then left as they
                were before the call (see :meth:`minidl.layers.Module.backward`).
        """
        layers = list(self._modules.values())
        if not layers:
            return dout if input_grad else None
        starts = self._backward_fused(layers)
        i = len(layers) - 1
        while i >= 0:
            first = starts.get(i, i)  # layers first..i in one kernel call
            wanted = input_grad or first > 0
            if i - first == 2:  # BatchNorm, ReLU, MaxPool2D
                dout = layers[first]._backward_relu_pool(layers[first + 1], layers[i], dout,
                                                         input_grad=wanted)
            elif i - first == 1:  # BatchNorm, ReLU
                dout = layers[first]._backward_relu(layers[i], dout, input_grad=wanted)
            elif wanted:
                dout = layers[i].backward(dout)
            else:
                dout = layers[i].backward(dout, input_grad=False)
            i = first - 1
        return dout if input_grad else None

    def _backward_fused(self, layers):
        """``{last index: first index}`` of the runs of layers that :meth:`backward` calls as
        one: the BatchNorm + ReLU (+ MaxPool2D) runs that the last forward pass ran as one (so
        each layer's input was the output of the one before), if the layers are still those,
        and no layer of the run has backward hooks (they would not see the gradients in
        between); a triple whose pool has hooks still runs its BatchNorm + ReLU as one."""
        ran, fused = self.__dict__.get("_fused_relu", ((), {}))
        if len(ran) != len(layers) or any(a is not b for a, b in zip(ran, layers)):
            return {}
        starts = {}
        for first, count in fused.items():
            hooked = [bool(layer._backward_pre_hooks or layer._backward_hooks)
                      for layer in layers[first:first + count]]
            if not any(hooked[:2]):
                count = 3 if count == 3 and not hooked[2] else 2
                starts[first + count - 1] = first
        return starts


# the layers with a _forward_relu(x) (not SyncBatchNorm: it has its own forward), and those of
# them with a _backward_relu(relu, dout, input_grad)
_FUSES_RELU = (BatchNorm, BatchNorm1D, BatchNorm2D, Dense, Residual)
_BACKWARD_FUSES_RELU = (BatchNorm, BatchNorm1D, BatchNorm2D)


def _fuses_pool(layer, pool, x):
    """Whether :meth:`Sequential.forward` runs ``layer``, the ReLU after it (see
    :func:`_fuses_relu`) and ``pool`` after that in one pass: a BatchNorm of the classes that
    fuse the ReLU's backward, exactly a MaxPool2D with 2x2 windows and stride 2 without
    forward hooks, and an ``(N, C, H, W)`` array input with ``H, W >= 2`` (anything else runs
    layer by layer, which raises the usual errors)."""
    return (type(layer) in _BACKWARD_FUSES_RELU and type(pool) is MaxPool2D
            and pool.kernel_size == (2, 2) and pool.stride == (2, 2)
            and not (pool._forward_pre_hooks or pool._forward_hooks)
            and isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[2] >= 2
            and x.shape[3] >= 2)


def _fuses_relu(layer, following):
    """Whether :meth:`Sequential.forward` runs ``layer`` and the ReLU ``following`` it in one
    pass: exactly these classes (a subclass may change ``forward``), on the compiled backend
    (the reference one shows each step), and no forward hooks on either (they would not see
    ``layer``'s output before the ReLU)."""
    return (type(following) is ReLU and type(layer) in _FUSES_RELU
            and not (layer._forward_pre_hooks or layer._forward_hooks
                     or following._forward_pre_hooks or following._forward_hooks)
            and get_backend() == "compiled")
