"""The experiment runner: seeds, sweeps (in process or on Dask), run records and result files.

An experiment (one module per experiment in this package) declares an :class:`Experiment`:
its options, the runs of a sweep (settings x seeds), a function that performs one run and
returns its record, the metrics of its summary table and a plot. :func:`run_experiment` does the
rest, the same way for every experiment:

1. the configuration: the experiment's defaults, ``--full``'s values (the paper's scale) and
   what the caller gave, checked up front;
2. the runs, one per (setting, seed), in this process (default) or as tasks of a Dask cluster
   (``workers > 1`` starts a ``LocalCluster`` of single-threaded worker processes;
   ``scheduler="tcp://host:port"`` uses an existing cluster); a tqdm bar counts finished runs,
   shown only on a terminal, as the Trainer's bars;
3. the records: a run whose loss became NaN/Inf, or whose final metrics are not finite, is
   ``"diverged"``; a run that raised (or, on Dask, whose worker died twice) is ``"failed"``,
   with the error; neither stops the sweep;
4. the files, written by this process atomically under ``<out>/<name>/<timestamp>/``:
   ``config.json`` (the exact configuration, the command, the versions of minidl, NumPy and
   Python), ``results.json`` (everything), ``runs.csv`` (one row per run: setting, seed,
   status, final metrics), ``curves.csv`` (the curves, one row per run and recorded step),
   ``summary.csv`` and ``summary.md`` (mean and std across seeds per setting) and
   ``figure.png`` (with matplotlib, the optional ``plot`` extra).

A run is a top-level function ``run(spec, config) -> record`` so that Dask can send it to a
worker; it reads its dataset there, from the worker's own data root and mirror
(``config["root"]``, ``$MINIDL_DATA_MIRROR``), never through the scheduler. A record is a dict:

* ``curves``: ``{curve name: {"step": [...], series: [...], ...}}``, equal-length lists;
* ``final``: ``{metric: number or None}``;
* ``diverged_at_step``: None, or the optimizer step whose loss was not finite;
* anything else the experiment wants to keep (in ``results.json`` only).
"""
import argparse
import csv
import dataclasses
import datetime
import io
import math
import os
import platform
import sys
import time
import traceback

import numpy as np

from .. import _config
from ..serialization import atomic_write
from .comparison import PLOT_HINT, format_table, positive_int, write_json

__all__ = ["Experiment", "ExperimentResult", "Option", "run_experiment", "execute",
           "experiment_function",
           "summarize", "markdown_table", "DISTRIBUTED_HINT", "STATUSES"]

DISTRIBUTED_HINT = 'pip install "minidl[distributed]"'
"""How to get Dask for ``--workers``/``--scheduler``: the optional ``distributed`` extra."""

STATUSES = ("ok", "diverged", "failed")
"""A run's status: finished with finite results, diverged (NaN/Inf), or failed (an error)."""


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of an experiment: ``--name`` on the command line, ``name`` as a keyword.

    Attributes:
        name (str): the keyword (``"train_samples"``; the flag is ``--train-samples``).
        type (callable): parses and checks a command-line string (an argparse type); a keyword
            value is passed through it as a string (lists joined by commas), so both are checked
            alike.
        default: the default value.
        help (str): one line for ``--help``.
        full: the value under ``--full`` (None: as the default).
    """
    name: str
    type: object
    default: object
    help: str
    full: object = None


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What an experiment module declares; see the module docstring for the record format.

    Attributes:
        name (str): the subcommand (``"bn-vs-plain"``).
        summary (str): its line in ``python -m minidl.experiments --help``.
        description (str): the subcommand's ``--help`` text.
        options (tuple of Option): its own options (the runner adds the common ones).
        plan (callable): ``config -> [setting dict, ...]``; each setting runs once per seed.
        run (callable): ``run(spec, config) -> record``, a module-level function, where
            ``spec = {"setting": setting, "seed": seed}``.
        metrics (tuple): ``(key, label)`` of the ``final`` metrics in the summary table.
        plot (callable): ``plot(path, result) -> bool`` draws ``result`` (an
            :class:`ExperimentResult` without files yet) into a PNG; False if matplotlib is
            missing.
        full_note (str): what ``--full`` means, for ``--help``.
    """
    name: str
    summary: str
    description: str
    options: tuple
    plan: object
    run: object
    metrics: tuple
    plot: object
    full_note: str = ""


