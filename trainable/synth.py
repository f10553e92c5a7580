"""A small synthetic BUSI folder, for tests and dry runs without the real data.

The layout, file names and PNG modes copy the public release (see `trainable.dataset`), so
code that reads it reads the real data the same way. The images look roughly like breast
ultrasound: layered tissue under a bright skin band, darkening with depth, with
multiplicative (Rayleigh) speckle; lesions are dark (hypoechoic) blobs, round or elliptical
when benign, irregular and spiculated when malignant. A lesion is 30-50% as bright as the
tissue around it: a 3-level U-Net (16 channels) trained on 66 such images at 128x128 reached
a Dice of 0.7-0.9 on 22 others within 12-20 CPU epochs. The tissue varies enough that no two
images are near-duplicates by `trainable.duplicates`, as in a dataset of distinct scans.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from trainable.dataset import BusiClass, DataError

log = logging.getLogger(__name__)

_WIDTH_RANGE = (160, 320)
_HEIGHT_RANGE = (128, 256)
# Every EXTRA_MASK_EVERY-th lesion image splits its lesion over two mask files, as 17 real
# BUSI images do, so readers must take the union.
_EXTRA_MASK_EVERY = 6


# Beside the class folders of a synthetic set, so every reader can tell it from BUSI.
SYNTHETIC_MARKER = "SYNTHETIC.md"


def write_synthetic_busi(
    root: Path, n_benign: int = 24, n_malignant: int = 12, n_normal: int = 8, seed: int = 0
) -> int:
    """Write a synthetic dataset in the BUSI layout under `root`; return the image count.

    The same seed gives the same bytes. Refuses a folder that holds anything, so it can
    never overwrite data."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"{root}: exists and is not an empty folder; pass a new or empty folder for the "
            "synthetic dataset (nothing was written)"
        )
    rng = np.random.default_rng(seed)
    counts = {
        BusiClass.BENIGN: n_benign,
        BusiClass.MALIGNANT: n_malignant,
        BusiClass.NORMAL: n_normal,
    }
    for label, count in counts.items():
        class_dir = root / label.value
        class_dir.mkdir(parents=True)
        for number in range(1, count + 1):
            _write_sample(class_dir / f"{label.value} ({number})", label, number, rng)
    total = sum(counts.values())
    (root / SYNTHETIC_MARKER).write_text(
        "Synthetic images in the BUSI layout, written by `python -m tuner data synth` "
        f"(seed {seed}): not ultrasound, not BUSI. Results on them test the pipeline.\n"
    )
    log.info("wrote %d synthetic BUSI images to %s", total, root)
    return total


def _write_sample(stem: Path, label: BusiClass, number: int, rng: np.random.Generator) -> None:
    """One image and its mask file(s): `<stem>.png`, `<stem>_mask.png`[, `_mask_1.png`]."""
    height = int(rng.integers(_HEIGHT_RANGE[0], _HEIGHT_RANGE[1] + 1))
    width = int(rng.integers(_WIDTH_RANGE[0], _WIDTH_RANGE[1] + 1))
    tissue = _tissue(height, width, rng)
    if label == BusiClass.NORMAL:
        lesion = np.zeros((height, width), dtype=bool)
    elif label == BusiClass.BENIGN:
        lesion = _benign_lesion(height, width, rng)
    else:
        lesion = _malignant_lesion(height, width, rng)
    image = _speckle(_darken(tissue, lesion, rng), rng)
    grey = np.clip(image * 255, 0, 255).astype(np.uint8)
    Image.fromarray(grey).convert("RGB").save(f"{stem}.png")
    if label == BusiClass.NORMAL:
        # Real normal masks are all-zero RGB files.
        Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(f"{stem}_mask.png")
        return
    # Real lesion masks are mode '1'; 'L' (0/255) is read the same way, so use both.
    mode = "1" if rng.random() < 0.75 else "L"
    if number % _EXTRA_MASK_EVERY == 0:
        first, second = _split(lesion)
        _save_mask(first, mode, f"{stem}_mask.png")
        _save_mask(second, mode, f"{stem}_mask_1.png")
    else:
        _save_mask(lesion, mode, f"{stem}_mask.png")


def _tissue(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth echo strength in [0, 1]: horizontal tissue layers, a bright band near the top
    (skin and fat), darkening with depth."""
    coarse = rng.random((max(2, height // 16), max(2, width // 40))).astype(np.float32)
    layers = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    band = 0.35 * np.exp(-(((rows - rng.uniform(0.02, 0.08)) / 0.03) ** 2))
    depth = 1.0 - rng.uniform(0.2, 0.6) * rows
    return np.clip((0.3 + 0.6 * layers) * depth + band, 0.0, 1.0)


def _benign_lesion(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth, round or oval (wider than tall) blob."""
    mask = np.zeros((height, width), dtype=np.uint8)
    centre, radius = _lesion_place(height, width, rng)
    axes = (round(radius * rng.uniform(1.0, 1.6)), round(radius * rng.uniform(0.7, 1.0)))
    angle = float(rng.uniform(-20, 20))
    cv2.ellipse(mask, centre, axes, angle, 0, 360, color=1, thickness=-1)
    return mask.astype(bool)


def _malignant_lesion(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob with spikes: its radius wobbles with the angle."""
    centre, radius = _lesion_place(height, width, rng)
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    wobble = sum(
        rng.uniform(0.05, 0.2) * np.sin(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    spikes = np.where(rng.random(angles.size) < 0.12, rng.uniform(0.2, 0.5, angles.size), 0.0)
    radii = radius * (1.0 + wobble + spikes)
    points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)])
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(points.T).astype(np.int32)], color=1)
    return mask.astype(bool)


def _lesion_place(
    height: int, width: int, rng: np.random.Generator
) -> tuple[tuple[int, int], float]:
    """A centre (x, y) away from the edges and the skin band, and a radius in pixels."""
    radius = float(min(height, width) * rng.uniform(0.12, 0.22))
    x = int(rng.uniform(0.3, 0.7) * width)
    y = int(rng.uniform(0.35, 0.65) * height)
    return (x, y), radius


def _darken(tissue: np.ndarray, lesion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tissue with the lesion at 30-50% of its brightness, edges softened by a pixel or two."""
    alpha = cv2.GaussianBlur(lesion.astype(np.float32), (0, 0), 1.5)
    level = rng.uniform(0.3, 0.5)
    return tissue * (1.0 - alpha * (1.0 - level))


def _speckle(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Rayleigh speckle of mean 1, blurred a little to a grain of ~2 px."""
    noise = rng.rayleigh(np.sqrt(2 / np.pi), image.shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.7)
    return image * noise / noise.mean()


def _split(lesion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lesion cut in two at its middle column: left part, right part."""
    columns = np.nonzero(lesion.any(axis=0))[0]
    middle = (columns[0] + columns[-1]) // 2
    left = lesion.copy()
    left[:, middle:] = False
    return left, lesion & ~left


def _save_mask(mask: np.ndarray, mode: str, path: str) -> None:
    if mode == "1":
        Image.fromarray(mask).save(path)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
