"""Train networks side by side and compare how fast they converge (the BatchNorm examples).

The pieces ``examples/mnist_bn.py`` and ``examples/cifar_bn.py`` share:

* :func:`train_and_record` -- train one model for a number of steps with :class:`minidl.Trainer`,
  evaluating on held-out images every few steps; a diverging run (NaN/Inf loss) is recorded as
  such instead of raising;
* :func:`comparison_table` -- the table of test accuracy at fixed steps, steps to a target
  accuracy, final accuracy and time, one column per run;
* :func:`write_json` and :func:`plot_curves` -- the results as JSON and as an accuracy-vs-steps
  PNG (matplotlib, the optional ``plot`` extra: ``pip install "minidl[plot]"``);
* argparse types that reject nonsense up front (:func:`positive_int`, :func:`positive_float`,
  :func:`fraction`).
"""
import argparse
import json
import math
import os
import time

import numpy as np

from ..callbacks import EvaluateEvery
from ..serialization import atomic_write
from ..trainer import NonFiniteLossError, Trainer

__all__ = ["train_and_record", "comparison_table", "format_table", "write_json", "plot_curves",
           "positive_int", "positive_float", "non_negative_float", "fraction", "PLOT_HINT"]

PLOT_HINT = 'pip install "minidl[plot]"'
"""How to get the plots: matplotlib comes with minidl's optional ``plot`` extra."""


# ----------------------------------------------------------------------------- argparse types
def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _float(text, accept, what):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0 (a learning rate)."""
    return _float(text, lambda v: v > 0, "a finite number > 0")


def non_negative_float(text):
    """argparse type: a finite number >= 0 (weight decay)."""
    return _float(text, lambda v: v >= 0, "a finite number >= 0")


def fraction(text):
    """argparse type: a number in [0, 1) (momentum)."""
    return _float(text, lambda v: 0 <= v < 1, "a number in [0, 1)")


# ----------------------------------------------------------------------------- training
class _Recorder(EvaluateEvery):
    """EvaluateEvery that also records each step's loss, times its evaluations and stops the
    run after ``max_steps`` optimizer steps."""

    def __init__(self, loader, every, max_steps):
        super().__init__(loader, every)
        self.max_steps = max_steps
        self.step_loss = []
        self.eval_seconds = 0.0

    def _timed(self, hook, *args):
        start = time.perf_counter()
        hook(*args)
        self.eval_seconds += time.perf_counter() - start

    def on_step_end(self, trainer, step, logs):
        self.step_loss.append(float(logs["loss"]))
        self._timed(super().on_step_end, trainer, step, logs)
        if self.max_steps is not None and step >= self.max_steps:
            trainer.stop_training = True

    def on_train_end(self, trainer):
        self._timed(super().on_train_end, trainer)


def train_and_record(model, optimizer, loss_fn, train_loader, curve_loader, test_loader, *,
                     steps=None, epochs=None, eval_every=50, target=None, scheduler=None,
                     scheduler_interval="step", progress=None, callbacks=()):
    """Train ``model`` and record its test accuracy every ``eval_every`` steps.

    Args:
        model, optimizer, loss_fn: as for :class:`minidl.Trainer`.
        train_loader: the training batches (a :class:`~minidl.data.DataLoader`).
        curve_loader: the images evaluated during training (e.g. part of the test set).
        test_loader: the images of the final evaluation (e.g. the whole test set).
        steps (int, optional): stop after this many optimizer steps (the epochs it needs are
            run, the last one cut short).
        epochs (int, optional): train this many epochs (when ``steps`` is None).
        eval_every (int): optimizer steps between evaluations on ``curve_loader`` (>= 1); the
            last step is always evaluated.
        target (float, optional): report the first evaluated step with this accuracy.
        scheduler, scheduler_interval: a learning-rate scheduler and when to step it.
        progress (bool or None): the Trainer's progress bars (None: only on a terminal).
        callbacks (sequence of Callback): more callbacks for the Trainer, called after the
            recorder (e.g. measurements every few steps).
    Returns:
        dict: ``steps`` and ``test_accuracy``/``test_loss`` (the curve), ``steps_to_target``
        (None: not reached), ``final_test_accuracy``/``final_test_loss`` (None if diverged),
        ``diverged_at_step`` (None, or the step whose loss was NaN/Inf: training stopped
        there, as :class:`minidl.NonFiniteLossError` says), ``train_loss_per_step``,
        ``steps_done``, ``curve_samples``/``test_samples``, ``seconds_training`` (without
        evaluations), ``ms_per_step``, ``seconds_with_evaluations``,
        ``seconds_final_evaluation``.
    Raises:
        ValueError: neither or both of ``steps`` and ``epochs``.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("train_and_record: give exactly one of steps and epochs")
    if steps is not None:
        epochs = math.ceil(steps / len(train_loader))
    recorder = _Recorder(curve_loader, eval_every, steps)
    trainer = Trainer(model, loss_fn, optimizer, progress=progress,
                      callbacks=[recorder, *callbacks],
                      scheduler=scheduler, scheduler_interval=scheduler_interval)
    diverged_at = None
    start = time.perf_counter()
    # a diverging run overflows on its way to NaN: it is reported as diverged, not warned about
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            trainer.fit(train_loader, epochs=epochs)
        except NonFiniteLossError as error:  # the model diverged: record it, do not crash
            diverged_at = error.step
        seconds = time.perf_counter() - start
        final, final_seconds = {"accuracy": None, "loss": None}, 0.0
        if diverged_at is None:
            start = time.perf_counter()
            final = trainer.evaluate(test_loader, progress=False)
            final_seconds = time.perf_counter() - start
    steps_done = trainer.global_step
    training = seconds - recorder.eval_seconds
    return {
        "steps": list(recorder.steps),
        "test_accuracy": [r["accuracy"] for r in recorder.results],
        "test_loss": [r["loss"] for r in recorder.results],
        "steps_to_target": None if target is None else recorder.first_step_reaching(target),
        "final_test_accuracy": final["accuracy"],
        "final_test_loss": final["loss"],
        "diverged_at_step": diverged_at,
        "train_loss_per_step": recorder.step_loss,
        "steps_done": steps_done,
        "curve_samples": _samples(curve_loader),
        "test_samples": _samples(test_loader),
        "seconds_training": training,
        "ms_per_step": 1e3 * training / steps_done if steps_done else None,
        "seconds_with_evaluations": seconds,
        "seconds_final_evaluation": final_seconds,
    }


