"""The optimizer base class: parameter groups, per-parameter state, checkpoints, validation.

Every optimizer holds :class:`~minidl.layers.module.Parameter` objects and updates ``p.data``
*in place* from ``p.grad``: ``p.data`` stays the same array object across steps (other code keeps
references to it). Per-parameter state (momentum buffers, Adam moments) is allocated once, on a
parameter's first step, in the parameter's dtype, and updated in place afterwards; intermediate
results go into two scratch buffers shared by all parameters of a dtype, so a step allocates no
parameter-sized arrays.

Parameters are organized in *parameter groups*, as in PyTorch: ``optimizer.param_groups`` is a
list of dicts, each with ``"params"`` (a list of Parameters) and its own hyperparameters (``"lr"``,
``"momentum"``, ...). Learning-rate schedulers (:mod:`minidl.optim.lr_scheduler`) change
``group["lr"]`` between steps; each step reads and validates every group's values.

:meth:`Optimizer.state_dict` / :meth:`Optimizer.load_state_dict` save and restore the groups'
hyperparameters and the per-parameter state (NumPy arrays keyed by parameter index, like
PyTorch's ``optimizer.state_dict()``), so a run resumed from a checkpoint continues
bit-identically.

Hyperparameters are kept as Python floats: a NumPy float64 scalar would promote float32 updates
to float64 (NEP 50) and change the rounding.
"""
import math
from collections.abc import Mapping

import numpy as np

from .._checks import check_bool, check_integer, check_number  # noqa: F401 (also used by the schedulers)
from ..layers.module import Parameter

__all__ = ["Optimizer"]

# Entries that learning-rate schedulers keep in a parameter group, as PyTorch's do
# ("initial_lr" for every scheduler, the rest for OneCycleLR). They are saved and loaded with the
# group; any other key that is not a hyperparameter is an error.
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def check_keys(prefix, what, expected, mapping, allowed=()):
    """Raise KeyError (starting with ``prefix``) unless ``mapping`` has every ``expected`` key and
    no key outside ``expected`` and ``allowed``."""
    missing = [k for k in expected if k not in mapping]
    unexpected = [k for k in mapping if k not in expected and k not in allowed]
    if missing or unexpected:
        raise KeyError(
            f"{prefix} missing {what} {missing}, unexpected {what} {unexpected} "
            f"(expected {list(expected)})"
        )


