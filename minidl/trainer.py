"""Training loop: fit/evaluate with a tqdm progress bar, History, callbacks, checkpoints, resume.

:meth:`Trainer.fit` can write a checkpoint of the whole run (``checkpoint_dir``) and continue
from it (``resume=True``) so that an interrupted run ends bit-identical to one that never
stopped; Ctrl-C stops it between two steps; a non-finite loss stops it before the step is
applied. See :meth:`Trainer.fit` for the exact promises.

**Data-parallel jobs** (several processes started by ``mpiexec``, see :mod:`minidl.distributed`):
the same Trainer code runs on every rank. Only rank 0 draws progress bars, prints and writes
checkpoints (:class:`~minidl.callbacks.ModelCheckpoint` and
:class:`~minidl.callbacks.CSVLogger` also write on rank 0 only); the numbers a step or an
evaluation reports are summed over the ranks (:func:`minidl.distributed.reduce_metrics`), so
History, callbacks and checkpoints are identical on every rank. Every piece of this marked
"data parallel" below; in a single process none of it communicates or changes a result.
"""
import itertools
import os
import signal
import threading
import time

import numpy as np
from tqdm.auto import tqdm

from ._checks import positive_int
from ._grad_mode import no_grad
from ._random import get_rng
from .callbacks import Callback, EvaluateEvery
from .distributed import barrier, get_world_size, is_main_process, reduce_metrics
from .layers.module import Module
from .serialization import load, save

__all__ = ["Trainer", "History", "Callback", "EvaluateEvery", "NonFiniteLossError"]

