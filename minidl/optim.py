"""Optimizers: SGD (with momentum / Nesterov) and Adam, following PyTorch's update rules.

Every optimizer holds a list of :class:`~minidl.layers.module.Parameter` objects and updates
``p.data`` *in place* from ``p.grad``: ``p.data`` stays the same array object across steps (other
code keeps references to it). Per-parameter state (momentum buffers, Adam moments) is allocated
once, on a parameter's first step, in the parameter's dtype, and updated in place afterwards;
intermediate results go into two scratch buffers shared by all parameters of a dtype, so a step
allocates no parameter-sized arrays.

:meth:`Optimizer.state_dict` / :meth:`Optimizer.load_state_dict` save and restore the
hyperparameters and the per-parameter state (NumPy arrays keyed by parameter index, like
PyTorch's ``optimizer.state_dict()["state"]``), so a run resumed from a checkpoint continues
bit-identically.

Hyperparameters are kept as Python floats: a NumPy float64 scalar would promote float32 updates
to float64 (NEP 50) and change the rounding.
"""
import math
from numbers import Real

import numpy as np

from .layers.module import Parameter

__all__ = ["Optimizer", "SGD", "Adam"]


def _check_number(optimizer, name, value, low=0.0, high=None, high_inclusive=True):
    """Return ``value`` as a Python float in ``[low, high]`` (or ``[low, high)``), else raise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.ndarray)):
        raise TypeError(f"{optimizer}: expected {name} to be a real number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{optimizer}: expected {name} to be a real number, got {value!r}") from None
    if high is None:
        ok = number >= low  # also rejects NaN
        expected = f"{name} >= {low:g}"
    elif high_inclusive:
        ok = low <= number <= high
        expected = f"{name} in [{low:g}, {high:g}]"
    else:
        ok = low <= number < high
        expected = f"{name} in [{low:g}, {high:g})"
    if not ok:
        raise ValueError(f"{optimizer}: expected {expected}, got {value!r}")
    return number


def _check_keys(prefix, what, expected, mapping):
    """Raise KeyError (starting with ``prefix``) unless ``mapping`` has exactly ``expected`` keys."""
    missing = [k for k in expected if k not in mapping]
    unexpected = [k for k in mapping if k not in expected]
    if missing or unexpected:
        raise KeyError(f"{prefix} missing {what} {missing}, unexpected {what} {unexpected}")


class Optimizer:
    """Base class: holds the parameters, per-parameter state and hyperparameters.

    Subclasses set ``HYPERPARAMETERS`` (the names saved in :meth:`state_dict`) and
    ``STATE_KEYS`` (the entries of one parameter's state), implement
    ``_check_hyperparameters(**values) -> dict`` (validate and normalize) and ``step()``.

    Args:
        params (iterable of Parameter): e.g. ``model.parameters()`` (a list or a generator).
        hyperparameters (dict): the subclass's hyperparameters, validated here.

    Attributes:
        params (list of Parameter): the parameters, in the order given; their index in this list
            keys the state.
        state (dict[int, dict]): per-parameter state, filled on a parameter's first step.

    Raises:
        TypeError: ``params`` is not iterable or holds something that is not a Parameter.
        ValueError: ``params`` is empty or holds the same Parameter twice; a hyperparameter
            is out of range (see the subclass).
    """

    HYPERPARAMETERS = ()
    STATE_KEYS = ()

    def __init__(self, params, hyperparameters):
        name = type(self).__name__
        if isinstance(params, Parameter):
            raise TypeError(
                f"{name}: expected an iterable of Parameters (e.g. model.parameters()), "
                "got a single Parameter"
            )
        try:
            params = list(params)
        except TypeError:
            raise TypeError(
                f"{name}: expected an iterable of Parameters, got {type(params).__name__}"
            ) from None
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        seen = set()
        for index, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{name}: expected every element of params to be a Parameter, "
                    f"got {type(p).__name__} at index {index}"
                )
            if id(p) in seen:
                raise ValueError(f"{name}: the same Parameter appears twice (index {index})")
            seen.add(id(p))
        self.params = params
        self.state = {}
        self._scratch_buffers = {}
        for key, value in self._check_hyperparameters(**hyperparameters).items():
            setattr(self, key, value)

    # ----------------------------------------------------------------- hyperparameters
    @property
    def lr(self):
        """The learning rate (a Python float >= 0); may be changed between steps."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check_number(type(self).__name__, "lr", value)

    def _check_hyperparameters(self, **values):
        raise NotImplementedError(f"{type(self).__name__} does not implement _check_hyperparameters")

    def hyperparameters(self):
        """The current hyperparameters as a dict ``{name: value}``."""
        return {key: getattr(self, key) for key in self.HYPERPARAMETERS}

    # ----------------------------------------------------------------- stepping
    def step(self):
        """Update every parameter in place from its ``grad``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step")

    def zero_grad(self):
        """Set every parameter's gradient to zero, in place (layers accumulate with ``+=``)."""
        for p in self.params:
            if p.grad is not None:
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
        """Copies of the hyperparameters and the per-parameter state.

        Returns:
            dict: ``{"optimizer": class name, "hyperparameters": {name: value},
            "state": {param_index: {key: np.ndarray or int}}}``. Arrays are copies, so later
            steps do not change a saved dict. Parameters that have not stepped yet have no
            entry, as in PyTorch.
        """
        state = {}
        for index, entry in self.state.items():
            state[index] = {
                key: value.copy() if isinstance(value, np.ndarray) else value
                for key, value in entry.items()
            }
        return {
            "optimizer": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "state": state,
        }

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state saved by :meth:`state_dict`.

        The arrays are copied (in each parameter's dtype); integer-like keys given as strings
        (``"0"``) and scalars given as 0-d arrays are accepted, so a dict flattened to ``.npz``
        or JSON loads too. Nothing is modified unless every check passes.

        Args:
            state_dict (dict): as returned by :meth:`state_dict` of the same optimizer class
                over parameters of the same shapes, in the same order.
        Raises:
            KeyError: a missing top-level entry, missing or unexpected hyperparameters or
                per-parameter state keys.
            ValueError: another optimizer's state, a parameter index out of range, or an array
                whose shape differs from its parameter's; invalid hyperparameters.
        """
        name = type(self).__name__
        for key in ("optimizer", "hyperparameters", "state"):
            if key not in state_dict:
                raise KeyError(f"{name}.load_state_dict: missing entry {key!r}")
        if str(state_dict["optimizer"]) != name:
            raise ValueError(
                f"{name}.load_state_dict: expected the state of a {name}, "
                f"got the state of a {state_dict['optimizer']}"
            )
        saved = dict(state_dict["hyperparameters"])
        _check_keys(f"{name}.load_state_dict:", "hyperparameters", self.HYPERPARAMETERS, saved)
        hyperparameters = self._check_hyperparameters(**saved)

        new_state = {}
        for raw_index, entry in state_dict["state"].items():
            index = int(raw_index)
            if not 0 <= index < len(self.params):
                raise ValueError(
                    f"{name}.load_state_dict: state for parameter {index}, but the optimizer "
                    f"has {len(self.params)} parameters"
                )
            new_state[index] = self._load_param_state(index, entry)

        for key, value in hyperparameters.items():
            setattr(self, key, value)
        self.state = new_state

    def _load_param_state(self, index, entry):
        """Validate and copy one parameter's saved state."""
        name = type(self).__name__
        p = self.params[index]
        _check_keys(f"{name}.load_state_dict: parameter {index}:", "state", self.STATE_KEYS, entry)
        loaded = {}
        for key in self.STATE_KEYS:
            value = entry[key]
            if key == "step":
                loaded[key] = int(value)
                continue
            array = np.asarray(value)
            if array.shape != p.data.shape:
                raise ValueError(
                    f"{name}.load_state_dict: parameter {index}: expected {key!r} of shape "
                    f"{p.data.shape}, got {array.shape}"
                )
            loaded[key] = np.array(array, dtype=p.data.dtype, copy=True, order="C")
        return loaded

    def __repr__(self):
        values = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {values})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and L2
    weight decay, with PyTorch's exact update rule (``torch.optim.SGD``).

    For each parameter ``p`` with gradient ``g``::

        d_p = g + weight_decay * p
        if momentum != 0:
            buf = d_p                                        on the first step
            buf = momentum * buf + (1 - dampening) * d_p     afterwards
            d_p = d_p + momentum * buf   if nesterov   else   buf
        p -= lr * d_p

    This is the momentum of Polyak (1964) and the Nesterov variant of Sutskever, Martens, Dahl
    & Hinton, "On the importance of initialization and momentum in deep learning" (ICML 2013),
    in PyTorch's formulation: the learning rate multiplies the velocity rather than being folded
    into it (so changing ``lr`` mid-run rescales the whole step), and the buffer is initialized
    to the first gradient rather than to zero (no dampening on the first step).

    Args:
        params (iterable of Parameter): the parameters to optimize.
        lr (float): learning rate, ``>= 0``.
        momentum (float): momentum factor, ``>= 0`` (default 0: plain SGD, no buffer).
        dampening (float): dampening of the gradient added to the buffer (default 0).
        weight_decay (float): L2 penalty coefficient, ``>= 0`` (default 0).
        nesterov (bool): use Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).

    State (per parameter index): ``"momentum_buffer"``, an array like ``p.data`` (only when
    ``momentum != 0``).

    Raises:
        ValueError: a negative ``lr``, ``momentum`` or ``weight_decay``; ``nesterov`` without
            momentum or with dampening; an empty ``params``.
        TypeError: a non-numeric hyperparameter, or ``params`` holding a non-Parameter.
    """

    HYPERPARAMETERS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    STATE_KEYS = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                 nesterov=nesterov),
        )

    def _check_hyperparameters(self, lr, momentum, dampening, weight_decay, nesterov):
        name = type(self).__name__
        values = dict(
            lr=_check_number(name, "lr", lr),
            momentum=_check_number(name, "momentum", momentum),
            dampening=_check_number(name, "dampening", dampening, low=-math.inf),
            weight_decay=_check_number(name, "weight_decay", weight_decay),
        )
        if isinstance(nesterov, np.ndarray) and nesterov.shape == ():
            nesterov = nesterov.item()  # a 0-d array, e.g. read back from an .npz file
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"{name}: expected nesterov to be a bool, got {nesterov!r}")
        values["nesterov"] = bool(nesterov)
        if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
            raise ValueError(
                f"{name}: nesterov=True requires momentum > 0 and dampening == 0, got "
                f"momentum={momentum!r}, dampening={dampening!r}"
            )
        return values

    def _load_param_state(self, index, entry):
        # With momentum == 0 SGD keeps no state; accept the empty entry PyTorch would save.
        if not entry:
            return {}
        return super()._load_param_state(index, entry)

    def step(self):
        """Apply one SGD update to every parameter that has a gradient, in place."""
        lr = float(self.lr)
        momentum = float(self.momentum)
        dampening = float(self.dampening)
        weight_decay = float(self.weight_decay)
        for index, p in enumerate(self.params):
            grad = self._gradient(p, index)
            if grad is None:
                continue
            work = self._scratch(p, 0)
            if weight_decay != 0:
                np.multiply(p.data, weight_decay, out=work)
                np.add(grad, work, out=work)  # grad + wd * p, as PyTorch's grad.add(p, alpha=wd)
                d_p = work
            else:
                d_p = grad

            if momentum != 0:
                state = self.state.setdefault(index, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    state["momentum_buffer"] = np.array(d_p, dtype=p.data.dtype, copy=True)
                    buf = state["momentum_buffer"]
                else:
                    buf *= momentum
                    if dampening == 0:
                        buf += d_p
                    else:  # nesterov is off here, so d_p is not needed afterwards
                        np.multiply(d_p, 1.0 - dampening, out=work)
                        buf += work
                if self.nesterov:
                    extra = self._scratch(p, 1)
                    np.multiply(buf, momentum, out=extra)
                    np.add(d_p, extra, out=work)  # d_p + momentum * buf
                    d_p = work
                else:
                    d_p = buf

            np.multiply(d_p, lr, out=work)
            p.data -= work


class Adam(Optimizer):
    """Adam with L2 weight decay (not AdamW), with PyTorch's exact update rule
    (``torch.optim.Adam``, ``amsgrad=False``).

    For each parameter ``p`` with gradient ``g``, at step ``t = 1, 2, ...``::

        g    = g + weight_decay * p
        m    = beta1 * m + (1 - beta1) * g
        v    = beta2 * v + (1 - beta2) * g**2
        step_size = lr / (1 - beta1**t)
        denom     = sqrt(v) / sqrt(1 - beta2**t) + eps
        p   -= step_size * m / denom

    This is Algorithm 1 of Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015)
    with the bias corrections folded into the step size as in the paper's section 2, except that
    ``eps`` is added to ``sqrt(v_hat)`` (PyTorch's convention) and weight decay is added to the
    gradient (L2 regularization, coupled with the adaptive scaling; see Loshchilov & Hutter,
    2019, for the decoupled AdamW). PyTorch updates ``m`` with ``lerp`` (an equal formula, so
    results agree to rounding).

    Args:
        params (iterable of Parameter): the parameters to optimize.
        lr (float): learning rate, ``>= 0`` (default 1e-3).
        betas (tuple of float): ``(beta1, beta2)``, each in ``[0, 1)`` (default (0.9, 0.999)).
        eps (float): added to the denominator, ``>= 0`` (default 1e-8).
        weight_decay (float): L2 penalty coefficient, ``>= 0`` (default 0).

    State (per parameter index): ``"step"`` (int, the number of updates of this parameter),
    ``"exp_avg"`` (``m``) and ``"exp_avg_sq"`` (``v``), arrays like ``p.data``.

    Raises:
        ValueError: ``lr``, ``eps`` or ``weight_decay`` negative; a beta outside ``[0, 1)``;
            ``betas`` not a pair; an empty ``params``.
        TypeError: a non-numeric hyperparameter, or ``params`` holding a non-Parameter.
    """

    HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")
    STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_hyperparameters(self, lr, betas, eps, weight_decay):
        name = type(self).__name__
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected betas to be a pair (beta1, beta2), got {betas!r}") from None
        return dict(
            lr=_check_number(name, "lr", lr),
            betas=(
                _check_number(name, "betas[0]", beta1, high=1.0, high_inclusive=False),
                _check_number(name, "betas[1]", beta2, high=1.0, high_inclusive=False),
            ),
            eps=_check_number(name, "eps", eps),
            weight_decay=_check_number(name, "weight_decay", weight_decay),
        )

    def step(self):
        """Apply one Adam update to every parameter that has a gradient, in place."""
        lr = float(self.lr)
        beta1, beta2 = (float(b) for b in self.betas)
        eps = float(self.eps)
        weight_decay = float(self.weight_decay)
        for index, p in enumerate(self.params):
            grad = self._gradient(p, index)
            if grad is None:
                continue
            state = self.state.get(index)
            if state is None:
                state = {
                    "step": 0,
                    "exp_avg": np.zeros_like(p.data),
                    "exp_avg_sq": np.zeros_like(p.data),
                }
                self.state[index] = state
            state["step"] += 1
            step = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            work = self._scratch(p, 0)
            scratch = self._scratch(p, 1)

            if weight_decay != 0:
                np.multiply(p.data, weight_decay, out=work)
                np.add(grad, work, out=work)
                grad = work

            exp_avg *= beta1  # m = beta1 * m + (1 - beta1) * g
            np.multiply(grad, 1.0 - beta1, out=scratch)
            exp_avg += scratch

            exp_avg_sq *= beta2  # v = beta2 * v + (1 - beta2) * g * g
            np.multiply(grad, 1.0 - beta2, out=scratch)
            scratch *= grad
            exp_avg_sq += scratch

            bias_correction1 = 1.0 - beta1**step
            bias_correction2 = 1.0 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = math.sqrt(bias_correction2)

            denom = scratch  # grad (possibly in work) is not needed any more
            np.sqrt(exp_avg_sq, out=denom)
            denom /= bias_correction2_sqrt
            denom += eps
            update = work
            np.divide(exp_avg, denom, out=update)
            update *= step_size
            p.data -= update
