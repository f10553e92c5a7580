"""trainable.integrity: duplicate finding, reviewed links, contradicting copies, the real
BUSI facts (skipped without $BUSI_DATA), and every kind of bad folder reported in one line
that names the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from results.settings import ConflictPolicy
from trainable.dataset import DataError, discover, load_sample
from trainable.duplicates import (
    LINKS_FILE,
    ReviewedLinks,
    analysis_image,
    exact_duplicate_groups,
    frame_conflicts,
    near_duplicate_groups,
    read_links,
)
from trainable.integrity import IntegrityReport, check_dataset, format_report, report_json
from trainable.preprocess import dataset_fingerprint, load_sized
from tuner.cli import main

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


def test_near_groups_do_not_chain():
    # Each step shifts the scan by 2% of its width: neighbours link, two steps do not. Six
    # steps are one chain of links, which connected components would make one group;
    # average linkage stops where an image links to under half of a group (step 3 links
    # to one of steps 0-2).
    a = _scan(1)
    assert near_duplicate_groups(["a", "c"], [a, np.roll(a, 16, axis=1)]) == []
    names = [f"step {k}" for k in range(6)]
    steps = [np.roll(a, 8 * k, axis=1) for k in range(6)]
    assert near_duplicate_groups(names, steps) == [names[0:3], names[3:6]]


# --- reviewed links -------------------------------------------------------------------------


def _four() -> tuple[list[str], list[np.ndarray]]:
    """a; b, a cropped copy of it with calipers; c and d, two other scans."""
    a = _scan(1)
    return ["a", "b", "c", "d"], [a, _with_calipers(a[6:-4, 10:-8]), _scan(2), _scan(3)]


def test_reviewed_links_add_and_remove_links():
    names, images = _four()
    assert near_duplicate_groups(names, images) == [["a", "b"]]
    same_cd = ReviewedLinks(same=(("d", "c"),))
    assert near_duplicate_groups(names, images, same_cd) == [["a", "b"], ["c", "d"]]
    assert near_duplicate_groups(names, images, ReviewedLinks(different=(("b", "a"),))) == []
    # A same pair is one group from the start; b links to a only, and is kept from c.
    links = ReviewedLinks(same=(("a", "c"),), different=(("b", "c"),))
    assert near_duplicate_groups(names, images, links) == [["a", "c"]]


def test_same_links_that_join_a_different_pair_are_refused():
    names, images = _four()
    links = ReviewedLinks(same=(("a", "c"), ("c", "d")), different=(("d", "a"),), path=Path("f"))
    with pytest.raises(DataError, match=r"^f: its same links .* join a and d, which it lists"):
        near_duplicate_groups(names, images, links)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ('["a", "b"]', 'expected {"same"'),
        ('{"same": [], "maybe": []}', 'expected {"same"'),
        ('{"same": [["a"]]}', '"same" must be a list of [name, name] pairs'),
        ('{"different": [["a", "x"]]}', '"x" is not an image of this folder'),
        ('{"same": [["a", "a"]]}', '"a" is linked to itself'),
        ('{"same": [["a", "b"]], "different": [["b", "a"]]}', "a and b are listed as both"),
    ],
)
def test_a_bad_links_file_is_one_line_naming_it(tmp_path: Path, content: str, message: str):
    (tmp_path / LINKS_FILE).write_text(content)
    with pytest.raises(DataError) as raised:
        read_links(tmp_path, ["a", "b"])
    assert str(raised.value).startswith(f"{tmp_path / LINKS_FILE}: ")
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_links_file_is_read_with_its_comment(tmp_path: Path):
    assert read_links(tmp_path, ["a"]) == ReviewedLinks()  # no file, no links
    text = '{"comment": "checked by eye", "same": [["a", "b"]], "different": [["b", "c"]]}'
    (tmp_path / LINKS_FILE).write_text(text)
    links = read_links(tmp_path, ["a", "b", "c"])
    assert links == ReviewedLinks((("a", "b"),), (("b", "c"),), tmp_path / LINKS_FILE)


# --- copies of one frame that contradict ------------------------------------------------------


def _square(top: int, left: int, side: int = 16) -> np.ndarray:
    mask = np.zeros((256, 256), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_frame_copies_contradict_by_label_or_by_mask_but_agree_when_shifted():
    scan = analysis_image(_scan(1))
    calipers = analysis_image(_with_calipers(_scan(1)))
    shifted = np.roll(scan, 8, axis=1)  # the same frame moved 8 px (2 px at 64x64)
    lesion, elsewhere, moved = _square(100, 100), _square(180, 40), _square(100, 108)
    empty = np.zeros((256, 256), bool)
    names = ["b1", "n1", "b2", "b3", "b4", "x"]
    labels = ["benign", "normal", "benign", "benign", "benign", "benign"]
    images = [scan, calipers, scan, scan, shifted, analysis_image(_scan(2))]
    masks = [lesion, empty, elsewhere, lesion, moved, elsewhere]

    def conflicts(*pairs: tuple[str, str]) -> list[tuple[tuple[str, ...], str]]:
        found = frame_conflicts(names, labels, images, masks, list(pairs))
        return [(c.names, c.reason) for c in found]

    assert conflicts(("b1", "n1")) == [(("b1", "n1"), "labels benign, normal")]
    assert conflicts(("b2", "b1")) == [(("b1", "b2"), "lesion masks overlap 0%")]
    assert conflicts(("b1", "b3")) == []  # one frame, one lesion
    # Unaligned, the two 16 px squares 8 px apart overlap by a third; aligned, fully.
    assert conflicts(("b1", "b4")) == []
    assert conflicts(("b2", "x")) == []  # another scan is no copy, whatever its mask
    # Copies that chain are one frame, named in input order.
    assert conflicts(("b3", "b1"), ("n1", "b1")) == [(("b1", "n1", "b3"), "labels benign, normal")]


# --- a small folder: links file, --json, the conflicts policy ---------------------------------


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    """benign (1) and (2), one frame with and without calipers and one lesion; normal (1),
    that frame again with no lesion; malignant (1), another scan."""
    root = tmp_path / "copies"
    scan, lesion = _scan(1), np.zeros((300, 400), bool)
    lesion[120:170, 150:220] = True
    for label, stem, image, mask in (
        ("benign", "benign (1)", scan, lesion),
        ("benign", "benign (2)", _with_calipers(scan), lesion),
        ("normal", "normal (1)", scan[:-3, 4:], None),  # cropped a little
        ("malignant", "malignant (1)", _scan(2), lesion),
    ):
        _png(root / label / f"{stem}.png", np.stack([image] * 3, axis=-1))
        empty = np.zeros((*image.shape, 3), np.uint8)
        _png(root / label / f"{stem}_mask.png", empty if mask is None else mask)
    return root


def test_data_check_json_lists_groups_conflicts_and_reads_the_links(copies: Path, capsys):
    assert main(["data", "check", str(copies), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["groups"] == [["benign (1)", "benign (2)", "normal (1)"]]
    assert report["multi_image_groups"] == 1 and report["largest_group"] == 3
    assert report["conflicts"] == [
        {"names": ["benign (1)", "benign (2)", "normal (1)"], "reason": "labels benign, normal"}
    ]
    assert report["excluded_by_default"] == ["benign (1)", "benign (2)", "normal (1)"]
    assert report["links"] == {"file": None, "same": [], "different": []}
    # A reviewer says normal (1) is another frame: no group, so no conflict, holds it.
    links = {"different": [["benign (1)", "normal (1)"], ["benign (2)", "normal (1)"]]}
    (copies / LINKS_FILE).write_text(json.dumps(links))
    assert main(["data", "check", str(copies), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["groups"] == [["benign (1)", "benign (2)"]] and report["conflicts"] == []
    assert report["links"]["file"] == str(copies / LINKS_FILE)
    assert report["links"]["different"] == links["different"]
    assert main(["data", "check", str(copies)]) == 0
    text = capsys.readouterr().out
    assert f"reviewed links: {copies / LINKS_FILE}: 0 same, 2 different" in text
    assert "contradicting copies: none" in text


def test_data_check_text_names_the_conflicts_and_a_bad_links_file(copies: Path, capsys):
    report = check_dataset(copies)
    text = format_report(report)
    assert (
        "contradicting copies: 1 frames (3 images, left out by `run` unless --conflicts keep): "
        "benign (1) = benign (2) = normal (1) (labels benign, normal)"
    ) in text
    assert f"reviewed links: none ({LINKS_FILE} in the folder adds or removes links)" in text
    assert report_json(report)["usable"] is True
    (copies / LINKS_FILE).write_text('{"same": [["benign (1)", "benign (9)"]]}')
    assert main(["data", "check", str(copies)]) == 1
    out = capsys.readouterr().out
    assert f'  {copies / LINKS_FILE}: "benign (9)" is not an image of this folder' in out


def test_conflicts_policy_leaves_the_copies_out_and_says_so(copies: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    kept = load_sized(copies, (32,), 32, cache, False, ConflictPolicy.KEEP).evaluation
    assert kept.names == ("benign (1)", "benign (2)", "malignant (1)", "normal (1)")
    assert kept.excluded == () and len(kept.conflicts) == 1
    left = load_sized(copies, (32,), 32, cache, False, ConflictPolicy.EXCLUDE).evaluation
    assert left.names == ("malignant (1)",) and len(left.images) == 1
    assert left.excluded == ("benign (1)", "benign (2)", "normal (1)")
    assert left.warnings[-1] == (
        "left out 3 images, copies of one frame whose labels or lesion masks contradict "
        "(--conflicts exclude; keep uses them): benign (1) = benign (2) = normal (1) "
        "(labels benign, normal)"
    )
    # The links file is part of the data's content: a new file, a new cache entry.
    before = dataset_fingerprint(discover(copies), copies)
    (copies / LINKS_FILE).write_text('{"different": [["benign (2)", "normal (1)"]]}')
    assert dataset_fingerprint(discover(copies), copies) != before
    relinked = load_sized(copies, (32,), 32, cache, False, ConflictPolicy.EXCLUDE).evaluation
    # One pair said to differ: normal (1) is still linked to, and a copy of, benign (1).
    assert relinked.excluded == ("benign (1)", "benign (2)", "normal (1)")
    both = [["benign (1)", "normal (1)"], ["benign (2)", "normal (1)"]]
    (copies / LINKS_FILE).write_text(json.dumps({"different": both}))
    relinked = load_sized(copies, (32,), 32, cache, False, ConflictPolicy.EXCLUDE).evaluation
    assert relinked.excluded == () and len(relinked.names) == 4


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
        # The dataset README's, and the same frame under two labels.
        ("benign (1)", "benign (318)"),
        ("benign (10)", "benign (327)"),
        ("benign (105)", "benign (156)"),
        ("benign (433)", "malignant (145)"),
        ("benign (269)", "normal (1)"),
        ("benign (437)", "normal (34)"),
        # Checked by eye, missed by the thumbnail alone (0.45, 0.16, 0.55): a zoom, a shift,
        # another frame with a box drawn over it.
        ("malignant (106)", "malignant (107)"),
        ("malignant (69)", "malignant (70)"),
        ("benign (102)", "benign (121)"),
    ],
)
def test_real_known_near_duplicates_share_a_group(busi_report: IntegrityReport, pair):
    holding = [group for group in busi_report.near_duplicates if pair[0] in group]
    assert len(holding) == 1
    assert pair[1] in holding[0]


@pytest.mark.parametrize(
    "pair",
    [
        ("benign (62)", "malignant (1)"),  # two votes, but linked to too few of the group
        ("malignant (72)", "malignant (208)"),  # dark masses alike, one vote
        ("benign (330)", "benign (434)"),  # 0.70 shift-tolerant alone, 0.20 thumbnail
    ],
)
def test_real_unrelated_look_alikes_stay_apart(busi_report: IntegrityReport, pair):
    assert not any(pair[0] in group and pair[1] in group for group in busi_report.near_duplicates)


def test_real_near_groups_are_small(busi_report: IntegrityReport):
    # Measured: 166 groups holding 385 of 780 images, the largest 6 (malignant 4-9, one
    # scan series). The same links as connected components chain 12 images of several
    # patients' dark masses into one.
    groups = busi_report.near_duplicates
    assert 160 <= len(groups) <= 172
    assert 370 <= sum(len(group) for group in groups) <= 400
    assert max(len(group) for group in groups) <= 7
    assert report_json(busi_report)["multi_image_groups"] == len(groups)


def test_real_contradicting_copies(busi_report: IntegrityReport):
    conflicts = {c.names: c.reason for c in busi_report.conflicts}
    assert conflicts[("benign (269)", "normal (1)")] == "labels benign, normal"
    assert conflicts[("benign (437)", "normal (34)")] == "labels benign, normal"
    assert conflicts[("benign (433)", "malignant (145)")] == "labels benign, malignant"
    assert conflicts[("benign (236)", "benign (247)")] == "lesion masks overlap 0%"
    # Measured: 22 frames, 49 images; every group mixing labels holds such a copy.
    assert len(conflicts) == 22 and sum(len(names) for names in conflicts) == 49
    mixed = [g for g in busi_report.near_duplicates if len({n.split()[0] for n in g}) > 1]
    assert len(mixed) == 7
    labelled = [set(names) for names, reason in conflicts.items() if reason.startswith("labels")]
    for group in mixed:
        assert any(names <= set(group) for names in labelled), group
    assert report_json(busi_report)["excluded_by_default"] == [
        name for names in conflicts for name in names
    ]
    assert "contradicting copies: 22 frames (49 images" in format_report(busi_report)


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
