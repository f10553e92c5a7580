"""`predict`, `export` and `evaluate` on bad input: one `error:` line, nothing lost. A
hand-made experiment with an untrained model (no Ray, no training), so these are fast."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from results import layout, records
from results.config import TrainConfig
from results.errors import UserError
from results.experiment import load_experiment
from results.keys import METRIC_KEYS
from results.settings import RunSettings
from trainable.model import build_model
from tuner.cli import main
from tuner.inference.evaluate import recorded_part

BASE = TrainConfig.reference().replace(
    encoder="resnet18", encoder_weights="none", image_size=32, batch_size=8, epochs=1
)
TRIAL = "trial_001_aaaa"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return make_experiment(tmp_path_factory.mktemp("handmade"))


def make_experiment(root: Path) -> Path:
    """One trial whose selected model (random weights) and files are what a run writes;
    test_onnx.py uses it too."""
    settings = RunSettings(data=root / "gone", base=BASE, storage=str(root), name="handmade")
    folder = Path(settings.experiment_dir)
    folder.mkdir()
    records.save_settings(settings, folder / layout.SETTINGS_FILE)
    trial = folder / TRIAL
    trial.mkdir()
    records.save_config(BASE, trial / layout.CONFIG_FILE)
    row = {"epoch": 1, "training_iteration": 1, settings.metric: 0.5}
    (trial / layout.RESULT_FILE).write_text(json.dumps(row) + "\n")
    metrics = {m: 0.5 for m in METRIC_KEYS}
    counts = {"train": 28, "validation": 8, "test": 8}
    (trial / layout.METRICS_FILE).write_text(
        json.dumps(
            {
                "protocol": {
                    "selection": "validation",
                    "split": "grouped",
                    "split_seed": 0,
                    "counts": counts,
                },  # fmt: skip
                "selected_epoch": 1,
                "models": [layout.MODEL_FILE],
                "combined_loss": 0.5,
                "test_loss": 0.5,
                "test": metrics,
                "heldout": {"loss": 0.5, **metrics},
            }
        )
    )
    split = {"policy": "grouped", "seed": 0, "counts": counts, "sha256": "0" * 64}
    (trial / layout.SPLIT_FILE).write_text(json.dumps(split))
    torch.manual_seed(0)
    torch.save(build_model(BASE).state_dict(), trial / layout.MODEL_FILE)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (height, width) in {"a": (30, 40), "b": (48, 36)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(
            folder / f"{name}.png"
        )
    return folder


def _one_error_line(capsys, *names: object) -> str:
    """The command's one `error:` line (after a progress bar, if any), which names every
    given path; no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    for name in names:
        assert str(name) in errors[0], (name, err)
    return errors[0]


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write into: read-only by its mode, or, for root (whom
    modes do not stop, as in these containers), one below a regular file (ENOTDIR)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "folder"


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir())


# --- export ------------------------------------------------------------------------------


def test_export_writes_a_model_that_predict_uses(experiment, images, tmp_path, capsys):
    exported = tmp_path / "model.pt"
    assert main(["export", str(experiment), "--out", str(exported)]) == 0
    card = json.loads(exported.with_suffix(".json").read_text())
    assert card["file"] == "model.pt" and card["trial"] == TRIAL
    assert card["threshold"] == 0.5  # the config's: metrics.json records none here
    out = tmp_path / "out"
    assert main(["predict", str(exported), "--images", str(images), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*_pred.png")) == ["a_pred.png", "b_pred.png"]
    card_file = exported.with_suffix(".json")  # the card in the model's place: one line
    argv = ["predict", str(card_file), "--images", str(images), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    _one_error_line(capsys, card_file, "model card")


def test_an_export_carries_the_threshold_its_trial_chose_on_validation(tmp_path):
    """Under --threshold auto the trial scored at a threshold chosen on validation, which
    metrics.json records: the card (and so predict on the export) uses it."""
    experiment = make_experiment(tmp_path)
    metrics_file = next(experiment.glob("trial_*")) / layout.METRICS_FILE
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "threshold": 0.7}))
    exported = tmp_path / "chosen.pt"
    assert main(["export", str(experiment), "--out", str(exported)]) == 0
    assert json.loads(exported.with_suffix(".json").read_text())["threshold"] == 0.7


