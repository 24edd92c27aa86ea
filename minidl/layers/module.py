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

A backward pass is all or nothing for the gradients: when any ``backward`` raises (a wrong
``dout`` reaching a layer in the middle of a model, an error in your own layer, Ctrl-C), every
``Parameter.grad`` the pass could have changed is put back to its value before the outermost
``backward`` call, so no layer's gradient is left accumulated twice (see :class:`_BackwardPass`).
"""
import contextvars
import functools
import itertools
from collections import OrderedDict, namedtuple

import numpy as np

from .. import _memory
from .._checks import check_bool, watch_kept
from .._grad_mode import is_grad_enabled, save_for_backward

__all__ = ["Parameter", "Module", "RemovableHandle"]


class Parameter:
    """A trainable array and its gradient.

    Attributes:
        data (np.ndarray): the value, float32 by default (any shape).
        grad (np.ndarray): d loss / d data, same shape and dtype as ``data``; zeros until a
            backward pass accumulates into it.
    """

    __slots__ = ("data", "grad", "_backup")

    def __init__(self, data):
        data = np.ascontiguousarray(data)
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter: expected float32 or float64 data, got {data.dtype}")
        self.data = data
        self.grad = np.zeros_like(data)
        self._backup = None  # where a backward pass keeps grad's old value (see _BackwardPass)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self):
        """Set the gradient to zero in place (a ``grad`` that is None stays None)."""
        if self.grad is not None:
            self.grad[...] = 0

    def accumulate_grad(self, g, owned=False):
        """Add ``g`` (same shape, any float dtype) to ``grad`` in place.

        Inside a backward pass the old value is saved first, so that a failing pass can put it
        back (see :meth:`Module.backward`). A ``grad`` set to None starts again from ``g``: a
        copy of it, or, when the caller passes ``owned=True`` (``g`` is a new array that
        nothing else refers to or will write, e.g. what a functional backward has just
        returned), ``g`` itself if it owns its memory and has the parameter's dtype -- as
        PyTorch's AccumulateGrad takes over a fresh gradient instead of copying it.

        Raises:
            ValueError: ``g`` does not have the parameter's shape (it would broadcast).
        """
        g = np.asarray(g)
        if g.shape != self.data.shape:
            raise ValueError(f"Parameter{self.data.shape}: expected a gradient of shape "
                             f"{self.data.shape}, got shape {g.shape}")
        backward_pass = _BACKWARD_PASS.get()
        if backward_pass is not None:
            backward_pass.save(self)
        if self.grad is None:
            if (owned and type(g) is np.ndarray and g.dtype == self.data.dtype
                    and g.flags.owndata and g.flags.c_contiguous and g.flags.writeable):
                self.grad = g
                return
            # a new array (a block of minidl's allocator: no page faults)
            self.grad = _memory.empty(self.data.shape, self.data.dtype)
            np.copyto(self.grad, g, casting="unsafe")
        else:
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

    Hooks and the ``backward`` wrapper (what a debugger shows): ``module(x)`` runs
    :meth:`__call__`, which runs the forward hooks around ``forward`` and checks that no module
    runs twice in one forward pass. Parents call ``child.backward(dout)`` directly, so to let
    backward hooks run too, every subclass's ``backward`` is wrapped once, when the class is
    defined (:meth:`__init_subclass__`). Stepping into ``layer.backward(dout)`` therefore first
    enters ``backward_with_hooks`` in ``module.py``, which calls the layer's own ``backward``
    straight away when the layer has no backward hooks.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_backward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_backward_hooks", OrderedDict())
        object.__setattr__(self, "_forward_pass", None)  # the number of its last forward pass

    def __init_subclass__(cls, **kwargs):
        """Wrap the subclass's ``backward`` once so that backward hooks run however it is called.

        A parent calls ``child.backward(dout)`` itself (there is no autograd engine to run hooks),
        so the hooks must run inside ``backward``. The wrapper, ``backward_with_hooks``, costs
        one extra Python call and two dictionary checks when no hook is registered; the class's
        own method stays reachable as ``type(layer).backward.__wrapped__``. A class that inherits
        an already wrapped ``backward`` is left alone, and hooks run once per module even when a
        subclass's ``backward`` calls ``super().backward(...)``.
        """
        super().__init_subclass__(**kwargs)
        backward = cls.backward
        if not getattr(backward, "_runs_backward_hooks", False):
            cls.backward = _with_backward_hooks(backward)

    # ----------------------------------------------------------------- registration
    def __setattr__(self, name, value):
        state = self.__dict__
        if "_parameters" not in state:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        if (not isinstance(value, (Parameter, Module)) and name not in state["_parameters"]
                and name not in state["_modules"]):
            # a plain value (a layer's cache, every step) needs no bookkeeping; re-assigning a
            # buffer keeps it a buffer
            object.__setattr__(self, name, value)
            return
        if isinstance(value, Parameter):
            target = self._parameters
        elif isinstance(value, Module):
            target = self._modules
        else:
            target = None
        for store in (self._parameters, self._buffers, self._modules):
            if store is not target:
                store.pop(name, None)
        if target is not None:
            # a replaced child or parameter keeps its place (as in PyTorch): a Sequential's
            # layer swapped for another still runs in the same position
            target[name] = value
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

    # ----------------------------------------------------------------- what backward needs
    # A layer keeps one forward pass's cache in ``_cache`` and fingerprints of the arrays the
    # cache refers to in ``_watched`` (checked by ``minidl._checks.check_kept`` in backward).
    # These two plain attributes are written straight into the instance's dict: they need none
    # of ``__setattr__``'s bookkeeping, and every layer sets them on every call (at batch 1 the
    # four ``__setattr__`` calls were a tenth of a ReLU's time).
    def _release_saved(self):
        """Drop what the last forward pass kept for backward, before this pass allocates (its
        memory can then serve this pass's arrays)."""
        state = self.__dict__
        state["_cache"] = None
        state["_watched"] = ()

    def _keep_for_backward(self, cache, **arrays):
        """Keep ``cache`` for one backward pass (a marker under :class:`minidl.no_grad`), with
        fingerprints of the ``arrays`` (keyword: what each is, e.g. ``input=x``) that it refers
        to."""
        state = self.__dict__
        state["_cache"] = saved = save_for_backward(cache)
        # (under no_grad nothing is kept, so there is nothing to watch)
        state["_watched"] = watch_kept(saved, **arrays) if arrays and saved is cache else ()

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

        Whatever the error (here or in any module this one calls), the parameter gradients are
        left as they were before the call: the outermost ``backward`` saves every gradient it
        may change and puts them back when an exception leaves it (see :class:`_BackwardPass`).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x, *args, **kwargs):
        """Run ``forward(x, *args, **kwargs)`` with the forward hooks; the way to call a module.

        The outermost call starts a new forward pass; calls made while it runs (a parent calling
        its children) belong to that pass. A module holds one cache for its backward, so running
        it twice in one pass would silently give wrong gradients: the second call raises (under
        :func:`minidl.no_grad` nothing is cached, and a module may run any number of times).

        Raises:
            RuntimeError: this module already ran in the current forward pass with gradients
                enabled (the same object appears twice in the model, e.g. one ``ReLU()`` used
                after two convolutions).
        """
        forward_pass = self._enter_forward_pass()
        try:
            if self._forward_pre_hooks or self._forward_hooks:
                return self._forward_with_hooks((x,) + args, kwargs)
            if args or kwargs:
                return self.forward(x, *args, **kwargs)
            return self.forward(x)
        finally:
            forward_pass.leave()

    def _enter_forward_pass(self):
        """Record that this module runs in the current forward pass (the outermost call starts
        a new one) and return the pass; its ``leave()`` ends the call.

        Raises:
            RuntimeError: the module already ran in this pass with gradients enabled.
        """
        forward_pass = _FORWARD_PASS.get(None)
        if forward_pass is None:
            forward_pass = _ForwardPass()
            _FORWARD_PASS.set(forward_pass)
        if forward_pass.depth == 0:
            forward_pass.number = next(_PASS_NUMBERS)
            forward_pass.root = self
        elif self._forward_pass == forward_pass.number and is_grad_enabled():
            raise RuntimeError(_called_twice_message(self, forward_pass.root))
        self.__dict__["_forward_pass"] = forward_pass.number
        forward_pass.depth += 1
        return forward_pass

    def _call_with_relu(self, relu, x, pool=None):
        """``relu(self(x))`` in one pass: ``self._forward_relu(x)`` computes it (a layer that
        can apply a following ReLU as it writes its output: BatchNorm, Dense, Residual), and
        the ReLU layer ``relu`` keeps that output as if its own forward had computed it, so
        both backward passes are the usual ones. With ``pool`` (a MaxPool2D after the ReLU,
        for a layer with ``_forward_relu_pool``: BatchNorm), ``pool(relu(self(x)))`` in the
        same pass, the pool keeping its usual cache too. :class:`~minidl.Sequential` calls
        this; the modules are recorded in the forward pass as :meth:`__call__` records them,
        and only modules without forward hooks are fused (a hook would not see the values in
        between).

        Raises:
            RuntimeError: a module already ran in this pass with gradients enabled.
        """
        fused = (self, relu) if pool is None else (self, relu, pool)
        entered = []
        try:
            for module in fused:
                entered.append(module._enter_forward_pass())
            if pool is None:
                out = self._forward_relu(x)
                relu._adopt_output(out)
                return out
            relu._release_saved()  # its recipe holds the last pass's cache: free it first
            pooled, pool_cache, relu_output = self._forward_relu_pool(pool, x)
            relu._adopt_recomputed_output(relu_output)
            pool._adopt_cache(pool_cache)
            return pooled
        finally:
            for forward_pass in reversed(entered):
                forward_pass.leave()

    # ----------------------------------------------------------------- hooks
    def register_forward_pre_hook(self, hook, *, prepend=False):
        """Register ``hook(module, input) -> None or new input``, run before every ``forward``.

        As PyTorch's ``register_forward_pre_hook``: ``input`` is the tuple of positional
        arguments (``(x,)`` for a layer); a hook may return a replacement, a tuple or a single
        value (then used as ``(value,)``). Hooks run in registration order (``prepend=True``
        puts this one first) and only when the module is called as ``module(x)``, not through
        ``module.forward(x)``.

        Returns:
            RemovableHandle: ``handle.remove()`` unregisters the hook.
        Raises:
            TypeError: ``hook`` is not callable.
        """
        return self._add_hook(self._forward_pre_hooks, hook, prepend, "register_forward_pre_hook")

    def register_forward_hook(self, hook, *, prepend=False):
        """Register ``hook(module, input, output) -> None or new output``, run after ``forward``.

        As PyTorch's ``register_forward_hook``: ``input`` is the tuple of positional arguments
        (after the pre-hooks), ``output`` what ``forward`` returned; a non-None return value
        replaces the output. Typical use: record activation statistics::

            means = []
            handle = layer.register_forward_hook(lambda m, inp, out: means.append(out.mean()))
            model(x)
            handle.remove()

        Returns:
            RemovableHandle: ``handle.remove()`` unregisters the hook.
        Raises:
            TypeError: ``hook`` is not callable.
        """
        return self._add_hook(self._forward_hooks, hook, prepend, "register_forward_hook")

    def register_full_backward_pre_hook(self, hook, *, prepend=False):
        """Register ``hook(module, grad_output) -> None or new grad_output``, run before
        ``backward``.

        As PyTorch's ``register_full_backward_pre_hook``: ``grad_output`` is ``(dout,)``; a
        non-None return value (a 1-tuple or an array) replaces ``dout``.

        Returns:
            RemovableHandle: ``handle.remove()`` unregisters the hook.
        Raises:
            TypeError: ``hook`` is not callable.
        """
        return self._add_hook(self._backward_pre_hooks, hook, prepend,
                              "register_full_backward_pre_hook")

    def register_full_backward_hook(self, hook, *, prepend=False):
        """Register ``hook(module, grad_input, grad_output) -> None or new grad_input``, run
        after ``backward``.

        As PyTorch's ``register_full_backward_hook``: ``grad_input`` is ``(dx,)``, the gradient
        ``backward`` returned with respect to the input (``(None,)`` when it was called with
        ``input_grad=False``), and ``grad_output`` is ``(dout,)``; a non-None return value (a
        1-tuple or an array) replaces the returned gradient. When the hook runs, the module's
        parameter gradients already hold this backward's contribution. The hook runs whoever
        calls ``backward`` (a parent or you), once per call.

        Returns:
            RemovableHandle: ``handle.remove()`` unregisters the hook.
        Raises:
            TypeError: ``hook`` is not callable.
        """
        return self._add_hook(self._backward_hooks, hook, prepend, "register_full_backward_hook")

    def _add_hook(self, hooks, hook, prepend, method):
        if not callable(hook):
            raise TypeError(
                f"{type(self).__name__}.{method}: expected a callable hook, got "
                f"{type(hook).__name__}"
            )
        handle = RemovableHandle(hooks)
        hooks[handle.id] = hook
        if prepend:
            hooks.move_to_end(handle.id, last=False)
        return handle

    def _forward_with_hooks(self, args, kwargs):
        for hook in list(self._forward_pre_hooks.values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, output)
            if result is not None:
                output = result
        return output

    def _backward_with_hooks(self, backward, dout, args, kwargs):
        """Run ``backward`` (the class's own method) between the backward hooks."""
        if self.__dict__.get("_in_backward_hooks"):  # a subclass calling super().backward()
            return backward(self, dout, *args, **kwargs)
        for hook in list(self._backward_pre_hooks.values()):
            result = hook(self, (dout,))
            if result is not None:
                dout = _single_gradient(self, result, "full backward pre-hook")
        self.__dict__["_in_backward_hooks"] = True
        try:
            grad_input = backward(self, dout, *args, **kwargs)
        finally:
            self.__dict__["_in_backward_hooks"] = False
        for hook in list(self._backward_hooks.values()):
            result = hook(self, (grad_input,), (dout,))
            if result is not None:
                grad_input = _single_gradient(self, result, "full backward hook")
        return grad_input

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
        found = list(self._parameters.values())  # named_parameters' order, without the names
        for child in self._modules.values():
            found += child.parameters()
        return found

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

    def zero_grad(self, set_to_none=False):
        """Reset the gradient of every parameter: zeros in place (default), or None with
        ``set_to_none=True`` (PyTorch's default; see :meth:`minidl.optim.Optimizer.zero_grad`).

        Raises:
            TypeError: ``set_to_none`` is not a bool.
        """
        set_to_none = check_bool(f"{type(self).__name__}.zero_grad", "set_to_none", set_to_none)
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            else:
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
                p.grad = None if p.grad is None else p.grad.astype(dtype)
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
            if self.extra_repr():  # on a line of its own before the children, as PyTorch
                lines = [f"{type(self).__name__}(", f"  {self.extra_repr()}"]
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child_repr}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


