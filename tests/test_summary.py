"""minidl.summary: hand-computed counts for the MNIST CNN, nesting, custom layers, no side effects."""
import numpy as np
import pytest

import minidl
from minidl.models import mnist_cnn
from minidl.layers import BatchNorm, Dense, Flatten, Module, Parameter, ReLU, Softmax
from minidl.model import Sequential

N = 2
# The MNIST CNN with BatchNorm, by hand for a batch of N: (name, type, output shape, parameters,
# buffer entries, FLOPs). A multiply-add counts 2; BatchNorm in eval mode 2 per element; ReLU 1
# per element; a 2x2 max-pool 3 comparisons per output; a bias 1 add per output.
MNIST_CNN_ROWS = [
    ("0", "Conv2D", (N, 32, 28, 28), 1 * 32 * 9, 0, 2 * (1 * 9) * (N * 32 * 28 * 28)),
    ("1", "BatchNorm", (N, 32, 28, 28), 2 * 32, 2 * 32 + 1, 2 * N * 32 * 28 * 28),
    ("2", "ReLU", (N, 32, 28, 28), 0, 0, N * 32 * 28 * 28),
    ("3", "MaxPool2D", (N, 32, 14, 14), 0, 0, 3 * N * 32 * 14 * 14),
    ("4", "Conv2D", (N, 64, 14, 14), 32 * 64 * 9, 0, 2 * (32 * 9) * (N * 64 * 14 * 14)),
    ("5", "BatchNorm", (N, 64, 14, 14), 2 * 64, 2 * 64 + 1, 2 * N * 64 * 14 * 14),
    ("6", "ReLU", (N, 64, 14, 14), 0, 0, N * 64 * 14 * 14),
    ("7", "MaxPool2D", (N, 64, 7, 7), 0, 0, 3 * N * 64 * 7 * 7),
    ("8", "Flatten", (N, 3136), 0, 0, 0),
    ("9", "Dense", (N, 128), 3136 * 128, 0, 2 * 3136 * 128 * N),
    ("10", "BatchNorm", (N, 128), 2 * 128, 2 * 128 + 1, 2 * N * 128),
    ("11", "ReLU", (N, 128), 0, 0, N * 128),
    ("12", "Dense", (N, 10), 128 * 10 + 10, 0, 2 * 128 * 10 * N + 10 * N),
]


def test_mnist_cnn_counts_by_hand(capsys):
    model = mnist_cnn(norm="batch", rng=0)
    result = minidl.summary(model, (N, 1, 28, 28))
    root, *rows = result.rows
    assert (root.name, root.type, root.depth, root.output_shape) == ("", "Sequential", 0, (N, 10))
    assert root.flops is None and root.is_container
    got = [(r.name, r.type, r.output_shape, r.trainable, r.buffers, r.flops) for r in rows]
    assert got == MNIST_CNN_ROWS
    for r in rows:
        assert r.depth == 1 and r.output_bytes == 4 * np.prod(r.output_shape)
    assert result.trainable_params == sum(row[3] for row in MNIST_CNN_ROWS) == 421_866
    assert result.trainable_params == sum(p.data.size for p in model.parameters())
    assert result.buffer_elements == 451
    assert result.total_flops == sum(row[5] for row in MNIST_CNN_ROWS)
    assert result.param_bytes == 4 * 421_866 and result.buffer_bytes == 4 * 448 + 3 * 8
    flatten_bytes = 4 * N * 3136  # a view of its input: no new memory
    assert result.activation_bytes == sum(r.output_bytes for r in rows) - flatten_bytes
    assert result.unknown == [] and result.output_shape == (N, 10)
    printed = capsys.readouterr().out
    assert printed == str(result) + "\n"
    assert "  9: Dense" in printed and "401,408" in printed and f"{result.total_flops:,}" in printed
    assert "Trainable parameters: 421,866" in printed


