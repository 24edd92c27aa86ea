"""Train CIFAR-10 networks with and without Batch Normalization and compare how they converge.

    python examples/cifar_bn.py                  # the defaults: 5.5 minutes on 2 quiet cores
    python examples/cifar_bn.py --networks vgg --steps 200 --eval-every 25   # a quick look
    python examples/cifar_bn.py --full           # He et al.'s schedule: 64,000 steps per run

Two networks from minidl.models, each trained twice from the same seed with the same optimizer
and learning rate, once with BatchNorm after every convolution and once without (the "plain"
network, whose convolutions have a bias instead):

* ``vgg``: the VGG-style CNN ``vgg_cifar`` (five 3x3 convolutions, three max-pools, one dense
  layer), SGD with ``--vgg-lr`` (0.02: with BatchNorm it reaches 40% test accuracy in about
  half the steps of the plain network; at 0.05 and above the BatchNorm network's dense layer,
  fed unit-variance features, overshoots in the first steps and loses its lead);
* ``resnet20``: ResNet-20 (He et al. 2016, section 4.2) with ``--resnet-lr``: at 0.1 (the
  paper's rate) BatchNorm trains it, while the plain ResNet-20 lags far behind (or, at higher
  rates, diverges). A run whose loss becomes NaN/Inf is reported as diverged in the table and
  the JSON, not as a crash.

Training: the real CIFAR-10 training set with the usual augmentation (random 32x32 crops of the
images padded by 4, random horizontal flips) and per-channel normalization with the training
set's mean and std; SGD with momentum 0.9 and weight decay 1e-4 at batch 128. Every
``--eval-every`` steps the model is evaluated on the first ``--curve-samples`` test images (eval
mode: BatchNorm uses its running statistics); at the end on the whole test set. The table per
network shows test accuracy at those steps, the first step reaching ``--target``, the final
accuracy, time per step and wall-clock time. Results go to ``--out`` (JSON) and the curves to
``--plot`` (a PNG, with matplotlib: ``pip install "minidl[plot]"``).

The step budget: the defaults (400 steps per run, about one epoch of 50,000 images) take
326 s of wall-clock time on 2 quiet cores (measured 2026-12-03, data preparation from a local
mirror included; 640 s of CPU time): training steps at batch 128 of 128 / 112 ms for the VGG CNN
with / without BatchNorm and 256 / 220 ms for ResNet-20, under the 10-minute budget.
``--full`` is the schedule of He et al. (2016), section 4.2, for both networks: learning rate
0.1 divided by 10 at steps 32,000 and 48,000 (``MultiStepLR``, stepped every optimizer step),
64,000 steps in all, evaluated every 2,000 steps on the whole test set -- about 5 hours per
ResNet-20 run on 2 cores (4.5 hours of steps).
"""
import argparse
import sys
import time

import minidl
from minidl import data, losses, models, optim
from minidl.data import transforms
from minidl.experiments.comparison import (PLOT_HINT, comparison_table, fraction,
                                           non_negative_float, plot_curves, positive_float,
                                           positive_int, train_and_record, write_json)

NETWORKS = {
    "vgg": ("VGG-style CNN (vgg_cifar)", lambda norm: models.vgg_cifar(norm=norm)),
    "resnet20": ("ResNet-20 (resnet_cifar, option A)",
                 lambda norm: models.resnet_cifar(20, norm=norm)),
}
# What --full changes, unless given explicitly: He et al. (2016), section 4.2.
FULL = dict(steps=64000, eval_every=2000, curve_samples=10000, vgg_lr=0.1, resnet_lr=0.1,
            milestones=[32000, 48000])


