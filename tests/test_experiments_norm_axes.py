"""norm-axes at a tiny size (vgg_cifar width 0.25, 20 steps of batch 16, 2 seeds, the six
settings): the files, every member of the normalization family trains in the same CNN, and the
lag of BatchNorm's running statistics this early."""
from minidl.experiments.norm_axes import NORMS, norm_axes

from experiment_helpers import by_setting, check_files  # noqa: F401


def test_norm_axes_tiny(tmp_path, experiment_root, one_kernel_thread):  # noqa: F811
    result = norm_axes(width=0.25, steps=20, eval_every=20, batch_size=16, train_samples=500,
                       test_samples=100, curve_samples=100, seeds=2, root=experiment_root,
                       out=str(tmp_path), progress=False, log=None)
    check_files(result, settings=len(NORMS), seeds=[0, 1])
    assert [row["setting"]["norm"] for row in result.summary] == list(NORMS)
    assert all(row["ok"] == 2 for row in result.summary)
    # Measured over 4 seeds at this size: BatchNorm's test loss in eval mode 3.5-22.8, the
    # plain network's 2.30-2.31. After 20 steps the running averages (momentum 0.1) still hold
    # 0.9^20 = 12% of their initial mean 0 / variance 1, so eval mode normalizes with the wrong
    # statistics. The default run (100 steps, 3 December 2026) reverses the order: 1.76 +- 0.05
    # vs 2.04 +- 0.07.
    bn, plain = by_setting(result, norm="batch"), by_setting(result, norm="none")
    assert bn["test_loss_mean"] > plain["test_loss_mean"] + 0.5
