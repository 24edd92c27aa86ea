"""Adam with (coupled) L2 weight decay."""
import math

import numpy as np

from .optimizer import Optimizer, check_number

__all__ = ["Adam"]


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
        params (iterable): the parameters to optimize, or parameter-group dicts (see
            :class:`~minidl.optim.Optimizer`).
        lr (float): learning rate, ``>= 0`` (default 1e-3).
        betas (tuple of float): ``(beta1, beta2)``, each in ``[0, 1)`` (default (0.9, 0.999)).
        eps (float): added to the denominator, ``>= 0`` (default 1e-8).
        weight_decay (float): L2 penalty coefficient, ``>= 0`` (default 0).

    Each parameter group holds these four settings; :mod:`minidl.optim.lr_scheduler` changes
    ``"lr"`` (and ``OneCycleLR`` ``beta1``) between steps.

    State (per parameter index): ``"step"`` (int, the number of updates of this parameter),
    ``"exp_avg"`` (``m``) and ``"exp_avg_sq"`` (``v``), arrays like ``p.data``.

    Raises:
        ValueError: ``lr``, ``eps`` or ``weight_decay`` negative, NaN or infinite; a beta
            outside ``[0, 1)``; ``betas`` not a pair; an empty ``params``.
        TypeError: a non-numeric hyperparameter, or ``params`` holding a non-Parameter.
    """

    HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")
    STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_hyperparameters(self, where, lr, betas, eps, weight_decay):
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: expected betas to be a pair (beta1, beta2), got {betas!r}"
            ) from None
        return dict(
            lr=check_number(where, "lr", lr),
            betas=(
                check_number(where, "betas[0]", beta1, high=1.0, high_inclusive=False),
                check_number(where, "betas[1]", beta2, high=1.0, high_inclusive=False),
            ),
            eps=check_number(where, "eps", eps),
            weight_decay=check_number(where, "weight_decay", weight_decay),
        )

    def step(self):
        """Apply one Adam update to every parameter that has a gradient, in place."""
        for settings, params in self._groups():
            lr = settings["lr"]
            beta1, beta2 = settings["betas"]
            eps = settings["eps"]
            weight_decay = settings["weight_decay"]
            for index, p, grad in params:
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
