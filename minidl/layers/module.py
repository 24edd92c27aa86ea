"""Module and Parameter: the state-holding base every layer and model derives from.

A :class:`Module` owns three kinds of state, as in PyTorch's ``torch.nn.Module``:

* parameters (:class:`Parameter`, trainable, returned by :meth:`Module.parameters`),
* buffers (plain NumPy arrays such as ``running_mean``; saved in :meth:`Module.state_dict`
  but never given to an optimizer),
* child modules (registered automatically when assigned as attributes).

Every module implements an explicit ``forward(x)``, which keeps what its backward pass needs
(nothing under :class:`minidl.no_grad`), and ``backward(dout, input_grad=True)``, which
*accumulates* parameter gradients into ``Parameter.grad`` (like PyTorch's ``.grad``; call
``zero_grad()`` or ``optimizer.zero_grad()`` between steps) and returns the gradient with
respect to its input -- or None when ``input_grad`` is False (see :meth:`Module.backward`).
"""
from collections import OrderedDict, namedtuple

import numpy as np

__all__ = ["Parameter", "Module"]


class Parameter:
    """A trainable array and its gradient.

    Attributes:
        data (np.ndarray): the value, float32 by default (any shape).
        grad (np.ndarray): d loss / d data, same shape and dtype as ``data``; zeros until a
            backward pass accumulates into it.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        data = np.ascontiguousarray(data)
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter: expected float32 or float64 data, got {data.dtype}")
        self.data = data
        self.grad = np.zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self):
        """Set the gradient to zero in place."""
        self.grad[...] = 0

    def accumulate_grad(self, g):
        """Add ``g`` (same shape, any float dtype) to ``grad`` in place."""
        self.grad += g

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What :meth:`Module.load_state_dict` returns: the module's keys absent from the state and
    the state's keys the module does not have (both lists of str), like PyTorch's."""

    __slots__ = ()


