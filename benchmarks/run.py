"""minidl vs PyTorch on the CPU: the workloads of the issue "Faster than PyTorch on the CPU for
the small CNNs our users train".

    python benchmarks/run.py                          # all workloads, all cores, 7 rounds
    python benchmarks/run.py --threads 1 --workloads 1,4,5
    python benchmarks/run.py --quick                  # tiny sizes: a smoke run in seconds
    python benchmarks/run.py --json bench.json --markdown bench.md
    python benchmarks/run.py --update-readme          # the results table in README.md
    python benchmarks/run.py --profile 10 --workloads 1,3    # where minidl's time goes

This process only orchestrates and imports nothing but the standard library. The measurements
run in child processes of this same file (the hidden ``--worker`` flag), started with
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``MINIDL_NUM_THREADS`` set
to the thread count, so NumPy's BLAS, minidl's OpenMP kernels and PyTorch use the same number of
threads from start-up; the workers also call ``minidl.set_num_threads`` and
``torch.set_num_threads``.

Workloads 1-6 and 8 run in one worker that holds both frameworks. Each workload is warmed up, then
timed in rounds; a round times a block of steps of one framework and then a block of the
other, alternating which goes first, so drift of the machine affects both. The figures are
medians over the rounds. Workload 7 (peak memory) runs each framework in its own fresh process.

The benchmark is not a test: it never checks its figures against the targets. It exits with
status 1 only when a workload raised an error.
"""
import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# kind: "throughput" (ratio = minidl / PyTorch, higher is better), "time" (ratio = PyTorch /
# minidl, the speed-up, higher is better) or "memory" (ratio = minidl / PyTorch, lower is better).
WORKLOADS = {
    1: dict(name="MNIST CNN + BN, train step", kind="throughput", unit="images/s", target=1.3),
    2: dict(name="MNIST CNN no BN, train step", kind="throughput", unit="images/s", target=1.3),
    3: dict(name="CIFAR CNN + BN, train step", kind="throughput", unit="images/s", target=1.3),
    4: dict(name="BatchNorm train fwd+bwd", kind="time", unit="ms", target=3.0,
            extra_name="effective bandwidth, 5 x x.nbytes", extra_unit="GB/s"),
    5: dict(name="Conv2D 3x3 fwd+bwd", kind="time", unit="ms", target=0.8,
            extra_name="FLOP rate, fwd + dgrad + wgrad", extra_unit="GFLOP/s"),
    6: dict(name="MNIST CNN + BN, eval forward", kind="throughput", unit="images/s", target=1.0),
    7: dict(name="CIFAR CNN + BN, peak RSS in training", kind="memory", unit="MiB", target=1.0),
    8: dict(name="ResNet-20 + BN, train step", kind="throughput", unit="images/s", target=1.3),
}
TIMED = (1, 2, 3, 4, 5, 6, 8)

SIZES = {
    "full": dict(mnist_batch=64, cifar_batch=128, bn_shape=(128, 64, 32, 32),
                 conv_shape=(64, 64, 32, 32), eval_batch=1000, memory_steps=20, copy_mib=256,
                 repeats=7, warmup=2, block_seconds=0.5, max_steps=50, num_batches=4,
                 profile_seconds=3.0),
    "tiny": dict(mnist_batch=8, cifar_batch=8, bn_shape=(8, 16, 16, 16),
                 conv_shape=(4, 8, 16, 16), eval_batch=32, memory_steps=3, copy_mib=8,
                 repeats=2, warmup=1, block_seconds=0.01, max_steps=5, num_batches=2,
                 profile_seconds=0.1),
}
LEARNING_RATE = 0.01
NOISY_SPREAD = 0.25  # flag a workload whose rounds differ by more than this
BUSY_CORES = 0.25    # warn when other processes used more cores than this during the run
RESULT_PREFIX = "@@result "
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
README_START = "<!-- benchmark results: start (written by benchmarks/run.py --update-readme) -->"
README_END = "<!-- benchmark results: end -->"

# Imported by _import_frameworks() in the worker processes only.
np = minidl = torch = None


