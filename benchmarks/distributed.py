"""Time data-parallel training steps of the MNIST CNN: DDP with and without overlap, and the
all-reduce alone.

    mpiexec -n 2 python benchmarks/distributed.py            # add --oversubscribe on 2 cores
    python benchmarks/distributed.py                         # one process: no communication

Every rank runs ``--steps`` training steps (forward, cross-entropy, backward with the gradient
all-reduce, SGD) on random data, for each configuration in turn, ``--rounds`` times
interleaved; rank 0 prints the median milliseconds per step, and the gradient bytes each rank
sends into the all-reduce per step. Set ``MINIDL_NUM_THREADS`` to choose the kernel threads of
each rank. Like benchmarks/run.py this is not a test: it never fails on slow figures.
"""
import argparse
import time

import numpy as np

import minidl
import minidl.distributed as dist
from minidl import losses, optim
from minidl.experiments import mnist_cnn


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="images per rank and step")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is shown")
    parser.add_argument("--bucket-bytes", type=int, default=2 ** 20,
                        help="bucket size of the 'small buckets' configurations")
    parser.add_argument("--no-batch-norm", action="store_true", help="the CNN without BatchNorm")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dist.init()
    rank, size = dist.get_rank(), dist.get_world_size()
    minidl.manual_seed(0)
    configs = {
        "DDP, one 25 MiB bucket": dict(),
        f"DDP, {args.bucket_bytes} B buckets": dict(bucket_bytes=args.bucket_bytes),
        f"DDP, {args.bucket_bytes} B buckets, overlap": dict(bucket_bytes=args.bucket_bytes, overlap=True),
    }
    models = {name: dist.DistributedDataParallel(mnist_cnn(batch_norm=not args.no_batch_norm), **kw)
              for name, kw in configs.items()}
    rng = np.random.default_rng(rank)
    x = rng.random((args.batch_size, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)
    loss_fn = losses.CrossEntropyLoss()
    grads = [p.grad for p in next(iter(models.values())).parameters()]
    flat = np.zeros(sum(g.size for g in grads), np.float32)

    def train(model):
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(args.steps):
            loss_fn(model(x), y)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            opt.zero_grad()

    def all_reduce_only():
        for _ in range(args.steps):
            dist.all_reduce(flat, "sum")

    tasks = {name: (lambda m=m: train(m)) for name, m in models.items()}
    tasks["all-reduce of the gradients alone"] = all_reduce_only
    times = {name: [] for name in tasks}
    for task in tasks.values():  # warm-up
        task()
    for _ in range(args.rounds):
        for name, task in tasks.items():
            dist.barrier()
            start = time.perf_counter()
            task()
            elapsed = np.array([time.perf_counter() - start])
            dist.all_reduce(elapsed, "max")  # a step is as slow as its slowest rank
            times[name].append(elapsed[0] / args.steps * 1e3)
    if rank == 0:
        print(f"{size} process(es), {minidl.get_num_threads()} kernel thread(s) each, batch "
              f"{args.batch_size} per process, {flat.size:,} parameters = {flat.nbytes:,} bytes "
              f"of float32 gradients all-reduced per step")
        print(f"{'configuration':<48} {'ms/step (median)':>16} {'min':>8} {'max':>8}")
        for name, values in times.items():
            print(f"{name:<48} {np.median(values):16.2f} {min(values):8.2f} {max(values):8.2f}")


if __name__ == "__main__":
    main()
