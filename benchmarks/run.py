"""minidl vs PyTorch (and torch.compile, JAX) on the CPU: the workloads of the issues "Faster
than PyTorch on the CPU for the small CNNs our users train" and "Performance everywhere".

    python benchmarks/run.py                          # every workload at 1 thread and all cores
    python benchmarks/run.py --suite canonical --threads 2
    python benchmarks/run.py --suite breadth --threads 1,2
    python benchmarks/run.py --workloads 1,4,b3       # chosen workloads
    python benchmarks/run.py --quick                  # tiny sizes: a smoke run
    python benchmarks/run.py --json bench.json --markdown bench.md
    python benchmarks/run.py --update-readme          # the results table in README.md
    python benchmarks/run.py --profile 10 --workloads 1,b5   # where minidl's time goes

Two suites (see benchmarks/README.md for every workload): "canonical" (numbered 1-11: the
networks of the examples, BatchNorm, convolution and Dense alone, inference, the optional peers
torch.compile and JAX, peak memory) and "breadth" (b1-b24: layer configurations a user can
build, each ahead of PyTorch or not).

This process only orchestrates and imports nothing but the standard library (and the plain data
of ``models.BREADTH``). The measurements run in child processes of this same file (the hidden
``--worker`` flag), one per thread count, started with ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``MINIDL_NUM_THREADS`` set to it, so every
library uses that many threads from start-up; the workers also call ``minidl.set_num_threads``
and ``torch.set_num_threads``, and a worker with fewer threads than cores runs on that many
cores only (its CPU affinity: the only limit JAX's XLA obeys). Every worker gets the same
``OMP_WAIT_POLICY`` (``--wait-policy``; by default none, the OpenMP runtimes' own default): in the
timing worker minidl and PyTorch even share one OpenMP runtime (both load ``libgomp.so.1``, and
the dynamic loader keeps the first one loaded), so one policy governs both.

The timed workloads run in one worker that holds every framework. Each workload is warmed up,
then timed in rounds; a round times a block of steps of one framework and then a block of the
other, alternating which goes first, so drift of the machine affects both. The figures are
medians over the rounds (the JSON keeps every round). The memory workloads run each framework
in its own fresh process. A worker with two threads or more also probes, before and after its
workloads, whether two cores share a cache at that moment (:func:`core_probe`; our 2-core VM
has phases where they do not, which cost minidl's 2-thread passes more than PyTorch's), and the
notes under the table print both probes.

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
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import BREADTH, breadth_batch  # noqa: E402 (plain data; NumPy is not imported)

# kind: "throughput" (ratio = minidl / peer, higher is better), "time" (ratio = peer / minidl,
# the speed-up, higher is better) or "memory" (ratio = minidl / peer, lower is better).
# runner: "time" (the timing worker) or "memory" (fresh processes). peer: what minidl is
# compared with. target_threads: "max" checks the target at the largest thread count of the
# run (the "at 2 threads"), "all" at every thread count.
CANONICAL = {
    "1": dict(name="MNIST CNN + BN, train step", kind="throughput", unit="images/s", target=1.5),
    "2": dict(name="MNIST CNN no BN, train step", kind="throughput", unit="images/s", target=1.5),
    "3": dict(name="CIFAR CNN + BN, train step", kind="throughput", unit="images/s", target=1.5),
    "4": dict(name="BatchNorm train fwd+bwd", kind="time", unit="ms", target=3.0,
              extra_name="effective bandwidth, 5 x x.nbytes", extra_unit="GB/s"),
    "5": dict(name="Conv2D 3x3 fwd+bwd", kind="time", unit="ms", target=0.8,
              extra_name="FLOP rate, fwd + dgrad + wgrad", extra_unit="GFLOP/s"),
    "6": dict(name="MNIST CNN + BN, eval forward", kind="throughput", unit="images/s", target=2.0),
    "7": dict(name="CIFAR CNN + BN, peak RSS in training", kind="memory", unit="MiB", target=1.0,
              runner="memory"),
    "8": dict(name="Dense fwd+bwd", kind="time", unit="ms", target=1.0, target_threads="all",
              extra_name="FLOP rate, fwd + dgrad + wgrad", extra_unit="GFLOP/s"),
    "9": dict(name="MNIST CNN + BN, train step vs torch.compile", kind="throughput",
              unit="images/s", target=1.5, peer="torch.compile"),
    "10": dict(name="MNIST CNN + BN, train step vs JAX jit", kind="throughput", unit="images/s",
               target=1.5, peer="JAX"),
    "11": dict(name="examples/mnist_bn.py, peak RSS", kind="memory", unit="MiB", target=1.0,
               runner="memory"),
    "12": dict(name="ResNet-20 + BN, train step", kind="throughput", unit="images/s", target=1.5),
}
WORKLOADS = dict(CANONICAL)
for _id, (_name, _kind, _batch, _shape) in BREADTH.items():
    WORKLOADS[_id] = dict(name=_name, kind="throughput", unit="images/s", target=1.0,
                          target_threads="all", suite="breadth")
for _spec in WORKLOADS.values():
    _spec.setdefault("suite", "canonical")
    _spec.setdefault("runner", "time")
    _spec.setdefault("peer", "PyTorch")
    _spec.setdefault("target_threads", "max")
SUITES = {"canonical": [i for i in WORKLOADS if WORKLOADS[i]["suite"] == "canonical"],
          "breadth": [i for i in WORKLOADS if WORKLOADS[i]["suite"] == "breadth"]}
SUITES["all"] = SUITES["canonical"] + SUITES["breadth"]

SIZES = {
    "full": dict(mnist_batch=64, cifar_batch=128, bn_shape=(128, 64, 32, 32),
                 conv_shape=(64, 64, 32, 32), dense_shape=(256, 1024, 1024), eval_batch=1000,
                 memory_steps=20, copy_mib=256, repeats=7, warmup=2, block_seconds=0.5,
                 max_steps=2000, num_batches=4, profile_seconds=3.0, tiny=False,
                 example_args=[]),
    "tiny": dict(mnist_batch=8, cifar_batch=8, bn_shape=(8, 16, 16, 16),
                 conv_shape=(4, 8, 16, 16), dense_shape=(8, 32, 16), eval_batch=32,
                 memory_steps=3, copy_mib=8, repeats=2, warmup=1, block_seconds=0.01,
                 max_steps=5, num_batches=2, profile_seconds=0.1, tiny=True,
                 example_args=["--train-samples", "256", "--test-samples", "200",
                               "--curve-samples", "100", "--eval-every", "2"]),
}
LEARNING_RATE = 0.01
MOMENTUM = 0.9
NOISY_SPREAD = 0.25  # flag a workload whose rounds differ by more than this
BUSY_CORES = 0.25    # warn when other processes used more cores than this during the run
LOSS_TOLERANCE = 1e-3  # first-step losses of the frameworks must agree to this (relative)
RESULT_PREFIX = "@@result "
# --wait-policy: what the workers' OMP_WAIT_POLICY is ("default": unset, each OpenMP runtime's
# own default, as a user gets it out of the box).
WAIT_POLICIES = {"default": None, "passive": "PASSIVE", "active": "ACTIVE"}
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
README = os.path.join(ROOT, "README.md")
README_START = "<!-- benchmark results: start (written by benchmarks/run.py --update-readme) -->"
README_END = "<!-- benchmark results: end -->"

# Imported by _import_frameworks() in the worker processes only.
np = minidl = torch = None


# ===================================================================== command line
def parse_args(argv=None):
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Benchmark minidl against PyTorch on the CPU.")
    parser.add_argument("--threads", default=None,
                        help="thread counts for minidl, its peers and the BLAS, comma-separated "
                             "(default: 1 and all cores, e.g. 1,2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per workload (default 7; 2 with --quick)")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full",
                        help="problem sizes: full (default) or tiny")
    parser.add_argument("--quick", action="store_const", const="tiny", dest="sizes",
                        help="same as --sizes tiny")
    parser.add_argument("--suite", choices=sorted(SUITES), default="all",
                        help="canonical (1-11), breadth (b1-b24) or all (default)")
    parser.add_argument("--workloads", default=None,
                        help="comma-separated workload ids, e.g. 1,4,b3 (default: the suite's)")
    parser.add_argument("--wait-policy", choices=sorted(WAIT_POLICIES), default="default",
                        help="OMP_WAIT_POLICY of every worker, the same for all frameworks: "
                             "default (unset: the OpenMP runtimes' own default; the default), "
                             "passive or active")
    parser.add_argument("--json", metavar="PATH", help="write all figures and machine info")
    parser.add_argument("--markdown", metavar="PATH", help="write the results table")
    parser.add_argument("--update-readme", metavar="PATH", nargs="?", const=README, default=None,
                        help="replace the results between the benchmark markers of README.md "
                             "(or PATH) with this run's table")
    parser.add_argument("--no-torch", action="store_true",
                        help="measure minidl only (no PyTorch, no peers)")
    parser.add_argument("--profile", type=int, nargs="?", const=10, default=None, metavar="N",
                        help="instead of comparing, profile minidl and print the top N "
                             "functions by own time per workload (default N: 10)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workloads = (SUITES[args.suite] if args.workloads is None
                      else parse_workloads(parser, args.workloads))
    args.threads = parse_threads(parser, args.threads)
    if args.repeats is None:
        args.repeats = SIZES[args.sizes]["repeats"]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def parse_workloads(parser, text):
    """``"1,4,b3"`` -> ``["1", "4", "b3"]`` in the table's order, checked against WORKLOADS."""
    ids = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(ids - set(WORKLOADS))
    if unknown or not ids:
        parser.error(f"--workloads: choose from {', '.join(WORKLOADS)}; got {text!r}")
    return [i for i in WORKLOADS if i in ids]


