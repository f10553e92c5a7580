"""An experiment's file and folder names, and the rule for a trial folder's name. What
each file holds, and its one writer and reader, are in `results.records`.

    <storage>/<name>/busi_tune_settings.json   the run settings (RunSettings)
                     data.json                  the data's provenance and warnings
                     <name>.sqlite              the Optuna study (sweeps)
                     trial_<n>_<id>/            one folder per trial, files below
                     report/                    what `report` and `confirm` write

<storage> is a local folder or a URI (s3://bucket/prefix): see results.storage.
"""

from __future__ import annotations

import re
from pathlib import Path

from results.errors import UserError

SETTINGS_FILE = "busi_tune_settings.json"
DATA_FILE = "data.json"  # the data's provenance
ORIGIN_FILE = "origin.json"  # which machine created it (tuner.origin)
LOCK_FILE = ".lock"  # held by the run that writes the experiment (tuner.lock)

# A trial's folder: written by the trial (trainable.trial, .reporting, .failures,
# .tune_adapter) ...
STATE_FOLDER = "state"  # the latest full training state (model, optimiser, ...) to resume
STATE_FILE = re.compile(r"epoch_(\d+)\.pt(?:\.partial)?")  # in it (`.partial` while written)
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
# The sweep's final round (tuner.retrain.final_round), at the experiment's root: its
# configs retrained with fresh seeds, the winner picked on validation, test intervals.
FINAL_FILE = "final.json"
# What readers write, in the experiment's report/ folder: the report, and `confirm`'s result.
REPORT_DIR = "report"
MARKDOWN_FILE = "report.md"
TRIALS_FILE = "trials.csv"
CONFIRM_FILE = "confirm.json"
COMPARISON_PLOT = "comparison.png"
CURVES_PLOT = "learning_curves.png"
ROC_PR_PLOT = "roc_pr.png"
HISTORY_PLOT = "history.png"
IMPORTANCE_PLOT = "importance.png"
PARALLEL_PLOT = "parallel_coordinates.png"
EXAMPLES_PLOT = "examples.png"
PLOT_FILES = (
    COMPARISON_PLOT,
    CURVES_PLOT,
    ROC_PR_PLOT,
    HISTORY_PLOT,
    IMPORTANCE_PLOT,
    PARALLEL_PLOT,
    EXAMPLES_PLOT,
)
# What `export` writes: the model's runtimes (the first is the default), each with its model
# card <out>.json beside it (whose "runtime" names it).
EXPORT_FORMATS = ("torchscript", "onnx")
# Tune's own: its experiment state, which --resume needs, its run snapshots and its
# checkpoint folders inside a trial's.
TUNE_STATE_FILE = "tuner.pkl"
TUNE_RUN_STATE = "experiment_state-*.json"
TUNE_CHECKPOINT_PREFIX = "checkpoint_"

TUNE_TRIAL_ID = "tune_trial_id"  # the Optuna trial's user attribute naming its Tune trial


TRIAL_PREFIX = "trial_"


def trial_folder(number: int, tune_id: str) -> str:
    """A trial's one name (folder, progress line, report, Optuna, TensorBoard, Tune):
    trial_<number, 3 digits>_<Tune's trial id>."""
    return f"{short_trial_name(number)}_{tune_id}"


def short_trial_name(number: int) -> str:
    """trial_<number, 3 digits>: how a trial is named where its id would be noise (the
    progress line's best so far, --trial)."""
    return f"{TRIAL_PREFIX}{number:03d}"


def parse_trial_folder(name: str) -> tuple[int, str] | None:
    """(number, Tune's trial id) of a trial's folder name; None for any other name."""
    prefix, _, rest = name.partition(TRIAL_PREFIX)
    number, _, tune_id = rest.partition("_")
    if prefix or not number.isdecimal() or not tune_id:
        return None
    return int(number), tune_id


# The retraining runs beside a sweep (tuner.retrain): `confirm`'s and the final round's.
CONFIRM_SUFFIX = "-confirm"
FINAL_SUFFIX = "-final"


def retraining_name(sweep: str, suffix: str, split_seed: int, sweep_seed: int) -> str:
    """<sweep>-confirm, <sweep>-final, or <sweep>-confirm-split<seed> on another split."""
    return sweep + suffix + ("" if split_seed == sweep_seed else f"-split{split_seed}")


def study_file_name(name: str) -> str:
    """The Optuna study's file: <name>.sqlite."""
    return f"{name}.sqlite"


def state_file(epoch: int) -> str:
    """A full training state, relative to the trial's folder (a moved experiment still
    finds it): state/epoch_0004.pt."""
    return f"{STATE_FOLDER}/epoch_{epoch:04d}.pt"


def state_file_epoch(name: str) -> int | None:
    """The epoch of a state's file name (or of its `.partial` while it is written); None
    for any other file."""
    found = STATE_FILE.fullmatch(Path(name).name)
    return int(found[1]) if found else None


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
