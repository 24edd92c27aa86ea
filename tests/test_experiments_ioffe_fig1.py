"""ioffe-fig1 at a tiny size (150 steps, 2 seeds): the files, and figure 1's point -- with
BatchNorm the input of a last-layer sigmoid keeps a stable spread, without it the distribution
drifts."""
from minidl.experiments.ioffe_fig1 import SigmoidInputRecorder, ioffe_fig1

from experiment_helpers import by_setting, check_files, runs  # noqa: F401

import numpy as np
import pytest


def test_ioffe_fig1_tiny(tmp_path, experiment_root, one_kernel_thread):  # noqa: F811
    result = ioffe_fig1(steps=150, eval_every=50, record_every=10, train_samples=3000,
                        test_samples=300, curve_samples=200, seeds=2, root=experiment_root,
                        out=str(tmp_path), progress=False, log=None)
    check_files(result, settings=2, seeds=[0, 1])
    for run in result.runs:
        rows = run["curves"]["sigmoid_input"]
        assert rows["step"][:3] == [0, 9, 19] and len(rows["step"]) == 16
        assert all(a <= b <= c for a, b, c in zip(rows["p15"], rows["p50"], rows["p85"]))
    # Measured at 300 steps over 4 seeds: with BN the 15-85 spread stayed in [1.69, 3.09]
    # (a unit normal's is 2.07), its median moved at most 0.30; without BN the spread stayed
    # below 0.03 (the small default weights) and the median drifted by 1.46-1.77.
    for run in runs(result, norm="batch"):
        assert 1.2 < run["final"]["spread_min"] and run["final"]["spread_max"] < 4.0
    bn, plain = by_setting(result, norm="batch"), by_setting(result, norm="none")
    assert bn["median_drift_mean"] < plain["median_drift_mean"]
    assert bn["test_accuracy_mean"] > plain["test_accuracy_mean"] + 0.3


def test_the_recorder_ignores_evaluation_passes():
    class Layer:
        training = True
    recorder = SigmoidInputRecorder(unit=1, every=2)
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    for training in (True, False, True, True):
        Layer.training = training
        recorder(Layer, (x,), None)
    assert recorder.rows["step"] == [0, 1]
    assert recorder.rows["p50"][0] == pytest.approx(np.percentile(x[:, 1], 50))