class RemovableHandle:
    """What the ``register_*_hook`` methods return: ``handle.remove()`` unregisters the hook.

    Also a context manager (``with layer.register_forward_hook(f): ...`` removes the hook on
    exit), as PyTorch's ``torch.utils.hooks.RemovableHandle``.
    """

    _ids = itertools.count()

    def __init__(self, hooks):
        self.id = next(RemovableHandle._ids)
        self._hooks = hooks

    def remove(self):
        """Unregister the hook (doing it twice is harmless)."""
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.remove()


class _BackwardPass:
    """The parameter gradients one outermost ``backward`` call may change, as they were before.

    The outermost call saves the gradient of every parameter of its module (one copy into a
    buffer each Parameter keeps, so a step allocates nothing); :meth:`Parameter.accumulate_grad`
    saves any other parameter it is asked to change (one held outside the module tree). When an
    exception leaves the outermost call, :meth:`restore` puts each ``grad`` back -- the same
    array object, its old values -- so a failed backward changes no gradient. Measured on the
    MNIST CNN + BN at batch 64 (421,642 parameters): about 0.1 ms per step (README, "Errors and
    guarantees").
    """

    __slots__ = ("saved",)

    def __init__(self, module):
        self.saved = {}
        for p in module.parameters():
            self.save(p)

    def save(self, p):
        """Keep ``p.grad`` as it is now, unless it is already kept."""
        if id(p) in self.saved:
            return
        grad = p.grad
        if grad is None:
            self.saved[id(p)] = (p, None)
            return
        backup = p._backup
        if backup is None or backup.shape != grad.shape or backup.dtype != grad.dtype:
            backup = p._backup = np.empty_like(grad)
        np.copyto(backup, grad)
        self.saved[id(p)] = (p, grad)

    def restore(self):
        """Put every saved gradient back (the original array, with its old values)."""
        for p, grad in self.saved.values():
            if grad is not None:
                np.copyto(grad, p._backup)
            p.grad = grad


