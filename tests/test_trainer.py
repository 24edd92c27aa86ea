"""Trainer: fit/evaluate, modes, History, callbacks; a short real-MNIST training run."""
import os

import numpy as np
import pytest

import minidl
from minidl import data, layers, losses, optim
from minidl.experiments import mnist_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mirror(monkeypatch):
    """Point MINIDL_DATA_MIRROR at the shared datasets (CI sets it; locally ../shared/data)."""
    path = os.environ.get("MINIDL_DATA_MIRROR") or os.path.join(REPO, "..", "shared", "data")
    if not os.path.isdir(path) and "://" not in path:
        pytest.skip("no MNIST mirror: set MINIDL_DATA_MIRROR")
    monkeypatch.setenv("MINIDL_DATA_MIRROR", path)
    return path


def _blobs(rng, n=256):
    """Two well separated Gaussian classes in 2-D."""
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 2)).astype(np.float32) + np.where(y[:, None] == 1, 2.0, -2.0)
    return x.astype(np.float32), y.astype(np.int64)


def _mlp(rng):
    return minidl.Sequential(layers.Dense(2, 16, rng=rng), layers.BatchNorm(16), layers.ReLU(),
                             layers.Dense(16, 2, rng=rng))


def _trainer(model, lr=0.1, **kwargs):
    return minidl.Trainer(model, losses.CrossEntropyLoss(),
                          optim.SGD(model.parameters(), lr=lr, momentum=0.9), **kwargs)


def test_fit_learns_and_records_history(rng):
    x, y = _blobs(rng)
    model = _mlp(rng)
    trainer = _trainer(model, progress=False)
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
    x, y = _blobs(rng, 64)
    model = _mlp(rng)
    seen = []

    class Spy(minidl.Callback):
        def on_step_end(self, trainer, step, logs):
            seen.append(trainer.model[1].training)

    trainer = _trainer(model, progress=False, callbacks=[Spy()])
    model.eval()
    trainer.fit(data.DataLoader(data.ArrayDataset(x, y), 32), epochs=1)
    assert seen == [True, True]
    assert not model.training and not model[1].training  # restored to eval

    model.train()
    tracked = int(model[1].num_batches_tracked)
    trainer.evaluate(data.DataLoader(data.ArrayDataset(x, y), 32), progress=False)
    assert model.training and model[1].training
    assert int(model[1].num_batches_tracked) == tracked  # evaluation did not touch running stats


def test_evaluate_every_and_stop_training(rng):
    x, y = _blobs(rng, 320)
    model = _mlp(rng)
    curve = minidl.EvaluateEvery(data.DataLoader(data.ArrayDataset(x, y), 64), every=3)

    class StopAt7(minidl.Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 7:
                trainer.stop_training = True

    trainer = _trainer(model, progress=False, callbacks=[curve, StopAt7()])
    history = trainer.fit(data.DataLoader(data.ArrayDataset(x, y), 32), epochs=5)
    assert trainer.global_step == 7 and len(history.step_loss) == 7
    assert curve.steps == [3, 6, 7]
    assert curve.first_step_reaching(0.0) == 3
    assert curve.first_step_reaching(1.01) is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_diverging_loss_raises_clear_error(rng):
    x, y = _blobs(rng, 64)
    x = x * 1e30
    model = minidl.Sequential(layers.Dense(2, 2, rng=rng))
    with pytest.raises(ValueError, match="loss became .* at step"):
        _trainer(model, lr=1e10, progress=False).fit(data.DataLoader(data.ArrayDataset(x, y), 32), 2)


def test_progress_bar_shows_loss_and_accuracy(rng, capsys):
    x, y = _blobs(rng, 64)
    trainer = _trainer(_mlp(rng), progress=True)
    trainer.fit(data.DataLoader(data.ArrayDataset(x, y), 32), epochs=1)
    err = capsys.readouterr()
    text = err.err + err.out
    assert "epoch 1/1" in text and "loss" in text and "accuracy" in text


@pytest.mark.parametrize("epochs", [0, -1, 1.5])
def test_bad_epochs(rng, epochs):
    with pytest.raises(ValueError, match="epochs"):
        _trainer(_mlp(rng), progress=False).fit([], epochs=epochs)


def test_empty_loader(rng):
    with pytest.raises(ValueError, match="no batches"):
        _trainer(_mlp(rng), progress=False).evaluate([])


def test_short_real_mnist_run_reaches_stated_accuracy(mirror, tmp_path):
    """100 steps of the BN CNN (batch 64) on 6,400 real MNIST images: >= 90% on 2,000 test images."""
    train = data.MNIST(root=str(tmp_path), train=True)
    test = data.MNIST(root=str(tmp_path), train=False)
    minidl.manual_seed(0)
    model = mnist_cnn(batch_norm=True)
    trainer = _trainer(model, lr=0.05, progress=False)
    subset = data.ArrayDataset(train.images[:6400], train.labels[:6400])
    trainer.fit(data.DataLoader(subset, batch_size=64, shuffle=True, seed=0), epochs=1)
    result = trainer.evaluate(
        data.DataLoader(data.ArrayDataset(test.images[:2000], test.labels[:2000]), 500), progress=False)
    assert result["accuracy"] >= 0.90, result
