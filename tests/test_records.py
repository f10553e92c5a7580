"""Typed records: each file's one writer and reader agree, a newer format is refused in one
line, and an experiment written before records carried a format still reads.

tests/data/experiment_before_formats/ was made by main at c0a3410, the commit before
records: `data synth` (8 benign, 4 malignant, 4 normal), then `run --encoder resnet18
--encoder-weights none --image-size 32 --epochs 3 --trials 3 --scheduler fifo
--final-seeds 0`; its small files kept (no weights, TensorBoard or Tune state), and a
failure.json and a checkpoint's state.json added by that commit's own writers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from results import records
from results.compare import COMPARED
from results.config import TrainConfig
from results.experiment import State, load_experiment
from results.layout import (
    CONFIG_FILE,
    DATA_FILE,
    FAILURE_FILE,
    METRICS_FILE,
    PLACEMENT_FILE,
    POINTER_FILE,
    SELECTION_FILE,
    SETTINGS_FILE,
    SPLIT_FILE,
)
from results.records import (
    DataProvenance,
    Failure,
    NewerFormatError,
    Origin,
    Outcome,
    Placement,
    Selected,
    SelectionArrays,
    SplitManifest,
    StatePointer,
    read_config,
    read_selection,
)
from results.report import write_report
from tuner.cli import main

BEFORE_FORMATS = Path(__file__).parent / "data" / "experiment_before_formats"


@pytest.fixture
def old_experiment(tmp_path) -> Path:
    """A copy: readers write report/ inside the experiment."""
    return Path(shutil.copytree(BEFORE_FORMATS, tmp_path / "old"))


def test_an_experiment_from_before_formats_still_reads(old_experiment):
    experiment = load_experiment(old_experiment)
    assert experiment.settings.base.encoder == "resnet18" and experiment.settings.trials == 3
    assert [t.number for t in experiment.trials] == [0, 1, 2]
    assert all(t.status is State.FINISHED for t in experiment.trials)
    assert experiment.reference is experiment.trials[0]  # the base config, enqueued first
    assert experiment.best is not None and experiment.best.objective is not None
    assert experiment.provenance == DataProvenance(
        "/tmp/oldfx/data", "be87bb69b16fe85addea4b57bb4c1b20", images=16, synthetic=True
    )
    for trial in experiment.trials:
        selected = trial.selected
        assert selected is not None and 1 <= selected.epoch <= 3
        assert selected.models == ("model.pt",) and selected.threshold == 0.5
        assert selected.rules["evaluation_size"] == 32
        assert set(selected.test) >= {"loss", "dice", "iou"}
        start = trial.last_start
        assert start is not None and start.device == "cpu" and start.gpu_ids == ()
        assert start.startup["pid"] > 0 and start.resumed_after_epoch == 0
        arrays = trial.selection()
        assert arrays is not None and arrays.predictions.shape[1:] == (32, 32)
        assert arrays.groups is not None and arrays.per_image_hd95 is not None
    # The two records only a failure or a checkpoint writes, as that code wrote them.
    trial = old_experiment / experiment.trials[2].name
    failure = Failure.from_text((trial / FAILURE_FILE).read_text(), trial / FAILURE_FILE)
    assert failure.reason == "ValueError: a deterministic failure, recorded by the old writer"
    pointer = trial / "checkpoint_000001" / POINTER_FILE
    assert StatePointer.from_text(pointer.read_text(), pointer) == StatePointer(
        "state/epoch_0001.pt", 1
    )
    # The split and config records, as that code wrote them (format 0).
    path = old_experiment / experiment.trials[0].name / SPLIT_FILE
    split = SplitManifest.from_text(path.read_text(), path)
    assert split.policy == "grouped" and len(split.sha256) == 64 and split.fold is None
    assert set(split.parts().values()) == {"train", "validation", "test"}
    assert len(split.parts()) == sum(split.counts.values())
    path = old_experiment / experiment.trials[1].name / CONFIG_FILE
    assert read_config(path.read_text(), path) == experiment.trials[1].config
    # The report of it: every trial in trials.csv, the data's provenance from data.json.
    paths = write_report(experiment)
    assert len(paths.trials_csv.read_text().splitlines()) == 1 + 3
    assert "**data: synthetic** (16 images written by `data synth`" in paths.markdown.read_text()


def test_each_record_reads_what_its_writer_wrote(tmp_path):
    provenance = DataProvenance("/d", "ab", 780, False, ("a warning",), ("benign (269)",))
    assert DataProvenance.from_text(provenance.to_text(), "data.json") == provenance
    assert Failure.from_text(Failure("ValueError: x").to_text(), "f") == Failure("ValueError: x")
    assert StatePointer.from_text(StatePointer("s", 4).to_text(), "p") == StatePointer("s", 4)
    assert Outcome.from_text(Outcome(True, 3).to_text(), "o") == Outcome(True, 3)
    placement = Placement("n", ("0",), "cuda:0", 2, 1.5, "resumed", {"pid": 7, "weights_s": 0.1})
    assert Placement.from_line(placement.to_line(), "p") == placement
    selected = Selected(
        epoch=3,
        selection="validation part (test part locked)",
        split="grouped",
        split_seed=0,
        counts={"train": 10, "validation": 3, "test": 4},
        combined_loss=0.25,
        test={**dict.fromkeys(COMPARED, 0.7), "loss": 0.3},
        models=("model.pt",),
        heldout={"loss": 0.2},
        threshold=0.5,
        rules={"epoch_rule": "lowest 0.2 x train loss + 0.8 x held-out loss", "folds": 1},
    )
    written = json.loads(selected.to_text())
    assert written["format"] == records.SELECTED_FORMAT and written["test_loss"] == 0.3
    assert Selected.from_text(selected.to_text(), "m") == selected
    objective = records.FoldObjective("selected_heldout_dice", (0.5, 0.7), 0.6, 0.1414)
    per_fold = ({"fold": 0, "selected_epoch": 2}, {"fold": 1, "selected_epoch": 3})
    cross_validated = dataclasses.replace(selected, folds=objective, per_fold=per_fold)
    written = json.loads(cross_validated.to_text())
    assert written["objective"]["per_fold"] == [0.5, 0.7] and written["folds"][1]["fold"] == 1
    assert Selected.from_text(cross_validated.to_text(), "m") == cross_validated
    folds = SplitManifest("grouped", 0, None, {"cross-validated": 3, "test": 1}, "ab", test=("d",))
    folds = dataclasses.replace(folds, folds=(("a",), ("b", "c")))
    assert SplitManifest.from_text(folds.to_text(), "s") == folds
    assert folds.parts() == {
        "a": "cross-validated",
        "b": "cross-validated",
        "c": "cross-validated",
        "d": "test",
    }
    config = TrainConfig.reference().replace(lr=3e-4)
    records.save_config(config, tmp_path / CONFIG_FILE)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["format"] == records.CONFIG_FORMAT
    assert read_config((tmp_path / CONFIG_FILE).read_text(), "c") == config
    origin = Origin("host", "ab" * 16, "cd" * 32)
    assert Origin.from_text(origin.to_text(), "origin.json") == origin
    rng = np.random.default_rng(0)
    arrays = SelectionArrays(
        epoch=2,
        names=("a", "b"),
        per_image_dice=np.array([0.5, math.nan]),
        per_image_counts=np.array([[1, 2, 3], [0, 0, 0]]),
        predictions=rng.random((2, 12, 12)) > 0.5,  # a width that is not a multiple of 8
        curves={k: np.linspace(0, 1, 5) for k in ("fpr", "tpr", "precision", "recall")}
        | {"thresholds": np.linspace(1, 0, 5)},
        groups=np.array([0, 1]),
        per_image_hd95=np.array([1.5, math.nan]),
    )
    arrays.write(tmp_path / SELECTION_FILE)
    back = read_selection(tmp_path / SELECTION_FILE)
    assert np.array_equal(back.predictions, arrays.predictions) and back.names == ("a", "b")
    assert np.array_equal(back.per_image_hd95, arrays.per_image_hd95, equal_nan=True)


@pytest.mark.parametrize(
    "name", [SETTINGS_FILE, DATA_FILE, METRICS_FILE, PLACEMENT_FILE, CONFIG_FILE]
)
def test_a_newer_format_is_one_line_that_says_to_upgrade(old_experiment, name, capsys):
    trial = next(old_experiment.glob("trial_000_*"))
    path = old_experiment / name if name in (SETTINGS_FILE, DATA_FILE) else trial / name
    if path.suffix == ".jsonl":
        path.write_text(json.dumps({**json.loads(path.read_text()), "format": 99}) + "\n")
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), "format": 99}))
    assert main(["report", str(old_experiment)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"error: {path}: format 99, written by a newer busi-tune (this one reads up to 1); "
        "upgrade busi-tune to read it\n"
    )
    assert not (old_experiment / "report").exists()


def test_newer_selection_arrays_and_split_files_are_refused(tmp_path):
    path = tmp_path / SELECTION_FILE
    np.savez_compressed(path, format=2, epoch=1)
    with pytest.raises(NewerFormatError, match="format 2, written by a newer busi-tune"):
        read_selection(path)
    with pytest.raises(NewerFormatError, match="format 3, written by a newer busi-tune"):
        SplitManifest.from_text('{"format": 3, "test": []}', SPLIT_FILE)


@pytest.mark.parametrize(
    "read",
    [
        Outcome.from_text,
        Failure.from_text,
        StatePointer.from_text,
        Origin.from_text,
        records.Confirmation.from_text,
        records.ModelCard.from_text,
    ],
)
def test_every_other_record_refuses_a_newer_format(read):
    with pytest.raises(NewerFormatError, match="format 99, written by a newer busi-tune"):
        read('{"format": 99}', "record.json")


def test_a_model_card_without_a_readable_split_copy_still_reads():
    """The split's hashes are optional: predict then calls every image's part unknown."""
    card = {"runtime": "onnx", "input": {"size": 32}, "evaluation_size": 64, "threshold": 0.5}
    for split_images in (None, {"parts": 5}, "garbage"):
        text = records.ModelCard.to_text("onnx", {**card, records.SPLIT_IMAGES: split_images})
        read = records.ModelCard.from_text(text, "card.json")
        assert (read.runtime, read.input_size, read.split_images) == ("onnx", 32, None)
    hashes = {records.SPLIT_IMAGES: {"parts": {"test": ["ab", "cd"]}}}
    text = records.ModelCard.to_text("torchscript", {**card, **hashes})
    assert records.ModelCard.from_text(text, "card.json").split_images == {"test": ["ab", "cd"]}
