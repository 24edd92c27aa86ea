"""The job of ``examples/mnist_bn.py`` written with PyTorch, for the benchmark's memory workload.

    python benchmarks/mnist_bn_torch.py --root data      # after examples/mnist_bn.py fetched MNIST

The same work, step for step: the MNIST training and test images read from the original IDX
files in ``<root>/mnist/`` (kept as bytes, as torchvision does, and fed to the network as float32
in [0, 1], N x 1 x 28 x 28); for the network with
BatchNorm and then without, seed, build the MNIST CNN, train one epoch with SGD (lr 0.05,
momentum 0.9) on shuffled batches of 64, evaluate in eval mode under ``torch.no_grad()`` on
the first ``--curve-samples`` test images in batches of 1000 every ``--eval-every`` steps and
after the last one, then on the whole test set. It takes the example's options (same names and
defaults) and writes the same summary JSON (``--out``). This is the program a PyTorch user would
write (``TensorDataset`` + ``DataLoader``); it is used only by ``benchmarks/run.py`` and never
imports minidl.
"""
import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
from torch import nn

from models import torch_network  # (this folder; the script is run as a file)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--curve-samples", type=int, default=2000)
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--test-samples", type=int, default=None)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="runs/mnist_bn_torch.json")
    parser.add_argument("--no-progress", action="store_true", help="accepted; nothing to hide")
    return parser.parse_args()


def read_idx(path):
    """An IDX file (gzip-compressed) as a uint8 NumPy array of its shape."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(root, train):
    """``(images, labels)``: uint8 ``(N, 1, 28, 28)`` and int64 ``(N,)`` tensors (kept as
    bytes, as torchvision's MNIST keeps them; :func:`as_float` converts each batch)."""
    prefix = "train" if train else "t10k"
    folder = os.path.join(root, "mnist")
    images = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))
    return torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64))


def as_float(x):
    """A batch of uint8 images as float32 in [0, 1] (torchvision's ``ToTensor`` scaling)."""
    return x.float().div_(255)


def evaluate(model, loader):
    """Mean loss and accuracy over ``loader`` in eval mode, without autograd."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(as_float(x))
            total_loss += nn.functional.cross_entropy(logits, y).item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    model.train()
    return {"loss": total_loss / seen, "accuracy": correct / seen}


def train_one(batch_norm, train_set, test_set, args):
    """Train one network; return its evaluation curve and timings."""
    torch.manual_seed(args.seed)
    model = torch_network("mnist", batch_norm, torch)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size,
                                               shuffle=True, generator=generator)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    curve_set = torch.utils.data.TensorDataset(*(t[: args.curve_samples] for t in test_set.tensors))
    curve_loader = torch.utils.data.DataLoader(curve_set, batch_size=1000)
    steps, results, step_losses = [], [], []
    start = time.perf_counter()
    for _ in range(args.epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(as_float(x)), y)
            loss.backward()
            optimizer.step()
            step_losses.append(loss.item())
            if len(step_losses) % args.eval_every == 0:
                steps.append(len(step_losses))
                results.append(evaluate(model, curve_loader))
    if not steps or steps[-1] != len(step_losses):
        steps.append(len(step_losses))
        results.append(evaluate(model, curve_loader))
    seconds = time.perf_counter() - start
    final = evaluate(model, test_loader)
    reached = [s for s, r in zip(steps, results) if r["accuracy"] >= args.target]
    return {"batch_norm": batch_norm, "steps": steps,
            "test_accuracy": [r["accuracy"] for r in results],
            "steps_to_target": reached[0] if reached else None,
            "final_test_accuracy": final["accuracy"], "final_test_loss": final["loss"],
            "train_loss_per_step": step_losses, "seconds_with_evaluations": seconds}


def main():
    args = parse_args()
    train_images, train_labels = load_mnist(args.root, train=True)
    test_images, test_labels = load_mnist(args.root, train=False)
    if args.train_samples:
        train_images, train_labels = train_images[: args.train_samples], train_labels[: args.train_samples]
    if args.test_samples:
        test_images, test_labels = test_images[: args.test_samples], test_labels[: args.test_samples]
    train_set = torch.utils.data.TensorDataset(train_images, train_labels)
    test_set = torch.utils.data.TensorDataset(test_images, test_labels)
    print(f"MNIST: {len(train_set)} training and {len(test_set)} test images; batch "
          f"{args.batch_size}, SGD lr {args.lr} momentum {args.momentum}, "
          f"{torch.get_num_threads()} threads")
    runs = [train_one(batch_norm, train_set, test_set, args) for batch_norm in (True, False)]
    for run in runs:
        print(f"{'BN' if run['batch_norm'] else 'no BN'}: final test accuracy "
              f"{run['final_test_accuracy']:.4f}, {run['seconds_with_evaluations']:.1f} s")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
