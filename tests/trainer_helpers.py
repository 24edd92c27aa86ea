"""Shared by the Trainer and callback tests: data, small models, loaders, state comparisons."""
import numpy as np

import minidl
from minidl import data, layers, losses, optim
from minidl._random import get_rng


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


def jitter(x, rng):
    """A random augmentation (DataLoader transform): Gaussian noise from the batch's generator."""
    return x + (0.05 * rng.standard_normal(x.shape)).astype(x.dtype)


def shuffled_loader(x, y, batch_size=16, seed=3):
    """A shuffled, augmenting, resumable DataLoader (seed=None: base seed from minidl's generator)."""
    return data.DataLoader(data.ArrayDataset(x, y), batch_size, shuffle=True, seed=seed,
                           transform=jitter)


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