def parse_threads(parser, text):
    """``"1,2"`` -> ``[2, 1]`` (largest first: the table's main figures); None -> 1 and all
    cores."""
    if text is None:
        return sorted({1, available_cores()}, reverse=True)
    try:
        counts = {int(part) for part in str(text).split(",") if part.strip()}
    except ValueError:
        counts = set()
    if not counts or min(counts) < 1:
        parser.error(f"--threads: expected thread counts >= 1 like 2 or 1,2, got {text!r}")
    return sorted(counts, reverse=True)


def available_cores():
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ===================================================================== orchestration
def thread_env(threads, wait_policy="default"):
    """The environment of a worker: every thread pool sized to ``threads`` from start-up, and
    ``OMP_WAIT_POLICY`` set as ``wait_policy`` says (a key of WAIT_POLICIES; "default" removes
    it) for every framework alike."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "MINIDL_NUM_THREADS"):
        env[name] = str(threads)
    env.pop("OMP_WAIT_POLICY", None)
    if WAIT_POLICIES[wait_policy] is not None:
        env["OMP_WAIT_POLICY"] = WAIT_POLICIES[wait_policy]
    return env


def pin_to_cores(threads):
    """Restrict this process to ``threads`` of the CPUs it may use (Linux), when fewer than
    all: XLA (JAX) sizes its thread pools from the process's CPU affinity and has no setting
    for it, so this is how a worker limits every framework to ``threads`` cores alike."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return
    if threads < len(allowed):
        os.sched_setaffinity(0, allowed[:threads])


