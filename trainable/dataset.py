"""Finding and reading a BUSI folder in its public layout.

    <root>/benign/benign (1).png, benign (1)_mask.png[, _mask_1.png, _mask_2.png]
    <root>/malignant/...   <root>/normal/...

An image's lesion mask is the union of its mask files; any non-zero pixel is lesion.
Every problem raises `DataError` with one line that names the file and the fix. Nothing
here writes into the dataset folder.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainable.errors import DataError

__all__ = ["BusiClass", "DataError", "Sample", "discover", "load_sample", "mask_modes"]


class BusiClass(enum.StrEnum):
    BENIGN = "benign"
    MALIGNANT = "malignant"
    NORMAL = "normal"


# The extension in any case: `benign (1).PNG` is as much part of the layout as `.png`.
_FILE = re.compile(
    r"^(?P<stem>(?P<cls>benign|malignant|normal) \((?P<num>\d+)\))(?P<mask>_mask(_\d+)?)?"
    r"\.(?i:png)$"
)


@dataclass(frozen=True)
class Sample:
    name: str  # "benign (1)"
    label: BusiClass
    image_path: Path
    mask_paths: tuple[Path, ...]


def discover(root: Path) -> list[Sample]:
    """Every image of a BUSI folder with its mask files, sorted by class then number."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder; pass the folder that holds benign/, malignant/, "
            "normal/ (e.g. Dataset_BUSI_with_GT) or make one with `python -m tuner data synth`"
        )
    class_dirs = [root / c.value for c in BusiClass if (root / c.value).is_dir()]
    if not class_dirs:
        raise DataError(
            f"{root}: no class folders; expected benign/, malignant/ and normal/ inside it"
        )
    samples: list[Sample] = []
    for class_dir in class_dirs:
        samples.extend(_discover_class(class_dir, BusiClass(class_dir.name)))
    if not samples:
        raise DataError(f"{root}: the class folders hold no '<class> (N).png' images")
    return samples


def _discover_class(class_dir: Path, label: BusiClass) -> list[Sample]:
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    for path in class_dir.iterdir():
        match = _FILE.match(path.name)
        if match is None or match["cls"] != label.value:
            continue  # not part of the layout (e.g. .DS_Store, a README)
        if not path.is_file():  # False for a folder, a pipe (which would hang a reader), a loop
            raise DataError(
                f"{path}: named like an image but not a readable file (a folder, a pipe or a "
                "broken or looping link); remove or rename it"
            )
        if match["mask"]:
            masks.setdefault(match["stem"], []).append(path)
        else:
            images[match["stem"]] = path
    for stem, paths in masks.items():
        if stem not in images:
            raise DataError(
                f"{paths[0]}: mask without an image; add '{stem}.png' or remove the mask"
            )
    samples = []
    for stem, image_path in images.items():
        if stem not in masks:
            raise DataError(
                f"{image_path}: image without a mask; add '{stem}_mask.png' "
                "(all zero for a normal image) or remove the image"
            )
        samples.append(Sample(stem, label, image_path, tuple(sorted(masks[stem]))))
    samples.sort(key=lambda s: int(_FILE.match(s.image_path.name)["num"]))
    return samples


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as error:
        raise DataError(
            f"{path}: too large to be an ultrasound image ({error}); resize or remove it"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(
            f"{path}: unreadable or corrupt image ({error}); replace it with a good copy"
        ) from None
    return image


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The image as one uint8 grey channel (H, W) and the union of its masks as bool."""
    image = _open(sample.image_path)
    union = np.zeros((image.size[1], image.size[0]), dtype=bool)
    for path in sample.mask_paths:
        mask = _open(path)
        if mask.size != image.size:
            raise DataError(
                f"{path}: mask is {mask.size[0]}x{mask.size[1]} but its image is "
                f"{image.size[0]}x{image.size[1]}; fix or remove the pair"
            )
        # Foreground is any non-zero value; modes 1, L, RGB and RGBA all occur. An RGBA
        # mask's alpha band is opaque everywhere, so only its colour bands count.
        bands = np.asarray(mask.convert("RGB") if mask.mode == "RGBA" else mask)
        union |= bands.any(axis=2) if bands.ndim == 3 else bands.astype(bool)
    return grey(image), union


def grey(image: Image.Image) -> np.ndarray:
    """One uint8 grey channel (H, W), as training and prediction both see an image. A
    16-bit grey image is scaled to 8 bits (PIL's own conversion clips it to white)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_grey(path: Path) -> np.ndarray:
    """An image file (PNG, JPEG, grey or colour) as one uint8 grey channel; DataError
    naming the file when it cannot be read."""
    return grey(_open(path))


def mask_modes(sample: Sample) -> list[str]:
    return [_open(path).mode for path in sample.mask_paths]
