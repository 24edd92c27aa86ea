"""Training loop: fit/evaluate with a tqdm progress bar, History and callbacks."""
import time

import numpy as np
from tqdm.auto import tqdm

from ._checks import positive_int
from .model import Sequential

__all__ = ["Trainer", "History", "Callback", "EvaluateEvery"]


class History:
    """What :meth:`Trainer.fit` measured, in the layout Keras users know.

    Attributes:
        step_loss (list[float]): the training loss of every optimizer step, in order.
        history (dict[str, list[float]]): per epoch ``"loss"`` and ``"accuracy"`` (means over
            the epoch's training batches, weighted by batch size) and, with a validation loader,
            ``"val_loss"`` and ``"val_accuracy"``. Accuracy is a fraction in [0, 1].
        epoch_time (list[float]): wall-clock seconds of each epoch (validation included).
    """

    def __init__(self):
        self.step_loss = []
        self.history = {"loss": [], "accuracy": []}
        self.epoch_time = []

    def record_epoch(self, logs, seconds):
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.epoch_time.append(float(seconds))

    def to_dict(self):
        """A JSON-serializable copy: ``{"step_loss": [...], "epoch_time": [...], **history}``."""
        return {"step_loss": list(self.step_loss), "epoch_time": list(self.epoch_time),
                **{k: list(v) for k, v in self.history.items()}}


class Callback:
    """Base class of callbacks: override any of these hooks (all do nothing by default).

    ``logs`` is a dict: for a step ``{"loss", "accuracy", "batch_size"}``, for an epoch the
    values recorded in :class:`History`. ``trainer.global_step`` counts optimizer steps.
    Set ``trainer.stop_training = True`` to end :meth:`Trainer.fit` after the current step.
    """

    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_step_end(self, trainer, step, logs):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer):
        pass


class EvaluateEvery(Callback):
    """Evaluate on ``loader`` every ``every`` optimizer steps (and after the last step).

    Used to draw convergence curves: test accuracy against the number of steps.

    Args:
        loader: iterable of ``(x, y)`` batches, e.g. the test set.
        every (int): evaluate when ``trainer.global_step % every == 0``; >= 1.
    Attributes:
        steps (list[int]): the global steps evaluated at.
        results (list[dict]): ``{"loss", "accuracy"}`` of :meth:`Trainer.evaluate` at each.
    """

    def __init__(self, loader, every):
        self.loader = loader
        self.every = positive_int(every, "every", "EvaluateEvery")
        self.steps = []
        self.results = []

    def _evaluate(self, trainer):
        if not self.steps or self.steps[-1] != trainer.global_step:
            self.steps.append(trainer.global_step)
            self.results.append(trainer.evaluate(self.loader, progress=False))

    def on_step_end(self, trainer, step, logs):
        if step % self.every == 0:
            self._evaluate(trainer)

    def on_train_end(self, trainer):
        self._evaluate(trainer)

    def first_step_reaching(self, accuracy):
        """The first evaluated step whose accuracy is >= ``accuracy``, or None."""
        for step, result in zip(self.steps, self.results):
            if result["accuracy"] >= accuracy:
                return step
        return None


def _accuracy_count(logits, y):
    return int(np.count_nonzero(np.argmax(logits, axis=1) == y))


class _ModeGuard:
    """Set a train/eval mode on a model and restore every submodule's previous mode on exit."""

    def __init__(self, model, training):
        self.model = model
        self.training = training

    def __enter__(self):
        self.saved = [(m, m.training) for _, m in self.model.named_modules()]
        self.model.train(self.training)

    def __exit__(self, *exc):
        for module, mode in self.saved:
            object.__setattr__(module, "training", mode)