class Optimizer:
    """Base class: parameter groups, per-parameter state and checkpoints.

    Subclasses set ``HYPERPARAMETERS`` (the names kept in every parameter group) and
    ``STATE_KEYS`` (the entries of one parameter's state), implement
    ``_check_hyperparameters(where, **values) -> dict`` (validate and normalize) and ``step()``.

    Args:
        params (iterable): e.g. ``model.parameters()`` (a list or a generator of Parameters), or
            an iterable of dicts, one per parameter group, each with ``"params"`` and any
            hyperparameters that differ from the defaults (PyTorch's format)::

                SGD([{"params": model[0].parameters(), "lr": 0.01},
                     {"params": model[3].parameters()}], lr=0.1, momentum=0.9)

        defaults (dict): the subclass's hyperparameters, used for every group that does not
            set its own.

    Attributes:
        param_groups (list of dict): ``{"params": [Parameter, ...], "lr": ..., ...}`` per group.
            Change a group's values between steps (a scheduler does); the next step validates
            them.
        params (list of Parameter): every parameter, group by group; a parameter's index in this
            list keys its state.
        state (dict[int, dict]): per-parameter state, filled on a parameter's first step.
        defaults (dict): the validated constructor hyperparameters.

    Reading ``optimizer.lr`` (or any hyperparameter by name, e.g. ``optimizer.momentum``) gives
    the first group's value; assigning it sets it when there is one group (with several groups
    set ``optimizer.param_groups[i]["lr"]``).

    Raises:
        TypeError: ``params`` is not iterable or holds something that is not a Parameter; a
            group is not a dict.
        ValueError: ``params`` is empty or holds the same Parameter twice; a hyperparameter
            is out of range (see the subclass).
        KeyError: a group without ``"params"`` or with an unknown key.
    """

    HYPERPARAMETERS = ()
    STATE_KEYS = ()

    def __init__(self, params, defaults):
        name = type(self).__name__
        object.__setattr__(self, "param_groups", [])
        self.params = []
        self.state = {}
        self._index = {}  # id(Parameter) -> its index in self.params
        self._scratch_buffers = {}
        self.defaults = self._check_hyperparameters(name, **defaults)
        for group in self._as_groups(params):
            self.add_param_group(group)

    # ----------------------------------------------------------------- parameter groups
    def _as_groups(self, params):
        """``params`` as a list of group dicts (one group when it holds Parameters)."""
        name = type(self).__name__
        if isinstance(params, Parameter):
            raise TypeError(
                f"{name}: expected an iterable of Parameters (e.g. model.parameters()), "
                "got a single Parameter"
            )
        if isinstance(params, Mapping):
            raise TypeError(
                f"{name}: expected an iterable of Parameters or of parameter-group dicts, got "
                "a single dict (wrap it in a list: [{'params': ...}])"
            )
        try:
            params = list(params)
        except TypeError:
            raise TypeError(
                f"{name}: expected an iterable of Parameters, got {type(params).__name__}"
            ) from None
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        if isinstance(params[0], Mapping):
            for index, group in enumerate(params):
                if not isinstance(group, Mapping):
                    raise TypeError(
                        f"{name}: expected every parameter group to be a dict, got "
                        f"{type(group).__name__} at index {index}"
                    )
            return params
        return [{"params": params}]

    def add_param_group(self, param_group):
        """Add a parameter group (PyTorch's ``add_param_group``), e.g. to train more layers.

        Args:
            param_group (dict): ``"params"`` (a Parameter or an iterable of them) and, optionally,
                hyperparameters; missing ones are taken from :attr:`defaults`.
        Raises:
            TypeError: not a dict, or ``"params"`` holds something that is not a Parameter.
            KeyError: no ``"params"``, or an unknown key.
            ValueError: a Parameter that the optimizer already holds; an invalid hyperparameter.
        """
        name = type(self).__name__
        where = f"{name} param_groups[{len(self.param_groups)}]"
        if not isinstance(param_group, Mapping):
            raise TypeError(f"{where}: expected a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise KeyError(f"{where}: missing 'params'")
        unknown = [k for k in param_group
                   if k != "params" and k not in self.HYPERPARAMETERS and k not in SCHEDULER_KEYS]
        if unknown:
            raise KeyError(
                f"{where}: unknown keys {unknown}; expected 'params' and any of "
                f"{list(self.HYPERPARAMETERS)}"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        seen = set(self._index)
        for position, p in enumerate(params):
            index = len(self.params) + position
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{name}: expected every element of params to be a Parameter, "
                    f"got {type(p).__name__} at index {index}"
                )
            if id(p) in seen:
                raise ValueError(f"{name}: the same Parameter appears twice (index {index})")
            seen.add(id(p))
        values = dict(self.defaults)
        values.update({k: param_group[k] for k in self.HYPERPARAMETERS if k in param_group})
        group = {"params": params, **self._check_hyperparameters(where, **values)}
        for key in SCHEDULER_KEYS:
            if key in param_group:
                group[key] = check_number(where, key, param_group[key], low=-math.inf)
        for p in params:
            self._index[id(p)] = len(self.params)
            self.params.append(p)
        self.param_groups.append(group)

    def _hyperparameters_of(self, group_index):
        """Validate and return the hyperparameters of ``param_groups[group_index]``."""
        group = self.param_groups[group_index]
        where = f"{type(self).__name__} param_groups[{group_index}]"
        missing = [k for k in self.HYPERPARAMETERS if k not in group]
        if missing:
            raise KeyError(f"{where}: missing hyperparameters {missing}")
        return self._check_hyperparameters(where, **{k: group[k] for k in self.HYPERPARAMETERS})

    def _groups(self):
        """``[(hyperparameters, [(index, Parameter, grad), ...]), ...]``, one entry per group,
        with every group's hyperparameters and gradient shapes validated before any update (so
        a failing step changes nothing) and the parameters without a gradient left out."""
        groups = []
        for group_index, group in enumerate(self.param_groups):
            hyperparameters = self._hyperparameters_of(group_index)
            with_grads = []
            for p in group["params"]:
                index = self._index.get(id(p))
                if index is None or self.params[index] is not p:
                    raise ValueError(
                        f"{type(self).__name__}: param_groups[{group_index}] holds a Parameter "
                        "the optimizer was not given; add it with add_param_group()"
                    )
                grad = self._gradient(p, index)
                if grad is not None:
                    with_grads.append((index, p, grad))
            groups.append((hyperparameters, with_grads))
        return groups

    # ----------------------------------------------------------------- hyperparameters
    def __getattr__(self, name):
        # only called when normal lookup fails: hyperparameters read the first group
        if name in type(self).HYPERPARAMETERS and self.__dict__.get("param_groups"):
            return self.param_groups[0][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in type(self).HYPERPARAMETERS:
            if len(self.param_groups) != 1:
                raise ValueError(
                    f"{type(self).__name__}: cannot set {name} for {len(self.param_groups)} "
                    f"parameter groups at once; set optimizer.param_groups[i][{name!r}]"
                )
            group = self.param_groups[0]
            values = {k: group[k] for k in self.HYPERPARAMETERS}
            values[name] = value
            group.update(self._check_hyperparameters(type(self).__name__, **values))
            return
        object.__setattr__(self, name, value)

    def _check_hyperparameters(self, where, **values):
        raise NotImplementedError(
            f"{type(self).__name__} does not implement _check_hyperparameters")

    def hyperparameters(self):
        """The first parameter group's hyperparameters as a dict ``{name: value}``."""
        return {key: self.param_groups[0][key] for key in self.HYPERPARAMETERS}

    # ----------------------------------------------------------------- stepping
    def step(self):
        """Update every parameter in place from its ``grad``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step")

    def zero_grad(self, set_to_none=False):
        """Reset every parameter's gradient before the next backward pass (layers accumulate).

        Args:
            set_to_none (bool): False (default): fill each ``grad`` with zeros in place. True:
                set ``grad`` to None, as PyTorch's ``zero_grad()`` does by default; the next
                backward pass then writes a new gradient array instead of adding to zeros, which
                saves three passes over the gradients per step (filling, the backward pass's
                backup of the old values, reading the zeros back), and :meth:`step` skips a
                parameter whose ``grad`` is still None (as PyTorch's optimizers do).
        Raises:
            TypeError: ``set_to_none`` is not a bool.
        """
        set_to_none = check_bool(type(self).__name__ + ".zero_grad", "set_to_none", set_to_none)
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def _gradient(self, p, index):
        """Return ``p.grad`` after checking its shape (None if the parameter has no gradient)."""
        grad = p.grad
        if grad is not None and grad.shape != p.data.shape:
            raise ValueError(
                f"{type(self).__name__}: parameter {index} has data of shape {p.data.shape} "
                f"but grad of shape {grad.shape}"
            )
        return grad

    def _scratch(self, p, slot):
        """A scratch array shaped and typed like ``p.data``: a view of a shared flat buffer."""
        key = (p.data.dtype, slot)
        buffer = self._scratch_buffers.get(key)
        if buffer is None or buffer.size < p.data.size:
            largest = max(q.data.size for q in self.params)
            buffer = np.empty(max(largest, p.data.size), dtype=p.data.dtype)
            self._scratch_buffers[key] = buffer
        return buffer[: p.data.size].reshape(p.data.shape)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self):
        """Copies of the parameter groups' settings and of the per-parameter state.

        Returns:
            dict: ``{"optimizer": class name, "param_groups": [{"params": [indices], "lr": ...,
            ...}, ...], "state": {param_index: {key: np.ndarray or int}}}`` (PyTorch's layout,
            plus the class name). Arrays are copies, so later steps do not change a saved dict.
            Parameters that have not stepped yet have no entry, as in PyTorch.
        """
        groups = []
        for group in self.param_groups:
            saved = {"params": [self._index[id(p)] for p in group["params"]]}
            saved.update((k, v) for k, v in group.items() if k != "params")
            groups.append(saved)
        state = {}
        for index, entry in self.state.items():
            state[index] = {
                key: value.copy() if isinstance(value, np.ndarray) else value
                for key, value in entry.items()
            }
        return {"optimizer": type(self).__name__, "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict):
        """Restore the groups' settings and the per-parameter state saved by :meth:`state_dict`.

        Saved parameters are matched to this optimizer's by position, group by group (as
        PyTorch does). The arrays are copied (in each parameter's dtype). Integer keys given as
        strings (``"0"``), lists given as arrays or as dicts keyed ``"0"``, ``"1"``, ... and
        scalars given as 0-d arrays are accepted, so a dict flattened to ``.npz`` or JSON loads
        too. A dict saved before parameter groups existed (with ``"hyperparameters"`` instead of
        ``"param_groups"``) loads into a one-group optimizer. Nothing is modified unless every
        check passes.

        Args:
            state_dict (dict): as returned by :meth:`state_dict` of the same optimizer class
                over parameters of the same shapes, in the same order.
        Raises:
            TypeError: an entry of the wrong type (not a dict, a non-numeric array).
            KeyError: a missing top-level entry; missing or unexpected hyperparameters or
                per-parameter state keys.
            ValueError: another optimizer's state; a different number of groups or of
                parameters in a group; an unknown parameter index; an array whose shape differs
                from its parameter's; a negative or non-integer ``step``; invalid
                hyperparameters.
        """
        name = type(self).__name__
        prefix = f"{name}.load_state_dict:"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{prefix} expected a dict, got {type(state_dict).__name__}")
        groups_key = "param_groups" if "param_groups" in state_dict else "hyperparameters"
        for key in ("optimizer", groups_key, "state"):
            if key not in state_dict:
                raise KeyError(f"{prefix} missing entry {key!r}")
        if str(state_dict["optimizer"]) != name:
            raise ValueError(
                f"{prefix} expected the state of a {name}, "
                f"got the state of a {state_dict['optimizer']}"
            )
        if groups_key == "param_groups":
            new_groups, index_map = self._load_groups(state_dict["param_groups"])
        else:  # the format before parameter groups: one group, indices as they are
            if len(self.param_groups) != 1:
                raise ValueError(
                    f"{prefix} the saved state has one parameter group (no 'param_groups'), "
                    f"this optimizer has {len(self.param_groups)}"
                )
            saved = state_dict["hyperparameters"]
            if not isinstance(saved, Mapping):
                raise TypeError(f"{prefix} expected 'hyperparameters' to be a dict, got "
                                f"{type(saved).__name__}")
            new_groups = [self._load_group(0, saved)]
            index_map = None

        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(
                f"{prefix} expected 'state' to be a dict, got {type(saved_state).__name__}")
        new_state = {}
        for raw_index, entry in saved_state.items():
            try:
                saved_index = int(raw_index)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{prefix} expected integer parameter indices as the keys of 'state', "
                    f"got {raw_index!r}"
                ) from None
            if index_map is None:
                index = saved_index if 0 <= saved_index < len(self.params) else None
            else:
                index = index_map.get(saved_index)
            if index is None:
                raise ValueError(
                    f"{prefix} state for parameter {saved_index}, but the optimizer has "
                    f"{len(self.params)} parameters"
                    + ("" if index_map is None else f" (the saved groups hold {sorted(index_map)})")
                )
            if not isinstance(entry, Mapping):
                raise TypeError(
                    f"{prefix} parameter {index}: expected a dict of state, got "
                    f"{type(entry).__name__}"
                )
            new_state[index] = self._load_param_state(index, entry)

        for group, loaded in zip(self.param_groups, new_groups):
            params = group["params"]
            group.clear()
            group["params"] = params
            group.update(loaded)
        self.state = new_state

    def _load_groups(self, saved_groups):
        """Validate saved groups; return their settings and ``{saved index: index here}``."""
        prefix = f"{type(self).__name__}.load_state_dict:"
        if isinstance(saved_groups, Mapping):  # {"0": group, "1": group, ...}
            try:
                saved_groups = [saved_groups[k] for k in sorted(saved_groups, key=int)]
            except (TypeError, ValueError):
                raise ValueError(
                    f"{prefix} expected 'param_groups' to be a list (or a dict keyed by group "
                    f"index), got keys {list(saved_groups)}"
                ) from None
        if not isinstance(saved_groups, (list, tuple)):
            raise TypeError(
                f"{prefix} expected 'param_groups' to be a list, got {type(saved_groups).__name__}"
            )
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{prefix} the saved state has {len(saved_groups)} parameter groups, this "
                f"optimizer has {len(self.param_groups)}"
            )
        new_groups, index_map = [], {}
        for group_index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, Mapping):
                raise TypeError(
                    f"{prefix} param_groups[{group_index}]: expected a dict, got "
                    f"{type(saved).__name__}"
                )
            if "params" not in saved:
                raise KeyError(f"{prefix} param_groups[{group_index}]: missing 'params'")
            indices = np.asarray(saved["params"]).reshape(-1)
            if indices.size and indices.dtype.kind not in "iu":
                raise TypeError(
                    f"{prefix} param_groups[{group_index}]: expected 'params' to hold integer "
                    f"indices, got {saved['params']!r}"
                )
            if indices.size != len(group["params"]):
                raise ValueError(
                    f"{prefix} param_groups[{group_index}] holds {indices.size} parameters in "
                    f"the saved state, {len(group['params'])} in this optimizer"
                )
            for saved_index, p in zip(indices.tolist(), group["params"]):
                index_map[saved_index] = self._index[id(p)]
            new_groups.append(self._load_group(group_index, saved))
        return new_groups, index_map

    def _load_group(self, group_index, saved):
        """Validate one saved group's hyperparameters (and scheduler entries); return them."""
        where = f"{type(self).__name__}.load_state_dict: param_groups[{group_index}]:"
        values = {k: v for k, v in saved.items() if k != "params"}
        check_keys(where, "hyperparameters", self.HYPERPARAMETERS, values, allowed=SCHEDULER_KEYS)
        loaded = self._check_hyperparameters(
            where[:-1], **{k: values[k] for k in self.HYPERPARAMETERS}
        )
        for key in SCHEDULER_KEYS:
            if key in values:
                loaded[key] = check_number(where[:-1], key, values[key], low=-math.inf)
        return loaded

    def _load_param_state(self, index, entry):
        """Validate and copy one parameter's saved state."""
        where = f"{type(self).__name__}.load_state_dict: parameter {index}:"
        p = self.params[index]
        check_keys(where, "state", self.STATE_KEYS, entry)
        loaded = {}
        for key in self.STATE_KEYS:
            value = entry[key]
            if key == "step":
                loaded[key] = check_integer(where[:-1], "'step'", value, low=0)
                continue
            array = np.asarray(value)
            if array.dtype.kind not in "fiu":
                raise TypeError(
                    f"{where} expected {key!r} to be an array of real numbers, got dtype "
                    f"{array.dtype}"
                )
            if array.shape != p.data.shape:
                raise ValueError(
                    f"{where} expected {key!r} of shape {p.data.shape}, got {array.shape}"
                )
            loaded[key] = np.array(array, dtype=p.data.dtype, copy=True, order="C")
        return loaded

    def __repr__(self):
        def settings(group):
            return ", ".join(f"{k}={group[k]!r}" for k in self.HYPERPARAMETERS)

        name = type(self).__name__
        if len(self.param_groups) == 1:
            return f"{name}({len(self.params)} parameters, {settings(self.param_groups[0])})"
        groups = "; ".join(
            f"[{i}] {len(g['params'])} parameters, {settings(g)}"
            for i, g in enumerate(self.param_groups)
        )
        return f"{name}({len(self.param_groups)} groups: {groups})"