def worker_command(args, kind, workloads, threads):
    """The command line that runs this file as a worker of ``kind``."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind,
               "--sizes", args.sizes, "--threads", str(threads),
               "--repeats", str(args.repeats), "--workloads", ",".join(workloads)]
    if args.no_torch:
        command.append("--no-torch")
    if args.profile is not None:
        command += ["--profile", str(args.profile)]
    return command


def run_worker(args, kind, workloads, threads, show_progress=True):
    """Run a worker; return the records it printed (lines starting with ``@@result``).

    Other output of the worker goes to our stderr. A worker that dies leaves an error record
    for each of its workloads that has no record yet.
    """
    process = subprocess.Popen(worker_command(args, kind, workloads, threads),
                               env=thread_env(threads, args.wait_policy), stdout=subprocess.PIPE,
                               text=True)
    records = []
    for line in process.stdout:
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX):])
            records.append(record)
            if "id" in record and show_progress:
                progress(record, threads)
        else:
            sys.stderr.write(line)
    code = process.wait()
    if code != 0:
        seen = {r.get("id") for r in records}
        for i in workloads:
            if i not in seen:
                records.append(dict(id=i, error=f"worker {kind!r} exited with status {code}"))
    return records


def progress(record, threads):
    """One line on stderr when a workload is done."""
    name = WORKLOADS[record["id"]]["name"]
    state = ("error: " + record["error"] if record.get("error")
             else "skipped: " + record["skipped"] if record.get("skipped") else "done")
    print(f"[benchmark] {record['id']} {name} ({threads} thread{'s' * (threads > 1)}): {state}",
          file=sys.stderr, flush=True)


def collect(args):
    """Run the workers for the selected workloads; return ``(results, worker_info)``.

    ``results[id]`` is ``{thread count: record}``; the memory workloads run at the largest
    thread count only.
    """
    results, info = {}, {}
    timed = [i for i in args.workloads if WORKLOADS[i]["runner"] == "time"]
    for threads in args.threads if timed else []:
        for record in run_worker(args, "time", timed, threads):
            if "id" in record:
                results.setdefault(record.pop("id"), {})[threads] = record
            else:
                info.update({k: v for k, v in record.items() if info.get(k) is None})
    main_threads = args.threads[0]
    if not timed:  # the versions of the libraries, which the timing worker reports otherwise
        for record in run_worker(args, "versions", [], main_threads):
            info.update(record)
    if "7" in args.workloads:
        results["7"] = {main_threads: rss_training_result(args, info, main_threads)}
    if "11" in args.workloads:
        results["11"] = {main_threads: rss_example_result(args, main_threads)}
    return results, info


def rss_training_result(args, info, threads):
    """Workload 7: one fresh process per framework; peak RSS of each."""
    sizes = SIZES[args.sizes]
    record = dict(detail=f"{sizes['memory_steps']} steps, batch {sizes['cifar_batch']}")
    frameworks = ["minidl"] if args.no_torch else ["minidl", "pytorch"]
    errors = []
    for framework in frameworks:
        for entry in run_worker(args, "memory-" + framework, ["7"], threads, show_progress=False):
            if entry.get("error"):
                errors.append(f"{framework}: {entry['error']}")
            elif "id" in entry:
                record["minidl" if framework == "minidl" else "peer"] = entry.get("peak_rss_mib")
                record.setdefault("processes", {})[framework] = entry
            else:
                info.update({k: v for k, v in entry.items() if info.get(k) is None})
    if errors:
        record["error"] = "; ".join(errors)
    progress(dict(record, id="7"), threads)
    return record


def rss_example_result(args, threads):
    """Workload 11: peak RSS of ``examples/mnist_bn.py`` and of its PyTorch twin
    (``benchmarks/mnist_bn_torch.py``), each in a fresh process with the same options.

    The data come from ``<repository>/data`` (downloaded by the example if missing, from
    ``$MINIDL_DATA_MIRROR`` first).
    """
    sizes = SIZES[args.sizes]
    options = sizes["example_args"] + ["--root", os.path.join(ROOT, "data"), "--no-progress"]
    record = dict(detail=("1 epoch" if not sizes["tiny"] else "256 images")
                  + " x 2 networks, batch 64")
    scripts = [("minidl", os.path.join(ROOT, "examples", "mnist_bn.py"))]
    if not args.no_torch:
        scripts.append(("peer", os.path.join(HERE, "mnist_bn_torch.py")))
    env = thread_env(threads, args.wait_policy)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as folder:
        for key, script in scripts:
            out = os.path.join(folder, key + ".json")
            run = peak_rss_of([sys.executable, script, *options, "--out", out], env)
            if run.get("error"):
                record["error"] = f"{os.path.basename(script)}: {run['error']}"
                break
            with open(out) as f:
                runs = json.load(f)["runs"]
            run["final_test_accuracy"] = [r["final_test_accuracy"] for r in runs]
            record[key] = run["peak_rss_mib"]
            record.setdefault("processes", {})[key] = run
    progress(dict(record, id="11"), threads)
    return record


def peak_rss_of(command, env):
    """Run ``command``; return its peak RSS (MiB, from wait4's ru_maxrss) and wall time, or an
    error with the end of its output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    if process.returncode != 0:
        return dict(error=f"exit status {process.returncode}: {output[-2000:]}")
    return dict(peak_rss_mib=usage.ru_maxrss / 1024, seconds=time.perf_counter() - start)


def maxrss_mib(value):
    """``ru_maxrss`` in MiB (Linux reports KiB, macOS bytes)."""
    return value / (2**20 if sys.platform == "darwin" else 2**10)


def machine_info(args, worker_info):
    """CPU, cores, date, versions and settings of this run."""
    info = dict(
        cpu=cpu_model(),
        logical_cores=os.cpu_count(),
        available_cores=available_cores(),
        threads=args.threads,
        sizes=args.sizes,
        repeats=args.repeats,
        omp_wait_policy=WAIT_POLICIES[args.wait_policy] or "unset (runtime default)",
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        python=platform.python_version(),
        platform=platform.platform(),
        git_commit=git_commit(),
        load_average=load_average(),
    )
    info.update(worker_info)
    return info


def load_average():
    """The 1-, 5- and 15-minute load averages (as ``uptime``), or None."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


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
def finish(workload_id, by_threads, thread_counts):
    """One workload's record for the table and the JSON: the figures at the largest thread
    count measured, ``by_threads`` with the ratio at each, and whether the target is met."""
    spec = WORKLOADS[workload_id]
    main = max(by_threads)
    per_threads = {}
    for threads in sorted(by_threads, reverse=True):
        entry = by_threads[threads]
        for name in ("minidl", "peer"):
            entry.setdefault(name, None)
            if entry.get("extra"):
                entry["extra"].setdefault(name, None)
        ours, theirs = entry["minidl"], entry["peer"]
        ratio = met = None
        if ours and theirs and not entry.get("error"):
            ratio = theirs / ours if spec["kind"] == "time" else ours / theirs
            met = ratio <= spec["target"] if spec["kind"] == "memory" else ratio >= spec["target"]
        entry.update(ratio=ratio, met=met)
        entry["spread"] = {name: (max(samples) - min(samples)) / statistics.median(samples)
                           for name, samples in entry.get("seconds_per_step", {}).items()}
        per_threads[threads] = entry
    record = dict(per_threads[main])
    judged = [per_threads[main]] if spec["target_threads"] == "max" else per_threads.values()
    verdicts = [entry["met"] for entry in judged]
    met = None if None in verdicts else all(verdicts)
    record.update(id=workload_id, name=spec["name"], unit=spec["unit"], kind=spec["kind"],
                  suite=spec["suite"], peer_name=spec["peer"], target=spec["target"],
                  target_threads=spec["target_threads"], threads=main, met=met,
                  by_threads={str(n): per_threads[n] for n in per_threads})
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


def format_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}x"


def label(record):
    """``"1 MNIST CNN + BN, train step (batch 64)"``."""
    return f"{record['id']} {record['name']}" + (f" ({record['detail']})"
                                                 if record.get("detail") else "")


def breadth_worst(results, thread_counts):
    """``{threads: (ratio, id)}``: the breadth suite's smallest ratio at each thread count."""
    worst = {}
    for threads in thread_counts:
        ratios = [(r["by_threads"][str(threads)]["ratio"], i) for i, r in results.items()
                  if r["suite"] == "breadth" and str(threads) in r["by_threads"]
                  and r["by_threads"][str(threads)]["ratio"] is not None]
        if ratios:
            worst[threads] = min(ratios)
    return worst


def table_rows(results, thread_counts):
    """The table as a list of string rows (header first). The figures are at the largest
    thread count; each other thread count adds a ratio column."""
    others = thread_counts[1:]
    rows = [["workload", "minidl", "peer", "unit", "ratio"]
            + [f"ratio, {n} thread{'s' * (n > 1)}" for n in others] + ["target", "met?"]]
    for i, r in results.items():
        if r.get("error"):
            rows.append([label(r), "error", "error", r["unit"], "-"] + ["-"] * len(others)
                        + ["-", "-"])
            continue
        sign = "<=" if r["kind"] == "memory" else ">="
        met = "-" if r["met"] is None else ("yes" if r["met"] else "no")
        peer = "skipped" if r.get("skipped") else format_number(r.get("peer"))
        other_ratios = [format_ratio(r["by_threads"].get(str(n), {}).get("ratio")) for n in others]
        rows.append([label(r), format_number(r.get("minidl")), peer, r["unit"],
                     format_ratio(r["ratio"])] + other_ratios + [f"{sign} {r['target']:.1f}x", met])
        extra = r.get("extra")
        if extra:
            rows.append([f"  {i} {extra['name']}", format_number(extra.get("minidl")),
                         format_number(extra.get("peer")), extra["unit"],
                         format_ratio(r["ratio"])] + [""] * len(others) + ["", ""])
    worst = breadth_worst(results, thread_counts)
    if worst:
        count = sum(r["suite"] == "breadth" for r in results.values())
        verdicts = [r["met"] for r in results.values() if r["suite"] == "breadth"]
        met = "-" if None in verdicts else ("yes" if all(verdicts) else "no")
        rows.append([f"breadth suite, worst of {count}", "", "", "",
                     _worst_cell(worst.get(thread_counts[0]))]
                    + [_worst_cell(worst.get(n)) for n in others] + [">= 1.0x", met])
    return rows


def _worst_cell(entry):
    return "-" if entry is None else f"{entry[0]:.2f}x ({entry[1]})"


def notes(results, info):
    """The lines printed under the table."""
    main = info["threads"][0]
    lines = [
        f"figures at {main} thread{'s' * (main > 1)}; peer: PyTorch {info.get('torch') or '-'} "
        f"eager unless the row names torch.compile or JAX. ratio: images/s, GB/s, GFLOP/s rows "
        f"minidl/peer; ms rows peer/minidl (the speed-up); both higher is better. Memory rows "
        f"minidl/peer, lower is better. Targets of the canonical rows apply at {main} "
        f"thread{'s' * (main > 1)}; of Dense and the breadth suite at every thread count.",
    ]
    copy = info.get("copy_bandwidth_gbs")
    if copy:
        text = (f"copy bandwidth (np.copyto of {info.get('copy_mib')} MiB, read+write): "
                f"{copy:.1f} GB/s")
        if info.get("copy_bandwidth_torch_gbs"):
            text += f"; torch copy_: {info['copy_bandwidth_torch_gbs']:.1f} GB/s"
        lines.append(text)
        bn = results.get("4", {}).get("extra") or {}
        if bn.get("minidl"):
            lines.append(f"BatchNorm effective bandwidth: minidl {bn['minidl'] / copy:.0%} of "
                         f"np.copyto's" + (f", PyTorch {bn['peer'] / copy:.0%}"
                                           if bn.get("peer") else ""))
    probes = [(when, info.get(f"core_probe_{when}")) for when in ("start", "end")]
    if any(probe for _, probe in probes):
        lines.append("cores (core_probe): a thread overwriting 8 MiB its partner has just "
                     "written against its own, and summing it (each about 1x normally, about "
                     "3x in the VM's slow phases, where minidl's 2-thread passes lose more "
                     "than PyTorch's), and two threads summing at once against one alone "
                     "(about 1x on two cores, about 2x on one core's time): " + "; ".join(
                         f"at the {when} overwrite {probe['write_ratio']:.1f}x, sum "
                         f"{probe['ratio']:.1f}x, together {probe['together']:.1f}x"
                         for when, probe in probes if probe))
    worst = breadth_worst(results, info["threads"])
    if worst:
        lines.append("breadth suite, worst ratio: " + "; ".join(
            f"{ratio:.2f}x at {n} thread{'s' * (n > 1)} ({i} {WORKLOADS[i]['name']})"
            for n, (ratio, i) in worst.items()))
    for i, r in results.items():
        for threads, entry in r["by_threads"].items():
            if entry.get("compile_seconds") is not None:
                lines.append(f"{i}: {r['peer_name']}'s first step (compilation) took "
                             f"{entry['compile_seconds']:.1f} s at {threads} thread(s); "
                             f"only later steps are timed")
        if r.get("skipped"):
            lines.append(f"{i}: {r['peer_name']} skipped: {r['skipped']}")
        mismatch = r.get("loss_mismatch")
        if mismatch:
            lines.append(f"{i}: the first step's losses differ: {mismatch}")
    example = results.get("11", {}).get("processes")
    if example and "peer" in example:
        lines.append("11: wall time minidl {:.0f} s, PyTorch {:.0f} s; final test accuracy "
                     "(BN, no BN) minidl {}, PyTorch {}".format(
                         example["minidl"]["seconds"], example["peer"]["seconds"],
                         _accuracies(example["minidl"]), _accuracies(example["peer"])))
    if not info.get("torch"):
        lines.append("PyTorch not measured (not installed or --no-torch): ratios are '-'.")
    noisy = [f"{i} ({', '.join(f'{name} {value:.0%}' for name, value in r['spread'].items())})"
             for i, r in results.items()
             if max(r.get("spread", {}).values(), default=0) > NOISY_SPREAD]
    if noisy:
        lines.append(f"noisy: the rounds of workload {'; '.join(noisy)} differ by more than "
                     f"{NOISY_SPREAD:.0%} ((max - min) / median)")
    others = info.get("other_processes_cores")
    if others is not None and others > BUSY_CORES:
        lines.append(f"the machine was busy: other processes used {others:.1f} cores on average "
                     f"during the run (load average {info.get('load_average')}); they steal "
                     f"cores from the threads of every framework (an OpenMP barrier waits for a "
                     f"descheduled thread), so the figures are unreliable")
    return lines


def _accuracies(process):
    return "/".join(f"{a:.4f}" for a in process.get("final_test_accuracy", []))


def header(info):
    """One line naming the machine, the run's settings and the versions."""
    threads = ",".join(map(str, info["threads"]))
    return (f"{info['cpu']}, {info['available_cores']} cores, threads {threads}, "
            f"{info['date']}; python {info['python']}, numpy {info.get('numpy', '?')}, "
            f"torch {info.get('torch') or '-'}, jax {info.get('jax') or '-'}, "
            f"minidl {info.get('minidl', '?')} ({info.get('git_commit') or 'no git'}); "
            f"sizes {info['sizes']}, {info['repeats']} rounds, median; "
            f"OMP_WAIT_POLICY {info.get('omp_wait_policy', '?')}")


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
    rows = table_rows(results, info["threads"])
    print(header(info))
    print(text_table(rows))
    for line in notes(results, info):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "workloads": results}, f, indent=2)
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
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    print(f"results written into {path}")


