"""Define-by-run Optuna search spaces around the reference, registered by name.

Every space is built from the experiment's base config (the reference, possibly shrunk
for a CPU by the CLI flags) and samples only `TrainConfig` field names, so every point
is a valid `TrainConfig` (the contract test checks it). The base config's own values are
the first point of every sweep, so each sweep measures the reference itself.

It imports only `results` below it (for `TrainConfig`); the trainable never sees a space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from results.config import TrainConfig

DefineByRun = Callable[[optuna.Trial], dict[str, Any] | None]

# (probability field, choices of probability); strengths are sampled only when it is on.
AUGMENTATION_PROBABILITIES = (0.0, 0.25, 0.5)
AUGMENTATION_STRENGTHS: dict[str, dict[str, tuple[float, float]]] = {
    "aug_hflip_p": {},
    "aug_affine_p": {
        "aug_affine_rotate": (5.0, 30.0),
        "aug_affine_scale": (0.0, 0.2),
        "aug_affine_shift": (0.0, 0.1),
    },
    "aug_brightness_contrast_p": {
        "aug_brightness_limit": (0.05, 0.3),
        "aug_contrast_limit": (0.05, 0.3),
    },
    "aug_gamma_p": {"aug_gamma_limit": (5.0, 40.0)},
    "aug_gauss_noise_p": {"aug_gauss_noise_std": (0.01, 0.1)},
    "aug_speckle_p": {"aug_speckle_limit": (0.05, 0.3)},
    "aug_elastic_p": {"aug_elastic_alpha": (10.0, 60.0)},
    "aug_clahe_p": {"aug_clahe_clip": (1.5, 4.0)},
}

# Encoders the `wide` space chooses from, with the weights each uses when pretrained.
REFERENCE_SIZED_ENCODERS = {
    "resnext101_32x16d": "instagram",
    "resnext50_32x4d": "imagenet",
    "resnet50": "imagenet",
    "efficientnet-b4": "imagenet",
}
SMALL_ENCODERS = {"resnet18": "imagenet", "resnet34": "imagenet"}


REFERENCE_LOSSES = ("dice", "dice_bce")
# The reference's 1.0 first: a pretrained encoder often fine-tunes better at a fraction.
ENCODER_LR_SCALES = (1.0, 0.3, 0.1)


def warmup_choices(base: TrainConfig) -> tuple[int, ...]:
    """0 (the reference), 1 or 2 warm-up epochs, fewer than the budget."""
    return tuple(w for w in (0, 1, 2) if w < base.epochs)


def _around_reference(
    trial: optuna.Trial, base: TrainConfig, losses: tuple[str, ...] = REFERENCE_LOSSES
) -> None:
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    trial.suggest_categorical("batch_size", sorted({4, 8, 16, base.batch_size}))
    # Adam keeps the reference's zero weight decay; AdamW searches it log-uniformly.
    if trial.suggest_categorical("optimizer", ["adam", "adamw"]) == "adamw":
        trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
    # What practitioners tune for this task: the loss mix, the encoder's learning rate
    # relative to the decoder's, and a warm-up.
    trial.suggest_categorical("loss", list(losses))
    trial.suggest_categorical("encoder_lr_scale", list(ENCODER_LR_SCALES))
    trial.suggest_categorical("warmup_epochs", list(warmup_choices(base)))
    for probability, strengths in AUGMENTATION_STRENGTHS.items():
        if trial.suggest_categorical(probability, AUGMENTATION_PROBABILITIES) > 0:
            for name, (low, high) in strengths.items():
                trial.suggest_float(name, low, high)


def wide_encoders(base: TrainConfig) -> dict[str, str]:
    """Reference-sized encoders around the reference; small ones around a CPU-sized base."""
    if base.encoder in REFERENCE_SIZED_ENCODERS:
        return REFERENCE_SIZED_ENCODERS
    return {base.encoder: base.encoder_weights, **SMALL_ENCODERS}


def wide_image_sizes(base: TrainConfig) -> tuple[int, ...]:
    return tuple(
        s for s in (base.image_size - 64, base.image_size, base.image_size + 64) if s >= 64
    )


# Define-by-run functions are callable dataclasses, not closures: Tune pickles the
# searcher (with its space) into every experiment snapshot.
@dataclass(frozen=True)
class _ReferenceSpace:
    base: TrainConfig

    def __call__(self, trial: optuna.Trial) -> None:
        _around_reference(trial, self.base)


@dataclass(frozen=True)
class _WideSpace:
    base: TrainConfig

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        base = self.base
        weights = wide_encoder_weights(base)
        _around_reference(trial, base, losses=("dice", "dice_bce", "dice_focal"))
        trial.suggest_categorical("lr_schedule", ["constant", "cosine"])
        trial.suggest_categorical("image_size", list(wide_image_sizes(base)))
        encoder = trial.suggest_categorical("encoder", list(weights))
        # Constants returned by a define-by-run function join the trial's config.
        return {"encoder_weights": weights[encoder]}


def wide_encoder_weights(base: TrainConfig) -> dict[str, str]:
    """The `wide` space's encoders with the weights each trains from: the base config's
    for its own encoder, each one's pretrained weights when the base is pretrained."""
    encoders = wide_encoders(base)
    if base.encoder_weights == "none":
        return dict.fromkeys(encoders, "none")
    return {**encoders, base.encoder: base.encoder_weights}


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    build: Callable[[TrainConfig], DefineByRun]
    # Keys of the first point (the base config's values); what the space samples.
    keys: tuple[str, ...]
    image_sizes: Callable[[TrainConfig], tuple[int, ...]] = lambda base: (base.image_size,)
    # Every (encoder, weights) a trial can train from: resolved once by the driver.
    encoder_weights: Callable[[TrainConfig], dict[str, str]] = lambda base: {
        base.encoder: base.encoder_weights
    }

    def define(self, base: TrainConfig) -> DefineByRun:
        return self.build(base)

    def parameters(self, base: TrainConfig) -> dict[str, BaseDistribution]:
        """Every parameter the space can sample, conditional ones included, with its
        distribution: the define-by-run function is walked once per choice index, each
        categorical answering its i-th choice (the last when it has fewer), so every branch
        that opens on a choice is seen (Adam/AdamW, an augmentation off/on)."""
        found: dict[str, BaseDistribution] = {}
        define = self.define(base)
        widest = 1
        index = 0
        while index < widest:
            walker = _Walker(index)
            define(walker)
            found.update(walker.seen)
            widest = max(widest, walker.widest)
            index += 1
        return found

    def reference_point(self, base: TrainConfig) -> dict[str, Any]:
        """The base config as a point of this space: the first trial of every sweep."""
        flat = base.to_flat()
        return {key: flat[key] for key in self.keys}


