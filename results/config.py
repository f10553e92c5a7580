"""The one typed, frozen description of a training run.

Ray Tune hands a trial a flat dict; `TrainConfig.from_flat` turns it into this object at
the boundary, so nothing downstream indexes `config["lr"]` and a typo in a search space
fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHTS_SUFFIXES = {".safetensors", ".pth", ".pt", ".bin"}


def is_weights_file(weights: str) -> bool:
    """Whether `encoder_weights` names a file rather than smp weights."""
    return Path(weights).suffix in WEIGHTS_SUFFIXES


class Optimizer(enum.StrEnum):
    ADAM = "adam"
    ADAMW = "adamw"


class Loss(enum.StrEnum):
    DICE = "dice"
    DICE_BCE = "dice_bce"
    DICE_FOCAL = "dice_focal"


class LrSchedule(enum.StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a trial trains; defaults are the reference study."""

    # Model
    encoder: str = "resnext101_32x16d"
    # An smp weights name ("instagram", "imagenet", ...), "none", or a path to a file
    # holding the encoder's 3-channel state dict (.safetensors or .pth).
    encoder_weights: str = "instagram"
    image_size: int = 256

    # Optimisation
    loss: Loss = Loss.DICE
    optimizer: Optimizer = Optimizer.ADAM
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    # The pretrained encoder's learning rate is lr x this (a smaller step keeps more of
    # what it learnt elsewhere); the decoder and head train at lr.
    encoder_lr_scale: float = 1.0
    # Epochs over which the learning rate rises linearly to its value, from 1/(n+1) of it.
    warmup_epochs: int = 0
    batch_size: int = 8
    epochs: int = 20
    seed: int = 0

    # Selection and evaluation: combined = w * train loss + (1 - w) * held-out loss.
    selection_train_weight: float = 0.2
    threshold: float = 0.5

    # Augmentations (albumentations 2.x); a probability of 0 turns one off.
    aug_hflip_p: float = 0.0
    aug_affine_p: float = 0.0
    aug_affine_rotate: float = 15.0  # degrees, +/-
    aug_affine_scale: float = 0.1  # scale in [1 - s, 1 + s]
    aug_affine_shift: float = 0.0625  # fraction of the image size, +/-
    aug_brightness_contrast_p: float = 0.0
    aug_brightness_limit: float = 0.2
    aug_contrast_limit: float = 0.2
    aug_gamma_p: float = 0.0
    aug_gamma_limit: float = 20.0  # gamma in [100 - g, 100 + g] / 100
    aug_gauss_noise_p: float = 0.0
    aug_gauss_noise_std: float = 0.05  # max std, fraction of the intensity range
    aug_speckle_p: float = 0.0
    aug_speckle_limit: float = 0.1  # multiplier in [1 - l, 1 + l] per pixel
    aug_elastic_p: float = 0.0
    aug_elastic_alpha: float = 30.0
    aug_clahe_p: float = 0.0
    aug_clahe_clip: float = 2.0

    # Speed only: used on CUDA, ignored on the CPU.
    mixed_precision: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        # Accept the plain strings a search space or JSON file produces.
        for field, enum_type in (
            ("loss", Loss),
            ("optimizer", Optimizer),
            ("lr_schedule", LrSchedule),
        ):
            value = getattr(self, field)
            try:
                object.__setattr__(self, field, enum_type(value))
            except ValueError:
                valid = ", ".join(e.value for e in enum_type)
                raise ValueError(f"{field}={value!r} is not one of: {valid}") from None
        _check(self.image_size >= 32 and self.image_size % 32 == 0, "image_size", self)
        _check(self.batch_size >= 1, "batch_size", self)
        _check(self.epochs >= 1, "epochs", self)
        _check(self.lr > 0, "lr", self)
        _check(self.weight_decay >= 0, "weight_decay", self)
        _check(0.0 < self.encoder_lr_scale <= 1.0, "encoder_lr_scale", self)
        _check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", self)
        _check(0.0 <= self.selection_train_weight <= 1.0, "selection_train_weight", self)
        _check(0.0 < self.threshold < 1.0, "threshold", self)
        for field in dataclasses.fields(self):
            if field.name.startswith("aug_") and field.name.endswith("_p"):
                _check(0.0 <= getattr(self, field.name) <= 1.0, field.name, self)

    @classmethod
    def reference(cls) -> TrainConfig:
        """The published setup: U-Net ResNeXt101-32x16d (Instagram), 256 px, batch 8,
        Adam 1e-4, Dice loss, 20 epochs, no augmentation."""
        return cls()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> TrainConfig:
        """Build from a flat dict (a Tune config); unknown keys are an error."""
        unknown = sorted(set(flat) - set(cls.field_names()))
        if unknown:
            valid = ", ".join(cls.field_names())
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {valid}")
        return cls(**flat)

    def to_flat(self) -> dict[str, Any]:
        """Plain JSON-able values, the inverse of `from_flat`."""
        return {
            key: (value.value if isinstance(value, enum.Enum) else value)
            for key, value in dataclasses.asdict(self).items()
        }

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def with_absolute_weights(self) -> TrainConfig:
        """A weights file's path made absolute (trials run in other folders)."""
        if not is_weights_file(self.encoder_weights):
            return self
        return self.replace(encoder_weights=os.path.abspath(self.encoder_weights))

    @property
    def has_augmentation(self) -> bool:
        return any(
            getattr(self, f.name) > 0
            for f in dataclasses.fields(self)
            if f.name.startswith("aug_") and f.name.endswith("_p")
        )


def _check(ok: bool, field: str, config: TrainConfig) -> None:
    if not ok:
        raise ValueError(f"invalid {field}={getattr(config, field)!r}")


def describe_params(params: dict[str, Any]) -> str:
    """The searched values on one line; augmentations by their probability only (the
    strengths are in trials.csv)."""
    if not params:
        return "the base config"

    def short(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    plain = [f"{k}={short(v)}" for k, v in sorted(params.items()) if not k.startswith("aug_")]
    probabilities = {k: v for k, v in params.items() if k.startswith("aug_") and k.endswith("_p")}
    used = [f"{k[4:-2]} {v:g}" for k, v in sorted(probabilities.items()) if v > 0]
    if probabilities:
        plain.append(f"aug: {', '.join(used)}" if used else "no aug")
    return " ".join(plain)