def main(argv=None):
    """Entry point: run the workers, print the table. Returns the exit status."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.profile is not None:
        threads = args.threads[0]
        return subprocess.call(worker_command(args, "profile", args.workloads, threads),
                               env=thread_env(threads, args.wait_policy))
    usage_before = cpu_usage()
    raw, worker_info = collect(args)
    info = machine_info(args, worker_info)
    info["other_processes_cores"] = other_processes_cores(usage_before, cpu_usage())
    results = {i: finish(i, raw[i], args.threads) for i in args.workloads if i in raw}
    report(args, results, info)
    return 1 if any(r.get("error") for r in results.values()) else 0


# ===================================================================== workers
def worker_main(args):
    """Run in a child process: measure, print records as ``@@result {json}`` lines."""
    pin_to_cores(args.threads[0])
    want_torch = not args.no_torch and args.worker != "memory-minidl"
    _import_frameworks(want_torch, need_minidl=args.worker != "memory-pytorch")
    sizes = SIZES[args.sizes]
    threads = args.threads[0]
    if minidl is not None:
        minidl.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    if args.worker == "versions":
        emit(versions())
    elif args.worker == "time":
        emit(versions())
        emit(copy_bandwidth(sizes))
        if threads > 1:
            emit(dict(core_probe_start=core_probe()))
        for i in args.workloads:
            emit(guarded(i, lambda i=i: timed_workload(i, sizes, args.repeats, args.no_torch)))
        if threads > 1:
            emit(dict(core_probe_end=core_probe()))
    elif args.worker.startswith("memory-"):
        emit(versions())
        emit(guarded("7", lambda: memory_workload(args.worker[len("memory-"):], sizes)))
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
    info = dict(numpy=np.__version__, torch=None if torch is None else torch.__version__,
                jax=_version_of("jax"),
                worker_omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    if minidl is not None:
        info.update(minidl=minidl.__version__, minidl_path=os.path.dirname(minidl.__file__))
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy, or a build without this information
        pass
    return info


def _version_of(package):
    """The installed version of ``package`` (without importing it), or None."""
    from importlib import metadata
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


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


def core_probe(mib=16, rounds=9):
    """How the two cores treat each other's data right now (README, "Slow phases").

    Two threads each add 1 to their half of a ``mib`` MiB float32 buffer, then either sum or
    overwrite their own half or their partner's (NumPy releases the GIL in both, so the
    threads run on two cores). Returns ``{"own_ms", "other_ms", "ratio", "write_own_ms",
    "write_other_ms", "write_ratio", "alone_ms", "together"}``: the median over ``rounds`` of
    the slower thread's sum (or overwrite) of each kind, other / own for each, the sum by one
    thread while the other idles, and own / alone.

    Our 2-core VM has phases (seconds to minutes) in which the cores treat each other's data
    differently. ``write_ratio`` about 3 (against 1) is the one seen most: overwriting lines the
    partner has just written costs 3x, while reading them does not (``ratio`` stays about 1);
    every 2-thread pass that writes memory the other thread wrote last (a buffer reused between
    passes that split the work differently) slows down there, minidl's more than PyTorch's
    (a (64, 16, 32, 32) -> 16 7x7 stride-2 layer's step took 8 ms in one phase and 11-17 in the
    other). ``ratio`` about 3 was seen in other runs (the cores not sharing a cache).
    ``together`` is about 1 when the two threads run at once on two cores, about 2 when the VM
    gives them one core's time (seen once at the start of a run: own and other both 0.68 ms,
    against 0.34). A 2-thread figure is worth reading with all three.
    """
    import threading
    half = mib * 2**20 // 8
    buffer = np.zeros(2 * half, np.float32)
    halves = (buffer[:half], buffer[half:])
    barrier = threading.Barrier(2)
    kinds = ("own", "other", "write_own", "write_other")
    seconds = {kind: [[0.0] * rounds for _ in range(2)] for kind in kinds}

    def run(t):
        for r in range(rounds):
            for kind in kinds:
                barrier.wait()
                np.add(halves[t], 1, out=halves[t])  # this thread writes its half
                barrier.wait()
                half = halves[1 - t if kind.endswith("other") else t]
                start = time.perf_counter()
                if kind.startswith("write"):
                    half.fill(2.0)
                else:
                    half.sum()
                seconds[kind][t][r] = time.perf_counter() - start

    workers = [threading.Thread(target=run, args=(t,)) for t in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    own, other, write_own, write_other = (
        statistics.median(max(a, b) for a, b in zip(*seconds[kind])) * 1e3 for kind in kinds)
    alone = []  # the same sum by one thread while the other idles
    for r in range(rounds):
        np.add(halves[0], 1, out=halves[0])
        start = time.perf_counter()
        halves[0].sum()
        alone.append(time.perf_counter() - start)
    alone_ms = statistics.median(alone) * 1e3
    return dict(own_ms=own, other_ms=other, ratio=other / own, write_own_ms=write_own,
                write_other_ms=write_other, write_ratio=write_other / write_own,
                alone_ms=alone_ms, together=own / alone_ms)


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
        (seconds, block_steps, first): ``{framework: [seconds per step, one per round]}``,
        ``{framework: steps per block}`` and ``{framework: what its first step returned}``
        (the loss of a training step).
    """
    block_steps, first = {}, {}
    for name, step in steps.items():
        first[name] = step()
        for _ in range(sizes["warmup"] - 1):
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
    return seconds, block_steps, first


