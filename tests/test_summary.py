"""The summary `run` prints reads the experiment as `report` does (results.experiment): the
same trial states and the same best trial, ties included. A hand-made experiment (no Ray,
no training), so this is fast."""

from __future__ import annotations

import json
import re
import shutil

from test_inference_errors import TRIAL, make_experiment

from results import layout
from results.experiment import load_experiment
from results.tables import format_terminal_table
from tuner.cli import main
from tuner.summary import summarise


def test_on_a_tie_the_summary_and_the_report_name_the_same_best_trial(tmp_path, capsys):
    """Two trials with the same objective (0.5000): the lower trial number is the best."""
    folder = make_experiment(tmp_path)
    tied = folder / "trial_000_zzzz"  # another config, the same objective
    shutil.copytree(folder / TRIAL, tied)
    config = json.loads((tied / layout.CONFIG_FILE).read_text())
    (tied / layout.CONFIG_FILE).write_text(json.dumps({**config, "lr": 3e-4}))
    (tied / layout.PARAMS_FILE).write_text(json.dumps({"lr": 3e-4}))
    (folder / TRIAL / layout.PARAMS_FILE).write_text(json.dumps({"lr": config["lr"]}))
    experiment = load_experiment(folder)
    summary = summarise(experiment.settings, experiment)
    assert "trials: 2 — 2 finished, 0 stopped early, 0 interrupted, 0 errored\n" in summary
    best = re.search(r"^best trial: (\S+) \(selected_heldout_dice = 0\.5000\)$", summary, re.M)
    assert best is not None, summary
    assert main(["report", str(folder)]) == 0
    marked = re.findall(r"^(B|R|BR) +(trial_\S+) ", capsys.readouterr().out, re.M)
    assert sorted(marked) == [("B", "trial_000_zzzz"), ("R", TRIAL)]
    assert best[1] == "trial_000_zzzz" == experiment.best.name


def test_the_summary_names_an_experiment_under_the_working_folder_relatively(tmp_path, monkeypatch):
    """What the README shows: `runs/…` paths that work from where the command ran, not
    the absolute ones the settings resolve."""
    (tmp_path / "runs").mkdir()
    folder = make_experiment(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    experiment = load_experiment(folder)
    summary = summarise(experiment.settings, experiment)
    assert "experiment: runs/handmade\n" in summary
    assert f"details: runs/handmade/{TRIAL}/{layout.METRICS_FILE}\n" in summary
    assert "optuna study: runs/handmade/handmade.sqlite\n" in summary
    assert summary.endswith("tensorboard: tensorboard --logdir runs/handmade")
    assert str(tmp_path) not in summary
    assert format_terminal_table(experiment).startswith("experiment: runs/handmade — ")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not under it: as it is
    summary = summarise(experiment.settings, experiment)
    assert f"experiment: {folder}\n" in summary