# ===================================================================== command line
def parse_args(argv=None):
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Benchmark minidl against PyTorch on the CPU.")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for minidl, PyTorch and the BLAS (default: all cores)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per workload (default 7; 2 with --quick)")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full",
                        help="problem sizes: full (default) or tiny")
    parser.add_argument("--quick", action="store_const", const="tiny", dest="sizes",
                        help="same as --sizes tiny")
    parser.add_argument("--workloads", default=",".join(map(str, WORKLOADS)),
                        help="comma-separated workload numbers, e.g. 1,4,5 (default: all)")
    parser.add_argument("--json", metavar="PATH", help="write all figures and machine info")
    parser.add_argument("--markdown", metavar="PATH", help="write the results table")
    parser.add_argument("--update-readme", metavar="PATH", nargs="?", const=README, default=None,
                        help="replace the results between the benchmark markers of README.md "
                             "(or PATH) with this run's table")
    parser.add_argument("--no-torch", action="store_true", help="measure minidl only")
    parser.add_argument("--profile", type=int, nargs="?", const=10, default=None, metavar="N",
                        help="instead of comparing, profile minidl and print the top N "
                             "functions by own time per workload (default N: 10)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workloads = parse_workloads(parser, args.workloads)
    if args.threads is None:
        args.threads = available_cores()
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.repeats is None:
        args.repeats = SIZES[args.sizes]["repeats"]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def parse_workloads(parser, text):
    """``"1,4,5"`` -> ``[1, 4, 5]``, checked against :data:`WORKLOADS`."""
    try:
        ids = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        parser.error(f"--workloads: expected numbers like 1,4,5, got {text!r}")
    unknown = [i for i in ids if i not in WORKLOADS]
    if unknown or not ids:
        parser.error(f"--workloads: choose from {sorted(WORKLOADS)}, got {text!r}")
    return ids


def available_cores():
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ===================================================================== orchestration
def thread_env(threads):
    """The environment of a worker: every thread pool sized to ``threads`` from start-up."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "MINIDL_NUM_THREADS"):
        env[name] = str(threads)
    return env


def worker_command(args, kind, workloads):
    """The command line that runs this file as a worker of ``kind``."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind,
               "--sizes", args.sizes, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--workloads", ",".join(map(str, workloads))]
    if args.no_torch:
        command.append("--no-torch")
    if args.profile is not None:
        command += ["--profile", str(args.profile)]
    return command


def run_worker(args, kind, workloads, show_progress=True):
    """Run a worker; return the records it printed (lines starting with ``@@result``).

    Other output of the worker goes to our stderr. A worker that dies leaves an error record
    for each of its workloads that has no record yet.
    """
    process = subprocess.Popen(worker_command(args, kind, workloads), env=thread_env(args.threads),
                               stdout=subprocess.PIPE, text=True)
    records = []
    for line in process.stdout:
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX):])
            records.append(record)
            if "id" in record and show_progress:
                progress(record)
        else:
            sys.stderr.write(line)
    code = process.wait()
    if code != 0:
        seen = {r.get("id") for r in records}
        for i in workloads:
            if i not in seen:
                records.append(dict(id=i, error=f"worker {kind!r} exited with status {code}"))
    return records


def progress(record):
    """One line on stderr when a workload is done."""
    name = WORKLOADS[record["id"]]["name"]
    state = "error: " + record["error"] if record.get("error") else "done"
    print(f"[benchmark] {record['id']} {name}: {state}", file=sys.stderr, flush=True)


def collect(args):
    """Run the workers for the selected workloads; return ``(results, worker_info)``."""
    results, info = {}, {}
    timed = [i for i in args.workloads if i in TIMED]
    if timed:
        for record in run_worker(args, "time", timed):
            if "id" in record:
                results[record["id"]] = record
            else:
                info.update(record)
    if 7 in args.workloads:
        results[7] = memory_result(args, info)
    return results, info


def memory_result(args, info):
    """Workload 7: one fresh process per framework; peak RSS of each."""
    record = dict(id=7, detail=f"{SIZES[args.sizes]['memory_steps']} steps, "
                               f"batch {SIZES[args.sizes]['cifar_batch']}")
    frameworks = ["minidl"] if args.no_torch else ["minidl", "pytorch"]
    errors = []
    for framework in frameworks:
        for entry in run_worker(args, "memory-" + framework, [7], show_progress=False):
            if entry.get("error"):
                errors.append(f"{framework}: {entry['error']}")
            elif "id" in entry:
                record[framework] = entry.get("peak_rss_mib")
                record.setdefault("processes", {})[framework] = entry
            else:
                info.update({k: v for k, v in entry.items() if info.get(k) is None})
    if errors:
        record["error"] = "; ".join(errors)
    progress(record)
    return record


