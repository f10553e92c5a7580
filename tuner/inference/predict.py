"""`python -m tuner predict`: segment every image of a folder with a tuned model.

Per image `<name>.png|jpg`: `<name>_pred.png` (the binary mask, 0/255, at the image's
original size) and `<name>_overlay.png` (the image with the lesion tinted red, and the
outline of a BUSI-named mask file beside the image in green), plus one `predictions.csv`.
Nothing is written into the input folder; an unreadable image is named on one line and
skipped.

The table says what the model has seen of each image (`in_experiment`): found by content
(the grey pixels), not by name, against the images of the experiment's split, so a
training image under another name is not mistaken for a test.
"""

from __future__ import annotations

import csv
import filecmp
import hashlib
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from results import escape
from results.errors import DamagedRecord, UserError
from results.experiment import Experiment, Trial
from results.layout import SPLIT_FILE
from results.records import (
    CROSS_VALIDATED,
    TEST,
    TRAIN,
    VALIDATION,
    ModelCard,
)
from trainable.dataset import DataError, discover, read_grey, read_mask
from trainable.preprocess import dataset_fingerprint
from tuner.inference import PREDICT_BATCH_SIZE
from tuner.inference.segmenter import Segmenter

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# BUSI's own mask files sit beside its images: they are not images to segment.
_MASK_STEM = re.compile(r"_mask(_\d+)?$")
CSV_FILE = "predictions.csv"
CSV_COLUMNS = (
    "name",
    "width",
    "height",
    "lesion_pixels",
    "lesion_fraction",
    "mean_probability",
    "in_experiment",
    "mask_dice",
)
OVERLAY_RED = np.array([230, 30, 30], dtype=np.float32)
OVERLAY_ALPHA = 0.45
# The true lesion's outline, as the report's example plots draw it.
OUTLINE_GREEN = np.array([51, 255, 51], dtype=np.uint8)
OUTLINE_WIDTH = 2  # pixels, inside the lesion: visible on a 500 px image, hides little

# in_experiment: the part of the experiment's split an image is, or what is known of it.
UNSEEN, UNKNOWN = "unseen", "unknown"
SEEN = (TRAIN, VALIDATION, CROSS_VALIDATED)  # fit or chosen on: results there are no test
# One content in two parts (BUSI holds one exact duplicate pair, benign (433) and
# malignant (145), which a random split may part): the part the model learnt most from wins.
_PRECEDENCE = (TRAIN, CROSS_VALIDATED, VALIDATION, TEST)


@dataclass(frozen=True)
class Prediction:
    name: str
    width: int
    height: int
    lesion_pixels: int
    mean_probability: float
    in_experiment: str = UNKNOWN
    mask_dice: float | None = None  # against the mask file(s) beside the image

    @property
    def lesion_fraction(self) -> float:
        return self.lesion_pixels / (self.width * self.height)

    def row(self) -> list:
        return [
            self.name,
            self.width,
            self.height,
            self.lesion_pixels,
            f"{self.lesion_fraction:.6f}",
            f"{self.mean_probability:.6f}",
            self.in_experiment,
            "" if self.mask_dice is None else f"{self.mask_dice:.6f}",
        ]


