"""The reporter and the confirm statistics: hand-made experiment folders with known numbers
(no Ray), then a small real sweep and a confirm run through Ray (slow)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import ray
from matplotlib.collections import LineCollection, PathCollection
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from results import confirm, layout, records
from results.compare import COMPARABLE
from results.config import TrainConfig
from results.confirm import Run
from results.experiment import State, load_experiment
from results.intervals import Interval, Scores, draws, estimate, resampled, t_interval, verdict
from results.plots import (
    curve_legend,
    importance_needs,
    parallel_figure,
    pick_cases,
    varied_params,
)
from results.reference import load_reference
from results.report import write_report
from results.settings import RunSettings, Scheduler
from results.tables import format_terminal_table
from search_spaces import get_space
from trainable.metrics import METRIC_KEYS
from trainable.preprocess import load_busi
from tuner.cli import main

BASE = TrainConfig.reference().replace(
    encoder="resnet18", encoder_weights="none", image_size=32, batch_size=8, epochs=3
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Per test image: tp, fp, fn (the fourth image is lesion-free, with one false pixel).
COUNTS = np.array([[90, 10, 10], [50, 50, 50], [70, 20, 10], [0, 1, 0]])
REFERENCE_COUNTS = np.array([[95, 5, 5], [60, 40, 40], [60, 30, 20], [0, 0, 0]])
PUBLISHED = ("0.2364", "0.9685", "0.8080", "0.7317", "0.7680", "0.6233", "0.9012")


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5_000


# --- a hand-made experiment folder -----------------------------------------------------


def _test_metrics(dice: float, loss: float) -> dict[str, float]:
    """Every metric key; pooled f1 = dice, as in the trainable."""
    metrics = {m: 0.5 for m in METRIC_KEYS}
    metrics.update(dice=dice, f1=dice, iou=dice / (2 - dice), accuracy=0.95, roc_auc=0.9)
    return {"test_loss": loss, "test": metrics}


def _write_trial(
    experiment: Path,
    name: str,
    params: dict,
    objectives: list[float],
    selected: dict | None = None,
    error: str | None = None,
    counts: np.ndarray = COUNTS,
    groups: np.ndarray | None = None,
) -> None:
    trial = experiment / name
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps(params))
    records.save_config(TrainConfig.from_flat({**BASE.to_flat(), **params}), trial / "config.json")
    # The objective (validation Dice of the selected model) is 1 - the combined loss here.
    rows = [
        {
            "epoch": e,
            "combined_loss": v,
            "best_combined_loss": v,
            "selected_heldout_dice": 1 - v,
            "heldout_dice": 1 - v,
            "time_total_s": 10.0 * e,
            "training_iteration": e,
        }
        for e, v in enumerate(objectives, start=1)
    ]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = {"node_id": "n", "gpu_ids": [], "device": "cpu", "resumed_after_epoch": 0}
    (trial / "placement.jsonl").write_text(json.dumps(start) + "\n")
    if error:
        (trial / "error.txt").write_text(f"Traceback ...\n{error}\n")
    if selected is None:
        return
    metrics = {
        "protocol": {
            "selection": "validation part (test part locked)",
            "split": "random",
            "split_seed": 0,
            "counts": {"train": 28, "validation": 7, "test": 4},
        },
        "selected_epoch": len(objectives),
        "models": ["model.pt"],
        "combined_loss": objectives[-1],
        **selected,
    }
    (trial / "metrics.json").write_text(json.dumps(metrics))
    curve = np.linspace(0, 1, 50)
    predictions = np.zeros((4, 32, 32), dtype=bool)
    predictions[:, 8:20, 8:20] = True
    np.savez_compressed(
        trial / "selection.npz",
        epoch=len(objectives),
        names=np.array(["benign (1)", "benign (2)", "malignant (1)", "normal (1)"]),
        per_image_dice=np.array([0.9, 0.5, 0.7, np.nan]),
        per_image_counts=counts,
        predictions=np.packbits(predictions, axis=-1),
        **({} if groups is None else {"groups": groups}),
        fpr=curve,
        tpr=np.sqrt(curve),
        precision=1 - curve / 2,
        recall=curve,
        thresholds=curve[::-1],
    )


def _study_trial(tune_id: str, lr: float, state: TrialState, value: float | None = None):
    return create_trial(
        params={"lr": lr},
        distributions={"lr": FloatDistribution(1e-5, 1e-2, log=True)},
        value=value,
        state=state,
        user_attrs={"tune_trial_id": tune_id, "epochs_run": 3},
    )


@pytest.fixture
def handmade(tmp_path) -> Path:
    """Five trials: the reference (best on test, not on validation), the best on validation,
    one stopped early, one errored before its first epoch, one cut off by an interruption."""
    settings = RunSettings(
        data=tmp_path / "data-that-is-gone", base=BASE, storage=str(tmp_path), name="handmade"
    )
    experiment = Path(settings.experiment_dir)
    experiment.mkdir()
    records.save_settings(settings, experiment / layout.SETTINGS_FILE)
    provenance = {"path": "/gone", "content_hash": "0f", "images": 39, "synthetic": True}
    (experiment / layout.DATA_FILE).write_text(json.dumps(provenance))
    reference_point = get_space("reference").reference_point(BASE)
    _write_trial(
        experiment,
        "trial_001_aaaa",
        reference_point,
        [0.9, 0.8, 0.7],
        _test_metrics(0.80, 0.20),
        counts=REFERENCE_COUNTS,
    )
    _write_trial(
        experiment,
        "trial_002_bbbb",
        {**reference_point, "lr": 1e-3},
        [0.8, 0.6, 0.5],
        _test_metrics(0.70, 0.30),
    )
    _write_trial(
        experiment,
        "trial_003_cccc",
        {**reference_point, "lr": 1e-5},
        [0.95],
        _test_metrics(0.10, 0.90),
    )
    _write_trial(
        experiment,
        "trial_004_dddd",
        {**reference_point, "lr": 1e12},
        [],
        error="NonFiniteLossError: training loss became nan; lower the learning rate",
    )
    _write_trial(
        experiment,
        "trial_005_eeee",
        {**reference_point, "lr": 2e-3},
        [0.85],
        _test_metrics(0.30, 0.70),
    )
    study = optuna.create_study(study_name="handmade", storage=f"sqlite:///{settings.study_path}")
    study.add_trial(_study_trial("aaaa", 1e-4, TrialState.COMPLETE, 0.7))
    study.add_trial(_study_trial("bbbb", 1e-3, TrialState.COMPLETE, 0.5))
    study.add_trial(_study_trial("cccc", 1e-5, TrialState.PRUNED))
    study.add_trial(_study_trial("dddd", 1e-3, TrialState.FAIL))
    study.add_trial(_study_trial("eeee", 2e-3, TrialState.RUNNING))
    return experiment


def test_handmade_experiment_is_read_with_its_best_and_reference_trials(handmade):
    experiment = load_experiment(handmade)
    states = {t.name: t.state for t in experiment.trials}
    assert states == {
        "trial_001_aaaa": "finished",
        "trial_002_bbbb": "finished",
        "trial_003_cccc": "stopped early at epoch 1",
        "trial_004_dddd": "errored",
        "trial_005_eeee": "interrupted at epoch 1",
    }
    # Chosen on validation (Dice 0.5 > 0.3), although the reference trial is better on test.
    assert experiment.best.name == "trial_002_bbbb"
    assert experiment.reference.name == "trial_001_aaaa"
    errored = experiment.trials[3]
    assert errored.selected is None and errored.objective is None
    assert errored.error.startswith("NonFiniteLossError")
    assert [t.optuna_state for t in experiment.trials] == [
        "COMPLETE",
        "COMPLETE",
        "PRUNED",
        "FAIL",
        "RUNNING",
    ]


def test_an_interrupted_trial_is_never_the_best(handmade):
    # Cut off after one epoch at a value better than every finished trial's.
    row = {"epoch": 1, "selected_heldout_dice": 0.99, "training_iteration": 1}
    (handmade / "trial_005_eeee" / "result.json").write_text(json.dumps(row) + "\n")
    experiment = load_experiment(handmade)
    assert experiment.trials[4].objective == 0.99
    assert experiment.best.name == "trial_002_bbbb"
    assert "trial_005_eeee" not in [t.name for t in experiment.ranked()]


def test_a_trial_that_a_retry_finished_is_not_errored(handmade):
    """Tune keeps the failed attempt's error.txt; the driver's outcome.json says how the
    trial's last attempt ended, and the report follows it (as the run summary does)."""
    best = handmade / "trial_002_bbbb"
    (best / "error.txt").write_text("Failure # 1\nOSError: [Errno 28] No space left\n")
    (best / "outcome.json").write_text('{"format": 1, "errored": false, "epochs": 3}\n')
    failed = handmade / "trial_004_dddd" / "outcome.json"
    failed.write_text('{"format": 1, "errored": true, "epochs": 0}\n')
    experiment = load_experiment(handmade)
    trials = {t.name: t for t in experiment.trials}
    assert trials["trial_002_bbbb"].state == "finished"
    assert trials["trial_002_bbbb"].error is None
    assert experiment.best.name == "trial_002_bbbb"
    assert trials["trial_004_dddd"].state == "errored"
    assert trials["trial_004_dddd"].error.startswith("NonFiniteLossError")