class Trainer:
    """Fit a classifier with explicit forward/backward steps.

    One training step is ``logits = model(x)``, ``loss = loss_fn(logits, y)``,
    ``model.backward(loss_fn.backward())``, ``optimizer.step()``, ``optimizer.zero_grad()``.

    Args:
        model (Module): maps a batch ``x`` to logits ``(N, K)``.
        loss_fn: e.g. :class:`minidl.losses.CrossEntropyLoss`; ``loss_fn(logits, y)`` returns a
            float and ``loss_fn.backward()`` d loss / d logits.
        optimizer: e.g. :class:`minidl.optim.SGD` over ``model.parameters()``.
        progress (bool): show a tqdm progress bar (default True; fit/evaluate can override).
        callbacks (list[Callback]): hooks called during :meth:`fit`.
    """

    def __init__(self, model, loss_fn, optimizer, progress=True, callbacks=()):
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.progress = progress
        self.callbacks = list(callbacks)
        self.global_step = 0
        self.stop_training = False
        # a Sequential can skip the input's gradient, which training never uses
        self._backward_kwargs = {"input_grad": False} if isinstance(model, Sequential) else {}

    def _call(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def train_step(self, x, y):
        """One optimizer step on a batch; returns ``(loss, number of correct predictions)``."""
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        self.model.backward(self.loss_fn.backward(), **self._backward_kwargs)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.global_step += 1
        return loss, _accuracy_count(logits, y)

    def fit(self, train_loader, epochs=1, val_loader=None, progress=None):
        """Train for ``epochs`` passes over ``train_loader`` in training mode.

        Args:
            train_loader: iterable of ``(x, y)`` batches with ``len()`` (e.g.
                :class:`minidl.data.DataLoader`).
            epochs (int): >= 1.
            val_loader: optional; evaluated (in eval mode) after every epoch.
            progress (bool or None): override the trainer's ``progress`` setting.
        Returns:
            History: per-step loss and per-epoch loss/accuracy (and val_loss/val_accuracy).
        Raises:
            ValueError: ``epochs`` < 1, or a non-finite loss (the message names the step).
        The model's train/eval mode (of every submodule) is restored afterwards.
        """
        epochs = positive_int(epochs, "epochs", "Trainer.fit")
        show = self.progress if progress is None else progress
        history = History()
        self.stop_training = False
        with _ModeGuard(self.model, True):
            self._call("on_train_begin")
            for epoch in range(1, int(epochs) + 1):
                start = time.perf_counter()
                self._call("on_epoch_begin", epoch)
                logs = self._train_epoch(train_loader, epoch, epochs, history, show)
                if val_loader is not None:
                    val = self.evaluate(val_loader, progress=False)
                    logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                history.record_epoch(logs, time.perf_counter() - start)
                self._call("on_epoch_end", epoch, logs)
                if show:
                    tqdm.write(f"epoch {epoch}/{epochs}: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in logs.items()))
                if self.stop_training:
                    break
            self._call("on_train_end")
        return history

    def _train_epoch(self, loader, epoch, epochs, history, show):
        total_loss, total_correct, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not show, leave=False,
                   unit="batch", dynamic_ncols=True)
        for x, y in bar:
            loss, correct = self.train_step(x, y)
            if not np.isfinite(loss):
                bar.close()
                raise ValueError(f"Trainer.fit: the loss became {loss} at step {self.global_step}; "
                                 f"try a smaller learning rate")
            n = len(y)
            history.step_loss.append(float(loss))
            total_loss += loss * n
            total_correct += correct
            seen += n
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{total_correct / seen:.4f}",
                            refresh=False)
            self._call("on_step_end", self.global_step,
                       {"loss": float(loss), "accuracy": correct / n, "batch_size": n})
            if self.stop_training:
                break
        bar.close()
        if seen == 0:
            raise ValueError("Trainer.fit: the training loader yielded no batches")
        return {"loss": total_loss / seen, "accuracy": total_correct / seen}

    def evaluate(self, loader, progress=None):
        """Mean loss and accuracy over ``loader``, in eval mode (mode restored afterwards).

        Args:
            loader: iterable of ``(x, y)`` batches.
        Returns:
            dict: ``{"loss": float, "accuracy": float in [0, 1]}``, weighted by batch size.
        Raises:
            ValueError: the loader yields no batches.
        """
        show = self.progress if progress is None else progress
        total_loss, total_correct, seen = 0.0, 0, 0
        with _ModeGuard(self.model, False):
            for x, y in tqdm(loader, desc="evaluate", disable=not show, leave=False, unit="batch"):
                logits = self.model(x)
                total_loss += self.loss_fn(logits, y) * len(y)
                total_correct += _accuracy_count(logits, y)
                seen += len(y)
        if seen == 0:
            raise ValueError("Trainer.evaluate: the loader yielded no batches")
        return {"loss": total_loss / seen, "accuracy": total_correct / seen}
