"""Learning-rate schedules with PyTorch's formulas and interface (``torch.optim.lr_scheduler``).

A scheduler changes ``group["lr"]`` of every parameter group of an optimizer each time its
:meth:`~LRScheduler.step` is called: once per epoch or once per batch, as you choose (OneCycleLR
is meant per batch). Call it *after* ``optimizer.step()``::

    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
    for epoch in range(90):
        train_one_epoch(model, opt)          # many opt.step() calls at lr = sched.get_last_lr()
        sched.step()

Constructing a scheduler sets the learning rate for epoch 0 (``last_epoch`` becomes 0) and
records each group's starting value as ``group["initial_lr"]`` (the ``base_lrs``). Like PyTorch's,
StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR and LinearLR are *chainable*: each step
updates the current ``group["lr"]`` by a factor, so two of them on one optimizer combine, and an
``lr`` you change by hand is carried on; LambdaLR and OneCycleLR compute the value from
``base_lrs`` alone. The closed forms are given in each class's docstring.

Checkpoints: save ``optimizer.state_dict()`` and ``scheduler.state_dict()``; to resume, build the
optimizer and the scheduler as before, then load the optimizer's state (it holds the current
learning rates) and the scheduler's (it holds ``last_epoch`` and its settings).
"""
import math
from bisect import bisect_right
from collections.abc import Mapping

from .optimizer import Optimizer, check_integer, check_keys, check_number

__all__ = [
    "LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
    "LambdaLR", "OneCycleLR", "SequentialLR",
]


def _positive_int(where, name, value):
    return check_integer(where, name, value, low=1)


def _check_optimizer(where, optimizer):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{where}: expected a minidl optimizer (e.g. optim.SGD), got {type(optimizer).__name__}"
        )


def _per_group(where, name, value, optimizer, low=0.0, high=None):
    """A number, or a list with one number per parameter group; returns the list."""
    count = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"{where}: expected {name} to be a number or a list of {count} numbers (one per "
                f"parameter group), got {len(value)} values"
            )
        return [check_number(where, f"{name}[{i}]", v, low=low, high=high)
                for i, v in enumerate(value)]
    return [check_number(where, name, value, low=low, high=high)] * count