def test_flops_scale_with_the_batch():
    model = mnist_cnn(norm=None, rng=0)
    one = minidl.summary(model, (1, 1, 28, 28), verbose=False)
    four = minidl.summary(model, (4, 1, 28, 28), verbose=False)
    assert four.total_flops == 4 * one.total_flops
    assert four.trainable_params == one.trainable_params


def test_nested_modules_are_indented_depth_first(capsys):
    model = Sequential(Sequential(Dense(4, 8), ReLU()), Sequential(Sequential(Dense(8, 3)), Softmax()))
    result = minidl.summary(model, [5, 4], dtype=np.float64)
    assert [(r.name, r.depth, r.output_shape) for r in result.rows] == [
        ("", 0, (5, 3)), ("0", 1, (5, 8)), ("0.0", 2, (5, 8)), ("0.1", 2, (5, 8)),
        ("1", 1, (5, 3)), ("1.0", 2, (5, 3)), ("1.0.0", 3, (5, 3)), ("1.1", 2, (5, 3))]
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("      1.0.0: Dense") for line in lines)
    assert result.rows[6].output_bytes == 8 * 15 and result.rows[7].flops == 5 * 15


def test_custom_flops_method_and_unknown_layers():
    class Scale(Module):
        def __init__(self):
            super().__init__()
            self.weight = Parameter(np.ones(4, np.float32))

        def forward(self, x):
            return x * self.weight.data

        def flops(self, input_shape, output_shape):
            return int(np.prod(output_shape))

    class Mystery(Module):
        def forward(self, x):
            return x + 1

    result = minidl.summary(Sequential(Scale(), Mystery()), (3, 4), verbose=False)
    assert [r.flops for r in result.rows] == [None, 12, None]
    assert result.unknown == ["1"] and result.total_flops == 12
    assert "No FLOP count (shown as -, not in the total): 1" in str(result)


def test_a_layer_that_does_not_run_has_no_shape():
    class Skips(Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = ReLU(), ReLU()

        def forward(self, x):
            return self.used(x)

    result = minidl.summary(Skips(), (2, 3), verbose=False)
    assert [(r.name, r.output_shape, r.flops) for r in result.rows] == [
        ("", (2, 3), None), ("used", (2, 3), 6), ("unused", None, None)]


def test_the_model_is_left_as_it_was(rng):
    model = Sequential(Dense(3, 4, rng=rng), BatchNorm(4), ReLU())
    for _ in range(2):
        model(rng.standard_normal((8, 3)).astype(np.float32))
    model[2].eval()
    before = model.state_dict()
    modes = [m.training for _, m in model.named_modules()]
    minidl.summary(model, (8, 3), verbose=False)
    assert [m.training for _, m in model.named_modules()] == modes == [True, True, True, False]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    assert all(not m._forward_hooks for _, m in model.named_modules())


def test_errors_leave_no_hooks_and_restore_modes():
    model = Sequential(Flatten(), Dense(12, 3))
    with pytest.raises(ValueError, match=r"Dense: expected input of shape \(N, 12\), got shape \(2, 10\)"):
        minidl.summary(model, (2, 5, 2))
    assert model.training and all(not m._forward_hooks for _, m in model.named_modules())


@pytest.mark.parametrize("args, error, pattern", [
    ((Dense(2, 2), (0, 2)), ValueError, r"summary: expected input_shape to be a tuple of positive integers \(with the batch axis\), got \(0, 2\)"),
    ((Dense(2, 2), 4), ValueError, r"got 4"),
    ((Dense(2, 2), (2.0, 2)), ValueError, r"got \(2.0, 2\)"),
    ((Dense(2, 2), (2, 2), np.int32), TypeError, r"summary: expected dtype float32 or float64, got int32"),
    (("model", (2, 2)), TypeError, r"summary: expected a Module, got str"),
])
def test_bad_arguments(args, error, pattern):
    with pytest.raises(error, match=pattern):
        minidl.summary(*args, verbose=False)
