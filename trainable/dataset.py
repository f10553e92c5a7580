"""Finding and reading a BUSI folder in its public layout.

    <root>/benign/benign (1).png, benign (1)_mask.png[, _mask_1.png, _mask_2.png]
    <root>/malignant/...   <root>/normal/...

An image's lesion mask is the union of its mask files, each read as its brightest colour
band. A two-valued mask's non-zero value is lesion (255, or 1 in a label map); in a
graded one (anti-aliased edges, JPEG noise) a pixel is lesion where it reaches half the
format's full scale (128 of 255). Legal but suspicious data (masks that are not
two-valued, a lesion class with an empty mask, a class missing) gets a warning
(`data_warnings`). Every problem raises `DataError` with one line that names the file
and the fix. Nothing
here writes into the dataset folder.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from results.errors import DataError

__all__ = [
    "BusiClass",
    "DataError",
    "Sample",
    "LoadedSample",
    "data_warnings",
    "discover",
    "load_sample",
    "read_mask",
    "read_sample",
    "mask_modes",
]


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


@dataclass(frozen=True)
class LoadedSample:
    image: np.ndarray  # uint8 (H, W)
    mask: np.ndarray  # bool (H, W): the union of the mask files under the mask rule
    graded_masks: tuple[str, ...]  # mask files with more than two values

    def suspicious_mask(self, label: BusiClass) -> bool:
        """An empty mask in a lesion class."""
        return label is not BusiClass.NORMAL and not self.mask.any()


def read_sample(sample: Sample) -> LoadedSample:
    """The image, its lesion mask and what was odd about its mask files."""
    image = _open(sample.image_path)
    union = np.zeros((image.size[1], image.size[0]), dtype=bool)
    graded = []
    for path in sample.mask_paths:
        values = _mask_values(path, image.size)
        union |= lesion_pixels(values)
        if len(np.unique(values)) > 2:
            graded.append(path.name)
    return LoadedSample(grey(image), union, tuple(graded))


def read_mask(paths: tuple[Path, ...], image_size: tuple[int, int]) -> np.ndarray:
    """The union of an image's mask files under the mask rule, as bool (H, W), for an
    image of `image_size` (width, height); DataError naming a file of another size."""
    union = np.zeros((image_size[1], image_size[0]), dtype=bool)
    for path in paths:
        union |= lesion_pixels(_mask_values(path, image_size))
    return union


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The image as one uint8 grey channel (H, W) and the union of its masks as bool."""
    loaded = read_sample(sample)
    return loaded.image, loaded.mask


def _mask_values(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """A mask file as (H, W) values: the brightest colour band of each pixel. Modes 1, L,
    RGB, RGBA and 16-bit all occur; an RGBA mask's alpha is opaque, so only colour counts."""
    mask = _open(path)
    if mask.size != image_size:
        raise DataError(
            f"{path}: mask is {mask.size[0]}x{mask.size[1]} but its image is "
            f"{image_size[0]}x{image_size[1]}; fix or remove the pair"
        )
    if mask.mode == "1":
        return np.asarray(mask, dtype=np.uint8) * np.uint8(255)
    if mask.mode.startswith("I;16") or mask.mode == "I":
        return np.asarray(mask, dtype=np.int64)
    bands = np.asarray(mask.convert("RGB") if mask.mode not in ("L", "RGB") else mask)
    return bands.max(axis=2) if bands.ndim == 3 else bands


def lesion_pixels(values: np.ndarray) -> np.ndarray:
    """The mask rule: a two-valued mask's non-zero value is lesion, whatever it is (255,
    1 in a label map, 128 ...); a graded mask (anti-aliased, JPEG-compressed) is lesion
    at half the full scale or above (128 for 8 bits, 32768 for 16)."""
    levels = np.unique(values)
    if len(levels) <= 2:
        return values == levels[-1] if levels[-1] > 0 else np.zeros(values.shape, bool)
    full_scale = 255 if values.dtype == np.uint8 or levels[-1] <= 255 else 65535
    return values >= (full_scale + 1) // 2


def data_warnings(samples: list[Sample], loaded: list[LoadedSample]) -> list[str]:
    """Legal but suspicious data, one line each: a missing class (the comparison with
    the published BUSI numbers no longer holds), masks that are not two-valued (the rule
    decided their grey pixels), lesion-class images whose mask is empty."""
    warnings = [
        f"no {label.value} images: results are not comparable with the published BUSI "
        "numbers, which include all three classes"
        for label in BusiClass
        if not any(s.label is label for s in samples)
    ]
    graded = [name for item in loaded for name in item.graded_masks]
    if graded:
        warnings.append(
            f"{len(graded)} mask files are not two-valued (anti-aliased or JPEG-compressed, "
            f"e.g. {graded[0]}); lesion read where a pixel reaches mid-grey (128)"
        )
    empty = [
        s.name for s, item in zip(samples, loaded, strict=True) if item.suspicious_mask(s.label)
    ]
    if empty:
        warnings.append(
            f"{len(empty)} benign/malignant images have an empty mask (e.g. {empty[0]}); "
            "they train as lesion-free: check their masks"
        )
    return warnings


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
