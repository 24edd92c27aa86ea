"""The matrix-product configurations of issue 12, timed against PyTorch eager, interleaved.

    python benchmarks/held_out.py                          # 1 and 2 threads, both wait policies
    python benchmarks/held_out.py --threads 2 --policies default --configs dense,mlp
    python benchmarks/held_out.py --rounds 31 --json held_out.json

Each configuration is a training step (forward, cross-entropy, backward, SGD with momentum 0.9)
of a small network, or Dense alone (forward, input and weight gradients). PyTorch runs the same
network (minidl's initial parameters copied in) on the same data. Every (thread count, OpenMP
wait policy) pair runs in a fresh process started with ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``MINIDL_NUM_THREADS`` set to the thread count
and, for the "passive" policy, ``OMP_WAIT_POLICY=PASSIVE`` (the "default" policy removes the
variable, so both OpenMP runtimes spin as they do out of the box).

The machine may be shared, so the timing uses many short rounds: a round runs a block of about
``--block`` seconds of one framework and then of the other, alternating which goes first. The
table shows the median and the minimum time per step of each framework over the rounds, and
the ratios PyTorch time / minidl time of both (higher is better for minidl; 1.0 is parity), with
the machine's load average before and after. ``--clock cpu`` times with the process's CPU time
instead: at one thread it leaves out the time other processes held the core (on a busy machine
the better estimate); with more threads it also counts threads that spin while waiting. This is a development tool (the gemm work of issue
12); ``benchmarks/run.py`` remains the benchmark whose figures go into the README.
"""
import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "dense": "Dense (256, 1024) -> 1024 alone, fwd + bwd",
    "mlp": "MLP Dense 1024-wide + BatchNorm1D, batch 256",
    "pointwise": "1x1 convs 64<->128 on 16x16 + BN, batch 32",
    "stride2": "3x3 stride-2 convs + BN, batch 64",
    "wide5x5": "5x5 first layer + wide 3x3 convs + BN, batch 32",
    "stem7x7": "7x7 stride-2 pad-3 stem + maxpool + 3x3, batch 32",
    "lenet": "LeNet-5 (5x5 pad 0, bias), batch 64",
    "mnist": "MNIST CNN + BN, batch 64",
    "cifar": "CIFAR CNN + BN, batch 128",
}
LEARNING_RATE = 0.01
RESULT = "@@held_out "


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    parser.add_argument("--policies", default="default,passive",
                        help="OpenMP wait policies: default (variable unset), passive")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds per config")
    parser.add_argument("--block", type=float, default=0.15, help="seconds per block")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default) or the process's CPU time (meaningful at one "
                             "thread, where it leaves out the time other processes had the core)")
    parser.add_argument("--json", metavar="PATH", help="write every round's figures")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.policies = args.policies.split(",")
    args.configs = args.configs.split(",")
    for name in args.configs:
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for policy in args.policies:
        if policy not in ("default", "passive"):
            parser.error(f"unknown policy {policy!r}")
    return args


# ============================================================================ driver
def child_env(threads, policy):
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "MINIDL_NUM_THREADS"):
        env[name] = str(threads)
    env.pop("OMP_WAIT_POLICY", None)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    records = []
    for policy in args.policies:
        for threads in args.threads:
            command = [sys.executable, os.path.abspath(__file__), "--worker",
                       "--threads", str(threads), "--policies", policy,
                       "--configs", ",".join(args.configs), "--rounds", str(args.rounds),
                       "--block", str(args.block), "--clock", args.clock]
            load = os.getloadavg()[0]
            out = subprocess.run(command, env=child_env(threads, policy), stdout=subprocess.PIPE,
                                 text=True, check=True).stdout
            for line in out.splitlines():
                if line.startswith(RESULT):
                    record = json.loads(line[len(RESULT):])
                    record.update(policy=policy, threads=threads, load_before=load,
                                  load_after=os.getloadavg()[0])
                    records.append(record)
                    print_record(record)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


