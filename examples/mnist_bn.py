"""Train the same CNN on MNIST with and without Batch Normalization and compare convergence.

    python examples/mnist_bn.py                 # full MNIST, 1 epoch each (a few minutes on 2 cores)
    python examples/mnist_bn.py --train-samples 6000 --eval-every 20   # a quick look

Both networks start from the same seed and use the same optimizer and learning rate
(SGD, momentum 0.9). Every ``--eval-every`` steps the model is evaluated on the first
``--curve-samples`` test images (in eval mode, with BatchNorm's running statistics); the table
shows test accuracy at those steps, the first step reaching 97%, the final accuracy on the whole
test set and the wall-clock time. The numbers are also written to ``--out`` as JSON.
"""
import argparse
import json
import os
import time


import minidl
from minidl import data, losses, optim
from minidl.experiments import mnist_cnn


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (both runs)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between test evaluations")
    parser.add_argument("--curve-samples", type=int, default=2000,
                        help="test images used for the evaluations during training")
    parser.add_argument("--train-samples", type=int, default=None, help="use the first N training images")
    parser.add_argument("--test-samples", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--target", type=float, default=0.97, help="accuracy whose first step is reported")
    parser.add_argument("--root", default="data", help="dataset folder (downloaded on first use)")
    parser.add_argument("--out", default="runs/mnist_bn.json", help="where to write the results (JSON)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args()


def train_one(batch_norm, train_set, test_set, args):
    """Train one network; return its evaluation curve and timings."""
    minidl.manual_seed(args.seed)
    model = mnist_cnn(batch_norm=batch_norm)
    loss_fn = losses.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    train_loader = data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    test_loader = data.DataLoader(test_set, batch_size=1000)
    test_images, test_labels = test_set.arrays()
    curve_set = data.ArrayDataset(test_images[: args.curve_samples], test_labels[: args.curve_samples])

    curve = minidl.EvaluateEvery(data.DataLoader(curve_set, batch_size=1000), every=args.eval_every)
    trainer = minidl.Trainer(model, loss_fn, opt, progress=not args.no_progress, callbacks=[curve])
    start = time.perf_counter()
    history = trainer.fit(train_loader, epochs=args.epochs)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    final = trainer.evaluate(test_loader, progress=False)
    eval_seconds = time.perf_counter() - start
    return {
        "batch_norm": batch_norm,
        "curve_samples": len(curve_set),
        "steps": curve.steps,
        "test_accuracy": [r["accuracy"] for r in curve.results],
        "test_loss": [r["loss"] for r in curve.results],
        "steps_to_target": curve.first_step_reaching(args.target),
        "test_samples": len(test_set),
        "final_test_accuracy": final["accuracy"],
        "final_test_loss": final["loss"],
        "train_loss_per_step": history.step_loss,
        "seconds_with_evaluations": seconds,
        "seconds_per_test_evaluation": eval_seconds,
    }


def print_table(runs, target):
    bn, plain = runs
    print()
    print(f"test accuracy on {bn['curve_samples']} test images during training")
    print(f"{'step':>6} | {'test acc, BN':>12} | {'test acc, no BN':>15}")
    print("-" * 40)
    plain_by_step = dict(zip(plain["steps"], plain["test_accuracy"]))
    for step, acc in zip(bn["steps"], bn["test_accuracy"]):
        other = plain_by_step.get(step)
        print(f"{step:>6} | {acc:>12.4f} | {other if other is None else format(other, '>15.4f')}")
    print("-" * 40)

    def fmt_steps(run):
        return "not reached" if run["steps_to_target"] is None else str(run["steps_to_target"])

    rows = [
        (f"steps to {target:.0%} test accuracy", fmt_steps(bn), fmt_steps(plain)),
        (f"final test accuracy ({bn['test_samples']} images)", f"{bn['final_test_accuracy']:.4f}",
         f"{plain['final_test_accuracy']:.4f}"),
        ("final test loss", f"{bn['final_test_loss']:.4f}", f"{plain['final_test_loss']:.4f}"),
        ("wall-clock seconds (incl. evals)", f"{bn['seconds_with_evaluations']:.1f}",
         f"{plain['seconds_with_evaluations']:.1f}"),
    ]
    print(f"{'':<34} | {'BN':>12} | {'no BN':>12}")
    for name, a, b in rows:
        print(f"{name:<34} | {a:>12} | {b:>12}")


def main():
    args = parse_args()
    train_set = data.MNIST(root=args.root, train=True)
    test_set = data.MNIST(root=args.root, train=False)
    if args.train_samples:
        train_set = data.ArrayDataset(train_set.images[: args.train_samples],
                                      train_set.labels[: args.train_samples])
    if args.test_samples:
        test_set = data.ArrayDataset(test_set.images[: args.test_samples], test_set.labels[: args.test_samples])
    print(f"MNIST: {len(train_set)} training and {len(test_set)} test images; "
          f"batch {args.batch_size}, SGD lr {args.lr} momentum {args.momentum}, "
          f"{minidl.get_num_threads()} kernel threads")
    runs = []
    for batch_norm in (True, False):
        print(f"\n== {'with' if batch_norm else 'without'} BatchNorm ==")
        runs.append(train_one(batch_norm, train_set, test_set, args))
    print_table(runs, args.target)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f)
        os.replace(tmp, args.out)
        print(f"\nresults written to {args.out}")


if __name__ == "__main__":
    main()
