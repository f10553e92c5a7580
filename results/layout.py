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
import json
from pathlib import Path

import optuna

from results import storage
from results.settings import RunSettings, Scheduler
from trainable.config import TrainConfig
from trainable.errors import UserError
from trainable.splits import SplitPolicy

SETTINGS_FILE = "busi_tune_settings.json"
DATA_FILE = "data.json"  # the data's provenance

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
ERROR_FILE = "error.txt"  # written when a trial errors

TUNE_TRIAL_ID = "tune_trial_id"  # the Optuna trial's user attribute naming its Tune trial


def model_files(folds: int) -> list[str]:
    """The selected weights' file names of a trial: one, or one per fold."""
    if folds == 1:
        return [MODEL_FILE]
    return [FOLD_MODEL_FILE.format(fold=k) for k in range(folds)]


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
    # Experiments from before the objective's direction followed its metric saved a mode.
    flat.pop("mode", None)
    flat["base"] = TrainConfig.from_flat(flat["base"])
    flat["data"] = Path(flat["data"])
    flat["cache_dir"] = Path(flat["cache_dir"]) if flat["cache_dir"] else None
    flat["split"] = SplitPolicy(flat["split"])
    flat["scheduler"] = Scheduler(flat["scheduler"])
    return RunSettings(**flat)


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