@pytest.mark.parametrize("name", ["card.json", "card.JSON"])
def test_export_refuses_an_out_name_that_its_card_would_overwrite(
    experiment, tmp_path, capsys, name
):
    out = tmp_path / name
    assert main(["export", str(experiment), "--out", str(out)]) == 2
    _one_error_line(capsys, out, "--out")
    assert list(tmp_path.iterdir()) == []  # neither a model nor a card


@pytest.mark.parametrize("damage", ["missing", "cut short", "binary", "no hash", "newer"])
def test_export_with_a_damaged_split_record_is_one_line_and_writes_nothing(
    tmp_path, capsys, damage
):
    experiment = make_experiment(tmp_path)
    split = next(experiment.glob("trial_*")) / layout.SPLIT_FILE
    written = json.loads(split.read_text())
    if damage == "missing":
        split.unlink()
    elif damage == "cut short":
        split.write_text(split.read_text()[:20])
    elif damage == "binary":
        split.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "no hash":
        split.write_text(json.dumps({k: v for k, v in written.items() if k != "sha256"}))
    else:
        split.write_text(json.dumps({**written, "format": 7}))
    out = tmp_path / "exported" / "model.pt"
    out.parent.mkdir()
    assert main(["export", str(experiment), "--out", str(out)]) == 2
    line = _one_error_line(capsys, split)
    assert "upgrade busi-tune" in line if damage == "newer" else "restore" in line
    assert list(out.parent.iterdir()) == []


def test_export_into_an_unwritable_folder_is_one_line(experiment, tmp_path, capsys):
    out = _unwritable_folder(tmp_path) / "model.pt"
    before = _listing(tmp_path)
    assert main(["export", str(experiment), "--out", str(out)]) == 2
    _one_error_line(capsys, "--out", out.parent)
    assert _listing(tmp_path) == before


def test_onnx_without_its_packages_or_damaged_is_one_line(
    experiment, images, tmp_path, capsys, monkeypatch
):
    exported = tmp_path / "model.onnx"
    export = ["export", str(experiment), "--format", "onnx", "--out", str(exported)]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnx", None)  # as if not installed: import fails
        assert main(export) == 2
    _one_error_line(capsys, "--format onnx", 'pip install "busi-tune[onnx]"')
    assert list(tmp_path.iterdir()) == []
    assert main(export) == 0
    capsys.readouterr()
    predict = ["predict", str(exported), "--images", str(images), "--out", str(tmp_path / "o")]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)
        assert main(predict) == 2
    _one_error_line(capsys, exported, 'pip install "busi-tune[onnx]"')
    exported.write_bytes(exported.read_bytes()[:1000])  # cut short, as by a full disk
    assert main(predict) == 2
    _one_error_line(capsys, exported, "not an ONNX export")


# --- predict -----------------------------------------------------------------------------