class LRScheduler:
    """Base class of the schedulers (PyTorch's ``LRScheduler``).

    Subclasses implement :meth:`get_lr` (the learning rates for ``last_epoch``, from the current
    ``group["lr"]`` values or from :attr:`base_lrs`), optionally ``_closed_form_lr``, and list
    their settings in ``SETTINGS`` with a ``_check_settings(**values) -> dict`` that validates
    them (used by the constructor and by :meth:`load_state_dict`).

    Args:
        optimizer (Optimizer): the optimizer whose ``param_groups`` this scheduler changes.
        last_epoch (int): the index of the last epoch (or batch) done; ``-1`` (default) starts
            the schedule. Any other value resumes it and needs ``group["initial_lr"]`` in every
            group (restore the optimizer's state first).

    Attributes:
        last_epoch (int): how many times :meth:`step` has run since epoch 0.
        base_lrs (list of float): each group's ``initial_lr``.

    Raises:
        TypeError: ``optimizer`` is not a minidl Optimizer.
        ValueError: ``last_epoch < -1`` or not an integer; a setting out of range.
        KeyError: resuming (``last_epoch >= 0``) without ``initial_lr`` in the groups.
    """

    SETTINGS = ()

    def __init__(self, optimizer, last_epoch=-1):
        where = type(self).__name__
        _check_optimizer(where, optimizer)
        self.optimizer = optimizer
        last_epoch = check_integer(where, "last_epoch", last_epoch, low=-1)
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"{where}: resuming with last_epoch={last_epoch} needs "
                        f"param_groups[{i}]['initial_lr']; load the optimizer's state_dict "
                        "first, or start with last_epoch=-1"
                    )
        self.base_lrs = [float(group["initial_lr"]) for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self):
        """Set the learning rates for the first epoch (run by the constructor)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def _set_settings(self, **values):
        self.__dict__.update(self._check_settings(**values))

    def _check_settings(self, **values):
        return {}

    # ----------------------------------------------------------------- stepping
    def step(self):
        """Advance the schedule by one epoch (or batch) and set every group's ``lr``."""
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch=None):
        """Set the groups' lr for the next epoch, or (``epoch`` given) restart at ``epoch``."""
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:  # used by SequentialLR when a scheduler takes over
            self.last_epoch = epoch
            closed_form = getattr(self, "_closed_form_lr", None)
            values = closed_form() if closed_form is not None else self.get_lr()
        # Python floats (a NumPy scalar would change float32 updates); a finite value is
        # required here, the optimizer's step checks that it is >= 0 when it is used (OneCycleLR
        # with linear annealing computes a last, unused, value below zero, as PyTorch's does).
        where = type(self).__name__
        values = [
            check_number(where, f"the learning rate of param_groups[{i}] at epoch "
                                f"{self.last_epoch}", value, low=-math.inf)
            for i, value in enumerate(values)
        ]
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = values

    def get_lr(self):
        """The learning rates for ``last_epoch``, one per parameter group (used by :meth:`step`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_lr")

    def get_last_lr(self):
        """The learning rates set by the last :meth:`step` (a list, one per parameter group)."""
        return list(self._last_lr)

    def _current_lrs(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self):
        """The schedule's position and settings, as a dict (the optimizer is not included).

        Returns:
            dict: ``"last_epoch"``, ``"base_lrs"``, ``"_last_lr"``, ``"_step_count"`` (PyTorch's
            names) and the scheduler's settings (e.g. ``"step_size"``, ``"gamma"``).
        """
        state = {
            "last_epoch": self.last_epoch,
            "base_lrs": list(self.base_lrs),
            "_last_lr": list(self._last_lr),
            "_step_count": self._step_count,
        }
        for key in self.SETTINGS:
            value = getattr(self, key)
            state[key] = list(value) if isinstance(value, list) else value
        return state

    def load_state_dict(self, state_dict):
        """Restore a state saved by :meth:`state_dict`; the schedule then continues identically.

        Load the optimizer's state too (it holds the current learning rates). Nothing is
        modified unless every check passes.

        Raises:
            TypeError: ``state_dict`` is not a dict.
            KeyError: missing or unexpected entries.
            ValueError: an entry out of range, or lists whose length is not the number of
                parameter groups.
        """
        self._apply_state(self._checked_state(state_dict))

    def _checked_state(self, state_dict):
        """Validate a saved state; return the attributes to set."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{where}: expected a dict, got {type(state_dict).__name__}")
        expected = ("last_epoch", "base_lrs", "_last_lr", "_step_count") + self.SETTINGS
        check_keys(f"{where}:", "entries", expected, state_dict)
        updates = self._check_settings(**{k: state_dict[k] for k in self.SETTINGS})
        count = len(self.optimizer.param_groups)
        for key in ("base_lrs", "_last_lr"):
            values = list(state_dict[key])
            if len(values) != count:
                raise ValueError(
                    f"{where}: expected {key!r} to hold {count} values (one per parameter group), "
                    f"got {len(values)}"
                )
            low = 0.0 if key == "base_lrs" else -math.inf
            updates[key] = [check_number(where, f"{key}[{i}]", v, low=low)
                            for i, v in enumerate(values)]
        updates["last_epoch"] = check_integer(where, "last_epoch", state_dict["last_epoch"], low=-1)
        updates["_step_count"] = check_integer(where, "_step_count", state_dict["_step_count"],
                                               low=0)
        return updates

    def _apply_state(self, updates):
        self.__dict__.update(updates)

    def _undo_initial_step(self):
        """Step back to before the constructor's first step (SequentialLR takes over)."""
        self.last_epoch -= 1


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    ``lr(epoch) = initial_lr * gamma ** (epoch // step_size)`` when nothing else changes it
    (PyTorch's ``StepLR``; applied as a factor on the current lr, so it is chainable).

    Args:
        optimizer (Optimizer): the optimizer.
        step_size (int): epochs between decays, ``>= 1``.
        gamma (float): the decay factor, ``>= 0`` (default 0.1).
        last_epoch (int): see :class:`LRScheduler` (default -1).
    """

    SETTINGS = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self._set_settings(step_size=step_size, gamma=gamma)
        super().__init__(optimizer, last_epoch)

    def _check_settings(self, step_size, gamma):
        where = type(self).__name__
        return dict(step_size=_positive_int(where, "step_size", step_size),
                    gamma=check_number(where, "gamma", gamma))

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` at each milestone epoch.

    ``lr(epoch) = initial_lr * gamma ** (number of milestones <= epoch)`` when nothing else
    changes it (PyTorch's ``MultiStepLR``; a milestone listed twice applies twice).

    Args:
        optimizer (Optimizer): the optimizer.
        milestones (iterable of int): epochs ``>= 0`` at which to decay (any order).
        gamma (float): the decay factor, ``>= 0`` (default 0.1).
        last_epoch (int): see :class:`LRScheduler` (default -1).
    """

    SETTINGS = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self._set_settings(milestones=milestones, gamma=gamma)
        super().__init__(optimizer, last_epoch)

    def _check_settings(self, milestones, gamma):
        where = type(self).__name__
        try:
            milestones = list(milestones)
        except TypeError:
            raise TypeError(
                f"{where}: expected milestones to be a list of epochs, got {milestones!r}"
            ) from None
        milestones = sorted(check_integer(where, f"milestones[{i}]", m, low=0)
                            for i, m in enumerate(milestones))
        return dict(milestones=milestones, gamma=check_number(where, "gamma", gamma))

    def get_lr(self):
        count = self.milestones.count(self.last_epoch)
        if count == 0:
            return self._current_lrs()
        return [lr * self.gamma**count for lr in self._current_lrs()]

    def _closed_form_lr(self):
        passed = bisect_right(self.milestones, self.last_epoch)
        return [base * self.gamma**passed for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every epoch: ``lr(t) = initial_lr * gamma**t``.

    Args:
        optimizer (Optimizer): the optimizer.
        gamma (float): the decay factor, ``>= 0``.
        last_epoch (int): see :class:`LRScheduler` (default -1).
    """

    SETTINGS = ("gamma",)

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self._set_settings(gamma=gamma)
        super().__init__(optimizer, last_epoch)

    def _check_settings(self, gamma):
        return dict(gamma=check_number(type(self).__name__, "gamma", gamma))

    def get_lr(self):
        if self._is_initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self):
        return [base * self.gamma**self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from ``initial_lr`` down to ``eta_min`` over ``T_max`` epochs.

    ``lr(t) = eta_min + (initial_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (Loshchilov &
    Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017, eq. 5, without
    the restarts). As in PyTorch, each step applies this as a ratio to the current lr, so the
    curve continues (back up) after ``T_max`` and other changes to the lr are carried on.

    Args:
        optimizer (Optimizer): the optimizer.
        T_max (int): epochs from the start to the minimum, ``>= 1``.
        eta_min (float): the minimum learning rate, ``>= 0`` (default 0).
        last_epoch (int): see :class:`LRScheduler` (default -1).
    """

    SETTINGS = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self._set_settings(T_max=T_max, eta_min=eta_min)
        super().__init__(optimizer, last_epoch)

    def _check_settings(self, T_max, eta_min):
        where = type(self).__name__
        return dict(T_max=_positive_int(where, "T_max", T_max),
                    eta_min=check_number(where, "eta_min", eta_min))

    def get_lr(self):
        t, t_max, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:  # the first step after resuming: the closed form
            return self._closed_form_lr()
        if (t - 1 - t_max) % (2 * t_max) == 0:  # leaving the minimum: the ratio below is 0/0
            return [lr + (base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
                    for lr, base in zip(self._current_lrs(), self.base_lrs)]
        ratio = (1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max))
        return [ratio * (lr - eta_min) + eta_min for lr in self._current_lrs()]

    def _closed_form_lr(self):
        cosine = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * cosine for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale the learning rate by a factor going linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` epochs; the usual linear warm-up.

    ``lr(t) = initial_lr * (start_factor + (end_factor - start_factor) * min(t, total_iters) /
    total_iters)`` when nothing else changes it (PyTorch's ``LinearLR``, chainable).

    Args:
        optimizer (Optimizer): the optimizer.
        start_factor (float): the factor at epoch 0, in ``(0, 1]`` (default 1/3).
        end_factor (float): the factor from ``total_iters`` on, in ``[0, 1]`` (default 1).
        total_iters (int): epochs of the ramp, ``>= 1`` (default 5).
        last_epoch (int): see :class:`LRScheduler` (default -1).

    Example:
        >>> warmup = LinearLR(opt, start_factor=0.01, total_iters=500)   # per batch
    """

    SETTINGS = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        self._set_settings(start_factor=start_factor, end_factor=end_factor,
                           total_iters=total_iters)
        super().__init__(optimizer, last_epoch)

    def _check_settings(self, start_factor, end_factor, total_iters):
        where = type(self).__name__
        start = check_number(where, "start_factor", start_factor, high=1.0)
        if start == 0:
            raise ValueError(f"{where}: expected start_factor in (0, 1], got {start_factor!r}")
        return dict(start_factor=start,
                    end_factor=check_number(where, "end_factor", end_factor, high=1.0),
                    total_iters=_positive_int(where, "total_iters", total_iters))

    def get_lr(self):
        start, end, total = self.start_factor, self.end_factor, self.total_iters
        if self.last_epoch == 0:
            return [lr * start for lr in self._current_lrs()]
        if self._is_initial or self.last_epoch > total:
            return self._current_lrs()
        factor = 1.0 + (end - start) / (total * start + (self.last_epoch - 1) * (end - start))
        return [lr * factor for lr in self._current_lrs()]

    def _closed_form_lr(self):
        start, end, total = self.start_factor, self.end_factor, self.total_iters
        factor = start + (end - start) * min(total, self.last_epoch) / total
        return [base * factor for base in self.base_lrs]


class LambdaLR(LRScheduler):
    """``lr(epoch) = initial_lr * lr_lambda(epoch)``, for a function of your own.

    Args:
        optimizer (Optimizer): the optimizer.
        lr_lambda (callable or list of callables): ``epoch -> factor``, one for all parameter
            groups or one per group.
        last_epoch (int): see :class:`LRScheduler` (default -1).

    The functions are not part of :meth:`state_dict`: pass the same ones when you rebuild the
    scheduler to resume.

    Raises:
        TypeError: ``lr_lambda`` is not callable (or a list of callables).
        ValueError: a list whose length is not the number of groups; a factor that makes a
            negative or non-finite learning rate (when :meth:`step` computes it).
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        where = type(self).__name__
        _check_optimizer(where, optimizer)
        count = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != count:
                raise ValueError(
                    f"{where}: expected {count} lr_lambdas (one per parameter group), got "
                    f"{len(lr_lambda)}"
                )
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * count
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"{where}: expected lr_lambda to be callable, got "
                                f"{type(fn).__name__} (for param_groups[{i}])")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]


class OneCycleLR(LRScheduler):
    """The 1cycle policy: warm up from ``max_lr / div_factor`` to ``max_lr``, then anneal to
    ``initial_lr / final_div_factor``, stepping once per batch (PyTorch's ``OneCycleLR``).

    Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
    Learning Rates" (2018). Two phases by default (up for ``pct_start`` of the steps, then down,
    fastai's variant); ``three_phase=True`` gives the paper's: up, back down to ``initial_lr``
    symmetrically, then down to the minimum. Within a phase from ``a`` to ``b``, with ``pct``
    going from 0 to 1, ``anneal_strategy="cos"`` gives ``b + (a - b) * (1 + cos(pi * pct)) / 2``
    and ``"linear"`` ``a + (b - a) * pct``.

    With ``cycle_momentum`` (default), the momentum goes the other way, from ``max_momentum``
    down to ``base_momentum`` while the lr rises: SGD's ``momentum`` or Adam's ``beta1`` (as in
    PyTorch, an SGD built with ``momentum=0`` gets momentum this way).

    The schedule's values live in the parameter groups, as in PyTorch: ``initial_lr``,
    ``max_lr``, ``min_lr`` (and ``max_momentum``, ``base_momentum``).

    Args:
        optimizer (Optimizer): the optimizer.
        max_lr (float or list): the peak learning rate (per group).
        total_steps (int): steps in the cycle; or give ``epochs`` and ``steps_per_epoch``.
        epochs, steps_per_epoch (int): ``total_steps = epochs * steps_per_epoch``.
        pct_start (float): the fraction of the steps spent warming up, in [0, 1] (default 0.3).
        anneal_strategy (str): ``"cos"`` (default) or ``"linear"``.
        cycle_momentum (bool): cycle the momentum inversely to the lr (default True).
        base_momentum, max_momentum (float or list): the momentum range (defaults 0.85, 0.95).
        div_factor (float): ``initial_lr = max_lr / div_factor`` (default 25).
        final_div_factor (float): ``min_lr = initial_lr / final_div_factor`` (default 1e4).
        three_phase (bool): the paper's three phases (default False).
        last_epoch (int): the number of batches done, to resume (default -1).

    Raises:
        ValueError: bad settings; :meth:`step` called more than ``total_steps`` times; a phase
            with no steps (e.g. ``pct_start * total_steps == 1``) when the schedule reaches it.
    """

    SETTINGS = ("total_steps", "pct_start", "anneal_strategy", "cycle_momentum", "three_phase")

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False,
                 last_epoch=-1):
        where = type(self).__name__
        _check_optimizer(where, optimizer)
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError(f"{where}: give total_steps, or epochs and steps_per_epoch")
            total_steps = (_positive_int(where, "epochs", epochs)
                           * _positive_int(where, "steps_per_epoch", steps_per_epoch))
        self._set_settings(total_steps=total_steps, pct_start=pct_start,
                           anneal_strategy=anneal_strategy, cycle_momentum=cycle_momentum,
                           three_phase=three_phase)
        div_factor = check_number(where, "div_factor", div_factor)
        final_div_factor = check_number(where, "final_div_factor", final_div_factor)
        if div_factor == 0 or final_div_factor == 0:
            raise ValueError(f"{where}: expected div_factor and final_div_factor > 0, got "
                             f"{div_factor!r} and {final_div_factor!r}")
        max_lrs = _per_group(where, "max_lr", max_lr, optimizer)
        if last_epoch == -1:
            for group, peak in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor
        if self.cycle_momentum:
            names = optimizer.HYPERPARAMETERS
            if "momentum" not in names and "betas" not in names:
                raise ValueError(f"{where}: cycle_momentum needs an optimizer with momentum or "
                                 f"betas, got {type(optimizer).__name__}")
            max_momenta = _per_group(where, "max_momentum", max_momentum, optimizer)
            base_momenta = _per_group(where, "base_momentum", base_momentum, optimizer)
            if last_epoch == -1:
                for group, high, low in zip(optimizer.param_groups, max_momenta, base_momenta):
                    self._set_momentum(group, high)
                    group["max_momentum"] = high
                    group["base_momentum"] = low
        super().__init__(optimizer, last_epoch)

    def _check_settings(self, total_steps, pct_start, anneal_strategy, cycle_momentum,
                        three_phase):
        where = type(self).__name__
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{where}: expected anneal_strategy 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        for name, flag in (("cycle_momentum", cycle_momentum), ("three_phase", three_phase)):
            if not isinstance(flag, bool):
                raise TypeError(f"{where}: expected {name} to be a bool, got {flag!r}")
        return dict(total_steps=_positive_int(where, "total_steps", total_steps),
                    pct_start=check_number(where, "pct_start", pct_start, high=1.0),
                    anneal_strategy=str(anneal_strategy), cycle_momentum=cycle_momentum,
                    three_phase=three_phase)

    def _set_momentum(self, group, value):
        if "betas" in group:
            group["betas"] = (value, group["betas"][1])
        else:
            group["momentum"] = value

    def _phases(self):
        """``(end_step, start key, end key, start momentum key, end momentum key)`` per phase."""
        warmup_end = self.pct_start * self.total_steps - 1
        last = self.total_steps - 1
        if self.three_phase:
            return [(warmup_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                    (2 * warmup_end, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                    (last, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        return [(warmup_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (last, "max_lr", "min_lr", "base_momentum", "max_momentum")]

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        where = type(self).__name__
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"{where}: stepped {step} times, but total_steps is {self.total_steps}")
        phases = self._phases()
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, (end_step, lr_from, lr_to, momentum_from, momentum_to) in enumerate(phases):
                if step <= end_step or i == len(phases) - 1:
                    if end_step == start_step:
                        raise ValueError(
                            f"{where}: phase {i + 1} has no steps (pct_start={self.pct_start}, "
                            f"total_steps={self.total_steps}); change pct_start or total_steps"
                        )
                    pct = (step - start_step) / (end_step - start_step)
                    lrs.append(self._anneal(group[lr_from], group[lr_to], pct))
                    if self.cycle_momentum:
                        momentum = self._anneal(group[momentum_from], group[momentum_to], pct)
                        self._set_momentum(group, momentum)
                    break
                start_step = end_step
        return lrs


class SequentialLR(LRScheduler):
    """Run schedulers one after another, switching at the milestone epochs (e.g. a warm-up,
    then a decay), like PyTorch's ``SequentialLR``.

    At milestone ``milestones[i]`` the scheduler ``schedulers[i + 1]`` starts at its own epoch 0
    (from ``base_lrs``, with its closed form), and steps from there.

    Args:
        optimizer (Optimizer): the optimizer all the schedulers belong to.
        schedulers (list of LRScheduler): built on ``optimizer``, in order of use.
        milestones (list of int): ``len(schedulers) - 1`` increasing epochs.
        last_epoch (int): see :class:`LRScheduler` (default -1).

    Example:
        >>> warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
        >>> decay = CosineAnnealingLR(opt, T_max=95)
        >>> sched = SequentialLR(opt, [warmup, decay], milestones=[5])

    Raises:
        TypeError: a scheduler that is not an LRScheduler.
        ValueError: no schedulers; a scheduler on another optimizer; the wrong number of
            milestones, or milestones that are not increasing.
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        where = type(self).__name__
        _check_optimizer(where, optimizer)
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError(f"{where}: expected at least one scheduler, got none")
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(f"{where}: schedulers[{i}] is a {type(scheduler).__name__}, not an "
                                "LRScheduler")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"{where}: schedulers[{i}] ({type(scheduler).__name__}) belongs "
                                 "to another optimizer")
        milestones = [check_integer(where, f"milestones[{i}]", m, low=0)
                      for i, m in enumerate(milestones)]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"{where}: expected {len(schedulers) - 1} milestones for "
                             f"{len(schedulers)} schedulers, got {len(milestones)}")
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"{where}: expected increasing milestones, got {milestones}")
        self.optimizer = optimizer
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = check_integer(where, "last_epoch", last_epoch, low=-1) + 1
        for group in optimizer.param_groups:  # undo what the schedulers' constructors did
            group["lr"] = group["initial_lr"]
        for scheduler in schedulers:
            scheduler._undo_initial_step()
        first = schedulers[bisect_right(milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def _undo_initial_step(self):
        for scheduler in self._schedulers:
            scheduler._undo_initial_step()

    def step(self):
        """Advance by one epoch: step the scheduler in charge, or start the next one."""
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self):
        """``"last_epoch"``, ``"_milestones"``, ``"_last_lr"``, ``"_schedulers"`` (their states)."""
        return {
            "last_epoch": self.last_epoch,
            "_milestones": list(self._milestones),
            "_last_lr": list(self._last_lr),
            "_schedulers": [s.state_dict() for s in self._schedulers],
        }

    def _checked_state(self, state_dict):
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{where}: expected a dict, got {type(state_dict).__name__}")
        check_keys(f"{where}:", "entries", ("last_epoch", "_milestones", "_last_lr", "_schedulers"),
                   state_dict)
        states = list(state_dict["_schedulers"])
        if len(states) != len(self._schedulers):
            raise ValueError(f"{where}: expected the states of {len(self._schedulers)} schedulers, "
                             f"got {len(states)}")
        milestones = [check_integer(where, "_milestones", m, low=0)
                      for m in state_dict["_milestones"]]
        if milestones != self._milestones:
            raise ValueError(f"{where}: expected milestones {self._milestones}, got {milestones}")
        return {
            "last_epoch": check_integer(where, "last_epoch", state_dict["last_epoch"], low=0),
            "_last_lr": [check_number(where, "_last_lr", v, low=-math.inf)
                         for v in state_dict["_last_lr"]],
            "_schedulers": [s._checked_state(state) for s, state in zip(self._schedulers, states)],
        }

    def _apply_state(self, updates):
        for scheduler, scheduler_updates in zip(self._schedulers, updates["_schedulers"]):
            scheduler._apply_state(scheduler_updates)
        self.last_epoch = updates["last_epoch"]
        self._last_lr = updates["_last_lr"]
