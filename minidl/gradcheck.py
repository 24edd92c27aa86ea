"""Check a backward pass against central differences, like ``torch.autograd.gradcheck``.

A layer's ``backward`` is right when, for a random upstream gradient ``dout``, the gradient it
returns (and the ones it accumulates into ``Parameter.grad``) equals the derivative of the
scalar ``sum(forward(x) * dout)``, which central differences estimate entry by entry::

    d/dx[i] sum(f(x) * dout)  ~  (sum(f(x + eps e_i) * dout) - sum(f(x - eps e_i) * dout)) / (2 eps)

with an error of order ``eps**2`` plus rounding of order ``1e-16 / eps`` (hence float64). A
*random* ``dout`` matters: with all ones, BatchNorm's input gradient is zero whatever the
backward does, and a wrong backward would pass.

Use it on a layer you wrote::

    layer = MyLayer(4, 3)
    report = minidl.gradcheck(layer, np.random.randn(5, 4))   # raises GradcheckError if wrong
    print(report)

or on a CS231n-style pair of functions (see :func:`gradcheck`).
"""
import copy
import functools
import inspect
from dataclasses import dataclass

import numpy as np

from ._snapshot import Snapshot
from .layers.module import Module

__all__ = ["gradcheck", "GradcheckError", "GradcheckReport", "TensorCheck", "numerical_gradient"]


class GradcheckError(AssertionError):
    """A gradient differs from its numerical estimate (raised by :func:`gradcheck`).

    Attributes:
        report (GradcheckReport): every tensor's comparison, including the failing ones.
    """

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


@dataclass
class TensorCheck:
    """The comparison of one gradient with its numerical estimate.

    Attributes:
        name (str): ``"input"`` or a parameter's qualified name (``"0.weight"``) for a module;
            the argument's name (``"x"``, ``"weight"``) for a function.
        mode (str): ``"train"`` or ``"eval"`` for a module, ``"function"`` for a function.
        shape (tuple): the tensor's shape.
        passed (bool): every entry satisfies ``|analytic - numeric| <= atol + rtol * |numeric|``.
        max_abs_error (float): ``max |analytic - numeric|``.
        max_rel_error (float): ``max |analytic - numeric| / max(|analytic|, |numeric|)``
            (entries where both are 0 count as 0).
        index (tuple): the worst entry: the one furthest outside (or closest to) the tolerance.
        analytic (float), numeric (float): the two values at ``index``.
        failures (int): how many entries are out of tolerance.
        analytic_grad (np.ndarray), numeric_grad (np.ndarray): the full gradients, float64.
        problem (str or None): why no comparison was possible (e.g. a gradient of the wrong
            shape); the check then failed.
    """

    name: str
    mode: str
    shape: tuple
    passed: bool
    max_abs_error: float
    max_rel_error: float
    index: tuple
    analytic: float
    numeric: float
    failures: int
    analytic_grad: np.ndarray
    numeric_grad: np.ndarray
    problem: str = None

    def describe(self, atol, rtol):
        """One sentence saying what failed (used in :class:`GradcheckError`)."""
        where = f"the gradient of {self.name!r}" + ("" if self.mode == "function" else
                                                     f" ({self.mode} mode)")
        if self.problem:
            return f"{where}: {self.problem}"
        allowed = atol + rtol * abs(self.numeric)
        return (
            f"{where} is wrong at index {self.index}: analytic {self.analytic:.10g}, numeric "
            f"{self.numeric:.10g} (|difference| {abs(self.analytic - self.numeric):.3g} > atol + "
            f"rtol * |numeric| = {allowed:.3g}); {self.failures} of {int(np.prod(self.shape))} "
            f"entries are out of tolerance"
        )


