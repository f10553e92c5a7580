"""Checking a BUSI folder before training: counts, sizes, mask modes, duplicates, problems.

`check_dataset` reads every sample once and collects one line per problem instead of stopping
at the first, so a user sees everything to fix in one run. Duplicates are reported, not
treated as problems: the split keeps each near-duplicate group on one side instead.
Nothing here writes into the dataset folder.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from trainable.dataset import (
    BusiClass,
    DataError,
    LoadedSample,
    Sample,
    data_warnings,
    discover,
    mask_modes,
    read_sample,
)

log = logging.getLogger(__name__)

# Near-duplicate thumbnails: the central part of the image, shrunk to a small square.
_CENTRE_FRACTION = 0.8
_THUMB_SIDE = 16
_HIGH_PASS_SIGMA = 2.0  # thumbnail pixels
_NEAR_THRESHOLD = 0.67  # Pearson correlation of two thumbnails
# Near-duplicates are always found on images resized to this side, whatever size a run
# trains at, so the groups (and the grouped split) are the same at every --image-size.
ANALYSIS_SIDE = 256
# How many duplicate groups format_report lists before "...".
_LISTED_GROUPS = 5


def exact_duplicate_groups(names: Sequence[str], images: Sequence[np.ndarray]) -> list[list[str]]:
    """Groups (two or more names, in input order) of pixel-identical images.

    An image's key is a hash of its shape and bytes, so only identical arrays collide."""
    by_key: dict[str, list[str]] = {}
    for name, image in zip(names, images, strict=True):
        by_key.setdefault(_pixel_key(image), []).append(name)
    return [group for group in by_key.values() if len(group) > 1]