def machine_info(args, worker_info):
    """CPU, cores, date, versions and settings of this run."""
    info = dict(
        cpu=cpu_model(),
        logical_cores=os.cpu_count(),
        available_cores=available_cores(),
        threads=args.threads,
        sizes=args.sizes,
        repeats=args.repeats,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        python=platform.python_version(),
        platform=platform.platform(),
        git_commit=git_commit(),
    )
    info.update(worker_info)
    return info


def cpu_usage():
    """``(wall seconds, busy CPU seconds of the machine, CPU seconds of us and our children)``.

    The machine's busy time comes from /proc/stat (None elsewhere).
    """
    import resource
    busy = None
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # without guest time
    except (OSError, ValueError, IndexError):
        pass
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        ours += usage.ru_utime + usage.ru_stime
    return time.perf_counter(), busy, ours


def other_processes_cores(before, after):
    """The average number of cores other processes kept busy between two :func:`cpu_usage`."""
    wall = after[0] - before[0]
    if before[1] is None or after[1] is None or wall <= 0:
        return None
    others = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, others / wall)


def cpu_model():
    """The CPU model name from /proc/cpuinfo (or what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit():
    """``<short hash>[+dirty]`` of the repository holding this file, or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


# ===================================================================== the table
def finish(record):
    """Add the ratio, target and whether it is met to a workload record."""
    spec = WORKLOADS[record["id"]]
    for name in ("minidl", "pytorch"):
        record.setdefault(name, None)
        if record.get("extra"):
            record["extra"].setdefault(name, None)
    ours, theirs = record["minidl"], record["pytorch"]
    ratio = None
    if ours and theirs:
        ratio = theirs / ours if spec["kind"] == "time" else ours / theirs
    met = None
    if ratio is not None:
        met = ratio <= spec["target"] if spec["kind"] == "memory" else ratio >= spec["target"]
    record.update(name=spec["name"], unit=spec["unit"], kind=spec["kind"], ratio=ratio,
                  target=spec["target"], met=met)
    record["spread"] = {name: (max(samples) - min(samples)) / statistics.median(samples)
                        for name, samples in record.get("seconds_per_step", {}).items()}
    return record


def format_number(value):
    """A figure with 3-4 significant digits, or ``-``."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table_rows(results):
    """The table as a list of string rows (header first)."""
    rows = [["workload", "minidl", "PyTorch", "unit", "ratio", "target", "met?"]]
    for i in sorted(results):
        r = results[i]
        label = f"{i} {WORKLOADS[i]['name']}" + (f" ({r['detail']})" if r.get("detail") else "")
        if r.get("error"):
            rows.append([label, "error", "error", WORKLOADS[i]["unit"], "-", "-", "-"])
            continue
        sign = "<=" if r["kind"] == "memory" else ">="
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "no")
        rows.append([label, format_number(r.get("minidl")), format_number(r.get("pytorch")),
                     r["unit"], ratio, f"{sign} {r['target']:.1f}x", met])
        extra = r.get("extra")
        if extra:
            rows.append([f"  {i} {extra['name']}", format_number(extra.get("minidl")),
                         format_number(extra.get("pytorch")), extra["unit"], ratio, "", ""])
    return rows


def notes(results, info):
    """The lines printed under the table."""
    lines = [
        "ratio: images/s, GB/s, GFLOP/s rows minidl/PyTorch; ms rows PyTorch/minidl "
        "(the speed-up); both higher is better. Memory row minidl/PyTorch, lower is better.",
    ]
    copy = info.get("copy_bandwidth_gbs")
    if copy:
        text = (f"copy bandwidth (np.copyto of {info.get('copy_mib')} MiB, read+write): "
                f"{copy:.1f} GB/s")
        if info.get("copy_bandwidth_torch_gbs"):
            text += (f"; torch copy_ with {info['threads']} threads: "
                     f"{info['copy_bandwidth_torch_gbs']:.1f} GB/s")
        lines.append(text)
        bn = results.get(4, {}).get("extra") or {}
        if bn.get("minidl"):
            lines.append(f"BatchNorm effective bandwidth: minidl {bn['minidl'] / copy:.0%} of "
                         f"np.copyto's" + (f", PyTorch {bn['pytorch'] / copy:.0%}"
                                           if bn.get("pytorch") else ""))
    if not info.get("torch"):
        lines.append("PyTorch not measured (not installed or --no-torch): ratios are '-'.")
    noisy = [f"{i} ({', '.join(f'{name} {value:.0%}' for name, value in r['spread'].items())})"
             for i, r in sorted(results.items())
             if max(r.get("spread", {}).values(), default=0) > NOISY_SPREAD]
    if noisy:
        lines.append(f"noisy: the rounds of workload {'; '.join(noisy)} differ by more than "
                     f"{NOISY_SPREAD:.0%} ((max - min) / median)")
    others = info.get("other_processes_cores")
    if others is not None and others > BUSY_CORES:
        lines.append(f"the machine was busy: other processes used {others:.1f} cores on average "
                     f"during the run; they steal cores from the threads of both frameworks "
                     f"(an OpenMP barrier waits for a descheduled thread), so the figures are "
                     f"unreliable")
    return lines


def header(info):
    """One line naming the machine, the run's settings and the versions."""
    return (f"{info['cpu']}, {info['available_cores']} cores, {info['threads']} threads, "
            f"{info['date']}; python {info['python']}, numpy {info.get('numpy', '?')}, "
            f"torch {info.get('torch') or '-'}, minidl {info.get('minidl', '?')} "
            f"({info.get('git_commit') or 'no git'}); sizes {info['sizes']}, "
            f"{info['repeats']} rounds, median")