def test_a_short_trial_the_driver_saw_end_is_stopped_early_under_any_scheduler(handmade):
    """The driver records a trial's end (outcome.json) when its progress line says "stopped
    early"; the report says the same, FIFO or not. A short trial with no record was cut off."""
    settings = records.load_settings(handmade / layout.SETTINGS_FILE)
    fifo = dataclasses.replace(settings, scheduler=Scheduler.FIFO)
    records.save_settings(fifo, handmade / layout.SETTINGS_FILE)
    ended = handmade / "trial_003_cccc" / layout.OUTCOME_FILE
    ended.write_text('{"format": 1, "errored": false, "epochs": 1}\n')
    trials = {t.name: t for t in load_experiment(handmade).trials}
    assert trials["trial_003_cccc"].status is State.STOPPED
    assert trials["trial_003_cccc"].state == "stopped early at epoch 1"
    assert trials["trial_005_eeee"].state == "interrupted at epoch 1"


def test_damaged_files_do_not_stop_a_report(handmade, caplog):
    """What a full disk leaves: empty and cut-short files."""
    (handmade / "trial_003_cccc" / "params.json").write_text("")
    rows = handmade / "trial_002_bbbb" / "result.json"
    rows.write_text(rows.read_text() + '{"epoch": 4, "selected_heldo')
    (handmade / "trial_005_eeee" / "metrics.json").write_text('{"selected_ep')
    experiment = load_experiment(handmade)
    assert experiment.best.name == "trial_002_bbbb" and experiment.best.epochs_run == 3
    assert experiment.trials[2].params == {} and experiment.trials[4].selected is None
    assert "damaged" in caplog.text
    assert write_report(load_experiment(handmade)).markdown.is_file()


def _csv_rows(path: Path) -> dict[str, dict]:
    with open(path) as handle:
        return {row["trial"]: row for row in csv.DictReader(handle)}