def print_record(r):
    print(f"{r['policy']:>7} {r['threads']}t  {r['config']:<10} minidl {r['minidl_median']:8.2f}"
          f" (min {r['minidl_min']:8.2f}) ms   torch {r['torch_median']:8.2f} (min "
          f"{r['torch_min']:8.2f}) ms   ratio median {r['ratio_median']:.2f}x  min "
          f"{r['ratio_min']:.2f}x   load {r['load_before']:.1f}->{r['load_after']:.1f}",
          flush=True)


# ============================================================================ worker
def worker(args):
    import numpy as np
    import torch

    import minidl
    import minidl.experiments  # noqa: F401
    threads = args.threads[0]
    minidl.set_num_threads(threads)
    torch.set_num_threads(threads)
    for name in args.configs:
        steps = setup(name, np, torch, minidl)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        seconds = interleave(steps, args.rounds, args.block, clock)
        ours, theirs = seconds["minidl"], seconds["torch"]
        record = dict(config=name, minidl_median=1e3 * statistics.median(ours),
                      minidl_min=1e3 * min(ours), torch_median=1e3 * statistics.median(theirs),
                      torch_min=1e3 * min(theirs), rounds_minidl=ours, rounds_torch=theirs)
        record["ratio_median"] = record["torch_median"] / record["minidl_median"]
        record["ratio_min"] = record["torch_min"] / record["minidl_min"]
        print(RESULT + json.dumps(record), flush=True)
    return 0


def interleave(steps, rounds, block, clock=time.perf_counter):
    """``{name: [seconds per step, one per round]}``, blocks of about ``block`` seconds."""
    counts = {}
    for name, step in steps.items():
        for _ in range(3):
            step()
        start = clock()
        step()
        counts[name] = max(1, round(block / max(clock() - start, 1e-6)))
    seconds = {name: [] for name in steps}
    names = list(steps)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            gc.collect()
            start = clock()
            for _ in range(counts[name]):
                steps[name]()
            seconds[name].append((clock() - start) / counts[name])
    return seconds


def build(name, minidl):
    """``(minidl model, input shape of one sample, batch)`` of a configuration."""
    L = minidl.layers
    minidl.manual_seed(0)

    def cbr(cin, cout, k, stride=1, padding=0):
        return [L.Conv2D(cin, cout, k, stride=stride, padding=padding, bias=False),
                L.BatchNorm2D(cout), L.ReLU()]

    def dbr(fin, fout):
        return [L.Dense(fin, fout, bias=False), L.BatchNorm1D(fout), L.ReLU()]

    if name == "mlp":
        return minidl.Sequential(*dbr(784, 1024), *dbr(1024, 1024), *dbr(1024, 1024),
                                 L.Dense(1024, 10)), (784,), 256
    if name == "pointwise":
        body = cbr(64, 128, 1) + cbr(128, 64, 1) + cbr(64, 128, 1) + cbr(128, 64, 1)
        return minidl.Sequential(*body, L.MaxPool2D(2), L.Flatten(),
                                 L.Dense(64 * 8 * 8, 10)), (64, 16, 16), 32
    if name == "stride2":
        body = cbr(3, 32, 3, 1, 1) + cbr(32, 64, 3, 2, 1) + cbr(64, 128, 3, 2, 1) \
            + cbr(128, 256, 3, 2, 1)
        return minidl.Sequential(*body, L.Flatten(), L.Dense(256 * 4 * 4, 10)), (3, 32, 32), 64
    if name == "wide5x5":
        return minidl.Sequential(*cbr(3, 64, 5, 1, 2), L.MaxPool2D(2), *cbr(64, 128, 3, 1, 1),
                                 *cbr(128, 128, 3, 1, 1), L.MaxPool2D(2), L.Flatten(),
                                 L.Dense(128 * 8 * 8, 10)), (3, 32, 32), 32
    if name == "stem7x7":
        return minidl.Sequential(*cbr(3, 64, 7, 2, 3), L.MaxPool2D(3, stride=2),
                                 *cbr(64, 64, 3, 1, 1), L.MaxPool2D(2), L.Flatten(),
                                 L.Dense(64 * 7 * 7, 10)), (3, 64, 64), 32
    if name == "lenet":
        return minidl.Sequential(
            L.Conv2D(1, 6, 5), L.ReLU(), L.MaxPool2D(2), L.Conv2D(6, 16, 5), L.ReLU(),
            L.MaxPool2D(2), L.Flatten(), L.Dense(16 * 4 * 4, 120), L.ReLU(),
            L.Dense(120, 84), L.ReLU(), L.Dense(84, 10)), (1, 28, 28), 64
    if name == "mnist":
        return minidl.experiments.mnist_cnn(batch_norm=True), (1, 28, 28), 64
    if name == "cifar":
        return minidl.experiments.cifar_cnn(batch_norm=True), (3, 32, 32), 128
    raise KeyError(name)


