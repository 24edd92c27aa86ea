"""Trainer: fit/evaluate, modes, History, checkpoints and exact resume, Ctrl-C, non-finite losses,
schedulers, progress output, errors; a short real-MNIST training run."""
import io
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import minidl
from minidl import data, layers
from minidl.models import mnist_cnn

from trainer_helpers import assert_same_state, blobs, make_trainer, mlp, shuffled_loader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mirror(monkeypatch, real_mirror):
    """Point MINIDL_DATA_MIRROR at the shared datasets (conftest's ``real_mirror``)."""
    monkeypatch.setenv("MINIDL_DATA_MIRROR", real_mirror)
    return real_mirror


class Recorder(minidl.Callback):
    """Keeps the model's and optimizer's state after every step, and the step logs."""

    def __init__(self):
        self.states, self.logs, self.ended = {}, [], False

    def on_step_end(self, trainer, step, logs):
        self.states[step] = (trainer.model.state_dict(), trainer.optimizer.state_dict())
        self.logs.append(logs)

    def on_train_end(self, trainer):
        self.ended = True


class Grab(minidl.Callback):
    """Keeps the trainer of a fit whose call raises."""

    def on_train_begin(self, trainer):
        self.trainer = trainer


class RaiseAt(minidl.Callback):
    """Simulates a crash: raises RuntimeError at the end of a global step (an int) or in
    on_epoch_end of an epoch (``"epoch<n>"``)."""

    def __init__(self, when):
        self.when = when

    def on_step_end(self, trainer, step, logs):
        if step == self.when:
            raise RuntimeError(f"crash at step {step}")

    def on_epoch_end(self, trainer, epoch, logs):
        if f"epoch{epoch}" == self.when:
            raise RuntimeError(f"crash at the end of epoch {epoch}")


def assert_same_optimizer_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for index, entry in a["state"].items():
        for key, value in entry.items():
            assert np.asarray(value).tobytes() == np.asarray(b["state"][index][key]).tobytes()


# ----------------------------------------------------------------------------- basics
def test_fit_learns_and_records_history(rng):
    x, y = blobs(rng)
    model = mlp(rng)
    trainer = make_trainer(model, progress=False)
    loader = data.DataLoader(data.ArrayDataset(x, y), batch_size=32, shuffle=True, seed=0)
    history = trainer.fit(loader, epochs=3, val_loader=data.DataLoader(data.ArrayDataset(x, y), 64))
    assert len(history.step_loss) == 3 * len(loader) == trainer.global_step
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.95
    result = trainer.evaluate(data.DataLoader(data.ArrayDataset(x, y), 100), progress=False)
    assert set(result) == {"loss", "accuracy"}
    assert result["accuracy"] == pytest.approx(history.history["val_accuracy"][-1])
    assert len(history.to_dict()["step_loss"]) == 3 * len(loader)


def test_fit_and_evaluate_set_and_restore_modes(rng):
    x, y = blobs(rng, 64)
    model = mlp(rng)
    seen = []

    class Spy(minidl.Callback):
        def on_step_end(self, trainer, step, logs):
            seen.append(trainer.model[1].training)

    trainer = make_trainer(model, progress=False, callbacks=[Spy()])
    model.eval()
    trainer.fit(data.DataLoader(data.ArrayDataset(x, y), 32), epochs=1)
    assert seen == [True, True]
    assert not model.training and not model[1].training  # restored to eval

    model.train()
    tracked = int(model[1].num_batches_tracked)
    trainer.evaluate(data.DataLoader(data.ArrayDataset(x, y), 32), progress=False)
    assert model.training and model[1].training
    assert int(model[1].num_batches_tracked) == tracked  # evaluation did not touch running stats


def test_backward_is_called_with_input_grad_false_on_any_module(rng):
    """No isinstance(model, Sequential): every Module's backward takes input_grad."""

    class Wrapper(layers.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.calls = []

        def forward(self, x):
            return self.inner(x)

        def backward(self, dout, input_grad=True):
            self.calls.append(input_grad)
            return self.inner.backward(dout, input_grad=input_grad)

    x, y = blobs(rng, 64)
    model = Wrapper(mlp(rng))
    make_trainer(model, progress=False).fit([(x[:32], y[:32]), (x[32:], y[32:])], epochs=2)
    assert model.calls == [False] * 4


# ----------------------------------------------------------------------------- checkpoints
DATA = blobs(np.random.default_rng(2024), 100)  # 7 batches of 16 (the last of 4) per epoch


def _loader(kind):
    x, y = DATA
    if kind == "seeded":
        return shuffled_loader(x, y, seed=3)
    if kind == "global-seed":  # the loader draws its base seed from minidl's global generator
        return shuffled_loader(x, y, seed=None)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]  # same batches every epoch