class Skipped(Exception):
    """A peer that is not installed or cannot run here (the reason is the message)."""


def timed_workload(workload_id, sizes, repeats, no_torch):
    """Measure a timed workload for minidl and (if present) its peer; medians over the rounds."""
    setup = workload_setup(workload_id, sizes, no_torch)
    steps = setup["steps"]
    seconds, block_steps, first = interleaved(steps, sizes, repeats)
    record = dict(detail=setup["detail"], block_steps=block_steps, seconds_per_step=seconds)
    for key in ("skipped", "compile_seconds"):
        if setup.get(key) is not None:
            record[key] = setup[key]
    losses = {name: value for name, value in first.items() if isinstance(value, float)}
    if len(losses) == 2:
        record["first_loss"] = losses
        a, b = losses.values()
        if not abs(a - b) <= LOSS_TOLERANCE * max(abs(a), abs(b)):
            record["loss_mismatch"] = ", ".join(f"{k} {v:.6f}" for k, v in losses.items())
    spec, work = WORKLOADS[workload_id], setup["work"]
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


def workload_setup(workload_id, sizes, no_torch=False):
    """The set-up of a timed workload: a dict with ``steps`` (``{"minidl": step, "peer":
    step}``, each a callable running one step), ``detail`` (for the table), ``work`` (images,
    bytes or FLOPs of one step) and, for the optional peers, ``skipped`` (why the peer is not
    measured) or ``compile_seconds``."""
    if workload_id in BREADTH:
        return breadth_setup(workload_id, sizes)
    if workload_id in ("1", "2", "3", "12"):
        kind = {"1": "mnist", "2": "mnist", "3": "cifar", "12": "resnet20"}[workload_id]
        return train_setup(kind, workload_id != "2", sizes)
    if workload_id in ("9", "10"):
        return peer_setup(WORKLOADS[workload_id]["peer"], sizes, no_torch)
    return {"4": batchnorm_setup, "5": conv_setup, "6": eval_setup,
            "8": dense_setup}[workload_id](sizes)