def text_table(rows):
    """Rows as aligned plain text."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows):
    """Rows as a Markdown table (numbers right-aligned)."""
    lines = ["| " + " | ".join(rows[0]) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(rows[0]) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.strip() for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def report(args, results, info):
    """Print the table; write the JSON and Markdown files when asked."""
    rows = table_rows(results)
    print(header(info))
    print(text_table(rows))
    for line in notes(results, info):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "workloads": {str(i): results[i] for i in sorted(results)}},
                      f, indent=2)
            f.write("\n")
    text = (header(info) + "\n\n" + markdown_table(rows) + "\n\n"
            + "\n".join(f"- {line}" for line in notes(results, info)) + "\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.update_readme:
        update_readme(args.update_readme, text)


def update_readme(path, text):
    """Put ``text`` between README_START and README_END in ``path`` (written atomically).

    Raises:
        ValueError: the file lacks the markers.
    """
    with open(path) as f:
        content = f.read()
    start, end = content.find(README_START), content.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no '{README_START}' ... '{README_END}' markers")
    content = content[:start + len(README_START)] + "\n" + text + content[end:]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(content)
    os.replace(tmp, path)
    print(f"results written into {path}")


def main(argv=None):
    """Entry point: run the workers, print the table. Returns the exit status."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.profile is not None:
        return subprocess.call(worker_command(args, "profile", args.workloads),
                               env=thread_env(args.threads))
    usage_before = cpu_usage()
    results, worker_info = collect(args)
    info = machine_info(args, worker_info)
    info["other_processes_cores"] = other_processes_cores(usage_before, cpu_usage())
    for record in results.values():
        finish(record)
    report(args, results, info)
    return 1 if any(r.get("error") for r in results.values()) else 0


# ===================================================================== workers
def worker_main(args):
    """Run in a child process: measure, print records as ``@@result {json}`` lines."""
    want_torch = not args.no_torch and args.worker != "memory-minidl"
    _import_frameworks(want_torch, need_minidl=args.worker != "memory-pytorch")
    sizes = SIZES[args.sizes]
    if minidl is not None:
        minidl.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    if args.worker == "time":
        emit(versions())
        emit(copy_bandwidth(sizes))
        for i in args.workloads:
            emit(guarded(i, lambda i=i: timed_workload(i, sizes, args.repeats)))
    elif args.worker.startswith("memory-"):
        emit(versions())
        emit(guarded(7, lambda: memory_workload(args.worker[len("memory-"):], sizes)))
    elif args.worker == "profile":
        for i in args.workloads:
            profile_workload(i, sizes, args.profile)
    else:
        raise SystemExit(f"unknown worker {args.worker!r}")
    return 0


def _import_frameworks(with_torch, need_minidl=True):
    """Import NumPy, minidl and (when wanted and installed) PyTorch into this module."""
    global np, minidl, torch
    import numpy as np  # noqa: F811 (the module-level placeholder)
    if need_minidl:
        import minidl  # noqa: F811
        import minidl.models  # noqa: F401
    if with_torch:
        try:
            import torch  # noqa: F811
        except ImportError:
            torch = None


def emit(record):
    """Send one record to the parent process."""
    print(RESULT_PREFIX + json.dumps(record), flush=True)


def guarded(workload_id, measure):
    """Run ``measure()``; on an exception return an error record (traceback on stderr)."""
    try:
        record = measure()
    except Exception as exc:  # a broken workload must not hide the others
        import traceback
        traceback.print_exc()
        record = dict(error=f"{type(exc).__name__}: {exc}")
    record["id"] = workload_id
    return record


