"""The thin Ray Tune adapter: Tune's API in, one trial (`trainable.trial.run_trial`) out.

Everything Ray-specific in `trainable/` lives here: the trial's storage and checkpoint,
where it runs, its encoder weights from the object store, and `tune.report`. Data
arrives through `tune.with_parameters` (Ray's object store), never as file paths, so
worker nodes need no copy of the dataset.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from results.config import TrainConfig
from results.layout import PLACEMENT_FILE, POINTER_FILE
from results.records import Placement, StatePointer
from trainable.checkpointing import TrialStorage
from trainable.engine import pick_device
from trainable.failures import DETERMINISTIC, record_failure, refuse_known_failure
from trainable.model import EncoderState, shippable
from trainable.preprocess import SizedData
from trainable.trial import run_trial
from trainable.trial_setup import TrialSetup, resolve_config

log = logging.getLogger(__name__)


def train_busi(
    tune_config: dict[str, Any],
    data: SizedData,
    setup: TrialSetup,
    weights: dict[tuple[str, str], ray.ObjectRef] | None = None,
) -> None:
    """The function trainable: one training run, reported every epoch. `data` and the
    pretrained encoders' `weights` (an object per encoder) come from the driver through
    Ray's object store."""
    entered = time.time()
    storage = trial_storage()
    refuse_known_failure(storage)
    try:
        _train(tune_config, data, setup, storage, weights or {}, entered)
    except DETERMINISTIC as error:
        record_failure(storage, error)
        raise


def _train(
    tune_config: dict[str, Any],
    data: SizedData,
    setup: TrialSetup,
    storage: TrialStorage,
    weights: dict[tuple[str, str], ray.ObjectRef],
    entered: float,
) -> None:
    # Ray logs every checkpoint it persists (one line per trial per epoch); Tune's own
    # results already say where they are.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    config = resolve_config(setup, tune_config)
    fetching = time.perf_counter()
    encoder_state = shipped_weights(config, weights)
    startup = {
        "entered": entered,
        "weights_s": time.perf_counter() - fetching,
        "pid": os.getpid(),
        "process_started": process_started(),
    }
    device = pick_device()
    if device.type == "cpu" and ray.get_gpu_ids():
        log.warning(
            "Ray assigned GPU %s but CUDA is not available: training on the CPU", ray.get_gpu_ids()
        )
    # A checkpoint points to one training state per fold (one without cross-validation).
    resume_from, note = load_checkpoint(tune.get_checkpoint(), storage, device)
    log_placement(storage, device, resume_from[0]["epoch"] if resume_from else 0, note, startup)
    trial_dir = Path(tune.get_context().get_trial_dir())
    run_trial(config, data, setup, trial_dir, storage, device, encoder_state, resume_from, report)


def process_started() -> float | None:
    """When this worker process started (wall clock, to about a second: /proc counts in
    clock ticks from a boot time in whole seconds); None off Linux."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def report(metrics: dict[str, float], checkpoint: Path | None) -> None:
    """One epoch to Tune, with the checkpoint folder it stands for (if any)."""
    if checkpoint is None:
        tune.report(metrics)
    else:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint))


def trial_storage() -> TrialStorage:
    """This trial's folder on the experiment's storage (local, NFS or s3://)."""
    context = tune.get_context().get_storage()
    return TrialStorage(context.storage_filesystem, context.trial_fs_path)


def shipped_weights(
    config: TrainConfig, weights: dict[tuple[str, str], ray.ObjectRef]
) -> EncoderState | None:
    """This trial's encoder weights from the object store (None: random init, or weights
    the driver did not resolve, which the model then loads itself, with a warning)."""
    key = (config.encoder, config.encoder_weights)
    if key in weights:
        return ray.get(weights[key])
    if shippable(*key):
        log.warning("%s/%s weights not sent by the driver: loaded on this node", *key)
    return None


def load_checkpoint(
    checkpoint: tune.Checkpoint | None, storage: TrialStorage, device: torch.device
) -> tuple[list | None, str]:
    """The per-fold training states the last checkpoint points to, and "" or a note. A
    damaged checkpoint or state (cut short, or not plain tensors: `weights_only` refuses
    pickled code) gives None with a warning: the trial restarts from its first epoch."""
    if checkpoint is None:
        return None, ""
    try:
        with checkpoint.as_directory() as directory:
            path = Path(directory) / POINTER_FILE
            state = StatePointer.from_text(path.read_text(), path).state
        return storage.read_tensors(storage.path(state), device)["folds"], ""
    except Exception as error:  # torch and pyarrow raise many kinds for one damaged file
        note = (
            f"checkpoint {checkpoint.path} unreadable ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); the trial restarts from "
            "its first epoch"
        )
        log.warning(note)
        return None, note


def log_placement(
    storage: TrialStorage,
    device: torch.device,
    resumed_after_epoch: int,
    note: str = "",
    startup: dict[str, float] | None = None,
) -> None:
    """One line per (re)start of the trial, written to its storage folder (so a start on
    another node, or after --resume, adds to the record instead of replacing it): where it
    ran, where it resumed from, and (`startup`) when it entered, how long its encoder
    weights took to come from the object store and its worker process (pid, start time):
    benchmarks.gpu_sweep splits a first epoch's cost with them."""
    entry = Placement(
        node_id=ray.get_runtime_context().get_node_id(),
        gpu_ids=tuple(str(g) for g in ray.get_gpu_ids()),
        device=str(device),
        resumed_after_epoch=resumed_after_epoch,
        time=time.time(),
        note=note,
        startup=startup or {},
    )
    storage.append_line(PLACEMENT_FILE, entry.to_line())