def content_hash(image: np.ndarray) -> str:
    """An image's identity: its size and grey pixels. A copy under another name, saved
    again as PNG or in colour, has the same; a JPEG copy has not (its pixels changed)."""
    digest = hashlib.blake2b(f"{image.shape[0]}x{image.shape[1]}".encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


@dataclass
class Known:
    """The images of the experiment's split, by content: what `in_experiment` says."""

    hashes: dict[str, str] = field(default_factory=dict)  # content_hash -> part
    # Data files not decoded yet, by (height, width): an image is compared only with
    # those of its size, so a folder of new images decodes few or none of them.
    pending: dict[tuple[int, int], list[tuple[Path, str]]] = field(default_factory=dict)
    unknown: str | None = None  # why nothing is known: then every image is UNKNOWN

    def part(self, image: np.ndarray, path: Path) -> str:
        """The part of the split that `image` (read from `path`) is in."""
        if self.unknown is not None:
            return UNKNOWN
        key = content_hash(image)
        for candidate, part in self.pending.pop(image.shape, []):
            # A byte-identical copy (the usual case) has these pixels: not decoded again.
            same = filecmp.cmp(candidate, path, shallow=False)
            self.add(key if same else content_hash(read_grey(candidate)), part)
        return self.hashes.get(key, UNSEEN)

    def add(self, key: str, part: str) -> None:
        known = self.hashes.get(key)
        if known is None or _PRECEDENCE.index(part) < _PRECEDENCE.index(known):
            self.hashes[key] = part


def known_from_experiment(experiment: Experiment, trial: Trial) -> Known:
    """The trial's split.json mapped to the files of the experiment's data folder, when
    that folder is on this machine and holds the content the run recorded."""
    try:
        parts = trial.split().parts()
    except (DamagedRecord, KeyError):
        return Known(unknown=f"{trial.path / SPLIT_FILE} is missing or damaged")
    data = experiment.settings.data
    if data is None or not data.is_dir():
        return Known(unknown=f"the experiment's data {data} is not on this machine")
    root = data.resolve()
    recorded = experiment.provenance.content_hash if experiment.provenance else None
    try:
        samples = discover(root)
        if recorded and dataset_fingerprint(samples, root) != recorded:
            return Known(unknown=f"the experiment's data {data} changed since the run")
        pending: dict[tuple[int, int], list[tuple[Path, str]]] = {}
        for sample in (s for s in samples if s.name in parts):
            with Image.open(sample.image_path) as header:  # reads the size, decodes nothing
                width, height = header.size
            pending.setdefault((height, width), []).append((sample.image_path, parts[sample.name]))
    except (DataError, OSError) as error:
        return Known(unknown=f"the experiment's data {data} cannot be read ({error})")
    return Known(pending=pending)


def split_images(experiment: Experiment, trial: Trial) -> dict | None:
    """For the model card: each part of the trial's split as the content hashes of its
    images, so that predict with the exported file alone can say what it has seen; None
    when the experiment's data is not here (every image `unknown` then)."""
    known = known_from_experiment(experiment, trial)
    if known.unknown is not None:
        return None
    parts: dict[str, list[str]] = {}
    for path, part in (item for files in known.pending.values() for item in files):
        parts.setdefault(part, []).append(content_hash(read_grey(path)))
    return {
        "content_hash": "blake2b-128 of '<height>x<width>' then the uint8 grey pixels, row by row",
        "parts": {part: sorted(hashes) for part, hashes in sorted(parts.items())},
    }


def known_from_card(card: ModelCard, card_file: Path) -> Known:
    """The split the model card carries, if it carries one."""
    if card.split_images is None:
        return Known(
            unknown=f"{card_file.name} lists no images of the split (exported without the "
            "experiment's data at hand, or by an older busi-tune)"
        )
    known = Known()
    for part, hashes in card.split_images.items():
        for key in hashes:
            known.add(key, part)
    return known


def summary(predictions: list[Prediction]) -> str | None:
    """One line on what the model has seen of these images; None when nothing is known."""
    counts = Counter(p.in_experiment for p in predictions)
    if counts[UNKNOWN] == len(predictions):
        return None
    order = (TRAIN, VALIDATION, CROSS_VALIDATED, TEST, UNSEEN)
    line = "in_experiment: " + ", ".join(f"{counts[k]} {k}" for k in order if counts[k])
    seen = sum(counts[k] for k in SEEN)
    if seen:
        line += (
            f"; {seen} of {len(predictions)} images were trained or selected on: "
            "their results are not a test"
        )
    return line


def find_images(folder: Path) -> list[Path]:
    """PNG and JPEG files (any case) directly in `folder`, BUSI mask files left out."""
    if not folder.is_dir():
        raise UserError(f"--images {folder}: no such folder")
    images = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not _MASK_STEM.search(p.stem) and p.is_file()
    )
    if not images:
        raise UserError(f"--images {folder}: holds no .png or .jpg images")
    return images


def prepare_output(out: Path, images: Path, overwrite: bool) -> None:
    """Refuse an output folder inside the input folder, a file, one that holds files, or
    one that cannot be written (before any image is segmented)."""
    out, images = out.resolve(), images.resolve()
    if out == images or images in out.parents:
        raise UserError(f"--out {out}: inside --images; nothing is written into the input folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder (it is kept); choose a folder")
    try:
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise UserError(f"--out {out}: not empty; choose a new folder or pass --overwrite")
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # a read-only folder fails here
    except OSError as error:
        raise _cannot_write(out, error) from None


def _cannot_write(out: Path, error: OSError) -> UserError:
    return UserError(
        f"--out {out}: cannot write {error.filename or out} ({error.strerror or error}); "
        "choose another --out, or free space and clear the way at that path"
    )


