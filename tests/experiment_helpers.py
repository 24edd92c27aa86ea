"""Shared fixture and checks for the tests of minidl.experiments (test_experiments_*.py).

The ``experiment_root`` fixture (a data root holding the real MNIST, Fashion-MNIST and CIFAR-10
files, copied once per session through the mirror) is in conftest.py, so that it is built once
for all these modules. ``check_files`` verifies what every experiment writes.
"""
import csv
import json
import os

FILES = ("config.json", "results.json", "runs.csv", "curves.csv", "summary.csv", "summary.md",
         "figure.png")


def check_files(result, settings, seeds):
    """The files of ``result`` exist and agree with it: one runs.csv row per (setting, seed),
    the configuration and versions in config.json, the table in summary.md, a PNG."""
    folder = result.folder
    assert folder and os.path.basename(os.path.dirname(folder)) == result.name
    for name in FILES:
        assert os.path.getsize(os.path.join(folder, name)) > 0, name
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["experiment"] == result.name
    assert set(config["versions"]) >= {"minidl", "numpy", "python"}
    assert config["config"]["seeds"] == list(seeds)
    with open(os.path.join(folder, "runs.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == settings * len(seeds) == len(result.runs)
    assert {row["status"] for row in rows} <= {"ok", "diverged", "failed"}
    with open(os.path.join(folder, "summary.csv")) as f:
        assert len(list(csv.DictReader(f))) == settings == len(result.summary)
    with open(os.path.join(folder, "curves.csv")) as f:
        assert len(list(csv.DictReader(f))) > 0
    table = open(os.path.join(folder, "summary.md")).read()
    assert result.table in table and table.count("\n|") == settings + 2  # header, rule, rows
    assert open(os.path.join(folder, "figure.png"), "rb").read(4) == b"\x89PNG"
    results = json.load(open(os.path.join(folder, "results.json")))
    assert len(results["runs"]) == len(result.runs)


def by_setting(result, **setting):
    """The summary row whose setting matches ``setting``."""
    rows = [row for row in result.summary
            if all(row["setting"][k] == v for k, v in setting.items())]
    assert len(rows) == 1, (setting, [row["setting"] for row in result.summary])
    return rows[0]


def runs(result, **setting):
    """The run records whose setting matches ``setting``."""
    return [run for run in result.runs
            if all(run["setting"][k] == v for k, v in setting.items())]