_BACKWARD_PASS = contextvars.ContextVar("minidl_backward_pass", default=None)  # per thread


def _restored_note(error):
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note("minidl: the backward pass failed, so every Parameter.grad was put back "
                       "to its value before the outermost backward call")


def _with_backward_hooks(backward):
    """Wrap a class's ``backward`` so that the instance's backward hooks run around it, and the
    outermost call of a backward pass restores the gradients if it fails."""

    def run(self, dout, args, kwargs):
        if self._backward_pre_hooks or self._backward_hooks:
            return self._backward_with_hooks(backward, dout, args, kwargs)
        if args or kwargs:
            return backward(self, dout, *args, **kwargs)
        return backward(self, dout)

    @functools.wraps(backward)
    def backward_with_hooks(self, dout, *args, **kwargs):
        if _BACKWARD_PASS.get() is not None:  # inside a backward pass: a parent called us
            return run(self, dout, args, kwargs)
        backward_pass = _BackwardPass(self)
        token = _BACKWARD_PASS.set(backward_pass)
        try:
            return run(self, dout, args, kwargs)
        except BaseException as error:
            backward_pass.restore()
            _restored_note(error)
            raise
        finally:
            _BACKWARD_PASS.reset(token)

    backward_with_hooks._runs_backward_hooks = True
    return backward_with_hooks