def test_report_of_handmade_experiment(handmade):
    paths = write_report(load_experiment(handmade))
    reference = load_reference()
    rows = _csv_rows(paths.trials_csv)
    assert set(rows) == {t.name for t in load_experiment(handmade).trials}
    best = rows["trial_002_bbbb"]
    assert best["marks"] == "B" and rows["trial_001_aaaa"]["marks"] == "R"
    # No trial's test numbers by default: picking among them would be picking on test.
    assert not any(k.startswith(("test_", "delta_")) for k in best)
    rows = _csv_rows(write_report(load_experiment(handmade), all_test_metrics=True).trials_csv)
    best = rows["trial_002_bbbb"]
    assert float(best["delta_dice"]) == pytest.approx(0.70 - reference.test["dice"])
    assert float(best["test_loss"]) == 0.30 and "delta_loss" not in best  # defined otherwise
    assert float(rows["trial_001_aaaa"]["delta_f1"]) == pytest.approx(0.80 - 0.768)
    assert rows["trial_004_dddd"]["delta_dice"] == ""
    markdown = paths.markdown.read_text()
    for text in (
        "stopped early at epoch 1",
        "interrupted at epoch 1",
        "| errored |",
        "training loss became nan",
        "data-that-is-gone is gone",
        "selected on the validation part",
        "optimistic",
        "5 trials (32 planned)",
        *PUBLISHED,
    ):
        assert text in markdown, text
    assert "0.7000 (-0.0680)" in markdown  # the winner's (the best trial's) Dice and delta
    assert "0.8000 (+0.0320)" in markdown  # the reference config's
    # Test numbers of the winner and the reference config only: the others' are not shown.
    assert "(-0.6680)" not in markdown and "(-0.4680)" not in markdown  # Dice 0.10, 0.30
    assert "**data: synthetic**" in markdown and "not BUSI" in markdown
    for metric in ("average_precision", "dice_per_image", "normal_fp_rate", "loss"):
        assert f"| {metric} |" in markdown
    # Each row says what differs from the paper; the loss is never beside the paper's.
    assert (
        "| winner: trial_002_bbbb | 0.9500 (-0.0185) |" in markdown
        and "synthetic data, not BUSI; grouped split, near-duplicates on one side (paper: "
        "random, which leaks them); 28 training images, 7 held out for validation (paper: "
        "624); epoch selected on validation (paper: on test, optimistic); config chosen on "
        "validation among 5 trials (one run each; paper: one config); encoder resnet18 "
        "(paper: resnext101_32x16d)"
        in markdown
    )
    assert "test loss defined otherwise: not compared" in markdown
    beside = markdown.split("## The winner")[1].split("Metrics the paper's table lacks")[0]
    assert "| loss |" not in beside and "0.2000" not in beside  # the reference's test loss
    # The primary endpoint (the sweep optimised validation Dice): one run per config, so
    # the interval covers the test images alone, resampled singly (no groups recorded).
    single = Scores(0, {"dice": 0.70}, ("a", "b", "c", "d"), None, COUNTS)
    interval = estimate("dice", [single])
    assert interval.covers == "single test images (no groups), not seeds (one run per config)"
    assert f"test dice 0.7000 [{interval.low:.4f}, {interval.high:.4f}]" in markdown
    assert "no group ids recorded" in markdown and "seed noise is not in these" in markdown
    assert "Optuna study: `" in markdown and "selected weights: `" in markdown
    searched = "batch_size=8 encoder_lr_scale=1 loss=dice lr=0.001 optimizer=adam warmup_epochs=0"
    assert f"| 30 s | {searched} no aug |" in markdown  # CPU: no device time
    assert "device time" not in markdown
    names = {p.name for p in paths.plots}
    assert names == {
        "comparison.png",
        "learning_curves.png",
        "roc_pr.png",
        "history.png",
        "parallel_coordinates.png",
    }
    assert "importance needs ≥ 8 COMPLETE trials (two per varied parameter, 1 varied" in markdown
    assert "this sweep has 2" in markdown
    for plot in paths.plots:
        assert _is_png(plot), plot
        assert f"]({plot.name})" in markdown
    table = format_terminal_table(load_experiment(handmade))
    assert "B  trial_002_bbbb" in table and "R  trial_001_aaaa" in table
    assert "-0.0680" in table and "error: NonFiniteLossError" in table
    assert "-0.6680" not in table  # the stopped trial's test Dice (0.10): not shown


def _replace_study(experiment: Path, trials: list) -> None:
    """The hand-made experiment's study, holding `trials` instead."""
    storage = f"sqlite:///{experiment / 'handmade.sqlite'}"
    optuna.delete_study(study_name="handmade", storage=storage)
    fresh = optuna.create_study(study_name="handmade", storage=storage, direction="maximize")
    fresh.add_trials(trials)


def test_importance_needs_two_complete_trials_per_varied_parameter_and_at_least_8(handmade):
    assert [importance_needs(k) for k in (0, 1, 4, 5, 19)] == [8, 8, 8, 10, 38]
    _replace_study(
        handmade,
        [
            _study_trial("aaaa", 1e-4, TrialState.COMPLETE, 0.7),
            _study_trial("bbbb", 1e-4, TrialState.COMPLETE, 0.5),
        ],
    )
    paths = write_report(load_experiment(handmade))
    assert "every COMPLETE trial has the same values" in paths.markdown.read_text()
    assert not (paths.directory / "importance.png").exists()
    assert (paths.directory / "history.png").exists()

    # One varied parameter: 7 COMPLETE trials are too few, 8 are enough.
    lrs = np.geomspace(1e-5, 1e-3, 8)
    trials = [_study_trial(f"t{i}", lr, TrialState.COMPLETE, lr * 100) for i, lr in enumerate(lrs)]
    _replace_study(handmade, trials[:7] + [_study_trial("x", 1e-4, TrialState.PRUNED)])
    paths = write_report(load_experiment(handmade))
    markdown = paths.markdown.read_text()
    assert "importance needs ≥ 8 COMPLETE trials (two per varied parameter, 1 varied" in markdown
    assert "this sweep has 7" in markdown
    assert not (paths.directory / "importance.png").exists()
    _replace_study(handmade, trials)
    paths = write_report(load_experiment(handmade))
    assert _is_png(paths.directory / "importance.png")
    assert "importance needs" not in paths.markdown.read_text()


def _space_trial(number: int, params: dict, value: float):
    """A COMPLETE trial of a reference-like space: lr and optimizer vary, weight_decay is
    sampled only with AdamW, batch_size and aug_hflip_p never change, and aug_gamma_limit
    is sampled (once) only when its augmentation is on."""
    distributions = {
        "lr": FloatDistribution(1e-5, 1e-3, log=True),
        "batch_size": CategoricalDistribution([4, 8, 16]),
        "optimizer": CategoricalDistribution(["adam", "adamw"]),
        "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
        "aug_hflip_p": CategoricalDistribution([0.0, 0.25, 0.5]),
        "aug_gamma_limit": FloatDistribution(5.0, 40.0),
    }
    return create_trial(
        params=params,
        distributions={k: distributions[k] for k in params},
        value=value,
        user_attrs={"tune_trial_id": f"p{number}", "epochs_run": 3},
    )


SPACE_TRIALS = [
    {"lr": 1e-4, "batch_size": 8, "optimizer": "adam", "aug_hflip_p": 0.0},
    {"lr": 1e-3, "batch_size": 8, "optimizer": "adamw", "weight_decay": 1e-4, "aug_hflip_p": 0.0},
    {"lr": 1e-5, "batch_size": 8, "optimizer": "adam", "aug_hflip_p": 0.0, "aug_gamma_limit": 9.0},
    {"lr": 3e-4, "batch_size": 8, "optimizer": "adamw", "weight_decay": 1e-2, "aug_hflip_p": 0.0},
]


