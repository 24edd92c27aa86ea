"""The examples run end to end (on a small slice of the real data) and print what they promise."""
import json
import os
import re
import subprocess
import sys

import pytest

from mpi_helpers import run_mpi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mirror_env(real_mirror):
    """The environment for an example subprocess, with conftest's dataset mirror."""
    return dict(os.environ, MINIDL_DATA_MIRROR=real_mirror)


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
# ----------------------------------------------------------------------------- cifar_bn.py
CIFAR_EXAMPLE = os.path.join(REPO, "examples", "cifar_bn.py")
TINY = ["--train-samples", "256", "--test-samples", "120", "--curve-samples", "60", "--steps", "4",
        "--eval-every", "2", "--batch-size", "32", "--no-progress"]


def run_example(script, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_cifar_bn_example_prints_tables_and_writes_json_and_png(tmp_path,
                                                                 real_data_root):
    """Both networks on a tiny slice of real CIFAR-10; ResNet-20 at an absurd learning rate
    so that the plain network diverges: reported in the table and the JSON, not a crash."""
    out, plot = tmp_path / "cifar.json", tmp_path / "cifar.png"
    proc = run_example(CIFAR_EXAMPLE, *TINY, "--root", real_data_root, "--out", str(out),
                       "--plot", str(plot), "--resnet-lr", "1e6")
    assert proc.returncode == 0, proc.stderr
    stdout = proc.stdout
    assert "CIFAR-10: 256 training images" in stdout
    for text in ("VGG-style CNN (vgg_cifar), lr 0.02: test accuracy on 60 test images",
                 "ResNet-20 (resnet_cifar, option A), lr 1000000.0: test accuracy",
                 "step | test acc, BN | test acc, no BN", "steps to 40% test accuracy",
                 "final test accuracy (120 images)", "ms per training step",
                 "wall-clock seconds (incl. evals)", "diverged at step"):
        assert text in stdout, text
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    for table in stdout.split("\n\n"):  # every table's rows line up on its column separators
        rows = [line for line in table.splitlines() if " | " in line]
        assert len({tuple(i for i, ch in enumerate(line) if ch == "|") for line in rows}) <= 1

    result = json.loads(out.read_text())
    assert result["args"]["steps"] == 4 and result["args"]["networks"] == ["vgg", "resnet20"]
    assert set(result["networks"]) == {"vgg", "resnet20"}
    for name, network in result["networks"].items():
        bn, plain = network["runs"]
        assert (bn["norm"], plain["norm"]) == ("batch", None)
        assert bn["lr"] == plain["lr"] == network["lr"]
        assert bn["steps"] == [2, 4] and len(bn["train_loss_per_step"]) == 4
        assert bn["curve_samples"] == 60 and bn["test_samples"] == 120
        assert 0 <= bn["final_test_accuracy"] <= 1 and bn["ms_per_step"] > 0
    vgg_plain = result["networks"]["vgg"]["runs"][1]
    assert vgg_plain["diverged_at_step"] is None and len(vgg_plain["test_accuracy"]) == 2
    diverged = result["networks"]["resnet20"]["runs"][1]
    assert diverged["diverged_at_step"] in (1, 2, 3, 4) and diverged["final_test_accuracy"] is None
    assert len(diverged["train_loss_per_step"]) == diverged["diverged_at_step"] - 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size < 100_000


def test_cifar_bn_example_without_matplotlib_writes_the_data_and_says_how(
        tmp_path, real_data_root, monkeypatch, capsys):
    sys.path.insert(0, os.path.join(REPO, "examples"))
    try:
        import cifar_bn
    finally:
        sys.path.pop(0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    out, plot = tmp_path / "cifar.json", tmp_path / "cifar.png"
    assert cifar_bn.main([*TINY, "--networks", "vgg", "--root", real_data_root,
                          "--out", str(out), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert 'matplotlib is not installed: no plot' in printed
    assert 'pip install "minidl[plot]"' in printed
    assert not plot.exists() and list(json.loads(out.read_text())["networks"]) == ["vgg"]


@pytest.mark.parametrize("script", ["mnist_bn.py", "cifar_bn.py"])
def test_help_shows_every_option_with_a_help_line_and_its_default(script):
    proc = run_example(os.path.join(REPO, "examples", script), "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    options = re.findall(r"^  (--[a-z-]+)", proc.stdout, re.MULTILINE)
    assert len(options) >= 10
    entries = re.split(r"\n  (?=--)", proc.stdout.split("options:", 1)[1])[1:]
    assert len(entries) == len(options)
    for entry in entries:
        text = " ".join(entry.split())
        assert "(default: " in text, text
        words = text.split(" ", 2)
        assert len(words) == 3 and len(words[2]) > len("(default: x)"), text  # a help line too


@pytest.mark.parametrize("script, args, message", [
    ("mnist_bn.py", ["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    ("mnist_bn.py", ["--lr", "-1"], "argument --lr: expected a finite number > 0"),
    ("mnist_bn.py", ["--target", "1.5"], "argument --target: expected an accuracy in (0, 1]"),
    ("cifar_bn.py", ["--steps", "0"], "argument --steps: expected an integer >= 1"),
    ("cifar_bn.py", ["--resnet-lr", "inf"], "argument --resnet-lr: expected a finite number > 0"),
    ("cifar_bn.py", ["--momentum", "1"], "argument --momentum: expected a number in [0, 1)"),
    ("cifar_bn.py", ["--networks", "vgg,alexnet"], "argument --networks: choose from vgg, resnet20"),
    ("cifar_bn.py", ["--steps", "10", "--milestones", "5,20"], "beyond --steps 10"),
])
def test_invalid_options_are_rejected_up_front(script, args, message):
    proc = run_example(os.path.join(REPO, "examples", script), *args, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
