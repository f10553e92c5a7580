"""Decode and resize a BUSI folder once into compact uint8 arrays, cached on disk.

The cache is keyed by the dataset's content (every PNG's bytes) and the image size, so a
second run reads one .npz instead of decoding 780 PNGs, and an edited dataset is never
served stale. Trials receive these arrays (through Ray's object store), not file paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from results import storage
from results.errors import UserError
from results.settings import ConflictPolicy
from trainable.dataset import BusiClass, Sample, data_warnings, discover, read_sample
from trainable.duplicates import (
    LINKS_FILE,
    Conflict,
    ReviewedLinks,
    analysis_image,
    analysis_mask,
    find_duplicates,
    read_links,
)

log = logging.getLogger(__name__)

# Bump when the preprocessing changes, so old caches are not reused.
_PREPROCESS_VERSION = 4  # 3: the mid-grey mask rule, data warnings; 4: voted groups, conflicts


@dataclass(frozen=True)
class BusiArrays:
    """The whole dataset at one size: images and masks (N, S, S) uint8 (masks 0/1)."""

    names: tuple[str, ...]
    labels: tuple[BusiClass, ...]
    images: np.ndarray
    masks: np.ndarray
    # Near-duplicate group id per image; the grouped split keeps a group on one side.
    groups: np.ndarray
    # Legal but suspicious data (see dataset.data_warnings), said by `data check` and `run`.
    warnings: tuple[str, ...] = ()
    # Copies of one frame whose labels or masks contradict (duplicates.frame_conflicts).
    conflicts: tuple[Conflict, ...] = ()
    # The images `apply_conflicts` left out, by name.
    excluded: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def rows(self, rows: list[int], **changes) -> BusiArrays:
        """These images only, in this order, with `changes` to the other fields."""
        return dataclasses.replace(
            self,
            names=tuple(self.names[i] for i in rows),
            labels=tuple(self.labels[i] for i in rows),
            images=self.images[rows],
            masks=self.masks[rows],
            groups=self.groups[rows],
            **changes,
        )


def dataset_fingerprint(samples: list[Sample], root: Path) -> str:
    """A hash of every file's relative path and bytes: the dataset's content, with the
    reviewed links file when there is one (it changes the groups, so the split)."""
    digest = hashlib.blake2b(digest_size=16)
    for sample in samples:
        for path in (sample.image_path, *sample.mask_paths):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    links = Path(root) / LINKS_FILE
    if links.is_file():
        digest.update(LINKS_FILE.encode())
        digest.update(links.read_bytes())
    return digest.hexdigest()


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image by area averaging when shrinking (bilinear when growing); mask by nearest
    neighbour, so it stays binary."""
    mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return resize_image(image, size), mask


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """A grey image to size x size as every model input is made: area averaging when
    shrinking, bilinear when growing."""
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_rule(size: int) -> str:
    """`resize_image` in words exact enough for another program to reproduce its input
    (the export's model card); change the two together."""
    return (
        f"cv2.resize(image, ({size}, {size}), interpolation=cv2.INTER_AREA) when the uint8 "
        f"grey image is at least {size} px high and at least {size} px wide, else "
        "interpolation=cv2.INTER_LINEAR; the aspect ratio is not kept"
    )


def load_busi(
    root: Path, image_size: int, cache_dir: Path | None = None, progress: bool = True
) -> BusiArrays:
    """The dataset at `image_size`, from the cache when its content was seen before."""
    root = Path(root).resolve()
    samples = discover(root)
    key = f"{dataset_fingerprint(samples, root)}-{image_size}px-v{_PREPROCESS_VERSION}"
    cache_path = (cache_dir or storage.cache_root()) / f"busi-{key}.npz"
    if cache_path.is_file():
        log.info("dataset cache hit: %s", cache_path)
        return read_cache(cache_path)
    links = read_links(root, [sample.name for sample in samples])
    arrays = _decode(samples, image_size, progress, links)
    _write_cache(arrays, cache_path)
    log.info("dataset cached: %s", cache_path)
    return arrays


def _decode(samples: list[Sample], size: int, progress: bool, links: ReviewedLinks) -> BusiArrays:
    images = np.empty((len(samples), size, size), dtype=np.uint8)
    masks = np.empty((len(samples), size, size), dtype=np.uint8)
    analysed, analysed_masks, contents = [], [], []
    # disable=None: a bar only on a terminal, never drawn into a log file.
    for i, sample in enumerate(
        tqdm(samples, desc="decoding BUSI", disable=None if progress else True)
    ):
        content = read_sample(sample)
        images[i], masks[i] = resize_pair(content.image, content.mask, size)
        analysed.append(analysis_image(content.image))
        analysed_masks.append(analysis_mask(content.mask))
        contents.append(content)
    names = tuple(s.name for s in samples)
    labels = tuple(s.label for s in samples)
    found, conflicts = find_duplicates(
        names, [label.value for label in labels], analysed, analysed_masks, links
    )
    groups = np.arange(len(samples), dtype=np.int32)
    for group_id, members in enumerate(found):
        for name in members:
            groups[names.index(name)] = len(samples) + group_id
    warnings = tuple(data_warnings(samples, contents))
    return BusiArrays(names, labels, images, masks, groups, warnings, tuple(conflicts))


