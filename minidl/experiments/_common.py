"""What the experiments share: datasets (read once per process), one training run as a record,
the usual options, and figures of mean ± std curves."""
import argparse
import functools
import math

import numpy as np

from .. import data, losses, optim
from .._random import manual_seed
from ..data import transforms
from .comparison import fraction, non_negative_float, positive_float, positive_int, \
    train_and_record
from .runner import Option

DATASETS = {"mnist": data.MNIST, "fashion-mnist": data.FashionMNIST, "cifar10": data.CIFAR10}
"""The datasets an experiment can name."""


# ----------------------------------------------------------------------------- argparse types
def name_list(choices):
    """argparse type: comma-separated names from ``choices``."""
    def parse(text):
        names = [n.strip() for n in str(text).split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}, got {text!r}")
        return names
    return parse


def choice(choices):
    """argparse type: one name from ``choices``."""
    def parse(text):
        if text not in choices:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}, got {text!r}")
        return text
    return parse


def float_list(text):
    """argparse type: comma-separated finite numbers > 0 (learning rates, scales)."""
    values = [positive_float(part) for part in str(text).split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.1,1,10, got {text!r}")
    return values


def int_list(text):
    """argparse type: comma-separated integers >= 1 (batch sizes)."""
    values = [positive_int(part) for part in str(text).split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers like 64,16,4, got {text!r}")
    return values


def optional_samples(text):
    """argparse type: a number of samples >= 1, or ``all``."""
    if str(text).strip().lower() in ("all", "none"):
        return None
    return positive_int(text)


def accuracy(text):
    """argparse type: an accuracy in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected an accuracy in (0, 1], got {text!r}")
    return value


def training_options(steps, lr, batch_size=64, momentum=0.9, eval_every=20, curve_samples=500,
                     test_samples=2000, train_samples=10000, full=None):
    """The options of a training run, with these defaults; ``full`` maps names to --full
    values."""
    full = full or {}
    return (
        Option("steps", positive_int, steps, "optimizer steps per run", full.get("steps")),
        Option("lr", positive_float, lr, "SGD learning rate", full.get("lr")),
        Option("batch_size", positive_int, batch_size, "training batch size",
               full.get("batch_size")),
        Option("momentum", fraction, momentum, "SGD momentum", full.get("momentum")),
        Option("weight_decay", non_negative_float, 0.0, "SGD weight decay (L2)"),
        Option("eval_every", positive_int, eval_every,
               "steps between evaluations on the curve images", full.get("eval_every")),
        Option("curve_samples", positive_int, curve_samples,
               "test images evaluated during training", full.get("curve_samples")),
        Option("test_samples", optional_samples, test_samples,
               "test images of the final evaluation ('all': 10,000)",
               full.get("test_samples", "all" if full else None)),
        Option("train_samples", optional_samples, train_samples,
               "training images used (the first N; 'all': the whole set)",
               full.get("train_samples", "all" if full else None)),
    )


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=8)
def _load(name, root, train):
    dataset = DATASETS[name](root=root, train=train)
    return dataset.images, dataset.labels


def load(name, root, train_samples=None, test_samples=None):
    """``(train set, test set)`` of ``name`` as ArrayDatasets, the first ``train_samples`` and
    ``test_samples`` images (None: all); CIFAR-10 normalized per channel with the training
    images' mean and std, MNIST-like sets as read (pixels in [0, 1]). The files are read once
    per process (on a Dask worker: from the worker's own ``root`` and mirror)."""
    train_images, train_labels = _load(name, root, True)
    test_images, test_labels = _load(name, root, False)
    train_images, train_labels = train_images[:train_samples], train_labels[:train_samples]
    test_images, test_labels = test_images[:test_samples], test_labels[:test_samples]
    if name == "cifar10":
        normalize = transforms.Normalize.from_dataset(train_images)
        train_images, test_images = normalize(train_images), normalize(test_images)
    return (data.ArrayDataset(train_images, train_labels),
            data.ArrayDataset(test_images, test_labels))


# ----------------------------------------------------------------------------- one run
def train_run(model, seed, config, dataset, *, lr=None, batch_size=None, steps=None, epochs=None,
              target=None, callbacks=(), eval_every=None):
    """Train ``model`` (built after ``manual_seed(seed)``) on ``dataset`` with SGD; return a run
    record (see :mod:`minidl.experiments.runner`).

    The record's curve ``"test"`` has the step, the test accuracy and loss on the first
    ``config["curve_samples"]`` test images and the mean training loss since the previous
    evaluation; ``final`` has ``test_accuracy``, ``test_loss`` (on ``config["test_samples"]``
    images) and, with a ``target``, ``steps_to_target`` (None: not reached). ``lr``,
    ``batch_size``, ``steps`` and ``eval_every`` default to the config's.
    """
    train_set, test_set = load(dataset, config["root"], config["train_samples"],
                               config["test_samples"])
    lr = config["lr"] if lr is None else lr
    batch_size = config["batch_size"] if batch_size is None else batch_size
    if epochs is None:
        steps = config["steps"] if steps is None else steps
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=config["momentum"],
                          weight_decay=config["weight_decay"])
    train_loader = data.DataLoader(train_set, batch_size=batch_size, shuffle=True, seed=seed,
                                   drop_last=True)
    curve_set = data.ArrayDataset(*(a[:config["curve_samples"]] for a in test_set.arrays()))
    run = train_and_record(model, optimizer, losses.CrossEntropyLoss(), train_loader,
                           data.DataLoader(curve_set, batch_size=500),
                           data.DataLoader(test_set, batch_size=500), steps=steps,
                           epochs=epochs, eval_every=eval_every or config["eval_every"],
                           target=target, progress=False, callbacks=callbacks)
    edges = [0] + run["steps"]
    losses_per_step = run["train_loss_per_step"]
    train_loss = [float(np.mean(losses_per_step[a:b])) if b > a else None
                  for a, b in zip(edges[:-1], edges[1:])]
    final = {"test_accuracy": run["final_test_accuracy"], "test_loss": run["final_test_loss"]}
    if target is not None:
        final["steps_to_target"] = run["steps_to_target"]
    return {"curves": {"test": {"step": run["steps"], "test_accuracy": run["test_accuracy"],
                                "test_loss": run["test_loss"], "train_loss": train_loss}},
            "final": final, "diverged_at_step": run["diverged_at_step"],
            "steps_done": run["steps_done"], "ms_per_step": run["ms_per_step"]}


def seeded(seed):
    """Seed minidl's global generator (the weights) for a run."""
    manual_seed(seed)


def scale_weights(model, scale):
    """Multiply the weights of every dense and convolution layer by ``scale`` (the biases are
    left as they are): the initial scale of :mod:`minidl.experiments.init_scale`."""
    from ..layers import Conv2D, Dense
    for _, module in model.named_modules():
        if isinstance(module, (Dense, Conv2D)):
            module.weight.data *= np.asarray(scale, dtype=module.weight.data.dtype)


# ----------------------------------------------------------------------------- figures
def pyplot():
    """matplotlib.pyplot with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(figure, path):
    """Save ``figure`` as a small PNG at ``path`` (atomically) and close it."""
    import os

    import matplotlib.pyplot as plt

    from ..serialization import atomic_write
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=80)
    plt.close(figure)
    return True


def mean_curve(runs, curve, series):
    """Mean and std across ``runs`` (ok or diverged) of ``series`` of ``curve``, over the steps
    all of them recorded: ``(steps, mean, std)`` as arrays (empty without runs)."""
    curves = [run["curves"][curve] for run in runs if curve in run["curves"]]
    if not curves:
        return np.array([]), np.array([]), np.array([])
    length = min(len(c["step"]) for c in curves)
    values = np.array([[np.nan if v is None else v for v in c[series][:length]]
                       for c in curves], dtype=float)
    with np.errstate(invalid="ignore"):
        return (np.asarray(curves[0]["step"][:length]), np.nanmean(values, axis=0)
                if len(values) else values, np.nanstd(values, axis=0))


def band(axis, runs, curve, series, label, **style):
    """Plot the mean of ``series`` across ``runs`` with a ± std band; a diverged run ends in an
    ``x``."""
    steps, mean, std = mean_curve(runs, curve, series)
    if not len(steps):
        return
    (line,) = axis.plot(steps, mean, label=label, linewidth=1.4, **style)
    axis.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                      linewidth=0)
    for run in runs:
        if run["diverged_at_step"]:
            axis.plot([run["diverged_at_step"]], [mean[-1] if len(mean) else 0], "x",
                      color=line.get_color())


def group_runs(result, key, value):
    """The runs of ``result`` whose setting has ``key == value`` and that did not fail."""
    return [run for run in result.runs if run["setting"].get(key) == value
            and run["status"] != "failed"]


def step_axis(axis, ylabel=None, legend_loc="best"):
    """The style every curve-against-steps panel shares: x labelled "step", an optional y label,
    a light grid and a small legend."""
    axis.set_xlabel("step", fontsize=8)
    if ylabel is not None:
        axis.set_ylabel(ylabel, fontsize=8)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc=legend_loc)


def sweep_plot(axis, result, x_key, group_key, metric, labels=None, log_x=True):
    """Final ``metric`` (mean ± std over ok seeds) against ``x_key``, one line per
    ``group_key`` value; settings where every run diverged are marked ``x`` at 0."""
    groups = []
    for row in result.summary:
        if row["setting"][group_key] not in groups:
            groups.append(row["setting"][group_key])
    for group in groups:
        rows = [row for row in result.summary if row["setting"][group_key] == group]
        xs = [row["setting"][x_key] for row in rows]
        means = [np.nan if row[f"{metric}_mean"] is None else row[f"{metric}_mean"]
                 for row in rows]
        stds = [0 if row[f"{metric}_std"] is None else row[f"{metric}_std"] for row in rows]
        label = (labels or {}).get(group, str(group))
        line = axis.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3,
                             label=label, linewidth=1.2)
        lost = [x for x, row in zip(xs, rows) if row["ok"] == 0]
        if lost:
            axis.plot(lost, [0] * len(lost), "x", color=line[0].get_color(), markersize=8)
    if log_x:
        axis.set_xscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def sweep_figure(path, result, x_key, xlabel, title, ticks=None, descending=False):
    """The figure of a sweep: final test accuracy against ``x_key`` (log axis), one line per
    norm (see :func:`sweep_plot`); ``ticks``: label exactly these x values; ``descending``:
    the largest x on the left. Returns False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    figure, axis = plt.subplots(figsize=(4.4, 3.0))
    sweep_plot(axis, result, x_key, "norm", "test_accuracy", NORM_LABELS)
    if ticks is not None:
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
    if descending:
        axis.invert_xaxis()
    axis.set_xlabel(xlabel, fontsize=8)
    axis.set_ylabel("final test accuracy", fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_title(title, fontsize=8)
    return save(figure, path)


def finite_or_none(value):
    """A float, or None for NaN/Inf/None."""
    return None if value is None or not math.isfinite(value) else float(value)


NORM_LABELS = {"none": "no norm", "batch": "BatchNorm", "group": "GroupNorm",
               "layer": "LayerNorm", "instance": "InstanceNorm",
               "per-activation": "per-activation BN"}
"""How the figures name a ``norm`` setting."""


def norm_arg(name):
    """A setting's norm name as a builder's ``norm`` argument (``"none"`` -> None)."""
    return None if name == "none" else name
