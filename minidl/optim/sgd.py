"""Stochastic gradient descent with momentum, Nesterov momentum and weight decay."""
import math

import numpy as np

from .._backend import get_backend
from .._config import threads_for
from .._kernels import _optim as _optim_kernel
from .optimizer import Optimizer, check_number

__all__ = ["SGD"]

_FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


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
        params (iterable): the parameters to optimize, or parameter-group dicts (see
            :class:`~minidl.optim.Optimizer`).
        lr (float): learning rate, ``>= 0``.
        momentum (float): momentum factor, ``>= 0`` (default 0: plain SGD, no buffer).
        dampening (float): dampening of the gradient added to the buffer (default 0).
        weight_decay (float): L2 penalty coefficient, ``>= 0`` (default 0).
        nesterov (bool): use Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).

    Each parameter group holds these five settings; :mod:`minidl.optim.lr_scheduler` changes
    ``"lr"`` (and ``OneCycleLR`` ``"momentum"``) between steps.

    State (per parameter index): ``"momentum_buffer"``, an array like ``p.data`` (only when
    ``momentum != 0``).

    Raises:
        ValueError: a negative, NaN or infinite ``lr``, ``momentum`` or ``weight_decay``;
            ``nesterov`` without momentum or with dampening; an empty ``params``.
        TypeError: a non-numeric hyperparameter, or ``params`` holding a non-Parameter.

    Example:
        >>> opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        >>> model.backward(loss_fn.backward()); opt.step(); opt.zero_grad()
    """

    HYPERPARAMETERS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    STATE_KEYS = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                 nesterov=nesterov),
        )

    def _check_hyperparameters(self, where, lr, momentum, dampening, weight_decay, nesterov):
        values = dict(
            lr=check_number(where, "lr", lr),
            momentum=check_number(where, "momentum", momentum),
            dampening=check_number(where, "dampening", dampening, low=-math.inf),
            weight_decay=check_number(where, "weight_decay", weight_decay),
        )
        if isinstance(nesterov, np.ndarray) and nesterov.shape == ():
            nesterov = nesterov.item()  # a 0-d array, e.g. read back from an .npz file
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"{where}: expected nesterov to be a bool, got {nesterov!r}")
        values["nesterov"] = bool(nesterov)
        if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
            raise ValueError(
                f"{where}: nesterov=True requires momentum > 0 and dampening == 0, got "
                f"momentum={momentum!r}, dampening={dampening!r}"
            )
        return values

    def _load_param_state(self, index, entry):
        # With momentum == 0 SGD keeps no state; accept the empty entry PyTorch would save.
        if not entry:
            return {}
        return super()._load_param_state(index, entry)

    def step(self):
        """Apply one SGD update to every parameter that has a gradient, in place.

        float32/float64 parameters with C-contiguous data, gradient and buffer of their dtype
        are updated by one fused pass over memory (``minidl/_kernels/_optim.pyx``, the same
        operations in the same order); anything else, and everything under
        ``minidl.backend("reference")``, by :meth:`_update`, the readable NumPy version.
        """
        fused = get_backend() == "compiled"
        for settings, params in self._groups():
            for index, p, grad in params:
                if not (fused and self._fused_update(index, p, grad, settings)):
                    self._update(index, p, grad, settings)

    def _fused_update(self, index, p, grad, settings):
        """The update of :meth:`_update` by the fused kernel; False (nothing done) when the
        arrays do not suit it."""
        data = p.data
        if not (data.dtype in _FUSED_DTYPES and grad.dtype == data.dtype
                and data.flags.c_contiguous and grad.flags.c_contiguous
                and not np.may_share_memory(data, grad)):
            return False
        momentum = settings["momentum"]
        first = False
        if momentum != 0:
            state = self.state.setdefault(index, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = np.empty_like(data)
                first = True
            elif not (buf.dtype == data.dtype and buf.shape == data.shape
                      and buf.flags.c_contiguous and buf.flags.writeable
                      and not np.may_share_memory(buf, data)
                      and not np.may_share_memory(buf, grad)):
                return False
        else:
            buf = self._scratch(p, 0)  # not touched without momentum
        _optim_kernel.sgd_update(
            data.reshape(-1), grad.reshape(-1), buf.reshape(-1), settings["lr"], momentum,
            settings["dampening"], settings["weight_decay"], settings["nesterov"], first,
            threads_for(data.size))
        if first:
            state["momentum_buffer"] = buf
        return True

    def _update(self, index, p, grad, settings):
        """One parameter's update, in NumPy (the readable version of the fused kernel)."""
        lr = settings["lr"]
        momentum = settings["momentum"]
        dampening = settings["dampening"]
        weight_decay = settings["weight_decay"]
        work = self._scratch(p, 0)
        if weight_decay != 0:
            np.multiply(p.data, weight_decay, out=work)
            np.add(grad, work, out=work)  # grad + wd * p: PyTorch's grad.add(p, alpha=wd)
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
            if settings["nesterov"]:
                extra = self._scratch(p, 1)
                np.multiply(buf, momentum, out=extra)
                np.add(d_p, extra, out=work)  # d_p + momentum * buf
                d_p = work
            else:
                d_p = buf

        np.multiply(d_p, lr, out=work)
        p.data -= work
