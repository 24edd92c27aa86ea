"""Callbacks for :meth:`minidl.Trainer.fit`: hooks called during training, with Keras' semantics.

A callback overrides any of the hooks of :class:`Callback`. Epoch numbers start at 1 (the
``epoch 1/3`` the progress bar shows). A callback that keeps state across epochs (the best value
seen, the epochs waited) returns it from ``state_dict()`` and takes it back in
``load_state_dict()``, so a run resumed from a checkpoint behaves as if it had never stopped.

In a data-parallel job (:mod:`minidl.distributed`) every rank runs the callbacks with the same
logs (the Trainer sums them over the ranks); the callbacks that write files, ModelCheckpoint and
CSVLogger, write on rank 0 only and keep the same state on every rank.
"""
import csv
import io
import math
import os

from ._checks import positive_int
from .distributed import is_main_process
from .serialization import atomic_write, save

__all__ = ["Callback", "EvaluateEvery", "EarlyStopping", "ModelCheckpoint", "CSVLogger"]


class Callback:
    """Base class of callbacks: override any of these hooks (all do nothing by default).

    ``logs`` is a dict: for a step ``{"loss", "accuracy", "batch_size", "lr"}`` (``lr``: the
    learning rate the step used, or None when the optimizer has no ``lr``); for an epoch the
    values recorded in :class:`~minidl.trainer.History` (``"loss"``, ``"accuracy"`` and, with a
    validation loader, ``"val_loss"``, ``"val_accuracy"``). ``trainer.global_step`` counts
    optimizer steps. Set ``trainer.stop_training = True`` to end :meth:`Trainer.fit` after the
    current step (the epoch is then closed as usual: validation, ``on_epoch_end``, checkpoint).

    ``on_train_end`` runs when ``fit`` ends normally or returns after a Ctrl-C with
    ``on_interrupt="return"``; not when it raises.
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

    def state_dict(self):
        """What a checkpoint should keep of this callback (a tree :func:`minidl.save` accepts)."""
        return {}

    def load_state_dict(self, state):
        """Take back what :meth:`state_dict` returned (called on resume, after ``on_train_begin``)."""


class EvaluateEvery(Callback):
    """Evaluate on ``loader`` every ``every`` optimizer steps (and after the last step).

    Used to draw convergence curves: test accuracy against the number of steps.

    Args:
        loader: iterable of ``(x, y)`` batches, e.g. the test set.
        every (int): evaluate when ``trainer.global_step % every == 0``; >= 1.
    Attributes:
        steps (list[int]): the global steps evaluated at.
        results (list[dict]): ``{"loss", "accuracy"}`` of :meth:`Trainer.evaluate` at each.
    Raises:
        ValueError: ``every`` is not an integer >= 1.
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

    def state_dict(self):
        return {"steps": list(self.steps), "results": [dict(r) for r in self.results]}

    def load_state_dict(self, state):
        self.steps = [int(s) for s in state["steps"]]
        self.results = [dict(r) for r in state["results"]]


class _Monitor:
    """A logged quantity to minimize or maximize, with Keras' ``mode="auto"`` rule."""

    def __init__(self, owner, monitor, mode, min_delta=0.0):
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"{owner}: monitor must be the name of a logged value such as "
                             f"'val_loss', got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":  # Keras: accuracies (and AUCs) are maximized, everything else minimized
            mode = "max" if "acc" in monitor or monitor.endswith("auc") else "min"
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) \
                or not math.isfinite(min_delta):
            raise ValueError(f"{owner}: min_delta must be a finite number, got {min_delta!r}")
        self.owner = owner
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(float(min_delta))

    @property
    def worst(self):
        """The starting "best" value: +inf when minimizing, -inf when maximizing."""
        return math.inf if self.mode == "min" else -math.inf

    def improved(self, current, reference):
        """Whether ``current`` beats ``reference`` by more than ``min_delta`` (NaN never does)."""
        if self.mode == "min":
            return current + self.min_delta < reference
        return current - self.min_delta > reference

    def value(self, logs):
        """The monitored value in an epoch's ``logs``; a clear error when it is not logged."""
        if self.monitor not in logs:
            hint = " (pass val_loader to fit() to log val_* values)" \
                if self.monitor.startswith("val_") else ""
            raise ValueError(f"{self.owner}: monitor {self.monitor!r} is not logged; the epoch's "
                             f"logs have {sorted(logs)}{hint}")
        return float(logs[self.monitor])


