"""landscape: Santurkar et al. (2018), figure 4, in miniature: how smooth is the loss along the
gradient, with and without BatchNorm?

Every ``--measure-every`` steps of training, on one fixed training batch (the "probe"), with the
parameters ``w`` of that moment and the network in training mode: take the gradient ``g`` and
the loss ``L(w)``, then for every step size ``eta`` of ``--step-sizes`` move to
``w - eta * g`` and take the loss and gradient ``g_eta`` there. Recorded per measurement:

* the loss landscape: the smallest and largest of ``L(w - eta g)`` over the step sizes
  (figure 4a: the range of the loss along the gradient);
* gradient predictiveness: the smallest and largest ``||g_eta - g||`` (figure 4b);
* effective beta-smoothness: ``max_eta ||g_eta - g|| / ||eta g||`` (figure 4c).

The parameters, running statistics and gradients are put back before training continues, so the
measurement does not change the run. The network is the VGG-style CIFAR-10 CNN
(:func:`minidl.models.vgg_cifar`, ``--width``) with BatchNorm after every convolution and
without (the paper's networks are VGG on CIFAR-10 too). Defaults: width 0.5, 150 steps of
batch 64 at lr 0.05, a measurement every 15, 4 runs (2 settings x 2 seeds): 33 s of wall-clock
time and 61 s of CPU time (user + system; 2 kernel threads on a 2-core machine with nothing else
running, 3 December 2026); ``--full``: full width, 10,000 steps.
"""
import numpy as np

from .. import data, losses, models
from ..callbacks import Callback
from . import _common
from .runner import Experiment, Option, experiment_function


class LandscapeProbe(Callback):
    """Every ``every`` optimizer steps, measure the loss and gradient along ``-g`` on one batch.

    Args:
        x, y: the probe batch (images, labels).
        step_sizes (sequence of float): the ``eta`` to move by.
        every (int): optimizer steps between measurements.
    Attributes:
        rows (dict): ``step``, ``loss``, ``loss_min``, ``loss_max``, ``grad_change_min``,
            ``grad_change_max``, ``beta`` (lists, one entry per measurement).
    """

    def __init__(self, x, y, step_sizes, every):
        self.x, self.y, self.step_sizes, self.every = x, y, list(step_sizes), every
        self.loss_fn = losses.CrossEntropyLoss()
        self.rows = {k: [] for k in ("step", "loss", "loss_min", "loss_max", "grad_change_min",
                                     "grad_change_max", "beta")}

    def _loss_and_gradient(self, model, params):
        for p in params:
            p.zero_grad()
        loss = float(self.loss_fn(model(self.x), self.y))
        model.backward(self.loss_fn.backward(), input_grad=False)
        return loss, np.concatenate([p.grad.ravel().astype(np.float64) for p in params])

    def measure(self, model, step):
        params = list(model.parameters())
        saved = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
        weights = [p.data.copy() for p in params]
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                loss, g = self._loss_and_gradient(model, params)
                norm = float(np.linalg.norm(g))
                losses_, changes, betas = [loss], [], []
                for eta in self.step_sizes:
                    offset = 0
                    for p, w in zip(params, weights):
                        size = p.data.size
                        p.data[...] = w - eta * g[offset:offset + size].reshape(w.shape)
                        offset += size
                    model.load_state_dict({k: v for k, v in saved.items()
                                           if k not in dict(model.named_parameters())},
                                          strict=False)
                    moved_loss, moved_g = self._loss_and_gradient(model, params)
                    change = float(np.linalg.norm(moved_g - g))
                    losses_.append(moved_loss)
                    changes.append(change)
                    betas.append(change / (eta * norm) if norm > 0 else float("nan"))
        finally:
            for p, w in zip(params, weights):
                p.data[...] = w
                p.zero_grad()
            model.load_state_dict(saved)
        for key, value in (("step", step), ("loss", loss), ("loss_min", min(losses_)),
                           ("loss_max", max(losses_)), ("grad_change_min", min(changes)),
                           ("grad_change_max", max(changes)), ("beta", max(betas))):
            self.rows[key].append(value)

    def on_train_begin(self, trainer):
        self.measure(trainer.model, 0)

    def on_step_end(self, trainer, step, logs):
        if step % self.every == 0:
            self.measure(trainer.model, step)


