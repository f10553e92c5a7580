"""Checking a BUSI folder before training: counts, sizes, mask modes, duplicates, problems.

`check_dataset` reads every sample once and collects one line per problem instead of stopping
at the first, so a user sees everything to fix in one run. Duplicates (found by
trainable.duplicates) are reported, not treated as problems: the split keeps each
near-duplicate group on one side instead, and copies of one frame whose labels or masks
contradict are listed, for `run` to leave out. Nothing here writes into the dataset
folder.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
from trainable.duplicates import (
    LINKS_FILE,
    Conflict,
    ReviewedLinks,
    analysis_image,
    analysis_mask,
    exact_duplicate_groups,
    find_duplicates,
    read_links,
)

log = logging.getLogger(__name__)

# How many groups and conflicts format_report lists before "...".
_LISTED_GROUPS = 5


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
    conflicts: list[Conflict] = field(default_factory=list)
    links: ReviewedLinks = ReviewedLinks()

    @property
    def usable(self) -> bool:
        return not self.problems


def check_dataset(root: Path, progress: bool = False) -> IntegrityReport:
    """Read every sample of a BUSI folder and report on it, collecting all problems."""
    root = Path(root)
    try:
        samples = discover(root)
    except DataError as error:
        return _report(root, [], [], [], [], [], Counter(), [str(error)])
    problems: list[str] = []
    try:
        links = read_links(root, [sample.name for sample in samples])
    except DataError as error:
        problems.append(str(error))
        links = ReviewedLinks()
    loaded: list[Sample] = []
    contents: list[LoadedSample] = []
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    modes: Counter[str] = Counter()
    sizes: list[tuple[int, int]] = []
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
        masks.append(analysis_mask(content.mask))
    report = _report(root, samples, loaded, images, masks, sizes, modes, problems, links)
    report.warnings.extend(data_warnings(loaded, contents))
    log.info("checked %s: %d images, %d problems", root, len(samples), len(problems))
    return report


def _report(
    root: Path,
    samples: list[Sample],
    loaded: list[Sample],
    images: list[np.ndarray],
    masks: list[np.ndarray],
    sizes: list[tuple[int, int]],
    modes: Counter[str],
    problems: list[str],
    links: ReviewedLinks | None = None,
) -> IntegrityReport:
    """The report on the samples found and the ones that loaded (images at 256x256)."""
    names = [sample.name for sample in loaded]
    labels = [sample.label.value for sample in loaded]
    exact = exact_duplicate_groups(names, images)
    try:
        near, conflicts = find_duplicates(names, labels, images, masks, links)
    except DataError as error:  # reviewed links that contradict each other
        problems.append(str(error))
        near, conflicts = find_duplicates(names, labels, images, masks)
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
        conflicts=conflicts,
        links=links or ReviewedLinks(),
    )


def _per_class(samples: list[Sample], count: Callable[[Sample], int]) -> dict[str, int]:
    totals = {label.value: 0 for label in BusiClass}
    for sample in samples:
        totals[sample.label.value] += count(sample)
    return totals


def _label_warnings(exact: list[list[str]], near: list[list[str]]) -> list[str]:
    """Duplicates filed under more than one class: a labelling doubt, not a read error."""
    warnings = [
        f"{' = '.join(group)}: the same image under different labels; `run` leaves "
        "both out (--conflicts exclude, the default)"
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
    lines.append(_links_line(report.links))
    lines.append(_conflicts_line(report.conflicts))
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


def _links_line(links: ReviewedLinks) -> str:
    if links.path is None:
        return f"reviewed links: none ({LINKS_FILE} in the folder adds or removes links)"
    return f"reviewed links: {links.path}: {len(links.same)} same, {len(links.different)} different"


def _conflicts_line(conflicts: Sequence[Conflict]) -> str:
    """The copies of one frame that contradict, which `run` leaves out by default."""
    if not conflicts:
        return "contradicting copies: none"
    images = sum(len(conflict.names) for conflict in conflicts)
    listed = "; ".join(conflict.describe() for conflict in conflicts[:_LISTED_GROUPS])
    more = "; ..." if len(conflicts) > _LISTED_GROUPS else ""
    return (
        f"contradicting copies: {len(conflicts)} frames ({images} images, left out by `run` "
        f"unless --conflicts keep): {listed}{more}"
    )


def report_json(report: IntegrityReport) -> dict:
    """Everything `data check --json` prints: every group and conflict in full."""
    groups = report.near_duplicates
    return {
        "root": str(report.root),
        "usable": report.usable,
        "images_per_class": report.images_per_class,
        "mask_files_per_class": report.mask_files_per_class,
        "multi_mask_images_per_class": report.multi_mask_images_per_class,
        "width_range": list(report.width_range),
        "height_range": list(report.height_range),
        "mask_modes": report.mask_modes,
        "exact_duplicates": report.exact_duplicates,
        "multi_image_groups": len(groups),
        "images_in_groups": sum(len(group) for group in groups),
        "largest_group": max((len(group) for group in groups), default=0),
        "groups": groups,
        "links": {
            "file": str(report.links.path) if report.links.path else None,
            "same": [list(pair) for pair in report.links.same],
            "different": [list(pair) for pair in report.links.different],
        },
        "conflicts": [{"names": list(c.names), "reason": c.reason} for c in report.conflicts],
        "excluded_by_default": [name for c in report.conflicts for name in c.names],
        "warnings": report.warnings,
        "problems": report.problems,
    }
