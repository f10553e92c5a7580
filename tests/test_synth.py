"""trainable.synth: a synthetic folder that reads like real BUSI, is reproducible, has
learnable (darker) lesions, and is never written over existing data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainable.dataset import BusiClass, DataError, Sample, discover, load_sample
from trainable.integrity import check_dataset
from trainable.synth import write_synthetic_busi


@pytest.fixture(scope="session")
def samples(synth_root: Path) -> list[Sample]:
    """The conftest's synthetic folder, written with the default counts."""
    return discover(synth_root)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_layout_is_exactly_the_busi_layout(synth_root: Path):
    # The class folders, and a note that says the images are synthetic.
    listing = sorted(p.name for p in synth_root.iterdir())
    assert listing == ["SYNTHETIC.md", "benign", "malignant", "normal"]
    assert "not BUSI" in (synth_root / "SYNTHETIC.md").read_text()
    pattern = re.compile(r"^(benign|malignant|normal) \(\d+\)(_mask(_1)?)?\.png$")
    for path in synth_root.rglob("*.png"):
        assert pattern.match(path.name), path
        assert path.name.startswith(path.parent.name)


def test_counts_are_as_asked(samples: list[Sample], tmp_path: Path):
    counts = {label: sum(s.label == label for s in samples) for label in BusiClass}
    assert counts == {BusiClass.BENIGN: 24, BusiClass.MALIGNANT: 12, BusiClass.NORMAL: 8}
    assert [s.name for s in samples[:3]] == ["benign (1)", "benign (2)", "benign (3)"]
    assert write_synthetic_busi(tmp_path / "small", 3, 2, 1) == 6
    assert len(discover(tmp_path / "small")) == 6


def test_images_are_grey_rgb_of_varied_size(samples: list[Sample]):
    sizes = set()
    for sample in samples:
        image = Image.open(sample.image_path)
        assert image.mode == "RGB"
        rgb = np.asarray(image)
        assert np.array_equal(rgb[..., 0], rgb[..., 1])
        assert np.array_equal(rgb[..., 0], rgb[..., 2])
        assert 160 <= image.width <= 320 and 128 <= image.height <= 256
        sizes.add(image.size)
    assert len(sizes) > 30


def test_masks_like_the_real_ones(samples: list[Sample]):
    for sample in samples:
        _, mask = load_sample(sample)
        modes = [Image.open(path).mode for path in sample.mask_paths]
        if sample.label == BusiClass.NORMAL:
            assert modes == ["RGB"]
            assert not mask.any()
        else:
            assert set(modes) <= {"1", "L"}
            assert mask.any()
            for path in sample.mask_paths:
                assert set(np.unique(np.asarray(Image.open(path).convert("L")))) <= {0, 255}


def test_some_lesions_are_split_over_two_masks(samples: list[Sample]):
    split = [s for s in samples if len(s.mask_paths) == 2]
    assert len(split) == 6  # 1 in 6 of the 36 lesion images
    for sample in split:
        assert sample.label != BusiClass.NORMAL
        _, union = load_sample(sample)
        for path in sample.mask_paths:
            part = np.asarray(Image.open(path).convert("L")) > 0
            assert 0 < part.sum() < union.sum()


def test_lesions_are_darker_than_the_tissue_around_them(samples: list[Sample]):
    for sample in samples:
        image, mask = load_sample(sample)
        if mask.any():
            assert image[mask].mean() < 0.7 * image[~mask].mean(), sample.name
            assert image[mask].std() > 5, "lesions carry speckle too"


def test_synthetic_folder_passes_the_integrity_check(synth_root: Path):
    report = check_dataset(synth_root)
    assert report.usable
    assert report.exact_duplicates == [] and report.near_duplicates == []
    assert report.multi_mask_images_per_class == {"benign": 4, "malignant": 2, "normal": 0}


def test_same_seed_same_bytes(tmp_path: Path):
    write_synthetic_busi(tmp_path / "a", 4, 2, 1, seed=7)
    write_synthetic_busi(tmp_path / "b", 4, 2, 1, seed=7)
    write_synthetic_busi(tmp_path / "c", 4, 2, 1, seed=8)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if "_mask" not in name)


def test_an_empty_folder_is_accepted(tmp_path: Path):
    assert write_synthetic_busi(tmp_path, 1, 1, 1) == 3


@pytest.mark.parametrize("existing", ["file in folder", "plain file"])
def test_refuses_to_write_over_anything(tmp_path: Path, existing: str):
    if existing == "plain file":
        root = tmp_path / "busi.png"
        root.write_bytes(b"keep me")
    else:
        root = tmp_path / "busi"
        root.mkdir()
        (root / "keep.txt").write_text("keep me")
    before = _files(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(root))) as raised:
        write_synthetic_busi(root)
    assert "\n" not in str(raised.value)
    assert _files(tmp_path) == before