def _run(kind, tmp_path=None, callbacks=(), seed=0, **fit_kwargs):
    """A fresh trainer (model with BatchNorm and two noise layers, SGD momentum) and its fit."""
    minidl.manual_seed(seed)
    model = mlp(np.random.default_rng(1), noise=True)
    trainer = make_trainer(model, progress=False, callbacks=list(callbacks))
    if tmp_path is not None:
        fit_kwargs.setdefault("checkpoint_dir", tmp_path)
    history = trainer.fit(_loader(kind), epochs=3, val_loader=_loader("list"), **fit_kwargs)
    return trainer, history


def _assert_same_run(trainer, history, reference, reference_history, reference_rng):
    assert trainer.global_step == reference.global_step == 21
    assert_same_state(trainer.model, reference.model)
    assert_same_optimizer_state(trainer.optimizer.state_dict(), reference.optimizer.state_dict())
    assert history.step_loss == reference_history.step_loss
    assert history.history == reference_history.history
    assert trainer.model[3].rng.bit_generator.state == reference.model[3].rng.bit_generator.state
    assert minidl._random.get_rng().bit_generator.state == reference_rng


@pytest.fixture(scope="module")
def references():
    """Uninterrupted runs without checkpoints, per loader kind: (trainer, history, global RNG state)."""
    runs = {}
    for kind in ("seeded", "global-seed", "list"):
        trainer, history = _run(kind)
        runs[kind] = (trainer, history, minidl._random.get_rng().bit_generator.state)
    return runs


CRASHES = [
    ([5], 3),          # last checkpoint after step 3: mid-epoch
    ([8], 3),          # last checkpoint at the end of epoch 1 (step 7)
    ([13], 3),         # mid-epoch 2 (step 12)
    ([15], 3),         # end of epoch 2 (step 14)
    ([4, 11, 20], 3),  # crash, resume, crash again, ...
    (["epoch2"], 7),   # after the step checkpoint at the last step of epoch 2, before its end
]


@pytest.mark.parametrize("kind, crashes, every", [("seeded", *c) for c in CRASHES] + [
    ("list", *c) for c in CRASHES] + [("global-seed", *c) for c in CRASHES[3:]])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, references, kind, crashes, every):
    for crash in crashes:
        with pytest.raises(RuntimeError, match="crash"):
            _run(kind, tmp_path, callbacks=[RaiseAt(crash)], checkpoint_every=every, resume="auto")
    # another seed: the resumed run must take every random state from the checkpoint
    trainer, history = _run(kind, tmp_path, seed=99, checkpoint_every=every, resume=True)
    _assert_same_run(trainer, history, *references[kind])


def test_a_resumed_run_continues_the_masks_of_a_dropout_layer(tmp_path):
    """Dropout keeps its generator in ``rng``: the checkpoint saves it, and a run resumed after
    a crash ends bit-identical to one that never stopped."""
    x, y = blobs(np.random.default_rng(0), 96)

    def run(callbacks, resume):
        minidl.manual_seed(0)
        model = minidl.Sequential(layers.Dense(2, 16, rng=1), layers.ReLU(), layers.Dropout(0.5),
                                  layers.Dense(16, 2, rng=2))
        trainer = make_trainer(model, progress=False, callbacks=callbacks)
        loader = data.DataLoader(data.ArrayDataset(x, y), 16, shuffle=True, seed=3)
        trainer.fit(loader, epochs=2, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=4,
                    resume=resume)
        return trainer

    reference = run([], False)
    with pytest.raises(RuntimeError, match="crash"):
        run([RaiseAt(6)], False)
    resumed = run([], True)
    assert_same_state(resumed.model, reference.model)
    assert resumed.model[2].rng.bit_generator.state == reference.model[2].rng.bit_generator.state


