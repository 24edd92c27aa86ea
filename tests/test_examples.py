"""The examples run end to end (on a small slice of the real data) and print what they promise."""
import json
import os
import subprocess
import sys

import pytest

from mpi_helpers import run_mpi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mirror_env():
    path = os.environ.get("MINIDL_DATA_MIRROR") or os.path.join(REPO, "..", "shared", "data")
    if not os.path.isdir(path) and "://" not in path:
        pytest.skip("no MNIST mirror: set MINIDL_DATA_MIRROR")
    return dict(os.environ, MINIDL_DATA_MIRROR=path)


def test_mnist_bn_example_prints_comparison_table(tmp_path, mirror_env):
    out = tmp_path / "result.json"
    cmd = [sys.executable, os.path.join(REPO, "examples", "mnist_bn.py"), "--train-samples", "640",
           "--test-samples", "500",
           "--curve-samples", "300",
           "--eval-every", "5", "--root", str(tmp_path / "data"), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=mirror_env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for text in ("test acc, BN", "steps to 97% test accuracy", "final test accuracy", "wall-clock"):
        assert text in proc.stdout
    result = json.loads(out.read_text())
    bn, plain = result["runs"]
    assert bn["batch_norm"] and not plain["batch_norm"]
    assert bn["steps"] == [5, 10] and len(bn["train_loss_per_step"]) == 10
    assert 0.0 <= bn["final_test_accuracy"] <= 1.0
    # ten steps of SGD already lower the training loss of both networks
    for run in (bn, plain):
        losses = run["train_loss_per_step"]
        assert sum(losses[-3:]) / 3 < losses[0]


def _run_reference_example(stdin=None, pdb=False):
    script = os.path.join(REPO, "examples", "reference_backend.py")
    cmd = [sys.executable] + (["-m", "pdb"] if pdb else []) + [script]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_reference_backend_example_trains_alike_on_both_backends():
    """examples/reference_backend.py (also the README's example): the same losses on both
    backends, "compiled" restored after the block, weights equal to float32 rounding."""
    lines = _run_reference_example().splitlines()
    assert lines[0].startswith("reference backend: last loss ")
    assert lines[1] == "backend after the block: compiled"
    assert lines[2].split()[-1] == lines[0].split()[-1]  # the same loss to 6 decimals
    difference = float(lines[3].split()[3])
    assert lines[3].startswith("largest weight difference") and difference < 1e-5


def test_reference_backend_example_pdb_session_from_the_readme():
    """The README's pdb commands stop in the reference BatchNorm with the example's batch."""
    commands = ["until 14", "b minidl.reference.functional.normalization.batch_norm_forward",
                "c", "p x.shape, training", "q"]
    out = _run_reference_example("\n".join(commands) + "\n", pdb=True)
    assert "reference/functional/normalization.py" in out and "batch_norm_forward()" in out
    assert "((8, 4, 8, 8), True)" in out


def _distributed_bn(tmp_path, mirror_env, name, *args, processes=2):
    """Run examples/distributed_bn.py briefly (160 training, 200 test images); return its JSON."""
    out = tmp_path / f"{name}.json"
    argv = ["--train-samples", "160", "--test-samples", "200", "--root", str(tmp_path / "data"),
            "--out", str(out), "--no-progress", *args]
    script = os.path.join(REPO, "examples", "distributed_bn.py")
    if processes == 2:
        proc = run_mpi(*argv, script=script, env={"MINIDL_DATA_MIRROR": mirror_env["MINIDL_DATA_MIRROR"]},
                       timeout=300)
    else:
        env = dict(mirror_env, MINIDL_NUM_THREADS="1",
                   PYTHONPATH=REPO + os.pathsep + mirror_env.get("PYTHONPATH", ""))
        proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=env,
                              timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out.read_text())


def test_distributed_bn_example_on_two_processes_and_on_one(tmp_path, mirror_env):
    """examples/distributed_bn.py under mpiexec -n 2 (batch 4 per process) prints the comparison;
    its SyncBatchNorm run is the one-process run with batch 8 (float32: to rounding), and in one
    process the two runs are the same."""
    stdout, two = _distributed_bn(tmp_path, mirror_env, "two", "--batch-size", "4")
    assert "SyncBatchNorm - BatchNorm test accuracy:" in stdout and "over 8)" in stdout
    assert stdout.count("MNIST: 160 training") == 1  # rank 0 alone prints
    assert two["processes"] == 2 and [r["norm"] for r in two["runs"]] == ["BatchNorm", "SyncBatchNorm"]
    assert all(r["steps"] == 20 and 0 <= r["test_accuracy"] <= 1 for r in two["runs"])
    batchnorm, sync = two["runs"]
    assert abs(batchnorm["test_loss"] - sync["test_loss"]) > 1e-3  # per-process statistics differ

    _, one = _distributed_bn(tmp_path, mirror_env, "one", "--batch-size", "8", processes=1)
    assert one["processes"] == 1
    plain, synced = one["runs"]
    for key in ("test_accuracy", "test_loss", "train_loss_last_epoch"):
        assert plain[key] == synced[key], key  # one process: SyncBatchNorm is BatchNorm
    assert abs(synced["test_loss"] - sync["test_loss"]) < 1e-3
    assert abs(synced["train_loss_last_epoch"] - sync["train_loss_last_epoch"]) < 1e-3


def test_distributed_bn_example_help_shows_every_default_and_rejects_bad_values():
    """--help gives each option a help line with its default; bad values exit with usage (2)."""
    script = os.path.join(REPO, "examples", "distributed_bn.py")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    options = ["--batch-size", "--epochs", "--train-samples", "--test-samples", "--lr", "--momentum",
               "--seed", "--norm", "--root", "--out", "--no-progress"]
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for option in options:
        assert f" {option}" in text, option
    assert text.count("(default:") == len(options)
    assert "(default: 4)" in text and "(default: 12000)" in text
    proc = subprocess.run([sys.executable, script, "--batch-size", "0"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2 and "--batch-size must be >= 1, got 0" in proc.stderr