def test_parallel_coordinates_have_an_axis_per_varied_parameter_then_the_objective(handmade):
    values = [0.6, 0.7, 0.2, 0.5]
    trials = [
        _space_trial(i, p, v) for i, (p, v) in enumerate(zip(SPACE_TRIALS, values, strict=True))
    ]
    assert varied_params([t.params for t in trials]) == ["lr", "optimizer", "weight_decay"]
    axis = parallel_figure(trials, "selected_heldout_dice", "max").axes[0]
    labels = [label.get_text() for label in axis.get_xticklabels()]
    assert labels == ["lr", "optimizer", "weight_decay", "selected_heldout_dice (max)"]
    # A dot per sampled value: weight_decay (axis 2) only for the two AdamW trials.
    (dots,) = [c for c in axis.collections if isinstance(c, PathCollection)]
    xs = dots.get_offsets()[:, 0]
    assert [int(np.sum(xs == x)) for x in range(4)] == [4, 4, 2, 4]
    # lr on a log axis: 1e-4 sits halfway between 1e-5 and 1e-3; the best objective on top.
    heights = {(x, round(y, 6)) for x, y in dots.get_offsets()}
    assert (0, 0.5) in heights and (3, 1.0) in heights and (3, 0.0) in heights
    # The Adam trials' lines pass weight_decay's axis dotted: optimizer (1) to objective (3).
    lines = [c for c in axis.collections if isinstance(c, LineCollection)]
    solid, dotted = (c.get_segments() for c in lines)
    assert len(solid) == 2 * 3 + 2 * 1
    assert sorted(tuple(s[:, 0]) for s in dotted) == [(1.0, 3.0), (1.0, 3.0)]

    _replace_study(handmade, trials)
    paths = write_report(load_experiment(handmade))
    markdown = paths.markdown.read_text()
    assert _is_png(paths.directory / "parallel_coordinates.png")
    assert "Axes: lr, optimizer, weight_decay, then the objective" in markdown
    left_out = "batch_size, aug_hflip_p, aug_gamma_limit"
    assert f"Left out, the same in every trial that sampled them: {left_out}." in markdown