def test_checkpoint_contents(tmp_path, references):
    trainer, history = _run("seeded", tmp_path)
    state = minidl.load(tmp_path / "last.ckpt")
    assert sorted(state) == sorted(["minidl_trainer_checkpoint", "model", "optimizer", "scheduler",
                                    "rng", "loader", "position", "history", "callbacks"])
    assert_same_state(state["model"], trainer.model)
    assert state["position"]["epoch"] == 3 and state["position"]["step"] == 0
    assert state["position"]["global_step"] == 21
    assert list(state["rng"]["modules"]) == ["3"]  # the Noise layer with its own generator
    assert state["loader"]["epoch"] == 3 and state["loader"]["batches_yielded"] == 0
    assert list(state["history"]["step_loss"]) == history.step_loss
    fresh = mlp(np.random.default_rng(5), noise=True)
    fresh.load_state_dict(state["model"])
    assert_same_state(fresh, references["seeded"][0].model)
    # checkpointing did not change the run
    assert_same_state(trainer.model, references["seeded"][0].model)


def test_resume_of_a_finished_run_does_nothing_more(tmp_path):
    trainer, history = _run("list", tmp_path)
    again, again_history = _run("list", tmp_path, resume=True)
    assert again.global_step == 21 and again_history.step_loss == history.step_loss
    assert_same_state(again.model, trainer.model)


def test_resume_auto_starts_afresh_without_a_checkpoint(tmp_path, references):
    trainer, history = _run("list", tmp_path, resume="auto")
    _assert_same_run(trainer, history, *references["list"])


def test_checkpoint_every_counts_optimizer_steps(tmp_path, monkeypatch):
    written = []
    real_save = minidl.trainer.save
    monkeypatch.setattr(minidl.trainer, "save", lambda obj, path: (
        written.append((obj["position"]["global_step"], obj["position"]["step"])), real_save(obj, path)))
    _run("list", tmp_path, checkpoint_every=5)
    # every 5th step, plus every epoch end (7, 14, 21), where the step within the epoch is 0
    assert written == [(5, 5), (7, 0), (10, 3), (14, 0), (15, 1), (20, 6), (21, 0)]


# ----------------------------------------------------------------------------- Ctrl-C
class SigintAt(layers.Module):
    """Sends itself SIGINT(s) during the forward pass of the given training steps."""

    def __init__(self, steps, count=1):
        super().__init__()
        self.steps, self.count, self.calls = set(steps), count, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls in self.steps:
                for _ in range(self.count):  # raised in this (the main) thread, synchronously
                    signal.raise_signal(signal.SIGINT)
        return x

    def backward(self, dout, input_grad=True):
        return dout if input_grad else None


def _sigint_run(tmp_path, steps=(), count=1, callbacks=(), mode="train", **fit_kwargs):
    minidl.manual_seed(0)
    rng = np.random.default_rng(1)
    model = minidl.Sequential(layers.Dense(2, 16, rng=rng), layers.BatchNorm(16), layers.ReLU(),
                              SigintAt(steps, count), layers.Dense(16, 2, rng=rng))
    model.train(mode == "train")
    trainer = make_trainer(model, progress=False, callbacks=list(callbacks))
    if tmp_path is not None:
        fit_kwargs.setdefault("checkpoint_dir", tmp_path)
    history = trainer.fit(_loader("seeded"), epochs=3, **fit_kwargs)
    return trainer, history


@pytest.fixture(scope="module")
def step_states():
    recorder = Recorder()
    trainer, history = _sigint_run(None, callbacks=[recorder])
    return recorder.states, trainer, history


@pytest.mark.parametrize("step", [1, 4, 7, 12])
def test_sigint_is_deferred_to_the_end_of_the_step(tmp_path, step_states, step):
    states, reference, reference_history = step_states
    handler = signal.getsignal(signal.SIGINT)
    trainer = None
    with pytest.raises(KeyboardInterrupt, match=f"after step {step}; checkpoint written"):
        _sigint_run(tmp_path, steps=[step], mode="eval")
    assert signal.getsignal(signal.SIGINT) is handler
    # the checkpoint holds the state after the whole step: parameters, running stats, momentum
    state = minidl.load(tmp_path / "last.ckpt")
    assert state["position"]["global_step"] == step
    assert_same_state(state["model"], states[step][0])
    assert_same_optimizer_state(state["optimizer"], states[step][1])
    trainer, history = _sigint_run(tmp_path, resume=True)
    assert_same_state(trainer.model, reference.model)
    assert history.step_loss == reference_history.step_loss


def test_sigint_leaves_a_whole_step_modes_restored_and_no_gradients(step_states):
    states, _, _ = step_states
    grab = Grab()
    with pytest.raises(KeyboardInterrupt, match="after step 5$"):
        _sigint_run(None, steps=[5], callbacks=[grab], mode="eval")
    trainer = grab.trainer
    assert trainer.global_step == 5
    assert_same_state(trainer.model, states[5][0])
    assert int(trainer.model[1].num_batches_tracked) == 5
    assert all(not m.training for _, m in trainer.model.named_modules())
    assert all(np.all(p.grad == 0) for p in trainer.model.parameters())


