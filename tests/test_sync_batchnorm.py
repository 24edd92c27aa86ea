"""SyncBatchNorm in one process: BatchNorm bit for bit, gradient checks, and W ranks as threads.

The ranks of a data-parallel job are simulated by threads (tests/thread_group.py), so the
statistics of several batches, uneven and empty ones, and the gradients across ranks are
checked here without MPI. tests/mpi_worker.py checks the same under ``mpiexec -n 2``, with
DistributedDataParallel and the Trainer.
"""
import threading

import numpy as np
import pytest

import minidl
import minidl.distributed as dist
from minidl import functional as F
from minidl import layers

from thread_group import run_ranks, thread_groups


@pytest.fixture(autouse=True)
def no_process_group():
    """SyncBatchNorm without a process_group uses the world when there is one: start without."""
    dist.destroy_process_group()
    yield
    dist.destroy_process_group()


def full_batch_norm(x, weight, bias, dout, momentum=0.1):
    """One process's BatchNorm on the whole batch: out, dx, dweight, dbias, running mean/var."""
    bn = layers.BatchNorm(x.shape[1], momentum=momentum, dtype=np.float64)
    bn.weight.data[...], bn.bias.data[...] = weight, bias
    out = bn(x)
    dx = bn.backward(dout)
    return out, dx, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


def sync_on_threads(parts, weight, bias, douts, momentum=0.1):
    """One SyncBatchNorm per part, each on its own thread-rank: every rank's out, dx, dweight,
    dbias, running mean/var."""
    groups = thread_groups(len(parts))

    def rank(group):
        bn = layers.SyncBatchNorm(parts[0].shape[1], momentum=momentum, process_group=group,
                                  dtype=np.float64)
        bn.weight.data[...], bn.bias.data[...] = weight, bias
        out = bn(parts[group.rank])
        dx = bn.backward(douts[group.rank])
        return out, dx, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var

    return run_ranks(groups, rank)


def split(array, sizes):
    return np.split(array, np.cumsum(sizes)[:-1])


# --------------------------------------------------------------------------- one process
@pytest.mark.parametrize("shape", [(6, 3), (5, 4, 7), (4, 3, 5, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine, track, momentum", [(True, True, 0.1), (False, True, None),
                                                     (True, False, 0.1)])
def test_in_one_process_it_is_batchnorm_bit_for_bit(rng, shape, dtype, affine, track, momentum):
    plain = layers.BatchNorm(shape[1], momentum=momentum, affine=affine,
                             track_running_stats=track, dtype=dtype)
    synced = layers.SyncBatchNorm(shape[1], momentum=momentum, affine=affine,
                                  track_running_stats=track, dtype=dtype)
    if affine:
        for layer in (plain, synced):
            layer.weight.data[...] = np.linspace(0.5, 1.5, shape[1])
            layer.bias.data[...] = np.linspace(-1, 1, shape[1])
    for step in range(3):
        x = (rng.standard_normal(shape) * 3 + step).astype(dtype)
        dout = rng.standard_normal(shape).astype(dtype)
        for mode in ("train", "eval"):
            getattr(plain, mode)(), getattr(synced, mode)()
            np.testing.assert_array_equal(synced(x), plain(x))
            np.testing.assert_array_equal(synced.backward(dout), plain.backward(dout))
    assert synced.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(synced.state_dict()[key], value, err_msg=key)
    for p, q in zip(synced.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_in_a_world_of_one_it_is_batchnorm_and_communicates(rng):
    """After dist.init() without a launcher (a world of one) the synchronized path runs, with
    the one-process collectives, and still computes BatchNorm's bits."""
    dist.init()
    x, dout = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    plain = layers.BatchNorm(3, dtype=np.float64)
    synced = layers.SyncBatchNorm(3, dtype=np.float64)
    assert synced._group() is dist.init()
    np.testing.assert_array_equal(synced(x), plain(x))
    np.testing.assert_array_equal(synced.backward(dout), plain.backward(dout))


@pytest.mark.parametrize("modes", [("train",), ("eval",)])
def test_gradcheck_with_a_layer_before_it(rng, modes):
    minidl.manual_seed(0)
    model = minidl.Sequential(layers.Conv2D(2, 3, kernel_size=3, padding=1, bias=False),
                              layers.SyncBatchNorm(3)).astype(np.float64)
    model[1].weight.data[...] = rng.uniform(0.5, 1.5, 3)
    model[1].bias.data[...] = rng.standard_normal(3)
    model[1].running_var[...] = rng.uniform(0.5, 2, 3)
    x = rng.standard_normal((3, 2, 4, 4))
    report = minidl.gradcheck(model, x, modes=modes, seed=int(rng.integers(2 ** 31)))
    assert {c.name for c in report.checks} == {"input", "0.weight", "1.weight", "1.bias"}


# ----------------------------------------------------------------------- ranks as threads
@pytest.mark.parametrize("sizes", [(4, 4), (3, 5), (8, 0), (0, 2, 1)])
def test_ranks_together_normalize_as_one_process_with_their_union(rng, sizes):
    """W ranks holding parts of a batch (uneven, one empty) get, rank by rank, the rows that
    BatchNorm on the whole batch gives: outputs, input gradients, running statistics; their
    parameter gradients add up to the whole batch's."""
    c = 3
    x = rng.standard_normal((sum(sizes), c, 3, 2)) * [[[2.0]], [[0.5]], [[1.0]]] + [[[1]], [[-3]], [[0]]]
    dout = rng.standard_normal(x.shape)
    weight, bias = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    out, dx, dweight, dbias, running_mean, running_var = full_batch_norm(x, weight, bias, dout)
    ranks = sync_on_threads(split(x, sizes), weight, bias, split(dout, sizes))
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r[0] for r in ranks]), out, **tol)
    np.testing.assert_allclose(np.concatenate([r[1] for r in ranks]), dx, **tol)
    np.testing.assert_allclose(sum(r[2] for r in ranks), dweight, **tol)
    np.testing.assert_allclose(sum(r[3] for r in ranks), dbias, **tol)
    for r in ranks:  # bit-identical running statistics on every rank
        np.testing.assert_array_equal(r[4], ranks[0][4])
        np.testing.assert_array_equal(r[5], ranks[0][5])
    np.testing.assert_allclose(ranks[0][4], running_mean, **tol)
    np.testing.assert_allclose(ranks[0][5], running_var, **tol)  # unbiased with the global count


