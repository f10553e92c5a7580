"""The reporter and the confirm statistics: hand-made experiment folders with known numbers
(no Ray), then a small real sweep and a confirm run through Ray (slow)."""

from __future__ import annotations

import csv
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

from results import confirm, layout
from results.compare import COMPARED
from results.confirm import Interval, Run, bootstrap_mean, t_interval, verdict
from results.experiment import load_experiment
from results.reference import load_reference
from results.report import (
    curve_legend,
    format_terminal_table,
    importance_needs,
    parallel_figure,
    pick_cases,
    varied_params,
    write_report,
)
from results.settings import RunSettings, Scheduler
from search_spaces import get_space
from trainable.config import TrainConfig
from trainable.metrics import METRIC_KEYS
from tuner import sweep
from tuner.cli import main

BASE = TrainConfig.reference().replace(
    encoder="resnet18", encoder_weights="none", image_size=32, batch_size=8, epochs=3
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Per test image: tp, fp, fn (the fourth image is lesion-free, with one false pixel).
COUNTS = np.array([[90, 10, 10], [50, 50, 50], [70, 20, 10], [0, 1, 0]])
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
) -> None:
    trial = experiment / name
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps(params))
    TrainConfig.from_flat({**BASE.to_flat(), **params}).save(trial / "config.json")
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
        per_image_counts=COUNTS,
        predictions=np.packbits(predictions, axis=-1),
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
    layout.save_settings(settings, experiment / layout.SETTINGS_FILE)
    provenance = {"path": "/gone", "content_hash": "0f", "images": 39, "synthetic": True}
    (experiment / layout.DATA_FILE).write_text(json.dumps(provenance))
    reference_point = get_space("reference").reference_point(BASE)
    _write_trial(
        experiment, "trial_001_aaaa", reference_point, [0.9, 0.8, 0.7], _test_metrics(0.80, 0.20)
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


def test_report_of_handmade_experiment(handmade):
    paths = write_report(load_experiment(handmade))
    reference = load_reference()
    with open(paths.trials_csv) as handle:
        rows = {row["trial"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {t.name for t in load_experiment(handmade).trials}
    best = rows["trial_002_bbbb"]
    assert best["marks"] == "B" and rows["trial_001_aaaa"]["marks"] == "R"
    assert float(best["delta_dice"]) == pytest.approx(0.70 - reference.test["dice"])
    assert float(best["delta_loss"]) == pytest.approx(0.30 - reference.test["loss"])
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
    assert "0.7000 (-0.0680)" in markdown  # the best trial's Dice and its delta
    assert "**data: synthetic**" in markdown and "not BUSI" in markdown
    for metric in ("average_precision", "dice_per_image", "normal_fp_rate"):
        assert f"| {metric} |" in markdown
    interval = confirm.pooled_dice_interval(COUNTS)
    assert interval.mean == pytest.approx(2 * 210 / (2 * 210 + 81 + 70))  # pooled counts
    assert f"{interval.low:.3f}–{interval.high:.3f}" in markdown
    assert "The test part holds 4 images" in markdown
    assert "Optuna study: `" in markdown and "selected weights: `" in markdown
    assert "| 30 s | batch_size=8 lr=0.001 optimizer=adam no aug |" in markdown  # CPU: no device
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


def test_confirm_refuses_one_seed_and_a_reference_run(handmade, tmp_path, capsys):
    assert main(["confirm", str(handmade), "--seeds", "1"]) == 2
    settings = RunSettings(
        data=tmp_path, base=BASE, storage=str(tmp_path), name="alone", reference_only=True
    )
    alone = Path(settings.experiment_dir)
    alone.mkdir()
    layout.save_settings(settings, alone / layout.SETTINGS_FILE)
    assert main(["confirm", str(alone)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "--seeds must be at least 2" in errors[0]
    assert "is a --reference run" in errors[1]
    assert not (tmp_path / "alone-confirm").exists()


def test_an_experiment_in_a_bucket_reads_reports_and_confirms_as_a_local_one(
    handmade, s3_storage, tmp_path, monkeypatch, capsys
):
    """The same experiment, copied to s3://: read from a local mirror (no weights, no
    states), the same trials, best and reference; its report is uploaded beside it, and a
    confirm run would go beside it in the bucket."""
    from results import storage
    from tuner.confirm import confirm_settings

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
    paths = write_report(load_experiment(handmade))
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


# --- the confirm statistics ----------------------------------------------------------


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
    assert verdict(Interval(-0.05, -0.09, -0.01, 3), lower_is_better=True) == "better"
    assert verdict(Interval(0.5, math.nan, math.nan, 1)) == "not distinguishable"


def test_bootstrap_clearly_better_and_indistinguishable():
    rng = np.random.default_rng(1)
    better = 0.1 + rng.normal(0, 0.02, size=(3, 40))
    better[:, 5] = np.nan  # an image without a lesion: left out
    interval = bootstrap_mean(better, resamples=2000)
    assert interval.n == 39
    assert 0.09 < interval.mean < 0.11 and interval.low > 0.08
    assert verdict(interval) == "better"
    assert bootstrap_mean(better, resamples=2000) == interval  # seeded
    noise = rng.normal(0, 0.1, size=(3, 40))
    noise -= noise.mean()
    assert verdict(bootstrap_mean(noise, resamples=2000)) == "not distinguishable"


def _run(label: str, seed: int, dice: float, per_image: list[float]) -> Run:
    test = {m: 0.5 for m in confirm.METRICS} | {"dice": dice}
    names = tuple(f"benign ({i})" for i in range(len(per_image)))
    return Run(label, seed, f"trial_{label}_{seed}", "finished", test, names, np.array(per_image))


def test_paired_comparison_per_seed_and_per_image():
    runs = [
        _run("reference", 0, 0.70, [0.6, 0.7, 0.8]),
        _run("reference", 1, 0.72, [0.6, 0.7, 0.8]),
        _run("reference", 2, 0.74, [0.6, 0.7, 0.8]),
        _run("best", 0, 0.80, [0.7, 0.8, 0.9]),
        _run("best", 1, 0.83, [0.7, 0.8, 0.9]),
        _run("best", 2, 0.84, [0.7, 0.8, 0.9]),
    ]
    result = confirm.compare_with_reference(runs, "best")
    dice = result["per_seed"]["dice"]
    differences = [0.10, 0.11, 0.10]
    assert dice["mean"] == pytest.approx(np.mean(differences))
    assert dice["low"] == pytest.approx(t_interval(differences).low)
    assert dice["verdict"] == "better"
    assert result["per_seed"]["loss"]["verdict"] == "not distinguishable"  # all equal: 0
    assert result["per_image_dice"]["mean"] == pytest.approx(0.1)
    assert result["per_image_dice"]["verdict"] == "better"
    assert result["seeds"] == [0, 1, 2]
    summary = confirm.summarise_runs([r for r in runs if r.label == "best"])
    assert summary["dice"].mean == pytest.approx(np.mean([0.80, 0.83, 0.84]))


# --- a real experiment, through Ray ----------------------------------------------------


@pytest.fixture(scope="module")
def real_sweep(synth_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    settings = RunSettings(
        data=synth_root,
        base=BASE.replace(epochs=2),
        trials=3,
        space="reference",
        scheduler=Scheduler.FIFO,
        storage=str(root),
        name="small",
        cache_dir=root / "cache",
    )
    try:
        sweep.run(settings)
    finally:
        ray.shutdown()
    return Path(settings.experiment_dir)


@pytest.mark.slow
def test_report_of_a_real_sweep(real_sweep, synth_root, capsys):
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
    assert (report / "trials.csv").is_file()
    trials = sorted(p.name for p in real_sweep.glob("trial_*"))
    assert len(trials) == 3
    for name in trials:
        assert name in markdown and name in printed
    for value in PUBLISHED:
        assert value in markdown and value in printed
    assert "R  trial_000_" in printed or "BR trial_000_" in printed  # the reference point
    assert all(m in printed for m in COMPARED)


@pytest.mark.slow
def test_confirm_two_seeds_end_to_end(real_sweep, capsys):
    try:
        assert main(["confirm", str(real_sweep), "--seeds", "2"]) == 0
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    assert "Verdict" in printed
    result = json.loads((real_sweep / "report" / "confirm.json").read_text())
    assert result["seeds"] == [1, 2]  # fresh: the sweep trained with seed 0
    assert [c["label"] for c in result["candidates"]] == ["reference", "best"]
    assert len(result["runs"]) == 4 and all(r["state"] == "finished" for r in result["runs"])
    for label in ("reference", "best"):
        for metric in COMPARED:
            interval = result["summary"][label][metric]
            assert interval["n"] == 2 and interval["low"] <= interval["mean"] <= interval["high"]
    (comparison,) = result["comparisons"]
    assert comparison["per_image_dice"]["n"] > 0
    assert comparison["per_image_dice"]["verdict"] in ("better", "worse", "not distinguishable")
    # Every run is a fresh one: no run replays the sweep's own trial (seed 0).
    assert {r["seed"] for r in result["runs"]} == {1, 2}
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
