"""What a sweep shows and records as its trials end, through Tune's callbacks: one line per
ended trial under the trial's one name (`trial_003_ab12cd34`, the same in folders,
report, TensorBoard and the Optuna study) instead of Ray's live table and its repeated
warnings (`-v` brings those back), and each trial's outcome and HParams in its folder."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from ray import tune
from ray.tune.experiment import Trial

from results import keys
from results.config import describe_params
from results.experiment import trial_state
from results.layout import OUTCOME_FILE, parse_trial_folder, short_trial_name, trial_folder
from results.records import Outcome
from trainable.tensorboard import write_hparams
from tuner import console

# Ray warns at every forced experiment snapshot; CheckpointConfig(num_to_keep) forces one
# per checkpoint by design, so the warning says nothing a user can act on.
SNAPSHOT_WARNING_ENV = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
# Tune's own words on Ctrl-C and resume: "Stop signal received", a resume instruction of its
# own (Tuner.restore(...), not ours) and "Trials did not complete"; the summary and the
# printed resume command say it. And "Failed to fetch metrics … FileNotFoundError" for
# trials that had not reported yet when the run stopped, which looks like damage.
TUNE_RUN_LOGGER = "ray.tune.tune"
TUNE_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"


@dataclass(frozen=True)
class TrialNamer:
    """`trial_003_ab12cd34`: the trial's number and Tune id. In a sweep the number is
    Optuna's trial number (Tune counts search-algorithm trials from 1, Optuna from 0), so
    trial_000 is the sweep's reference point; a --reference run's one trial is trial_000."""

    sweep: bool

    def __call__(self, trial) -> str:
        counter = int(trial.experiment_tag.split("_")[0])
        return trial_folder(counter - 1 if self.sweep else counter, trial.trial_id)


def quiet_ray() -> None:
    """Silence Ray's notices that repeat or that a user cannot act on, and Optuna's
    per-trial log lines (the trial lines say it)."""
    os.environ[SNAPSHOT_WARNING_ENV] = "0"
    # Ray's newer console output prints a configuration box even at verbose=0; the older
    # reporter it falls back to prints nothing at verbose=0.
    os.environ[NEW_OUTPUT_ENV] = "0"
    logging.getLogger(TOKEN_NOTICE_LOGGER).setLevel(logging.ERROR)
    logging.getLogger(TUNE_RUN_LOGGER).setLevel(logging.CRITICAL)
    logging.getLogger(TUNE_ANALYSIS_LOGGER).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


class ConsoleLines:
    """Where quiet progress lines go: `console.line`. Tune pickles its run config with the
    line writer inside; an object of ours pickles by reference to its class, whereas
    `print`, or a partial of it, stops pickling once Ray swaps `builtins.print` for its own
    (ray.experimental.tqdm_ray, on the first worker line the driver prints: a race at
    start-up, lost every time with RAY_DEDUP_LOGS=0). It stays in this module: every
    experiment's tuner.pkl names it here, and `--resume` unpickles it."""

    def __call__(self, line: str) -> None:
        console.line(line)