def test_gradcheck_across_two_ranks_with_uneven_batches(rng):
    """The gradient of sum(concat(rank outputs) * dout) with respect to the whole input and to
    gamma, beta (summed over the ranks), against central differences, for parts of 3 and 5."""
    sizes = (3, 5)

    def forward(x, weight, bias):
        groups = thread_groups(2)
        bns = [layers.SyncBatchNorm(3, process_group=g, dtype=np.float64) for g in groups]
        for bn in bns:
            bn.weight.data[...], bn.bias.data[...] = weight, bias
        parts = split(x, sizes)
        return np.concatenate(run_ranks(groups, lambda g: bns[g.rank](parts[g.rank]))), (bns, groups)

    def backward(dout, cache):
        bns, groups = cache
        parts = split(dout, sizes)
        dx = np.concatenate(run_ranks(groups, lambda g: bns[g.rank].backward(parts[g.rank])))
        return dx, sum(bn.weight.grad for bn in bns), sum(bn.bias.grad for bn in bns)

    x = rng.standard_normal((8, 3, 2, 2))
    report = minidl.gradcheck((forward, backward), (x, rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)),
                              seed=int(rng.integers(2 ** 31)))
    assert [c.name for c in report.checks] == ["x", "weight", "bias"]


def test_float32_statistics_across_ranks_keep_batchnorm_guarantees(rng):
    """A channel with mean 1e4 and std 1e-2, split over two ranks in float32, normalizes as in
    float64; a constant channel gives exactly beta on every rank."""
    x = np.empty((8, 2, 16), np.float32)
    x[:, 0] = 1e4 + 1e-2 * rng.standard_normal((8, 16))
    x[:, 1] = -7.25
    bias = np.array([0.5, 0.25])
    ranks = sync_on_threads(split(x, (3, 5)), np.ones(2), bias, split(np.ones_like(x), (3, 5)))
    out = np.concatenate([r[0] for r in ranks])
    assert out.dtype == np.float32
    expected = F.batch_norm_forward(x.astype(np.float64), None, bias)[0]
    np.testing.assert_allclose(out[:, 0], expected[:, 0], rtol=0, atol=2e-3)
    var = x[:, 0].astype(np.float64).var()
    assert abs(out[:, 0].std() - np.sqrt(var / (var + 1e-5))) < 1e-3  # (var ~ 1e-4, eps 1e-5)
    assert np.all(out[:, 1] == np.float32(0.25))


