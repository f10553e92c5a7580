"""An experiment directory read offline: settings, trials, the best and the reference trial.

Plain files only (JSON, NumPy, the Optuna SQLite study): no Ray cluster is needed, so
a report can be made from a copied or interrupted experiment. An experiment on remote
storage (s3://…) is read from a local mirror of its small files (results.storage).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from results import keys, storage
from results.config import TrainConfig
from results.errors import DamagedRecord, UserError
from results.layout import (
    CONFIG_FILE,
    DATA_FILE,
    ERROR_FILE,
    METRICS_FILE,
    OUTCOME_FILE,
    PARAMS_FILE,
    PLACEMENT_FILE,
    RESULT_FILE,
    SELECTION_FILE,
    SETTINGS_FILE,
    SPLIT_FILE,
    TRIAL_PREFIX,
    TUNE_TRIAL_ID,
    parse_trial_folder,
    study_file_name,
)
from results.records import (
    DataProvenance,
    Outcome,
    Placement,
    Selected,
    SelectionArrays,
    SplitManifest,
    is_integer,
    is_number,
    load_settings,
    read_config,
    read_selection,
    type_problem,
)
from results.settings import RunSettings

log = logging.getLogger(__name__)


class State(enum.Enum):
    """How a trial ended, the one rule for the report, the progress lines, TensorBoard's
    HParams and the Optuna study's outcome."""

    FINISHED = "finished"
    STOPPED = "stopped early"  # by the scheduler, judged on what it reached
    INTERRUPTED = "interrupted"  # cut off by an interrupted run
    ERRORED = "errored"

    def at(self, epochs_run: int) -> str:
        """In words: "finished", "errored", "stopped early at epoch 3"."""
        if self in (State.FINISHED, State.ERRORED):
            return self.value
        return f"{self.value} at epoch {epochs_run}"


def trial_state(errored: bool, epochs_run: int, budget: int, ended: bool = True) -> State:
    """A short trial that has not ended was cut off by an interrupted run, not judged by
    the scheduler."""
    if errored:
        return State.ERRORED
    if epochs_run >= budget:
        return State.FINISHED
    return State.STOPPED if ended else State.INTERRUPTED


@dataclass(frozen=True)
class Trial:
    name: str  # trial_004_cc4fd320
    number: int  # the sweep's counter: 000 is the reference point (sweep and --reference)
    path: Path
    status: State  # see trial_state
    params: dict[str, Any]  # the searched values
    config: TrainConfig | None  # None only if neither config.json nor params resolve
    rows: tuple[dict[str, Any], ...]  # one per epoch, in epoch order
    objective: float | None  # the settings' metric in the last row (validation part)
    selected: Selected | None  # None for a trial that errored before its first epoch
    error: str | None  # the last line of error.txt
    optuna_state: str | None  # COMPLETE / PRUNED / FAIL / RUNNING, None without a study
    # The last line of placement.jsonl: node, GPU ids and device of the trial's last start
    # (None without one, or with a damaged one, warned about).
    last_start: Placement | None = None
    # selection.npz once read (the report asks several times).
    _read: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def state(self) -> str:
        """Its state in words, with the epoch it stopped at."""
        return self.status.at(self.epochs_run)

    @property
    def epochs_run(self) -> int:
        return int(self.rows[-1][keys.EPOCH]) if self.rows else 0

    @property
    def run_seconds(self) -> float | None:
        """Wall time the trial trained (Tune's time_total_s at its last epoch)."""
        return _finite(self.rows[-1].get(keys.TIME_TOTAL)) if self.rows else None

    @property
    def on_gpu(self) -> bool:
        """Whether its last start trained on a CUDA device."""
        start = self.last_start
        return start is not None and start.device.startswith("cuda")

    def device_time(self, cpus: int | None, gpus: float | None) -> str:
        """Run time times what the trial held: GPU-seconds on CUDA (`gpus` per trial, or
        the GPU ids it was given), CPU-seconds otherwise; "—" before its first epoch."""
        start = self.last_start
        if self.run_seconds is None or start is None:
            return "—"
        if self.on_gpu:
            return f"{self.run_seconds * (gpus or len(start.gpu_ids) or 1):.0f} GPU·s"
        return f"{self.run_seconds * (cpus or 1):.0f} CPU·s"

    @property
    def fold_spread(self) -> float | None:
        """The objective's std over cross-validation folds (None without folds)."""
        return self.selected.folds.std if self.selected and self.selected.folds else None

    @property
    def errored(self) -> bool:
        return self.status is State.ERRORED

    @property
    def completed(self) -> bool:
        """Finished or stopped by the scheduler: judged on what it reached. An errored or
        interrupted trial never is, so it is never the best."""
        return self.status in (State.FINISHED, State.STOPPED)

    @property
    def has_selection(self) -> bool:
        """selection.npz is there and readable."""
        return self.selection() is not None

    def split(self) -> SplitManifest:
        """split.json, the split the trial ran on; DamagedRecord when it is missing or
        damaged, NewerFormatError when a newer busi-tune wrote it."""
        path = self.path / SPLIT_FILE
        try:
            return SplitManifest.from_text(path.read_text(), path)
        except (OSError, ValueError, KeyError, TypeError) as error:  # JSON's: ValueErrors
            missing = isinstance(error, FileNotFoundError)
            reason = "missing" if missing else f"damaged ({_first_line(error)})"
            raise DamagedRecord(f"{path}: {reason}") from None

    def selection(self) -> SelectionArrays | None:
        """Read on demand (the arrays are only needed for the best trial's plots); None
        without a selection.npz, or with a damaged one (and a warning)."""
        if "selection" not in self._read:
            self._read["selection"] = self._read_selection()
        return self._read["selection"]

    def _read_selection(self) -> SelectionArrays | None:
        path = self.path / SELECTION_FILE
        if not path.is_file():
            return None
        try:
            return read_selection(path)
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            log.warning("%s: damaged (%s); ignored", path, _first_line(error))
            return None


