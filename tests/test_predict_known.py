"""`predict` says what it knows: whether each image is one the model trained, was selected
or tested on (by content, against the experiment's split), and the outline and Dice of a
mask file beside an image. A hand-made experiment on the synthetic set (an untrained
32 px model, no Ray), so these are fast."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from results import layout, records
from results.config import TrainConfig
from results.experiment import load_experiment
from results.keys import METRIC_KEYS
from results.settings import RunSettings, SplitPolicy
from trainable.dataset import discover, read_grey, read_mask
from trainable.model import build_model
from trainable.preprocess import dataset_fingerprint
from trainable.splits import experiment_splits, manifest_of
from tuner.cli import main
from tuner.inference import predict

BASE = TrainConfig.reference().replace(
    encoder="resnet18", encoder_weights="none", image_size=32, batch_size=8, epochs=1
)
TRIAL = "trial_001_aaaa"
SUMMARY = (
    "in_experiment: 2 train, 1 validation, 1 test, 1 unseen; "
    "3 of 5 images were trained or selected on: their results are not a test"
)


def _make_experiment(storage: Path, data: Path, arrays, folds: int = 1) -> Path:
    """One trial as a run writes it: settings naming `data`, its provenance, the split's
    manifest (of `arrays`, the data decoded, as the run makes it) and a selected model
    (random weights)."""
    settings = RunSettings(data=data, base=BASE, storage=str(storage), name="known", folds=folds)
    folder = Path(settings.experiment_dir)
    folder.mkdir(parents=True)
    records.save_settings(settings, folder / layout.SETTINGS_FILE)
    samples = discover(data.resolve())
    provenance = {
        "path": str(data.resolve()),
        "content_hash": dataset_fingerprint(samples, data.resolve()),
        "images": len(samples),
        "synthetic": True,
    }
    (folder / layout.DATA_FILE).write_text(json.dumps(provenance))
    trial = folder / TRIAL
    trial.mkdir()
    records.save_config(BASE, trial / layout.CONFIG_FILE)
    (trial / layout.RESULT_FILE).write_text(
        json.dumps({"epoch": 1, "training_iteration": 1, settings.metric: 0.5}) + "\n"
    )
    metrics = {m: 0.5 for m in METRIC_KEYS}
    protocol = {"selection": "validation", "split": "grouped", "split_seed": 0, "counts": {}}
    (trial / layout.METRICS_FILE).write_text(
        json.dumps(
            {
                "protocol": protocol,
                "selected_epoch": 1,
                "models": [layout.MODEL_FILE],
                "combined_loss": 0.5,
                "test_loss": 0.5,
                "test": metrics,
                "heldout": {"loss": 0.5, **metrics},
            }
        )  # fmt: skip
    )
    splits = experiment_splits(arrays, SplitPolicy.GROUPED, 0, folds, True)
    (trial / layout.SPLIT_FILE).write_text(manifest_of(splits, arrays.names).to_text())
    torch.manual_seed(0)
    torch.save(build_model(BASE).state_dict(), trial / layout.MODEL_FILE)
    return folder


@pytest.fixture(scope="module")
def experiment(synth_root, synth_arrays, tmp_path_factory) -> Path:
    return _make_experiment(tmp_path_factory.mktemp("runs"), synth_root, synth_arrays)


@pytest.fixture(scope="module")
def split(experiment) -> dict:
    return json.loads((experiment / TRIAL / layout.SPLIT_FILE).read_text())


@pytest.fixture(scope="module")
def images(synth_root, split, tmp_path_factory) -> Path:
    """Renamed copies (only content can match): two training images (one saved again as
    grey, so its bytes differ; one with its two mask files beside it), a validation image,
    a test image with its mask, and a new image."""
    samples = {s.name: s for s in discover(synth_root)}
    two_masks = next(n for n in split["train"] if len(samples[n].mask_paths) == 2)
    other = next(n for n in split["train"] if n != two_masks)
    lesion_test = next(n for n in split["test"] if not n.startswith("normal"))
    folder = tmp_path_factory.mktemp("images")
    shutil.copy(samples[two_masks].image_path, folder / "copy-a.png")
    for i, mask in enumerate(samples[two_masks].mask_paths):
        shutil.copy(mask, folder / f"copy-a_mask{'' if i == 0 else f'_{i}'}.png")
    with Image.open(samples[other].image_path) as image:
        image.convert("L").save(folder / "grey-b.png")
    shutil.copy(samples[split["validation"][0]].image_path, folder / "val.png")
    shutil.copy(samples[lesion_test].image_path, folder / "exam.png")
    shutil.copy(samples[lesion_test].mask_paths[0], folder / "exam_mask.png")
    noise = np.random.default_rng(0).integers(0, 256, (150, 200), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "new.png")
    return folder


def _rows(out: Path) -> dict[str, dict]:
    with open(out / predict.CSV_FILE, newline="") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


EXPECTED = {
    "copy-a": "train",
    "grey-b": "train",
    "val": "validation",
    "exam": "test",
    "new": "unseen",
}


def test_in_experiment_is_found_by_content_not_name(experiment, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(experiment), "--images", str(images), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert {n: r["in_experiment"] for n, r in _rows(out).items()} == EXPECTED
    assert SUMMARY in captured.out.splitlines()
    assert "in_experiment unknown" not in captured.err


def test_a_mask_beside_an_image_is_outlined_and_scored(experiment, images, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(experiment), "--images", str(images), "--out", str(out)]) == 0
    rows = _rows(out)
    for name, mask_files in {"copy-a": 2, "exam": 1}.items():
        paths = tuple(sorted(images.glob(f"{name}_mask*.png")))
        assert len(paths) == mask_files
        with Image.open(images / f"{name}.png") as image:
            truth = read_mask(paths, image.size)
        with Image.open(out / f"{name}_pred.png") as written:
            pred = np.asarray(written) > 0
        expected = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
        assert 0.0 <= float(rows[name]["mask_dice"]) <= 1.0
        assert float(rows[name]["mask_dice"]) == pytest.approx(expected, abs=1e-6)
        with Image.open(out / f"{name}_overlay.png") as overlaid:
            green = (np.asarray(overlaid) == predict.OUTLINE_GREEN).all(axis=2)
        # Inside the lesion, along its whole edge, and along every mask file's part of it.
        edge = truth.copy()
        edge[1:-1, 1:-1] &= ~(
            truth[:-2, 1:-1] & truth[2:, 1:-1] & truth[1:-1, :-2] & truth[1:-1, 2:]
        )
        edge[[0, -1], :] = edge[:, [0, -1]] = False  # the image's border is no edge
        assert green.any() and not (green & ~truth).any() and not (edge & ~green).any()
        for path in paths:
            assert (green & read_mask((path,), green.shape[::-1])).any()
    for name in ("grey-b", "val", "new"):  # no mask beside them
        assert rows[name]["mask_dice"] == ""
        with Image.open(out / f"{name}_overlay.png") as overlaid:
            assert not (np.asarray(overlaid) == predict.OUTLINE_GREEN).all(axis=2).any()


@pytest.mark.parametrize("change", ["moved", "edited"])
def test_data_that_is_not_the_runs_makes_every_image_unknown(
    synth_root, synth_arrays, images, tmp_path, capsys, change
):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    experiment = _make_experiment(tmp_path / "runs", data, synth_arrays)
    if change == "moved":
        data.rename(tmp_path / "elsewhere")
    else:  # one pixel of one image: another dataset under the same names
        path = data / "benign" / "benign (1).png"
        with Image.open(path) as image:
            pixels = np.array(image)
        pixels[0, 0] ^= 1
        Image.fromarray(pixels).save(path)
    out = tmp_path / "out"
    assert main(["predict", str(experiment), "--images", str(images), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "in_experiment unknown" in line]
    assert len(notes) == 1 and str(data) in notes[0], captured.err
    assert ("not on this machine" if change == "moved" else "changed since the run") in notes[0]
    assert {r["in_experiment"] for r in _rows(out).values()} == {"unknown"}
    assert not any(line.startswith("in_experiment:") for line in captured.out.splitlines())


def test_an_exported_model_carries_the_split_by_content(experiment, split, images, tmp_path):
    exported = tmp_path / "model.pt"
    assert main(["export", str(experiment), "--out", str(exported)]) == 0
    card = json.loads(exported.with_suffix(".json").read_text())
    parts = card[records.SPLIT_IMAGES]["parts"]
    assert {part: len(hashes) for part, hashes in parts.items()} == split["counts"]
    out = tmp_path / "out"
    assert main(["predict", str(exported), "--images", str(images), "--out", str(out)]) == 0
    assert {n: r["in_experiment"] for n, r in _rows(out).items()} == EXPECTED


def test_a_cross_validated_trials_training_images_are_cross_validated(
    synth_root, synth_arrays, tmp_path
):
    folder = _make_experiment(tmp_path / "runs", synth_root, synth_arrays, folds=3)
    split = json.loads((folder / TRIAL / layout.SPLIT_FILE).read_text())
    experiment = load_experiment(folder)
    known = predict.known_from_experiment(experiment, experiment.trials[0])
    samples = {s.name: s for s in discover(synth_root)}
    parts = {
        name: known.part(read_grey(samples[name].image_path), samples[name].image_path)
        for name in (split["folds"][0][0], split["folds"][2][-1], split["test"][0])
    }
    assert list(parts.values()) == ["cross-validated", "cross-validated", "test"]


def test_an_image_in_two_parts_counts_as_seen(synth_root, synth_arrays, split, tmp_path):
    """BUSI holds one exact duplicate pair (benign (433), malignant (145)): when a split puts
    one content in training and test, the model has seen it, so it is `train`."""
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    order = [s.name for s in discover(data)]
    trained = split["train"][0]
    tested = next(n for n in split["test"] if order.index(n) > order.index(trained))
    samples = {s.name: s for s in discover(data)}
    shutil.copy(samples[trained].image_path, samples[tested].image_path)  # read after it
    experiment = load_experiment(_make_experiment(tmp_path / "runs", data, synth_arrays))
    known = predict.known_from_experiment(experiment, experiment.trials[0])
    path = samples[tested].image_path
    assert known.part(read_grey(path), path) == "train"