def test_too_few_values_over_all_ranks_fail_on_every_rank():
    """One sample of (N, C) input on one rank and none on the other: every rank raises the same
    error after the exchange (none is left waiting)."""
    groups = thread_groups(2)
    parts = [np.ones((1, 3)), np.ones((0, 3))]

    def rank(group):
        bn = layers.SyncBatchNorm(3, process_group=group, dtype=np.float64)
        try:
            bn(parts[group.rank])
        except ValueError as error:
            return str(error)

    messages = run_ranks(groups, rank)
    assert all("SyncBatchNorm: expected more than 1 value per channel over all processes when "
               "training, got 1" in m for m in messages)


def test_each_rank_calls_one_all_gather_forward_and_one_all_reduce_backward(rng):
    groups = thread_groups(2)
    parts = split(rng.standard_normal((6, 4, 3)), (3, 3))

    def rank(group):
        bn = layers.SyncBatchNorm(4, process_group=group)
        bn(parts[group.rank].astype(np.float32))
        bn.backward(np.ones((3, 4, 3), np.float32))
        bn.eval()
        bn(parts[group.rank].astype(np.float32))  # eval: running statistics, no communication
        return list(group.calls)

    assert run_ranks(groups, rank) == [["all_gather", "all_reduce"]] * 2


def test_eval_mode_is_batchnorm_on_every_rank(rng):
    x = rng.standard_normal((5, 3, 2, 2))
    plain = layers.BatchNorm(3, dtype=np.float64)
    plain.running_mean[...], plain.running_var[...] = [1, 2, 3], [0.5, 1, 2]
    synced = layers.SyncBatchNorm.convert_sync_batchnorm(plain)
    synced.eval(), plain.eval()
    np.testing.assert_array_equal(synced(x), plain(x))
    with pytest.raises(ValueError, match="SyncBatchNorm: expected input of shape .* with no empty axis"):
        synced(np.zeros((0, 3, 2, 2)))  # an empty batch only in training, where ranks combine


def test_a_process_group_of_its_own_normalizes_with_its_own_batch(rng):
    """process_group selects the ranks: a group of one rank per thread is plain BatchNorm."""
    x = rng.standard_normal((4, 3))
    solo = layers.SyncBatchNorm(3, process_group=dist.ProcessGroup(), dtype=np.float64)
    np.testing.assert_array_equal(solo(x), layers.BatchNorm(3, dtype=np.float64)(x))


# --------------------------------------------------------------------------- conversion
def test_convert_sync_batchnorm_replaces_every_batchnorm_and_keeps_the_state(rng):
    minidl.manual_seed(0)
    inner = minidl.Sequential(layers.Conv2D(3, 4, kernel_size=3, bias=False),
                              layers.BatchNorm2D(4, eps=1e-3, momentum=None))
    model = minidl.Sequential(inner, layers.ReLU(), layers.Flatten(), layers.Dense(4 * 3 * 3, 6),
                              layers.BatchNorm1D(6, affine=False), layers.PerActivationBatchNorm(6),
                              layers.GroupNorm(2, 6), layers.BatchNorm(6, track_running_stats=False))
    model.train()
    inner[1].eval()
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    model[4].train(), model(x)  # some running statistics to carry over
    before = {k: v.copy() for k, v in model.state_dict().items()}
    bn2d, params = inner[1], (inner[1].weight, inner[1].bias)
    optimizer = minidl.optim.SGD(model.parameters(), lr=0.1)

    group = dist.ProcessGroup()
    assert layers.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group) is model
    converted = [m for _, m in model.named_modules() if isinstance(m, layers.SyncBatchNorm)]
    assert [type(m).__name__ for m in (inner[1], model[4], model[5], model[6], model[7])] == [
        "SyncBatchNorm", "SyncBatchNorm", "PerActivationBatchNorm", "GroupNorm", "SyncBatchNorm"]
    assert len(converted) == 3 and all(m.process_group is group for m in converted)
    new = inner[1]
    assert (new.num_features, new.eps, new.momentum, new.affine, new.track_running_stats) == (4, 1e-3, None, True, True)
    assert not new.training and model[4].training
    assert (new.weight, new.bias) == params  # the same Parameters: the optimizer still has them
    assert new.running_mean is bn2d.running_mean and new.running_var is bn2d.running_var
    assert model[4].weight is None and model[7].running_mean is None
    assert list(model.state_dict()) == list(before)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    model(x)
    model.backward(rng.standard_normal((4, 6)).astype(np.float32))
    optimizer.step()
    assert not np.array_equal(new.weight.data, before["0.1.weight"])