@dataclass(frozen=True)
class Experiment:
    path: Path
    settings: RunSettings
    trials: tuple[Trial, ...]  # by number
    best: Trial | None  # best objective on the held-out part; never chosen on test
    reference: Trial | None  # the in-sweep reference trial (the base config)
    study_path: Path | None  # the Optuna study, None for a --reference run
    location: str  # where it lives: its folder, or a URI whose mirror `path` is
    provenance: DataProvenance | None = None  # data.json

    @property
    def is_sweep(self) -> bool:
        return not self.settings.reference_only

    @property
    def is_remote(self) -> bool:
        return storage.is_remote(self.location)

    def trial_file(self, trial: Trial, name: str) -> Path:
        """A trial's file on local disk; from remote storage, weights (which the mirror
        leaves out) are fetched on first use."""
        if not self.is_remote:
            return trial.path / name
        return storage.fetch(self.location, self.path, f"{trial.name}/{name}")

    def marks(self, trial: Trial) -> str:
        """B: the best trial; R: the in-sweep reference trial."""
        best = self.best is not None and trial.name == self.best.name
        reference = self.reference is not None and trial.name == self.reference.name
        return ("B" if best else "") + ("R" if reference else "")

    def ranked(self) -> list[Trial]:
        return rank_trials(self.trials, self.settings.mode)

    def load_study(self) -> optuna.Study | None:
        return open_study(self.study_path, self.settings.name)


def rank_trials(trials: tuple[Trial, ...], mode: str) -> list[Trial]:
    """Trials with a finite objective, best first (ties: the lower number first). A trial
    stopped early competes with the value it reached, as in Tune's own choice of the best."""
    scored = [t for t in trials if t.objective is not None and t.completed]
    return sorted(scored, key=lambda t: keys.rank_key(t.objective, mode, t.number))


