"""init-scale: final test accuracy against the initial weight scale, with and without BatchNorm.

After the default initialization (PyTorch's: uniform in +-1/sqrt(fan_in), as
``minidl.layers.Dense``/``Conv2D``), every weight of the network (not the biases) is multiplied by
a factor from ``--scales`` (0.01x ... 10x). Without
normalization a deep ReLU network's activations and gradients scale with the product of the
factors of its layers: small factors stall training, large ones blow it up. BatchNorm undoes the
scale of each normalized layer (its output is invariant to it, Ioffe & Szegedy 2015,
section 3.3), so only the last layer's factor is left. Each factor, with and without BN, from
every seed; diverged runs are counted in the table.

The network and data are those of ``lr-sweep`` (``--network mlp``: 784-100-100-100-10 ReLU on
MNIST, 300 steps of batch 64), but SGD runs at one rate, ``--lr`` 0.05, with momentum 0.9
(lr-sweep: no momentum). The defaults (6 scales x 2 settings x 2 seeds = 24 runs) take 13 s of
wall-clock time and 25 s of CPU time (user + system; 2 kernel threads on a 2-core machine with
nothing else running, 3 December 2026).
"""
from . import _common
from .lr_sweep import NETWORKS, build
from .runner import Experiment, Option, experiment_function


def plan(config):
    return [{"scale": scale, "norm": norm} for norm in ("batch", "none")
            for scale in config["scales"]]


def run(spec, config):
    """One run: ``spec["setting"]`` is ``{"scale": ..., "norm": "batch" or "none"}``."""
    _common.seeded(spec["seed"])
    model = build(config["network"], spec["setting"]["norm"])
    _common.scale_weights(model, spec["setting"]["scale"])
    return _common.train_run(model, spec["seed"], config, "mnist")


def plot(path, result):
    config = result.config
    return _common.sweep_figure(path, result, "scale", "initial weight scale (x default)",
                                f"{config['network']}, lr {config['lr']}, {config['steps']} "
                                f"steps (x: all seeds diverged)")


EXPERIMENT = Experiment(
    name="init-scale",
    summary="final test accuracy vs initial weight scale (0.01x ... 10x the default) with and "
            "without BN",
    description=__doc__,
    options=(
        Option("scales", _common.float_list, [0.01, 0.1, 0.3, 1.0, 3.0, 10.0],
               "comma-separated factors applied to the initial weights"),
        Option("network", _common.choice(NETWORKS), "mlp", "mlp (784-100-100-100-10 ReLU) or "
               "cnn (mnist_cnn)", "cnn"),
    ) + _common.training_options(steps=300, lr=0.05, momentum=0.9, eval_every=50,
                                 full={"steps": 2000, "eval_every": 200,
                                       "curve_samples": 10000}),
    plan=plan, run=run, plot=plot,
    metrics=(("test_accuracy", "final test accuracy"), ("test_loss", "final test loss")),
    full_note="mnist_cnn, 2,000 steps per run, all of MNIST",
)

init_scale = experiment_function(EXPERIMENT.name, "init_scale")