def test_report_of_a_missing_or_foreign_folder_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    (tmp_path / "foreign").mkdir()
    assert main(["report", str(tmp_path / "foreign")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "not an experiment folder" in errors[1]


def test_recorded_groups_are_resampled_whole(handmade):
    """Trials that recorded their test images' near-duplicate groups: the bootstrap draws
    a group's images together, and the report says how the test part is grouped."""
    groups = np.array([7, 7, 9, 11])  # the two benign images are near-duplicates
    for name in ("trial_001_aaaa", "trial_002_bbbb"):
        selection = handmade / name / "selection.npz"
        with np.load(selection) as raw:
            arrays = {k: raw[k] for k in raw.files}
        np.savez_compressed(selection, **arrays, groups=groups)
    experiment = load_experiment(handmade)
    assert np.array_equal(experiment.best.selection().groups, groups)
    markdown = write_report(experiment).markdown.read_text()
    names = ("benign (1)", "benign (2)", "malignant (1)", "normal (1)")
    winner = estimate("dice", [Scores(0, {"dice": 0.70}, names, groups, COUNTS)])
    assert winner.covers == "test-image groups, not seeds (one run per config)"
    assert f"test dice 0.7000 [{winner.low:.4f}, {winner.high:.4f}] (test-image groups" in markdown
    assert "split 0: 4 test images in 3 groups, 2 of them sharing a group" in markdown
    assert "no group ids recorded" not in markdown


def _final_round(handmade: Path, runs: list[tuple[str, int, float, float]]) -> dict:
    """A hand-made final round beside the hand-made sweep, as `run --final-seeds` leaves
    it: (label, seed, validation Dice, test Dice) per run; its assessment, in final.json."""
    from results.confirm import FINAL, choose_candidates, confirmation

    experiment = load_experiment(handmade)
    candidates = {c.label: c for c in choose_candidates(experiment, top=1)}
    settings = dataclasses.replace(
        experiment.settings, name="handmade-final", scheduler=Scheduler.FIFO, trials=len(runs)
    )
    final = handmade.parent / "handmade-final"
    final.mkdir()
    records.save_settings(settings, final / layout.SETTINGS_FILE)
    for i, (label, seed, validation, dice) in enumerate(runs):
        counts = REFERENCE_COUNTS if label == "reference" else COUNTS
        params = {**candidates[label].point, "seed": seed}
        test = _test_metrics(dice, 1 - dice)
        _write_trial(
            final, f"trial_{i:03d}_f{i}", params, [0.9, 0.8, 1 - validation], test, None, counts
        )
    result = confirmation(experiment, list(candidates.values()), [load_experiment(final)], FINAL)
    (handmade / layout.FINAL_FILE).write_text(result.to_text())
    return result


def test_a_final_round_picks_the_winner_on_validation_and_the_report_shows_it(handmade):
    # best: validation 0.63 on average (the reference 0.62), test Dice 0.71 (0.81).
    result = _final_round(
        handmade,
        [
            ("reference", 1, 0.60, 0.80),
            ("reference", 2, 0.64, 0.82),
            ("best", 1, 0.70, 0.70),
            ("best", 2, 0.56, 0.72),
        ],
    )
    # final.json holds the record as it was made (a typed record, read back whole).
    assert records.Confirmation.from_text(result.to_text(), layout.FINAL_FILE) == result
    winner = result.winner
    assert (winner.label, winner.trial) == ("best", "trial_002_bbbb")
    assert winner.validation["best"].mean == pytest.approx(0.63)
    assert result.seeds == (1, 2) and result.split_seeds == (0,)
    # The difference of the means, with seeds (Welch) and test images (bootstrap) in it.
    names = ("benign (1)", "benign (2)", "malignant (1)", "normal (1)")
    best = [Scores(0, {"dice": d}, names, None, COUNTS) for d in (0.70, 0.72)]
    reference = [Scores(0, {"dice": d}, names, None, REFERENCE_COUNTS) for d in (0.80, 0.82)]
    expected = estimate("dice", best, reference)
    (comparison,) = result.comparisons
    dice = comparison.estimates["dice"]
    assert dice.mean == pytest.approx(-0.10)
    assert (dice.low, dice.high) == pytest.approx((expected.low, expected.high))
    assert dice.covers == "training seeds, single test images (no groups)"
    assert dice.confidence == 0.95
    assert comparison.estimates["iou"].confidence == pytest.approx(1 - 0.05 / 7)  # secondary
    seeds_only = estimate("dice", _seeded([0.70, 0.72]), _seeded([0.80, 0.82]))
    assert expected.high - expected.low > seeds_only.high - seeds_only.low

    experiment = load_experiment(handmade)
    paths = write_report(experiment)
    markdown = paths.markdown.read_text()
    assert "### The final round" in markdown
    assert "| winner (best, from trial_002_bbbb), mean of 2 runs | 0.9500 (-0.0185) |" in markdown
    assert "0.7100 (-0.0580)" in markdown and "0.8100 (+0.0420)" in markdown  # means of 2
    assert "mean of 2 training seeds (paper: one run)" in markdown
    assert "among 5 trials (on the mean over its runs; paper: one config)" in markdown
    assert "**Winner**: best (from trial_002_bbbb), picked by the highest mean validation" in (
        markdown
    )
    assert "seed noise is not in these intervals" not in markdown
    assert f"test dice: {dice.mean:+.4f} [{dice.low:+.4f}, {dice.high:+.4f}]" in markdown
    table = format_terminal_table(experiment)
    assert "winner (best, from trial_002_bbbb), mean of 2 runs" in table
    assert dice.verdict in table


def test_a_final_round_that_the_reference_wins_says_so(handmade):
    result = _final_round(
        handmade,
        [
            ("reference", 1, 0.66, 0.80),
            ("reference", 2, 0.64, 0.82),
            ("best", 1, 0.60, 0.70),
            ("best", 2, 0.62, 0.72),
        ],
    )
    assert result.winner.label == "reference"
    lines = confirm.confirmation_lines(result)
    assert any("the search found nothing better" in line for line in lines)
    markdown = write_report(load_experiment(handmade)).markdown.read_text()
    assert "| winner = reference config (reference, from trial_001_aaaa), mean of 2 runs |" in (
        markdown
    )


def test_a_damaged_final_round_is_a_warning_and_the_sweeps_numbers_stand(handmade, caplog):
    made = _final_round(handmade, [("reference", 1, 0.60, 0.80), ("best", 1, 0.70, 0.70)])
    infinite = made.to_text().replace('"resamples": 10000', '"resamples": Infinity')
    assert infinite != made.to_text()
    for damage in ("{not json", json.dumps({"format": 2, "kind": "final", "winner": 1}), infinite):
        (handmade / layout.FINAL_FILE).write_text(damage)
        markdown = write_report(load_experiment(handmade)).markdown.read_text()
        assert "final.json: damaged" in caplog.text
        assert "### The final round" not in markdown
        assert "| winner: trial_002_bbbb | 0.9500 (-0.0185) |" in markdown  # one run


def test_the_final_round_is_on_for_gpu_sweeps_and_off_on_cpus(capsys):
    from tuner.cluster import resolve_final_seeds

    def settings(**given) -> RunSettings:
        return RunSettings(data=Path("d"), base=BASE, name="n", **given)

    assert resolve_final_seeds(settings(gpus_per_trial=0.25)).final_seeds == 2
    assert resolve_final_seeds(settings(gpus_per_trial=0.0)).final_seeds == 0
    assert resolve_final_seeds(settings(gpus_per_trial=1.0, final_seeds=0)).final_seeds == 0
    assert resolve_final_seeds(settings(final_seeds=3)).final_seeds == 3
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    squashed = " ".join(capsys.readouterr().out.split())
    assert "(default: 2 when trials run on GPUs, 0 on CPUs)" in squashed
    assert "--final-top FINAL_TOP configs of the final round besides the reference " in squashed
    assert "besides the reference (default: 3)" in squashed


def test_final_round_flags_are_checked_before_anything_runs(synth_root, tmp_path, capsys):
    common = ["run", "--data", str(synth_root), "--storage", str(tmp_path), "--name", "x"]
    assert main([*common, "--final-seeds", "1"]) == 2
    assert main([*common, "--final-seeds", "2", "--reference"]) == 2
    assert main([*common, "--final-top", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "--final-seeds 1: 0 (no final round) or at least 2" in errors[0]
    assert "a --reference run has one config" in errors[1]
    assert "--final-top must be at least 1" in errors[2]
    assert not (tmp_path / "x").exists()


def test_confirm_refuses_one_seed_and_a_reference_run(handmade, tmp_path, capsys):
    assert main(["confirm", str(handmade), "--seeds", "1"]) == 2  # and one split
    settings = RunSettings(
        data=tmp_path, base=BASE, storage=str(tmp_path), name="alone", reference_only=True
    )
    alone = Path(settings.experiment_dir)
    alone.mkdir()
    records.save_settings(settings, alone / layout.SETTINGS_FILE)
    assert main(["confirm", str(alone)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "--seeds × --split-seeds must be at least 2" in errors[0]
    assert "is a --reference run" in errors[1]
    assert not (tmp_path / "alone-confirm").exists()


def test_an_experiment_in_a_bucket_reads_reports_and_confirms_as_a_local_one(
    handmade, s3_storage, tmp_path, monkeypatch, capsys
):
    """The same experiment, copied to s3://: read from a local mirror (no weights, no
    states), the same trials, best and reference; its report is uploaded beside it, and a
    confirm run would go beside it in the bucket."""
    from results import storage
    from tuner.retrain import confirm_settings

    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "reader-cache"))
    (handmade / "trial_001_aaaa" / "model.pt").write_bytes(b"weights")
    location = storage.join(s3_storage, "handmade")
    storage.upload_folder(handmade, location)
    local, remote = load_experiment(handmade), load_experiment(location)
    assert remote.location == location and remote.is_remote
    assert remote.path.is_relative_to(tmp_path / "reader-cache")
    assert [t.name for t in remote.trials] == [t.name for t in local.trials]
    assert [t.state for t in remote.trials] == [t.state for t in local.trials]
    assert (remote.best.name, remote.reference.name) == (local.best.name, local.reference.name)
    assert not (remote.path / "trial_001_aaaa" / "model.pt").exists()  # fetched on demand
    fetched = remote.trial_file(remote.reference, "model.pt")
    assert fetched.read_bytes() == b"weights"

    assert main(["report", location]) == 0
    assert f"copied:  {location}/report/" in capsys.readouterr().out
    assert storage.is_file(storage.join(location, "report", "report.md"))
    assert storage.is_file(storage.join(location, "report", "trials.csv"))
    # Its report names it, and what is in it, by the bucket's URIs, never the local mirror.
    markdown = storage.read_bytes(storage.join(location, "report", "report.md")).decode()
    assert f"`{location}`: a sweep" in markdown
    assert f"Optuna study: `{storage.join(location, 'handmade.sqlite')}`" in markdown
    assert f"weights: `{storage.join(location, 'trial_002_bbbb', 'model.pt')}`" in markdown
    assert str(tmp_path) not in markdown
    # The uploaded files are the mirror's own: the next command reads none of them back.
    mirrored = storage.list_files(storage.join(location, "report"))
    assert {"report.md", "trials.csv"} <= set(mirrored)
    assert not any(
        storage.stale(info, remote.path / "report" / name) for name, info in mirrored.items()
    )

    settings = confirm_settings(
        remote, runs=4, address=None, cpus_per_trial=None, gpus_per_trial=None
    )
    assert settings.experiment_dir == storage.join(s3_storage, "handmade-confirm")


def test_pick_cases_median_and_worst_lesion_and_a_typical_lesion_free_one():
    dice = np.array([0.5, np.nan, 0.9, 0.1, np.nan, np.nan])
    area = np.array([9, 400, 9, 9, 0, 50])  # lesion-free: 400 (the first), 0 (the cleanest), 50
    cases = pick_cases(dice, area)
    assert [(c.label, c.index) for c in cases] == [("median", 0), ("worst", 3), ("lesion-free", 5)]
    assert cases[0].rule == "median Dice of the 3 test images with a lesion"
    assert cases[2].rule == "median predicted area of the 3 lesion-free test images"
    # An even count: the upper middle one, so that the median is not also the worst.
    assert [c.index for c in pick_cases(np.array([0.8, 0.2]), np.zeros(2))] == [0, 1]
    assert [c.label for c in pick_cases(np.array([0.4]), np.zeros(1))] == ["median"]
    assert pick_cases(np.array([]), np.array([])) == []


def test_report_says_which_rule_chose_each_example(handmade, synth_root, monkeypatch, tmp_path):
    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "reader-cache"))
    settings = handmade / layout.SETTINGS_FILE
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "data": str(synth_root)}))
    paths = write_report(
        load_experiment(handmade), read_images=functools.partial(load_busi, progress=False)
    )
    assert _is_png(paths.directory / "examples.png")
    # Dice 0.9, 0.5, 0.7 and one lesion-free image (the hand-made selection.npz).
    assert (
        "Chosen by rule: median, malignant (1): the median Dice of the 3 test images with a "
        "lesion; worst, benign (2): the lowest Dice of the 3 test images with a lesion; "
        "lesion-free, normal (1): the median predicted area of the 1 lesion-free test images."
    ) in paths.markdown.read_text()