def networks(text):
    """argparse type: a comma-separated list of network names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in NETWORKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(NETWORKS)}, got {text!r}")
    return names


def milestones(text):
    """argparse type: comma-separated optimizer steps, increasing."""
    values = [positive_int(part) for part in text.split(",") if part.strip()]
    if values != sorted(set(values)):
        raise argparse.ArgumentTypeError(
            f"expected increasing steps like 32000,48000, got {text!r}")
    return values


def build_parser(only_given=False):
    """The command line; with ``only_given`` no defaults (to see which options were given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def add(*names, **options):
        if only_given and "default" in options:
            options["default"] = argparse.SUPPRESS
        parser.add_argument(*names, **options)
    add("--networks", type=networks, default=list(NETWORKS),
        help=f"comma-separated networks to compare: {', '.join(NETWORKS)}")
    add("--steps", type=positive_int, default=400,
        help=f"optimizer steps per run (--full: {FULL['steps']})")
    add("--batch-size", type=positive_int, default=128, help="training batch size")
    add("--vgg-lr", type=positive_float, default=0.02,
        help=f"SGD learning rate of both VGG runs (--full: {FULL['vgg_lr']})")
    add("--resnet-lr", type=positive_float, default=0.1,
        help=f"SGD learning rate of both ResNet-20 runs (--full: {FULL['resnet_lr']})")
    add("--momentum", type=fraction, default=0.9, help="SGD momentum")
    add("--weight-decay", type=non_negative_float, default=1e-4, help="SGD weight decay (L2)")
    add("--milestones", type=milestones, default=[],
        help="steps at which the learning rate is divided by 10, e.g. 32000,48000 "
             "(--full: 32000,48000)")
    add("--full", action="store_true",
        help="He et al.'s schedule: lr 0.1, /10 at 32k and 48k steps, 64k steps (hours)")
    add("--seed", type=int, default=0, help="seed of the weights, the order and the augmentation")
    add("--eval-every", type=positive_int, default=50,
        help=f"steps between test evaluations during training (--full: {FULL['eval_every']})")
    add("--curve-samples", type=positive_int, default=1000,
        help=f"test images of the evaluations during training (--full: {FULL['curve_samples']})")
    add("--target", type=positive_float, default=0.4,
        help="test accuracy whose first step is reported")
    add("--train-samples", type=positive_int, default=None,
        help="use the first N training images; None: all 50,000")
    add("--test-samples", type=positive_int, default=None,
        help="evaluate on the first N test images; None: all 10,000")
    add("--root", default="data", help="dataset folder (downloaded on first use)")
    add("--out", default="runs/cifar_bn.json",
        help="where to write the results (JSON); empty: nowhere")
    add("--plot", default="runs/cifar_bn.png",
        help="where to draw the accuracy curves (PNG, needs matplotlib); empty: no plot")
    add("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.full:  # the textbook schedule, except what was given explicitly
        given = vars(build_parser(only_given=True).parse_args(argv))
        for name, value in FULL.items():
            if name not in given:
                setattr(args, name, value)
    if args.target > 1:
        parser.error(f"argument --target: expected an accuracy in (0, 1], got {args.target}")
    if any(step > args.steps for step in args.milestones):
        parser.error(f"argument --milestones: {args.milestones} has steps beyond --steps "
                     f"{args.steps}")
    return args


def load_data(args):
    """The (subsets of the) training and test sets, the augmentation, and the loaders' sets."""
    train = data.CIFAR10(root=args.root, train=True)
    test = data.CIFAR10(root=args.root, train=False)
    train_images = train.images[:args.train_samples]
    train_labels = train.labels[:args.train_samples]
    test_images, test_labels = test.images[:args.test_samples], test.labels[:args.test_samples]
    normalize = transforms.Normalize.from_dataset(train_images)  # from the training images
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4),
                                  transforms.RandomHorizontalFlip(), normalize])
    test_images = normalize(test_images)  # once: evaluation has no randomness
    return (data.ArrayDataset(train_images, train_labels), augment,
            data.ArrayDataset(test_images, test_labels))


def train_one(name, norm, lr, train_set, augment, test_set, args):
    """Train one network from the seed; return its record (see train_and_record)."""
    minidl.manual_seed(args.seed)
    model = NETWORKS[name][1](norm)
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    scheduler = (optim.lr_scheduler.MultiStepLR(optimizer, args.milestones, gamma=0.1)
                 if args.milestones else None)
    train_loader = data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                   seed=args.seed, drop_last=True, transform=augment)
    curve_set = data.ArrayDataset(*(a[:args.curve_samples] for a in test_set.arrays()))
    run = train_and_record(
        model, optimizer, losses.CrossEntropyLoss(), train_loader,
        data.DataLoader(curve_set, batch_size=500), data.DataLoader(test_set, batch_size=500),
        steps=args.steps, eval_every=args.eval_every, target=args.target, scheduler=scheduler,
        progress=False if args.no_progress else None)
    run.update(network=name, norm=norm, lr=lr)
    return run


def main(argv=None):
    args = parse_args(argv)
    train_set, augment, test_set = load_data(args)
    print(f"CIFAR-10: {len(train_set)} training images (random crop 32 padding 4, horizontal "
          f"flip, normalized) and {len(test_set)} test images; batch {args.batch_size}, "
          f"{args.steps} steps per run, SGD momentum {args.momentum} weight decay "
          f"{args.weight_decay}"
          + (f", lr / 10 at steps {args.milestones}" if args.milestones else "")
          + f"; {minidl.get_num_threads()} kernel threads", flush=True)
    results, panels = {}, []
    start = time.perf_counter()
    for name in args.networks:
        label = NETWORKS[name][0]
        lr = args.vgg_lr if name == "vgg" else args.resnet_lr
        runs = []
        for norm, title in (("batch", "with BatchNorm"), (None, "without BatchNorm")):
            print(f"\n== {label}, {title}, lr {lr} ==", flush=True)
            runs.append(train_one(name, norm, lr, train_set, augment, test_set, args))
        print(f"\n{label}, lr {lr}: " + comparison_table(runs, ["BN", "no BN"], args.target))
        results[name] = {"label": label, "lr": lr, "runs": runs}
        panels.append((f"{label}, lr {lr}", [("BatchNorm", runs[0]), ("no BatchNorm", runs[1])]))
    print(f"\ntotal wall-clock time: {time.perf_counter() - start:.0f} s")
    if args.out:
        write_json(args.out, {"args": vars(args), "networks": results})
        print(f"results written to {args.out}")
    if args.plot:
        if plot_curves(args.plot, panels, title="CIFAR-10 test accuracy, same seed and lr"):
            print(f"accuracy curves drawn in {args.plot}")
        else:
            print(f"matplotlib is not installed: no plot (the curves are in {args.out}); "
                  f"for the plot: {PLOT_HINT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