def _write_cache(arrays: BusiArrays, path: Path) -> None:
    # Write then rename: a concurrent reader never sees a half-written file.
    partial = path.with_suffix(f".{os.getpid()}.partial.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            partial,
            names=np.array(arrays.names),
            labels=np.array([label.value for label in arrays.labels]),
            images=arrays.images,
            masks=arrays.masks,
            groups=arrays.groups,
            warnings=np.array(arrays.warnings, dtype=str),
            conflicts=np.array(
                [json.dumps([c.names, c.reason]) for c in arrays.conflicts], dtype=str
            ),
        )
        partial.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):  # a parent that is a file, say
            partial.unlink(missing_ok=True)
        raise UserError(
            f"{path.parent}: the preprocessed-data cache cannot be written there "
            f"({error.strerror or error}); give a writable --cache-dir, or set BUSI_TUNE_CACHE"
        ) from None


def read_cache(path: Path) -> BusiArrays:
    with np.load(path) as data:
        return BusiArrays(
            names=tuple(str(n) for n in data["names"]),
            labels=tuple(BusiClass(str(label)) for label in data["labels"]),
            images=data["images"],
            masks=data["masks"],
            groups=data["groups"],
            # Caches written before version 3 (benchmark bundles) have no warnings.
            warnings=tuple(str(w) for w in data.get("warnings", ())),
            conflicts=tuple(
                Conflict(tuple(names), reason)
                for names, reason in (json.loads(str(c)) for c in data.get("conflicts", ()))
            ),
        )


def resized(data: BusiArrays, size: int) -> BusiArrays:
    """The same dataset at another size, shrunk from these arrays (the benchmarks' bundled
    cache); training and evaluation decode every size from the PNGs (`load_sized`)."""
    if size == data.image_size:
        return data
    pairs = [resize_pair(i, m, size) for i, m in zip(data.images, data.masks, strict=True)]
    return BusiArrays(
        names=data.names,
        labels=data.labels,
        images=np.stack([p[0] for p in pairs]),
        masks=np.stack([p[1] for p in pairs]),
        groups=data.groups,
        warnings=data.warnings,
        conflicts=data.conflicts,
        excluded=data.excluded,
    )


def apply_conflicts(data: BusiArrays, policy: ConflictPolicy) -> BusiArrays:
    """The dataset without the contradicting copies of one frame (EXCLUDE), with a warning
    naming them; unchanged with KEEP. Left out of the data, not only of the scores: no
    copy can be trusted over the other, and training on both teaches both answers."""
    if ConflictPolicy(policy) is ConflictPolicy.KEEP or not data.conflicts:
        return data
    dropped = {name for conflict in data.conflicts for name in conflict.names}
    rows = [i for i, name in enumerate(data.names) if name not in dropped]
    listed = "; ".join(conflict.describe() for conflict in data.conflicts)
    warning = (
        f"left out {len(dropped)} images, copies of one frame whose labels or lesion masks "
        f"contradict (--conflicts exclude; keep uses them): {listed}"
    )
    excluded = tuple(name for name in data.names if name in dropped)
    return data.rows(rows, warnings=(*data.warnings, warning), excluded=excluded)


@dataclass(frozen=True)
class SizedData:
    """One dataset decoded from its PNGs at every size an experiment's trials train at,
    and the experiment's one evaluation size: every trial is scored on the masks at
    `eval_size`, so trials that train at other sizes stay comparable."""

    by_size: dict[int, BusiArrays]
    eval_size: int

    def at(self, size: int) -> BusiArrays:
        return self.by_size[size]

    @property
    def evaluation(self) -> BusiArrays:
        return self.by_size[self.eval_size]


def load_sized(
    root: Path,
    sizes: tuple[int, ...],
    eval_size: int,
    cache_dir: Path | None = None,
    progress: bool = True,
    conflicts: ConflictPolicy = ConflictPolicy.EXCLUDE,
) -> SizedData:
    """The dataset at each of `sizes` and at `eval_size`, each decoded from the PNGs
    (cached per size), never resized from another size, under the `conflicts` policy."""
    wanted = sorted({*sizes, eval_size})
    return SizedData(
        {s: apply_conflicts(load_busi(root, s, cache_dir, progress), conflicts) for s in wanted},
        eval_size,
    )
