"""LayerNorm, GroupNorm, InstanceNorm and per-activation BatchNorm against PyTorch: forward,
input gradient, parameter gradients and running statistics, over several steps, shapes, groups,
affine on and off, float32 and float64 (BatchNorm's own comparison is in test_torch_parity.py)."""
import copy

import numpy as np
import pytest

from minidl.layers.normalization import GroupNorm, InstanceNorm, LayerNorm, PerActivationBatchNorm

from helpers import assert_close_to_torch, import_torch

torch = import_torch()
TOL = {np.float32: dict(rtol=1e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _copy_parameters(ours, theirs, rng):
    """Random parameters, the same in both layers."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(ours, name, None)
            if p is None:
                assert getattr(theirs, name, None) is None
                continue
            p.data[...] = rng.uniform(0.5, 1.5, p.shape) if name == "weight" else rng.standard_normal(p.shape)
            getattr(theirs, name).copy_(torch.from_numpy(p.data.reshape(getattr(theirs, name).shape)))


def _run_torch(layer, x, dy, flatten):
    xt = torch.tensor(x.reshape(x.shape[0], -1) if flatten else x, requires_grad=True)
    yt = layer(xt)
    yt.backward(torch.from_numpy(dy.reshape(yt.shape)))
    return yt.detach().numpy().reshape(x.shape), xt.grad.numpy().reshape(x.shape)


def _assert_matches(ours, theirs, exact, dtype, what):
    """``ours`` equals PyTorch's result ``theirs`` to the dtype's tolerance; in float32 the
    tolerance also allows twice PyTorch's own float32 error (against its float64 run,
    ``exact``), which is large where a gradient is a difference of nearly equal terms (groups
    of 2 values)."""
    tol = dict(TOL[dtype])
    if dtype == np.float32:
        tol["atol"] += 2 * float(np.max(np.abs(theirs - exact)))
    assert_close_to_torch(ours, theirs, **tol, what=what)


def _compare_steps(ours, theirs, shapes, dtype, rng, flatten=False):
    """Forward + backward on the same random batches; outputs, input and parameter gradients."""
    exact = copy.deepcopy(theirs).double()  # PyTorch in float64: its float32 error
    for step, shape in enumerate(shapes):
        x = (rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y = ours(x)
        dx = ours.backward(dy)
        yt, dxt = _run_torch(theirs, x, dy, flatten)
        y64, dx64 = _run_torch(exact, x.astype(np.float64), dy.astype(np.float64), flatten)
        what = f"step {step}, shape {shape}"
        _assert_matches(y, yt, y64, dtype, f"output, {what}")
        _assert_matches(dx, dxt, dx64, dtype, f"dx, {what}")
    for name in ("weight", "bias"):
        p = getattr(ours, name, None)
        if p is not None:
            _assert_matches(p.grad, getattr(theirs, name).grad.numpy().reshape(p.shape),
                            getattr(exact, name).grad.numpy().reshape(p.shape), dtype, f"d{name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, normalized_shape", [
    ((8, 10), (10,)), ((2, 5, 16), (16,)), ((2, 5, 16), (5, 16)), ((3, 4, 6, 5), (4, 6, 5)),
    ((4, 3, 7, 7), (7,)),
])
@pytest.mark.parametrize("affine", ["elementwise", "no bias", "none"])
def test_layer_norm_matches_torch(rng, shape, normalized_shape, affine, dtype):
    kwargs = dict(elementwise_affine=affine != "none", bias=affine == "elementwise")
    ours = LayerNorm(normalized_shape, eps=1e-5, dtype=dtype, **kwargs)
    theirs = torch.nn.LayerNorm(normalized_shape, eps=1e-5, dtype=TORCH_DTYPE[dtype], **kwargs)
    _copy_parameters(ours, theirs, rng)
    _compare_steps(ours, theirs, [shape, (1,) + shape[1:], shape], dtype, rng)
    ours.eval(), theirs.eval()
    _compare_steps(ours, theirs, [shape], dtype, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", [
    ((4, 6, 5, 5), 1), ((4, 6, 5, 5), 2), ((4, 6, 5, 5), 3), ((4, 6, 5, 5), 6),
    ((2, 32, 8, 8), 8), ((6, 8), 4), ((3, 6, 9), 3),
])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(rng, shape, groups, affine, dtype):
    ours = GroupNorm(groups, shape[1], affine=affine, dtype=dtype)
    theirs = torch.nn.GroupNorm(groups, shape[1], affine=affine, dtype=TORCH_DTYPE[dtype])
    _copy_parameters(ours, theirs, rng)
    _compare_steps(ours, theirs, [shape, (2,) + shape[1:]], dtype, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 10), (2, 5, 6, 7), (8, 4, 3, 3)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_instance_norm_matches_torch(rng, shape, affine, track, dtype):
    cls = torch.nn.InstanceNorm1d if len(shape) == 3 else torch.nn.InstanceNorm2d
    ours = InstanceNorm(shape[1], momentum=0.2, affine=affine, track_running_stats=track, dtype=dtype)
    theirs = cls(shape[1], momentum=0.2, affine=affine, track_running_stats=track,
                 dtype=TORCH_DTYPE[dtype])
    _copy_parameters(ours, theirs, rng)
    _compare_steps(ours, theirs, [shape] * 3, dtype, rng)
    if track:
        assert_close_to_torch(ours.running_mean, theirs.running_mean, **TOL[dtype], what="running_mean")
        assert_close_to_torch(ours.running_var, theirs.running_var, **TOL[dtype], what="running_var")
    ours.eval(), theirs.eval()  # running statistics when tracked, else the instances' own
    _compare_steps(ours, theirs, [shape], dtype, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 5), (8, 3, 4, 4), (6, 2, 7)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_per_activation_batchnorm_matches_torch_batchnorm1d_on_flattened_input(rng, shape,
                                                                               momentum, dtype):
    features = int(np.prod(shape[1:]))
    ours = PerActivationBatchNorm(shape[1:], momentum=momentum, dtype=dtype)
    theirs = torch.nn.BatchNorm1d(features, momentum=momentum, dtype=TORCH_DTYPE[dtype])
    _copy_parameters(ours, theirs, rng)
    _compare_steps(ours, theirs, [shape] * 3, dtype, rng, flatten=True)
    assert_close_to_torch(ours.running_mean.reshape(-1), theirs.running_mean, **TOL[dtype])
    assert_close_to_torch(ours.running_var.reshape(-1), theirs.running_var, **TOL[dtype])
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    _compare_steps(ours, theirs, [shape], dtype, rng, flatten=True)