def test_report_names_no_absolute_local_path(handmade, tmp_path):
    paths = write_report(load_experiment(handmade))
    markdown = paths.markdown.read_text()
    for prefix in {str(tmp_path), str(tmp_path.resolve())}:
        assert prefix not in markdown
    assert "`handmade`: a sweep" in markdown  # the experiment by its folder's name
    assert "in folder `gone`" in markdown  # data.json's path by the folder's name
    assert "the data folder data-that-is-gone is gone" in markdown
    assert "- best trial's selected weights: `trial_002_bbbb/model.pt`" in markdown
    assert "- Optuna study: `handmade.sqlite`" in markdown


def test_device_time_is_shown_only_when_a_trial_ran_on_a_gpu(handmade):
    start = {"node_id": "n", "gpu_ids": [0], "device": "cuda:0", "resumed_after_epoch": 0}
    (handmade / "trial_002_bbbb" / "placement.jsonl").write_text(json.dumps(start) + "\n")
    markdown = write_report(load_experiment(handmade)).markdown.read_text()
    assert "| run time | device time | searched values |" in markdown
    assert "| 30 s | 30 GPU·s |" in markdown  # 3 epochs of 10 s on its one GPU
    assert "| 30 s | 30 CPU·s |" in markdown  # the reference trial: on the 1 CPU it held


def test_learning_curve_legend_names_only_the_lines_drawn(handmade):
    # The errored trial reported no epoch: no line, so no "errored" entry.
    assert list(curve_legend(load_experiment(handmade))) == [
        "best trial (B)",
        "reference trial (R)",
        "finished",
        "stopped early",
        "interrupted",
    ]
    (handmade / "trial_001_aaaa" / "result.json").write_text("")  # the reference: no rows
    experiment = load_experiment(handmade)
    assert experiment.reference.name == "trial_001_aaaa" and not experiment.reference.rows
    assert list(curve_legend(experiment)) == [
        "best trial (B)",
        "finished",
        "stopped early",
        "interrupted",
    ]


# --- the statistics: results.intervals and results.confirm ----------------------------


def test_t_interval_known_values():
    interval = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2 df) x sd 1 / sqrt(3)
    assert interval.mean == pytest.approx(2.0)
    assert (interval.low, interval.high) == pytest.approx((2 - half, 2 + half), abs=1e-5)
    assert interval.n == 3
    single = t_interval([0.4])
    assert single.mean == 0.4 and math.isnan(single.low) and math.isnan(single.high)


def test_verdicts_in_words():
    assert verdict(Interval(0.05, 0.01, 0.09, 3)) == "better"
    assert verdict(Interval(-0.05, -0.09, -0.01, 3)) == "worse"
    assert verdict(Interval(0.01, -0.02, 0.04, 3)) == "not distinguishable"
    assert verdict(Interval(-0.05, -0.09, -0.01, 3), "loss") == "better"  # lower is better
    assert verdict(Interval(0.5, math.nan, math.nan, 1)) == "not distinguishable"


def _seeded(values: list[float], split_seed: int = 0) -> list[Scores]:
    """Runs with a recorded test Dice and no per-image records."""
    return [Scores(split_seed, {"dice": v, "loss": 1 - v}) for v in values]


def test_seed_intervals_are_student_and_welch_never_paired_by_seed():
    from scipy import stats

    best, reference = [0.80, 0.83, 0.84], [0.70, 0.72, 0.74]
    one = estimate("dice", _seeded(best))
    student = t_interval(best)
    assert (one.mean, one.low, one.high) == pytest.approx((student.mean, student.low, student.high))
    assert one.covers == "training seeds" and one.n == 3
    # Two configs' runs with the same seed are not paired: Welch's interval of the means.
    welch = stats.ttest_ind(best, reference, equal_var=False).confidence_interval(0.95)
    difference = estimate("dice", _seeded(best), _seeded(reference))
    assert difference.mean == pytest.approx(np.mean(best) - np.mean(reference))
    assert (difference.low, difference.high) == pytest.approx((welch.low, welch.high))
    # The loss: lower is better.
    assert verdict(estimate("loss", _seeded(best), _seeded(reference)), "loss") == "better"