def test_predict_out_that_is_a_file_is_kept_and_refused(experiment, images, tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("precious")
    assert main(["predict", str(experiment), "--images", str(images), "--out", str(out)]) == 2
    _one_error_line(capsys, out, "--out")
    assert out.read_text() == "precious"


def test_predict_into_an_unwritable_folder_is_one_line(experiment, images, tmp_path, capsys):
    out = _unwritable_folder(tmp_path)
    assert main(["predict", str(experiment), "--images", str(images), "--out", str(out)]) == 2
    _one_error_line(capsys, out, "--out")


def test_predict_that_cannot_write_one_output_is_one_line(experiment, images, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "b_pred.png").mkdir(parents=True)  # a folder where predict writes b's mask
    assert main(["predict", str(experiment), "--images", str(images), "--out", str(out),
                 "--overwrite"]) == 2  # fmt: skip
    _one_error_line(capsys, out / "b_pred.png")
    assert (out / "b_pred.png").is_dir()


def test_predict_with_a_damaged_model_card_is_one_line(experiment, images, tmp_path, capsys):
    exported = tmp_path / "model.pt"
    assert main(["export", str(experiment), "--out", str(exported)]) == 0
    card = exported.with_suffix(".json")
    card.write_text(card.read_text()[:100])  # cut short, as by a full disk
    out = tmp_path / "out"
    assert main(["predict", str(exported), "--images", str(images), "--out", str(out)]) == 2
    _one_error_line(capsys, card)


def test_predictions_csv_escapes_cells_a_spreadsheet_would_run(experiment, tmp_path):
    """OWASP's CSV injection advice: a cell that starts with = + - @ tab or CR gets a
    leading single quote, so a spreadsheet shows it as text instead of running it."""
    folder = tmp_path / "images"
    folder.mkdir()
    names = ["=cmd", "+sum", "-1+1", "@call", "\ttab", "\rreturn", "plain", "a=b"]
    pixels = np.full((20, 24), 128, dtype=np.uint8)
    for name in names:
        Image.fromarray(pixels).save(folder / f"{name}.png")
    out = tmp_path / "out"
    assert main(["predict", str(experiment), "--images", str(folder), "--out", str(out)]) == 0
    assert (out / "=cmd_pred.png").is_file()  # the files keep their names
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    written = sorted(row["name"] for row in rows)
    expected = ["'=cmd", "'+sum", "'-1+1", "'@call", "'\ttab", "'\rreturn", "plain", "a=b"]
    assert written == sorted(expected)
    assert {(row["width"], row["height"]) for row in rows} == {("24", "20")}


# --- a damaged model.pt ------------------------------------------------------------------


def _damaged(experiment: Path, tmp_path: Path, damage: str) -> Path:
    copy = tmp_path / experiment.name
    shutil.copytree(experiment, copy)
    model = copy / TRIAL / layout.MODEL_FILE
    raw = model.read_bytes()
    model.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"not a model\n" * 50,
                       "empty": b""}[damage])  # fmt: skip
    return copy


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_damaged_model_file_is_one_line(
    experiment, images, synth_root, tmp_path, capsys, command, damage
):
    copy = _damaged(experiment, tmp_path, damage)
    out = tmp_path / "out"
    argv = {
        "evaluate": ["evaluate", str(copy), "--data", str(synth_root)],
        "predict": ["predict", str(copy), "--images", str(images), "--out", str(out)],
        "export": ["export", str(copy), "--out", str(out / "model.pt")],
    }[command]
    assert main(argv) == 2
    _one_error_line(capsys, copy / TRIAL / layout.MODEL_FILE, "--trial")
    if command == "export":
        assert not out.exists()


@pytest.mark.parametrize("damage", ["missing", "binary", "no side"])
def test_evaluate_names_the_split_record_it_cannot_read(tmp_path, damage):
    """evaluate, export and predict read split.json through one reader (Trial.split)."""
    folder = make_experiment(tmp_path)
    split = folder / TRIAL / layout.SPLIT_FILE
    if damage == "missing":
        split.unlink()
    elif damage == "binary":
        split.write_bytes(b"\xff\xfe\x00garbage")
    (trial,) = load_experiment(folder).trials
    with pytest.raises(UserError) as raised:
        recorded_part(trial, "validation")  # the hand-made split names no validation part
    message = str(raised.value)
    assert message.startswith(f"{split}: ") and "\n" not in message
    reason = {"missing": "missing", "binary": "damaged (", "no side": "damaged (no validation"}
    assert message.startswith(f"{split}: {reason[damage]}")
    assert message.endswith("restore the file from a copy, or evaluate another --trial")
