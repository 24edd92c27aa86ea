"""minidl.experiments.comparison: recording runs (and divergence), the table, JSON, argparse types.
The examples that use it are run end to end in test_examples.py."""
import argparse
import json

import numpy as np
import pytest

import minidl
from minidl import data, layers, losses, optim
from minidl.experiments import comparison

from trainer_helpers import blobs


def record(lr, steps=12, epochs=None):
    x, y = blobs(np.random.default_rng(0), 96)
    minidl.manual_seed(0)
    model = minidl.Sequential(layers.Dense(2, 16), layers.ReLU(), layers.Dense(16, 2))
    loader = data.DataLoader(data.ArrayDataset(x, y), 16, shuffle=True, seed=0)
    held_out = data.DataLoader(data.ArrayDataset(x[:32], y[:32]), 32)
    return comparison.train_and_record(
        model, optim.SGD(model.parameters(), lr=lr, momentum=0.9), losses.CrossEntropyLoss(),
        loader, held_out, held_out, steps=None if epochs else steps, epochs=epochs, eval_every=5,
        target=0.9, progress=False)


def test_a_run_is_recorded_with_its_curve_and_times():
    run = record(0.1)
    assert run["steps"] == [5, 10, 12] and run["steps_done"] == 12  # the step limit, mid-epoch
    assert len(run["test_accuracy"]) == 3 and len(run["train_loss_per_step"]) == 12
    assert run["steps_to_target"] in run["steps"] and run["final_test_accuracy"] >= 0.9
    assert run["diverged_at_step"] is None and run["curve_samples"] == run["test_samples"] == 32
    assert run["ms_per_step"] > 0 and run["seconds_training"] <= run["seconds_with_evaluations"]
    assert record(0.1, epochs=2)["steps_done"] == 12  # 6 batches per epoch


def test_a_diverging_run_is_recorded_not_raised(recwarn):
    run = record(1e30)
    assert run["diverged_at_step"] is not None and run["final_test_accuracy"] is None
    assert len(run["train_loss_per_step"]) == run["diverged_at_step"] - 1
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert run["diverged_at_step"] <= 5 and run["steps"] == []  # before the first evaluation
    curve, summary = comparison.comparison_table([record(0.1), run], ["good", "bad"], 0.9).split("\n\n")
    assert [line.split()[-1] for line in curve.splitlines()[3:]] == ["diverged"] * 3
    assert summary.count(f"diverged at step {run['diverged_at_step']}") == 3


def test_the_table_lines_up_whatever_the_cell_widths():
    text = comparison.format_table(["", "a", "much longer header"],
                                   [["row", "1", "2"], ["a much longer row", "123456789", "x"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert len({line.index("|") for line in lines if "|" in line}) == 1
    right = comparison.format_table(["step", "v"], [["5", "1"], ["100", "2"]], first="right")
    assert right.splitlines()[2] == "   5 | 1"


def test_json_is_written_atomically_with_non_finite_numbers_as_null(tmp_path):
    path = tmp_path / "new" / "run.json"
    comparison.write_json(str(path), {"a": [1.0, float("nan")], "b": {"c": float("inf")}})
    assert json.loads(path.read_text()) == {"a": [1.0, None], "b": {"c": None}}
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary file left


def test_plot_curves_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert comparison.plot_curves(str(tmp_path / "c.png"), [("t", [("a", record(0.1))])]) is False
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("parse, good, bad", [
    (comparison.positive_int, [("3", 3)], ["0", "-2", "1.5", "x"]),
    (comparison.positive_float, [("0.1", 0.1), ("1e-3", 1e-3)], ["0", "-1", "nan", "inf", "a"]),
    (comparison.non_negative_float, [("0", 0.0)], ["-1e-4", "nan"]),
    (comparison.fraction, [("0", 0.0), ("0.9", 0.9)], ["1", "-0.1", "inf"]),
])
def test_argparse_types(parse, good, bad):
    for text, value in good:
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            parse(text)
