"""lr-sweep: final test accuracy against the learning rate, with and without BatchNorm.

Ioffe & Szegedy (2015), section 3.3: BatchNorm makes training robust to the scale of the
parameters, so higher learning rates neither blow up nor stall. The same network is trained
from each seed at every rate in ``--lrs`` (log-spaced), with BatchNorm before every ReLU and
without; plain SGD (no momentum by default, so the rate alone sets the step). A run whose loss
becomes NaN/Inf is recorded as diverged and counted in the table's last column.

``--network mlp`` (default): 784-100-100-100-10 ReLU on MNIST; ``cnn``: ``mnist_cnn``. The
defaults (300 steps of batch 64 per run, 6 rates x 2 settings x 2 seeds = 24 runs) take 14 s of
wall-clock time and 26 s of CPU time (user + system; 2 kernel threads on a 2-core machine with
nothing else running, 3 December 2026); ``--full`` trains the CNN for 2,000 steps at 8 rates on
all of MNIST.
"""
from . import _common
from .runner import Experiment, Option, experiment_function
from .. import models

NETWORKS = ("mlp", "cnn")


def build(network, norm):
    """The network of the lr and init-scale sweeps (``norm``: a setting name)."""
    norm = _common.norm_arg(norm)
    if network == "cnn":
        return models.mnist_cnn(norm=norm)
    return models.mlp(784, (100, 100, 100), activation="relu", norm=norm)


def plan(config):
    return [{"lr": lr, "norm": norm} for norm in ("batch", "none") for lr in config["lrs"]]


def run(spec, config):
    """One run: ``spec["setting"]`` is ``{"lr": ..., "norm": "batch" or "none"}``."""
    _common.seeded(spec["seed"])
    model = build(config["network"], spec["setting"]["norm"])
    return _common.train_run(model, spec["seed"], config, "mnist", lr=spec["setting"]["lr"])


def plot(path, result):
    return _common.sweep_figure(path, result, "lr", "learning rate",
                                f"{result.config['network']}, {result.config['steps']} SGD "
                                f"steps (x: all seeds diverged)")


FULL_LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 5.0]

EXPERIMENT = Experiment(
    name="lr-sweep",
    summary="final test accuracy vs learning rate (0.01 ... 2, log-spaced) with and without BN",
    description=__doc__,
    options=(
        Option("lrs", _common.float_list, [0.01, 0.03, 0.1, 0.3, 1.0, 2.0],
               "comma-separated learning rates", FULL_LRS),
        Option("network", _common.choice(NETWORKS), "mlp", "mlp (784-100-100-100-10 ReLU) or "
               "cnn (mnist_cnn)", "cnn"),
    ) + _common.training_options(steps=300, lr=0.1, momentum=0.0, eval_every=50,
                                 full={"steps": 2000, "eval_every": 200,
                                       "curve_samples": 10000}),
    plan=plan, run=run, plot=plot,
    metrics=(("test_accuracy", "final test accuracy"), ("test_loss", "final test loss")),
    full_note="mnist_cnn, 2,000 steps at 8 rates from 0.003 to 5, all of MNIST",
)

lr_sweep = experiment_function(EXPERIMENT.name, "lr_sweep")
