"""Data-parallel MNIST training with BatchNorm vs SyncBatchNorm at a small batch per process.

    mpiexec -n 2 python examples/distributed_bn.py
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpiexec -n 2 --oversubscribe \\
        python examples/distributed_bn.py          # as root, or with more processes than cores
    python examples/distributed_bn.py              # one process: the two runs are the same

Every process (rank) trains the same MNIST CNN (minidl.models.mnist_cnn: BatchNorm after
both convolutions and the hidden dense layer) wrapped in DistributedDataParallel, on its own
shard of every batch: ``--batch-size`` images per process, W times that per optimizer step.
Twice, from the same weights, over the same batches, with the same SGD:

* BatchNorm: each process normalizes with the statistics of its own few images;
* SyncBatchNorm (the model converted with ``SyncBatchNorm.convert_sync_batchnorm``): the
  statistics of all W * batch-size images of the step, as one process with the whole batch.

Then both are evaluated on the test set (eval mode: running statistics; each process takes a
shard and the sums are added over the processes) and rank 0 prints accuracy, loss and time of
both runs and the difference in accuracy. Set MINIDL_NUM_THREADS=1 to give each process one
kernel thread; MINIDL_DATA_MIRROR points at a folder holding the MNIST files (offline).
"""
import argparse
import json
import os
import time

import minidl
import minidl.distributed as dist
from minidl import data, layers, losses, optim
from minidl.models import mnist_cnn


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4,
                        help="training images per process and step (the batch a BatchNorm sees)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training images")
    parser.add_argument("--train-samples", type=int, default=12000,
                        help="use the first N training images (0: all 60,000)")
    parser.add_argument("--test-samples", type=int, default=0,
                        help="evaluate on the first N test images (0: all 10,000)")
    parser.add_argument("--lr", type=float, default=0.02, help="SGD learning rate (both runs)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (both runs)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and of the shuffling (the same on every process)")
    parser.add_argument("--norm", choices=("both", "batchnorm", "sync"), default="both",
                        help="which runs to do (one alone, e.g. to time it)")
    parser.add_argument("--root", default="data", help="dataset folder (downloaded on first use)")
    parser.add_argument("--out", default="runs/distributed_bn.json",
                        help="where rank 0 writes the results as JSON ('' for nowhere)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    for name in ("batch_size", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("train_samples", "test_samples"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    return args


def load_mnist(args):
    """The training and test sets (their first N images when asked). Rank 0 reads (and, if
    needed, downloads) first, so the processes never download into one folder at once."""
    def load():
        train, test = data.MNIST(root=args.root, train=True), data.MNIST(root=args.root, train=False)
        if args.train_samples:
            train = data.ArrayDataset(train.images[:args.train_samples], train.labels[:args.train_samples])
        if args.test_samples:
            test = data.ArrayDataset(test.images[:args.test_samples], test.labels[:args.test_samples])
        return train, test

    if dist.is_main_process():
        sets = load()
    dist.barrier()
    if not dist.is_main_process():
        sets = load()
    return sets


def train_one(sync, train_set, test_set, args):
    """Train one network data-parallel; return its test figures and timings."""
    rank, world = dist.get_rank(), dist.get_world_size()
    minidl.manual_seed(args.seed)
    model = mnist_cnn(norm="batch")
    if sync:
        model = layers.SyncBatchNorm.convert_sync_batchnorm(model)
    model = dist.DistributedDataParallel(model)  # rank 0's weights on every rank
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    train_loader = data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                   seed=args.seed, num_shards=world, shard_index=rank)
    test_loader = data.DataLoader(test_set, batch_size=500, num_shards=world, shard_index=rank)
    trainer = minidl.Trainer(model, losses.CrossEntropyLoss(), opt,
                             progress=False if args.no_progress else None)
    history = trainer.fit(train_loader, epochs=args.epochs)
    test = trainer.evaluate(test_loader, progress=False)
    return {
        "norm": "SyncBatchNorm" if sync else "BatchNorm",
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "train_loss_last_epoch": history.history["loss"][-1],
        "train_accuracy_last_epoch": history.history["accuracy"][-1],
        "seconds_per_epoch": history.epoch_time,
        "steps": trainer.global_step,
    }


def print_table(runs, world, args):
    print(f"\n{'':<28}" + "".join(f"{run['norm']:>15}" for run in runs))
    rows = [("test accuracy", "test_accuracy", "{:.4f}"), ("test loss", "test_loss", "{:.4f}"),
            ("train loss (last epoch)", "train_loss_last_epoch", "{:.4f}"),
            ("train accuracy (last epoch)", "train_accuracy_last_epoch", "{:.4f}")]
    for label, key, fmt in rows:
        print(f"{label:<28}" + "".join(f"{fmt.format(run[key]):>15}" for run in runs))
    print(f"{'seconds per epoch (best)':<28}" + "".join(f"{min(run['seconds_per_epoch']):>15.1f}" for run in runs))
    if len(runs) == 2:
        gap = 100 * (runs[1]["test_accuracy"] - runs[0]["test_accuracy"])
        print(f"\nSyncBatchNorm - BatchNorm test accuracy: {gap:+.2f} percentage points "
              f"(BatchNorm statistics over {args.batch_size} images per process, SyncBatchNorm "
              f"over {world * args.batch_size})")
        if world == 1:
            print("(one process: SyncBatchNorm is BatchNorm, so the runs are the same; start it "
                  "with mpiexec -n 2 to see the difference)")


def main(argv=None):
    args = parse_args(argv)
    dist.init()
    world = dist.get_world_size()
    train_set, test_set = load_mnist(args)
    if dist.is_main_process():
        print(f"MNIST: {len(train_set)} training and {len(test_set)} test images; {world} "
              f"process(es) x batch {args.batch_size} = {world * args.batch_size} images per step; "
              f"SGD lr {args.lr} momentum {args.momentum}; {minidl.get_num_threads()} kernel "
              f"thread(s) per process")
    runs = []
    for sync in {"both": (False, True), "batchnorm": (False,), "sync": (True,)}[args.norm]:
        if dist.is_main_process():
            print(f"\n== {'SyncBatchNorm' if sync else 'BatchNorm'} ==", flush=True)
        start = time.perf_counter()
        runs.append(train_one(sync, train_set, test_set, args))
        runs[-1]["seconds_total"] = time.perf_counter() - start
    if dist.is_main_process():
        print_table(runs, world, args)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out + ".tmp", "w") as f:
                json.dump({"args": vars(args), "processes": world, "runs": runs}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(args.out + ".tmp", args.out)
            print(f"\nresults written to {args.out}")


if __name__ == "__main__":
    main()