def _read_json(path: Path) -> Any:
    """The file's JSON; None when it is absent or damaged (empty or cut short, e.g. by a
    full disk), with a warning, so one bad file does not stop a report."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: damaged (empty or cut short); ignored", path)
        return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_rows(trial_dir: Path) -> tuple[dict[str, Any], ...]:
    """Per-epoch results; after a retry from a checkpoint an epoch can appear twice, and
    the later report wins."""
    path = trial_dir / RESULT_FILE
    if not path.is_file():
        return ()
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not is_integer(row.get(keys.EPOCH, 0)):
            log.warning("%s: a damaged line (cut short, e.g. by a full disk); skipped", path)
            continue
        if keys.EPOCH in row:
            by_epoch[row[keys.EPOCH]] = row
    return tuple(by_epoch[e] for e in sorted(by_epoch))


def _last_error_line(path: Path) -> str | None:
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "(empty error.txt)"


def _finite(value: Any) -> float | None:
    return float(value) if is_number(value) and math.isfinite(value) else None


def _params(trial_dir: Path) -> dict[str, Any]:
    """The searched values: TrainConfig fields of their types, or {} (with a warning)."""
    path = trial_dir / PARAMS_FILE
    params = _read_json(path)
    if params is None:
        return {}
    if problem := type_problem(TrainConfig, params):
        log.warning("%s: damaged (%s); ignored", path, problem)
        return {}
    return params


def _config(trial_dir: Path, base: TrainConfig, params: dict[str, Any]) -> TrainConfig | None:
    """config.json's TrainConfig; when it is absent, damaged or not a valid config, the
    one the trial was built from (the base config and the searched values), with a
    warning; None when neither makes one."""
    path = trial_dir / CONFIG_FILE
    if path.is_file():
        try:
            return read_config(path.read_text(), path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s: damaged (empty or cut short); ignored", path)
        except ValueError as error:
            log.warning(
                "%s: not a valid config (%s); ignored, the trial's config rebuilt from the "
                "base config and its %s",
                path,
                _first_line(error),
                PARAMS_FILE,
            )
    try:
        return TrainConfig.from_flat({**base.to_flat(), **params})
    except ValueError as error:
        log.warning("%s: no usable config (%s)", trial_dir.name, _first_line(error))
        return None


def _last_start(trial_dir: Path) -> Placement | None:
    placement = trial_dir / PLACEMENT_FILE
    starts = placement.read_text(errors="replace").splitlines() if placement.is_file() else []
    if not starts:
        return None
    try:
        return Placement.from_line(starts[-1], placement)
    except (ValueError, KeyError, TypeError):
        log.warning("%s: damaged (its last line is not a start); ignored", placement)
        return None


def _selected(trial_dir: Path) -> Selected | None:
    return _read_record(trial_dir / METRICS_FILE, Selected.from_text)


def _ending(trial_dir: Path, settings: RunSettings, optuna_state: str | None) -> tuple[bool, bool]:
    """Whether the trial's last attempt errored, and whether it ended (a short trial that
    did not end was cut off by an interrupted run), as the driver recorded when it ended
    (outcome.json); error.txt also keeps the failed attempts of a trial that a retry or
    --resume finished. Without the record (an older experiment, a driver killed first):
    error.txt, and ended if a scheduler that stops trials ran and the study does not hold
    the trial RUNNING."""
    outcome = _read_record(trial_dir / OUTCOME_FILE, Outcome.from_text)
    if outcome is not None:
        return outcome.errored, True
    ended = settings.stops_trials_early and optuna_state != "RUNNING"
    return (trial_dir / ERROR_FILE).is_file(), ended


def _read_record(path: Path, parse: Callable[[str, Path], Any]) -> Any:
    """A record, or None when its file is absent or damaged (with a warning: one bad
    file does not stop a report); a newer format stops the reader in one line."""
    if not path.is_file():
        return None
    try:
        return parse(path.read_text(), path)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else _first_line(error)
        log.warning("%s: damaged (%s); ignored", path, reason)
        return None


def read_trial(trial_dir: Path, settings: RunSettings, optuna_states: dict[str, str]) -> Trial:
    number, tune_id = parse_trial_folder(trial_dir.name)
    params = _params(trial_dir)
    rows = read_rows(trial_dir)
    optuna_state = optuna_states.get(tune_id)
    errored, ended = _ending(trial_dir, settings, optuna_state)
    error = None
    if errored:
        error = _last_error_line(trial_dir / ERROR_FILE) or f"(no {ERROR_FILE})"
    epochs_run = rows[-1][keys.EPOCH] if rows else 0
    return Trial(
        name=trial_dir.name,
        number=number,
        path=trial_dir,
        status=trial_state(errored, epochs_run, settings.base.epochs, ended),
        params=params,
        config=_config(trial_dir, settings.base, params),
        rows=rows,
        objective=_finite(rows[-1].get(settings.metric)) if rows else None,
        selected=_selected(trial_dir),
        error=error,
        optuna_state=optuna_state,
        last_start=_last_start(trial_dir),
    )


def is_base_config(config: TrainConfig | None, settings: RunSettings, searched: set[str]) -> bool:
    """True when the config has the base config's values on every key the sweep searched."""
    if config is None:
        return False
    flat, base = config.to_flat(), settings.base.to_flat()
    return all(flat[k] == base[k] for k in searched)