def test_convert_sync_batchnorm_of_a_batchnorm_returns_a_new_layer():
    bn = layers.BatchNorm(5).astype(np.float64)
    synced = layers.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(synced) is layers.SyncBatchNorm and synced.weight is bn.weight
    assert synced.running_mean.dtype == np.float64 and synced.process_group is None
    again = layers.SyncBatchNorm.convert_sync_batchnorm(synced, dist.ProcessGroup())
    assert again is not synced and again.process_group is not None  # as PyTorch: re-created
    for other in (layers.ReLU(), layers.InstanceNorm2D(3, track_running_stats=True)):
        assert layers.SyncBatchNorm.convert_sync_batchnorm(other) is other


@pytest.mark.parametrize("call, error, match", [
    (lambda: layers.SyncBatchNorm(3, process_group="world"), TypeError,
     "SyncBatchNorm: process_group must be a minidl.distributed.ProcessGroup or None, got str"),
    (lambda: layers.SyncBatchNorm.convert_sync_batchnorm([layers.BatchNorm(2)]), TypeError,
     "SyncBatchNorm.convert_sync_batchnorm: module must be a minidl Module, got list"),
    (lambda: layers.SyncBatchNorm(3)(np.zeros((2, 4))), ValueError,
     r"SyncBatchNorm: expected input of shape \(N, 3\)"),
    (lambda: layers.SyncBatchNorm(3)(np.zeros((2, 3), np.int32)), TypeError,
     "SyncBatchNorm: expected input dtype float32 or float64, got int32"),
    (lambda: layers.SyncBatchNorm(3)(np.zeros((0, 3, 0))), ValueError, "with no empty axis"),
    (lambda: layers.SyncBatchNorm(3)(np.zeros((1, 3))), ValueError,
     "SyncBatchNorm: expected more than 1 value per channel over all processes when training, got 1"),
])
def test_bad_arguments_and_inputs_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- functional
def test_functional_pair_with_callables(rng):
    """sync_batch_norm_forward/backward take the communication as callables; gathering two
    copies of one batch's statistics is the statistics of the batch twice over."""
    x, dout = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    running = np.zeros(3), np.ones(3)
    out, cache = F.sync_batch_norm_forward(x, None, None, *running, momentum=1.0,
                                           all_gather=lambda a: np.stack([a, a]))
    assert cache.count == 2 * 4 * 5
    np.testing.assert_allclose(out, F.batch_norm_forward(x, training=True)[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(running[1], x.var(axis=(0, 2)) * 40 / 39, rtol=1e-12)
    dx, dweight, dbias = F.sync_batch_norm_backward(dout, cache, all_reduce=lambda a: np.multiply(a, 2, out=a))
    assert dweight is None and dbias is None
    expected = F.batch_norm_backward(dout, F.batch_norm_forward(x, training=True)[1])[0]
    np.testing.assert_allclose(dx, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"all_gather must return a \(processes, 7\) array, got \(7,\)"):
        F.sync_batch_norm_forward(x, all_gather=lambda a: a, layer="sbn")
    with pytest.raises(ValueError, match=r"sbn: expected gradient of shape \(4, 3, 5\)"):
        F.sync_batch_norm_backward(dout[:2], cache, layer="sbn")


def test_thread_group_helper_reports_a_failing_rank_without_hanging():
    groups = thread_groups(2, timeout=5)

    def rank(group):
        if group.rank == 1:
            raise RuntimeError("rank 1 failed")
        dist.all_reduce(np.ones(2), group=group)

    with pytest.raises(RuntimeError, match="rank 1 failed"):
        run_ranks(groups, rank)
    assert threading.active_count() >= 1