def _pixel_key(image: np.ndarray) -> str:
    digest = hashlib.blake2b(str(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def analysis_image(image: np.ndarray) -> np.ndarray:
    """The image as near-duplicate detection sees it: ANALYSIS_SIDE square, area-averaged."""
    return cv2.resize(image, (ANALYSIS_SIDE, ANALYSIS_SIDE), interpolation=cv2.INTER_AREA)


def near_duplicate_groups(names: Sequence[str], images: Sequence[np.ndarray]) -> list[list[str]]:
    """Groups (connected components) of images that show the same scene: another frame or
    crop of the same lesion, with or without calipers; exact duplicates included.

    Two grey images are linked when the Pearson correlation of their thumbnails is at least
    0.67. A thumbnail is the central 80% of the image shrunk by area averaging to 16x16 (so
    border text, small crops and caliper marks barely count), minus its Gaussian blur
    (sigma 2): every ultrasound image darkens with depth, and only the tissue pattern left
    after removing that shared gradient tells two scans apart. Any input size works.

    Measured on real BUSI resized to 256x256 (780 images, 303,810 pairs): pixel-identical
    pairs score 1.0, the same frame with/without calipers or a little cropped 0.97-1.0
    (benign 1~318 0.986, 10~327 0.996, 105~156 0.993), another frame of the same lesion
    0.68-0.83 (benign 238~240 0.699, malignant 4~9 0.680); unrelated images with a similar
    layout reach 0.66 (benign 68~73, two different cysts) and 99.8% of pairs score below
    0.45. Only 25 pairs fall in 0.65-0.80, so the threshold sits in a sparse valley: 0.67
    links 237 pairs into 147 groups (337 images, the largest 7; the same groups from the
    native-size images), while 0.50 chains unrelated images into a group of 29 and 0.45 into
    one of 71. Every pair looked at by eye above 0.67 showed the same lesion. One matrix
    product: about 0.15 s for 780 images at 256x256, 0.6 s at native size.
    """
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names but {len(images)} images")
    if not names:
        return []
    thumbs = np.stack([_thumbnail(image) for image in images])
    similarity = thumbs @ thumbs.T
    pairs = list(zip(*np.nonzero(np.triu(similarity >= _NEAR_THRESHOLD, k=1)), strict=True))
    index = {name: i for i, name in enumerate(names)}
    for group in exact_duplicate_groups(names, images):
        pairs.extend((index[group[0]], index[other]) for other in group[1:])
    return [[names[i] for i in component] for component in _components(len(names), pairs)]


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """The image's central part as a zero-mean, unit-length 16x16 high-pass vector."""
    height, width = image.shape
    crop_h, crop_w = round(height * _CENTRE_FRACTION), round(width * _CENTRE_FRACTION)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    centre = image[top : top + crop_h, left : left + crop_w]
    thumb = cv2.resize(centre, (_THUMB_SIDE, _THUMB_SIDE), interpolation=cv2.INTER_AREA)
    thumb = thumb.astype(np.float32)
    thumb -= cv2.GaussianBlur(thumb, (0, 0), _HIGH_PASS_SIGMA)
    thumb = thumb.ravel() - thumb.mean()
    length = float(np.linalg.norm(thumb))
    # A flat image has no pattern to compare; a zero vector matches nothing.
    return thumb / length if length > 1e-6 else thumb


def _components(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components of size >= 2 (union-find), each sorted, ordered by first member."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(int(a))] = root(int(b))
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    return sorted((group for group in members.values() if len(group) > 1), key=lambda g: g[0])


@dataclass(frozen=True)
class IntegrityReport:
    """What `check_dataset` found. Per-class dicts are keyed by class name."""

    root: Path
    images_per_class: dict[str, int]
    mask_files_per_class: dict[str, int]
    multi_mask_images_per_class: dict[str, int]
    width_range: tuple[int, int]
    height_range: tuple[int, int]
    mask_modes: dict[str, int]
    exact_duplicates: list[list[str]]
    near_duplicates: list[list[str]]
    # Worth knowing but not blocking: e.g. one image under two labels.
    warnings: list[str]
    # One line each, naming the file and the fix; any problem makes the dataset unusable.
    problems: list[str]

    @property
    def usable(self) -> bool:
        return not self.problems


def check_dataset(root: Path, progress: bool = False) -> IntegrityReport:
    """Read every sample of a BUSI folder and report on it, collecting all problems."""
    root = Path(root)
    try:
        samples = discover(root)
    except DataError as error:
        return _report(root, [], [], [], [], Counter(), [str(error)])
    loaded: list[Sample] = []
    contents: list[LoadedSample] = []
    images: list[np.ndarray] = []
    modes: Counter[str] = Counter()
    sizes: list[tuple[int, int]] = []
    problems: list[str] = []
    # disable=None: a bar only on a terminal, never drawn into a log file.
    for sample in tqdm(
        samples, desc="checking BUSI", unit="image", disable=None if progress else True
    ):
        try:
            content = read_sample(sample)
            sample_modes = mask_modes(sample)
        except DataError as error:
            problems.append(str(error))
            continue
        loaded.append(sample)
        contents.append(content)
        sizes.append((content.image.shape[1], content.image.shape[0]))
        modes.update(sample_modes)
        images.append(analysis_image(content.image))
    report = _report(root, samples, loaded, images, sizes, modes, problems)
    report.warnings.extend(data_warnings(loaded, contents))
    log.info("checked %s: %d images, %d problems", root, len(samples), len(problems))
    return report


def _report(
    root: Path,
    samples: list[Sample],
    loaded: list[Sample],
    images: list[np.ndarray],
    sizes: list[tuple[int, int]],
    modes: Counter[str],
    problems: list[str],
) -> IntegrityReport:
    """The report on the samples found and the ones that loaded (images at 256x256)."""
    names = [sample.name for sample in loaded]
    exact = exact_duplicate_groups(names, images)
    near = near_duplicate_groups(names, images)
    widths = [width for width, _ in sizes] or [0]
    heights = [height for _, height in sizes] or [0]
    return IntegrityReport(
        root=root,
        images_per_class=_per_class(samples, lambda s: 1),
        mask_files_per_class=_per_class(samples, lambda s: len(s.mask_paths)),
        multi_mask_images_per_class=_per_class(samples, lambda s: int(len(s.mask_paths) > 1)),
        width_range=(min(widths), max(widths)),
        height_range=(min(heights), max(heights)),
        mask_modes=dict(sorted(modes.items())),
        exact_duplicates=exact,
        near_duplicates=near,
        warnings=_label_warnings(exact, near),
        problems=problems,
    )


def _per_class(samples: list[Sample], count: Callable[[Sample], int]) -> dict[str, int]:
    totals = {label.value: 0 for label in BusiClass}
    for sample in samples:
        totals[sample.label.value] += count(sample)
    return totals


def _label_warnings(exact: list[list[str]], near: list[list[str]]) -> list[str]:
    """Duplicates filed under more than one class: a labelling doubt, not a read error."""
    warnings = [
        f"{' = '.join(group)}: the same image under different labels; "
        "drop one, or keep them in one split (the grouped split does)"
        for group in exact
        if _mixes_labels(group)
    ]
    mixed_near = [group for group in near if _mixes_labels(group) and group not in exact]
    if mixed_near:
        warnings.append(
            f"{len(mixed_near)} near-duplicate groups mix labels "
            f"(e.g. {' ~ '.join(mixed_near[0])}); the grouped split keeps each on one side"
        )
    return warnings


def _mixes_labels(group: list[str]) -> bool:
    return len({name.split(" ", 1)[0] for name in group}) > 1


def format_report(report: IntegrityReport) -> str:
    """A compact text report: counts per class, sizes, mask modes, duplicates, verdict."""
    lines = [f"BUSI folder {report.root}", f"{'class':<10} {'images':>7} {'masks':>7} {'multi':>7}"]
    columns = (report.images_per_class, report.mask_files_per_class)
    multi = report.multi_mask_images_per_class
    for label in report.images_per_class:
        counts = [column[label] for column in (*columns, multi)]
        lines.append(f"{label:<10} " + " ".join(f"{count:>7}" for count in counts))
    totals = [sum(column.values()) for column in (*columns, multi)]
    lines.append(f"{'all':<10} " + " ".join(f"{count:>7}" for count in totals))
    (w_min, w_max), (h_min, h_max) = report.width_range, report.height_range
    lines.append(f"size: {w_min}-{w_max} px wide, {h_min}-{h_max} px high")
    modes = ", ".join(f"{mode}: {count}" for mode, count in report.mask_modes.items())
    lines.append(f"mask modes: {modes or 'none'}")
    lines.append(_groups_line("exact duplicates", report.exact_duplicates, " = "))
    lines.append(_groups_line("near duplicates", report.near_duplicates, " ~ "))
    lines.extend(f"warning: {warning}" for warning in report.warnings)
    if report.usable:
        lines.append("usable")
    else:
        lines.append(f"NOT usable, {len(report.problems)} problem(s):")
        lines.extend(f"  {problem}" for problem in report.problems)
    return "\n".join(lines)


def _groups_line(title: str, groups: list[list[str]], joiner: str) -> str:
    if not groups:
        return f"{title}: none"
    images = sum(len(group) for group in groups)
    largest = max(len(group) for group in groups)
    listed = "; ".join(joiner.join(group) for group in groups[:_LISTED_GROUPS])
    more = "; ..." if len(groups) > _LISTED_GROUPS else ""
    plural = "s" if len(groups) > 1 else ""
    return (
        f"{title}: {len(groups)} group{plural} ({images} images, largest {largest}): {listed}{more}"
    )
