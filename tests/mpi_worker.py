"""Programs that tests/test_distributed.py runs under ``mpiexec -n 2``: ``python mpi_worker.py NAME[,NAME...] [TIMEOUT]``.

Each program checks many things in one MPI start-up (which costs about a second). A failed
check raises, and minidl.distributed's excepthook then aborts every rank, so the test sees a
non-zero exit instead of a hang; a passing rank prints ``rank R: NAME ok``.
"""
import sys
import time

import numpy as np

import minidl
import minidl.distributed as dist
from minidl import layers, losses, optim
from minidl.data import ArrayDataset, DataLoader


def check(condition, message):
    if not condition:
        raise AssertionError(f"rank {dist.get_rank()}: {message}")


def same_on_all_ranks(array):
    gathered = dist.all_gather(np.ascontiguousarray(array))
    return all(np.array_equal(gathered[0], row) for row in gathered[1:])


# ------------------------------------------------------------------------------ collectives
def collectives():
    rank, size = dist.get_rank(), dist.get_world_size()
    check(dist.is_initialized() and size == 2 and dist.is_main_process() == (rank == 0), "world")
    for dtype in (np.float32, np.float64, np.int32, np.int64):
        for op, expect in (("sum", [1, 5]), ("max", [1, 3]), ("min", [0, 2])):
            a = np.array([rank, 2 + rank], dtype)        # rank 0: [0, 2], rank 1: [1, 3]
            out = dist.all_reduce(a, op)
            check(out is a and a.dtype == dtype and a.tolist() == expect, f"all_reduce {op} {dtype}: {a}")
    a = np.array(2.0 * rank + 1, np.float32)              # 0-d: 1 and 3
    check(dist.all_reduce(a, "mean") == 2.0, f"mean of a 0-d array: {a}")
    work = dist.all_reduce(np.full((3, 4), rank + 1.0), "mean", async_op=True)
    check(np.all(work.wait() == 1.5), "async mean")
    b = np.full(5, rank, np.int64)
    dist.broadcast(b, root=1)
    check(b.tolist() == [1] * 5, f"broadcast from 1: {b}")
    g = dist.all_gather(np.array([rank, 10 + rank], np.float64))
    check(g.tolist() == [[0, 10], [1, 11]], f"all_gather: {g}")
    dist.barrier()
    solo = dist.new_group([1])
    check((solo is None) == (rank == 0), "new_group([1]) membership")
    if solo is not None:
        check(solo.size == 1 and solo.rank == 0 and dist.all_reduce(np.ones(2), group=solo).tolist() == [1, 1],
              "one-rank group")
    swapped = dist.new_group([1, 0])
    check(swapped.rank == 1 - rank, "new_group([1, 0]) renumbers the ranks")
    check(dist.all_gather(np.array([rank]), group=swapped).tolist() == [[1], [0]], "gather in group order")
    totals = dist.reduce_metrics({"loss_sum": 0.5 * (rank + 1), "count": 10 + rank})
    check(totals == {"count": 21.0, "loss_sum": 1.5}, f"reduce_metrics: {totals}")
    try:
        dist.reduce_metrics({"loss_sum": 1.0, ("count" if rank == 0 else "n"): 1})
    except ValueError as err:
        check("different keys" in str(err), str(err))
    else:
        check(False, "reduce_metrics with different keys did not raise")


# ------------------------------------------------------------------------------------- DDP
def mlp(seed):
    rng = np.random.default_rng(seed)
    model = minidl.Sequential(layers.Dense(6, 16, rng=rng), layers.ReLU(),
                              layers.Dense(16, 16, rng=rng), layers.ReLU(), layers.Dense(16, 3, rng=rng))
    return model.astype(np.float64)


def full_batch(step, n=8):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((n, 6)), rng.integers(0, 3, n)


