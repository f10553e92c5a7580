"""Augmentations (albumentations 2.x names) and the one-channel ImageNet normalisation.

Each augmentation is a `TrainConfig` field; all are off in the reference. Geometric ones
move image and mask together (the mask uses nearest-neighbour, so it stays binary).
"""

from __future__ import annotations

import os

# albumentations checks PyPI for updates on import unless told not to (no network here).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from results.config import TrainConfig  # noqa: E402

# ImageNet statistics adapted to one grey channel: the means of the RGB means and stds.
# smp builds a 1-channel encoder by summing the first convolution's RGB weights, so a
# grey image normalised with these averages feeds it (almost exactly) what the 3-channel
# network saw for the same grey image replicated into R, G and B.
GREY_MEAN = float(np.mean([0.485, 0.456, 0.406]))  # 0.449
GREY_STD = float(np.mean([0.229, 0.224, 0.225]))  # 0.226


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 grey (..., H, W) -> float32 ImageNet-normalised."""
    return (images.astype(np.float32) / 255.0 - GREY_MEAN) / GREY_STD


def build_augmentation(config: TrainConfig) -> A.Compose | None:
    """The training-time augmentation of `config`, or None when every option is off."""
    if not config.has_augmentation:
        return None
    c = config
    transforms = [
        A.HorizontalFlip(p=c.aug_hflip_p),
        A.Affine(
            rotate=(-c.aug_affine_rotate, c.aug_affine_rotate),
            scale=(1 - c.aug_affine_scale, 1 + c.aug_affine_scale),
            translate_percent=(-c.aug_affine_shift, c.aug_affine_shift),
            border_mode=cv2.BORDER_REFLECT_101,
            p=c.aug_affine_p,
        ),
        A.ElasticTransform(
            alpha=c.aug_elastic_alpha,
            sigma=6.0,
            border_mode=cv2.BORDER_REFLECT_101,
            p=c.aug_elastic_p,
        ),
        A.CLAHE(clip_limit=(1.0, c.aug_clahe_clip), p=c.aug_clahe_p),
        A.RandomBrightnessContrast(
            brightness_limit=c.aug_brightness_limit,
            contrast_limit=c.aug_contrast_limit,
            p=c.aug_brightness_contrast_p,
        ),
        A.RandomGamma(
            gamma_limit=(100 - c.aug_gamma_limit, 100 + c.aug_gamma_limit), p=c.aug_gamma_p
        ),
        A.GaussNoise(std_range=(0.0, c.aug_gauss_noise_std), p=c.aug_gauss_noise_p),
        A.MultiplicativeNoise(
            multiplier=(1 - c.aug_speckle_limit, 1 + c.aug_speckle_limit),
            elementwise=True,
            p=c.aug_speckle_p,
        ),
    ]
    # Transforms with p == 0 would only cost a random draw each.
    return A.Compose([t for t in transforms if t.p > 0], seed=config.seed)
