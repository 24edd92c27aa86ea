"""bn-vs-plain: the same networks with and without BatchNorm on MNIST, Fashion-MNIST and CIFAR-10.

Each dataset's network is trained from the same seed with the same SGD settings twice: with
BatchNorm after every convolution and hidden dense layer (before the ReLU; Ioffe & Szegedy
2015, section 3.2) and without (the "plain" network, whose layers have a bias instead).
MNIST and Fashion-MNIST use :func:`minidl.models.mnist_cnn`, CIFAR-10 the VGG-style
:func:`minidl.models.vgg_cifar` (``--cifar-width`` times its channels). Recorded: test accuracy
every ``--eval-every`` steps on the first ``--curve-samples`` test images, the first evaluated
step reaching the dataset's target accuracy, and the final test accuracy and loss.

The defaults (100 steps of batch 64 per run, 3 datasets x 2 settings x 2 seeds = 12 runs)
take 31 s of wall-clock time and 57 s of CPU time (user + system; 2 kernel threads on a 2-core
machine with nothing else running, 3 December 2026); ``--full`` trains 10,000 steps per run on
the whole training sets (hours).
"""
import argparse

from .. import models
from . import _common
from .runner import Experiment, Option, experiment_function

DATASETS = ("mnist", "fashion-mnist", "cifar10")
DEFAULT_TARGETS = {"mnist": 0.9, "fashion-mnist": 0.7, "cifar10": 0.3}


def targets(text):
    """argparse type: ``dataset=accuracy`` pairs, e.g. ``mnist=0.9,cifar10=0.3``."""
    result = dict(DEFAULT_TARGETS)
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, _, value = part.partition("=")
        if name not in DATASETS or not value:
            raise argparse.ArgumentTypeError(
                f"expected dataset=accuracy pairs with datasets from {', '.join(DATASETS)}, "
                f"got {text!r}")
        result[name] = _common.accuracy(value)
    return ",".join(f"{k}={v}" for k, v in result.items())


def plan(config):
    return [{"dataset": dataset, "norm": norm} for dataset in config["datasets"]
            for norm in ("batch", "none")]


def network(dataset, norm, config):
    """The network of ``dataset`` (mnist_cnn, or vgg_cifar for CIFAR-10)."""
    if dataset == "cifar10":
        return models.vgg_cifar(norm=_common.norm_arg(norm), width=config["cifar_width"])
    return models.mnist_cnn(norm=_common.norm_arg(norm))


def run(spec, config):
    """One run: ``spec["setting"]`` is ``{"dataset": ..., "norm": "batch" or "none"}``."""
    setting = spec["setting"]
    _common.seeded(spec["seed"])
    model = network(setting["dataset"], setting["norm"], config)
    goal = dict(part.split("=") for part in config["targets"].split(","))[setting["dataset"]]
    return _common.train_run(model, spec["seed"], config, setting["dataset"], target=float(goal))


def plot(path, result):
    plt = _common.pyplot()
    if plt is None:
        return False
    datasets = result.config["datasets"]
    figure, axes = plt.subplots(1, len(datasets), figsize=(3.4 * len(datasets), 2.8),
                                squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for norm in ("batch", "none"):
            runs = [r for r in _common.group_runs(result, "dataset", dataset)
                    if r["setting"]["norm"] == norm]
            _common.band(axis, runs, "test", "test_accuracy", _common.NORM_LABELS[norm])
        axis.set_title(dataset, fontsize=9)
        _common.step_axis(axis, "test accuracy", legend_loc="lower right")
    figure.suptitle(f"with and without BatchNorm (mean ± std, {len(result.config['seeds'])} "
                    f"seeds)", fontsize=9)
    return _common.save(figure, path)


EXPERIMENT = Experiment(
    name="bn-vs-plain",
    summary="MNIST, Fashion-MNIST and CIFAR-10 networks with and without BatchNorm: test "
            "accuracy vs steps, steps to a target",
    description=__doc__,
    options=(
        Option("datasets", _common.name_list(DATASETS), list(DATASETS),
               "comma-separated datasets"),
        Option("targets", targets, ",".join(f"{k}={v}" for k, v in DEFAULT_TARGETS.items()),
               "test accuracy per dataset whose first step is reported"),
        Option("cifar_width", _common.positive_float, 0.5,
               "channel multiplier of the CIFAR-10 VGG network", 1.0),
    ) + _common.training_options(steps=100, lr=0.02, full={"steps": 10000, "eval_every": 500,
                                                           "curve_samples": 10000}),
    plan=plan, run=run, plot=plot,
    metrics=(("test_accuracy", "final test accuracy"), ("test_loss", "final test loss"),
             ("steps_to_target", "steps to target")),
    full_note="10,000 steps per run on the whole training sets, full-width VGG, evaluations "
              "on all 10,000 test images",
)

bn_vs_plain = experiment_function(EXPERIMENT.name, "bn_vs_plain")