class _Walker:
    """Stands in for an optuna.Trial: records what is suggested and answers each
    categorical with its `index`-th choice, each number with its low end."""

    def __init__(self, index: int) -> None:
        self.index, self.widest = index, 1
        self.number = index  # what a space may read of the trial besides its suggestions
        self.seen: dict[str, BaseDistribution] = {}

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.seen[name] = FloatDistribution(low, high, log=log)
        return low

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        self.seen[name] = IntDistribution(low, high, log=log)
        return low

    def suggest_categorical(self, name: str, choices):
        self.seen[name] = CategoricalDistribution(choices)
        self.widest = max(self.widest, len(choices))
        return choices[min(self.index, len(choices) - 1)]


_REFERENCE_KEYS = (
    "lr",
    "batch_size",
    "optimizer",
    "loss",
    "encoder_lr_scale",
    "warmup_epochs",
    *AUGMENTATION_STRENGTHS,
)

SPACES: dict[str, SearchSpace] = {
    "reference": SearchSpace(
        name="reference",
        description=(
            "around the reference: lr 1e-5..1e-3 (log), batch {4,8,16}, Adam or AdamW "
            "(+ weight decay 1e-6..1e-1 log), loss dice or dice+bce, encoder lr x "
            "{1,0.3,0.1}, warm-up {0,1,2} epochs, 8 augmentations (p in {0,0.25,0.5}) "
            "with conditional strengths"
        ),
        build=_ReferenceSpace,
        keys=_REFERENCE_KEYS,
    ),
    "wide": SearchSpace(
        name="wide",
        description=(
            "reference + loss also dice+focal, lr schedule (constant, cosine), "
            "encoder and image size (base -64/+0/+64 px)"
        ),
        build=_WideSpace,
        keys=(*_REFERENCE_KEYS, "lr_schedule", "image_size", "encoder"),
        image_sizes=wide_image_sizes,
        encoder_weights=wide_encoder_weights,
    ),
}


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name]
    except KeyError:
        raise KeyError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}") from None
