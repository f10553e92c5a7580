"""`python -m tuner evaluate`: a trial's selected model on a part of its experiment's
split, or on every image of another BUSI folder, by the same code the trial used, through
the segmenter `predict` uses: with its flip test-time augmentation or an ensemble of the K
best trials too, so that what `predict` offers is measured.

On the experiment's own parts it reproduces what the trial recorded at selection
(metrics.json), at any batch size: the loss and metrics are pooled over the whole part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from results.errors import DamagedRecord, UserError
from results.experiment import Experiment, Trial
from results.keys import LOSS, METRIC_KEYS
from results.layout import SPLIT_FILE
from trainable.engine import pick_device
from trainable.metrics import PixelStats
from trainable.preprocess import load_sized
from tuner.inference import ENSEMBLE, EVALUATE_BATCH_SIZE, Part, segmenter


@dataclass(frozen=True)
class Result:
    trial: str  # the trial (an ensemble's best) whose split and records are used
    source: str  # "validation", "test", or the folder evaluated
    images: int
    evaluation_size: int
    values: dict[str, float]  # "loss" and every METRIC_KEYS key
    recorded: dict[str, float] | None  # what the trial recorded for this part, if any
    models: tuple[str, ...] = ()  # the models averaged (one, or one per fold or trial)
    tta: str = "none"
    threshold: float = 0.5

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "part": self.source,
            "images": self.images,
            "evaluation_size": self.evaluation_size,
            "models": list(self.models),
            "tta": self.tta,
            "threshold": self.threshold,
            **self.values,
        }


def _recorded(trial: Trial, part: Part, reference_only: bool) -> dict[str, float] | None:
    """metrics.json's values for `part`: the held-out part is validation in a sweep and
    test in a --reference run, whose test values are recorded too."""
    if trial.selected is None:
        return None
    if part is Part.TEST:
        return trial.selected.test
    return None if reference_only else trial.selected.heldout


def recorded_part(trial: Trial, side: str) -> list[str]:
    """The names of one part of the split the trial recorded in split.json (its
    "validation" or "test"); one line when it cannot. Read, never recomputed: the split
    depends on the near-duplicate grouping, which may have changed since the run."""
    try:
        return list(trial.split().side(side))
    except DamagedRecord as error:
        reason = str(error)
    except KeyError:
        reason = f"{trial.path / SPLIT_FILE}: damaged (no {side} part)"
    raise UserError(
        f"{reason}; the trial's {side} part is unknown: restore the file from a copy, or "
        "evaluate another --trial"
    )


def evaluate_trial(
    experiment: Experiment,
    trial: Trial,
    part: Part = Part.TEST,
    data_dir: Path | None = None,
    batch_size: int = EVALUATE_BATCH_SIZE,
    flip: bool = False,
    ensemble: int = ENSEMBLE,
) -> Result:
    """`trial`'s selected model (with `ensemble` > 1, the K best trials', `trial` being the
    best) through `predict`'s segmenter, with flip TTA if asked, at the trial's threshold."""
    settings = experiment.settings
    config = trial.config
    if config is None:
        raise UserError(f"{trial.path}: no config.json; cannot rebuild the trial's model")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    device = pick_device()
    model = segmenter.from_experiment(
        experiment, trial.name if ensemble == 1 else None, ensemble, flip, device=device
    )
    eval_size = settings.base.image_size
    # Every size a model works at, each decoded from the PNGs as the trials were, cached in
    # the reader's cache ($BUSI_TUNE_CACHE), never in a folder the experiment's settings
    # name: they may come from elsewhere.
    sizes = (config.image_size, *(member.input_size for member in model.members))
    sized = load_sized(data_dir or settings.data, sizes, eval_size, None, False, settings.conflicts)
    inputs = sized.at(config.image_size)
    folds = settings.folds
    if data_dir is None:
        if part is Part.VALIDATION and (settings.reference_only or folds > 1):
            raise UserError(
                "--part validation: a --reference run has none, and a cross-validated "
                "trial's are per fold (metrics.json lists them)"
            )
        names = recorded_part(trial, part.value)
        position = {name: i for i, name in enumerate(inputs.names)}
        missing = [name for name in names if name not in position]
        if missing:
            raise UserError(
                f"{settings.data}: lacks {len(missing)} of the {len(names)} "
                f"images of the trial's {part.value} part (e.g. {missing[0]!r}); pass the data "
                "it ran on"
            )
        indices = np.array([position[name] for name in names], dtype=np.int64)
        source, recorded = part.value, _recorded(trial, part, settings.reference_only)
    else:
        indices = np.arange(len(inputs))
        source, recorded = str(data_dir), None
    masks = sized.evaluation.masks
    stats = PixelStats(threshold=model.threshold)
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size]
        probs = model.averaged(lambda size, rows=rows: sized.at(size).images[rows])
        stats.update(probs, masks[rows])
    values = {LOSS: stats.dice_loss(), **stats.compute()}
    return Result(
        trial.name,
        source,
        len(indices),
        eval_size,
        values,
        recorded,
        tuple(member.name for member in model.members),
        "flip" if flip else "none",
        model.threshold,
    )


def format_result(result: Result) -> str:
    models = ", ".join(result.models) or result.trial
    lines = [
        f"{models}{' with flip TTA' if result.tta == 'flip' else ''} on {result.source}: "
        f"{result.images} images, evaluated at {result.evaluation_size} px, threshold "
        f"{result.threshold:g}, pixels pooled over the part (per-image values over its "
        "lesion images; hd95 in pixels)"
    ]
    if result.recorded is not None and (result.tta != "none" or len(result.models) > 1):
        lines.append(f"recorded: what {result.trial} recorded (one model, no TTA)")
    keys = (LOSS, *METRIC_KEYS)
    width = max(len(key) for key in keys) + 2
    header = f"{'':<{width}}{'now':>9}"
    if result.recorded is not None:
        header += f"{'recorded':>10}"
    lines.append(header)
    for key in keys:
        line = f"{key:<{width}}{result.values[key]:>9.4f}"
        if result.recorded is not None:  # files from before a metric existed lack it
            line += f"{result.recorded.get(key, math.nan):>10.4f}"
        lines.append(line)
    return "\n".join(lines)