class GradcheckReport:
    """What :func:`gradcheck` found, one :class:`TensorCheck` per tensor and mode.

    ``bool(report)`` is ``report.passed``; ``print(report)`` shows a table.

    Attributes:
        checks (list of TensorCheck): in the order checked (per mode: the input(s), then the
            parameters).
        eps, atol, rtol (float): the settings used.
        cast_to_float64 (bool): the module had float32 parameters or buffers and a float64 copy
            was checked.
    """

    def __init__(self, checks, eps, atol, rtol, cast_to_float64=False):
        self.checks = checks
        self.eps, self.atol, self.rtol = eps, atol, rtol
        self.cast_to_float64 = cast_to_float64

    @property
    def passed(self):
        """True when every gradient matched."""
        return all(c.passed for c in self.checks)

    def __bool__(self):
        return self.passed

    def check(self, name, mode=None):
        """The :class:`TensorCheck` of tensor ``name`` (in ``mode``, or the first one found).

        Raises:
            KeyError: no such tensor was checked.
        """
        for c in self.checks:
            if c.name == name and (mode is None or c.mode == mode):
                return c
        raise KeyError(f"gradcheck report: no check of {name!r}" +
                       ("" if mode is None else f" in {mode} mode"))

    def __str__(self):
        status = "passed" if self.passed else "FAILED"
        lines = [f"gradcheck {status} (eps={self.eps:g}, atol={self.atol:g}, rtol={self.rtol:g})"
                 + (", on a float64 copy of the module" if self.cast_to_float64 else "")]
        header = ("mode", "tensor", "shape", "max abs err", "max rel err", "worst index",
                  "analytic", "numeric", "ok")
        rows = [header]
        for c in self.checks:
            if c.problem:
                rows.append((c.mode, c.name, str(c.shape), "-", "-", "-", "-", "-", "NO"))
                continue
            rows.append((c.mode, c.name, str(c.shape), f"{c.max_abs_error:.2e}",
                         f"{c.max_rel_error:.2e}", str(c.index), f"{c.analytic:.6g}",
                         f"{c.numeric:.6g}", "yes" if c.passed else "NO"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        lines.extend(f"  {c.describe(self.atol, self.rtol)}" for c in self.checks if not c.passed)
        return "\n".join(lines)

    def __repr__(self):
        failed = sum(not c.passed for c in self.checks)
        return f"GradcheckReport({len(self.checks)} checks, {failed} failed)"


def gradcheck(module_or_function, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0,
              modes=("train", "eval"), raise_exception=True):
    """Compare analytic gradients with central differences in float64; the model is PyTorch's
    ``torch.autograd.gradcheck``.

    **A module**: ``module(x)`` is run, then ``module.backward(dout)`` with a random ``dout``
    (standard normal, from ``seed``); the returned input gradient and every parameter's
    accumulated gradient are compared with central differences of ``sum(module(x) * dout)``,
    in each of ``modes``. Before every forward the module's buffers (BatchNorm's running
    statistics) and random generators (a Dropout's, minidl's global one, NumPy's global one)
    are put back as they were, so every forward sees the same state and draws the same random
    numbers. Afterwards the module is as it was: modes, parameter values, gradients, buffers and
    generator states (not what the layers cached for a backward). A module with float32
    parameters or buffers is checked on a float64 copy (``copy.deepcopy`` then
    ``astype(np.float64)``), the original is not touched.

    **A function pair** ``(forward, backward)`` in minidl's functional style: ``inputs`` is the
    tuple of ``forward``'s positional arguments, ``forward(*inputs) -> (out, cache)``, and
    ``backward(dout, cache)`` returns the gradient of the first input, or a tuple whose k-th
    entry is the gradient of ``inputs[k]`` (None for "no gradient"). Inputs beyond the
    gradients returned, and inputs that are not float arrays (a stride, a None bias), are passed
    as given and not checked (integer arrays such as labels too); float arrays are passed as
    float64 copies, restored before every call (so running statistics updated in place do not
    drift). Use ``functools.partial`` or a
    lambda for keyword arguments::

        from minidl.functional.linear import linear_forward, linear_backward
        gradcheck((linear_forward, linear_backward), (x, w, b))   # checks dx, dw, db

    Args:
        module_or_function: a :class:`~minidl.layers.Module`, or a ``(forward, backward)`` pair.
        inputs: the input array (a module), or the tuple of ``forward``'s arguments (a function;
            a single array is taken as ``(array,)``). Arrays are copied to float64.
        eps (float): the finite-difference step (default 1e-6).
        atol, rtol (float): an entry passes when ``|analytic - numeric| <= atol + rtol *
            |numeric|`` (defaults 1e-5 and 1e-3, PyTorch's).
        seed (int): seeds the random upstream gradient.
        modes: for a module, ``"train"`` and/or ``"eval"`` (default both), or None to check in
            the modes the module and its children are in now. Ignored for functions.
        raise_exception (bool): raise :class:`GradcheckError` on a mismatch (default); with
            False, return the report instead.

    Returns:
        GradcheckReport: per tensor and mode: max abs/rel error, the worst entry's index and
        its analytic and numeric values. ``bool(report)`` says whether everything passed.

    Raises:
        GradcheckError: a gradient differs (names the tensor and mode, the worst index, the
            analytic and numeric values), or has the wrong shape or is missing.
        TypeError: not a Module or a pair of callables; a non-numeric input; ``forward``
            returning something other than a float64 array (a layer that casts to float32).
        ValueError: bad ``eps``/``atol``/``rtol``/``modes``.

    Cost: two forward passes per entry of the input and of every parameter, per mode: use small
    shapes (a few hundred entries).
    """
    for name, value in (("eps", eps), ("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, (int, float, np.floating)) and np.isfinite(value) and value >= 0):
            raise ValueError(
                f"gradcheck: expected {name} to be a finite number >= 0, got {value!r}")
    if eps == 0:
        raise ValueError("gradcheck: expected eps > 0, got 0")
    if isinstance(module_or_function, Module):
        checks, cast = _check_module(module_or_function, inputs, eps, atol, rtol, seed, modes)
    elif (isinstance(module_or_function, (tuple, list)) and len(module_or_function) == 2
          and all(callable(f) for f in module_or_function)):
        checks, cast = _check_function(*module_or_function, inputs, eps, atol, rtol, seed), False
    else:
        raise TypeError(
            "gradcheck: expected a Module or a (forward, backward) pair of functions, got "
            f"{type(module_or_function).__name__}"
        )
    report = GradcheckReport(checks, eps, atol, rtol, cast)
    if raise_exception and not report.passed:
        failed = [c for c in checks if not c.passed]
        message = "gradcheck: " + failed[0].describe(atol, rtol)
        if len(failed) > 1:
            others = ", ".join(f"{c.name!r}" + ("" if c.mode == "function" else f" ({c.mode})")
                               for c in failed[1:])
            message += f". Also wrong: {others}"
        raise GradcheckError(message + f"\n{report}", report)
    return report


# ----------------------------------------------------------------------------- comparison
def _as_float64(name, value):
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"gradcheck: expected {name} to be an array of real numbers, got dtype "
                        f"{array.dtype}")
    return np.array(array, dtype=np.float64, order="C", copy=True)


def numerical_gradient(f, array, dout, eps=1e-6):
    """Central-difference gradient of ``sum(f() * dout)`` with respect to ``array``.

    Args:
        f (callable): takes no arguments, reads ``array`` and returns an array (or a scalar).
        array (np.ndarray): C-contiguous, float64 for meaningful results; perturbed in place,
            entry by entry, and restored exactly.
        dout (np.ndarray or float): the upstream gradient, shaped like ``f()``'s result.
        eps (float): the step.
    Returns:
        np.ndarray: float64, the shape of ``array``.
    Raises:
        TypeError: ``array`` is not contiguous (a perturbation would not reach it).
    """
    grad = np.zeros(array.shape, dtype=np.float64)
    flat = array.reshape(-1)
    if not np.shares_memory(flat, array):
        raise TypeError("numerical_gradient: the array is not contiguous; it cannot be perturbed "
                        "in place")
    grad_flat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = np.sum(f() * dout)
        flat[i] = old - eps
        minus = np.sum(f() * dout)
        flat[i] = old
        grad_flat[i] = (plus - minus) / (2 * eps)
    return grad


def _compare(name, mode, shape, analytic, numeric, atol, rtol):
    """Build the TensorCheck of one gradient."""
    if analytic is None:
        return _problem(name, mode, shape, "backward returned None (no gradient)")
    analytic = np.asarray(analytic)
    if analytic.shape != tuple(shape):
        return _problem(name, mode, shape, f"backward gave a gradient of shape {analytic.shape} "
                                           f"for a tensor of shape {tuple(shape)}")
    analytic = analytic.astype(np.float64)
    diff = np.abs(analytic - numeric)
    allowed = atol + rtol * np.abs(numeric)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(diff), diff / allowed, np.inf)
        scale = np.maximum(np.abs(analytic), np.abs(numeric))
        relative = np.where(diff == 0, 0.0, diff / scale)
    bad = ~(diff <= allowed)  # NaN counts as bad
    worst = np.unravel_index(int(np.argmax(ratio)), shape) if diff.size else ()
    worst = tuple(int(i) for i in worst)
    return TensorCheck(
        name=name, mode=mode, shape=tuple(shape), passed=not bad.any(),
        max_abs_error=float(np.max(diff)) if diff.size else 0.0,
        max_rel_error=float(np.max(relative)) if diff.size else 0.0,
        index=worst, analytic=float(analytic[worst]) if diff.size else 0.0,
        numeric=float(numeric[worst]) if diff.size else 0.0, failures=int(bad.sum()),
        analytic_grad=analytic, numeric_grad=numeric,
    )


def _problem(name, mode, shape, problem):
    nan = float("nan")
    return TensorCheck(name=name, mode=mode, shape=tuple(shape), passed=False, max_abs_error=nan,
                       max_rel_error=nan, index=(), analytic=nan, numeric=nan, failures=0,
                       analytic_grad=None, numeric_grad=None, problem=problem)


def _check_output(what, out):
    if isinstance(out, (float, np.floating)):  # a scalar, e.g. a loss
        out = np.asarray(out)
    if not isinstance(out, np.ndarray) or out.dtype != np.float64:
        got = (f"dtype {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__)
        raise TypeError(
            f"gradcheck: {what} returned {got} for float64 inputs; the check needs a float64 "
            "array (does it cast to float32?)"
        )
    return out


# ----------------------------------------------------------------------------- modules
def _modes(modes):
    if modes is None:
        return [None]
    if isinstance(modes, str):
        modes = (modes,)
    modes = list(modes)
    if not modes or any(m not in ("train", "eval") for m in modes):
        raise ValueError(f"gradcheck: expected modes to be 'train' and/or 'eval' (or None), got "
                         f"{modes!r}")
    return modes


def _needs_float64_copy(module):
    for p in module.parameters():
        if p.data.dtype != np.float64:
            return True
    return any(isinstance(b, np.ndarray) and b.dtype.kind == "f" and b.dtype != np.float64
               for _, b in module.named_buffers())


def _unique_parameters(module):
    seen, named = set(), []
    for name, p in module.named_parameters():
        if id(p) not in seen:  # a Parameter shared by two layers is checked once
            seen.add(id(p))
            named.append((name, p))
    return named


def _check_module(module, x, eps, atol, rtol, seed, modes):
    modes = _modes(modes)
    if isinstance(x, (tuple, list)) and len(x) == 1 and isinstance(x[0], np.ndarray):
        x = x[0]
    x = _as_float64("inputs", x)
    cast = _needs_float64_copy(module)
    if cast:
        module = copy.deepcopy(module).astype(np.float64)
    params = _unique_parameters(module)
    saved_grads = [(p, p.grad, None if p.grad is None else p.grad.copy()) for _, p in params]
    original = Snapshot(module)
    checks = []
    try:
        for mode in modes:
            if mode is not None:
                module.train(mode == "train")
            label = mode or ("train" if module.training else "eval")
            checks.extend(_check_module_in_mode(module, x, params, label, eps, atol, rtol, seed))
    finally:
        original.restore()
        for p, grad, values in saved_grads:
            if grad is not None:
                np.copyto(grad, values)
            p.grad = grad
    return checks, cast


def _check_module_in_mode(module, x, params, mode, eps, atol, rtol, seed):
    state = Snapshot(module)
    name = type(module).__name__

    def run():
        state.restore_state()
        return _check_output(f"{name}'s forward", module(x))

    out = run()
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    for _, p in params:
        p.grad = np.zeros_like(p.data)
    dx = module.backward(dout)
    analytic = [("input", x, dx)] + [(n, p.data, p.grad.copy()) for n, p in params]
    return [
        _compare(tensor_name, mode, array.shape, grad,
                 numerical_gradient(run, array, dout, eps), atol, rtol)
        for tensor_name, array, grad in analytic
    ]


# ----------------------------------------------------------------------------- functions
def _argument_names(forward, count):
    try:
        names = [p.name for p in inspect.signature(forward).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    return [names[k] if k < len(names) else f"inputs[{k}]" for k in range(count)]


def _check_function(forward, backward, inputs, eps, atol, rtol, seed):
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    names = _argument_names(forward, len(inputs))
    args = [_as_float64(names[k], a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
            for k, a in enumerate(inputs)]  # integer arrays (labels, indices) stay as they are
    arrays = [(a, a.copy()) for a in args if isinstance(a, np.ndarray)]
    state = Snapshot()
    name = getattr(forward, "__name__", "forward")

    def call():
        result = forward(*args)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(f"gradcheck: expected {name} to return (out, cache), got "
                            f"{type(result).__name__}")
        return _check_output(name, result[0]), result[1]

    def restore(keep=None):  # every array input but the one being perturbed
        for array, saved in arrays:
            if array is not keep:
                np.copyto(array, saved)
        state.restore_state()

    def run(keep):
        restore(keep)
        return call()[0]

    try:
        restore()
        out, cache = call()
        dout = np.random.default_rng(seed).standard_normal(out.shape)
        grads = backward(dout, cache)
        grads = list(grads) if isinstance(grads, tuple) else [grads]
        checks = []
        for k, grad in enumerate(grads):
            if grad is None:
                continue
            if k >= len(args) or not isinstance(args[k], np.ndarray):
                what = "no input" if k >= len(args) else f"{names[k]}={args[k]!r}"
                raise TypeError(f"gradcheck: backward returned a gradient at position {k}, "
                                f"for {what}, which is not a float array")
            numeric = numerical_gradient(functools.partial(run, args[k]), args[k], dout, eps)
            checks.append(_compare(names[k], "function", args[k].shape, grad, numeric, atol, rtol))
        return checks
    finally:
        restore()
