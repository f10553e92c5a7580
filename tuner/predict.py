"""`python -m tuner predict`: segment every image of a folder with a tuned model.

Per image `<name>.png|jpg`: `<name>_pred.png` (the binary mask, 0/255, at the image's
original size) and `<name>_overlay.png` (the image with the lesion tinted red), plus one
`predictions.csv`. Nothing is written into the input folder; an unreadable image is named
on one line and skipped.
"""

from __future__ import annotations

import csv
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from results import escape
from trainable.dataset import DataError, read_grey
from trainable.errors import UserError
from tuner.segmenter import Segmenter

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# BUSI's own mask files sit beside its images: they are not images to segment.
_MASK_STEM = re.compile(r"_mask(_\d+)?$")
CSV_FILE = "predictions.csv"
CSV_COLUMNS = ("name", "width", "height", "lesion_pixels", "lesion_fraction", "mean_probability")
OVERLAY_RED = np.array([230, 30, 30], dtype=np.float32)
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class Prediction:
    name: str
    width: int
    height: int
    lesion_pixels: int
    mean_probability: float

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
        ]


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


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB: the grey image with the predicted lesion tinted red."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    rgb[mask] = (1 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * OVERLAY_RED
    return rgb.round().astype(np.uint8)


def mask_at_original_size(probs: np.ndarray, width: int, height: int, threshold: float):
    """Probabilities at the evaluation size -> (mask, probabilities) at width x height."""
    resized = cv2.resize(probs.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return resized > threshold, resized


def _readable(paths: list[Path], skipped: list[str]) -> Iterator[tuple[Path, np.ndarray]]:
    for path in paths:
        try:
            yield path, read_grey(path)
        except DataError as error:
            skipped.append(str(error))


def predict_folder(
    segmenter: Segmenter, images: Path, out: Path, batch_size: int = 8, progress: bool = True
) -> tuple[list[Prediction], list[str]]:
    """Segment every image of `images` into `out`; returns the predictions and one line per
    skipped image."""
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    paths = find_images(images)
    predictions: list[Prediction] = []
    skipped: list[str] = []
    readable = _readable(paths, skipped)  # reading errors are DataErrors: skipped images
    try:  # so an OSError here is a write (a full disk, a folder in a file's place)
        # disable=None: a bar only on a terminal, never drawn into a log file.
        with tqdm(
            total=len(paths), desc="predicting", unit="image", disable=None if progress else True
        ) as bar:
            while batch := [item for _, item in zip(range(batch_size), readable, strict=False)]:
                probs = segmenter.probabilities([image for _, image in batch])
                for (path, image), prob in zip(batch, probs, strict=True):
                    predictions.append(_write(path, image, prob, out, segmenter.threshold))
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


def _write(path: Path, image: np.ndarray, probs: np.ndarray, out: Path, threshold: float):
    height, width = image.shape
    mask, full = mask_at_original_size(probs, width, height, threshold)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{path.stem}_pred.png")
    Image.fromarray(overlay(image, mask)).save(out / f"{path.stem}_overlay.png")
    return Prediction(path.stem, width, height, int(mask.sum()), float(full.mean()))
