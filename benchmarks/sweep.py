"""Layer sweep: one ``Conv2D`` layer's training pass against PyTorch over a grid of shapes.

The breadth suite of ``run.py`` times whole networks; this script looks for the layer
configurations where minidl is slower than PyTorch, the way a user meets them: for each
configuration it times ``layer(x)`` followed by ``layer.backward(dout, input_grad=True)`` (with
a bias, as ``torch.nn.Conv2d`` has by default) against ``conv(x).backward(dout)`` with
``x.requires_grad``, both after resetting the gradients to None (``zero_grad``), interleaved
in rounds like ``run.py``, and prints every configuration sorted by ratio, worst first. Usage::

    python benchmarks/sweep.py                        # the grid, on all cores
    python benchmarks/sweep.py --threads 1 --json sweep.json
    python benchmarks/sweep.py --configs 32,64,8,64,5,1,2 16,128,8,256,7,2,3
    python benchmarks/sweep.py --quick                # three tiny configurations (a smoke test)

A configuration is ``N,C_in,H,C_out,kernel_size,stride,padding`` (square images and kernels).
The grid (``GRID``) crosses seven layer shapes, from batch 1 to 512 and 1 to 128 input
channels on 8x8 to 32x32 maps, with eleven kernels (1 to 7, stride 1 and 2, with and without
padding). ``--threads N`` sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``MINIDL_NUM_THREADS`` before the frameworks load, calls
``minidl.set_num_threads`` and ``torch.set_num_threads``, and with fewer threads than cores
pins the process to that many. Both layers start from the same weight and bias, and the
forward outputs and input gradients are compared (a mismatch is printed).

Figures: median milliseconds per forward + backward over the rounds; ratio = PyTorch / minidl
(the speed-up, higher is better; the issue's target is >= 1.0x everywhere). It is a benchmark,
not a test: it exits with status 1 only when a configuration raised an error.
"""
import argparse
import json
import os
import statistics
import sys
import time

SHAPES = [(1, 16, 32, 32), (8, 32, 16, 64), (64, 16, 32, 16), (32, 64, 8, 64),
          (128, 3, 32, 16), (16, 128, 8, 256), (512, 1, 28, 8)]  # (N, C_in, H, C_out)
KERNELS = [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 2), (7, 2, 3),
           (3, 1, 0), (2, 2, 0), (4, 2, 1), (6, 1, 0)]  # (kernel_size, stride, padding)
GRID = [(n, c, h, k_out, k, s, p) for n, c, h, k_out in SHAPES for k, s, p in KERNELS
        if h + 2 * p >= k]
QUICK = [(2, 3, 8, 4, 3, 1, 1), (2, 4, 8, 4, 5, 2, 2), (1, 4, 6, 8, 1, 1, 0)]
SETTINGS = {"full": dict(rounds=9, block_seconds=0.05),
            "quick": dict(rounds=2, block_seconds=0.001)}
TOLERANCE = 1e-3  # relative, on the forward output and the input gradient


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for both frameworks (default: all cores)")
    parser.add_argument("--configs", nargs="+", default=None, metavar="N,C,H,K,k,s,p",
                        help="configurations to time instead of the grid")
    parser.add_argument("--quick", action="store_true", help="three tiny configurations, 2 rounds")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every figure here")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.configs:
        try:
            args.configs = [tuple(int(v) for v in text.split(",")) for text in args.configs]
        except ValueError:
            parser.error("a configuration is seven integers N,C_in,H,C_out,kernel,stride,padding")
        if any(len(config) != 7 for config in args.configs):
            parser.error("a configuration is seven integers N,C_in,H,C_out,kernel,stride,padding")
    else:
        args.configs = QUICK if args.quick else GRID
    return args


def set_threads(threads):
    """Thread counts for every library, before they load (as ``run.py``'s workers do)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "MINIDL_NUM_THREADS"):
        os.environ[name] = str(threads)
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        if threads < len(allowed):
            os.sched_setaffinity(0, allowed[:threads])


def layer_pair(config, np, minidl, torch, rng):
    """The minidl layer, its PyTorch twin (same weight and bias), the input and ``dout``."""
    n, c_in, size, c_out, kernel, stride, padding = config
    x = rng.random((n, c_in, size, size), dtype=np.float32)
    ours = minidl.layers.Conv2D(c_in, c_out, kernel, stride=stride, padding=padding, bias=True)
    theirs = torch.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=True)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(np.array(ours.weight.data)))
        theirs.bias.copy_(torch.from_numpy(np.array(ours.bias.data)))
    out = ours(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    return ours, theirs, x, dout


def check_agreement(ours, theirs, x, dout, np, torch):
    """None, or what differs between the frameworks' output and input gradient."""
    out = ours(x)
    dx = ours.backward(dout, input_grad=True)
    x_t = torch.from_numpy(x).requires_grad_(True)
    out_t = theirs(x_t)
    out_t.backward(torch.from_numpy(dout))
    problems = []
    for name, a, b in (("output", out, out_t.detach().numpy()), ("dx", dx, x_t.grad.numpy())):
        scale = max(float(np.abs(b).max()), 1e-30)
        error = float(np.abs(a - b).max()) / scale
        if not error <= TOLERANCE:
            problems.append(f"{name} differs by {error:.2e} of its largest value")
    return "; ".join(problems) or None


