"""trainable.integrity: duplicate finding, the real BUSI facts (skipped without $BUSI_DATA),
and every kind of bad folder reported in one line that names the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from trainable.dataset import DataError, discover, load_sample
from trainable.integrity import (
    IntegrityReport,
    check_dataset,
    exact_duplicate_groups,
    format_report,
    near_duplicate_groups,
)

# --- duplicates on made-up images -----------------------------------------------------------


def _scan(seed: int, height: int = 300, width: int = 400) -> np.ndarray:
    """A grey image with a random smooth pattern, darker with depth, with speckle."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((12, 16)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    depth = np.linspace(1.0, 0.5, height, dtype=np.float32)[:, None]
    speckle = rng.rayleigh(0.8, (height, width)).astype(np.float32)
    return np.clip(180 * smooth * depth * speckle, 0, 255).astype(np.uint8)


def _with_calipers(image: np.ndarray) -> np.ndarray:
    marked = image.copy()
    for x, y in ((150, 120), (260, 180)):
        cv2.drawMarker(marked, (x, y), color=255, markerType=cv2.MARKER_CROSS, markerSize=12)
    return marked


def test_exact_groups_need_identical_pixels_and_shape():
    a = _scan(1)
    nearly = a.copy()
    nearly[0, 0] ^= 1
    names = ["a", "b", "nearly", "flat", "transposed"]
    images = [a, a.copy(), nearly, np.zeros((4, 6), np.uint8), np.zeros((6, 4), np.uint8)]
    assert exact_duplicate_groups(names, images) == [["a", "b"]]


def test_near_groups_join_crops_and_calipers_but_not_other_scans():
    scan = _scan(1)
    cropped = _with_calipers(scan[6:-4, 10:-8])  # a few percent off each side, and calipers
    names = ["scan", "other", "cropped", "third", "flat", "flat copy"]
    flat = np.full((50, 60), 90, np.uint8)
    images = [scan, _scan(2), cropped, _scan(3), flat, flat.copy()]
    # The flat pair has no pattern to correlate: only exact equality joins it.
    assert near_duplicate_groups(names, images) == [["scan", "cropped"], ["flat", "flat copy"]]


def test_near_groups_same_at_native_size_and_resized():
    images = [_scan(1), _with_calipers(_scan(1)[4:, 6:]), _scan(2), _scan(3), _scan(4)]
    names = ["a", "b", "c", "d", "e"]
    resized = [cv2.resize(i, (256, 256), interpolation=cv2.INTER_AREA) for i in images]
    assert near_duplicate_groups(names, images) == [["a", "b"]]
    assert near_duplicate_groups(names, resized) == [["a", "b"]]


def test_near_groups_are_connected_components():
    # Each step shifts the scan by 2% of its width: neighbours match, a and c do not.
    a = _scan(1)
    b, c = np.roll(a, 8, axis=1), np.roll(a, 16, axis=1)
    assert near_duplicate_groups(["a", "c"], [a, c]) == []
    groups = near_duplicate_groups(["x", "a", "b", "c"], [_scan(5), a, b, c])
    assert groups == [["a", "b", "c"]]


# --- the real BUSI dataset ------------------------------------------------------------------


@pytest.fixture(scope="session")
def busi_report(busi_root: Path) -> IntegrityReport:
    return check_dataset(busi_root)


def test_real_counts(busi_report: IntegrityReport):
    assert busi_report.images_per_class == {"benign": 437, "malignant": 210, "normal": 133}
    assert busi_report.mask_files_per_class == {"benign": 454, "malignant": 211, "normal": 133}
    assert busi_report.multi_mask_images_per_class == {"benign": 16, "malignant": 1, "normal": 0}


def test_real_sizes_and_mask_modes(busi_report: IntegrityReport):
    assert busi_report.width_range == (190, 1048)
    assert busi_report.height_range == (310, 719)
    assert busi_report.mask_modes == {"1": 663, "RGB": 133, "RGBA": 2}


def test_real_is_usable_and_warns_about_the_relabelled_image(busi_report: IntegrityReport):
    assert busi_report.problems == []
    assert busi_report.usable
    assert "benign (433) = malignant (145)" in busi_report.warnings[0]
    # Two-valued masks, a lesion in every benign/malignant image, all three classes.
    assert not [w for w in busi_report.warnings if "mask" in w or w.startswith("no ")]
    text = format_report(busi_report)
    assert text.splitlines()[-1] == "usable"
    assert "all            780     798      17" in text
    assert "warning: benign (433) = malignant (145)" in text


def test_real_exact_duplicates(busi_report: IntegrityReport):
    assert busi_report.exact_duplicates == [["benign (433)", "malignant (145)"]]


@pytest.mark.parametrize(
    "pair",
    [
        ("benign (1)", "benign (318)"),
        ("benign (10)", "benign (327)"),
        ("benign (105)", "benign (156)"),
        ("benign (433)", "malignant (145)"),
    ],
)
def test_real_known_near_duplicates_share_a_group(busi_report: IntegrityReport, pair):
    holding = [group for group in busi_report.near_duplicates if pair[0] in group]
    assert len(holding) == 1
    assert pair[1] in holding[0]