# --------------------------------------------------------------------- networks and data
def minidl_network(kind, batch_norm):
    """The minidl network of a workload, initialized from minidl's seeded generator."""
    minidl.manual_seed(0)
    norm = "batch" if batch_norm else None
    if kind == "resnet20":  # option-A shortcuts, as He et al.'s CIFAR networks
        return minidl.models.resnet_cifar(20, norm=norm)
    builder = minidl.models.mnist_cnn if kind == "mnist" else minidl.models.vgg_cifar
    return builder(norm=norm)


def torch_copy(minidl_module):
    """The PyTorch twin of ``minidl_module`` (``models.torch_twin``) holding minidl's
    parameters and buffers (a strict ``load_state_dict``: the layouts must match)."""
    from models import torch_twin
    module = torch_twin(minidl_module, minidl, torch)
    state = {key: torch.from_numpy(np.array(value)) for key, value in
             minidl_module.state_dict().items()}
    module.load_state_dict(state, strict=True)
    return module


def image_shape(kind):
    """``(C, H, W)`` of one image of the network ``kind``."""
    return (1, 28, 28) if kind == "mnist" else (3, 32, 32)


def random_batches(shape, batch, count, seed=0):
    """``count`` batches of uniform float32 inputs in [0, 1) of ``(batch,) + shape`` and int64
    labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return [(rng.random((batch,) + tuple(shape), dtype=np.float32),
             rng.integers(0, 10, batch, dtype=np.int64)) for _ in range(count)]


# --------------------------------------------------------------------- workload set-ups
def train_setup(kind, batch_norm, sizes):
    """Workloads 1-3 and 12: forward, cross-entropy, backward and an SGD (momentum 0.9) update."""
    batch = sizes["mnist_batch" if kind == "mnist" else "cifar_batch"]
    model = minidl_network(kind, batch_norm)
    return network_setup(model, image_shape(kind), batch, "train", sizes)


def breadth_setup(config_id, sizes):
    """A breadth configuration: a training step, or an eval-mode forward, of its network."""
    from models import build_breadth
    _, mode, _, shape = BREADTH[config_id]
    model = build_breadth(config_id, minidl)
    return network_setup(model, shape, breadth_batch(config_id, sizes["tiny"]), mode, sizes)


def network_setup(model, shape, batch, mode, sizes):
    """minidl's ``model`` and its PyTorch twin: training steps (``mode="train"``) or eval-mode
    forwards (``"eval"``, minidl under ``no_grad``, PyTorch under ``torch.no_grad``)."""
    batches = random_batches(shape, batch, sizes["num_batches"])
    if mode == "eval":
        model.eval()
        steps = {"minidl": minidl_eval_step(model, batches[0][0])}
        if torch is not None:
            steps["peer"] = torch_eval_step(torch_copy(model).eval(), batches[0][0])
    else:
        steps = {"minidl": minidl_train_step(model, batches)}
        if torch is not None:
            steps["peer"] = torch_train_step(torch_copy(model), batches)
    return dict(steps=steps, detail=f"batch {batch}", work=batch)


def minidl_train_step(model, batches):
    """One minidl training step per call, cycling through ``batches``; returns the loss."""
    model.train()
    loss_fn = minidl.losses.CrossEntropyLoss()
    optimizer = minidl.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    cycle = itertools.cycle(batches)

    def step():
        x, y = next(cycle)
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)  # as PyTorch: no grad for the input
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # what PyTorch's zero_grad() does by default
        return loss
    step.model = model  # for --profile's per-layer times
    return step


def torch_train_step(model, batches, compile=False):
    """One PyTorch training step per call, cycling through ``batches``; returns the loss.

    Eager, or with ``compile`` through ``torch.compile(model)`` (the default inductor backend;
    its first call compiles) and the same optimizer on the model's parameters.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    forward = torch.compile(model) if compile else model
    cycle = itertools.cycle([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches])

    def step():
        x, y = next(cycle)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def minidl_eval_step(model, x):
    """An inference forward of ``x`` under ``minidl.no_grad()`` (as Trainer.evaluate)."""
    def step():
        with minidl.no_grad():
            model(x)
    step.model = model  # for --profile's per-layer times
    return step