def sgd_steps(model, steps, shard=None):
    """``steps`` SGD steps on full_batch(step), or on this rank's half of it; returns the grads."""
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = losses.CrossEntropyLoss()
    grads = []
    for step in range(steps):
        x, y = full_batch(step)
        if shard is not None:
            x, y = x[shard::2], y[shard::2]
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        grads.append([p.grad.copy() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
    return grads


def ddp():
    rank = dist.get_rank()
    for overlap, bucket_bytes in ((False, 25 * 2 ** 20), (False, 600), (True, 600), (True, 25 * 2 ** 20)):
        model = dist.DistributedDataParallel(mlp(seed=rank), bucket_bytes=bucket_bytes, overlap=overlap)
        single = mlp(seed=0)                # what rank 0 built: the single-process run
        for p, q in zip(model.parameters(), single.parameters()):
            check(np.array_equal(p.data, q.data), "construction copies rank 0's parameters")
        expect_buckets = 1 if bucket_bytes > 10_000 else 4
        check(len(model.bucket_sizes()) == expect_buckets, f"buckets {model.bucket_sizes()}")
        got, want = sgd_steps(model, 5, shard=rank), sgd_steps(single, 5)
        for step, (gs, ws) in enumerate(zip(got, want)):
            for g, w in zip(gs, ws):
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15,
                                           err_msg=f"gradient at step {step}, overlap={overlap}")
        for p, q in zip(model.parameters(), single.parameters()):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-10, atol=1e-14)
            check(same_on_all_ranks(p.data), "replicas identical after 5 steps")

    # no_sync: two local backwards accumulate, the next synced one averages the sum
    model = dist.DistributedDataParallel(mlp(seed=0))
    single = mlp(seed=0)
    loss_fn = losses.CrossEntropyLoss()
    for step in range(3):
        x, y = full_batch(step)
        loss_fn(single(x), y)
        single.backward(loss_fn.backward())
        ctx = model.no_sync() if step < 2 else _nothing()
        with ctx:
            loss_fn(model(x[rank::2]), y[rank::2])
            model.backward(loss_fn.backward())
        if step == 0:
            check(not same_on_all_ranks(model.parameters()[0].grad), "no_sync left the gradients local")
    for p, q in zip(model.parameters(), single.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-15, err_msg="no_sync accumulation")

    # ranks that built different models get a clear error on every rank (no hang, no garbage)
    try:
        dist.DistributedDataParallel(mlp(0) if rank == 0 else minidl.Sequential(layers.Dense(6, 3)))
    except ValueError as err:
        check("different models" in str(err), str(err))
    else:
        check(False, "different models were accepted")

    # the Trainer works unchanged on the wrapper with a sharded loader
    rng = np.random.default_rng(7)
    dataset = ArrayDataset(rng.standard_normal((40, 6)), rng.integers(0, 3, 40))
    model = dist.DistributedDataParallel(mlp(seed=rank))
    loader = DataLoader(dataset, batch_size=5, shuffle=True, seed=3, num_shards=2, shard_index=rank)
    trainer = minidl.Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
                             progress=False)
    trainer.fit(loader, epochs=2)
    check(trainer.global_step == 8, f"steps {trainer.global_step}")
    for p in model.parameters():
        check(same_on_all_ranks(p.data), "Trainer on DDP keeps the replicas identical")
    check(list(model.state_dict())[0] == "module.0.weight", "state_dict keys are prefixed 'module.'")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------- failures
def raising_rank():
    if dist.get_rank() == 1:
        raise RuntimeError("deliberate failure on rank 1")
    dist.all_reduce(np.ones(3))            # rank 1 never joins: without the abort this hangs
    print("rank 0 passed a collective that rank 1 never joined", flush=True)


def stuck_rank():
    if dist.get_rank() == 1:
        time.sleep(120)                    # alive but not communicating
    dist.all_reduce(np.ones(3))


PROGRAMS = {"collectives": collectives, "ddp": ddp, "raising_rank": raising_rank, "stuck_rank": stuck_rank}

if __name__ == "__main__":
    names = sys.argv[1]  # comma-separated program names
    dist.init(timeout=float(sys.argv[2]) if len(sys.argv) > 2 else None)
    for name in names.split(","):
        PROGRAMS[name]()
    print(f"rank {dist.get_rank()}: {names} ok", flush=True)