def versions():
    """Versions and paths of the measured libraries."""
    info = dict(numpy=np.__version__, torch=None if torch is None else torch.__version__)
    if minidl is not None:
        info.update(minidl=minidl.__version__, minidl_path=os.path.dirname(minidl.__file__))
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy, or a build without this information
        pass
    return info


def copy_bandwidth(sizes):
    """The machine's copy bandwidth (read + write) with np.copyto, and with torch if present."""
    count = sizes["copy_mib"] * 2**20 // 4
    source = np.ones(count, np.float32)
    target = np.zeros_like(source)
    best = min(timed_call(lambda: np.copyto(target, source)) for _ in range(5))
    info = dict(copy_mib=sizes["copy_mib"], copy_bandwidth_gbs=2 * source.nbytes / best / 1e9)
    if torch is not None:
        source_t, target_t = torch.from_numpy(source), torch.from_numpy(target)
        best = min(timed_call(lambda: target_t.copy_(source_t)) for _ in range(5))
        info["copy_bandwidth_torch_gbs"] = 2 * source.nbytes / best / 1e9
    return info


def timed_call(function):
    """Seconds one call of ``function`` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# --------------------------------------------------------------------- interleaved timing
def interleaved(steps, sizes, repeats):
    """Time ``steps`` (``{framework: callable}``) in alternating blocks.

    Each framework is warmed up, then one step is timed to choose how many steps make a block
    of about ``block_seconds``. Each of the ``repeats`` rounds times one block per framework,
    the order alternating from round to round.

    Returns:
        (seconds, block_steps): ``{framework: [seconds per step, one per round]}`` and
        ``{framework: steps per block}``.
    """
    block_steps = {}
    for name, step in steps.items():
        for _ in range(sizes["warmup"]):
            step()
        one = timed_call(step)
        block_steps[name] = max(1, min(sizes["max_steps"], round(sizes["block_seconds"] / one)))
    seconds = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            step, count = steps[name], block_steps[name]
            gc.collect()
            start = time.perf_counter()
            for _ in range(count):
                step()
            seconds[name].append((time.perf_counter() - start) / count)
    return seconds, block_steps


def timed_workload(workload_id, sizes, repeats):
    """Measure workload 1-6 for minidl and (if present) PyTorch; medians over the rounds."""
    steps, detail, work = workload_setup(workload_id, sizes)
    seconds, block_steps = interleaved(steps, sizes, repeats)
    record = dict(detail=detail, block_steps=block_steps, seconds_per_step=seconds)
    spec = WORKLOADS[workload_id]
    record["best"] = {}  # the best round, less sensitive to other processes than the median
    if spec["kind"] == "time":  # ms per step, plus GB/s or GFLOP/s
        extra = dict(name=spec["extra_name"], unit=spec["extra_unit"])
        for name, samples in seconds.items():
            record[name] = statistics.median(s * 1e3 for s in samples)
            record["best"][name] = min(samples) * 1e3
            extra[name] = statistics.median(work / s / 1e9 for s in samples)
        record["extra"] = extra
    else:  # images per second
        for name, samples in seconds.items():
            record[name] = statistics.median(work / s for s in samples)
            record["best"][name] = work / min(samples)
    return record


def workload_setup(workload_id, sizes):
    """``(steps, detail, work)`` of workload 1-6 and 8, see the set-up functions below."""
    if workload_id in (1, 2, 3, 8):
        kind = {3: "cifar", 8: "resnet20"}.get(workload_id, "mnist")
        return train_setup(kind, workload_id != 2, sizes)
    return {4: batchnorm_setup, 5: conv_setup, 6: eval_setup}[workload_id](sizes)


# --------------------------------------------------------------------- networks and data
def minidl_network(kind, batch_norm):
    """The minidl network of a workload (``"mnist"``, ``"cifar"`` or ``"resnet20"``, from
    :mod:`minidl.models`), initialized from minidl's seeded generator."""
    minidl.manual_seed(0)
    norm = "batch" if batch_norm else None
    if kind == "resnet20":
        return minidl.models.resnet_cifar(20, norm=norm)
    builder = minidl.models.mnist_cnn if kind == "mnist" else minidl.models.vgg_cifar
    return builder(norm=norm)