def torch_eval_step(module, x):
    """An inference forward of ``x`` under ``torch.no_grad()``."""
    x_t = torch.from_numpy(x)

    def step():
        with torch.no_grad():
            module(x_t)
    return step


def eval_setup(sizes):
    """Workload 6: inference, the MNIST CNN with BN in eval mode, under no_grad."""
    model = minidl_network("mnist", True)
    return network_setup(model, image_shape("mnist"), sizes["eval_batch"], "eval", sizes)


def peer_setup(peer, sizes, no_torch):
    """Workloads 9 and 10: the MNIST CNN + BN training step of workload 1 against
    ``torch.compile`` or JAX ``jit`` (``peers.py``); the peer's first step, which compiles,
    is timed on its own (``compile_seconds``) and only later steps are compared."""
    batch = sizes["mnist_batch"]
    model = minidl_network("mnist", True)
    batches = random_batches(image_shape("mnist"), batch, sizes["num_batches"])
    setup = dict(detail=f"batch {batch}", work=batch)
    try:
        if no_torch:
            raise Skipped("--no-torch")
        if peer == "torch.compile":
            if torch is None:
                raise Skipped("PyTorch is not installed")
            peer_step = torch_train_step(torch_copy(model), batches, compile=True)
        else:
            if _version_of("jax") is None:
                raise Skipped("jax is not installed (pip install jax)")
            import peers
            peer_step = peers.jax_train_step(model, minidl, batches, LEARNING_RATE, MOMENTUM)
        start = time.perf_counter()
        try:
            first_loss = peer_step()
        except Exception as exc:  # e.g. inductor without a working C++ compiler
            raise Skipped(f"its first step failed: {type(exc).__name__}: {str(exc)[:300]}")
        setup["compile_seconds"] = time.perf_counter() - start
    except Skipped as reason:
        setup["skipped"] = str(reason)
        setup["steps"] = {"minidl": minidl_train_step(model, batches)}
        return setup
    # the peer has taken its first step on the first batch; minidl takes its own first step
    # on it too, inside interleaved(), from the same initial parameters
    setup["steps"] = {"minidl": minidl_train_step(model, batches),
                      "peer": _first_then(first_loss, peer_step)}
    return setup


