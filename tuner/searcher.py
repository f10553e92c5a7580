"""Ray Tune's OptunaSearch, with the fixes the sweep needs (what the study records:
docs/protocol.md, Search spaces).

- A trial stopped early by ASHA reaches `on_trial_complete` with a partial value; plain
  OptunaSearch records it COMPLETE, as if it had trained the full budget, which biases
  TPE and parameter importances. Here it is recorded PRUNED (its last value kept as an
  intermediate value).
- An errored trial (non-finite loss, out of memory) must be FAIL, not COMPLETE with its
  last reported value.
- Tune hands a trial's last result only to `on_trial_complete`, so plain OptunaSearch
  never records it as an intermediate value: the last epoch of every trial, and every
  epoch of a trial stopped at its first rung, are missing from the study. Here it is
  recorded, so a PRUNED trial also shows its last value (Optuna takes it from there).
- After `Tuner.restore`, the persistent study can be ahead of Tune's snapshot: reporting
  to, or telling, a trial the study already finished raises `UpdateFinishedTrialError`
  and would crash the restore. Such updates are skipped.

- The study is SQLite on the driver (`StudyStorage`). Tune pickles the searcher into the
  experiment and unpickles it on --resume, perhaps on another machine or after the
  experiment moved: the storage opens the study of the experiment being restored
  (`restoring`). With remote storage (s3://) every snapshot of Tune's own state first
  uploads a copy of the study (`save_to_dir`), so the study a lost driver leaves behind is
  never older than the searcher state Tune restores (it may be newer: see above).

Each Optuna trial also carries the Tune trial id and the epochs it ran (user attributes).
The sampler is TPE as Optuna's authors advise for a conditional space sampled in
parallel (`tpe_sampler`).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from results import keys, storage
from results.experiment import State, trial_state
from results.layout import TUNE_TRIAL_ID, trial_folder
from results.settings import driver_study_path, study_location

log = logging.getLogger(__name__)

EPOCHS_RUN = "epochs_run"
TRIAL_NAME = "trial_name"


def tpe_sampler(seed: int) -> optuna.samplers.TPESampler:
    """TPE that models the conditional parameters jointly (`multivariate`, `group`: the
    augmentation strengths exist only when their probability is on) and that, with
    `constant_liar`, does not hand parallel workers the same point while trials run."""
    with warnings.catch_warnings():
        # These options are marked experimental by Optuna; they are what its docs advise.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )


# A trial's state (results.experiment's rule) as the study records it.
STUDY_STATE = {
    State.FINISHED: TrialState.COMPLETE,
    State.STOPPED: TrialState.PRUNED,
    State.ERRORED: TrialState.FAIL,
}


def completion_state(value: float | None, epochs_run: int, budget: int, error: bool) -> TrialState:
    """How an ended Tune trial is recorded in the study: as its state, except that one
    without a finite value fails (the study cannot rank it)."""
    if value is None or not math.isfinite(value):
        return TrialState.FAIL
    return STUDY_STATE[trial_state(error, epochs_run, budget)]


class BudgetAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that knows the epoch budget of a full trial."""

    # Tune ids whose recovery is recorded (see _record_retry); a class default, so that a
    # searcher pickled before this attribute existed restores too.
    _retried: frozenset[str] = frozenset()

    def __init__(self, *args, budget_epochs: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._budget_epochs = budget_epochs

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Tune's snapshot of the searcher. On remote storage the study is uploaded first,
        and in full (an object appears whole or not at all): Tune uploads the snapshot
        itself later, in the background."""
        study = self._storage
        if isinstance(study, StudyStorage) and storage.is_remote(study.experiment_dir):
            # A storage error ends the run (one line naming the storage): the bucket's
            # study must not fall behind Tune's state, or the run could not resume.
            target = study_location(study.experiment_dir, study.study_name)
            storage.write_bytes(target, study_bytes(study.file))
        super().save_to_dir(checkpoint_dir, session_str)

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial:
        return self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id)

    def _is_finished_in_study(self, trial_id: str) -> bool:
        return self._stored(trial_id).state.is_finished()

    def _record_intermediate(self, trial_id: str, value: float, epoch: int) -> None:
        """Once per epoch: Tune hands the last result twice when a trial ends by itself."""
        if epoch not in self._stored(trial_id).intermediate_values:
            self._ot_trials[trial_id].report(value, epoch)

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        # The name the trial's folder, report and TensorBoard run carry (see TrialNamer).
        ot_trial.set_user_attr(TRIAL_NAME, trial_folder(ot_trial.number, trial_id))
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials and self._is_finished_in_study(trial_id):
            return  # the study is ahead of Tune's restored snapshot
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            return  # Optuna refuses non-finite intermediate values; the trial will fail
        self._record_intermediate(trial_id, value, int(result[keys.ITERATION]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self._ot_trials or trial_id in self._retried:
            return
        value = result.get(self.metric) if result else None
        epochs_run = int(result.get(keys.ITERATION, 0)) if result else 0
        state = completion_state(value, epochs_run, self._budget_epochs, error)
        failed_before = self._stored(trial_id).state is TrialState.FAIL
        if failed_before and state is not TrialState.FAIL:  # rerun by --resume: it recovered
            self._retried = self._retried | {trial_id}
            self._record_retry(trial_id, value, epochs_run, state)
            return
        if trial_id in self._completed_trials:
            return
        self._completed_trials.add(trial_id)
        if self._is_finished_in_study(trial_id):
            log.info("trial %s is already finished in the study; not told again", trial_id)
            return
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(EPOCHS_RUN, epochs_run)
        if value is not None and math.isfinite(value) and epochs_run > 0:
            self._record_intermediate(trial_id, value, epochs_run)
        self._ot_study.tell(ot_trial, value if state is TrialState.COMPLETE else None, state=state)

    def _record_retry(
        self, trial_id: str, value: float | None, epochs_run: int, state: TrialState
    ) -> None:
        """A trial the study holds FAIL that Tune ran again (--resume re-runs errored
        trials) and that ended well: a finished Optuna trial cannot change state, so its
        outcome is a new trial with the same parameters, Tune id and name, as Optuna's
        own RetryFailedTrialCallback records a retry (`failed_trial`, `retry_history`).
        The study's last trial of a Tune id is its outcome."""
        failed = self._stored(trial_id)
        intermediate = dict(failed.intermediate_values)
        if value is not None and math.isfinite(value) and epochs_run > 0:
            intermediate[epochs_run] = value
        history = [*failed.system_attrs.get("retry_history", []), failed.number]
        self._ot_study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if state is TrialState.COMPLETE else None,
                params=failed.params,
                distributions=failed.distributions,
                user_attrs={**failed.user_attrs, EPOCHS_RUN: epochs_run},
                system_attrs={"failed_trial": history[0], "retry_history": history},
                intermediate_values=intermediate,
            )
        )