def torch_network(kind, batch_norm):
    """The same architecture with torch.nn modules (children numbered as in minidl)."""
    nn = torch.nn

    def conv(cin, cout):
        block = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
        return block + ([nn.BatchNorm2d(cout)] if batch_norm else []) + [nn.ReLU()]

    if kind == "resnet20":
        return torch_resnet20(batch_norm)
    if kind == "mnist":
        hidden = [nn.Linear(64 * 7 * 7, 128, bias=not batch_norm)]
        hidden += [nn.BatchNorm1d(128)] if batch_norm else []
        return nn.Sequential(*conv(1, 32), nn.MaxPool2d(2), *conv(32, 64), nn.MaxPool2d(2),
                             nn.Flatten(), *hidden, nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(*conv(3, 32), *conv(32, 32), nn.MaxPool2d(2),
                         *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
                         *conv(64, 128), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


def torch_resnet20(batch_norm):
    """ResNet-20 with option-A shortcuts (minidl.models.resnet_cifar(20)) in torch.nn, with the
    same module names: ``Residual`` has ``body`` and ``shortcut``, the zero-padding shortcut
    subsamples with stride 2 and appends zero channels."""
    nn = torch.nn

    class Residual(nn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class ZeroPadShortcut(nn.Module):
        def __init__(self, extra):
            super().__init__()
            self.extra = extra

        def forward(self, x):
            return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, self.extra))

    class GlobalAvgPool(nn.Module):  # one module, like minidl's GlobalAvgPool2D
        def forward(self, x):
            return x.mean((2, 3))

    def conv_bn(cin, cout, stride, relu=True):
        layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)]
        return layers + ([nn.BatchNorm2d(cout)] if batch_norm else []) + (
            [nn.ReLU()] if relu else [])

    stages, channels = [], 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        blocks = []
        for i in range(3):
            step = stride if i == 0 else 1
            body = nn.Sequential(*conv_bn(channels, width, step),
                                 *conv_bn(width, width, 1, relu=False))
            shortcut = ZeroPadShortcut(width - channels) if step != 1 else None
            blocks.append(nn.Sequential(Residual(body, shortcut), nn.ReLU()))
            channels = width
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*conv_bn(3, 16, 1), *stages, GlobalAvgPool(), nn.Linear(64, 10))


def torch_copy(module, minidl_module):
    """Load minidl's parameters and buffers into ``module`` (strict: the layouts must match)."""
    state = {key: torch.from_numpy(np.array(value)) for key, value in
             minidl_module.state_dict().items()}
    module.load_state_dict(state, strict=True)
    return module


def image_shape(kind):
    """``(C, H, W)`` of one image of the network ``kind``."""
    return (1, 28, 28) if kind == "mnist" else (3, 32, 32)  # CIFAR-10 for cifar and resnet20


