"""Train the same CNN on MNIST with and without Batch Normalization and compare convergence.

    python examples/mnist_bn.py                 # full MNIST, 1 epoch each (a few minutes on 2 cores)
    python examples/mnist_bn.py --train-samples 6000 --eval-every 20   # a quick look

Both networks (minidl.models.mnist_cnn with norm="batch" and norm=None) start from the same
seed and use the same optimizer and learning rate (SGD, momentum 0.9). Every ``--eval-every``
steps the model is evaluated on the first ``--curve-samples`` test images (in eval mode, with
BatchNorm's running statistics). When training ends, the table shows the test accuracy at
those steps, the first step reaching ``--target``, the final accuracy on the whole test set and
the time; a run whose loss becomes NaN/Inf (a learning rate that is too high) is reported as
diverged. The numbers are also written to ``--out`` as JSON (``runs/mnist_bn.json``).
"""
import argparse
import sys

import minidl
from minidl import data, losses, optim
from minidl.experiments.comparison import (comparison_table, fraction, positive_float,
                                           positive_int, train_and_record, write_json)
from minidl.models import mnist_cnn


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--epochs", type=positive_int, default=1, help="passes over the training images per run")
    add("--batch-size", type=positive_int, default=64, help="training batch size")
    add("--lr", type=positive_float, default=0.05, help="SGD learning rate (both runs)")
    add("--momentum", type=fraction, default=0.9, help="SGD momentum (both runs)")
    add("--seed", type=int, default=0, help="seed of the weights and of the shuffling")
    add("--eval-every", type=positive_int, default=50,
        help="optimizer steps between test evaluations during training")
    add("--curve-samples", type=positive_int, default=2000,
        help="test images used for the evaluations during training")
    add("--train-samples", type=positive_int, default=None,
        help="use the first N training images; None: all 60,000")
    add("--test-samples", type=positive_int, default=None,
        help="evaluate on the first N test images; None: all 10,000")
    add("--target", type=positive_float, default=0.97,
        help="test accuracy whose first step is reported")
    add("--root", default="data", help="dataset folder (downloaded on first use)")
    add("--out", default="runs/mnist_bn.json",
        help="where to write the results (JSON); empty: nowhere")
    add("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.target > 1:
        parser.error(f"argument --target: expected an accuracy in (0, 1], got {args.target}")
    return args


def train_one(norm, train_set, test_set, args):
    """Train one network from the seed; return its record (see train_and_record)."""
    minidl.manual_seed(args.seed)
    model = mnist_cnn(norm=norm)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    train_loader = data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                   seed=args.seed)
    curve_set = data.ArrayDataset(*(a[:args.curve_samples] for a in test_set.arrays()))
    run = train_and_record(
        model, optimizer, losses.CrossEntropyLoss(), train_loader,
        data.DataLoader(curve_set, batch_size=1000), data.DataLoader(test_set, batch_size=1000),
        epochs=args.epochs, eval_every=args.eval_every, target=args.target,
        progress=False if args.no_progress else None)
    run["batch_norm"] = norm is not None
    return run


def main(argv=None):
    args = parse_args(argv)
    train_set = data.MNIST(root=args.root, train=True)
    test_set = data.MNIST(root=args.root, train=False)
    train_set = data.ArrayDataset(train_set.images[:args.train_samples],
                                  train_set.labels[:args.train_samples])
    test_set = data.ArrayDataset(test_set.images[:args.test_samples],
                                 test_set.labels[:args.test_samples])
    print(f"MNIST: {len(train_set)} training and {len(test_set)} test images; "
          f"batch {args.batch_size}, SGD lr {args.lr} momentum {args.momentum}, "
          f"{minidl.get_num_threads()} kernel threads")
    runs = []
    for norm in ("batch", None):
        print(f"\n== {'with' if norm else 'without'} BatchNorm ==", flush=True)
        runs.append(train_one(norm, train_set, test_set, args))
    print("\n" + comparison_table(runs, ["BN", "no BN"], args.target))
    if args.out:
        write_json(args.out, {"args": vars(args), "runs": runs})
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
