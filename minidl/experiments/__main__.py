"""``python -m minidl.experiments NAME [--options]``: run one experiment (``--help`` lists them).
"""
import argparse
import sys

from . import EXPERIMENTS
from .runner import _Parser, add_experiment_arguments, check_dask, resolve_config, \
    run_experiment


def build_parser(only_given=False):
    """The command line: one subcommand per experiment (with ``only_given``: no defaults)."""
    parser = _Parser(
        prog="python -m minidl.experiments",
        description="Convergence experiments with BatchNorm and its family: each runs several "
                    "seeds, prints a markdown table (mean ± std) and writes CSV, JSON and a "
                    "PNG under runs/NAME/<timestamp>/.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="experiment", metavar="NAME", required=True,
                                     parser_class=_Parser)
    for experiment in EXPERIMENTS.values():
        sub = commands.add_parser(experiment.name, help=experiment.summary,
                                  description=experiment.description,
                                  formatter_class=_Formatter)
        add_experiment_arguments(sub, experiment, only_given)
    return parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, the description as written."""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    experiment = EXPERIMENTS[args.experiment]
    given = set(vars(build_parser(only_given=True).parse_args(argv))) - {"experiment"}
    config = resolve_config(experiment, args, given)
    config.pop("experiment")
    try:
        check_dask(config, f"python -m minidl.experiments {experiment.name}")
    except ImportError as error:
        parser.error(str(error))
    run_experiment(experiment, config, command=[sys.executable, "-m", "minidl.experiments"]
                   + argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