def _samples(loader):
    arrays = getattr(getattr(loader, "dataset", None), "arrays", None)
    return len(arrays()[0]) if arrays else None


# ----------------------------------------------------------------------------- the table
def format_table(header, rows, first="left"):
    """Rows of strings as aligned text: the first column aligned ``first`` (``"left"`` or
    ``"right"``), the others right; each column as wide as its widest cell, so long entries
    never shift the others."""
    table = [list(header)] + [list(row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row):
        head = row[0].ljust(widths[0]) if first == "left" else row[0].rjust(widths[0])
        return " | ".join([head] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(table[0]), rule] + [line(row) for row in table[1:]])


def _status(run):
    return f"diverged at step {run['diverged_at_step']}" if run["diverged_at_step"] else None


def comparison_table(runs, labels, target):
    """The comparison of runs recorded by :func:`train_and_record`, as text.

    Args:
        runs (list of dict): one per column.
        labels (list of str): the column names, e.g. ``["BN", "no BN"]``.
        target (float): the accuracy of the "steps to" row.
    Returns:
        str: the test accuracy at every evaluated step (``diverged`` after a run diverged),
        then steps to ``target``, final test accuracy and loss, time per step and wall-clock
        time.
    """
    steps = sorted({s for run in runs for s in run["steps"]})
    curves = [dict(zip(run["steps"], run["test_accuracy"])) for run in runs]
    rows = []
    for step in steps:
        cells = []
        for run, curve in zip(runs, curves):
            if step in curve:
                cells.append(f"{curve[step]:.4f}")
            elif run["diverged_at_step"] and step >= run["diverged_at_step"]:
                cells.append("diverged")
            else:
                cells.append("-")
        rows.append([str(step)] + cells)
    curve_samples = runs[0]["curve_samples"]
    first = format_table(["step"] + [f"test acc, {label}" for label in labels], rows, "right")

    def reached(run):
        if run["steps_to_target"] is not None:
            return str(run["steps_to_target"])
        return _status(run) or "not reached"

    def number(key, digits):  # a loss of 1e16 (a run about to diverge) in e-notation
        return [_status(run) or (f"{run[key]:.{digits}f}" if abs(run[key]) < 1e4
                                 else f"{run[key]:.{digits - 1}e}") for run in runs]

    summary = [
        [f"steps to {target:.0%} test accuracy"] + [reached(run) for run in runs],
        [f"final test accuracy ({runs[0]['test_samples']} images)"]
        + number("final_test_accuracy", 4),
        ["final test loss"] + number("final_test_loss", 4),
        ["ms per training step"] + [f"{run['ms_per_step']:.0f}" if run["ms_per_step"] else "-"
                                    for run in runs],
        ["wall-clock seconds (incl. evals)"] + [f"{run['seconds_with_evaluations']:.1f}"
                                                for run in runs],
    ]
    second = format_table([""] + labels, summary)
    title = f"test accuracy on {curve_samples} test images during training"
    return f"{title}\n{first}\n\n{second}"


# ----------------------------------------------------------------------------- files
def _finite_or_none(value):
    """Replace NaN/Inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path, payload):
    """Write ``payload`` as JSON to ``path`` atomically (its folder is created); NaN and
    infinite numbers become null."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(_finite_or_none(payload), f, indent=1)
        f.write("\n")


def plot_curves(path, panels, title=None):
    """Draw test accuracy against steps, one panel per network, one line per run; write a PNG.

    Args:
        path (str): the PNG to write (atomically; its folder is created).
        panels (list): ``(panel title, [(label, run), ...])`` with runs from
            :func:`train_and_record`; a diverged run ends in an ``x`` marked "diverged".
        title (str, optional): the figure's title.
    Returns:
        bool: True if the PNG was written; False if matplotlib is not installed (nothing is
        written; install it with :data:`PLOT_HINT`).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False,
                                dpi=90)
    for axis, (panel_title, runs) in zip(axes[0], panels):
        for label, run in runs:
            (line,) = axis.plot(run["steps"], run["test_accuracy"], label=label, linewidth=1.5)
            if run["diverged_at_step"]:
                last = run["test_accuracy"][-1] if run["test_accuracy"] else 0.1
                axis.plot([run["diverged_at_step"]], [last], "x", color=line.get_color(),
                          markersize=8)
                axis.annotate("diverged", (run["diverged_at_step"], last), fontsize=8,
                              textcoords="offset points", xytext=(4, 4))
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("test accuracy")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png")
    plt.close(figure)
    return True
