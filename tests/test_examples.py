"""The examples run end to end (on a small slice of the real data) and print what they promise."""
import json
import os
import subprocess
import sys

import pytest

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
