"""A trial's tuned model, the one way every inference command gets it: the trial (named,
or the experiment's best), its selected weights (model.pt, or one file per fold) loaded
into freshly built networks, and the threshold the trial scored at."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from results import storage
from results.errors import UserError
from results.experiment import Experiment, Trial
from results.layout import MODEL_FILE, short_trial_name
from trainable.model import build_model


@dataclass(frozen=True)
class TunedModel:
    trial: Trial
    networks: tuple[nn.Module, ...]  # one, or one per fold of a cross-validated trial


def pick_trial(experiment: Experiment, name: str | None) -> Trial:
    """The named trial, or the experiment's best (by its objective on validation)."""
    if name is None:
        if experiment.best is None:
            raise UserError(
                f"{experiment.location}: no trial has a result yet; nothing to evaluate"
            )
        return experiment.best
    for trial in experiment.trials:
        if name in (trial.name, short_trial_name(trial.number)):
            return trial
    names = ", ".join(t.name for t in experiment.trials)
    raise UserError(f"--trial {name}: no such trial in {experiment.location}; valid: {names}")


def load_tuned_model(
    experiment: Experiment, trial: Trial, device: torch.device | None = None
) -> TunedModel:
    """The trial's selected weights in freshly built networks (one per fold) on `device`
    (default: the CPU). One line when the trial has none or a file is damaged."""
    device = device or torch.device("cpu")
    names = trial.selected.models if trial.selected else (MODEL_FILE,)
    paths = [experiment.trial_file(trial, name) for name in names]
    if trial.config is None or not all(path.is_file() for path in paths):
        raise UserError(
            f"{storage.join(experiment.location, trial.name, names[0])}: no selected model; "
            "the trial ended before its first epoch (choose another with --trial)"
        )
    networks = []
    for path in paths:
        network = build_model(trial.config.replace(encoder_weights="none"))
        try:
            network.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            raise UserError(
                f"{path}: unreadable as this trial's weights ({reason(error)}); the file is "
                "damaged (cut short or overwritten): restore it from a copy, or choose another "
                "--trial"
            ) from None
        networks.append(network.to(device))
    return TunedModel(trial, tuple(networks))


def trial_threshold(trial: Trial) -> float:
    """The threshold the trial scored its parts at: the one metrics.json records (chosen on
    the validation part under --threshold auto), else its config's."""
    if trial.selected is not None and trial.selected.threshold is not None:
        return trial.selected.threshold
    return trial.config.threshold


def reason(error: Exception) -> str:
    """An exception's first sentence, short enough for one line (torch's run long)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first.split(". ")[0][:120]
