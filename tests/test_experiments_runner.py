"""minidl.experiments.runner and the command line: configuration checks, run records
(diverged, failed), result files, the summary table, Dask sweeps (same numbers as in process,
a killed worker survived), and the messages when matplotlib or Dask are missing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl.experiments
from minidl.experiments import EXPERIMENTS, runner
from minidl.experiments.__main__ import main

from experiment_helpers import check_files  # noqa: F401 (fixture)



def need_dask():
    """Dask distributed (the ``distributed`` extra; CI installs it, so this never skips there),
    with this module's toy run sent to the workers by value."""
    pytest.importorskip("distributed")
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def toy_run(spec, config):
    """A run whose setting says how it ends: a curve and a number, NaN, an error, or a dead
    worker (once, or every time)."""
    mode, seed = spec["setting"]["mode"], spec["seed"]
    marker = os.path.join(config["out"] or config["root"], f"{mode}-{seed}.marker")
    if mode == "raise":
        raise RuntimeError("this run fails")
    if mode in ("die-once", "die-always"):
        if mode == "die-always" or not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-run
    value = float(np.random.default_rng(seed).random()) + spec["setting"].get("x", 0)
    return {"curves": {"test": {"step": [1, 2], "value": [value / 2, value]}},
            "final": {"value": float("nan") if mode == "nan" else value},
            "diverged_at_step": None}


def toy_plot(path, result):
    return False  # as without matplotlib


TOY = runner.Experiment(name="toy", summary="a toy", description="a toy", options=(),
                        plan=lambda config: config["settings"], run=toy_run,
                        metrics=(("value", "value"),), plot=toy_plot)


def toy_config(tmp_path, settings, seeds=(0, 1), **extra):
    return {"seeds": list(seeds), "workers": 1, "scheduler": None, "root": str(tmp_path),
            "out": str(tmp_path / "runs"), "progress": False, "plot": True,
            "settings": settings, **extra}


def test_records_ok_diverged_failed_and_the_summary(tmp_path):
    messages = []
    config = toy_config(tmp_path, [{"mode": "ok", "x": 0}, {"mode": "ok", "x": 10},
                                   {"mode": "nan"}, {"mode": "raise"}], seeds=(3, 4))
    result = runner.run_experiment(TOY, config, log=lambda *a, **k: messages.append(a[0]))
    assert [run["status"] for run in result.runs] == ["ok"] * 4 + ["diverged"] * 2 + \
        ["failed"] * 2
    assert "RuntimeError: this run fails" in result.runs[-1]["error"]
    values = [np.random.default_rng(s).random() + 10 for s in (3, 4)]
    row = result.summary[1]
    assert row["value_mean"] == pytest.approx(np.mean(values))
    assert row["value_std"] == pytest.approx(np.std(values, ddof=1))
    assert (row["ok"], row["diverged"], row["failed"]) == (2, 0, 0)
    assert (result.summary[2]["diverged"], result.summary[3]["failed"]) == (2, 2)
    assert result.summary[2]["value_mean"] is None  # diverged runs are not averaged
    assert f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.4f}" in result.table
    lines = result.table.splitlines()
    assert lines[0].startswith("| mode") and set(lines[1]) <= {"|", "-"}
    assert len({len(line) for line in lines}) == 1  # aligned
    check_files_without_figure(result, 4, (3, 4))
    assert any('pip install "minidl[plot]"' in m for m in messages)  # no figure: the hint
    assert any("this run fails" in m for m in messages)


def check_files_without_figure(result, settings, seeds):
    open(os.path.join(result.folder, "figure.png"), "wb").write(b"\x89PNG")  # toy: no plot
    check_files(result, settings, seeds)


def test_a_second_result_goes_to_a_new_folder_and_out_none_writes_nothing(tmp_path):
    config = toy_config(tmp_path, [{"mode": "ok"}], seeds=(0,))
    first = runner.run_experiment(TOY, config, log=None)
    second = runner.run_experiment(TOY, config, log=None)
    assert first.folder != second.folder and os.path.dirname(first.folder) == \
        os.path.dirname(second.folder)
    config["out"] = None
    assert runner.run_experiment(TOY, config, log=None).folder is None


def test_dask_sweep_gives_the_sequential_numbers_and_survives_a_killed_worker(tmp_path):
    need_dask()
    settings = [{"mode": "ok", "x": 0}, {"mode": "die-once"}, {"mode": "ok", "x": 5}]
    sequential = runner.run_experiment(
        TOY, toy_config(tmp_path / "a", [settings[0], settings[2]]), log=None)
    config = toy_config(tmp_path / "b", settings, workers=2)
    os.makedirs(config["out"])
    parallel = runner.run_experiment(TOY, config, log=None)
    assert [r["status"] for r in parallel.runs] == ["ok"] * 6  # the dead worker's run retried
    assert os.path.exists(os.path.join(config["out"], "die-once-1.marker"))  # it did die
    ok = [r for r in parallel.runs if r["setting"]["mode"] == "ok"]
    assert [r["final"] for r in ok] == [r["final"] for r in sequential.runs]
    assert [r["curves"] for r in ok] == [r["curves"] for r in sequential.runs]


