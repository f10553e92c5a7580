"""`predict` and `export`: the tuned model used on new images, reproducing the trial."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from results.experiment import load_experiment
from trainable.dataset import discover, read_grey
from trainable.metrics import PixelStats
from trainable.preprocess import load_busi
from tuner.cli import main
from tuner.inference import segmenter

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
# Real BUSI images of different sizes (width x height differ between all of them).
REAL = ("benign (1)", "benign (100)", "malignant (1)", "malignant (50)", "normal (1)")


@pytest.fixture(scope="module")
def experiment(twin_sweeps):
    return load_experiment(twin_sweeps[0])


@pytest.fixture(scope="module")
def real_images(busi_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("real")
    for name in REAL:
        label = name.split(" ")[0]
        shutil.copy(busi_root / label / f"{name}.png", folder / f"{name}.png")
        shutil.copy(busi_root / label / f"{name}_mask.png", folder / f"{name}_mask.png")
    return folder


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir())


def test_predict_writes_a_mask_of_each_original_size(experiment, real_images, tmp_path, capsys):
    before = _listing(real_images)
    out = tmp_path / "out"
    assert main(["predict", str(experiment.path), "--images", str(real_images),
                 "--out", str(out), "--batch-size", "2"]) == 0  # fmt: skip
    assert _listing(real_images) == before  # nothing written into the input folder
    printed = capsys.readouterr().out
    assert f"segmented {len(REAL)} images with {experiment.best.name}" in printed
    with open(out / "predictions.csv") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(REAL)  # the _mask files are not segmented
    sizes = set()
    for name in REAL:
        with Image.open(real_images / f"{name}.png") as original:
            size = original.size
        with Image.open(out / f"{name}_pred.png") as mask:
            assert mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}
            lesion = int((np.asarray(mask) > 0).sum())
        with Image.open(out / f"{name}_overlay.png") as overlaid:
            assert overlaid.size == size and overlaid.mode == "RGB"
        row = rows[name]
        assert (int(row["width"]), int(row["height"])) == size
        assert int(row["lesion_pixels"]) == lesion
        assert float(row["lesion_fraction"]) == pytest.approx(lesion / (size[0] * size[1]), 1e-5)
        assert 0.0 <= float(row["mean_probability"]) <= 1.0
        sizes.add(size)
    assert len(sizes) == len(REAL)


def test_predict_reproduces_the_trials_test_metrics(experiment, twin_sweeps):
    """The test images read from their files, through predict's own path, give the
    trial's recorded predictions pixel for pixel and its recorded test Dice."""
    best = experiment.best
    data_dir = twin_sweeps[0].parents[1] / "original"
    data = load_busi(data_dir, experiment.settings.base.image_size, progress=False)
    selection = best.selection()
    files = {s.name: s.image_path for s in discover(data_dir)}
    model = segmenter.from_experiment(experiment, best.name, device=CPU)
    probs = model.probabilities([read_grey(files[name]) for name in selection.names])
    assert np.array_equal(probs > model.threshold, selection.predictions)
    stats = PixelStats(model.threshold)
    stats.update(probs, data.masks[[data.names.index(n) for n in selection.names]])
    assert stats.compute()["dice"] == pytest.approx(best.selected.test["dice"], abs=1e-6)


def test_flip_and_ensemble_change_the_probabilities_within_0_1(experiment, real_images):
    images = [read_grey(real_images / f"{name}.png") for name in REAL]
    plain = segmenter.from_experiment(experiment, device=CPU).probabilities(images)
    flipped = segmenter.from_experiment(experiment, flip=True, device=CPU).probabilities(images)
    pair = segmenter.from_experiment(experiment, ensemble=2, device=CPU)
    assert len(pair.members) == 2 and pair.members[0].name == experiment.best.name
    averaged = pair.probabilities(images)
    for probs in (flipped, averaged):
        assert probs.shape == plain.shape and probs.min() >= 0.0 and probs.max() <= 1.0
        assert np.abs(probs - plain).max() > 1e-3


def test_an_unreadable_image_is_named_and_skipped(experiment, real_images, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(real_images, images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    out = tmp_path / "out"
    assert main(["predict", str(experiment.path), "--images", str(images),
                 "--out", str(out)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    assert len(list(out.glob("*_pred.png"))) == len(REAL)


def test_predict_refuses_a_used_out_folder_and_one_inside_the_images(
    experiment, real_images, tmp_path, capsys
):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("precious")
    for out in (used, real_images / "out"):
        assert main(["predict", str(experiment.path), "--images", str(real_images),
                     "--out", str(out)]) == 2  # fmt: skip
        assert capsys.readouterr().err.count("\n") == 1
    assert _listing(used) == [("keep.txt", 8)] and not (real_images / "out").exists()


def test_torchscript_export_matches_the_checkpoint_and_has_a_full_card(
    experiment, real_images, tmp_path, capsys
):
    exported = tmp_path / "model.pt"
    assert main(["export", str(experiment.path), "--out", str(exported)]) == 0
    card = json.loads(exported.with_suffix(".json").read_text())
    for field in ("encoder", "input", "threshold", "training_config", "split", "test",
                  "protocol", "published_reference", "software", "evaluation_size"):  # fmt: skip
        assert field in card, field
    assert card["input"]["normalisation"]["applied"] == "inside the exported model"
    assert len(card["split"]["sha256"]) == 64 and card["published_reference"]["test"]["dice"]
    assert card["test"]["dice"] == experiment.best.selected.test["dice"]
    assert {"torch", "segmentation-models-pytorch", "busi-tune"} <= set(card["software"])
    images = [read_grey(real_images / f"{name}.png") for name in REAL]
    from_checkpoint = segmenter.from_experiment(experiment, device=CPU).probabilities(images)
    from_file = segmenter.from_export(exported, device=CPU).probabilities(images)
    assert np.abs(from_file - from_checkpoint).max() < 1e-4
    # Never overwritten; and predict takes the file in place of the experiment.
    assert main(["export", str(experiment.path), "--out", str(exported)]) == 2
    out = tmp_path / "out"
    assert main(["predict", str(exported), "--images", str(real_images), "--out", str(out)]) == 0
    assert len(list(out.glob("*_pred.png"))) == len(REAL)