class EarlyStopping(Callback):
    """Stop training when a monitored value has stopped improving (Keras' ``EarlyStopping``).

    After every epoch the monitored value is compared with the best so far: an improvement of more
    than ``min_delta`` resets the count of epochs waited; otherwise the count grows, and once it
    reaches ``patience`` training stops (``trainer.stop_training``; never after the first epoch).
    With ``baseline``, the count is reset only by values that also beat the baseline.

    Args:
        monitor (str): a key of the epoch logs (default ``"val_loss"``; needs a ``val_loader``).
        min_delta (float): smallest change counted as an improvement (default 0).
        patience (int): epochs without improvement before stopping (default 0).
        mode (str): ``"min"``, ``"max"`` or ``"auto"`` (default: ``"max"`` when the name holds
            ``"acc"``, else ``"min"``).
        baseline (float, optional): a value the monitored quantity must beat.
        restore_best_weights (bool): when training ends, load the model's state (parameters and
            buffers) from the best epoch (Keras 3: also when training was not stopped early).

    Attributes:
        best (float): the best value seen; ``best_epoch`` (int): its epoch; ``wait`` (int): epochs
        since it; ``stopped_epoch`` (int): the epoch training was stopped at, 0 if it was not.

    Raises:
        ValueError: a bad argument; at the end of an epoch, ``monitor`` missing from the logs
            (Keras only warns).
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", baseline=None,
                 restore_best_weights=False):
        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0, got {patience!r}")
        self.patience = patience
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.best = self._monitor.worst
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.best_weights = None

    def on_train_begin(self, trainer):
        self._reset()

    def on_epoch_end(self, trainer, epoch, logs):
        current = self._monitor.value(logs)
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = trainer.model.state_dict()  # something to restore, even if no
            self.best_epoch = epoch                          # epoch ever improves
        self.wait += 1
        if self._monitor.improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = trainer.model.state_dict()
            if self.baseline is None or self._monitor.improved(current, self.baseline):
                self.wait = 0
        elif self.wait >= self.patience and epoch > 1:
            self.stopped_epoch = epoch
            trainer.stop_training = True

    def on_train_end(self, trainer):
        if self.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self):
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.wait = int(state["wait"])
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best_weights = state["best_weights"]


class ModelCheckpoint(Callback):
    """Save the model's ``state_dict`` with :func:`minidl.save` after epochs (Keras' ``ModelCheckpoint``).

    ``filepath`` may hold ``str.format`` fields filled from the epoch number and the epoch logs,
    e.g. ``"runs/model-{epoch:02d}-{val_loss:.3f}.ckpt"``; without fields the same file is
    overwritten (atomically). Folders in the path are created. Load a saved file with
    ``model.load_state_dict(minidl.load(path))``. Only the model is saved (Keras'
    ``save_weights_only=True``); :meth:`Trainer.fit`'s ``checkpoint_dir`` saves whole runs.

    Args:
        filepath (str or os.PathLike): where to save, used exactly as given after formatting.
        monitor (str): the value compared with ``save_best_only`` (default ``"val_loss"``).
        save_best_only (bool): save only when ``monitor`` improved on the best value so far
            (default False: save after every epoch).
        mode (str): ``"min"``, ``"max"`` or ``"auto"`` as in :class:`EarlyStopping`.

    Attributes:
        best (float): the best monitored value so far (with ``save_best_only``).
        saved (list[str]): the paths written, in order (in a data-parallel job rank 0 writes
            them and every rank lists them).

    Raises:
        ValueError: a bad argument; at the end of an epoch, a format field that is not the epoch
            or a logged value, or (with ``save_best_only``) ``monitor`` missing from the logs.
    """

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto"):
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(f"ModelCheckpoint: filepath must be a path, got {type(filepath).__name__}")
        self.filepath = os.fspath(filepath)
        self._monitor = _Monitor("ModelCheckpoint", monitor, mode)
        self.save_best_only = bool(save_best_only)
        self.best = self._monitor.worst
        self.saved = []

    def on_train_begin(self, trainer):
        self.best = self._monitor.worst

    def _path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch, **logs)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"ModelCheckpoint: cannot fill {self.filepath!r} ({error!r}); "
                             f"the fields available are epoch and {sorted(logs)}") from None

    def on_epoch_end(self, trainer, epoch, logs):
        if self.save_best_only:
            current = self._monitor.value(logs)
            if not self._monitor.improved(current, self.best):
                return
            self.best = current
        path = self._path(epoch, logs)
        if is_main_process():  # data parallel: rank 0 writes; the replicas are identical
            folder = os.path.dirname(path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            save(trainer.model.state_dict(), path)
        self.saved.append(path)

    def state_dict(self):
        return {"best": self.best, "saved": list(self.saved)}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.saved = [str(p) for p in state["saved"]]


class CSVLogger(Callback):
    """Write one row per epoch (the epoch number and its logs) to a CSV file (Keras' ``CSVLogger``).

    Columns: ``epoch`` (starting at 1, as shown by the progress bar; Keras counts from 0), then
    the logged names sorted (``accuracy, loss, val_accuracy, val_loss``). Floats are written with
    ``repr`` (exact). The whole file is rewritten atomically after every epoch
    (:func:`~minidl.serialization.atomic_write`), so it is always complete, never half a row.
    A value missing in some epoch is written as ``NA``; a name that first appears later adds a
    column. In a data-parallel job only rank 0 writes the file.

    Args:
        filename (str or os.PathLike): the CSV file; its folder must exist.
        separator (str): the field delimiter, one character (default ``","``).
        append (bool): keep the rows of an existing file and add to them (default False: the file
            is replaced at the end of the first epoch).

    Raises:
        ValueError: ``separator`` is not one character.
    """

    def __init__(self, filename, separator=",", append=False):
        if not isinstance(filename, (str, os.PathLike)):
            raise TypeError(f"CSVLogger: filename must be a path, got {type(filename).__name__}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = bool(append)
        self.fields = []
        self.rows = []

    def on_train_begin(self, trainer):
        self.fields, self.rows = [], []
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="", encoding="utf-8") as f:
                table = list(csv.reader(f, delimiter=self.separator))
            if table:
                self.fields = table[0]
                self.rows = [dict(zip(self.fields, row)) for row in table[1:]]

    def on_epoch_end(self, trainer, epoch, logs):
        row = {"epoch": str(epoch)}
        row.update((key, repr(value) if isinstance(value, float) else str(value))
                   for key, value in logs.items())
        if not self.fields:
            self.fields = ["epoch"]
        self.fields += sorted(key for key in row if key not in self.fields)
        self.rows.append(row)
        text = io.StringIO()
        writer = csv.writer(text, delimiter=self.separator, lineterminator="\n")
        writer.writerow(self.fields)
        writer.writerows([row.get(field, "NA") for field in self.fields] for row in self.rows)
        if is_main_process():  # data parallel: rank 0 writes; every rank has the same rows
            with atomic_write(self.filename, "w", encoding="utf-8", newline="") as f:
                f.write(text.getvalue())

    def state_dict(self):
        return {"fields": list(self.fields), "rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state):
        self.fields = [str(f) for f in state["fields"]]
        self.rows = [dict(r) for r in state["rows"]]