def twin(model, minidl, torch, flat=False):
    """The torch.nn network with the layers of the minidl ``model`` (same child names)."""
    nn, L = torch.nn, minidl.layers
    if isinstance(model, minidl.Sequential):
        children = []
        for child in model:
            children.append(twin(child, minidl, torch, flat))
            flat = isinstance(child, (L.Dense, L.Flatten)) or (
                flat and not isinstance(child, (L.Conv2D, L.MaxPool2D)))
        return nn.Sequential(*children)
    if isinstance(model, L.Conv2D):
        return nn.Conv2d(model.in_channels, model.out_channels, model.kernel_size,
                         stride=model.stride, padding=model.padding, bias=model.bias is not None)
    if isinstance(model, L.Dense):
        return nn.Linear(model.in_features, model.out_features, bias=model.bias is not None)
    if isinstance(model, L.BatchNorm):
        bn = nn.BatchNorm1d if flat else nn.BatchNorm2d
        return bn(model.num_features, eps=model.eps, momentum=model.momentum)
    if isinstance(model, L.ReLU):
        return nn.ReLU()
    if isinstance(model, L.MaxPool2D):
        return nn.MaxPool2d(model.kernel_size, model.stride)
    if isinstance(model, L.Flatten):
        return nn.Flatten()
    raise TypeError(type(model).__name__)


def setup(name, np, torch, minidl):
    """``{"minidl": step, "torch": step}`` for a configuration."""
    rng = np.random.default_rng(0)
    if name == "dense":
        x = rng.standard_normal((256, 1024), dtype=np.float32)
        dy = rng.standard_normal((256, 1024), dtype=np.float32)
        minidl.manual_seed(0)
        layer = minidl.layers.Dense(1024, 1024)
        module = torch.nn.Linear(1024, 1024)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(layer.weight.data))
            module.bias.copy_(torch.from_numpy(layer.bias.data))
        x_t, dy_t = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)

        def ours():
            layer(x)
            layer.backward(dy)

        def theirs():
            torch.autograd.grad(module(x_t), (x_t, module.weight, module.bias), dy_t)
        return {"minidl": ours, "torch": theirs}

    model, shape, batch = build(name, minidl)
    module = twin(model, minidl, torch)
    module.load_state_dict({k: torch.from_numpy(np.array(v))
                            for k, v in model.state_dict().items()}, strict=True)
    batches = [(rng.random((batch,) + shape, dtype=np.float32),
                rng.integers(0, 10, batch, dtype=np.int64)) for _ in range(3)]
    loss_fn = minidl.losses.CrossEntropyLoss()
    opt = minidl.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    opt_t = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE, momentum=0.9)
    cycle = itertools.cycle(batches)
    cycle_t = itertools.cycle([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches])
    model.train()
    module.train()

    def ours():
        x, y = next(cycle)
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        opt.zero_grad()

    def theirs():
        x, y = next(cycle_t)
        opt_t.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        opt_t.step()
    return {"minidl": ours, "torch": theirs}


if __name__ == "__main__":
    sys.exit(main())
