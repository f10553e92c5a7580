"""`export --format onnx`: the same model as the TorchScript export, run by onnxruntime on
real BUSI images, and a model card exact enough to reproduce the input elsewhere. The
hand-made experiment of test_inference_errors (random weights, no Ray), so these are fast."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from test_inference_errors import TRIAL, make_experiment

from results.records import MODEL_CARD_FORMAT, NewerFormatError
from trainable.dataset import read_grey
from trainable.preprocess import resize_image
from tuner.cli import main
from tuner.inference import segmenter

DOCS = Path(__file__).resolve().parents[1] / "docs" / "inference.md"
SIZE = 32  # the hand-made trial's input size, and its experiment's evaluation size
# Real BUSI images of different sizes (all larger than SIZE: shrunk by INTER_AREA).
REAL = ("benign (1)", "benign (100)", "malignant (1)", "malignant (50)", "normal (1)")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, Path]:
    """The trial exported both ways (apart: each card is <stem>.json)."""
    root = tmp_path_factory.mktemp("onnx")
    experiment = make_experiment(root)
    pt, onnx_file = root / "model.pt", root / "onnx" / "model.onnx"
    assert main(["export", str(experiment), "--out", str(pt)]) == 0
    assert main(["export", str(experiment), "--format", "onnx", "--out", str(onnx_file)]) == 0
    return pt, onnx_file


@pytest.fixture(scope="module")
def real_images(busi_root, tmp_path_factory) -> Path:
    """Five real images, and two crops of one smaller than SIZE (enlarged by INTER_LINEAR:
    one in both sides, one in its height only)."""
    folder = tmp_path_factory.mktemp("real")
    for name in REAL:
        shutil.copy(busi_root / name.split(" ")[0] / f"{name}.png", folder / f"{name}.png")
    image = np.asarray(Image.open(busi_root / "malignant" / "malignant (1).png"))
    Image.fromarray(image[200:216, 200:220]).save(folder / "crop 16x20.png")
    Image.fromarray(image[200:220, 100:300]).save(folder / "crop 20x200.png")
    return folder


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png"))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_onnxruntime_gives_the_torchscript_probabilities(exports, real_images):
    pt, onnx_file = exports
    grey = [read_grey(real_images / f"{name}.png") for name in _names(real_images)]
    inputs = np.stack([resize_image(g, SIZE) for g in grey]).astype(np.float32)[:, None]
    with torch.no_grad():
        expected = torch.jit.load(str(pt))(torch.from_numpy(inputs)).numpy()
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": inputs})[0]  # all 7 at once: the batch is dynamic
    assert got.shape == expected.shape == (7, 1, SIZE, SIZE)
    assert expected.std() > 0.01  # not a constant: the comparison has something to compare
    # measured: 8e-7 here, 8.2e-6 for a trained model on all 780 BUSI images (README)
    assert np.abs(got - expected).max() < 1e-4


def test_predict_with_the_onnx_file_writes_the_torchscript_masks(exports, real_images, tmp_path):
    """Every pixel the same, but where the probability is the threshold to within the two
    runtimes' difference (this untrained model's probabilities crowd round 0.5)."""
    pt, onnx_file = exports
    for model, out, batch in ((pt, "pt", "8"), (onnx_file, "onnx", "3")):  # 3: batches 3,3,1
        argv = ["predict", str(model), "--images", str(real_images), "--out", str(tmp_path / out)]
        assert main([*argv, "--batch-size", batch]) == 0
    torchscript = segmenter.from_export(pt, device=torch.device("cpu"))
    differ = total = lesion = 0
    for name in _names(real_images):
        files = [tmp_path / out / f"{name}_pred.png" for out in ("pt", "onnx")]
        masks = [np.asarray(Image.open(file)) for file in files]
        # predict's probabilities at the image's size, as the card's output rule says
        image = read_grey(real_images / f"{name}.png")
        height, width = image.shape
        probs = torchscript.probabilities([image])[0]
        probs = cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(masks[0] > 0, probs > 0.5), name  # the rule is predict's
        differ_here = masks[0] != masks[1]
        assert np.abs(probs[differ_here] - 0.5).max(initial=0.0) < 1e-4, name
        differ, total = differ + int(differ_here.sum()), total + masks[0].size
        lesion += int((masks[0] > 0).sum())
    assert differ / total < 1e-5  # measured: 1 pixel of 1,223,186
    assert 0 < lesion < total  # neither all empty nor all lesion


def test_the_onnx_card_names_its_format_and_the_exact_resize(exports):
    pt, onnx_file = exports
    card = json.loads(onnx_file.with_suffix(".json").read_text())
    assert (card["file"], card["runtime"], card["trial"]) == ("model.onnx", "onnx", TRIAL)
    assert card["onnx"] == {"opset": 17, "input": "images", "output": "probabilities"}
    assert card["input"]["resize"] == (
        "cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA) when the uint8 grey image "
        "is at least 32 px high and at least 32 px wide, else interpolation=cv2.INTER_LINEAR; "
        "the aspect ratio is not kept"
    )
    assert card["input"]["dtype"] == "float32" and card["input"]["shape"] == [None, 1, 32, 32]
    # The TorchScript card says the same of the input; only the file and runtime differ.
    torchscript = json.loads(pt.with_suffix(".json").read_text())
    assert torchscript["runtime"] == "torchscript" and "onnx" not in torchscript
    assert card["format"] == torchscript["format"] == MODEL_CARD_FORMAT
    assert torchscript["input"] == card["input"] and torchscript["output"] == card["output"]
    # The rule as written is the one predict applies: shrink both, enlarge both, mixed.
    rng = np.random.default_rng(0)
    for shape, interpolation in (((40, 50), cv2.INTER_AREA), ((16, 20), cv2.INTER_LINEAR),
                                 ((20, 200), cv2.INTER_LINEAR)):  # fmt: skip
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        by_card = cv2.resize(image, (SIZE, SIZE), interpolation=interpolation)
        assert np.array_equal(resize_image(image, SIZE), by_card), shape


def test_the_readme_onnxruntime_example_gives_predicts_masks(
    exports, real_images, tmp_path, monkeypatch
):
    """The README's example, run as written (in a folder holding its file names), on each
    image: the mask that `predict` wrote for it from the same .onnx, every pixel."""
    snippet = re.search(r"```python\n(import json, cv2.*?)```", DOCS.read_text(), re.S)[1]
    _, onnx_file = exports
    predicted = tmp_path / "predicted"
    argv = ["predict", str(onnx_file), "--images", str(real_images), "--out", str(predicted)]
    assert main(argv) == 0
    monkeypatch.chdir(tmp_path)
    shutil.copytree(onnx_file.parent, tmp_path / "onnx")
    (tmp_path / "onnx" / "model.onnx").rename(tmp_path / "onnx" / "busi-best.onnx")
    (tmp_path / "onnx" / "model.json").rename(tmp_path / "onnx" / "busi-best.json")
    for name in _names(real_images):
        shutil.copy(real_images / f"{name}.png", tmp_path / "case.png")
        scope: dict = {}
        exec(snippet, scope)
        expected = np.asarray(Image.open(predicted / f"{name}_pred.png")) > 0
        assert np.array_equal(scope["mask"], expected), name


def test_a_card_from_before_card_formats_still_runs_and_a_newer_one_is_refused(exports, tmp_path):
    """Cards written before they carried a format named the runtime in "format" (and a
    TorchScript card once named none); a newer card is one line that says to upgrade."""
    images = [np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)]
    cpu = torch.device("cpu")
    for exported, old_runtime in zip(exports, ({}, {"format": "onnx"}), strict=True):
        card = json.loads(exported.with_suffix(".json").read_text())
        copy = tmp_path / exported.name
        shutil.copy(exported, copy)
        old = {k: v for k, v in card.items() if k not in ("format", "runtime")}
        copy.with_suffix(".json").write_text(json.dumps({**old_runtime, **old}))
        expected = segmenter.from_export(exported, device=cpu).probabilities(images)
        assert np.array_equal(
            segmenter.from_export(copy, device=cpu).probabilities(images), expected
        )
    copy.with_suffix(".json").write_text(json.dumps({**card, "format": MODEL_CARD_FORMAT + 1}))
    with pytest.raises(NewerFormatError, match="written by a newer busi-tune"):
        segmenter.from_export(copy, device=cpu)
