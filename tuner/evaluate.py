"""`python -m tuner evaluate`: a trial's selected model on a part of its experiment's
split, or on every image of another BUSI folder, by the same code the trial used.

On the experiment's own parts it reproduces what the trial recorded at selection
(metrics.json), at any batch size: the loss and metrics are pooled over the whole part.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from results import storage
from results.experiment import Experiment, Trial
from results.layout import MODEL_FILE, SPLIT_FILE
from trainable.engine import LOSS, Precision, evaluate, pick_device, score_probabilities
from trainable.errors import UserError
from trainable.keys import METRIC_KEYS
from trainable.model import build_model
from trainable.preprocess import load_sized
from trainable.splits import experiment_splits, manifest_of


class Part(enum.StrEnum):
    VALIDATION = "validation"
    TEST = "test"


@dataclass(frozen=True)
class Result:
    trial: str
    source: str  # "validation", "test", or the folder evaluated
    images: int
    evaluation_size: int
    values: dict[str, float]  # "loss" and every METRIC_KEYS key
    recorded: dict[str, float] | None  # what the trial recorded for this part, if any

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "part": self.source,
            "images": self.images,
            "evaluation_size": self.evaluation_size,
            **self.values,
        }


def pick_trial(experiment: Experiment, name: str | None) -> Trial:
    """The named trial, or the experiment's best (by its objective on validation)."""
    if name is None:
        if experiment.best is None:
            raise UserError(
                f"{experiment.location}: no trial has a result yet; nothing to evaluate"
            )
        return experiment.best
    for trial in experiment.trials:
        if name in (trial.name, f"trial_{trial.number:03d}"):
            return trial
    names = ", ".join(t.name for t in experiment.trials)
    raise UserError(f"--trial {name}: no such trial in {experiment.location}; valid: {names}")


def load_selected_models(
    experiment: Experiment, trial: Trial, device: torch.device
) -> list[torch.nn.Module]:
    """The trial's selected weights in freshly built models (one per fold)."""
    names = trial.selected.models if trial.selected else (MODEL_FILE,)
    paths = [experiment.trial_file(trial, name) for name in names]
    if trial.config is None or not all(path.is_file() for path in paths):
        raise UserError(
            f"{storage.join(experiment.location, trial.name, names[0])}: no selected model; "
            "the trial ended before its first epoch (choose another with --trial)"
        )
    models = []
    for path in paths:
        model = build_model(trial.config.replace(encoder_weights="none"))
        try:
            model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            raise UserError(
                f"{path}: unreadable as this trial's weights ({reason(error)}); the file is "
                "damaged (cut short or overwritten): restore it from a copy, or choose another "
                "--trial"
            ) from None
        models.append(model.to(device))
    return models


def reason(error: Exception) -> str:
    """An exception's first sentence, short enough for one line (torch's run long)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first.split(". ")[0][:120]


def _recorded(trial: Trial, part: Part, reference_only: bool) -> dict[str, float] | None:
    """metrics.json's values for `part`: the held-out part is validation in a sweep and
    test in a --reference run, whose test values are recorded too."""
    if trial.selected is None:
        return None
    if part is Part.TEST:
        return trial.selected.test
    return None if reference_only else trial.selected.heldout


def _saved_split(path: Path) -> str:
    """The split's hash the trial recorded in split.json; one line when it cannot."""
    try:
        saved = json.loads(path.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:  # JSON's errors are ValueErrors
        raise UserError(
            f"{path}: missing or damaged ({type(error).__name__}); the trial's split cannot be "
            "checked: restore the file from a copy, or evaluate another --trial"
        ) from None
    if not isinstance(saved, str):
        raise UserError(f"{path}: damaged (its sha256 is not a string); restore it from a copy")
    return saved


def evaluate_trial(
    experiment: Experiment,
    trial: Trial,
    part: Part = Part.TEST,
    data_dir: Path | None = None,
    batch_size: int = 16,
) -> Result:
    settings = experiment.settings
    config = trial.config
    if config is None:
        raise UserError(f"{trial.path}: no config.json; cannot rebuild the trial's model")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    eval_size = settings.base.image_size
    # Cached in the reader's cache ($BUSI_TUNE_CACHE), never in a folder the experiment's
    # settings name: they may come from elsewhere.
    sized = load_sized(data_dir or settings.data, (config.image_size,), eval_size, None, False)
    inputs = sized.at(config.image_size)
    folds = settings.folds
    if data_dir is None:
        if part is Part.VALIDATION and (settings.reference_only or folds > 1):
            raise UserError(
                "--part validation: a --reference run has none, and a cross-validated "
                "trial's are per fold (metrics.json lists them)"
            )
        splits = experiment_splits(
            inputs, settings.split, settings.seed, folds, not settings.reference_only
        )
        saved = _saved_split(trial.path / SPLIT_FILE)
        if manifest_of(splits, inputs.names)["sha256"] != saved:
            raise UserError(
                f"{settings.data}: gives another split than {trial.path / SPLIT_FILE}; "
                "the data changed since the run (pass the data it ran on)"
            )
        indices = splits[0].validation if part is Part.VALIDATION else splits[0].test
        source, recorded = part.value, _recorded(trial, part, settings.reference_only)
    else:
        indices = np.arange(len(inputs))
        source, recorded = str(data_dir), None
    device = pick_device()
    precision = Precision.for_device(device, config)
    truth = sized.evaluation
    runs = []
    for model in load_selected_models(experiment, trial, device):
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        runs.append(
            evaluate(
                model, inputs, truth, indices, device, precision, config.threshold, batch_size,
                keep_probabilities=folds > 1,
            )
        )  # fmt: skip
    if len(runs) > 1:  # the folds' ensemble, exactly as the trial scored it
        probabilities = torch.stack([run.probabilities for run in runs]).mean(0)
        runs = [score_probabilities(probabilities, truth.masks[indices], config.threshold)]
    return Result(trial.name, source, len(indices), eval_size, runs[0].metrics(), recorded)


def format_result(result: Result) -> str:
    lines = [
        f"trial {result.trial} on {result.source}: {result.images} images, "
        f"evaluated at {result.evaluation_size} px, pixels pooled over the part"
    ]
    header = f"{'':<18}{'now':>8}"
    if result.recorded is not None:
        header += f"{'recorded':>10}"
    lines.append(header)
    for key in (LOSS, *METRIC_KEYS):
        line = f"{key:<18}{result.values[key]:>8.4f}"
        if result.recorded is not None:
            line += f"{result.recorded[key]:>10.4f}"
        lines.append(line)
    return "\n".join(lines)