def test_a_run_whose_worker_dies_twice_is_marked_failed(tmp_path):
    need_dask()
    config = toy_config(tmp_path, [{"mode": "ok"}, {"mode": "die-always"}], seeds=(0,),
                        workers=2)
    os.makedirs(config["out"])
    result = runner.run_experiment(TOY, config, log=None)
    assert [r["status"] for r in result.runs] == ["ok", "failed"]
    assert "KilledWorker" in result.runs[1]["error"]
    assert (result.summary[1]["ok"], result.summary[1]["failed"]) == (0, 1)


def test_a_real_experiment_on_two_worker_processes_matches_the_sequential_run(
        tmp_path, experiment_root, one_kernel_thread):  # noqa: F811
    """ioffe-fig1 at a tiny size: the workers read MNIST from their own data root; one
    kernel thread in both cases."""
    need_dask()
    options = dict(steps=20, eval_every=10, record_every=5, train_samples=600, test_samples=200,
                   curve_samples=100, seeds=2, root=experiment_root, out=None, progress=False,
                   log=None)
    sequential = minidl.experiments.run("ioffe-fig1", **options)
    parallel = minidl.experiments.run("ioffe-fig1", workers=2, **options)
    assert [r["status"] for r in parallel.runs] == ["ok"] * 4
    for a, b in zip(sequential.runs, parallel.runs):
        assert (a["setting"], a["seed"]) == (b["setting"], b["seed"])
        assert a["final"] == b["final"] and a["curves"] == b["curves"]


def test_keyword_options_are_checked_like_the_command_line():
    with pytest.raises(TypeError, match="unknown option"):
        minidl.experiments.run("lr-sweep", learning_rates=[0.1])
    with pytest.raises(ValueError, match="--lrs"):
        minidl.experiments.run("lr-sweep", lrs=[0.1, -1])
    with pytest.raises(ValueError, match="--seeds"):
        minidl.experiments.run("lr-sweep", seeds=0)
    with pytest.raises(KeyError, match="unknown experiment"):
        minidl.experiments.run("nope")
    config = runner.config_from_options(EXPERIMENTS["lr-sweep"], {"full": True, "steps": 7})
    assert config["steps"] == 7 and config["network"] == "cnn"  # --full, except what is given
    assert config["seeds"] == [0, 1]


def test_help_lists_every_experiment_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for name, experiment in EXPERIMENTS.items():
        assert name in out
    assert len(EXPERIMENTS) == 7
    with pytest.raises(SystemExit):
        main(["landscape", "--help"])
    out = capsys.readouterr().out
    assert "(default: 150)" in out and "--full" in out and "--step-sizes" in out


@pytest.mark.parametrize("argv, message", [
    (["lr-sweep", "--lrs", "0.1,abc"], "--lrs"),
    (["batch-size", "--batch-sizes", "0"], "--batch-sizes"),
    (["bn-vs-plain", "--datasets", "imagenet"], "choose from"),
    (["ioffe-fig1", "--unit", "100"], "unit index"),
    (["norm-axes", "--scheduler", "localhost"], "tcp://HOST:PORT"),
    (["nope"], "invalid choice"),
])
def test_the_command_line_rejects_bad_options_up_front(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_without_dask_workers_and_scheduler_say_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(SystemExit):
        main(["lr-sweep", "--workers", "2"])
    assert 'pip install "minidl[distributed]"' in capsys.readouterr().err
    with pytest.raises(ImportError, match=r"minidl\[distributed\]"):
        minidl.experiments.run("lr-sweep", scheduler="tcp://127.0.0.1:1", log=None)


def test_python_m_runs_an_experiment_end_to_end(tmp_path, experiment_root):  # noqa: F811
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), MINIDL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "minidl.experiments", "init-scale", "--scales", "1",
         "--steps", "5", "--eval-every", "5", "--train-samples", "320", "--test-samples", "100",
         "--curve-samples", "100", "--seeds", "1", "--root", experiment_root, "--out",
         str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| scale |  norm |" in proc.stdout and "results in" in proc.stdout
    (folder,) = [os.path.join(tmp_path, "init-scale", d)
                 for d in os.listdir(tmp_path / "init-scale")]
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["command"][-2:] == ["--out", str(tmp_path)] and config["config"]["steps"] == 5
