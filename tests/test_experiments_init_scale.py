"""init-scale at a tiny size (scales 0.01 and 1, 60 steps, 2 seeds): the files, and that
BatchNorm trains from weights 100x too small while the plain network stays at chance."""
import numpy as np

from minidl import models
from minidl.experiments import _common
from minidl.experiments.init_scale import init_scale

from experiment_helpers import check_files, runs  # noqa: F401


def test_init_scale_tiny(tmp_path, experiment_root, one_kernel_thread):  # noqa: F811
    result = init_scale(scales=[0.01, 1.0], steps=60, eval_every=30, train_samples=2000,
                        test_samples=300, curve_samples=200, seeds=2, root=experiment_root,
                        out=str(tmp_path), progress=False, log=None)
    check_files(result, settings=4, seeds=[0, 1])
    # Measured over 4 seeds: at 0.01x with BN 0.82-0.89, without 0.11-0.14 (chance: 0.1)
    for run in runs(result, scale=0.01, norm="batch"):
        assert run["final"]["test_accuracy"] > 0.6
    for run in runs(result, scale=0.01, norm="none"):
        assert run["final"]["test_accuracy"] < 0.25


def test_scale_weights_scales_weights_not_biases():
    model = models.mlp(4, (3,), rng=0)
    before = [p.data.copy() for p in model.parameters()]
    _common.scale_weights(model, 10.0)
    for (name, p), old in zip(model.named_parameters(), before):
        np.testing.assert_allclose(p.data, old * (10.0 if name.endswith("weight") else 1.0),
                                   rtol=1e-6)
