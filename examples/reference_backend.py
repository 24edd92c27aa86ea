"""Train a small CNN for a few steps on the readable NumPy references, then on the compiled
kernels, from the same seed, and show that both give the same weights.

    python examples/reference_backend.py

Inside ``with minidl.backend("reference"):`` every convolution, BatchNorm, ReLU, max-pooling
and dense layer runs the textbook code in ``minidl/reference/functional/``, so a debugger can
stop in it (see "The readable path" in the README for a pdb session).
"""
import numpy as np

import minidl
from minidl import layers, losses, optim


def make_model():
    """Conv -> BatchNorm -> ReLU -> max-pool -> flatten -> dense, always from seed 0."""
    minidl.manual_seed(0)
    return minidl.Sequential(
        layers.Conv2D(1, 4, kernel_size=3, padding=1, bias=False),
        layers.BatchNorm(4), layers.ReLU(), layers.MaxPool2D(2),
        layers.Flatten(), layers.Dense(4 * 4 * 4, 10),
    )


def train(model, steps=3):
    """A few steps of SGD with momentum on random 8x8 images; returns the last loss."""
    data = np.random.default_rng(0)
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = losses.CrossEntropyLoss()
    for _ in range(steps):
        x = data.standard_normal((8, 1, 8, 8)).astype(np.float32)
        labels = data.integers(0, 10, 8)
        optimizer.zero_grad()
        loss = loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        optimizer.step()
    return loss


readable, fast = make_model(), make_model()
with minidl.backend("reference"):  # every op inside runs minidl/reference/functional/
    print(f"reference backend: last loss {train(readable):.6f}")
print(f"backend after the block: {minidl.get_backend()}")  # "compiled" again, always
print(f"compiled backend:  last loss {train(fast):.6f}")
difference = max(np.abs(a.data - b.data).max()
                 for a, b in zip(readable.parameters(), fast.parameters()))
print(f"largest weight difference: {difference:.1e} (float32 rounding)")
