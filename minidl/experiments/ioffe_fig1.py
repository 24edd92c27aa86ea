"""ioffe-fig1: Ioffe & Szegedy (2015), figure 1, in miniature.

The network of section 4.1: MNIST, three fully connected hidden layers of 100 sigmoid units
and a 10-way output, trained with SGD at batch 60 from the same seed, once with BatchNorm
before every sigmoid (the dense layers then have no bias) and once without:

(a) test accuracy against training steps;
(b, c) the 15th, 50th and 85th percentiles, over each training batch, of the input to one
    sigmoid of the last hidden layer (``--unit``), recorded with a forward hook on that
    :class:`~minidl.layers.Sigmoid` every ``--record-every`` steps. The paper's point: with
    BatchNorm the distribution stays stable; without it, it drifts as the layers below change
    ("internal covariate shift").

The weights start from minidl's default initialization (the paper: "small random Gaussian
values"); the learning rate is ours (the paper does not give one). Defaults: 2,000 steps of
batch 60 at lr 0.5 per run, all 60,000 training images, 4 runs (2 settings x 2 seeds): 17 s of
wall-clock time and 32 s of CPU time (user + system; 2 kernel threads on a 2-core machine with
nothing else running, 3 December 2026); ``--full`` runs the paper's 50,000 steps.
"""
import argparse

import numpy as np

from .. import models
from ..layers import Sigmoid
from . import _common
from .runner import Experiment, Option, experiment_function

PERCENTILES = (15, 50, 85)


class SigmoidInputRecorder:
    """A forward hook that records percentiles of one unit's input over each training batch.

    Registered with ``sigmoid.register_forward_hook(recorder)``; records every ``every``-th
    training forward pass (evaluation passes, in eval mode, are ignored).
    """

    def __init__(self, unit, every):
        self.unit, self.every = unit, every
        self.calls = 0
        self.rows = {"step": [], **{f"p{q}": [] for q in PERCENTILES}}

    def __call__(self, module, inputs, output):
        if not module.training:
            return None
        self.calls += 1
        if self.calls == 1 or self.calls % self.every == 0:
            values = np.percentile(inputs[0][:, self.unit].astype(np.float64), PERCENTILES)
            self.rows["step"].append(self.calls - 1)  # the optimizer steps taken before it
            for q, value in zip(PERCENTILES, values):
                self.rows[f"p{q}"].append(float(value))
        return None


def unit_index(text):
    """argparse type: a unit of a 100-unit layer, 0..99."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"expected a unit index 0..99, got {text!r}")
    return value


def plan(config):
    return [{"norm": norm} for norm in ("batch", "none")]


def run(spec, config):
    """One run: ``spec["setting"]["norm"]`` is ``"batch"`` or ``"none"``."""
    _common.seeded(spec["seed"])
    model = models.mlp(784, (100, 100, 100), activation="sigmoid",
                       norm=_common.norm_arg(spec["setting"]["norm"]))
    last_sigmoid = [m for _, m in model.named_modules() if isinstance(m, Sigmoid)][-1]
    recorder = SigmoidInputRecorder(config["unit"], config["record_every"])
    handle = last_sigmoid.register_forward_hook(recorder)
    try:
        record = _common.train_run(model, spec["seed"], config, "mnist")
    finally:
        handle.remove()
    rows = recorder.rows
    record["curves"]["sigmoid_input"] = rows
    spread = [hi - lo for lo, hi in zip(rows["p15"], rows["p85"])]
    if spread:
        record["final"].update(
            median_start=rows["p50"][0], median_end=rows["p50"][-1],
            median_drift=float(np.max(np.abs(np.subtract(rows["p50"], rows["p50"][0])))),
            spread_min=float(np.min(spread)), spread_max=float(np.max(spread)))
    return record


def plot(path, result):
    plt = _common.pyplot()
    if plt is None:
        return False
    figure, axes = plt.subplots(1, 3, figsize=(10, 2.9))
    for norm in ("batch", "none"):
        runs = _common.group_runs(result, "norm", norm)
        _common.band(axes[0], runs, "test", "test_accuracy", _common.NORM_LABELS[norm])
    axes[0].set_title("(a) test accuracy", fontsize=9)
    _common.step_axis(axes[0], legend_loc="lower right")
    seed = result.config["seeds"][0]
    for axis, norm, title in ((axes[1], "none", "(b) no BN"), (axes[2], "batch", "(c) BN")):
        runs = [r for r in _common.group_runs(result, "norm", norm) if r["seed"] == seed]
        if runs:
            rows = runs[0]["curves"]["sigmoid_input"]
            for q, style in zip(PERCENTILES, (":", "-", ":")):
                axis.plot(rows["step"], rows[f"p{q}"], style, color="C0", linewidth=1.2,
                          label=f"{q}th percentile")
        axis.set_title(f"{title}: a last-layer sigmoid's input, seed {seed}", fontsize=8)
        _common.step_axis(axis)
    return _common.save(figure, path)


EXPERIMENT = Experiment(
    name="ioffe-fig1",
    summary="Ioffe & Szegedy 2015 fig. 1: 3x100 sigmoid MLP on MNIST with/without BN; "
            "accuracy and a sigmoid input's 15/50/85th percentiles vs steps",
    description=__doc__,
    options=(
        Option("unit", unit_index, 0, "index (0-99) of the last-hidden-layer unit whose "
               "sigmoid input is followed"),
        Option("record_every", _common.positive_int, 10,
               "training steps between percentile records", 100),
    ) + _common.training_options(steps=2000, lr=0.5, batch_size=60, momentum=0.0,
                                 eval_every=100, curve_samples=1000, train_samples=None,
                                 full={"steps": 50000, "eval_every": 1000,
                                       "curve_samples": 10000}),
    plan=plan, run=run, plot=plot,
    metrics=(("test_accuracy", "final test accuracy"), ("median_drift", "max median drift"),
             ("spread_min", "min 15-85 spread"), ("spread_max", "max 15-85 spread")),
    full_note="the paper's 50,000 steps, evaluations on the whole test set",
)

ioffe_fig1 = experiment_function(EXPERIMENT.name, "ioffe_fig1")