@pytest.mark.parametrize("after", [3, 9, 16])
def test_sigint_from_another_thread_stops_between_steps(step_states, after):
    """The signal lands anywhere in a step (forward, backward, optimizer, bookkeeping). The
    step after ``after`` does not end before the signal is sent, so a slow sender thread (a
    busy machine) cannot let the run finish first and the signal arrive after it."""
    states, _, _ = step_states
    reached, sent = threading.Event(), threading.Event()

    class Start(Grab):
        def on_train_begin(self, trainer):
            super().on_train_begin(trainer)
            threading.Thread(target=send, daemon=True).start()

        def on_step_end(self, trainer, step, logs):
            if step == after:
                reached.set()
            elif step > after:
                assert sent.wait(10), "the sender thread did not send SIGINT within 10 s"

    def send():
        reached.wait(10)
        os.kill(os.getpid(), signal.SIGINT)
        sent.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # let the sender run as soon as the event is set
    start = Start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _sigint_run(None, callbacks=[start])
    finally:
        sys.setswitchinterval(interval)
    trainer = start.trainer
    assert after <= trainer.global_step < 21
    assert_same_state(trainer.model, states[trainer.global_step][0])
    assert_same_optimizer_state(trainer.optimizer.state_dict(), states[trainer.global_step][1])


def test_second_sigint_interrupts_at_once(step_states):
    states, _, _ = step_states
    grab = Grab()
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
        _sigint_run(None, steps=[6], count=2, callbacks=[grab])
    assert signal.getsignal(signal.SIGINT) is handler
    trainer = grab.trainer
    # raised inside step 6's forward: BatchNorm's update of that forward was undone
    assert trainer.global_step == 5
    assert_same_state(trainer.model, states[5][0])


def test_on_interrupt_return_gives_the_history_so_far(tmp_path, capsys):
    recorder = Recorder()
    trainer, history = _sigint_run(tmp_path, steps=[10], callbacks=[recorder], on_interrupt="return")
    assert trainer.global_step == 10 and len(history.step_loss) == 10
    assert history.history["loss"] and len(history.history["loss"]) == 1  # epoch 1 complete
    assert recorder.ended  # on_train_end ran
    assert "interrupted after step 10" in capsys.readouterr().out
    assert minidl.load(tmp_path / "last.ckpt")["position"]["global_step"] == 10


def test_sigint_during_validation_resumes_exactly(tmp_path, references):
    class InterruptingValidation:
        def __init__(self):
            self.calls = 0

        def __iter__(self):
            self.calls += 1
            for i, batch in enumerate(_loader("list")):
                if self.calls == 2 and i == 3:
                    signal.raise_signal(signal.SIGINT)
                yield batch

    minidl.manual_seed(0)
    trainer = make_trainer(mlp(np.random.default_rng(1), noise=True), progress=False)
    with pytest.raises(KeyboardInterrupt, match="after step 14"):
        trainer.fit(_loader("seeded"), epochs=3, val_loader=InterruptingValidation(),
                    checkpoint_dir=tmp_path)
    position = minidl.load(tmp_path / "last.ckpt")["position"]
    assert (position["epoch"], position["step"], position["steps_done"]) == (1, 7, True)
    trainer, history = _run("seeded", tmp_path, resume=True)
    _assert_same_run(trainer, history, *references["seeded"])


def test_no_handler_is_installed_outside_the_main_thread(rng):
    x, y = blobs(rng, 64)
    seen, errors = [], []

    class Spy(minidl.Callback):
        def on_step_end(self, trainer, step, logs):
            seen.append(signal.getsignal(signal.SIGINT))

    def work():
        try:
            make_trainer(mlp(rng), progress=False, callbacks=[Spy()]).fit([(x, y)], epochs=2)
        except Exception as error:  # surfaced below
            errors.append(error)

    handler = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not errors and seen == [handler, handler]