@dataclasses.dataclass
class ExperimentResult:
    """What :func:`run_experiment` returns.

    Attributes:
        name (str): the experiment.
        config (dict): the configuration the runs used (options, seeds, ``full``).
        runs (list of dict): one record per (setting, seed), in plan order, each with
            ``setting``, ``seed``, ``status`` (``"ok"``, ``"diverged"`` or ``"failed"``),
            ``error`` (None or the message), ``seconds``, ``curves``, ``final`` and
            ``diverged_at_step`` (see the module docstring).
        summary (list of dict): one per setting: ``setting``, ``ok``/``diverged``/``failed``
            (counts) and ``<metric>_mean``/``<metric>_std`` over the seeds whose run is ok
            (std with ``ddof=1``; None with fewer than two values).
        table (str): the summary as a markdown table (also in ``summary.md``).
        folder (str or None): where the files were written (None: ``out`` was None).
        figure (str or None): the PNG, if drawn.
        seconds (float): wall-clock time of the sweep.
    """
    name: str
    config: dict
    runs: list
    summary: list
    table: str
    folder: object = None
    figure: object = None
    seconds: float = 0.0

    def to_dict(self):
        """The result as a JSON-ready dict (what ``results.json`` holds)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- options
def seed_list(text):
    """argparse type: a number of seeds (``3`` = seeds 0, 1, 2) or a list (``0,5,7``)."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seeds (e.g. 3) or a list of seeds (e.g. 0,5,7), got "
            f"{text!r}") from None
    if len(values) == 1 and "," not in str(text):
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"expected at least 1 seed, got {text!r}")
        return list(range(values[0]))
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0, got {text!r}")
    return values


def scheduler_address(text):
    """argparse type: a Dask scheduler address ``tcp://HOST:PORT``."""
    host, _, port = str(text).removeprefix("tcp://").rpartition(":")
    if not str(text).startswith("tcp://") or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected tcp://HOST:PORT, got {text!r}")
    return str(text)


COMMON = (
    Option("seeds", seed_list, [0, 1], "number of seeds (N: 0..N-1) or a comma-separated list; "
           "every setting runs once per seed, the table shows mean ± std"),
    Option("workers", positive_int, 1, "run the sweep on a local Dask cluster of N "
           "single-threaded worker processes (1: in this process, no Dask needed)"),
    Option("scheduler", scheduler_address, None, "submit the runs to an existing Dask cluster "
           "at tcp://HOST:PORT (its workers read the datasets from their own data root)"),
    Option("root", str, "data", "dataset folder (missing files are fetched from "
           "$MINIDL_DATA_MIRROR or the public mirrors)"),
    Option("out", str, "runs", "results go to OUT/NAME/<timestamp>/ (CSV, JSON, summary.md, "
           "figure.png)"),
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ValueError instead of exiting when used from Python."""

    raise_errors = False

    def error(self, message):
        if self.raise_errors:
            raise ValueError(f"{self.prog}: {message}")
        super().error(message)


def _flag(name):
    return "--" + name.replace("_", "-")


def _help(option):
    if option.full is None:
        return option.help
    full = ",".join(map(str, option.full)) if isinstance(option.full, list) else option.full
    return f"{option.help} (--full: {full})"


def add_experiment_arguments(parser, experiment, only_given=False):
    """Add an experiment's options and the common ones to ``parser`` (with ``only_given``:
    no defaults, to learn which options were given)."""
    def default(value):
        return argparse.SUPPRESS if only_given else value
    for option in experiment.options + COMMON:
        shown = option.default
        if isinstance(shown, list):
            shown = ",".join(map(str, shown))
        parser.add_argument(_flag(option.name), dest=option.name, type=option.type,
                            default=default(option.default), help=_help(option),
                            metavar=option.name.upper())
    parser.add_argument("--full", action="store_true", default=default(False),
                        help="the paper's scale: " + (experiment.full_note or "see the options"))
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        default=default(None), help="hide the progress bar (default: shown on "
                        "a terminal only)")
    parser.add_argument("--no-plot", dest="plot", action="store_false", default=default(True),
                        help="do not draw figure.png")
    return parser


def resolve_config(experiment, args, given):
    """The configuration: defaults, then ``--full``'s values, then what was given."""
    config = dict(vars(args))
    if config.get("full"):
        for option in experiment.options:
            if option.full is not None and option.name not in given:
                config[option.name] = option.full
    return config


