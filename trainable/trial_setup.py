"""What every trial of an experiment shares (`TrialSetup`, made once by the driver), and
the one config a trial trains: the Tune config's values over the experiment's base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from results.config import TrainConfig
from results.settings import RunSettings, SplitPolicy


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of an experiment shares; the Tune config holds what varies."""

    base: TrainConfig
    # The run's defaults (RunSettings'), so a trial set up by hand runs as `run` would.
    split_policy: SplitPolicy = RunSettings.split
    split_seed: int = RunSettings.seed
    select_on_test: bool = RunSettings.reference_only  # True only for the reference protocol
    folds: int = RunSettings.folds  # K > 1: K-fold cross-validation of the training part
    objective: str = RunSettings.metric
    cpus: int = 1
    num_workers: int = 0
    checkpoint_every: int = RunSettings.checkpoint_every  # epochs between full states
    compiled: bool = RunSettings.compiled  # torch.compile the model's forward
    choose_threshold: bool = RunSettings.choose_threshold  # --threshold auto: on validation
    image_every: int = 5
    examples: int = 4


def resolve_config(setup: TrialSetup, tune_config: dict[str, Any]) -> TrainConfig:
    """The search space's values over the experiment's base config; unknown keys fail."""
    return TrainConfig.from_flat({**setup.base.to_flat(), **tune_config})