# ----------------------------------------------------------------------------- non-finite loss
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_diverging_loss_stops_before_the_step_with_the_model_intact(rng):
    x, y = blobs(rng, 64)
    recorder = Recorder()
    model = minidl.Sequential(layers.Dense(2, 8, rng=rng), layers.BatchNorm(8), layers.Dense(8, 2, rng=rng))
    trainer = make_trainer(model, lr=1e12, progress=False, callbacks=[recorder])
    with pytest.raises(minidl.NonFiniteLossError, match="loss became .* at step") as info:
        trainer.fit([(x[:32] * 1e3, y[:32]), (x[32:] * 1e3, y[32:])], epochs=5)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.input_finite is True and "the input batch is finite" in str(error)
    assert error.step == trainer.global_step + 1 >= 2
    last = recorder.states[trainer.global_step]
    assert_same_state(model, last[0])  # running statistics of the failed forward were undone
    assert_same_optimizer_state(trainer.optimizer.state_dict(), last[1])
    assert all(np.all(p.grad == 0) for p in model.parameters())


def test_nan_in_the_batch_is_reported_as_such(rng):
    x, y = blobs(rng, 96)
    batches = [(x[i:i + 32].copy(), y[i:i + 32]) for i in (0, 32, 64)]
    batches[2][0][5, 1] = np.nan
    recorder = Recorder()
    model = mlp(rng)
    trainer = make_trainer(model, progress=False, callbacks=[recorder])
    with pytest.raises(minidl.NonFiniteLossError) as info:
        trainer.fit(batches, epochs=2)
    error = info.value
    assert (error.step, error.epoch, error.batch, error.input_finite) == (3, 1, 3, False)
    assert "at step 3 (epoch 1, batch 3)" in str(error) and "holds NaN or Inf" in str(error)
    assert int(model[1].num_batches_tracked) == 2
    assert_same_state(model, recorder.states[2][0])
    assert model.training  # mode restored
    with pytest.raises(minidl.NonFiniteLossError, match="holds NaN or Inf") as info:
        trainer.train_step(*batches[2])
    assert info.value.epoch is None and int(model[1].num_batches_tracked) == 2


# ----------------------------------------------------------------------------- schedulers
class HalvingLR:
    """A stand-in with PyTorch's LRScheduler interface (like StepLR(step_size=1, gamma=0.5))."""

    def __init__(self, optimizer):
        self.optimizer, self.base_lr, self.last_epoch = optimizer, optimizer.lr, 0

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self.base_lr * 0.5 ** self.last_epoch

    def get_last_lr(self):
        return [self.optimizer.lr]

    def state_dict(self):
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        self.base_lr, self.last_epoch = state["base_lr"], state["last_epoch"]


def _scheduled_run(interval, tmp_path=None, callbacks=(), **fit_kwargs):
    minidl.manual_seed(0)
    model = mlp(np.random.default_rng(1))
    trainer = make_trainer(model, progress=False, callbacks=list(callbacks))
    trainer.scheduler = HalvingLR(trainer.optimizer)
    trainer.scheduler_interval = interval
    if tmp_path is not None:
        fit_kwargs["checkpoint_dir"] = tmp_path
    history = trainer.fit(_loader("seeded"), epochs=3, **fit_kwargs)
    return trainer, history


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_scheduler_is_stepped_per_epoch_or_per_step(interval):
    recorder = Recorder()
    trainer, _ = _scheduled_run(interval, callbacks=[recorder])
    lrs = [logs["lr"] for logs in recorder.logs]
    if interval == "epoch":
        assert lrs == [0.1] * 7 + [0.05] * 7 + [0.025] * 7
        assert trainer.scheduler.last_epoch == 3
    else:
        assert lrs == [0.1 * 0.5 ** k for k in range(21)]
        assert trainer.scheduler.last_epoch == 21


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_scheduler_state_is_resumed(tmp_path, interval):
    reference, reference_history = _scheduled_run(interval)
    with pytest.raises(RuntimeError):
        _scheduled_run(interval, tmp_path, callbacks=[RaiseAt(12)], checkpoint_every=4)
    trainer, history = _scheduled_run(interval, tmp_path, resume=True)
    assert trainer.scheduler.state_dict() == reference.scheduler.state_dict()
    assert trainer.optimizer.lr == reference.optimizer.lr
    assert_same_state(trainer.model, reference.model)
    assert history.step_loss == reference_history.step_loss


def test_scheduler_arguments_are_checked(rng):
    model = mlp(rng)
    with pytest.raises(TypeError, match="lacks state_dict, load_state_dict"):
        make_trainer(model, scheduler=type("S", (), {"step": lambda self: None})())
    with pytest.raises(ValueError, match="scheduler_interval must be 'epoch' or 'step'"):
        make_trainer(model, scheduler_interval="batch")