class Module:
    """Base class of layers and models.

    Subclasses call ``super().__init__()`` first, then assign parameters, buffers (through
    :meth:`register_buffer`) and child modules as attributes. ``module(x)`` calls ``forward``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ----------------------------------------------------------------- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            object.__setattr__(self, name, value)  # re-assigning a buffer keeps it a buffer
            return
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """Register a non-trainable array (or ``None``) saved in ``state_dict``.

        Buffers are updated in place by the layer (e.g. BatchNorm's ``running_mean``) and are
        never returned by :meth:`parameters`.
        """
        object.__setattr__(self, name, array)
        self._buffers[name] = None  # the value lives on the instance; this keeps the order

    def _buffer_items(self):
        return [(name, getattr(self, name)) for name in self._buffers]

    # ----------------------------------------------------------------- forward/backward
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout, input_grad=True):
        """Backpropagate ``dout`` through the last forward pass.

        The contract every module follows (layers, :class:`~minidl.Sequential`, your own):

        * parameter gradients are *added* to each ``Parameter.grad`` (the same with or without
          ``input_grad``);
        * with ``input_grad=True`` (default) the return value is d loss / d input, the shape and
          dtype of the last forward input;
        * with ``input_grad=False`` the module may skip computing it and returns None (PyTorch
          never computes the gradient of an input that does not require one; a trainer calls
          the model this way, since it never uses the gradient of the images).

        Args:
            dout (np.ndarray): d loss / d output, the shape and dtype of the last output.
            input_grad (bool): compute and return d loss / d input (default True).
        Returns:
            np.ndarray or None: d loss / d input, or None when ``input_grad`` is False.
        Raises:
            RuntimeError: no forward pass to backpropagate through: none yet, the last one ran
                under :class:`minidl.no_grad` (which keeps nothing for backward), or, for
                layers that keep one forward pass for one backward pass, it was already used.
            ValueError/TypeError: ``dout`` does not match the last output.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x):
        return self.forward(x)

    # ----------------------------------------------------------------- traversal
    def children(self):
        """The direct child modules, in registration order."""
        return list(self._modules.values())

    def named_modules(self, prefix=""):
        """Yield ``(name, module)`` for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        """Yield ``(qualified_name, Parameter)`` in layer order (e.g. ``"0.weight"``)."""
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        """All trainable parameters, in layer order. Buffers are not included."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        """Yield ``(qualified_name, array)`` for every non-None buffer."""
        for mod_name, module in self.named_modules(prefix):
            for name, value in module._buffer_items():
                if value is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    # ----------------------------------------------------------------- modes
    def train(self, mode=True):
        """Set training mode on this module and every descendant; returns ``self``."""
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        """Set evaluation mode (``train(False)``); returns ``self``."""
        return self.train(False)

    def zero_grad(self):
        """Zero the gradient of every parameter."""
        for p in self.parameters():
            p.zero_grad()

    def astype(self, dtype):
        """Convert every parameter (and its grad) and floating buffer to ``dtype`` in place.

        Args:
            dtype: ``np.float32`` or ``np.float64``.
        Returns:
            ``self``.
        Raises:
            TypeError: for any other dtype.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{type(self).__name__}.astype: expected float32 or float64, got {dtype}")
        for _, module in self.named_modules():
            for p in module._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = p.grad.astype(dtype)
            for name, value in module._buffer_items():
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    object.__setattr__(module, name, value.astype(dtype))
        return self

    # ----------------------------------------------------------------- state
    def state_dict(self):
        """Copies of every parameter and buffer, keyed like PyTorch (``"1.running_mean"``).

        Returns:
            OrderedDict[str, np.ndarray]: per module, parameters then buffers, modules in
            depth-first registration order.
        """
        state = OrderedDict()
        for mod_name, module in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in module._parameters.items():
                state[pre + name] = p.data.copy()
            for name, value in module._buffer_items():
                if value is not None:
                    state[pre + name] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into this module's parameters and buffers, in place.

        Every entry is checked before any is written, so on error the module is unchanged:
        the keys (with ``strict``), that each value is a NumPy array (or NumPy scalar) of the
        target's shape, and its dtype kind: floating values go into floating targets (cast to the
        target's dtype; a finite value that would overflow it is refused) and integer values into
        integer targets such as ``num_batches_tracked`` (each value within the target dtype's
        range; a float -- which could be NaN, infinite or fractional -- is refused). Parameters and
        buffers keep their identity (optimizers hold references to them). Matches PyTorch's
        ``Module.load_state_dict``, including ``strict=False`` and the returned named tuple.

        Args:
            state_dict (Mapping[str, np.ndarray]): as returned by :meth:`state_dict`.
            strict (bool): require exactly this module's keys (default True). With False,
                missing keys are left as they are and unexpected keys are ignored; the entries
                present are still fully checked.
        Returns:
            IncompatibleKeys: ``(missing_keys, unexpected_keys)``, both empty when ``strict``.
        Raises:
            TypeError: ``state_dict`` is not a mapping; a value that is not a NumPy array; a
                dtype of the wrong kind (e.g. float data for an integer buffer).
            KeyError: missing or unexpected keys when ``strict`` (all of them are named).
            ValueError: a shape that differs from the module's; a value that does not fit the
                target dtype (e.g. 1e39 into float32, -1 into uint8).
        """
        owner = f"{type(self).__name__}.load_state_dict"
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"{owner}: expected a mapping of names to arrays (a state_dict), "
                            f"got {type(state_dict).__name__}")
        targets = OrderedDict()
        for mod_name, module in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in module._parameters.items():
                targets[pre + name] = p.data
            for name, value in module._buffer_items():
                if value is not None:
                    targets[pre + name] = value
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"{owner}: missing keys {missing}, unexpected keys {unexpected}")
        updates = [(current, self._checked_state_value(owner, key, current, state_dict[key]))
                   for key, current in targets.items() if key in state_dict]
        for current, value in updates:
            np.copyto(current, value, casting="unsafe")  # kinds and ranges checked above
        return IncompatibleKeys(missing, unexpected)

    @staticmethod
    def _checked_state_value(owner, key, current, value):
        """``value`` as an array ready to copy into ``current``; raise if it does not fit."""
        expected = f"shape {current.shape} and dtype {current.dtype}"
        if not isinstance(value, (np.ndarray, np.generic)):
            raise TypeError(f"{owner}: '{key}' expected a numpy.ndarray of {expected}, "
                            f"got {type(value).__name__}")
        value = np.asarray(value)
        if value.shape != current.shape:
            raise ValueError(f"{owner}: '{key}' expected shape {current.shape}, got {value.shape}")
        target, kind = current.dtype, value.dtype.kind
        if target.kind == "f":
            if kind != "f":
                raise TypeError(f"{owner}: '{key}' expected floating values ({target}), "
                                f"got dtype {value.dtype}")
            if value.dtype.itemsize > target.itemsize:
                with np.errstate(over="ignore"):
                    cast = value.astype(target)
                overflow = np.isfinite(value) & ~np.isfinite(cast)
                if overflow.any():
                    raise ValueError(f"{owner}: '{key}' holds {value[overflow].flat[0].item()!r}, which "
                                     f"overflows {target}")
        elif target.kind in "iu":
            if kind not in "iu":
                raise TypeError(f"{owner}: '{key}' expected integer values ({target}), got dtype "
                                f"{value.dtype}" + (" (which may be NaN, infinite or fractional)"
                                                    if kind == "f" else ""))
            info = np.iinfo(target)
            if value.size and (value.min() < info.min or value.max() > info.max):
                raise ValueError(f"{owner}: '{key}' holds values in [{value.min()}, {value.max()}], "
                                 f"outside the range of {target} [{info.min}, {info.max}]")
        elif kind != target.kind:
            raise TypeError(f"{owner}: '{key}' expected {expected}, got dtype {value.dtype}")
        return value

    # ----------------------------------------------------------------- display
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child_repr}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"
