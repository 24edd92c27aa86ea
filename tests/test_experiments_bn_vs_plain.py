"""bn-vs-plain at a tiny size (Fashion-MNIST, 20 steps of batch 32, 2 seeds): the files, and
BatchNorm's lower test loss from the same seed."""
from minidl.experiments.bn_vs_plain import bn_vs_plain

from experiment_helpers import check_files, runs  # noqa: F401


def test_bn_vs_plain_tiny(tmp_path, experiment_root, one_kernel_thread):  # noqa: F811
    result = bn_vs_plain(datasets=["fashion-mnist"], steps=20, eval_every=10, batch_size=32,
                         train_samples=1000, test_samples=200, curve_samples=100, seeds=2,
                         root=experiment_root, out=str(tmp_path), progress=False, log=None)
    check_files(result, settings=2, seeds=[0, 1])
    assert [run["curves"]["test"]["step"] for run in result.runs] == [[10, 20]] * 4
    # Measured over 4 seeds at this size: test loss with BN 1.43-1.67, without 1.97-2.05
    # (per seed BN lower by 0.32-0.62); the accuracies (0.32-0.59 vs 0.41-0.48) overlap.
    for bn, plain in zip(runs(result, norm="batch"), runs(result, norm="none")):
        assert bn["seed"] == plain["seed"]
        assert bn["final"]["test_loss"] < plain["final"]["test_loss"] - 0.15