def _single_gradient(module, result, what):
    """A hook's replacement gradient: an array (or None) or a 1-tuple holding one."""
    if isinstance(result, (tuple, list)):
        if len(result) != 1:
            raise ValueError(
                f"{type(module).__name__}: a {what} returned {len(result)} gradients; "
                "expected one (a 1-tuple or an array)"
            )
        return result[0]
    return result


class _ForwardPass:
    """Per-thread bookkeeping of the forward pass that is running (see ``Module.__call__``)."""

    __slots__ = ("depth", "number", "root")

    def __init__(self):
        self.depth = 0  # how many Module.__call__ are running
        self.number = 0  # the running pass, unique across threads
        self.root = None  # the module whose call started it

    def leave(self):
        """End one module's call (the pass ends with its outermost call)."""
        self.depth -= 1
        if self.depth == 0:
            self.root = None


_FORWARD_PASS = contextvars.ContextVar("minidl_forward_pass")  # each thread has its own
_PASS_NUMBERS = itertools.count(1)


def _called_twice_message(module, root):
    """Name a module that ran twice in one forward pass, with its places in ``root``."""
    name = type(module).__name__
    places = [path for path, m in root.named_modules() if m is module] if root is not None else []
    if module is root:
        where = " (the top-level module, called from its own forward)"
    elif places:
        quoted = " and ".join(repr(p) for p in places)
        where = f" (at {quoted} in the {type(root).__name__})"
    else:
        where = f" (not registered as a child of the {type(root).__name__} being run)"
    return (
        f"{name}{where} was called twice in one forward pass: a module keeps one cache for its "
        f"backward, so the second call would overwrite the first and the gradients would be "
        f"wrong. Create a separate instance for each position (a new {name}(...) each time it "
        f"is used, e.g. Sequential(conv1, ReLU(), conv2, ReLU()) rather than one ReLU object "
        f"twice)."
    )