def overlay(image: np.ndarray, mask: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """RGB: the grey image with the predicted lesion tinted red and the true lesion's
    outline, when given, in green on top."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    rgb[mask] = (1 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * OVERLAY_RED
    rgb = rgb.round().astype(np.uint8)
    if truth is not None:
        rgb[outline(truth)] = OUTLINE_GREEN
    return rgb


def outline(mask: np.ndarray) -> np.ndarray:
    """The lesion's pixels within OUTLINE_WIDTH of its edge (the image's border is no
    edge: erosion pads with lesion)."""
    kernel = np.ones((3, 3), np.uint8)
    inner = cv2.erode(mask.astype(np.uint8), kernel, iterations=OUTLINE_WIDTH).astype(bool)
    return mask & ~inner


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """2|P and T| / (|P| + |T|); 1.0 when both are empty, as in trainable.metrics."""
    total = int(mask.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2 * int((mask & truth).sum()) / total


def masks_beside(folder: Path, images: list[Path]) -> dict[Path, tuple[Path, ...]]:
    """Each image's BUSI-named mask files in `folder`: `x_mask.png`, `x_mask_1.png` ...
    for `x.png` (find_images leaves them out of the images)."""
    by_stem: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        found = _MASK_STEM.search(path.stem)
        if found and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            by_stem.setdefault(path.stem[: found.start()], []).append(path)
    return {p: tuple(sorted(by_stem[p.stem])) for p in images if p.stem in by_stem}


def mask_at_original_size(probs: np.ndarray, width: int, height: int, threshold: float):
    """Probabilities at the evaluation size -> (mask, probabilities) at width x height."""
    resized = cv2.resize(probs.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return resized > threshold, resized


Loaded = tuple[Path, np.ndarray, np.ndarray | None]  # the image, grey, its mask or None


def _readable(
    paths: list[Path], masks: dict[Path, tuple[Path, ...]], skipped: list[str]
) -> Iterator[Loaded]:
    for path in paths:
        try:
            image = read_grey(path)
        except DataError as error:
            skipped.append(str(error))
            continue
        truth = None
        if path in masks:
            try:
                truth = read_mask(masks[path], (image.shape[1], image.shape[0]))
            except DataError as error:  # the image is still segmented, without a truth
                skipped.append(f"{error} (no outline or mask_dice for {path.name})")
        yield path, image, truth


def predict_folder(
    segmenter: Segmenter,
    images: Path,
    out: Path,
    batch_size: int = PREDICT_BATCH_SIZE,
    progress: bool = True,
    known: Known | None = None,
) -> tuple[list[Prediction], list[str]]:
    """Segment every image of `images` into `out`; returns the predictions and one line per
    skipped image (or mask). `known`: the experiment's split, for `in_experiment`."""
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if known is None:
        known = Known(unknown="no experiment given")
    paths = find_images(images)
    predictions: list[Prediction] = []
    skipped: list[str] = []
    # Reading errors are DataErrors: skipped images.
    readable = _readable(paths, masks_beside(images, paths), skipped)
    try:  # so an OSError here is a write (a full disk, a folder in a file's place)
        # disable=None: a bar only on a terminal, never drawn into a log file.
        with tqdm(
            total=len(paths), desc="predicting", unit="image", disable=None if progress else True
        ) as bar:
            while batch := [item for _, item in zip(range(batch_size), readable, strict=False)]:
                probs = segmenter.probabilities([image for _, image, _ in batch])
                for (path, image, truth), prob in zip(batch, probs, strict=True):
                    prediction = _write(path, image, truth, prob, out, segmenter.threshold)
                    predictions.append(replace(prediction, in_experiment=known.part(image, path)))
                bar.update(len(batch))
            bar.update(len(paths) - bar.n)
        write_csv(out / CSV_FILE, predictions)
    except OSError as error:
        raise _cannot_write(out, error) from None
    return predictions, skipped


def write_csv(path: Path, predictions: list[Prediction]) -> None:
    """One row per image: CSV_COLUMNS. Every text cell goes through escape.csv_cell, so a
    cell that starts with = + - @ tab or carriage return (e.g. the name of `=cmd.png`) is
    written with a leading single quote: a spreadsheet shows it as text, never runs it."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([escape.csv_cell(cell) for cell in p.row()] for p in predictions)


def _write(
    path: Path,
    image: np.ndarray,
    truth: np.ndarray | None,
    probs: np.ndarray,
    out: Path,
    threshold: float,
) -> Prediction:
    height, width = image.shape
    mask, full = mask_at_original_size(probs, width, height, threshold)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{path.stem}_pred.png")
    Image.fromarray(overlay(image, mask, truth)).save(out / f"{path.stem}_overlay.png")
    score = None if truth is None else dice(mask, truth)
    return Prediction(
        path.stem, width, height, int(mask.sum()), float(full.mean()), mask_dice=score
    )
