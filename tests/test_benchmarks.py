"""Smoke tests of ``benchmarks/run.py``: it runs, prints every workload and writes valid JSON.

No timing assertions: the benchmark is not a test. Most runs use one thread so that they stay
fast and steady on a busy CI machine.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import minidl

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
CANONICAL = [str(i) for i in range(1, 13)]
BREADTH = [f"b{i}" for i in range(1, 16)]
PEERS = {"9", "10"}
HEADER = "| workload | minidl | peer | unit | ratio | target | met? |"
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (the benchmark's peer) is not "
                                 "installed; test_runs_without_pytorch covers minidl alone")


def data_mirror():
    """The MNIST mirror (``$MINIDL_DATA_MIRROR`` or ``../shared/data``), or None."""
    path = os.environ.get("MINIDL_DATA_MIRROR") or str(ROOT.parent / "shared" / "data")
    return path if os.path.isdir(path) or "://" in path else None


def run_benchmark(*options, threads="1"):
    """Run ``benchmarks/run.py --quick --threads <threads> *options``; return the process."""
    env = dict(os.environ)
    package_root = str(Path(minidl.__file__).resolve().parents[1])  # the minidl we test
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    if data_mirror():
        env["MINIDL_DATA_MIRROR"] = data_mirror()
    return subprocess.run([sys.executable, str(RUN), "--quick", "--threads", threads, *options],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def table_lines(stdout, key, name):
    """The table rows of workload ``key`` (they start with ``"<key> <name>"``)."""
    return [line for line in stdout.splitlines() if line.startswith(f"{key} {name}")]


def check_records(data, stdout, markdown):
    """Every workload has one table row and sane figures; peers are measured or skipped."""
    for key, record in data["workloads"].items():
        assert not record.get("error"), record
        assert len(table_lines(stdout, key, record["name"])) == 1, stdout
        assert f"| {key} {record['name']}" in markdown
        assert record["minidl"] > 0
        peer_missing = key == "10" and not HAS_JAX
        if peer_missing:
            assert record["peer"] is None and record["ratio"] is None
            assert key not in PEERS or record["skipped"]
        else:
            assert record["peer"] > 0 and record["ratio"] > 0, record
            assert isinstance(record["met"], bool)
            assert not record.get("skipped") and not record.get("loss_mismatch"), record
        if key in PEERS and not peer_missing:
            assert record["compile_seconds"] > 0
        if "first_loss" in record:  # same initial parameters and batch: the same loss
            first = list(record["first_loss"].values())
            assert first[0] == pytest.approx(first[1], rel=1e-3)


@needs_torch
def test_quick_run_of_the_timed_workloads_writes_table_json_and_readme(tmp_path):
    json_path, markdown_path = tmp_path / "bench.json", tmp_path / "bench.md"
    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- benchmark results: start (written by benchmarks/run.py "
                      "--update-readme) -->\nold table\n<!-- benchmark results: end -->\ntail\n")
    timed = [i for i in CANONICAL + BREADTH if i not in ("7", "9", "11")]
    result = run_benchmark("--workloads", ",".join(timed), "--json", str(json_path),
                           "--markdown", str(markdown_path), "--update-readme", str(readme))
    assert result.returncode == 0, result.stdout + result.stderr
    updated = readme.read_text()
    assert updated.startswith("# title\n") and updated.endswith("<!-- benchmark results: end -->\ntail\n")
    assert "old table" not in updated and markdown_path.read_text() in updated

    data = json.loads(json_path.read_text())
    assert list(data["workloads"]) == timed  # in the table's order
    # by default the workers run with the OpenMP runtimes' own wait policy (variable unset)
    assert data["machine"]["omp_wait_policy"] == "unset (runtime default)"
    assert data["machine"]["worker_omp_wait_policy"] is None
    assert data["machine"]["threads"] == [1]
    assert data["machine"]["torch"] is not None
    assert data["machine"].get("core_probe_start") is None  # one thread: nothing to probe
    assert "(core_probe)" not in result.stdout
    markdown = markdown_path.read_text()
    assert HEADER in markdown
    check_records(data, result.stdout, markdown)
    for key in ("4", "5", "8"):
        assert data["workloads"][key]["extra"]["minidl"] > 0
    breadth_row = [line for line in markdown.splitlines() if line.startswith("| breadth suite")]
    assert len(breadth_row) == 1 and "x (b" in breadth_row[0]


@needs_torch
def test_memory_workloads_and_two_thread_counts(tmp_path):
    """Both peak-memory workloads (fresh processes, measured once) and a ratio column per extra
    thread count."""
    if data_mirror() is None:
        pytest.skip("no MNIST mirror for examples/mnist_bn.py: set MINIDL_DATA_MIRROR")
    json_path, markdown_path = tmp_path / "bench.json", tmp_path / "bench.md"
    result = run_benchmark("--workloads", "7,11,b5", "--json", str(json_path),
                           "--markdown", str(markdown_path), threads="1,2")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(json_path.read_text())
    assert data["machine"]["threads"] == [2, 1]
    markdown = markdown_path.read_text()
    assert "| workload | minidl | peer | unit | ratio | ratio, 1 thread | target | met? |" in markdown
    check_records(data, result.stdout, markdown)
    assert set(data["workloads"]["b5"]["by_threads"]) == {"1", "2"}
    # the 2-thread worker probes whether the cores share a cache, before and after its workloads
    for when in ("start", "end"):
        probe = data["machine"][f"core_probe_{when}"]
        assert probe["own_ms"] > 0 and probe["other_ms"] > 0
        assert probe["ratio"] == pytest.approx(probe["other_ms"] / probe["own_ms"])
        assert probe["write_own_ms"] > 0 and probe["write_ratio"] == pytest.approx(
            probe["write_other_ms"] / probe["write_own_ms"])
        assert probe["together"] == pytest.approx(probe["own_ms"] / probe["alone_ms"])
    probe_lines = [line for line in result.stdout.splitlines() if "(core_probe)" in line]
    assert len(probe_lines) == 1 and "at the start" in probe_lines[0] \
        and "at the end" in probe_lines[0]
    for key in ("7", "11"):
        record = data["workloads"][key]
        assert set(record["by_threads"]) == {"2"} and record["kind"] == "memory"
        assert record["minidl"] > 20  # MiB: at least NumPy and minidl are loaded
    for process in data["workloads"]["11"]["processes"].values():  # both networks trained
        assert len(process["final_test_accuracy"]) == 2
        assert all(0 <= a <= 1 for a in process["final_test_accuracy"])


@needs_torch
def test_torch_compile_peer(tmp_path):
    """torch.compile (inductor) trains the same network from the same parameters (its first
    step compiles: about 20 s)."""
    json_path = tmp_path / "bench.json"
    result = run_benchmark("--workloads", "9", "--json", str(json_path))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(json_path.read_text())
    check_records(data, result.stdout, "| 9 " + data["workloads"]["9"]["name"])
    assert "torch.compile's first step (compilation) took" in result.stdout


def test_runs_without_pytorch(tmp_path):
    json_path = tmp_path / "bench.json"
    result = run_benchmark("--no-torch", "--workloads", "4,7,10,b3", "--json", str(json_path),
                           "--wait-policy", "passive")
    assert result.returncode == 0, result.stdout + result.stderr

    data = json.loads(json_path.read_text())
    # the policy asked for reached the workers, and the table's header names it
    assert data["machine"]["omp_wait_policy"] == "PASSIVE"
    assert data["machine"]["worker_omp_wait_policy"] == "PASSIVE"
    assert "OMP_WAIT_POLICY PASSIVE" in result.stdout
    assert list(data["workloads"]) == ["4", "7", "10", "b3"]
    for key, record in data["workloads"].items():
        assert record["minidl"] > 0
        assert record["peer"] is None and record["ratio"] is None
        (row,) = table_lines(result.stdout, key, record["name"])
        cells = row.split()  # ... minidl, peer, unit, ratio, target (two words), met?
        assert cells[-6] in ("-", "skipped") and cells[-4] == "-" and cells[-1] == "-", row
    assert data["workloads"]["10"]["skipped"] == "--no-torch"


def test_command_line_errors():
    for options in (["--workloads", "1,b99"], ["--threads", "0"], ["--threads", "two"],
                    ["--wait-policy", "sleepy"]):
        result = subprocess.run([sys.executable, str(RUN), *options], capture_output=True,
                                text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 2 and "error" in result.stderr, options


SWEEP = ROOT / "benchmarks" / "sweep.py"


@needs_torch
def test_layer_sweep_times_and_checks_each_configuration(tmp_path):
    """``sweep.py`` times each configuration in both frameworks, finds their outputs and input
    gradients equal, prints them worst ratio first, and writes them to JSON."""
    json_path = tmp_path / "sweep.json"
    env = dict(os.environ)
    package_root = str(Path(minidl.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    configs = ["2,3,8,4,3,1,1", "2,4,9,6,5,2,2", "1,4,6,8,1,1,0", "1,2,7,3,7,1,3"]
    result = subprocess.run([sys.executable, str(SWEEP), "--quick", "--threads", "1", "--json",
                             str(json_path), "--configs", *configs], capture_output=True,
                            text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(json_path.read_text())
    assert data["threads"] == 1
    assert [tuple(r["config"]) for r in data["results"]] == [
        tuple(int(v) for v in c.split(",")) for c in configs]
    for record in data["results"]:
        assert record["minidl"] > 0 and record["PyTorch"] > 0
        assert record["ratio"] == pytest.approx(record["PyTorch"] / record["minidl"])
        assert record["mismatch"] is None, record
    rows = [line for line in result.stdout.splitlines() if " -> " in line and "x" in line
            and not line.startswith("worst")]
    ratios = [float(line.split()[-1].rstrip("x")) for line in rows]
    assert len(rows) == len(configs) and ratios == sorted(ratios)
    assert "below 1.0x:" in result.stdout.splitlines()[-1]


def test_layer_sweep_rejects_a_malformed_configuration():
    result = subprocess.run([sys.executable, str(SWEEP), "--configs", "1,2,3"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2 and "seven integers" in result.stderr