def random_batches(kind, batch, count, seed=0):
    """``count`` batches of uniform float32 images in [0, 1) and int64 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return [(rng.random((batch,) + image_shape(kind), dtype=np.float32),
             rng.integers(0, 10, batch, dtype=np.int64)) for _ in range(count)]


# --------------------------------------------------------------------- workload set-ups
# Each returns (steps, detail, work): {framework: callable running one step}, a short text
# for the table, and the work of one step (images, bytes or FLOPs).

def train_setup(kind, batch_norm, sizes):
    """Workloads 1-3 and 8: forward, cross-entropy, backward and an SGD (momentum 0.9) update."""
    batch = sizes["mnist_batch" if kind == "mnist" else "cifar_batch"]
    batches = random_batches(kind, batch, sizes["num_batches"])
    model = minidl_network(kind, batch_norm)
    steps = {"minidl": minidl_train_step(model, batches)}
    if torch is not None:
        steps["pytorch"] = torch_train_step(torch_copy(torch_network(kind, batch_norm), model),
                                            batches)
    return steps, f"batch {batch}", batch


def minidl_train_step(model, batches):
    """One minidl training step per call, cycling through ``batches``."""
    model.train()
    loss_fn = minidl.losses.CrossEntropyLoss()
    optimizer = minidl.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    cycle = itertools.cycle(batches)

    def step():
        x, y = next(cycle)
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)  # as PyTorch: no grad for the input
        optimizer.step()
        optimizer.zero_grad()
    step.model = model  # for --profile's per-layer times
    return step


def torch_train_step(model, batches):
    """One PyTorch (eager) training step per call, cycling through ``batches``."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    cycle = itertools.cycle([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches])

    def step():
        x, y = next(cycle)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def batchnorm_setup(sizes):
    """Workload 4: BatchNorm over channels, training-mode forward and backward.

    Work: the bytes a perfect implementation moves, ``5 * x.nbytes`` (forward reads x and
    writes y; backward reads x and dy and writes dx).
    """
    shape = sizes["bn_shape"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    layer = minidl.layers.BatchNorm(shape[1])

    def minidl_step():
        layer(x)
        layer.backward(dy)
    steps = {"minidl": minidl_step}
    if torch is not None:
        module = torch.nn.BatchNorm2d(shape[1])
        x_t = torch.from_numpy(x).requires_grad_()
        dy_t = torch.from_numpy(dy)

        def torch_step():
            out = module(x_t)
            torch.autograd.grad(out, (x_t, module.weight, module.bias), dy_t)
        steps["pytorch"] = torch_step
    return steps, "x".join(map(str, shape)), 5 * x.nbytes


def conv_setup(sizes):
    """Workload 5: a C->C 3x3 pad-1 convolution without bias, forward and backward.

    Work: ``3 * 2*N*C_out*C_in*k*k*H_out*W_out`` FLOPs (forward, input and weight gradients).
    """
    n, c, h, w = sizes["conv_shape"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    dy = rng.standard_normal((n, c, h, w), dtype=np.float32)
    minidl.manual_seed(0)
    layer = minidl.layers.Conv2D(c, c, 3, padding=1, bias=False)

    def minidl_step():
        layer(x)
        layer.backward(dy)
    steps = {"minidl": minidl_step}
    if torch is not None:
        module = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(layer.weight.data))
        x_t = torch.from_numpy(x).requires_grad_()
        dy_t = torch.from_numpy(dy)

        def torch_step():
            out = module(x_t)
            torch.autograd.grad(out, (x_t, module.weight), dy_t)
        steps["pytorch"] = torch_step
    flops = 3 * 2 * n * c * c * 3 * 3 * h * w
    return steps, f"{c}->{c} on {n}x{c}x{h}x{w}", flops


def eval_setup(sizes):
    """Workload 6: inference, the MNIST CNN with BN in eval mode (PyTorch under no_grad)."""
    batch = sizes["eval_batch"]
    x = random_batches("mnist", batch, 1)[0][0]
    model = minidl_network("mnist", True).eval()

    def minidl_step():
        model(x)
    minidl_step.model = model  # for --profile's per-layer times
    steps = {"minidl": minidl_step}
    if torch is not None:
        module = torch_copy(torch_network("mnist", True), model).eval()
        x_t = torch.from_numpy(x)

        def torch_step():
            with torch.no_grad():
                module(x_t)
        steps["pytorch"] = torch_step
    return steps, f"batch {batch}", batch


# --------------------------------------------------------------------- memory and profile
def memory_workload(framework, sizes):
    """Workload 7 in a fresh process: train the CIFAR CNN; report the peak RSS (ru_maxrss)."""
    import resource
    kind, steps = "cifar", sizes["memory_steps"]
    batches = random_batches(kind, sizes["cifar_batch"], min(steps, sizes["num_batches"]))
    if framework == "minidl":
        step = minidl_train_step(minidl_network(kind, True), batches)
    elif torch is None:
        raise RuntimeError("PyTorch is not installed")
    else:
        torch.manual_seed(0)
        step = torch_train_step(torch_network(kind, True), batches)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(framework=framework, steps=steps, peak_rss_mib=peak,
                rss_before_training_mib=before)


def profile_workload(workload_id, sizes, top):
    """Where one workload's time goes: minidl's top functions by own time (cProfile), minidl's
    time per layer (networks only) and PyTorch's top operators (when installed).

    cProfile charges a Cython kernel or a NumPy ufunc to the Python function that calls it, so
    the functional wrappers (``conv2d_forward`` ...) stand for their kernels.
    """
    name = WORKLOADS[workload_id]["name"]
    if workload_id not in TIMED:
        print(f"\n{workload_id} {name}: nothing to profile (a memory measurement)")
        return
    steps, detail, _ = workload_setup(workload_id, sizes)
    for step in steps.values():
        for _ in range(sizes["warmup"]):
            step()
    step = steps["minidl"]
    count = max(1, min(sizes["max_steps"], round(sizes["profile_seconds"] / timed_call(step))))
    print(f"\n===== {workload_id} {name} ({detail}): {count} steps =====")
    print_cprofile(step, count, top)
    if getattr(step, "model", None) is not None:
        print_layer_times(step, count)
    if "pytorch" in steps:
        print_torch_profile(steps["pytorch"], count, top)


def print_cprofile(step, count, top):
    """minidl: the ``top`` functions by own time over ``count`` steps."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, calls, tottime, cumtime, _)}
    total = sum(entry[2] for entry in stats.values())
    print(f"minidl, cProfile: {total / count * 1e3:.1f} ms per step; top {top} by own time")
    print(f"{'ms/step':>9} {'share':>6} {'calls/step':>10}  function")
    ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (filename, line, function), (_, calls, tottime, _, _) in ranked:
        where = "" if filename == "~" else f" ({short_path(filename)}:{line})"
        print(f"{tottime / count * 1e3:9.2f} {tottime / total:6.1%} {calls / count:10.1f}  "
              f"{function}{where}")


def print_layer_times(step, count, top=20):
    """minidl: wall time of each layer's forward and backward, per step (no profiler).

    The layers timed are the modules without children (a residual network's convolutions,
    norms and ReLUs, not its blocks); a container's own work (a Residual's addition) is in
    "the rest". Up to ``top`` layers are listed in model order; a deeper model lists its
    ``top`` slowest layers and then the time per layer type.
    """
    model = step.model
    seconds = {}

    def timed(key, method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = method(*args, **kwargs)
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    leaves = [(name, layer) for name, layer in model.named_modules() if not layer._modules]
    labels = []
    for name, layer in leaves:
        labels.append((f"{name} {layer_label(layer)}", type(layer).__name__))
        layer.forward = timed((labels[-1][0], "forward"), layer.forward)
        layer.backward = timed((labels[-1][0], "backward"), layer.backward)
    total = timed_call(lambda: [step() for _ in range(count)])
    for _, layer in leaves:  # back to the class's methods
        del layer.forward, layer.backward
    rows = [(label, kind, seconds.get((label, "forward"), 0.0),
             seconds.get((label, "backward"), 0.0)) for label, kind in labels]
    deep = len(rows) > top
    print(f"minidl, per layer (wall time, {total / count * 1e3:.1f} ms per step"
          + (f"; the {top} slowest of {len(rows)} layers):" if deep else "):"))
    print(f"{'forward':>9} {'backward':>9} {'share':>6}  layer  (ms per step)")
    shown = sorted(rows, key=lambda r: r[2] + r[3], reverse=True)[:top] if deep else rows
    for label, _, forward, backward in shown:
        print(f"{forward / count * 1e3:9.2f} {backward / count * 1e3:9.2f} "
              f"{(forward + backward) / total:6.1%}  {label}")
    rest = total - sum(seconds.values())
    print(f"{rest / count * 1e3:19.2f} {rest / total:6.1%}  the rest (loss, optimizer, Python)")
    if deep:
        kinds = {}
        for _, kind, forward, backward in rows:
            entry = kinds.setdefault(kind, [0.0, 0.0, 0])
            entry[0] += forward
            entry[1] += backward
            entry[2] += 1
        print("minidl, per layer type:")
        for kind, (forward, backward, number) in sorted(kinds.items(), key=lambda item:
                                                        -(item[1][0] + item[1][1])):
            print(f"{forward / count * 1e3:9.2f} {backward / count * 1e3:9.2f} "
                  f"{(forward + backward) / total:6.1%}  {kind} (x{number})")


def layer_label(layer):
    """``Conv2D(1->32)``, ``BatchNorm(32)``, ``ReLU``: a layer's type and channel counts."""
    sizes = [getattr(layer, name) for name in ("in_channels", "in_features", "num_features",
                                               "out_channels", "out_features")
             if hasattr(layer, name)]
    name = type(layer).__name__
    return f"{name}({'->'.join(map(str, sizes))})" if sizes else name


def print_torch_profile(step, count, top):
    """PyTorch: the ``top`` operators by self CPU time (torch.profiler), for comparison."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(count):
            step()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"PyTorch, torch.profiler: {total / count / 1e3:.1f} ms per step; top {top} "
          f"operators by self time")
    print(f"{'ms/step':>9} {'share':>6} {'calls/step':>10}  operator")
    for event in events[:top]:
        print(f"{event.self_cpu_time_total / count / 1e3:9.2f} "
              f"{event.self_cpu_time_total / total:6.1%} {event.count / count:10.1f}  "
              f"{event.key}")


def short_path(filename):
    """A file name relative to the package it is in (``minidl/functional/conv.py``)."""
    for marker in ("/minidl/", "/torch/", "/numpy/"):
        if marker in filename:
            return marker[1:] + filename.split(marker, 1)[1]
    return os.path.basename(filename) if filename.startswith("/") else filename


if __name__ == "__main__":
    sys.exit(main())