CHECKPOINT_VERSION = 1


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the step was not applied.

    Attributes:
        loss (float): the non-finite loss.
        step (int): the optimizer step that would have been taken (``trainer.global_step + 1``).
        epoch (int or None), batch (int or None): where, 1-based, when raised by :meth:`Trainer.fit`.
        input_finite (bool or None): whether every value of the input batch was finite (None when
            the batch is not a numeric array).
    """

    def __init__(self, loss, step, input_finite, epoch=None, batch=None):
        self.loss, self.step, self.input_finite = loss, step, input_finite
        self.epoch, self.batch = epoch, batch
        where = f" (epoch {epoch}, batch {batch})" if epoch is not None else ""
        if input_finite is False:
            cause = "the input batch itself holds NaN or Inf values: check the data"
        elif input_finite is True:
            cause = ("the input batch is finite, so the model diverged: try a smaller learning "
                     "rate (or normalize the inputs)")
        else:
            cause = "the input batch could not be checked for NaN/Inf"
        super().__init__(
            f"Trainer: the loss became {loss} at step {step}{where}; {cause}. The step was not "
            "applied: parameters, optimizer state and running statistics are those of the last "
            "good step")


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

    def state_dict(self):
        """The recorded values as float64 arrays (exact), for checkpoints."""
        return {"step_loss": np.asarray(self.step_loss, dtype=np.float64),
                "history": {k: np.asarray(v, dtype=np.float64) for k, v in self.history.items()},
                "epoch_time": np.asarray(self.epoch_time, dtype=np.float64)}

    def load_state_dict(self, state):
        """Replace the recorded values with those of :meth:`state_dict`."""
        self.step_loss = [float(v) for v in np.asarray(state["step_loss"], dtype=np.float64)]
        self.history = {str(k): [float(v) for v in np.asarray(values, dtype=np.float64)]
                        for k, values in state["history"].items()}
        self.epoch_time = [float(v) for v in np.asarray(state["epoch_time"], dtype=np.float64)]


def _accuracy_count(logits, y):
    return int(np.count_nonzero(np.argmax(logits, axis=1) == y))


def _all_finite(x):
    """Whether every value of ``x`` is finite; None when ``x`` is not a numeric array."""
    try:
        array = np.asarray(x)
        return bool(np.isfinite(array).all()) if array.dtype.kind in "biufc" else None
    except (TypeError, ValueError):
        return None


def _module_rngs(model):
    """``{name: Generator}`` for every module with a NumPy Generator in its ``rng`` attribute."""
    return {name: module.rng for name, module in model.named_modules()
            if isinstance(getattr(module, "rng", None), np.random.Generator)}


def _check_progress(owner, progress):
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"{owner}: progress must be None, True or False, got {progress!r}")
    return progress


def _disable(progress):
    """tqdm's ``disable`` for a progress setting: None shows the bar only on a terminal.

    Data parallel: ranks other than 0 never draw one."""
    if not is_main_process():
        return True
    return None if progress is None else not progress


def _sum_over_ranks(loss_sum, correct, count):
    """Data parallel: ``(loss_sum, correct, count)`` summed over the ranks of the job (every
    rank gets the same totals); in a single process the values unchanged."""
    if get_world_size() == 1:
        return loss_sum, correct, count
    totals = reduce_metrics({"loss_sum": loss_sum, "correct": correct, "count": count})
    return totals["loss_sum"], int(totals["correct"]), int(totals["count"])


def _checkpoint_exists(path):
    """Whether ``path`` exists. Data parallel: every rank reads the checkpoint rank 0 wrote, so
    the ranks must agree (a ValueError on every rank otherwise)."""
    exists = os.path.exists(path)
    if get_world_size() > 1:
        found = int(reduce_metrics({"ranks_with_checkpoint": exists})["ranks_with_checkpoint"])
        if 0 < found < get_world_size():
            raise ValueError(f"Trainer.fit: {path!r} exists on {found} of {get_world_size()} "
                             f"ranks; every rank resumes from the checkpoint rank 0 writes, so "
                             f"checkpoint_dir must be a folder every rank can read (a shared "
                             f"file system)")
    return exists


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


class _StepSnapshot:
    """The model's buffers and module RNG states before a forward pass, to undo a failed step.

    Buffers (BatchNorm's running statistics) are small, so a copy per step costs little.
    """

    def __init__(self, model):
        self.model = model
        self.buffers = [(name, value.copy()) for name, value in model.named_buffers()
                        if isinstance(value, np.ndarray)]
        self.rngs = [(rng, rng.bit_generator.state) for rng in _module_rngs(model).values()]

    def restore(self):
        current = dict(self.model.named_buffers())
        for name, saved in self.buffers:
            np.copyto(current[name], saved)
        for rng, state in self.rngs:
            rng.bit_generator.state = state


class _DeferredSigint:
    """While active (main thread only), a first SIGINT only sets ``pending``; a second raises
    KeyboardInterrupt at once. The previous handler is restored on exit."""

    def __init__(self):
        self.pending = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            # None: a handler installed outside Python; SIG_IGN: the user ignores Ctrl-C
            if previous is not None and previous is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, self._handle)
                self._previous = previous
        return self

    def _handle(self, signum, frame):
        if self.pending:
            raise KeyboardInterrupt("Trainer.fit: second Ctrl-C, stopped at once; the current "
                                    "step may be half-applied")
        self.pending = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _Interrupted(Exception):
    """Raised inside fit when a deferred Ctrl-C is acted on."""


class _Position:
    """Where a run is: everything a checkpoint holds besides the objects' own states."""

    FIELDS = ("epoch", "step", "steps_done", "loader_epoch", "total_loss", "total_correct",
              "seen", "elapsed", "global_step", "stop_training")

    def __init__(self, loader_epoch=0):
        self.epoch = 0             # completed epochs
        self.loader_epoch = int(loader_epoch)
        self.global_step = 0
        self.stop_training = False
        self.start_epoch()

    def start_epoch(self):
        self.step = 0              # steps done in the current epoch
        self.steps_done = False    # the current epoch's steps are over (validation pending)
        self.total_loss, self.total_correct, self.seen = 0.0, 0, 0
        self.started = time.perf_counter()

    def state_dict(self):
        self.elapsed = time.perf_counter() - self.started
        return {name: getattr(self, name) for name in self.FIELDS}

    def load_state_dict(self, state):
        for name, kind in zip(self.FIELDS, (int, int, bool, int, float, int, int, float, int, bool)):
            setattr(self, name, kind(state[name]))
        self.started = time.perf_counter() - self.elapsed


class Trainer:
    """Fit a classifier with explicit forward/backward steps.

    One training step is ``logits = model(x)``, ``loss = loss_fn(logits, y)``,
    ``model.backward(loss_fn.backward(), input_grad=False)``, ``optimizer.step()``,
    ``optimizer.zero_grad()`` (and ``scheduler.step()`` with ``scheduler_interval="step"``).

    **Data-parallel training** works unchanged: start the script on W processes
    (``mpiexec -n W``), call :func:`minidl.distributed.init`, wrap the model in
    :class:`~minidl.distributed.DistributedDataParallel` and give each rank its shard of the
    data (``DataLoader(..., num_shards=W, shard_index=rank)``). Then, when the world has more
    than one rank:

    * only rank 0 draws progress bars and prints the epoch summaries;
    * only rank 0 writes ``checkpoint_dir/last.ckpt`` (and ModelCheckpoint / CSVLogger files);
      ``resume`` reads it on every rank, so ``checkpoint_dir`` must be readable by all ranks
      (one machine, or a shared file system);
    * each step's loss, correct count and batch size are summed over the ranks (one small
      ``reduce_metrics`` per step), so ``History``, the progress bar, the callbacks' logs and
      the checkpoints hold the figures of the global batch, the same on every rank, and
      callbacks such as EarlyStopping decide alike everywhere; :meth:`evaluate` sums in the same
      way (see there for how a sharded loader's padding is counted);
    * every rank must run the same ``fit``/``evaluate`` calls (they communicate). A custom
      callback that writes files should check :func:`minidl.distributed.is_main_process`, and
      one that sets ``stop_training`` must decide the same on every rank.

    Args:
        model (Module): maps a batch ``x`` to logits ``(N, K)``; its ``backward(dout,
            input_grad=False)`` accumulates parameter gradients.
        loss_fn: e.g. :class:`minidl.losses.CrossEntropyLoss`; ``loss_fn(logits, y)`` returns a
            float and ``loss_fn.backward()`` d loss / d logits.
        optimizer: e.g. :class:`minidl.optim.SGD` over ``model.parameters()``; needs
            ``step()``, ``zero_grad()``, ``state_dict()``, ``load_state_dict()``; its ``lr`` is shown.
        progress (bool or None): show tqdm progress bars. None (default) follows tqdm's
            ``disable=None`` rule: bars only when stderr is a terminal, so logs and CI get no
            carriage-return updates (the one-line summary per epoch is still printed); True/False
            force them on/off (False also hides the summary). fit/evaluate can override it.
        callbacks (list[Callback]): hooks called during :meth:`fit`.
        scheduler: optional learning-rate scheduler with PyTorch's ``LRScheduler`` interface
            (``step()``, ``state_dict()``, ``load_state_dict()``), built on ``optimizer``.
        scheduler_interval (str): ``"epoch"`` (default: ``scheduler.step()`` after each epoch's
            validation) or ``"step"`` (after each optimizer step).

    Attributes:
        global_step (int): optimizer steps taken (kept across :meth:`fit` calls, restored on resume).
        stop_training (bool): set by a callback to end :meth:`fit` after the current step.

    Raises:
        TypeError: a ``model`` that is not a :class:`minidl.layers.Module`; a ``loss_fn``
            without ``__call__`` and ``backward``; an ``optimizer`` without ``step``,
            ``zero_grad``, ``state_dict`` and ``load_state_dict``; a callback that is not a
            :class:`Callback`; a scheduler without the interface.
        ValueError: an unknown ``scheduler_interval``.
    """

    CHECKPOINT_NAME = "last.ckpt"

    def __init__(self, model, loss_fn, optimizer, progress=None, callbacks=(), scheduler=None,
                 scheduler_interval="epoch"):
        if not isinstance(model, Module):
            raise TypeError(f"Trainer: expected model to be a minidl Module (e.g. a "
                            f"Sequential), got {type(model).__name__}")
        for name, value, needed in (
                ("loss_fn", loss_fn, ("__call__", "backward")),
                ("optimizer", optimizer, ("step", "zero_grad", "state_dict", "load_state_dict"))):
            lacking = [m for m in needed if not callable(getattr(value, m, None))]
            if lacking:
                raise TypeError(f"Trainer: {name} ({type(value).__name__}) lacks "
                                f"{', '.join(lacking)}")
        try:
            callbacks = list(callbacks)
        except TypeError:
            raise TypeError(f"Trainer: callbacks must be a list of minidl.Callback, got "
                            f"{type(callbacks).__name__}") from None
        for index, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                raise TypeError(f"Trainer: callbacks[{index}] is a {type(callback).__name__}, "
                                "not a minidl.Callback")
        if scheduler is not None:
            lacking = [m for m in ("step", "state_dict", "load_state_dict")
                       if not callable(getattr(scheduler, m, None))]
            if lacking:
                raise TypeError(f"Trainer: the scheduler ({type(scheduler).__name__}) lacks "
                                f"{', '.join(lacking)} (PyTorch's LRScheduler interface)")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"Trainer: scheduler_interval must be 'epoch' or 'step', got "
                             f"{scheduler_interval!r}")
        _check_progress("Trainer", progress)
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.progress = progress
        self.callbacks = callbacks
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.global_step = 0
        self.stop_training = False

    def _call(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    @property
    def _lr(self):
        lr = getattr(self.optimizer, "lr", None)
        return None if lr is None else float(lr)

    # ----------------------------------------------------------------- one step
    def train_step(self, x, y):
        """One optimizer step on a batch; returns ``(loss, number of correct predictions)`` of
        this batch (in a data-parallel job: of this rank's batch, not summed over the ranks).

        If the loss is not finite, or the forward/loss/backward raises, the step is undone before
        anything is applied: buffers (running statistics) and module RNGs are restored from a
        copy taken before the forward, gradients are zeroed, the optimizer is not stepped.

        Raises:
            NonFiniteLossError: the loss is NaN or infinite (it says whether ``x`` was finite).
        """
        return self._train_step(x, y, None, None)

    def _train_step(self, x, y, epoch, batch):
        snapshot = _StepSnapshot(self.model)
        try:
            logits = self.model(x)
            loss = float(self.loss_fn(logits, y))
            if not np.isfinite(loss):
                raise NonFiniteLossError(loss, self.global_step + 1, _all_finite(x), epoch, batch)
            self.model.backward(self.loss_fn.backward(), input_grad=False)
        except BaseException:
            snapshot.restore()
            self.optimizer.zero_grad()
            raise
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.global_step += 1
        return loss, _accuracy_count(logits, y)

    # ----------------------------------------------------------------- fit
    def fit(self, train_loader, epochs=1, val_loader=None, progress=None, checkpoint_dir=None,
            checkpoint_every=None, resume=False, on_interrupt="raise"):
        """Train for ``epochs`` passes over ``train_loader`` in training mode.

        **Checkpoints.** With ``checkpoint_dir``, the whole run is saved with :func:`minidl.save`
        (atomically) to ``checkpoint_dir/last.ckpt`` at the end of every epoch and, with
        ``checkpoint_every=n``, after every ``n``-th optimizer step (counting
        ``trainer.global_step``). A checkpoint holds the model's and optimizer's (and
        scheduler's) ``state_dict``, minidl's global random generator, the ``rng`` Generator of
        every module that has one (e.g. Dropout), the train loader's ``state_dict()`` (position
        in the epoch, seed), the epoch, the step within the epoch, ``global_step``, the
        :class:`History`, the partial sums of the current epoch and every callback's
        ``state_dict()``. The model itself is in ``minidl.load(path)["model"]``.

        **Resume.** ``resume=True`` loads ``checkpoint_dir/last.ckpt`` and continues the run up
        to ``epochs`` (the total, as in the first call): a run stopped at any step and resumed
        with the same data, seed and thread count ends with parameters, buffers, optimizer state
        and History bit-identical to a run that never stopped. ``resume="auto"`` resumes when
        the file exists and starts afresh otherwise. A loader without ``state_dict()`` /
        ``load_state_dict()`` (e.g. a list of batches) is resumed mid-epoch by skipping the
        batches already used, which is exact only if it yields the same batches every epoch.
        A resumed epoch calls ``on_epoch_begin`` again.

        **Ctrl-C** (SIGINT, when ``fit`` runs in the main thread) is deferred to the end of the
        current step (or validation batch), so a step is applied completely or not at all; then a
        checkpoint is written (with ``checkpoint_dir``), the model's train/eval modes are
        restored and ``KeyboardInterrupt`` is raised -- or, with ``on_interrupt="return"``,
        ``on_train_end`` runs and the History so far is returned. A second Ctrl-C while waiting
        raises ``KeyboardInterrupt`` at once (the current step may then be half-applied; the
        last checkpoint is intact). The previous SIGINT handler is restored when fit returns.

        **Non-finite loss.** Detected before the backward pass; the step is undone (see
        :meth:`train_step`) and :class:`NonFiniteLossError` is raised.

        Args:
            train_loader: re-iterable of ``(x, y)`` batches, ideally with ``len()`` and, for exact
                resume, ``state_dict()``/``load_state_dict()``/``set_epoch()`` (e.g.
                :class:`minidl.data.DataLoader`). ``set_epoch(e)`` is called before each epoch
                with the loader's epoch counter (starting from ``train_loader.epoch``).
            epochs (int): total number of epochs, >= 1.
            val_loader: optional; evaluated (in eval mode) after every epoch.
            progress (bool or None): override the trainer's ``progress`` setting.
            checkpoint_dir (str or os.PathLike, optional): folder for ``last.ckpt`` (created).
            checkpoint_every (int, optional): also checkpoint every this many steps; >= 1.
            resume (bool or "auto"): continue from ``checkpoint_dir/last.ckpt``.
            on_interrupt (str): ``"raise"`` (default) or ``"return"``, for Ctrl-C.
        Returns:
            History: per-step loss and per-epoch loss/accuracy (and val_loss/val_accuracy); on
            resume, including the epochs before the interruption.
        Raises:
            ValueError: ``epochs`` < 1, a bad ``checkpoint_every``/``resume``/``on_interrupt``,
                ``checkpoint_every`` or ``resume`` without ``checkpoint_dir``, a loader yielding
                no batches or a batch that is not a pair, a checkpoint that does not fit this
                trainer (the model is then unchanged).
            NotADirectoryError: ``checkpoint_dir`` is a file.
            FileNotFoundError: ``resume=True`` and no checkpoint (the message gives the path).
            NonFiniteLossError: the loss became NaN/Inf.
            KeyboardInterrupt: Ctrl-C (unless ``on_interrupt="return"``).
        The model's train/eval mode (of every submodule) is restored afterwards.
        """
        epochs = positive_int(epochs, "epochs", "Trainer.fit")
        if checkpoint_every is not None:
            checkpoint_every = positive_int(checkpoint_every, "checkpoint_every", "Trainer.fit")
        if on_interrupt not in ("raise", "return"):
            raise ValueError(f"Trainer.fit: on_interrupt must be 'raise' or 'return', got {on_interrupt!r}")
        if not (resume is True or resume is False or resume == "auto"):
            raise ValueError(f"Trainer.fit: resume must be True, False or 'auto', got {resume!r}")
        _check_progress("Trainer.fit", progress)
        path = self._checkpoint_path(checkpoint_dir)
        for name, value in (("checkpoint_every", checkpoint_every), ("resume", resume)):
            if value and path is None:
                raise ValueError(f"Trainer.fit: {name}={value!r} needs a checkpoint_dir")
        for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
            # hasattr, not iter(): iter() may draw a shuffle
            if (loader is not None or name == "train_loader") and \
                    not hasattr(type(loader), "__iter__"):
                raise TypeError(f"Trainer.fit: {name} must be an iterable of (x, y) batches, "
                                f"got {type(loader).__name__}")

        run = _Run(train_loader, val_loader, epochs, self.progress if progress is None else progress,
                   path, checkpoint_every)
        history = History()
        position = _Position(getattr(train_loader, "epoch", 0))
        position.global_step = self.global_step
        self.stop_training = False
        with _ModeGuard(self.model, True), _DeferredSigint() as sigint:
            run.sigint = sigint
            self._call("on_train_begin")
            if resume is True or (resume == "auto" and _checkpoint_exists(path)):
                run.loader_restored = self._resume(path, run, position, history)
                if get_world_size() > 1:  # data parallel: rank 0 overwrites the file only
                    barrier()             # after every rank has read it
            try:
                while position.epoch < epochs and not self.stop_training:
                    self._fit_epoch(run, position, history)
                if sigint.pending:  # a Ctrl-C during the last epoch's end
                    raise _Interrupted
            except _Interrupted:
                if path is not None:
                    self._save_checkpoint(run, position, history)
                where = f"after step {self.global_step}" + (
                    f"; checkpoint written to {path}" if path is not None else "")
                if on_interrupt == "raise":
                    raise KeyboardInterrupt(f"Trainer.fit interrupted {where}") from None
                if is_main_process():
                    tqdm.write(f"Trainer.fit interrupted {where}")
            self._call("on_train_end")
        return history

    def _checkpoint_path(self, checkpoint_dir):
        if checkpoint_dir is None:
            return None
        if not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"Trainer.fit: checkpoint_dir must be a path, got "
                            f"{type(checkpoint_dir).__name__}")
        folder = os.fspath(checkpoint_dir)
        if isinstance(folder, bytes):
            folder = os.fsdecode(folder)
        if not folder:
            raise ValueError("Trainer.fit: checkpoint_dir is an empty path; give a folder, e.g. "
                             "'runs/mnist' (or '.' for the current folder)")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(f"Trainer.fit: checkpoint_dir {folder!r} is a file, not a folder")
        if is_main_process():  # data parallel: rank 0 writes the checkpoints
            os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, self.CHECKPOINT_NAME)

    def _fit_epoch(self, run, position, history):
        number = position.epoch + 1
        loader = run.train_loader
        resumed_inside = position.step > 0 or position.steps_done
        if not (resumed_inside and run.loader_restored) and hasattr(loader, "set_epoch"):
            loader.set_epoch(position.loader_epoch)
        self._call("on_epoch_begin", number)
        if not position.steps_done:
            self._train_steps(run, position, history, number, skip=0 if run.loader_restored
                              else position.step)
        run.loader_restored = False
        if position.seen == 0:
            hint = (" (an iterator or generator can be iterated only once; pass a DataLoader or "
                    "a list)" if iter(loader) is loader else "")
            raise ValueError(f"Trainer.fit: the training loader yielded no batches in epoch "
                             f"{number}{hint}")
        logs = {"loss": position.total_loss / position.seen,
                "accuracy": position.total_correct / position.seen}
        if run.val_loader is not None:
            val = self._evaluate(run.val_loader, False, run.sigint)
            logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        # From here the end of the epoch is applied as a whole; a Ctrl-C waits for the checkpoint.
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        history.record_epoch(logs, time.perf_counter() - position.started)
        self._call("on_epoch_end", number, logs)
        if run.progress is not False and is_main_process():
            lr = self._lr
            tqdm.write(f"epoch {number}/{run.epochs}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in logs.items()) + ("" if lr is None else f", lr {lr:.4g}"))
        position.epoch += 1
        position.loader_epoch += 1
        position.start_epoch()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(position.loader_epoch)
        if run.path is not None:
            self._save_checkpoint(run, position, history)

    def _train_steps(self, run, position, history, number, skip):
        loader = run.train_loader
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = tqdm(total=total, initial=position.step, desc=f"epoch {number}/{run.epochs}",
                   disable=_disable(run.progress), leave=False, unit="batch", dynamic_ncols=True)
        try:
            for batch in itertools.islice(iter(loader), skip, None):
                x, y = self._unpack(batch)
                lr = self._lr
                loss, correct = self._train_step(x, y, number, position.step + 1)
                if self.scheduler is not None and self.scheduler_interval == "step":
                    self.scheduler.step()
                n = len(y)
                if get_world_size() > 1:  # data parallel: the step over every rank's samples
                    loss_sum, correct, n = _sum_over_ranks(loss * n, correct, n)
                    loss = loss_sum / n
                history.step_loss.append(loss)
                position.step += 1
                position.total_loss += loss * n
                position.total_correct += correct
                position.seen += n
                bar.update(1)
                postfix = {"loss": f"{position.total_loss / position.seen:.4f}",
                           "acc": f"{position.total_correct / position.seen:.4f}"}
                if lr is not None:
                    postfix["lr"] = f"{lr:.3g}"
                bar.set_postfix(postfix, refresh=False)
                self._call("on_step_end", self.global_step,
                           {"loss": loss, "accuracy": correct / n, "batch_size": n, "lr": lr})
                if self.stop_training or (total is not None and position.step >= total):
                    position.steps_done = True  # a checkpoint now must not ask the loader for more
                if run.every is not None and self.global_step % run.every == 0:
                    self._save_checkpoint(run, position, history)
                if run.sigint.pending:
                    raise _Interrupted
                if self.stop_training:
                    break
            position.steps_done = True
        finally:
            bar.close()

    @staticmethod
    def _unpack(batch):
        try:
            x, y = batch
        except (TypeError, ValueError):
            size = f" of {len(batch)}" if hasattr(batch, "__len__") else ""
            raise ValueError(f"Trainer.fit: expected each batch to be a pair (x, y), got a "
                             f"{type(batch).__name__}{size}") from None
        return x, y

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint(self, run, position, history):
        position.global_step = self.global_step
        position.stop_training = bool(self.stop_training)
        loader = run.train_loader
        return {
            "minidl_trainer_checkpoint": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": {"minidl": get_rng().bit_generator.state,
                    "modules": {name: rng.bit_generator.state
                                for name, rng in _module_rngs(self.model).items()}},
            "loader": loader.state_dict() if callable(getattr(loader, "state_dict", None)) else None,
            "position": position.state_dict(),
            "history": history.state_dict(),
            "callbacks": {f"{i}:{type(c).__name__}": c.state_dict()
                          for i, c in enumerate(self.callbacks)},
        }

    def _save_checkpoint(self, run, position, history):
        if is_main_process():  # data parallel: every rank holds the same state; rank 0 writes
            save(self._checkpoint(run, position, history), run.path)

    def _resume(self, path, run, position, history):
        """Load ``path`` into the trainer; all or nothing. Returns whether the loader was restored."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"Trainer.fit(resume=True): no checkpoint at {path!r} "
                                    f"(fit writes {self.CHECKPOINT_NAME} into checkpoint_dir)")
        state = load(path)
        if not isinstance(state, dict) or state.get("minidl_trainer_checkpoint") != CHECKPOINT_VERSION:
            raise ValueError(f"Trainer.fit: {path!r} is not a Trainer checkpoint (format "
                             f"version {CHECKPOINT_VERSION})")
        loader = run.train_loader
        restore_loader = state.get("loader") is not None and callable(
            getattr(loader, "load_state_dict", None))
        parts = [self.model, self.optimizer] + ([self.scheduler] if self.scheduler else []) + (
            [loader] if restore_loader else [])
        backups = [(part, part.state_dict()) for part in parts]
        rngs = [get_rng()] + list(_module_rngs(self.model).values())
        rng_backups = [(rng, rng.bit_generator.state) for rng in rngs]
        try:
            if (state["scheduler"] is None) != (self.scheduler is None):
                raise ValueError("the checkpoint has a scheduler state but the trainer has no "
                                 "scheduler" if self.scheduler is None else
                                 "the trainer has a scheduler but the checkpoint has no state for it")
            saved_rngs = state["rng"]["modules"]
            current_rngs = _module_rngs(self.model)
            if set(saved_rngs) != set(current_rngs):
                raise ValueError(f"the checkpoint has random generators for modules "
                                 f"{sorted(saved_rngs)}, the model for {sorted(current_rngs)}")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if restore_loader:
                loader.load_state_dict(state["loader"])
            get_rng().bit_generator.state = state["rng"]["minidl"]
            for name, rng in current_rngs.items():
                rng.bit_generator.state = saved_rngs[name]
            restored = History()
            restored.load_state_dict(state["history"])
            position.load_state_dict(state["position"])
            saved_callbacks = state["callbacks"]
            for i, callback in enumerate(self.callbacks):
                key = f"{i}:{type(callback).__name__}"
                if key in saved_callbacks:
                    callback.load_state_dict(saved_callbacks[key])
        except (KeyError, ValueError, TypeError) as error:
            for part, backup in backups:
                part.load_state_dict(backup)
            for rng, backup in rng_backups:
                rng.bit_generator.state = backup
            raise ValueError(f"Trainer.fit: cannot resume from {path!r}: {error}") from error
        vars(history).update(vars(restored))
        self.global_step = position.global_step
        self.stop_training = position.stop_training
        return restore_loader

    # ----------------------------------------------------------------- evaluate
    def evaluate(self, loader, progress=None):
        """Mean loss and accuracy over ``loader``, in eval mode and under :func:`minidl.no_grad`
        (no backward caches are built; the mode is restored afterwards).

        Args:
            loader: iterable of ``(x, y)`` batches.
            progress (bool or None): override the trainer's ``progress`` setting.
        Returns:
            dict: ``{"loss": float, "accuracy": float in [0, 1]}``, weighted by batch size.
        Raises:
            TypeError: ``loader`` is not iterable.
            ValueError: the loader yields no batches, or a batch that is not a pair.

        **Data parallel** (a job of W > 1 ranks): the sums of the loss, of the correct
        predictions and of the samples are added over the ranks before dividing
        (:func:`minidl.distributed.reduce_metrics`), so every rank returns the same figures of
        the union of the ranks' batches; every rank must call ``evaluate``. Give each rank its
        part of the data: ``DataLoader(..., num_shards=W, shard_index=rank)``. When W does not
        divide the number of samples, that loader pads some ranks' parts with samples from the
        start of the order (``drop_last=False``, as PyTorch's ``DistributedSampler``), and those
        up to W - 1 samples are evaluated and counted twice. For exact figures, use a number of
        samples that W divides, or give every rank the whole unsharded loader: each rank then
        computes the single-process sums, and the figures equal the single-process ones up to
        rounding, at W times the work.
        """
        _check_progress("Trainer.evaluate", progress)
        if not hasattr(type(loader), "__iter__"):
            raise TypeError(f"Trainer.evaluate: loader must be an iterable of (x, y) batches, "
                            f"got {type(loader).__name__}")
        return self._evaluate(loader, self.progress if progress is None else progress, None)

    def _evaluate(self, loader, progress, sigint):
        total_loss, total_correct, seen = 0.0, 0, 0
        with _ModeGuard(self.model, False), no_grad():
            for batch in tqdm(loader, desc="evaluate", disable=_disable(progress), leave=False,
                              unit="batch"):
                x, y = self._unpack(batch)
                logits = self.model(x)
                total_loss += self.loss_fn(logits, y) * len(y)
                total_correct += _accuracy_count(logits, y)
                seen += len(y)
                if sigint is not None and sigint.pending:
                    raise _Interrupted
        # data parallel: the sums over every rank's batches (before the check, so that a rank
        # without batches does not leave the others waiting)
        total_loss, total_correct, seen = _sum_over_ranks(total_loss, total_correct, seen)
        if seen == 0:
            raise ValueError("Trainer.evaluate: the loader yielded no batches")
        return {"loss": total_loss / seen, "accuracy": total_correct / seen}


class _Run:
    """The settings of one :meth:`Trainer.fit` call."""

    def __init__(self, train_loader, val_loader, epochs, progress, path, every):
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.epochs = epochs
        self.progress = progress
        self.path = path
        self.every = every
        self.sigint = None
        self.loader_restored = False
