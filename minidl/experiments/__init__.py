"""Convergence experiments: one command (or function) per question about normalization.

``python -m minidl.experiments --help`` lists them; ``python -m minidl.experiments NAME --help``
shows one experiment's options. Each is also a function returning an
:class:`~minidl.experiments.runner.ExperimentResult`, in its own module and through
:func:`run` (keyword arguments are the command-line options with underscores, checked the same
way)::

    from minidl.experiments.ioffe_fig1 import ioffe_fig1
    result = ioffe_fig1(steps=500, seeds=2, out=None)   # out=None: no files
    print(result.table)
    result = minidl.experiments.run("ioffe-fig1", steps=500)   # the same by name

The runner (seeds, Dask sweeps, result files) is :mod:`minidl.experiments.runner`; the
BatchNorm examples' helpers are in :mod:`minidl.experiments.comparison`. The networks come from
:mod:`minidl.models`.
"""
from . import comparison, runner
from . import batch_size, bn_vs_plain, init_scale, ioffe_fig1, landscape, lr_sweep, norm_axes
from .runner import ExperimentResult

EXPERIMENTS = {module.EXPERIMENT.name: module.EXPERIMENT for module in (
    bn_vs_plain, ioffe_fig1, lr_sweep, batch_size, landscape, init_scale, norm_axes)}
"""Name -> :class:`~minidl.experiments.runner.Experiment`, in ``--help`` order."""


def run(name, client=None, log=print, **options):
    """Run the experiment ``name`` with keyword ``options`` (as on the command line, with
    underscores: ``train_samples=1000``, ``seeds=[0, 1]`` or ``seeds=3``, ``full=True``,
    ``out=None`` for no files, ``workers=2``, ``scheduler="tcp://host:8786"``).

    Returns:
        ExperimentResult: the runs, the summary (mean ± std per setting), the markdown table,
        the folder and figure written.
    Raises:
        KeyError: an unknown experiment. TypeError: an unknown option. ValueError: a bad value.
        ImportError: ``workers``/``scheduler`` without Dask installed.
    """
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[name]
    config = runner.config_from_options(experiment, options)
    return runner.run_experiment(experiment, config, client=client, log=log)


__all__ = ["EXPERIMENTS", "run", "ExperimentResult", "comparison", "runner"]
