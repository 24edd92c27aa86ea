"""batch-size: BatchNorm vs GroupNorm vs LayerNorm as the batch shrinks (Wu & He 2018, fig. 1).

BatchNorm estimates its statistics from the batch: with 2 or 4 samples they are noisy, and
the running averages used at test time no longer match what training saw. GroupNorm and
LayerNorm normalize each sample on its own and do not depend on the batch. The MNIST CNN
(``mnist_cnn``) is trained with each normalization at every batch size of ``--batch-sizes`` for
the same number of epochs (so smaller batches take more steps), with the learning rate scaled
linearly with the batch (``--lr`` at batch 64; Goyal et al. 2017, as Wu & He do), and evaluated
in eval mode (BatchNorm with its running statistics).

GroupNorm uses gcd(C, 8) groups (8 here); LayerNorm is PyTorch's (per sample over C, H, W
with per-element gamma and beta). Defaults: 2 epochs of 1,024 training images (batch 64 takes
32 steps per run, batch 2 1,024), 3 norms x 4 batch sizes x 2 seeds = 24 runs: 61 s of
wall-clock time and 120 s of CPU time (user + system; 2 kernel threads on a 2-core machine with
nothing else running, 3 December 2026); ``--full`` trains 5 epochs of all 60,000 images.
"""
from . import _common
from .. import models
from .runner import Experiment, Option, experiment_function

NORMS = ("batch", "group", "layer")


def plan(config):
    return [{"norm": norm, "batch_size": size} for norm in config["norms"]
            for size in config["batch_sizes"]]


def run(spec, config):
    """One run: ``spec["setting"]`` is ``{"norm": ..., "batch_size": ...}``."""
    setting = spec["setting"]
    _common.seeded(spec["seed"])
    model = models.mnist_cnn(norm=setting["norm"])
    size = setting["batch_size"]
    lr = config["lr"] * size / 64
    steps_per_epoch = (config["train_samples"] or 60000) // size
    return _common.train_run(model, spec["seed"], config, "mnist", lr=lr, batch_size=size,
                             epochs=config["epochs"],
                             eval_every=max(1, steps_per_epoch * config["epochs"] // 8))


def plot(path, result):
    config = result.config
    return _common.sweep_figure(path, result, "batch_size", "batch size (same epochs)",
                                f"mnist_cnn, {config['epochs']} epoch(s) of "
                                f"{config['train_samples'] or 60000} images",
                                ticks=sorted(config["batch_sizes"]), descending=True)


EXPERIMENT = Experiment(
    name="batch-size",
    summary="BN vs GroupNorm vs LayerNorm test accuracy as the batch shrinks (64, 16, 4, 2) "
            "for the same epochs",
    description=__doc__,
    options=(
        Option("norms", _common.name_list(NORMS), list(NORMS), "comma-separated norms"),
        Option("batch_sizes", _common.int_list, [64, 16, 4, 2], "comma-separated batch sizes"),
        Option("epochs", _common.positive_int, 2, "epochs per run (every batch size)", 5),
    ) + tuple(option for option in _common.training_options(
        steps=1, lr=0.05, train_samples=1024, full={"curve_samples": 10000})
        if option.name not in ("steps", "batch_size", "eval_every")),
    plan=plan, run=run, plot=plot,
    metrics=(("test_accuracy", "final test accuracy"), ("test_loss", "final test loss")),
    full_note="5 epochs of all 60,000 MNIST images per run",
)

batch_size = experiment_function(EXPERIMENT.name, "batch_size")