def plan(config):
    return [{"norm": norm} for norm in ("batch", "none")]


def run(spec, config):
    """One run: ``spec["setting"]["norm"]`` is ``"batch"`` or ``"none"``."""
    _common.seeded(spec["seed"])
    model = models.vgg_cifar(norm=_common.norm_arg(spec["setting"]["norm"]),
                             width=config["width"])
    train_set, _ = _common.load("cifar10", config["root"], config["train_samples"], 1)
    probe_loader = data.DataLoader(train_set, batch_size=config["batch_size"], shuffle=True,
                                   seed=10_000 + spec["seed"])
    x, y = next(iter(probe_loader))
    probe = LandscapeProbe(x, y, config["step_sizes"], config["measure_every"])
    record = _common.train_run(model, spec["seed"], config, "cifar10", callbacks=[probe])
    rows = probe.rows
    record["curves"]["landscape"] = rows
    finite = [i for i, v in enumerate(rows["loss_max"]) if np.isfinite(v)]
    if finite:
        spans = [rows["loss_max"][i] - rows["loss_min"][i] for i in finite]
        record["final"].update(
            loss_range_mean=float(np.mean(spans)),
            grad_change_mean=float(np.mean([rows["grad_change_max"][i] for i in finite])),
            beta_mean=float(np.mean([rows["beta"][i] for i in finite])))
    return record


def plot(path, result):
    plt = _common.pyplot()
    if plt is None:
        return False
    figure, axes = plt.subplots(1, 3, figsize=(10, 2.9))
    panels = (("loss_min", "loss_max", "(a) loss along the gradient"),
              ("grad_change_min", "grad_change_max", "(b) gradient change ||g' - g||"),
              (None, "beta", "(c) effective beta-smoothness"))
    for axis, (low, high, title) in zip(axes, panels):
        for index, norm in enumerate(("batch", "none")):
            runs = _common.group_runs(result, "norm", norm)
            steps, top, _ = _common.mean_curve(runs, "landscape", high)
            if not len(steps):
                continue
            color = f"C{index}"
            if low:
                _, bottom, _ = _common.mean_curve(runs, "landscape", low)
                axis.fill_between(steps, bottom, top, color=color, alpha=0.35,
                                  label=_common.NORM_LABELS[norm])
            else:
                axis.plot(steps, top, color=color, label=_common.NORM_LABELS[norm])
        axis.set_title(title, fontsize=9)
        axis.set_yscale("log")
        _common.step_axis(axis)
    return _common.save(figure, path)


EXPERIMENT = Experiment(
    name="landscape",
    summary="Santurkar et al. 2018 fig. 4 in miniature: loss range, gradient predictiveness "
            "and effective beta-smoothness along the gradient, with and without BN",
    description=__doc__,
    options=(
        Option("step_sizes", _common.float_list, [0.05, 0.1, 0.2, 0.4],
               "comma-separated step sizes eta to move along the gradient"),
        Option("measure_every", _common.positive_int, 15, "steps between measurements", 500),
        Option("width", _common.positive_float, 0.5, "channel multiplier of vgg_cifar", 1.0),
    ) + _common.training_options(steps=150, lr=0.05, eval_every=50,
                                 full={"steps": 10000, "eval_every": 500,
                                       "curve_samples": 10000}),
    plan=plan, run=run, plot=plot,
    metrics=(("test_accuracy", "final test accuracy"),
             ("loss_range_mean", "mean loss range"),
             ("grad_change_mean", "mean max grad change"),
             ("beta_mean", "mean effective beta")),
    full_note="full-width vgg_cifar, 10,000 steps, a measurement every 500 steps",
)

landscape = experiment_function(EXPERIMENT.name, "landscape")