class TrialLines(tune.Callback):
    """One line per ended trial: name, state, objective, best so far, config, ETA. The
    count goes on from where a resumed run was, and the ETA comes from measured epochs."""

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
        self.eta = EpochClock(trials, budget)
        self.ended: int | None = None  # counted from Tune's trials at the first step
        self.best: tuple[float, str] | None = None

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.ended is None:  # a resumed run: trials ended before the interruption
            done = [t for t in trials if t.status in (Trial.TERMINATED, Trial.ERROR)]
            self.ended = len(done)
            self.eta.ended = [_epochs(t) for t in done]

    def get_state(self) -> dict | None:
        """The best so far, kept across --resume (in Tune's snapshots)."""
        return {"best": self.best} if self.best else None

    def set_state(self, state: dict) -> None:
        self.best = state["best"]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        running = sum(t.status == Trial.RUNNING for t in trials)
        self.eta.epoch(trial.trial_id, time.monotonic(), running)

    def _better(self, value: float, name: str) -> bool:
        """Whether the trial `name` that reached `value` leads, as the report ranks."""
        if self.best is None:
            return True
        leader = keys.rank_key(self.best[0], self.mode, _number(self.best[1]))
        return keys.rank_key(value, self.mode, _number(name)) < leader

    def _line(self, trial, errored: bool) -> None:
        self.ended = (self.ended or 0) + 1
        epochs = _epochs(trial)
        self.eta.trial_ended(trial.trial_id, epochs)
        state = trial_state(errored, epochs, self.budget).at(epochs)
        value = None if errored else (trial.last_result or {}).get(self.metric)
        name = self.namer(trial)
        if value is not None and self._better(value, name):
            self.best = (value, name)
        shown = f"{self.metric} {value:.4f}" if value is not None else "no value"
        best = "no best yet"
        if self.best:
            best = f"best {self.best[0]:.4f} ({short_trial_name(_number(self.best[1]))})"
        left = "done" if self.ended >= self.trials else self.eta.describe()
        self.write(
            f"[{self.ended}/{self.trials}] {name}  {state}  {shown}  {best}  "
            f"{describe_params(trial.config)}  {left}".rstrip()
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._line(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, errored=True)


def _number(name: str) -> int:
    """The trial's number in its name (TrialNamer's, results.layout.trial_folder's)."""
    parsed = parse_trial_folder(name)
    if parsed is None:
        raise ValueError(f"{name!r}: not a trial's name")
    return parsed[0]


def _epochs(trial) -> int:
    return int((trial.last_result or {}).get(keys.ITERATION, 0))


class EpochClock:
    """The time left, from measured epochs only: the seconds an epoch took (between a
    trial's results; a trial's first epoch, which holds its start-up, is not counted), the
    epochs a trial runs (the mean of ended trials, which ASHA's stops shorten; the budget
    until one has ended) and the trials that run at once. Nothing until an epoch is
    measured."""

    def __init__(self, trials: int, budget: int) -> None:
        self.trials, self.budget = trials, budget
        self.last: dict[str, float] = {}  # trial id -> when its last result came
        self.done: dict[str, int] = {}  # trial id -> epochs reported, while it runs
        self.seconds: list[float] = []  # measured epoch durations
        self.ended: list[int] = []  # epochs of each ended trial
        self.parallel = 1

    def epoch(self, trial_id: str, now: float, running: int) -> None:
        if trial_id in self.last:
            self.seconds.append(now - self.last[trial_id])
        self.last[trial_id] = now
        self.done[trial_id] = self.done.get(trial_id, 0) + 1
        self.parallel = max(self.parallel, running)

    def trial_ended(self, trial_id: str, epochs: int) -> None:
        self.ended.append(epochs)
        self.done.pop(trial_id, None)
        self.last.pop(trial_id, None)

    def seconds_left(self) -> float | None:
        if not self.seconds:
            return None
        per_trial = sum(self.ended) / len(self.ended) if self.ended else self.budget
        waiting = max(0, self.trials - len(self.ended) - len(self.done))
        running = sum(max(0.0, per_trial - done) for done in self.done.values())
        epoch = sum(self.seconds[-50:]) / len(self.seconds[-50:])
        return (waiting * per_trial + running) * epoch / self.parallel

    def describe(self) -> str:
        left = self.seconds_left()
        if left is None:
            return ""
        return f"ETA {left / 60:.0f} min" if left >= 90 else f"ETA {left:.0f} s"


class TrialOutcome(tune.Callback):
    """When a trial ends, whether its last attempt errored, into its folder (through the
    driver's staging copy, as TrialHParams). Tune's error.txt keeps every failed attempt,
    also of a trial that a retry or --resume then finished: this record says how it
    ended."""

    def _write(self, trial, errored: bool) -> None:
        staging = Path(trial.storage.trial_driver_staging_path)
        staging.mkdir(parents=True, exist_ok=True)
        (staging / OUTCOME_FILE).write_text(Outcome(errored, _epochs(trial)).to_text())

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

    def _write(self, trial, errored: bool) -> None:
        result = trial.last_result or {}
        shown = {
            k: float(v)
            for k, v in result.items()
            if k.startswith((keys.selected(""), keys.on_test(""))) and isinstance(v, int | float)
        }
        epochs = _epochs(trial)
        staging = Path(trial.storage.trial_driver_staging_path)
        state = trial_state(errored, epochs, self.budget)
        write_hparams(staging, dict(trial.config), shown, state, epochs)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trial, errored=True)
