"""An experiment's files: their names and how the settings and the study are read and
written. Shared by `tuner` (which writes them) and `results` (which reads them), and free
of Ray and torch, so a report needs neither.

    <storage>/<name>/busi_tune_settings.json   the run settings (RunSettings)
                     data.json                  the data's provenance and warnings
                     <name>.sqlite              the Optuna study (sweeps)
                     trial_<n>_<id>/            one folder per trial, files below

<storage> is a local folder or a URI (s3://bucket/prefix): see results.storage.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import optuna

from results import storage
from results.settings import RunSettings, Scheduler
from search_spaces import SPACES
from trainable.config import TrainConfig
from trainable.errors import UserError
from trainable.splits import SplitPolicy

SETTINGS_FILE = "busi_tune_settings.json"
DATA_FILE = "data.json"  # the data's provenance
ORIGIN_FILE = "origin.json"  # which machine created it (tuner.origin)

# A trial's folder: written by the trial (trainable.tune_adapter) ...
STATE_FOLDER = "state"  # the latest full training state (model, optimiser, ...) to resume
POINTER_FILE = "state.json"  # inside Tune's checkpoint_*: which state file, of which epoch
MODEL_FILE = "model.pt"  # the selected model's weights (state dict), rewritten on improvement
FOLD_MODEL_FILE = "model_fold{fold}.pt"  # the same for each fold of a cross-validated trial
FAILURE_FILE = "failure.json"  # why a trial failed deterministically: its retries do not train
METRICS_FILE = "metrics.json"  # the selected epoch, its metrics and the protocol
CONFIG_FILE = "config.json"  # the trial's full TrainConfig
SPLIT_FILE = "split.json"  # the split's manifest
SELECTION_FILE = "selection.npz"  # the selected model on the test part
PLACEMENT_FILE = "placement.jsonl"  # one line per (re)start: node, device, resumed epoch
# ... and by Tune.
RESULT_FILE = "result.json"  # per-epoch results, one JSON object per line
PARAMS_FILE = "params.json"  # the searched values
ERROR_FILE = "error.txt"  # written when a trial errors (every failed attempt, never cleared)
# ... and by the driver when a trial ends: whether its last attempt errored.
OUTCOME_FILE = "outcome.json"
# The sweep's final round (tuner.confirm.final_round), at the experiment's root: its
# configs retrained with fresh seeds, the winner picked on validation, test intervals.
FINAL_FILE = "final.json"

TUNE_TRIAL_ID = "tune_trial_id"  # the Optuna trial's user attribute naming its Tune trial


def model_files(folds: int) -> list[str]:
    """The selected weights' file names of a trial: one, or one per fold."""
    if folds == 1:
        return [MODEL_FILE]
    return [FOLD_MODEL_FILE.format(fold=k) for k in range(folds)]


def own_folder(directory: Path) -> Path:
    """A folder inside the experiment that a reader writes into (report/), made if missing.
    Refused when it is a link or a file: in an experiment from elsewhere it could lead
    anywhere, and the reader replaces files in it."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise UserError(
            f"{directory}: a link or a file, not a folder; readers write only inside the "
            "experiment: remove it, then run the command again"
        )
    directory.mkdir(exist_ok=True)
    return directory


def save_settings(settings: RunSettings, path: str | Path) -> None:
    """Paths saved absolute, so resume, report and evaluate work from any folder."""
    flat = dataclasses.asdict(settings)
    flat["base"] = settings.base.to_flat()
    flat["data"] = str(settings.data.resolve())
    flat["cache_dir"] = str(settings.cache_dir.resolve()) if settings.cache_dir else None
    storage.write_bytes(path, (json.dumps(flat, indent=2, default=str) + "\n").encode())


def load_settings(path: str | Path) -> RunSettings:
    raw = storage.read_bytes(path)
    if raw is None:
        raise UserError(f"{path}: no such file; give an experiment folder <storage>/<name>")
    try:
        flat = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(
            f"{path}: damaged (empty or cut short, e.g. by a full disk); the experiment's "
            "settings are lost: start a new experiment with another --name"
        ) from None
    try:
        return _settings(flat)
    except KeyError as error:
        reason = f"no {error}"
    except (TypeError, ValueError, UserError) as error:
        reason = str(error)
    raise UserError(
        f"{path}: not the settings of an experiment ({reason}); the folder is damaged or "
        "was edited: restore it from a copy, or start a new experiment"
    )


def _settings(flat: Any) -> RunSettings:
    """RunSettings from the saved JSON, every value of the type it is declared with."""
    if not isinstance(flat, dict):
        raise ValueError("not a JSON object")
    flat = dict(flat)
    # Experiments from before the objective's direction followed its metric saved a mode.
    flat.pop("mode", None)
    # Experiments from before --conflicts trained and scored every image.
    flat.setdefault("conflicts", "keep")
    problem = type_problem(RunSettings, flat) or type_problem(TrainConfig, flat["base"])
    if problem:
        raise ValueError(problem)
    if flat.get("space", RunSettings.space) not in SPACES:
        raise ValueError(f"unknown search space {flat['space']!r}; valid: {', '.join(SPACES)}")
    flat["base"] = TrainConfig.from_flat(flat["base"])
    flat["data"] = Path(flat["data"])
    flat["cache_dir"] = Path(flat["cache_dir"]) if flat.get("cache_dir") else None
    flat["split"] = SplitPolicy(flat["split"])
    flat["scheduler"] = Scheduler(flat["scheduler"])
    return RunSettings(**flat)


def type_problem(cls: type, flat: Any) -> str | None:
    """What in `flat`, a dataclass's fields read from a JSON file, would not build `cls`:
    a key it does not have, or a value not of its field's type (a path or an enum is saved
    as a string); None when nothing. A file from elsewhere can hold anything."""
    if not isinstance(flat, dict):
        return f"{reprlib.repr(flat)} is not a JSON object"
    hints = typing.get_type_hints(cls)
    unknown = sorted(str(key) for key in set(flat) - set(hints))
    if unknown:
        return f"unknown keys {reprlib.repr(unknown)}"
    for key, value in flat.items():
        options = typing.get_args(hints[key]) if _is_union(hints[key]) else (hints[key],)
        if not any(_fits(value, option) for option in options):
            names = " or ".join(getattr(option, "__name__", str(option)) for option in options)
            return f"{key}={reprlib.repr(value)} is not {names}"
    return None


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


def _fits(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint in (str, Path) or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return isinstance(value, str)
    return isinstance(value, dict)  # a nested dataclass (RunSettings.base), checked apart


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