# ----------------------------------------------------------------------------- progress output
class Slow(minidl.Callback):
    """tqdm redraws at most every 0.1 s: make the steps that slow."""

    def on_step_end(self, trainer, step, logs):
        time.sleep(0.11)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_default_progress_draws_no_bar_when_not_a_terminal(rng, capsys):
    x, y = blobs(rng, 64)
    make_trainer(mlp(rng)).fit(data.DataLoader(data.ArrayDataset(x, y), 16), epochs=2)
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    assert "epoch 1/2: loss" in captured.out and "lr 0.1" in captured.out  # one line per epoch


def test_default_progress_draws_a_bar_with_the_learning_rate_on_a_terminal(rng, monkeypatch):
    x, y = blobs(rng, 64)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    make_trainer(mlp(rng), callbacks=[Slow()]).fit(data.DataLoader(data.ArrayDataset(x, y), 32),
                                                   epochs=1)
    text = terminal.getvalue()
    assert "\r" in text and "epoch 1/1" in text and "lr=0.1" in text and "loss=" in text


def test_explicit_progress_is_obeyed(rng, capsys, monkeypatch):
    x, y = blobs(rng, 64)
    loader = data.DataLoader(data.ArrayDataset(x, y), 32)
    make_trainer(mlp(rng), progress=True, callbacks=[Slow()]).fit(loader, epochs=1)
    captured = capsys.readouterr()
    assert "lr=0.1" in captured.err and "acc=" in captured.err  # shown although not a terminal
    assert "epoch 1/1: loss" in captured.out and "accuracy" in captured.out
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    make_trainer(mlp(rng), progress=False).fit(loader, epochs=1)
    assert sys.stderr.getvalue() == "" and capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("epochs", [0, -1, 1.5])
def test_bad_epochs(rng, epochs):
    with pytest.raises(ValueError, match="epochs"):
        make_trainer(mlp(rng), progress=False).fit([], epochs=epochs)


def test_empty_loader(rng):
    with pytest.raises(ValueError, match="no batches"):
        make_trainer(mlp(rng), progress=False).evaluate([])
    with pytest.raises(ValueError, match="yielded no batches in epoch 1"):
        make_trainer(mlp(rng), progress=False).fit([])


def test_a_one_shot_iterator_is_explained(rng):
    x, y = blobs(rng, 32)
    with pytest.raises(ValueError, match="no batches in epoch 2 .*iterated only once"):
        make_trainer(mlp(rng), progress=False).fit(iter([(x, y)]), epochs=2)


def test_bad_batches_and_loaders(rng):
    x, y = blobs(rng, 32)
    trainer = make_trainer(mlp(rng), progress=False)
    with pytest.raises(ValueError, match=r"pair \(x, y\), got a tuple of 3"):
        trainer.fit([(x, y, y)])
    with pytest.raises(ValueError, match=r"pair \(x, y\), got a ndarray of 32"):
        trainer.evaluate([x])
    with pytest.raises(TypeError, match="iterable of .* got int"):
        trainer.fit(5)
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a str"):
        make_trainer(mlp(rng), callbacks=["early"])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(checkpoint_every=0), ValueError, "checkpoint_every must be an integer >= 1, got 0"),
    (dict(checkpoint_every=2.5), ValueError, "checkpoint_every must be an integer"),
    (dict(checkpoint_every=True), ValueError, "checkpoint_every must be an integer"),
    (dict(checkpoint_every=3, checkpoint_dir=None), ValueError, "checkpoint_every=3 needs a checkpoint_dir"),
    (dict(resume=True, checkpoint_dir=None), ValueError, "resume=True needs a checkpoint_dir"),
    (dict(resume="yes"), ValueError, "resume must be True, False or 'auto'"),
    (dict(on_interrupt="ignore"), ValueError, "on_interrupt must be 'raise' or 'return'"),
    (dict(progress="yes"), ValueError, "progress must be None, True or False"),
    (dict(resume=True), FileNotFoundError, r"no checkpoint at '.*last\.ckpt'"),
])
def test_bad_fit_arguments(tmp_path, rng, kwargs, error, message):
    kwargs = {"checkpoint_dir": tmp_path, **kwargs}
    x, y = blobs(rng, 32)
    with pytest.raises(error, match=message):
        make_trainer(mlp(rng), progress=False).fit([(x, y)], **kwargs)


def test_checkpoint_dir_that_is_a_file(tmp_path, rng):
    (tmp_path / "file").write_text("")
    x, y = blobs(rng, 32)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        make_trainer(mlp(rng), progress=False).fit([(x, y)], checkpoint_dir=tmp_path / "file")