def config_from_options(experiment, options):
    """Check keyword options the way the command line checks them; return the config.

    Raises:
        TypeError: an unknown option name.
        ValueError: a value the option's type rejects.
    """
    known = {o.name for o in experiment.options + COMMON} | {"full", "progress", "plot"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{experiment.name}: unknown option(s) {unknown}; known: {sorted(known)}")
    argv = []
    for name, value in options.items():
        if name in ("full", "plot", "progress"):
            continue
        if value is None:
            continue
        # a list is always written with a comma: seeds=[3] is seed 3, seeds=3 is 3 seeds
        text = (",".join(map(str, value)) + ","
                if isinstance(value, (list, tuple)) else str(value))
        argv += [_flag(name), text]
    parser = add_experiment_arguments(_Parser(prog=experiment.name), experiment)
    parser.raise_errors = True
    args = parser.parse_args(argv)
    args.full = bool(options.get("full", False))
    args.plot = bool(options.get("plot", True))
    args.progress = options.get("progress")
    config = resolve_config(experiment, args, set(options))
    if "scheduler" in options and options["scheduler"] is None:
        config["scheduler"] = None
    return config


def check_dask(config, owner):
    """Raise ImportError with the install hint if the config needs Dask and it is missing."""
    if config.get("workers", 1) > 1 or config.get("scheduler"):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ImportError(f"{owner}: --workers > 1 and --scheduler need Dask distributed, "
                              f"which is not installed: {DISTRIBUTED_HINT}") from None


# ----------------------------------------------------------------------------- running
def _run_task(run, spec, config):
    """One run on a Dask worker: single-threaded kernels, the record plus its time."""
    _config.set_num_threads(1)
    return _timed(run, spec, config)


def _timed(run, spec, config):
    start, cpu = time.perf_counter(), time.process_time()
    record = run(spec, config)
    record["seconds"] = time.perf_counter() - start
    record["cpu_seconds"] = time.process_time() - cpu  # all threads of this process
    return record


def _failed(spec, error):
    return {"setting": spec["setting"], "seed": spec["seed"], "status": "failed",
            "error": error, "curves": {}, "final": {}, "diverged_at_step": None,
            "seconds": None, "cpu_seconds": None}


def _finished(spec, record):
    """Complete a run's record: diverged if its loss went NaN/Inf or a final metric is not
    finite (None means "not reached/measured" and is allowed)."""
    record = dict(record)
    record.setdefault("curves", {})
    record.setdefault("final", {})
    record.setdefault("diverged_at_step", None)
    numbers = [v for v in record["final"].values()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    diverged = (record["diverged_at_step"] is not None
                or not all(math.isfinite(v) for v in numbers))
    record.update(setting=spec["setting"], seed=spec["seed"],
                  status="diverged" if diverged else "ok", error=None)
    return record


def execute(run, specs, config, *, workers=1, scheduler=None, client=None, progress=None,
            label="runs"):
    """Run ``run(spec, config)`` for every spec; return the records in the order of ``specs``.

    In this process when ``workers == 1`` and neither ``scheduler`` nor ``client`` is given;
    else as Dask tasks (``retries=1``: a run that raises is tried once more; a run whose worker
    dies is rescheduled once by the scheduler -- ``distributed.scheduler.allowed-failures`` is
    set to 1 for the LocalCluster started here -- and a second failure marks it failed).
    Results come back to this process; nothing else is shipped but ``spec`` and ``config``.

    Args:
        run: a module-level function (Dask pickles it by reference).
        specs (list of dict): ``{"setting": ..., "seed": ...}``.
        config (dict): passed to every run.
        workers (int): >= 1; above 1 a LocalCluster of that many single-threaded processes.
        scheduler (str, optional): ``tcp://host:port`` of an existing cluster.
        client (distributed.Client, optional): use this client (tests).
        progress (bool or None): the tqdm bar (None: only on a terminal).
    Returns:
        list of dict: the records, each with ``setting``, ``seed``, ``status``, ``error``.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(specs), desc=label, unit="run", disable=None if progress is None
               else not progress, dynamic_ncols=True)
    try:
        if workers == 1 and scheduler is None and client is None:
            records = []
            for spec in specs:
                bar.set_postfix_str(_describe(spec), refresh=False)
                try:
                    records.append(_finished(spec, _timed(run, spec, config)))
                except Exception:  # recorded, not raised: the rest of the sweep still runs
                    records.append(_failed(spec, traceback.format_exc(limit=4)))
                bar.update()
            return records
        return _execute_dask(run, specs, config, workers, scheduler, client, bar)
    finally:
        bar.close()


def _describe(spec):
    return " ".join(f"{k}={v}" for k, v in spec["setting"].items()) + f" seed={spec['seed']}"


def _execute_dask(run, specs, config, workers, scheduler, client, bar):
    import dask
    from distributed import Client, LocalCluster, as_completed

    own_cluster = own_client = None
    try:
        if client is None:
            if scheduler is None:
                # a task is retried once after its worker died; each worker holds only the
                # task it runs (saturation 1.0), so a death never counts against queued tasks
                with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                                      "distributed.scheduler.worker-saturation": 1.0}):
                    own_cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                               processes=True, dashboard_address=None)
                own_client = client = Client(own_cluster)
            else:
                own_client = client = Client(scheduler)
        futures = {}
        for index, spec in enumerate(specs):
            future = client.submit(_run_task, run, spec, config, retries=1, pure=False,
                                   key=f"minidl-run-{index}-{os.getpid()}-{time.time_ns()}")
            futures[future] = index
        records = [None] * len(specs)
        # results are gathered as each task ends (a result left on a worker that dies later
        # would have to be recomputed)
        for future, value in as_completed(list(futures), with_results=True,
                                          raise_errors=False):
            index = futures[future]
            if future.status == "finished":
                records[index] = _finished(specs[index], value)
            else:
                error = value[1] if isinstance(value, tuple) else value  # (type, exc, tb)
                records[index] = _failed(specs[index], f"{type(error).__name__}: {error}")
            bar.update()
        return records
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


# ----------------------------------------------------------------------------- summary
def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def summarize(runs, metrics):
    """Group the runs by setting (in order of first appearance); mean and std per metric over
    the runs that are ok. See :class:`ExperimentResult` for the fields."""
    groups = {}
    for run in runs:
        key = tuple(sorted(run["setting"].items(), key=lambda kv: kv[0]))
        groups.setdefault(key, (run["setting"], []))[1].append(run)
    summary = []
    for setting, group in groups.values():
        row = {"setting": dict(setting)}
        for status in STATUSES:
            row[status] = sum(run["status"] == status for run in group)
        for key, _ in metrics:
            mean, std = _mean_std([run["final"].get(key) for run in group
                                   if run["status"] == "ok"])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        summary.append(row)
    return summary


def _number(value):
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def markdown_table(summary, metrics):
    """The summary as a markdown table: the setting's columns, ``mean ± std`` per metric, and
    the runs that were ok / diverged / failed."""
    if not summary:
        return "(no runs)"
    keys = []
    for row in summary:
        keys += [k for k in row["setting"] if k not in keys]
    header = keys + [label for _, label in metrics] + ["runs ok/diverged/failed"]
    rows = []
    for row in summary:
        cells = [str(row["setting"].get(k, "")) for k in keys]
        for key, _ in metrics:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            cells.append(_number(mean) + ("" if std is None else f" ± {_number(std)}"))
        cells.append(f"{row['ok']}/{row['diverged']}/{row['failed']}")
        rows.append(cells)
    text = format_table(header, rows).splitlines()
    # format_table's rule "---+---" as a markdown header rule "|---|---|"
    lines = [f"| {line} |" for line in [text[0]] + text[2:]]
    rule = "|" + "|".join("-" * (len(cell) + 2) for cell in text[1].split("-+-")) + "|"
    return "\n".join([lines[0], rule] + lines[1:])


# ----------------------------------------------------------------------------- files
def versions():
    """The versions a result depends on: minidl, NumPy, Python, platform, kernel threads."""
    from .. import __version__
    return {"minidl": __version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "kernel_threads": _config.get_num_threads()}


def _write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_write(path, "w") as f:
        f.write(buffer.getvalue())


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value


def _setting_keys(runs):
    keys = []
    for run in runs:
        keys += [k for k in run["setting"] if k not in keys]
    return keys


def write_files(folder, result, metrics, command):
    """Write the result files into ``folder`` (see the module docstring)."""
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"),
               {"experiment": result.name, "config": result.config, "command": command,
                "versions": versions()})
    write_json(os.path.join(folder, "results.json"), result.to_dict())
    keys = _setting_keys(result.runs)
    finals = []
    for run in result.runs:
        finals += [k for k in run["final"] if k not in finals]
    _write_csv(os.path.join(folder, "runs.csv"),
               keys + ["seed", "status", "diverged_at_step", "seconds", "cpu_seconds"] + finals
               + ["error"],
               [[_cell(run["setting"].get(k)) for k in keys]
                + [run["seed"], run["status"], _cell(run["diverged_at_step"]),
                   _cell(run["seconds"]), _cell(run.get("cpu_seconds"))]
                + [_cell(run["final"].get(k)) for k in finals]
                + [(run["error"] or "").strip().splitlines()[-1:][0] if run["error"] else ""]
                for run in result.runs])
    series = []
    for run in result.runs:
        for curve in run["curves"].values():
            series += [k for k in curve if k != "step" and k not in series]
    rows = []
    for run in result.runs:
        for name, curve in run["curves"].items():
            for i, step in enumerate(curve.get("step", [])):
                rows.append([_cell(run["setting"].get(k)) for k in keys]
                            + [run["seed"], name, step]
                            + [_cell(curve[k][i]) if k in curve else "" for k in series])
    _write_csv(os.path.join(folder, "curves.csv"), keys + ["seed", "curve", "step"] + series,
               rows)
    stats = [f"{key}_{what}" for key, _ in metrics for what in ("mean", "std")]
    _write_csv(os.path.join(folder, "summary.csv"), keys + list(STATUSES) + stats,
               [[_cell(row["setting"].get(k)) for k in keys] + [row[s] for s in STATUSES]
                + [_cell(row[s]) for s in stats] for row in result.summary])
    with atomic_write(os.path.join(folder, "summary.md"), "w") as f:
        f.write(f"# {result.name}\n\n{result.table}\n")


def _new_folder(out, name):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(out, name, stamp)
    suffix = 1
    while os.path.exists(folder):
        suffix += 1
        folder = os.path.join(out, name, f"{stamp}-{suffix}")
    os.makedirs(folder)
    return folder


def run_experiment(experiment, config, *, client=None, command=None, log=print):
    """Run every (setting, seed) of ``experiment`` under ``config``; write and return the
    results.

    Args:
        experiment (Experiment): what to run.
        config (dict): a checked configuration (:func:`config_from_options` or the CLI).
        client (distributed.Client, optional): run the sweep on this Dask client.
        command (list of str, optional): the command line, recorded in ``config.json``.
        log (callable): where messages go (default print; None: silent).
    Returns:
        ExperimentResult: with ``folder`` None when ``config["out"]`` is None or empty.
    Raises:
        ImportError: Dask is needed (``workers > 1`` or a scheduler) but not installed.
    """
    log = log or (lambda *a, **k: None)
    check_dask(config, experiment.name)
    specs = [{"setting": setting, "seed": seed} for setting in experiment.plan(config)
             for seed in config["seeds"]]
    where = (f"on the Dask cluster at {config['scheduler']}" if config.get("scheduler") else
             f"on a local Dask cluster of {config['workers']} worker processes"
             if config.get("workers", 1) > 1 or client is not None else "in this process")
    log(f"{experiment.name}: {len(specs)} runs ({len(specs) // len(config['seeds'])} settings "
        f"x {len(config['seeds'])} seeds) {where}", flush=True)
    start = time.perf_counter()
    runs = execute(experiment.run, specs, config, workers=config.get("workers", 1),
                   scheduler=config.get("scheduler"), client=client,
                   progress=config.get("progress"), label=experiment.name)
    seconds = time.perf_counter() - start
    summary = summarize(runs, experiment.metrics)
    result = ExperimentResult(experiment.name, dict(config), runs, summary,
                              markdown_table(summary, experiment.metrics), seconds=seconds)
    failed = [run for run in runs if run["status"] == "failed"]
    for run in failed:
        log(f"run {_describe(run)} failed: {run['error'].strip().splitlines()[-1]}")
    if config.get("out"):
        result.folder = _new_folder(config["out"], experiment.name)
        if config.get("plot", True):
            path = os.path.join(result.folder, "figure.png")
            if experiment.plot(path, result):
                result.figure = path
            else:
                log(f"matplotlib is not installed: no figure (the data is in "
                    f"{result.folder}); for the figure: {PLOT_HINT}")
        write_files(result.folder, result, experiment.metrics,
                    command or [sys.executable, "-m", "minidl.experiments", experiment.name])
    cpu = sum(run.get("cpu_seconds") or 0 for run in runs)
    log(f"\n{result.table}\n\n{len(runs)} runs in {seconds:.0f} s ({cpu:.0f} s of CPU in "
        f"the runs)"
        + (f"; results in {result.folder}" if result.folder else "")
        + (f", figure {result.figure}" if result.figure else ""))
    return result


def experiment_function(name, function_name):
    """The importable function of experiment ``name`` (defined in its module)."""
    def experiment(client=None, log=print, **options):
        from . import run
        return run(name, client=client, log=log, **options)
    experiment.__name__ = experiment.__qualname__ = function_name
    experiment.__doc__ = (
        f"Run the ``{name}`` experiment; return its :class:`ExperimentResult`.\n\n"
        f"Keyword options are the command-line options with underscores (see ``python -m "
        f"minidl.experiments {name} --help``), checked the same way; ``out=None`` writes no "
        f"files, ``client`` runs the sweep on a Dask client, ``log`` receives the messages "
        f"(None: silent).\n\n"
        f"Returns:\n    ExperimentResult\n"
        f"Raises:\n    TypeError: an unknown option. ValueError: a bad value. ImportError: "
        f"``workers``/``scheduler`` without Dask.\n")
    return experiment