def test_a_bootstrap_resamples_whole_near_duplicate_groups():
    """40 test images in 20 pairs of near-duplicates that score alike: resampled singly
    the pairs count as 40 draws, and the interval is about sqrt(2) too narrow."""
    rng = np.random.default_rng(3)
    dice = np.repeat(rng.uniform(0.3, 0.9, 20), 2)
    names = tuple(f"benign ({i})" for i in range(40))
    pairs = np.repeat(np.arange(20), 2)
    grouped = estimate(
        "dice_per_image", [Scores(0, {"dice_per_image": dice.mean()}, names, pairs, None, dice)]
    )
    single = estimate(
        "dice_per_image", [Scores(0, {"dice_per_image": dice.mean()}, names, None, None, dice)]
    )
    assert grouped.mean == single.mean == pytest.approx(dice.mean())
    ratio = (grouped.high - grouped.low) / (single.high - single.low)
    assert ratio == pytest.approx(math.sqrt(2), rel=0.05)
    assert grouped.covers == "test-image groups, not seeds (one run per config)"
    # Seeded: the same draws every time, and for every run scored on these images.
    index, weights = draws(pairs)
    assert weights.shape == (10_000, 20) and (weights.sum(axis=1) == 20).all()
    assert np.array_equal(draws(pairs)[1], weights)


def test_pooled_metrics_of_resampled_counts_follow_the_trainables_rules():
    """A resample that draws every group once gives the pooled metrics trainable.metrics
    computes (zero-division rules included: an image with nothing to find, nothing found)."""
    from trainable.metrics import compute_metrics

    rng = np.random.default_rng(0)
    masks = rng.random((5, 16, 16)) < 0.2
    masks[4] = False  # lesion-free
    probs = np.clip(masks * 0.7 + rng.random((5, 16, 16)) * 0.5, 0, 1)
    probs[4] = 0.0  # and nothing predicted
    predicted = probs > 0.5
    counts = np.stack(
        [
            (predicted & masks).sum((1, 2)),
            (predicted & ~masks).sum((1, 2)),
            (~predicted & masks).sum((1, 2)),
        ],
        axis=1,
    )
    scores = Scores(0, {}, tuple("abcde"), None, counts)
    once = np.ones((1, 5), dtype=np.int64)
    expected = compute_metrics(probs, masks.astype(np.uint8))
    for metric in ("dice", "f1", "iou", "precision", "recall"):
        assert resampled(metric, scores, np.arange(5), once)[0] == pytest.approx(expected[metric])
    empty = Scores(0, {}, ("a",), None, np.array([[0, 0, 0]]))
    for metric in ("dice", "iou", "precision", "recall"):
        assert resampled(metric, empty, np.arange(1), np.ones((1, 1), dtype=np.int64))[0] == 1.0


def test_seed_and_test_noise_add_and_splits_count():
    names = ("a", "b", "c", "d")
    # Three runs alike image by image: no seed noise, so the interval is the bootstrap's.
    alike = [Scores(0, {"dice": 0.7}, names, np.array([0, 0, 1, 2]), COUNTS) for _ in range(3)]
    three, one = estimate("dice", alike), estimate("dice", alike[:1])
    assert (three.low, three.high) == pytest.approx((one.low, one.high))
    assert three.high - three.low > 0.1  # 4 test images in 3 groups: wide
    assert (three.covers, one.covers) == (
        "training seeds, test-image groups",
        "test-image groups, not seeds (one run per config)",
    )
    # Two splits whose differences are 0.1 and 0.3: the spread between them dominates.
    a = _seeded([0.60, 0.60], 0) + _seeded([0.80, 0.80], 1)
    b = _seeded([0.50, 0.50], 0) + _seeded([0.50, 0.50], 1)
    difference = estimate("dice", a, b)
    half = 12.7062047 * 0.1  # t(0.975, 1 df) x sd 0.1414 / sqrt(2)
    assert difference.mean == pytest.approx(0.2)
    assert (difference.low, difference.high) == pytest.approx((0.2 - half, 0.2 + half))
    assert difference.covers.startswith("the spread between 2 splits")


def test_the_winner_is_picked_on_validation_and_a_tie_keeps_the_reference():
    candidates = [
        confirm.Candidate("reference", "trial_000", 3, {"lr": 1e-4}),
        confirm.Candidate("best", "trial_004", 1, {"lr": 1e-3}),
    ]

    def run(label: str, seed: int, objective: float) -> Run:
        test = 0.9 if label == "reference" else 0.5  # the reference is better on test
        return Run(label, seed, f"{label}{seed}", "finished", objective, _seeded([test])[0])

    runs = [run("reference", 1, 0.60), run("reference", 2, 0.64)]
    tied = [*runs, run("best", 1, 0.70), run("best", 2, 0.54)]  # means 0.62 and 0.62
    tie = confirm.pick_winner(candidates, tied, "selected_heldout_dice", "max")
    assert tie.label == "reference"
    ahead = [*runs, run("best", 1, 0.70), run("best", 2, 0.56)]  # 0.63: on validation
    winner = confirm.pick_winner(candidates, ahead, "selected_heldout_dice", "max")
    assert winner.label == "best" and winner.trial == "trial_004"
    assert winner.validation["best"].mean == pytest.approx(0.63)
    assert winner.validation["best"].n == 2
    lower = confirm.pick_winner(candidates, ahead, "selected_heldout_loss", "min")
    assert lower.label == "reference"
    assert confirm.primary_metric("selected_heldout_dice") == "dice"
    assert confirm.primary_metric("best_combined_loss") == "loss"


def test_the_fold_spread_is_the_sample_sd():
    from results.keys import OBJECTIVE_FOLD_STD
    from trainable.engine import EpochReport
    from trainable.trial_records import to_tune_metrics

    def report(dice: float, folds: tuple = ()) -> EpochReport:
        metrics = {"loss": 0.5, **dict.fromkeys(METRIC_KEYS, 0.6), "dice": dice}
        return EpochReport(
            epoch=1, train_loss=0.5, heldout_loss=0.5, combined_loss=0.5, heldout=metrics,
            heldout_predictions=np.zeros((0, 1, 1), bool), lr=1e-4, seconds=1.0,
            train_seconds=1.0, images_per_second=1.0, peak_gpu_bytes=math.nan, improved=True,
            best_epoch=1, best_combined_loss=0.5, selected_heldout=metrics, test_loss=0.5,
            test=metrics, threshold=0.5, folds=folds,
        )  # fmt: skip

    whole = report(0.6, tuple(report(d) for d in (0.5, 0.6, 0.7)))
    spread = to_tune_metrics(whole, "selected_heldout_dice")[OBJECTIVE_FOLD_STD]
    assert spread == pytest.approx(0.1)  # the population SD would be 0.0816