def test_checkpoint_dir_is_created(tmp_path, rng):
    x, y = blobs(rng, 32)
    make_trainer(mlp(rng), progress=False).fit([(x, y)], checkpoint_dir=tmp_path / "a" / "b")
    assert os.listdir(tmp_path / "a" / "b") == ["last.ckpt"]


def test_resume_from_a_foreign_checkpoint_changes_nothing(tmp_path, rng):
    x, y = blobs(rng, 32)
    other = minidl.Sequential(layers.Dense(2, 4, rng=rng), layers.Dense(4, 2, rng=rng))
    make_trainer(other, progress=False).fit([(x, y)], checkpoint_dir=tmp_path)
    model = mlp(rng)
    trainer = make_trainer(model, progress=False)
    before, optimizer_before = model.state_dict(), trainer.optimizer.state_dict()
    with pytest.raises(ValueError, match="cannot resume from .*missing keys"):
        trainer.fit([(x, y)], checkpoint_dir=tmp_path, resume=True)
    assert_same_state(model, before)
    assert_same_optimizer_state(trainer.optimizer.state_dict(), optimizer_before)
    assert trainer.global_step == 0

    scheduled = make_trainer(mlp(rng), progress=False)
    scheduled.fit([(x, y)], checkpoint_dir=tmp_path / "plain")
    scheduled.scheduler = HalvingLR(scheduled.optimizer)
    with pytest.raises(ValueError, match="the trainer has a scheduler but the checkpoint has no state"):
        scheduled.fit([(x, y)], checkpoint_dir=tmp_path / "plain", resume=True)

    os.makedirs(tmp_path / "weights")
    minidl.save({"model": model.state_dict()}, tmp_path / "weights" / "last.ckpt")
    with pytest.raises(ValueError, match="is not a Trainer checkpoint"):
        trainer.fit([(x, y)], checkpoint_dir=tmp_path / "weights", resume=True)
    (tmp_path / "weights" / "last.ckpt").write_bytes(b"garbage")
    with pytest.raises(minidl.SerializationError, match="last.ckpt"):
        trainer.fit([(x, y)], checkpoint_dir=tmp_path / "weights", resume=True)


# ----------------------------------------------------------------------------- real data
def test_short_real_mnist_run_reaches_stated_accuracy(mirror, tmp_path):
    """100 steps of the BN CNN (batch 64) on 6,400 real MNIST images: >= 90% on 2,000 test images."""
    train = data.MNIST(root=str(tmp_path), train=True)
    test = data.MNIST(root=str(tmp_path), train=False)
    minidl.manual_seed(0)
    model = mnist_cnn(norm="batch")
    trainer = make_trainer(model, lr=0.05, progress=False)
    subset = data.ArrayDataset(train.images[:6400], train.labels[:6400])
    trainer.fit(data.DataLoader(subset, batch_size=64, shuffle=True, seed=0), epochs=1)
    result = trainer.evaluate(
        data.DataLoader(data.ArrayDataset(test.images[:2000], test.labels[:2000]), 500), progress=False)
    assert result["accuracy"] >= 0.90, result


def test_evaluate_runs_under_no_grad_and_keeps_no_caches(rng):
    """Trainer.evaluate builds no backward caches: a backward right after it has nothing to use,
    and the evaluated batch is not kept alive by the model."""
    import weakref

    x, y = blobs(rng, n=64)
    model = mlp(rng)
    trainer = make_trainer(model)
    batch = x[:32].copy()
    ref = weakref.ref(batch)
    result = trainer.evaluate([(batch, y[:32])], progress=False)
    assert 0.0 <= result["accuracy"] <= 1.0
    del batch
    assert ref() is None, "the model kept the evaluated input alive"
    assert minidl.is_grad_enabled()
    with pytest.raises(RuntimeError):
        model.backward(np.ones((32, 2), np.float32))


