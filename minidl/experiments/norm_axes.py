"""norm-axes: which axes should a conv net's normalization average over? Five answers, one CNN.

The question this project started from. The same VGG-style CIFAR-10 network
(:func:`minidl.models.vgg_cifar`, ``--width`` times 32/64/128 channels, the norm after every
convolution, before the ReLU) is trained from each seed with

* ``batch``: BatchNorm, statistics per channel over (N, H, W) -- Ioffe & Szegedy 2015, sec. 3.2;
* ``per-activation``: BatchNorm per (C, H, W) position over N only -- the paper's fully
  connected form applied to a conv map;
* ``layer``: LayerNorm per sample over (C, H, W), gamma/beta per element -- Ba et al. 2016;
* ``instance``: InstanceNorm per sample and channel over (H, W), with gamma/beta -- Ulyanov
  et al. 2016;
* ``group``: GroupNorm per sample over groups of C/8 channels and (H, W) -- Wu & He 2018;
* ``none``: no normalization (the layers get a bias).

Same SGD settings for all; test accuracy every ``--eval-every`` steps. Defaults: width 0.5,
100 steps of batch 64 at lr 0.02, 12 runs (6 settings x 2 seeds): 42 s of wall-clock time and
80 s of CPU time (user + system; 2 kernel threads on a 2-core machine with nothing else running,
3 December 2026); ``--full``: full width, 10,000 steps.
"""
from . import _common
from .. import models
from .runner import Experiment, Option, experiment_function

NORMS = ("batch", "per-activation", "layer", "instance", "group", "none")


def plan(config):
    return [{"norm": norm} for norm in config["norms"]]


def run(spec, config):
    """One run: ``spec["setting"]["norm"]`` is one of :data:`NORMS`."""
    _common.seeded(spec["seed"])
    model = models.vgg_cifar(norm=_common.norm_arg(spec["setting"]["norm"]),
                             width=config["width"])
    return _common.train_run(model, spec["seed"], config, "cifar10")


def plot(path, result):
    plt = _common.pyplot()
    if plt is None:
        return False
    figure, axis = plt.subplots(figsize=(5.0, 3.2))
    for index, norm in enumerate(result.config["norms"]):
        _common.band(axis, _common.group_runs(result, "norm", norm), "test", "test_accuracy",
                     _common.NORM_LABELS[norm], color=f"C{index}")
    _common.step_axis(axis, "test accuracy", legend_loc="upper left")
    axis.set_title(f"CIFAR-10, vgg_cifar width {result.config['width']}, lr "
                   f"{result.config['lr']} (mean ± std)", fontsize=8)
    return _common.save(figure, path)


EXPERIMENT = Experiment(
    name="norm-axes",
    summary="BatchNorm, per-activation BN, LayerNorm, InstanceNorm, GroupNorm on the same "
            "CIFAR-10 CNN: accuracy vs steps",
    description=__doc__,
    options=(
        Option("norms", _common.name_list(NORMS), list(NORMS), "comma-separated norms"),
        Option("width", _common.positive_float, 0.5, "channel multiplier of vgg_cifar", 1.0),
    ) + _common.training_options(steps=100, lr=0.02, full={"steps": 10000, "eval_every": 500,
                                                           "curve_samples": 10000}),
    plan=plan, run=run, plot=plot,
    metrics=(("test_accuracy", "final test accuracy"), ("test_loss", "final test loss")),
    full_note="full-width vgg_cifar, 10,000 steps per run, all of CIFAR-10",
)

norm_axes = experiment_function(EXPERIMENT.name, "norm_axes")
