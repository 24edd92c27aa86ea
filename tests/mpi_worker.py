"""Programs that tests/test_distributed.py runs under ``mpiexec -n 2``: ``python mpi_worker.py NAME[,NAME...] [TIMEOUT]``.

The ``trainer`` program writes into the folder named by the environment variable
``MPI_WORKER_DIR``.

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


# --------------------------------------------------------------------------- SyncBatchNorm
def close(got, want, what, rtol=1e-10):
    """Equal to ``rtol`` relative (with an absolute floor of rtol * 1e-3 * max |want|)."""
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3 * max(1.0, float(np.abs(want).max())),
                               err_msg=f"rank {dist.get_rank()}: {what}")


def bn_cnn(seed, norm=layers.BatchNorm):
    """conv - norm - ReLU - pool - dense - norm - ReLU - dense, float64: BatchNorm over
    (N, H, W) and over N."""
    rng = np.random.default_rng(seed)
    return minidl.Sequential(
        layers.Conv2D(2, 4, kernel_size=3, padding=1, bias=False, rng=rng), norm(4), layers.ReLU(),
        layers.MaxPool2D(2), layers.Flatten(), layers.Dense(4 * 3 * 3, 8, bias=False, rng=rng), norm(8),
        layers.ReLU(), layers.Dense(8, 3, rng=rng)).astype(np.float64)


def image_batch(step, n=8):
    rng = np.random.default_rng(200 + step)
    return rng.standard_normal((n, 2, 6, 6)) * 2 + 1, rng.integers(0, 3, n)


def sgd_run(model, rows=None, steps=5, scale=None):
    """``steps`` SGD steps on image_batch(step) (or its ``rows``); returns per step the
    gradients and the first norm layer's output. With ``scale`` the loss is the batch's sum and
    its gradient is multiplied by ``scale``."""
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = losses.CrossEntropyLoss(reduction="mean" if scale is None else "sum")
    bn = next(m for _, m in model.named_modules() if isinstance(m, layers.BatchNorm))
    seen = []
    handle = bn.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0].copy(), output.copy())))
    grads = []
    for step in range(steps):
        x, y = image_batch(step)
        if rows is not None:
            x, y = x[rows], y[rows]
        loss_fn(model(x), y)
        dout = loss_fn.backward()
        model.backward(dout if scale is None else dout * scale, input_grad=False)
        grads.append([p.grad.copy() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
    handle.remove()
    return grads, seen


def running_stats(model):
    return [b for name, b in model.state_dict().items() if "running" in name]


def sync_batchnorm():
    rank = dist.get_rank()
    halves = slice(4 * rank, 4 * rank + 4)
    single = bn_cnn(seed=0)
    want, want_seen = sgd_run(single)

    # N = 2 ranks with batch 4 each and SyncBatchNorm reproduce 1 process with batch 8
    synced = dist.DistributedDataParallel(layers.SyncBatchNorm.convert_sync_batchnorm(bn_cnn(seed=rank)))
    check(sum(isinstance(m, layers.SyncBatchNorm) for _, m in synced.named_modules()) == 2, "converted")
    got, got_seen = sgd_run(synced, halves)
    for step, (gs, ws) in enumerate(zip(got, want)):
        for i, (g, w) in enumerate(zip(gs, ws)):
            close(g, w, f"SyncBatchNorm: gradient {i} at step {step}")
    for p, q in zip(synced.parameters(), single.parameters()):
        close(p.data, q.data, "SyncBatchNorm: parameters after 5 steps")
        check(same_on_all_ranks(p.data), "replicas identical")
    for a, b in zip(running_stats(synced), running_stats(single)):
        close(a, b, "SyncBatchNorm: running statistics after 5 steps")
        check(same_on_all_ranks(a), "running statistics identical on every rank")
    close(got_seen[0][1], want_seen[0][1][halves], "SyncBatchNorm output = the full batch's rows")

    # with ordinary BatchNorm they differ, and the difference is the per-process statistics
    plain = dist.DistributedDataParallel(bn_cnn(seed=rank))
    got, got_seen = sgd_run(plain, halves)
    bn_input, bn_output = got_seen[0]
    close(bn_input, want_seen[0][0][halves], "BatchNorm's input is the full batch's rows")
    own_half = layers.BatchNorm(4, dtype=np.float64)(bn_input)  # statistics of this rank's half
    close(bn_output, own_half, "each rank's BatchNorm normalizes with its own half's statistics")
    gap = np.abs(bn_output - want_seen[0][1][halves]).max()
    check(gap > 1e-2, f"per-process statistics change the output (largest difference {gap})")
    rel = max(np.abs(p.data - q.data).max() / np.abs(q.data).max()
              for p, q in zip(plain.parameters(), single.parameters()))
    check(rel > 1e-4, f"ordinary BatchNorm must not reproduce the single process (relative {rel})")

    # uneven batches, 3 and 5: summed losses scaled by W / 8, so DDP's average is the mean's gradient
    rows = slice(0, 3) if rank == 0 else slice(3, 8)
    uneven = dist.DistributedDataParallel(layers.SyncBatchNorm.convert_sync_batchnorm(bn_cnn(seed=rank)))
    got, got_seen = sgd_run(uneven, rows, scale=2 / 8)
    for step, (gs, ws) in enumerate(zip(got, want)):
        for i, (g, w) in enumerate(zip(gs, ws)):
            close(g, w, f"uneven batches: gradient {i} at step {step}")
    for p, q in zip(uneven.parameters(), single.parameters()):
        close(p.data, q.data, "uneven batches: parameters after 5 steps")
    for a, b in zip(running_stats(uneven), running_stats(single)):
        close(a, b, "uneven batches: running statistics")
    close(got_seen[0][1], want_seen[0][1][rows], "uneven batches: outputs")

    # a rank without samples: the other rank's batch alone sets the statistics
    x, _ = image_batch(0)
    bn = layers.SyncBatchNorm(2, dtype=np.float64)
    out = bn(x if rank == 0 else x[:0])
    dout = np.random.default_rng(5).standard_normal(x.shape)
    dx = bn.backward(dout if rank == 0 else dout[:0])
    alone = layers.BatchNorm(2, dtype=np.float64)
    want_out, want_dx = alone(x), alone.backward(dout)
    check(out.shape == dx.shape == (8 if rank == 0 else 0, 2, 6, 6), f"output shape {out.shape}")
    if rank == 0:
        close(out, want_out, "one rank with every sample: output")
        close(dx, want_dx, "one rank with every sample: dx")
    close(bn.running_var, alone.running_var, "one rank with every sample: running variance")


# ---------------------------------------------------------------------------------- Trainer
def trainer():
    """The Trainer on DDP + SyncBatchNorm: rank 0 alone prints and writes, the figures are
    summed over the ranks and equal on both, resume reads the checkpoint on every rank."""
    import contextlib
    import io
    import os

    rank = dist.get_rank()
    tmp = os.environ["MPI_WORKER_DIR"]
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((47, 2, 6, 6)), rng.integers(0, 3, 47)
    train, val = ArrayDataset(x[:32], y[:32]), ArrayDataset(x[32:], y[32:])  # 15 validation samples

    def build():
        model = dist.DistributedDataParallel(layers.SyncBatchNorm.convert_sync_batchnorm(bn_cnn(seed=rank)))
        return model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def train_loader():
        return DataLoader(train, batch_size=4, shuffle=True, seed=5, num_shards=2, shard_index=rank)

    val_loader = DataLoader(val, batch_size=4, num_shards=2, shard_index=rank)  # 8 + 8: sample 0 twice

    # each rank gets its own folder: whatever rank 1 wrote would show up in rank1/
    own = os.path.join(tmp, f"rank{rank}")
    model, opt = build()
    best = minidl.ModelCheckpoint(os.path.join(own, "best-{epoch}.weights"), save_best_only=True)
    trainer = minidl.Trainer(model, losses.CrossEntropyLoss(), opt, progress=True,
                             callbacks=[best, minidl.CSVLogger(os.path.join(own, "log.csv"))])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        history = trainer.fit(train_loader(), epochs=2, val_loader=val_loader, checkpoint_dir=own,
                              checkpoint_every=3)
    dist.barrier()
    if rank == 0:
        written = sorted(os.listdir(own))
        check(written[-2:] == ["last.ckpt", "log.csv"] and written[0].startswith("best-"), f"rank 0 wrote {written}")
        check("epoch 2/2: loss" in out.getvalue() and "epoch 1/2" in err.getvalue(), "rank 0 shows progress")
    else:
        check(not os.path.exists(own), f"rank 1 wrote {os.listdir(own) if os.path.exists(own) else ''}")
        check(out.getvalue() == "" and err.getvalue() == "", f"rank 1 printed {out.getvalue()!r} {err.getvalue()!r}")
    check(best.saved == [os.path.join(own, f"best-{e}.weights") for e in best_epochs(history)],
          f"ModelCheckpoint state on every rank: {best.saved}")
    figures = np.array(history.step_loss + [v for k in sorted(history.history) for v in history.history[k]])
    check(len(history.step_loss) == 8 and same_on_all_ranks(figures), "History identical on both ranks")

    # evaluation: sums over the ranks; a sharded loader counts its padding (sample 0) twice
    with minidl.no_grad():
        model.eval()
        logits = model.module(x[32:])
        model.train()
    shifted = logits - logits.max(axis=1, keepdims=True)
    per_sample = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(15), y[32:]]
    correct = np.argmax(logits, axis=1) == y[32:]
    sharded = trainer.evaluate(val_loader, progress=False)
    check(same_on_all_ranks(np.array(list(sharded.values()))), "evaluate equal on both ranks")
    close(sharded["loss"], (per_sample.sum() + per_sample[0]) / 16, "sharded evaluation counts sample 0 twice", 1e-12)
    close(sharded["accuracy"], (correct.sum() + correct[0]) / 16, "sharded accuracy", 1e-12)
    whole = trainer.evaluate(DataLoader(val, batch_size=4), progress=False)  # the whole set everywhere
    close(whole["loss"], per_sample.mean(), "unsharded evaluation on every rank", 1e-12)
    close(history.history["val_loss"][-1], sharded["loss"], "val_loss of the last epoch", 1e-12)

    # resume="auto" where only rank 0 sees a checkpoint: an error on every rank, no divergence
    try:
        trainer.fit(train_loader(), epochs=3, checkpoint_dir=own, resume="auto")
    except ValueError as error:
        check("exists on 1 of 2 ranks" in str(error), str(error))
    else:
        check(False, "resume with a checkpoint on one rank only was accepted")

    # resume: 1 epoch, then a fresh trainer resumes to 2 = 2 epochs without a break, bit for bit
    straight, opt = build()
    minidl.Trainer(straight, losses.CrossEntropyLoss(), opt, progress=False).fit(train_loader(), epochs=2)
    shared = os.path.join(tmp, "shared")
    first, opt = build()
    minidl.Trainer(first, losses.CrossEntropyLoss(), opt, progress=False).fit(
        train_loader(), epochs=1, checkpoint_dir=shared)
    resumed, opt = build()
    resumed_trainer = minidl.Trainer(resumed, losses.CrossEntropyLoss(), opt, progress=False)
    again = resumed_trainer.fit(train_loader(), epochs=2, checkpoint_dir=shared, resume=True)
    check(resumed_trainer.global_step == 8 and len(again.step_loss) == 8, "resumed to 2 epochs")
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        check(np.array_equal(a, b), f"resumed run differs from the straight one in {name}")


def best_epochs(history):
    """The epochs at which val_loss improved (ModelCheckpoint's save_best_only rule)."""
    epochs, best = [], np.inf
    for epoch, value in enumerate(history.history["val_loss"], start=1):
        if value < best:
            epochs.append(epoch)
            best = value
    return epochs


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


PROGRAMS = {"collectives": collectives, "ddp": ddp, "sync_batchnorm": sync_batchnorm, "trainer": trainer,
            "raising_rank": raising_rank, "stuck_rank": stuck_rank}

if __name__ == "__main__":
    names = sys.argv[1]  # comma-separated program names
    dist.init(timeout=float(sys.argv[2]) if len(sys.argv) > 2 else None)
    for name in names.split(","):
        PROGRAMS[name]()
    print(f"rank {dist.get_rank()}: {names} ok", flush=True)
