"""Smoke tests of ``benchmarks/run.py``: it runs, prints every workload and writes valid JSON.

No timing assertions: the benchmark is not a test. The runs use one thread so that they stay
fast and steady on a busy CI machine.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import minidl

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
ALL_WORKLOADS = {str(i) for i in range(1, 9)}


def run_benchmark(*options):
    """Run ``benchmarks/run.py --quick --threads 1 *options``; return the finished process."""
    env = dict(os.environ)
    package_root = str(Path(minidl.__file__).resolve().parents[1])  # the minidl we test
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(RUN), "--quick", "--threads", "1", *options],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def table_lines(stdout, key, name):
    """The table rows of workload ``key`` (they start with ``"<key> <name>"``)."""
    return [line for line in stdout.splitlines() if line.startswith(f"{key} {name}")]


def test_quick_run_prints_every_workload_and_writes_json(tmp_path):
    json_path, markdown_path = tmp_path / "bench.json", tmp_path / "bench.md"
    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- benchmark results: start (written by benchmarks/run.py "
                      "--update-readme) -->\nold table\n<!-- benchmark results: end -->\ntail\n")
    result = run_benchmark("--json", str(json_path), "--markdown", str(markdown_path),
                           "--update-readme", str(readme))
    assert result.returncode == 0, result.stdout + result.stderr
    updated = readme.read_text()
    assert updated.startswith("# title\n") and updated.endswith("<!-- benchmark results: end -->\ntail\n")
    assert "old table" not in updated and markdown_path.read_text() in updated

    data = json.loads(json_path.read_text())
    assert set(data["workloads"]) == ALL_WORKLOADS
    assert data["machine"]["threads"] == 1
    assert (data["machine"]["torch"] is not None) == HAS_TORCH
    markdown = markdown_path.read_text()
    assert "| workload | minidl | PyTorch | unit | ratio | target | met? |" in markdown
    for key, record in data["workloads"].items():
        assert not record.get("error"), record
        assert len(table_lines(result.stdout, key, record["name"])) == 1, result.stdout
        assert f"| {key} {record['name']}" in markdown
        assert record["minidl"] > 0
        if HAS_TORCH:
            assert record["pytorch"] > 0 and record["ratio"] > 0
            assert isinstance(record["met"], bool)
    for key in ("4", "5"):
        extra = data["workloads"][key]["extra"]
        assert extra["minidl"] > 0


def test_runs_without_pytorch(tmp_path):
    json_path = tmp_path / "bench.json"
    result = run_benchmark("--no-torch", "--workloads", "4,7", "--json", str(json_path))
    assert result.returncode == 0, result.stdout + result.stderr

    data = json.loads(json_path.read_text())
    assert set(data["workloads"]) == {"4", "7"}
    for key, record in data["workloads"].items():
        assert record["minidl"] > 0
        assert record["pytorch"] is None and record["ratio"] is None
        (row,) = table_lines(result.stdout, key, record["name"])
        cells = row.split()  # ... minidl, PyTorch, unit, ratio, target (two words), met?
        assert cells[-6] == "-" and cells[-4] == "-" and cells[-1] == "-", row