def _first_then(first_value, step):
    """``step`` whose first call returns ``first_value`` without running (it already ran)."""
    pending = [first_value]

    def wrapped():
        return pending.pop() if pending else step()
    return wrapped

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
        # new gradients each step, as torch.autograd.grad returns (nothing accumulated)
        layer.zero_grad(set_to_none=True)
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
        steps["peer"] = torch_step
    return dict(steps=steps, detail="x".join(map(str, shape)), work=5 * x.nbytes)


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
        # new gradients each step, as torch.autograd.grad returns (nothing accumulated)
        layer.zero_grad(set_to_none=True)
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
        steps["peer"] = torch_step
    flops = 3 * 2 * n * c * c * 3 * 3 * h * w
    return dict(steps=steps, detail=f"{c}->{c} on {n}x{c}x{h}x{w}", work=flops)


def dense_setup(sizes):
    """Workload 8: Dense alone (``(N, in) -> (N, out)`` with bias), forward and backward.

    Work: ``3 * 2*N*in*out`` FLOPs (forward, input and weight gradients).
    """
    n, fan_in, fan_out = sizes["dense_shape"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, fan_in), dtype=np.float32)
    dy = rng.standard_normal((n, fan_out), dtype=np.float32)
    minidl.manual_seed(0)
    layer = minidl.layers.Dense(fan_in, fan_out)

    def minidl_step():
        # new gradients each step, as torch.autograd.grad returns (nothing accumulated)
        layer.zero_grad(set_to_none=True)
        layer(x)
        layer.backward(dy)
    steps = {"minidl": minidl_step}
    if torch is not None:
        module = torch_copy(layer)
        x_t = torch.from_numpy(x).requires_grad_()
        dy_t = torch.from_numpy(dy)

        def torch_step():
            out = module(x_t)
            torch.autograd.grad(out, (x_t, module.weight, module.bias), dy_t)
        steps["peer"] = torch_step
    return dict(steps=steps, detail=f"({n}, {fan_in}) -> {fan_out}",
                work=3 * 2 * n * fan_in * fan_out)


# --------------------------------------------------------------------- memory and profile
def memory_workload(framework, sizes):
    """Workload 7 in a fresh process: train the CIFAR CNN; report the peak RSS (ru_maxrss)."""
    import resource
    kind, steps = "cifar", sizes["memory_steps"]
    batches = random_batches(image_shape(kind), sizes["cifar_batch"],
                             min(steps, sizes["num_batches"]))
    if framework == "minidl":
        step = minidl_train_step(minidl_network(kind, True), batches)
    elif torch is None:
        raise RuntimeError("PyTorch is not installed")
    else:
        torch.manual_seed(0)
        from models import torch_network
        step = torch_train_step(torch_network(kind, True, torch), batches)
    before = maxrss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    for _ in range(steps):
        step()
    peak = maxrss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return dict(framework=framework, steps=steps, peak_rss_mib=peak,
                rss_before_training_mib=before)


def profile_workload(workload_id, sizes, top):
    """Where one workload's time goes: minidl's top functions by own time (cProfile), minidl's
    time per layer (networks only) and PyTorch's top operators (when installed).

    cProfile charges a Cython kernel or a NumPy ufunc to the Python function that calls it, so
    the functional wrappers (``conv2d_forward`` ...) stand for their kernels.
    """
    name = WORKLOADS[workload_id]["name"]
    if WORKLOADS[workload_id]["runner"] != "time":
        print(f"\n{workload_id} {name}: nothing to profile (a memory measurement)")
        return
    setup = workload_setup(workload_id, sizes)
    steps, detail = setup["steps"], setup["detail"]
    for step in steps.values():
        for _ in range(sizes["warmup"]):
            step()
    step = steps["minidl"]
    count = max(1, min(sizes["max_steps"], round(sizes["profile_seconds"] / timed_call(step))))
    print(f"\n===== {workload_id} {name} ({detail}): {count} steps =====")
    print_cprofile(step, count, top)
    if getattr(step, "model", None) is not None:
        print_layer_times(step, count)
    if "peer" in steps and WORKLOADS[workload_id]["peer"] == "PyTorch":
        print_torch_profile(steps["peer"], count, top)


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


def print_layer_times(step, count):
    """minidl: wall time of each layer's forward and backward, per step (no profiler)."""
    model = step.model
    seconds = {}

    def timed(key, method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = method(*args, **kwargs)
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    labels = []
    for index, layer in enumerate(model):
        labels.append(f"{index} {layer_label(layer)}")
        layer.forward = timed((labels[-1], "forward"), layer.forward)
        layer.backward = timed((labels[-1], "backward"), layer.backward)
    total = timed_call(lambda: [step() for _ in range(count)])
    for layer in model:  # back to the class's methods
        del layer.forward, layer.backward
    print(f"minidl, per layer (wall time, {total / count * 1e3:.1f} ms per step):")
    print(f"{'forward':>9} {'backward':>9} {'share':>6}  layer  (ms per step)")
    for label in labels:
        forward = seconds.get((label, "forward"), 0.0)
        backward = seconds.get((label, "backward"), 0.0)
        print(f"{forward / count * 1e3:9.2f} {backward / count * 1e3:9.2f} "
              f"{(forward + backward) / total:6.1%}  {label}")
    rest = total - sum(seconds.values())
    print(f"{rest / count * 1e3:19.2f} {rest / total:6.1%}  the rest (loss, optimizer, Python)")


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
