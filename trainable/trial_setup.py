"""What every trial of an experiment shares (`TrialSetup`, made once by the driver), and
the one config a trial trains: the Tune config's values over the experiment's base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from results import keys
from results.config import TrainConfig
from results.settings import SplitPolicy


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of an experiment shares; the Tune config holds what varies."""

    base: TrainConfig
    split_policy: SplitPolicy = SplitPolicy.GROUPED
    split_seed: int = 0
    select_on_test: bool = False  # True only for the reference protocol
    folds: int = 1  # K > 1: K-fold cross-validation of the training part, in lockstep
    objective: str = keys.DEFAULT_OBJECTIVE
    cpus: int = 1
    num_workers: int = 0
    checkpoint_every: int = 10  # epochs between full states (see benchmarks/checkpoint_cost)
    compiled: bool = False  # torch.compile the model's forward (see benchmarks/gpu_throughput)
    choose_threshold: bool = False  # --threshold auto: chosen on the validation part
    image_every: int = 5
    examples: int = 4


def resolve_config(setup: TrialSetup, tune_config: dict[str, Any]) -> TrainConfig:
    """The search space's values over the experiment's base config; unknown keys fail."""
    return TrainConfig.from_flat({**setup.base.to_flat(), **tune_config})