_RESTORING: list[str] = []  # the experiment Tune is restoring, while it does


@contextmanager
def restoring(experiment_dir: str) -> Iterator[None]:
    """While Tune restores (and runs) an experiment, a study storage it unpickles opens
    that experiment's study, wherever the experiment was when it was pickled."""
    _RESTORING.append(experiment_dir)
    try:
        yield
    finally:
        _RESTORING.pop()


class StudyStorage(optuna.storages.RDBStorage):
    """The sweep's SQLite study on the driver (see driver_study_path). Unpickled, it opens
    the study of the experiment being restored: a plain RDBStorage would reconnect to the
    absolute path it was made with, and create an empty study there if the experiment
    moved or the driver is another machine."""

    def __init__(self, experiment_dir: str, study_name: str) -> None:
        self.experiment_dir, self.study_name = experiment_dir, study_name
        self.file = driver_study_path(experiment_dir, study_name)
        if storage.is_remote(experiment_dir):  # the driver's own copy, in its cache
            self.file.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(f"sqlite:///{self.file}")

    def __reduce__(self):
        return _reopen, (self.experiment_dir, self.study_name)


def _reopen(experiment_dir: str, study_name: str) -> StudyStorage:
    return StudyStorage(_RESTORING[-1] if _RESTORING else experiment_dir, study_name)


def study_bytes(source: Path) -> bytes:
    """A consistent copy of a live SQLite study, as a file's bytes (SQLite's backup into
    memory, not a read of the file, which could catch a write half done)."""
    with closing(sqlite3.connect(source)) as live, closing(sqlite3.connect(":memory:")) as copy:
        live.backup(copy)
        return copy.serialize()