# --- a real experiment, through Ray ----------------------------------------------------


@pytest.fixture(scope="module")
def real_sweep(synth_root, tmp_path_factory) -> Path:
    """A 3-trial FIFO sweep and its final round (the reference and the best config, 2
    fresh seeds each), through the command line; what it printed is in run-output.txt
    beside it."""
    root = tmp_path_factory.mktemp("report")
    flags = {
        "--data": synth_root,
        "--encoder": "resnet18",
        "--encoder-weights": "none",
        "--image-size": 32,
        "--epochs": 2,
        "--trials": 3,
        "--scheduler": "fifo",
        "--storage": root,
        "--name": "small",
        "--cache-dir": root / "cache",
        "--final-seeds": 2,
        "--final-top": 1,
    }
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            assert main(["run", *(str(w) for pair in flags.items() for w in pair)]) == 0
    finally:
        ray.shutdown()
    (root / "run-output.txt").write_text(printed.getvalue())
    return root / "small"


@pytest.mark.slow
def test_report_of_a_real_sweep(real_sweep, synth_root, capsys):
    ran = (real_sweep.parent / "run-output.txt").read_text()
    assert "test metrics: the final round's winner's, below" in ran  # not the best trial's
    assert "final round: reference, best, 2 fresh seeds each" in ran and "**Winner**" in ran
    final = json.loads((real_sweep / "final.json").read_text())
    assert final["kind"] == "final" and final["seeds"] == [1, 2] and final["split_seeds"] == [0]
    assert len(final["runs"]) == 4 and all(r["state"] == "finished" for r in final["runs"])
    assert final["winner"]["label"] in ("reference", "best")
    assert final["primary"] == {"metric": "dice", "objective": "selected_heldout_dice"}
    (comparison,) = final["comparisons"]
    assert comparison["dice"]["covers"] == "training seeds, test-image groups"
    assert final["protocol"]["test_groups"]["0"]["images"] == 9
    retrained = sorted(p.name for p in (real_sweep.parent / "small-final").glob("trial_*"))
    assert [name[:9] for name in retrained] == [f"trial_{i:03d}" for i in range(4)]
    with np.load(next(real_sweep.glob("trial_*")) / "selection.npz") as selection:
        assert selection["groups"].shape == selection["names"].shape
    # `run --resume` continues the final round: a finished one is not trained again.
    from results.confirm import choose_candidates
    from tuner.retrain import final_round

    experiment = load_experiment(real_sweep)
    settings = dataclasses.replace(experiment.settings, resume=True)
    epochs = {
        p: (p / "result.json").read_text()
        for p in (real_sweep.parent / "small-final").glob("trial_*")
    }
    try:
        again = final_round(settings, experiment, choose_candidates(experiment, 1))
    finally:
        ray.shutdown()
    assert {p: (p / "result.json").read_text() for p in epochs} == epochs
    written = again.to_json()
    assert written["winner"] == final["winner"] and written["runs"] == final["runs"]

    assert main(["report", str(real_sweep)]) == 0
    printed = capsys.readouterr().out
    report = real_sweep / "report"
    markdown = (report / "report.md").read_text()
    for name in (
        "comparison.png",
        "learning_curves.png",
        "roc_pr.png",
        "history.png",
        "parallel_coordinates.png",
        "examples.png",
    ):
        assert _is_png(report / name), name
        assert f"]({name})" in markdown
    assert "importance needs ≥" in markdown and "this sweep has 3" in markdown
    assert not (report / "importance.png").exists()
    assert str(real_sweep.parent) not in markdown and str(synth_root) not in markdown
    assert "### The final round" in markdown and "mean of 2 runs" in markdown
    with open(report / "trials.csv") as handle:
        assert not any(c.startswith("test_") for c in next(csv.reader(handle)))
    trials = sorted(p.name for p in real_sweep.glob("trial_*"))
    assert len(trials) == 3
    for name in trials:
        assert name in markdown and name in printed
    for value in PUBLISHED:
        assert value in markdown
        assert value in printed or value == "0.2364"  # the paper's loss: not beside ours
    assert "R  trial_000_" in printed or "BR trial_000_" in printed  # the reference point
    assert all(m in printed for m in COMPARABLE)


@pytest.mark.slow
def test_confirm_over_two_splits_end_to_end(real_sweep, capsys):
    try:
        assert main(["confirm", str(real_sweep), "--seeds", "1", "--split-seeds", "2"]) == 0
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    assert "Verdict" in printed or "the search found nothing better" in printed
    result = json.loads((real_sweep / "report" / "confirm.json").read_text())
    assert result["seeds"] == [1]  # fresh: the sweep trained with seed 0
    assert result["split_seeds"] == [0, 1]  # the sweep's split, then another draw
    assert (real_sweep.parent / "small-confirm").is_dir()
    assert (real_sweep.parent / "small-confirm-split1").is_dir()
    assert [c["label"] for c in result["candidates"]] == ["reference", "best"]
    assert len(result["runs"]) == 4 and all(r["state"] == "finished" for r in result["runs"])
    assert sorted(r["split_seed"] for r in result["runs"]) == [0, 0, 1, 1]
    for label in ("reference", "best"):
        for metric in confirm.METRICS:
            interval = result["summary"][label][metric]
            assert interval["n"] == 2 and interval["low"] <= interval["mean"] <= interval["high"]
    (comparison,) = result["comparisons"]
    covers = comparison["dice"]["covers"]
    assert covers == "the spread between 2 splits (seeds and test images within it)" or (
        covers == "test-image groups, not seeds (one run per config)"
    )
    assert comparison["dice"]["verdict"] in ("better", "worse", "not distinguishable")
    assert {r["seed"] for r in result["runs"]} == {1}
    write_report(load_experiment(real_sweep))
    assert "Confirmation over seeds" in (real_sweep / "report" / "report.md").read_text()


def test_the_reporter_imports_neither_ray_nor_torch_nor_the_tuner():
    """`results` reads an experiment offline: a fresh interpreter that imports the
    reporter loads none of the training stack, and no package cycle holds it there."""
    import subprocess
    import sys

    code = (
        "import sys, results.report, results.confirm, results.experiment, results.storage; "
        "print(sorted(m for m in ('ray', 'torch', 'tuner') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
