"""What a person sees while a sweep runs: one line per ended trial, under the trial's one
name (`trial_003_ab12cd34`, the same in folders, report, TensorBoard and the Optuna
study), instead of Ray's live table and its repeated warnings (`-v` brings those back)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from ray import tune

from results.layout import OUTCOME_FILE
from search_spaces import describe_params
from trainable import keys
from trainable.tensorboard import write_hparams

# Ray warns at every forced experiment snapshot; CheckpointConfig(num_to_keep) forces one
# per checkpoint by design, so the warning says nothing a user can act on.
SNAPSHOT_WARNING_ENV = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


@dataclass(frozen=True)
class TrialNamer:
    """`trial_003_ab12cd34`: the trial's number and Tune id. In a sweep the number is
    Optuna's trial number (Tune counts search-algorithm trials from 1, Optuna from 0), so
    trial_000 is the sweep's reference point; a --reference run's one trial is trial_000."""

    sweep: bool

    def __call__(self, trial) -> str:
        counter = int(trial.experiment_tag.split("_")[0])
        return f"trial_{counter - 1 if self.sweep else counter:03d}_{trial.trial_id}"


def quiet_ray() -> None:
    """Silence Ray's notices that repeat or that a user cannot act on, and Optuna's
    per-trial log lines (the trial lines say it)."""
    os.environ[SNAPSHOT_WARNING_ENV] = "0"
    # Ray's newer console output prints a configuration box even at verbose=0; the older
    # reporter it falls back to prints nothing at verbose=0.
    os.environ[NEW_OUTPUT_ENV] = "0"
    logging.getLogger(TOKEN_NOTICE_LOGGER).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


class ConsoleLines:
    """Where quiet progress lines go: the `sys.stdout` of the moment, flushed per line.
    Tune pickles its run config with the line writer inside; an object of ours pickles by
    reference to its class, whereas `print`, or a partial of it, stops pickling once Ray
    swaps `builtins.print` for its own (ray.experimental.tqdm_ray, on the first worker
    line the driver prints: a race at start-up, lost every time with RAY_DEDUP_LOGS=0)."""

    def __call__(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class TrialLines(tune.Callback):
    """One line per ended trial: name, state, objective, best so far, config, ETA."""

    def __init__(
        self,
        write: Callable[[str], None],
        namer: TrialNamer,
        metric: str,
        mode: str,
        trials: int,
        budget: int,
    ) -> None:
        self.write, self.namer, self.metric, self.mode = write, namer, metric, mode
        self.trials, self.budget = trials, budget
        self.started = time.monotonic()
        self.ended = 0
        self.best: tuple[float, str] | None = None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best[0] if self.mode == "min" else value > self.best[0]

    def _eta(self) -> str:
        left = self.trials - self.ended
        if left <= 0:
            return "done"
        seconds = (time.monotonic() - self.started) / self.ended * left
        return f"ETA {seconds / 60:.0f} min" if seconds >= 90 else f"ETA {seconds:.0f} s"

    def _line(self, trial, state: str, value: float | None) -> None:
        self.ended += 1
        name = self.namer(trial)
        if value is not None and self._better(value):
            self.best = (value, name)
        shown = f"{self.metric} {value:.4f}" if value is not None else "no value"
        best = f"best {self.best[0]:.4f} ({self.best[1][:9]})" if self.best else "no best yet"
        self.write(
            f"[{self.ended}/{self.trials}] {name}  {state}  {shown}  {best}  "
            f"{describe_params(trial.config)}  {self._eta()}"
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        epochs = int(result.get("training_iteration", 0))
        state = "finished" if epochs >= self.budget else f"stopped at epoch {epochs}"
        self._line(trial, state, result.get(self.metric))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, "errored", None)


class TrialOutcome(tune.Callback):
    """When a trial ends, whether its last attempt errored, into its folder (through the
    driver's staging copy, as TrialHParams). Tune's error.txt keeps every failed attempt,
    also of a trial that a retry or --resume then finished: this record says how it
    ended."""

    def _write(self, trial, errored: bool) -> None:
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        record = {"format": 1, "errored": errored, "epochs": epochs}
        staging = Path(trial.storage.trial_driver_staging_path)
        staging.mkdir(parents=True, exist_ok=True)
        (staging / OUTCOME_FILE).write_text(json.dumps(record) + "\n")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trial, errored=True)


class TrialHParams(tune.Callback):
    """When a trial ends, its HParams into its TensorBoard run: searched values, true
    state, and the selected epoch's metrics. Written into the driver's staging copy of the
    trial's folder, which Tune uploads to the storage (local, NFS or s3://) with its
    results."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def _write(self, trial, state: str) -> None:
        result = trial.last_result or {}
        shown = {
            k: float(v)
            for k, v in result.items()
            if k.startswith((keys.selected(""), "test_")) and isinstance(v, int | float)
        }
        epochs = int(result.get("training_iteration", 0))
        staging = Path(trial.storage.trial_driver_staging_path)
        write_hparams(staging, dict(trial.config), shown, state, epochs)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        self._write(
            trial, "finished" if epochs >= self.budget else f"stopped early at epoch {epochs}"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trial, "errored")
