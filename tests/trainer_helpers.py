"""Stand-ins shared by the Trainer and callback tests: data, small models, a resumable loader."""
import numpy as np

import minidl
from minidl import layers, losses, optim
from minidl._random import get_rng


class ResumableLoader:
    """The loader contract Trainer.fit relies on for an exact resume (minidl.data.DataLoader's):
    ``len()``, ``epoch``, ``set_epoch(e)`` (start epoch ``e`` from its first batch),
    ``state_dict()`` (JSON-able) and ``load_state_dict(d)`` (the next ``iter()`` continues that
    epoch at that batch). Each epoch's order is a permutation drawn from ``(seed, epoch)``."""

    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch, self._position = 0, 0

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def set_epoch(self, epoch):
        self.epoch, self._position = int(epoch), 0

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "batches": self._position}

    def load_state_dict(self, state):
        self.seed, self.epoch, self._position = state["seed"], state["epoch"], state["batches"]

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))
        for batch in range(self._position, len(self)):
            self._position = batch + 1
            index = order[batch * self.batch_size:(batch + 1) * self.batch_size]
            yield self.x[index], self.y[index]
        self.epoch, self._position = self.epoch + 1, 0


class Noise(layers.Module):
    """Adds Gaussian noise in training mode, drawn from its own ``rng`` (like Dropout) or, when
    ``rng`` is None, from minidl's global generator."""

    def __init__(self, scale=0.1, rng=None):
        super().__init__()
        self.scale = scale
        self.rng = rng

    def forward(self, x):
        if not self.training:
            return x
        generator = self.rng if self.rng is not None else get_rng()
        return x + self.scale * generator.standard_normal(x.shape).astype(x.dtype)

    def backward(self, dout, input_grad=True):
        return dout if input_grad else None


def blobs(rng, n=256):
    """Two well separated Gaussian classes in 2-D: float32 x (n, 2), int64 y (n,)."""
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 2)).astype(np.float32) + np.where(y[:, None] == 1, 2.0, -2.0)
    return x.astype(np.float32), y.astype(np.int64)


def mlp(rng, noise=False):
    """Dense -> BatchNorm -> ReLU [-> Noise(own rng) -> Noise(global rng)] -> Dense."""
    extra = [Noise(rng=np.random.default_rng(7)), Noise()] if noise else []
    return minidl.Sequential(layers.Dense(2, 16, rng=rng), layers.BatchNorm(16), layers.ReLU(),
                             *extra, layers.Dense(16, 2, rng=rng))


def make_trainer(model, lr=0.1, **kwargs):
    """A Trainer with cross-entropy and SGD with momentum 0.9."""
    return minidl.Trainer(model, losses.CrossEntropyLoss(),
                          optim.SGD(model.parameters(), lr=lr, momentum=0.9), **kwargs)


def assert_same_state(a, b):
    """Two state_dicts (or models) hold bit-identical arrays under the same keys."""
    a = a.state_dict() if hasattr(a, "state_dict") else a
    b = b.state_dict() if hasattr(b, "state_dict") else b
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].tobytes() == b[key].tobytes(), key
