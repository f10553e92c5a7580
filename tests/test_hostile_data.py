"""Files that look like BUSI but are not what they seem: each is read correctly or
refused with one line that names it, quickly and without writing anything."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from trainable.dataset import DataError, discover, load_sample, read_grey
from tuner.cli import main


def _pair(folder, stem, image, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}{suffix}")
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(folder / f"{stem}_mask{suffix}")


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "busi"
    _pair(root / "benign", "benign (1)", np.full((12, 16), 90, dtype=np.uint8))
    return root


def test_upper_case_extensions_are_part_of_the_layout(tiny):
    _pair(tiny / "benign", "benign (2)", np.full((12, 16), 30, dtype=np.uint8), ".PNG")
    names = [s.name for s in discover(tiny)]
    assert names == ["benign (1)", "benign (2)"]
    image, mask = load_sample(discover(tiny)[1])
    assert image.max() == 30 and mask.sum() == 16


def test_a_16_bit_grey_image_is_scaled_not_clipped_to_white(tiny):
    levels = np.array([[0, 257 * 10, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(levels).save(tiny / "benign" / "benign (1).png")
    with Image.open(tiny / "benign" / "benign (1).png") as saved:
        assert saved.mode.startswith("I")  # really 16-bit on disk
    assert read_grey(tiny / "benign" / "benign (1).png")[0].tolist() == [0, 10, 128, 255]


@pytest.mark.parametrize("kind", ["folder", "pipe", "link loop"])
def test_a_non_file_named_like_an_image_is_one_line(tiny, kind, capsys):
    hostile = tiny / "benign" / "benign (2).png"
    if kind == "folder":
        hostile.mkdir()
    elif kind == "pipe":
        os.mkfifo(hostile)
    else:
        hostile.symlink_to(hostile)
    with pytest.raises(DataError, match="not a readable file"):
        discover(tiny)
    storage = tiny.parent / "runs"
    small = ["--encoder", "resnet18", "--encoder-weights", "none"]
    assert main(["run", "--data", str(tiny), "--storage", str(storage), *small]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(hostile) in error and not storage.exists()


def test_a_decompression_bomb_is_refused_by_name(tiny, monkeypatch):
    # The same check PIL makes at 178 M pixels, made here on a small file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with pytest.raises(DataError, match=r"benign \(1\)\.png: too large"):
        load_sample(discover(tiny)[0])
