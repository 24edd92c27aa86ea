"""batch-size at a tiny size (one epoch of 128 images, batches 32 and 2, BatchNorm and
GroupNorm, 2 seeds): the files, the linear learning-rate scaling and steps per epoch, and
GroupNorm ahead of BatchNorm at batch 2 (Wu & He 2018, figure 1)."""
from minidl.experiments.batch_size import batch_size

from experiment_helpers import by_setting, check_files, runs  # noqa: F401


def test_batch_size_tiny(tmp_path, experiment_root, one_kernel_thread):  # noqa: F811
    result = batch_size(norms=["batch", "group"], batch_sizes=[32, 2], epochs=1,
                        train_samples=128, test_samples=200, curve_samples=100, seeds=2,
                        root=experiment_root, out=str(tmp_path), progress=False, log=None)
    check_files(result, settings=4, seeds=[0, 1])
    for run in runs(result, batch_size=2):
        assert run["steps_done"] == 64  # one epoch of 128 images
    for run in runs(result, batch_size=32):
        assert run["steps_done"] == 4
    # Measured over 4 seeds at this size: at batch 2 GroupNorm's test loss 1.56-1.67 (accuracy
    # 0.49-0.56), BatchNorm's 1.90-1.98 (0.30-0.36), evaluated with its running statistics.
    group, batch = by_setting(result, norm="group", batch_size=2), \
        by_setting(result, norm="batch", batch_size=2)
    assert group["test_loss_mean"] < batch["test_loss_mean"] - 0.15