# ------------------------------------------------------------- arguments of the wrong kind
@pytest.mark.parametrize("args, match", [
    (lambda m: (None, minidl.losses.CrossEntropyLoss(), minidl.optim.SGD(m.parameters(), lr=0.1)),
     r"Trainer: expected model to be a minidl Module \(e.g. a Sequential\), got NoneType"),
    (lambda m: (m, lambda logits, y: 0.0, minidl.optim.SGD(m.parameters(), lr=0.1)),
     r"Trainer: loss_fn \(function\) lacks backward"),
    (lambda m: (m, minidl.losses.CrossEntropyLoss(), None),
     r"Trainer: optimizer \(NoneType\) lacks step, zero_grad, state_dict, load_state_dict"),
    (lambda m: (m, minidl.losses.CrossEntropyLoss(), minidl.optim.SGD(m.parameters(), lr=0.1),
                None, 5), r"Trainer: callbacks must be a list of minidl.Callback, got int"),
])
def test_trainer_arguments_of_the_wrong_kind_are_type_errors(rng, args, match):
    with pytest.raises(TypeError, match=f"^{match}"):
        minidl.Trainer(*args(mlp(rng)))


def test_fit_and_evaluate_check_their_loaders_and_folder_before_training(rng, tmp_path):
    model = mlp(rng)
    trainer = make_trainer(model, progress=False)
    before = model.state_dict()
    x, y = blobs(rng, 64)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    with pytest.raises(TypeError, match="^Trainer.fit: val_loader must be an iterable of "
                                        r"\(x, y\) batches, got int"):
        trainer.fit(batches, val_loader=5)
    with pytest.raises(ValueError, match="^Trainer.fit: checkpoint_dir is an empty path"):
        trainer.fit(batches, checkpoint_dir="")
    with pytest.raises(TypeError, match="^Trainer.evaluate: loader must be an iterable"):
        trainer.evaluate(3.5)
    assert_same_state(model.state_dict(), before)  # nothing was trained
    assert trainer.global_step == 0


def test_a_batch_the_model_refuses_leaves_the_model_as_it_was(rng):
    model = mlp(rng)
    trainer = make_trainer(model, progress=False)
    x, y = blobs(rng, 32)
    trainer.fit([(x, y)])
    before = model.state_dict()
    grads = [p.grad.copy() for p in model.parameters()]
    for bad_x, bad_y, error in ((x.astype(np.int64), y, TypeError), (x[:, :1], y, ValueError),
                                (x, y.astype(np.float32), TypeError), (x, y + 5, ValueError)):
        with pytest.raises(error):
            trainer.train_step(bad_x, bad_y)
    assert_same_state(model.state_dict(), before)
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)


# ------------------------------------------------------------------------------ determinism
def _residual_cnn():
    """A small network of the CIFAR layers (a residual block, average pooling, dropout,
    global average pooling) for 28x28 single-channel images."""
    conv = lambda cin: layers.Conv2D(cin, 8, 3, padding=1)  # noqa: E731
    return minidl.Sequential(
        conv(1), layers.BatchNorm(8), layers.ReLU(),
        layers.Residual(minidl.Sequential(conv(8), layers.BatchNorm(8), layers.ReLU(), conv(8))),
        layers.ReLU(), layers.AvgPool2D(3, 2, 1), layers.Dropout(0.3), layers.GlobalAvgPool2D(),
        layers.Dense(8, 10))


def _mnist_cnn_steps(threads, steps=3, batch_norm=True):
    """A few SGD steps of the MNIST CNN (or, for ``batch_norm="residual"``, of
    :func:`_residual_cnn`) on random images, at ``threads`` OpenMP threads."""
    previous = minidl.get_num_threads()
    minidl.set_num_threads(threads)
    try:
        minidl.manual_seed(0)
        if batch_norm == "residual":
            model = _residual_cnn()
        else:
            model = mnist_cnn(norm="batch" if batch_norm else None)
        trainer = make_trainer(model, lr=0.05)
        data_rng = np.random.default_rng(0)
        for _ in range(steps):
            x = data_rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
            trainer.train_step(x, data_rng.integers(0, 10, 64))
        return model.state_dict(), trainer.optimizer.state_dict()
    finally:
        minidl.set_num_threads(previous)


@pytest.mark.parametrize("batch_norm", [True, False, "residual"])
def test_training_is_bit_identical_across_runs_and_thread_counts(batch_norm):
    """Every reduction combines its parts in an order fixed by the batch, not by the threads
    (Winograd's weight and bias gradients in chunks of images; the others per channel or in
    one thread; average pooling per plane; dropout masks from the layer's generator), so 1, 2
    and 3 threads give the same bits, run after run."""
    runs = [_mnist_cnn_steps(threads, batch_norm=batch_norm) for threads in (1, 2, 1, 3)]
    for model_state, optimizer_state in runs[1:]:
        assert_same_state(model_state, runs[0][0])
        assert_same_optimizer_state(optimizer_state, runs[0][1])