def measure(config, settings, np, minidl, torch, rng):
    """Median milliseconds per forward + backward of each framework, interleaved in rounds."""
    ours, theirs, x, dout = layer_pair(config, np, minidl, torch, rng)
    x_t, dout_t = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dout)

    def minidl_pass():
        ours.zero_grad(set_to_none=True)  # as PyTorch's pass: fresh gradients, nothing added
        ours(x)
        ours.backward(dout, input_grad=True)

    def torch_pass():
        x_t.grad = None
        theirs.zero_grad(set_to_none=True)
        theirs(x_t).backward(dout_t)

    passes = {"minidl": minidl_pass, "PyTorch": torch_pass}
    counts = {}
    for name, run in passes.items():
        run()  # warm-up (allocations, first-call set-up)
        start = time.perf_counter()
        run()
        counts[name] = max(1, round(settings["block_seconds"] / (time.perf_counter() - start)))
    seconds = {name: [] for name in passes}
    for index in range(settings["rounds"]):
        for name in (list(passes) if index % 2 == 0 else list(passes)[::-1]):
            start = time.perf_counter()
            for _ in range(counts[name]):
                passes[name]()
            seconds[name].append((time.perf_counter() - start) / counts[name])
    record = {name: statistics.median(values) * 1e3 for name, values in seconds.items()}
    record["ratio"] = record["PyTorch"] / record["minidl"]
    record["mismatch"] = check_agreement(ours, theirs, x, dout, np, torch)
    return record


def describe(config):
    n, c_in, size, c_out, kernel, stride, padding = config
    return (f"({n}, {c_in}, {size}, {size}) -> {c_out}, {kernel}x{kernel} "
            f"stride {stride} pad {padding}")


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    import numpy as np
    try:
        import torch
    except ImportError:
        print("sweep: PyTorch (the peer) is not installed: pip install torch", file=sys.stderr)
        return 1
    import minidl
    minidl.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    settings = SETTINGS["quick" if args.quick else "full"]
    rng = np.random.default_rng(0)
    results, failed = [], False
    for config in args.configs:
        try:
            record = measure(config, settings, np, minidl, torch, rng)
        except Exception as error:  # a benchmark reports and goes on
            record, failed = {"error": f"{type(error).__name__}: {error}"}, True
        record["config"] = list(config)
        results.append(record)
        status = record.get("error") or f"{record['ratio']:.2f}x"
        print(f"[sweep] {describe(config)}: {status}", file=sys.stderr, flush=True)

    timed = sorted((r for r in results if "error" not in r), key=lambda r: r["ratio"])
    print(f"minidl {minidl.__version__} vs PyTorch {torch.__version__}, {args.threads} "
          f"thread(s), {settings['rounds']} rounds, median ms per forward + backward "
          f"(input gradient, bias); ratio = PyTorch / minidl")
    print(f"{'configuration':<48} {'minidl':>9} {'PyTorch':>9} {'ratio':>7}")
    for record in timed:
        note = f"  MISMATCH: {record['mismatch']}" if record["mismatch"] else ""
        print(f"{describe(record['config']):<48} {record['minidl']:9.3f} "
              f"{record['PyTorch']:9.3f} {record['ratio']:6.2f}x{note}")
    for record in results:
        if "error" in record:
            print(f"{describe(record['config']):<48} error: {record['error']}")
    if timed:
        below = sum(r["ratio"] < 1.0 for r in timed)
        print(f"worst: {timed[0]['ratio']:.2f}x ({describe(timed[0]['config'])}); "
              f"median {statistics.median(r['ratio'] for r in timed):.2f}x; below 1.0x: "
              f"{below} of {len(timed)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": args.threads, "rounds": settings["rounds"],
                       "results": results}, handle, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
