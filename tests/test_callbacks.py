"""Callbacks: EvaluateEvery, EarlyStopping, ModelCheckpoint, CSVLogger (Keras' semantics), and
their state across an interrupted and resumed run."""
import csv
import os

import numpy as np
import pytest

import minidl
from minidl import data

from trainer_helpers import assert_same_state, blobs, make_trainer, mlp, shuffled_loader


class FakeTrainer:
    """What a callback touches: the model and stop_training."""

    def __init__(self, model=None):
        self.model = model
        self.stop_training = False


def _feed(callback, values, monitor="val_loss", trainer=None):
    """Call on_epoch_end with ``values``; return the epoch (1-based) training stopped at, or None."""
    trainer = trainer or FakeTrainer()
    callback.on_train_begin(trainer)
    for epoch, value in enumerate(values, start=1):
        callback.on_epoch_end(trainer, epoch, {"loss": 0.0, monitor: value})
        if trainer.stop_training:
            return epoch
    return None


def test_evaluate_every_and_stop_training(rng):
    x, y = blobs(rng, 320)
    model = mlp(rng)
    curve = minidl.EvaluateEvery(data.DataLoader(data.ArrayDataset(x, y), 64), every=3)

    class StopAt7(minidl.Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 7:
                trainer.stop_training = True

    trainer = make_trainer(model, progress=False, callbacks=[curve, StopAt7()])
    history = trainer.fit(data.DataLoader(data.ArrayDataset(x, y), 32), epochs=5)
    assert trainer.global_step == 7 and len(history.step_loss) == 7
    assert len(history.history["loss"]) == 1  # the cut epoch is still closed and recorded
    assert curve.steps == [3, 6, 7]
    assert curve.first_step_reaching(0.0) == 3
    assert curve.first_step_reaching(1.01) is None
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        minidl.EvaluateEvery([], every=0)


@pytest.mark.parametrize("kwargs, values, stopped", [
    # patience 0: the first epoch without improvement stops (never the first epoch)
    (dict(), [1.0, 0.9, 0.95], 3),
    (dict(), [1.0, 1.1], 2),
    (dict(), [np.nan, np.nan], 2),
    # patience counts epochs without improvement since the best
    (dict(patience=2), [1.0, 0.9, 0.95, 0.8, 0.85, 0.86, 0.7], 6),
    # min_delta: improvements smaller than it do not count
    (dict(patience=2, min_delta=0.1), [1.0, 0.95, 0.93, 0.5], 3),
    (dict(patience=2, min_delta=-0.1), [1.0, 0.95, 0.93, 0.5], 3),  # the sign is ignored
    (dict(patience=2, min_delta=0.01), [1.0, 0.95, 0.93, 0.5], None),
    # mode="max", and "auto" picks max for accuracies
    (dict(mode="max"), [0.5, 0.6, 0.55], 3),
    (dict(monitor="val_accuracy"), [0.5, 0.6, 0.55], 3),
    (dict(monitor="val_accuracy", mode="min"), [0.5, 0.6], 2),
    # baseline: the wait is reset only by values that also beat it (an improvement never stops)
    (dict(patience=2, baseline=0.5), [1.0, 0.9, 0.8, 0.85], 4),
    (dict(patience=2), [1.0, 0.9, 0.8, 0.85], None),
    (dict(patience=2, baseline=0.5), [0.45, 0.4, 0.41, 0.39, 0.6], None),
])
def test_early_stopping_follows_keras(kwargs, values, stopped):
    callback = minidl.EarlyStopping(**kwargs)
    assert _feed(callback, values, monitor=kwargs.get("monitor", "val_loss")) == stopped
    assert callback.stopped_epoch == (stopped or 0)


def test_early_stopping_restores_the_best_weights(rng):
    x, y = blobs(rng, 128)
    states = {}

    class Keep(minidl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            states[epoch] = trainer.model.state_dict()

    # the validation loss is made to get worse after epoch 2 by a growing learning rate
    model = mlp(rng)
    early = minidl.EarlyStopping(patience=2, restore_best_weights=True)
    trainer = make_trainer(model, lr=0.05, progress=False, callbacks=[Keep(), early])

    class Grow(minidl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch >= 2:
                trainer.optimizer.lr = 50.0

    trainer.callbacks.insert(0, Grow())
    train = data.DataLoader(data.ArrayDataset(x, y), 32, shuffle=True, seed=0)
    history = trainer.fit(train, epochs=10, val_loader=[(x, y)])
    val = history.history["val_loss"]
    best = int(np.argmin(val)) + 1
    assert early.best_epoch == best and early.best == val[best - 1]
    assert early.stopped_epoch == len(val) < 10
    assert_same_state(model, states[best])


def test_early_stopping_errors():
    with pytest.raises(ValueError, match="monitor 'val_loss' is not logged.*pass val_loader"):
        minidl.EarlyStopping().on_epoch_end(FakeTrainer(), 1, {"loss": 1.0, "accuracy": 0.5})
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        minidl.EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):
        minidl.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="min_delta must be a finite number"):
        minidl.EarlyStopping(min_delta=float("nan"))
    with pytest.raises(ValueError, match="monitor must be the name"):
        minidl.EarlyStopping(monitor="")


def test_model_checkpoint_formats_the_path_and_saves_the_model(tmp_path, rng):
    x, y = blobs(rng, 64)
    states = {}

    class Keep(minidl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            states[epoch] = (trainer.model.state_dict(), logs["val_loss"])

    pattern = str(tmp_path / "runs" / "model-{epoch:02d}-{val_loss:.3f}.ckpt")
    saver = minidl.ModelCheckpoint(pattern)
    model = mlp(rng)
    make_trainer(model, progress=False, callbacks=[Keep(), saver]).fit(
        [(x[:32], y[:32]), (x[32:], y[32:])], epochs=3, val_loader=[(x, y)])
    assert len(saver.saved) == 3
    for epoch, path in enumerate(saver.saved, start=1):
        state, val_loss = states[epoch]
        assert os.path.basename(path) == f"model-{epoch:02d}-{val_loss:.3f}.ckpt"
        assert_same_state(minidl.load(path), state)
    assert sorted(os.listdir(tmp_path / "runs")) == sorted(os.path.basename(p) for p in saver.saved)


def test_model_checkpoint_save_best_only(tmp_path):
    path = tmp_path / "best.ckpt"
    model = mlp(np.random.default_rng(0))
    saver = minidl.ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True)
    trainer = FakeTrainer(model)
    saver.on_train_begin(trainer)
    saved_weights = {}
    for epoch, accuracy in enumerate([0.5, 0.7, 0.6, 0.7, 0.8], start=1):
        model[0].weight.data[...] = epoch
        count = len(saver.saved)
        saver.on_epoch_end(trainer, epoch, {"val_accuracy": accuracy})
        if len(saver.saved) > count:
            saved_weights[epoch] = epoch
    assert sorted(saved_weights) == [1, 2, 5] and saver.best == 0.8
    assert np.all(minidl.load(path)["0.weight"] == 5)
    assert os.listdir(tmp_path) == ["best.ckpt"]


def test_model_checkpoint_errors(tmp_path):
    saver = minidl.ModelCheckpoint(str(tmp_path / "m-{val_acc:.2f}"))
    with pytest.raises(ValueError, match=r"cannot fill .*'val_acc'.* epoch and \['loss'\]"):
        saver.on_epoch_end(FakeTrainer(mlp(np.random.default_rng(0))), 1, {"loss": 0.5})
    with pytest.raises(ValueError, match="monitor 'val_loss' is not logged"):
        minidl.ModelCheckpoint(tmp_path / "m", save_best_only=True).on_epoch_end(
            FakeTrainer(), 1, {"loss": 0.5})
    with pytest.raises(TypeError, match="filepath must be a path"):
        minidl.ModelCheckpoint(None)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_logger_writes_complete_rows_per_epoch(tmp_path, rng):
    x, y = blobs(rng, 64)
    path = tmp_path / "log.csv"
    logger = minidl.CSVLogger(path)
    rows_seen = []

    class Peek(minidl.Callback):  # after the logger: the file is complete after each epoch
        def on_epoch_end(self, trainer, epoch, logs):
            rows_seen.append(len(_read_csv(path)))

    history = make_trainer(mlp(rng), progress=False, callbacks=[logger, Peek()]).fit(
        [(x, y)], epochs=3, val_loader=[(x, y)])
    table = _read_csv(path)
    assert table[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [row[0] for row in table[1:]] == ["1", "2", "3"]
    for key, column in (("loss", 2), ("val_accuracy", 3)):
        assert [float(row[column]) for row in table[1:]] == history.history[key]  # exact
    assert rows_seen == [2, 3, 4]
    assert os.listdir(tmp_path) == ["log.csv"]


def test_csv_logger_append_and_new_columns(tmp_path):
    path = tmp_path / "log.tsv"
    logger = minidl.CSVLogger(path, separator="\t")
    _feed(logger, [0.5, 0.4], monitor="val_loss")
    appending = minidl.CSVLogger(path, separator="\t", append=True)
    appending.on_train_begin(FakeTrainer())
    appending.on_epoch_end(FakeTrainer(), 1, {"loss": 0.25, "val_loss": 0.3, "lr": 0.01})
    with open(path) as f:
        assert f.read() == ("epoch\tloss\tval_loss\tlr\n1\t0.0\t0.5\tNA\n2\t0.0\t0.4\tNA\n"
                            "1\t0.25\t0.3\t0.01\n")
    fresh = minidl.CSVLogger(path)
    _feed(fresh, [0.9])
    assert _read_csv(path) == [["epoch", "loss", "val_loss"], ["1", "0.0", "0.9"]]
    with pytest.raises(ValueError, match="separator must be one character"):
        minidl.CSVLogger(path, separator="::")


def test_callback_state_survives_an_interrupted_run(tmp_path):
    """EarlyStopping, ModelCheckpoint(save_best_only) and CSVLogger across a crash and a resume
    give what an uninterrupted run gives."""
    x, y = blobs(np.random.default_rng(3), 100)
    val = [(x[:50], y[:50])]

    class Crash(minidl.Callback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, trainer, step, logs):
            if step == self.step:
                raise RuntimeError("crash")

    class Jolt(minidl.Callback):  # make the validation loss rise so EarlyStopping acts
        def on_epoch_end(self, trainer, epoch, logs):
            trainer.optimizer.lr = 0.05 if epoch < 3 else 20.0

    def run(folder, crash=None, resume=False):
        minidl.manual_seed(0)
        callbacks = [Jolt(), minidl.EarlyStopping(patience=1, restore_best_weights=True),
                     minidl.ModelCheckpoint(folder / "best.ckpt", save_best_only=True),
                     minidl.CSVLogger(folder / "log.csv")]
        if crash:
            callbacks.append(Crash(crash))
        trainer = make_trainer(mlp(np.random.default_rng(1)), lr=0.05, progress=False,
                               callbacks=callbacks)
        history = trainer.fit(shuffled_loader(x, y, seed=1), epochs=8, val_loader=val,
                              checkpoint_dir=folder / "ckpt", checkpoint_every=2, resume=resume)
        return trainer, history, callbacks

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference, reference_history, reference_callbacks = run(tmp_path / "a")
    assert reference_callbacks[1].stopped_epoch > 0  # the scenario does stop early
    with pytest.raises(RuntimeError):
        run(tmp_path / "b", crash=25)
    trainer, history, callbacks = run(tmp_path / "b", resume=True)
    assert history.history == reference_history.history
    assert callbacks[1].stopped_epoch == reference_callbacks[1].stopped_epoch
    assert callbacks[2].best == reference_callbacks[2].best
    assert_same_state(trainer.model, reference.model)  # the restored best weights
    assert_same_state(minidl.load(tmp_path / "b" / "best.ckpt"), minidl.load(tmp_path / "a" / "best.ckpt"))
    assert _read_csv(tmp_path / "b" / "log.csv") == _read_csv(tmp_path / "a" / "log.csv")
