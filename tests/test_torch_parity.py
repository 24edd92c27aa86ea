"""minidl against PyTorch: BatchNorm (both ranks, momentum 0.1 and None), Dense, ReLU (with
NaNs and signed zeros), and a whole CNN training step (forward, loss, backward, SGD/Adam update) with the same weights.

Conv2D, MaxPool2D, CrossEntropyLoss and the optimizers have their own PyTorch comparisons in
test_conv.py, test_pooling.py, test_losses.py and test_optim.py.
"""
import numpy as np
import pytest

from minidl import layers, losses, optim
from minidl.models import mnist_cnn

from helpers import assert_close_to_torch, import_torch

torch = import_torch()
F32 = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_torch_with_nans_and_zeros(rng, dtype):
    x = rng.standard_normal((4, 8, 20, 20)).astype(dtype)
    x.reshape(-1)[:6] = [np.nan, 0.0, -0.0, -np.inf, np.inf, -np.nan]
    dout = rng.standard_normal(x.shape).astype(dtype)
    relu = layers.ReLU()
    y = relu(x)
    dx = relu.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.relu(xt)
    yt.backward(torch.tensor(dout))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(np.signbit(y), np.signbit(yt.detach().numpy()))
    np.testing.assert_array_equal(dx, xt.grad.numpy())


def _torch_bn(num_features, ndim, momentum, dtype):
    cls = torch.nn.BatchNorm1d if ndim in (2, 3) else torch.nn.BatchNorm2d
    return cls(num_features, momentum=momentum).to(torch.float64 if dtype == np.float64 else torch.float32)


@pytest.mark.parametrize("shape", [(16, 5), (8, 5, 6), (4, 5, 6, 7)])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_matches_torch_over_several_steps(rng, shape, momentum, dtype):
    tol = F32 if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    ours = layers.BatchNorm(shape[1], momentum=momentum, dtype=dtype)
    ours.weight.data[:] = rng.uniform(0.5, 1.5, shape[1])
    ours.bias.data[:] = rng.standard_normal(shape[1])
    theirs = _torch_bn(shape[1], len(shape), momentum, dtype)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.data))
        theirs.bias.copy_(torch.from_numpy(ours.bias.data))

    for step in range(4):
        x = (rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(dtype)
        _compare_bn_step(ours, theirs, x, rng.standard_normal(shape).astype(dtype), tol, f"step {step}")
    assert_close_to_torch(ours.running_mean, theirs.running_mean, **tol, what="running_mean")
    assert_close_to_torch(ours.running_var, theirs.running_var, **tol, what="running_var")
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 4

    # eval mode: running statistics, and the affine-only backward
    ours.eval()
    theirs.eval()
    x = rng.standard_normal(shape).astype(dtype)
    _compare_bn_step(ours, theirs, x, rng.standard_normal(shape).astype(dtype), tol, "eval")


def _compare_bn_step(ours, theirs, x, dy, tol, label):
    """One forward + backward of both layers on the same data; outputs and gradients agree."""
    ours.zero_grad()
    y = ours(x)
    dx = ours.backward(dy)
    tx = torch.from_numpy(x).requires_grad_()
    theirs.weight.grad = theirs.bias.grad = None
    ty = theirs(tx)
    ty.backward(torch.from_numpy(dy))
    assert_close_to_torch(y, ty, **tol, what=f"output, {label}")
    assert_close_to_torch(dx, tx.grad, **tol, what=f"input gradient, {label}")
    assert_close_to_torch(ours.weight.grad, theirs.weight.grad, **tol, what=f"weight gradient, {label}")
    assert_close_to_torch(ours.bias.grad, theirs.bias.grad, **tol, what=f"bias gradient, {label}")


@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_torch(rng, bias):
    ours = layers.Dense(7, 4, bias=bias, rng=rng)
    theirs = torch.nn.Linear(7, 4, bias=bias)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.data))
        if bias:
            theirs.bias.copy_(torch.from_numpy(ours.bias.data))
    x = rng.standard_normal((5, 7)).astype(np.float32)
    dy = rng.standard_normal((5, 4)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = theirs(tx)
    ty.backward(torch.from_numpy(dy))
    assert_close_to_torch(ours(x), ty, **F32, what="output")
    assert_close_to_torch(ours.backward(dy), tx.grad, **F32, what="input gradient")
    assert_close_to_torch(ours.weight.grad, theirs.weight.grad, **F32, what="weight gradient")
    if bias:
        assert_close_to_torch(ours.bias.grad, theirs.bias.grad, **F32, what="bias gradient")


def _torch_mnist_cnn(batch_norm):
    nn = torch.nn
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)] + \
            ([nn.BatchNorm2d(cout)] if batch_norm else []) + [nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(),
                         nn.Linear(3136, 128, bias=not batch_norm),
                         *([nn.BatchNorm1d(128)] if batch_norm else []), nn.ReLU(), nn.Linear(128, 10))


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("optimizer, dtype", [("sgd", np.float32), ("adam", np.float64)])
def test_whole_cnn_training_steps_match_torch(rng, batch_norm, optimizer, dtype):
    """Same weights, same batches: three steps of the MNIST CNN agree with PyTorch's.

    Adam runs in float64: its update divides by sqrt(v), so in float32 a rounding-level
    difference in a near-zero gradient becomes a visible difference in the weights.
    """
    ours = mnist_cnn(norm="batch" if batch_norm else None, rng=rng).astype(dtype)
    theirs = _torch_mnist_cnn(batch_norm).to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-12)
    if optimizer == "sgd":
        opt = optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
        topt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = optim.Adam(ours.parameters(), lr=1e-3)
        topt = torch.optim.Adam(theirs.parameters(), lr=1e-3)
    loss_fn = losses.CrossEntropyLoss()
    for step in range(3):
        x = rng.random((16, 1, 28, 28)).astype(dtype)
        y = rng.integers(0, 10, 16)
        loss = loss_fn(ours(x), y)
        ours.backward(loss_fn.backward())
        tloss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        assert loss == pytest.approx(tloss.item(), rel=1e-5), f"loss at step {step}"
        for (name, p), tp in zip(ours.named_parameters(), theirs.parameters()):
            assert_close_to_torch(p.grad, tp.grad, **tol, what=f"grad of {name}, step {step}")
        opt.step()
        opt.zero_grad()
        topt.step()
        topt.zero_grad()
    tstate = theirs.state_dict()
    for key, value in ours.state_dict().items():
        assert_close_to_torch(np.asarray(value), tstate[key], **tol, what=key)