def open_study(path: Path | None, name: str) -> optuna.Study | None:
    """The sweep's Optuna study, None when there is none (a --reference run); a damaged
    file is one line naming it."""
    if path is None or not path.is_file():
        return None
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{path}")
    except Exception as error:  # SQLAlchemy's or Optuna's, whatever the damage
        raise UserError(
            f"{path}: the Optuna study cannot be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}); restore it from a copy, or start a new experiment"
        ) from None


def optuna_states(study: optuna.Study | None) -> dict[str, str]:
    """Tune trial id -> Optuna state."""
    trials = study.get_trials(deepcopy=False) if study else []
    return {
        t.user_attrs[TUNE_TRIAL_ID]: t.state.name for t in trials if TUNE_TRIAL_ID in t.user_attrs
    }


def load_experiment(location: str | Path) -> Experiment:
    """An experiment folder <storage>/<name>, local or remote (s3://…)."""
    if storage.is_remote(location):
        local = storage.mirror(str(location), SETTINGS_FILE)
        return _load_local(local, str(location).rstrip("/"))
    return _load_local(Path(location), str(Path(location).resolve()))


def _load_local(directory: Path, location: str) -> Experiment:
    if not directory.is_dir():
        raise UserError(f"{directory}: no such folder; give an experiment folder <storage>/<name>")
    if not (directory / SETTINGS_FILE).is_file():
        raise UserError(
            f"{directory}: not an experiment folder (no {SETTINGS_FILE}); give the folder "
            "that `python -m tuner run` made, <storage>/<name>"
        )
    # The reader's own cache ($BUSI_TUNE_CACHE), never a folder the experiment names: the
    # settings may come from elsewhere, and a reader writes only where its user said.
    settings = dataclasses.replace(load_settings(directory / SETTINGS_FILE), cache_dir=None)
    study_path = None if settings.reference_only else directory / study_file_name(settings.name)
    states = optuna_states(open_study(study_path, settings.name))
    trial_dirs = sorted(p for p in directory.glob(f"{TRIAL_PREFIX}*_*") if _is_trial_dir(p))
    trials = tuple(
        sorted((read_trial(p, settings, states) for p in trial_dirs), key=lambda t: t.number)
    )
    ranked = rank_trials(trials, settings.mode)
    # The space's keys are the ones its trials were sampled on (the study records them).
    searched = {key for trial in trials for key in trial.params}
    return Experiment(
        path=directory,
        settings=settings,
        trials=trials,
        best=ranked[0] if ranked else None,
        reference=next((t for t in trials if is_base_config(t.config, settings, searched)), None),
        study_path=study_path if study_path and study_path.is_file() else None,
        provenance=_provenance(directory / DATA_FILE),
        location=location,
    )


def _is_trial_dir(path: Path) -> bool:
    """trial_<number>_<id>/: a folder named otherwise is not a trial's (warned about)."""
    if not path.is_dir():
        return False
    if parse_trial_folder(path.name) is not None:
        return True
    log.warning("%s: not a trial's folder (trial_<number>_<id>); skipped", path)
    return False


def _provenance(path: Path) -> DataProvenance | None:
    """data.json: where the data was, its content hash, its size, whether synthetic."""
    return _read_record(path, DataProvenance.from_text)