def test_real_near_groups_are_not_over_eager(busi_report: IntegrityReport):
    # Measured: 147 groups holding 337 of 780 images, the largest 7 (one scan series).
    groups = busi_report.near_duplicates
    assert 140 <= len(groups) <= 155
    assert 320 <= sum(len(group) for group in groups) <= 350
    assert max(len(group) for group in groups) <= 8


def test_real_mask_union_of_three_files(busi_root: Path):
    sample = next(s for s in discover(busi_root) if s.name == "benign (195)")
    assert [p.name for p in sample.mask_paths] == [
        "benign (195)_mask.png",
        "benign (195)_mask_1.png",
        "benign (195)_mask_2.png",
    ]
    files = [np.asarray(Image.open(path).convert("L")) > 0 for path in sample.mask_paths]
    _, union = load_sample(sample)
    assert np.array_equal(union, files[0] | files[1] | files[2])
    assert union.sum() > files[0].sum()


# --- bad folders ----------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _good_pair(class_dir: Path, stem: str, lesion: bool = True) -> None:
    """A 12x10 RGB image with a 12x10 mask ('1' with a lesion, all-zero RGB without)."""
    _png(class_dir / f"{stem}.png", np.full((10, 12, 3), 120, np.uint8))
    if lesion:
        mask = np.zeros((10, 12), bool)
        mask[3:6, 4:8] = True
        _png(class_dir / f"{stem}_mask.png", mask)
    else:
        _png(class_dir / f"{stem}_mask.png", np.zeros((10, 12, 3), np.uint8))


def _tiny_dataset(root: Path) -> None:
    _good_pair(root / "benign", "benign (1)")
    _good_pair(root / "normal", "normal (1)", lesion=False)


def _image_without_mask(root: Path) -> str:
    _tiny_dataset(root)
    _png(root / "benign" / "benign (2).png", np.zeros((10, 12, 3), np.uint8))
    return "benign (2).png"


def _mask_without_image(root: Path) -> str:
    _tiny_dataset(root)
    _png(root / "malignant" / "malignant (3)_mask.png", np.zeros((10, 12), bool))
    return "malignant (3)_mask.png"


def _size_mismatch(root: Path) -> str:
    _tiny_dataset(root)
    _png(root / "benign" / "benign (2).png", np.zeros((10, 12, 3), np.uint8))
    _png(root / "benign" / "benign (2)_mask.png", np.zeros((8, 8), bool))
    return "benign (2)_mask.png"


def _corrupt_png(root: Path) -> str:
    _tiny_dataset(root)
    (root / "benign" / "benign (2).png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _png(root / "benign" / "benign (2)_mask.png", np.zeros((10, 12), bool))
    return "benign (2).png"


def _missing_folder(root: Path) -> str:
    root.rmdir()
    return str(root)


def _no_class_folders(root: Path) -> str:
    (root / "README.txt").write_text("not a dataset\n")
    return str(root)


def _no_images(root: Path) -> str:
    for label in ("benign", "malignant", "normal"):
        (root / label).mkdir()
    return str(root)


def _files(root: Path) -> list[tuple[str, int, int]]:
    if not root.exists():
        return []
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


BAD_FOLDERS = {
    "missing folder": _missing_folder,
    "no class folders": _no_class_folders,
    "no images": _no_images,
    "image without mask": _image_without_mask,
    "mask without image": _mask_without_image,
    "size mismatch": _size_mismatch,
    "corrupt png": _corrupt_png,
}


@pytest.fixture(params=list(BAD_FOLDERS))
def bad_folder(request, tmp_path: Path) -> tuple[Path, str]:
    """A broken dataset folder and the file name its one problem line must name."""
    root = tmp_path / "busi"
    root.mkdir()
    make: Callable[[Path], str] = BAD_FOLDERS[request.param]
    return root, make(root)


def test_check_dataset_reports_one_line_naming_the_file(bad_folder):
    root, culprit = bad_folder
    before = _files(root)
    report = check_dataset(root)
    assert len(report.problems) == 1
    assert culprit in report.problems[0]
    assert "\n" not in report.problems[0]
    assert not report.usable
    text = format_report(report)
    assert "NOT usable, 1 problem(s):" in text
    assert text.splitlines()[-1] == f"  {report.problems[0]}"
    assert _files(root) == before


def test_discover_and_load_raise_one_line_naming_the_file(bad_folder):
    root, culprit = bad_folder
    before = _files(root)
    with pytest.raises(DataError) as raised:
        for sample in discover(root):
            load_sample(sample)
    assert culprit in str(raised.value)
    assert "\n" not in str(raised.value)
    assert _files(root) == before


@pytest.mark.parametrize("make", [_size_mismatch, _corrupt_png])
def test_check_dataset_goes_on_after_a_bad_sample(tmp_path: Path, make):
    make(tmp_path)
    report = check_dataset(tmp_path)
    assert report.images_per_class == {"benign": 2, "malignant": 0, "normal": 1}
    # Sizes and mask modes come from the two samples that loaded.
    assert report.mask_modes == {"1": 1, "RGB": 1}
    assert report.width_range == (12, 12)
    assert report.height_range == (10, 10)


def test_missing_folder_is_not_created(tmp_path: Path):
    root = tmp_path / "absent"
    check_dataset(root)
    assert not root.exists()
