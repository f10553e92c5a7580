"""The thin Ray Tune adapter: one trial = `fit` plus report, checkpoint and TensorBoard.

Everything Ray-specific in `trainable/` lives here. Data arrives through
`tune.with_parameters` (Ray's object store), never as file paths, so worker nodes need
no copy of the dataset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from results import keys
from results.config import TrainConfig
from results.keys import METRIC_KEYS
from results.layout import (
    CONFIG_FILE,
    FAILURE_FILE,
    METRICS_FILE,
    PLACEMENT_FILE,
    POINTER_FILE,
    SELECTION_FILE,
    SPLIT_FILE,
    STATE_FOLDER,
    model_files,
)
from results.records import Failure, Placement, Selected, SelectionArrays, StatePointer
from results.settings import SplitPolicy
from trainable.checkpointing import Snapshots, TrialStorage
from trainable.engine import (
    LOSS,
    EpochReport,
    NonFiniteLossError,
    TrainingState,
    fit,
    fit_folds,
    limit_threads,
    pick_device,
)
from trainable.model import EncoderState, shippable
from trainable.preprocess import SizedData
from trainable.splits import Split, experiment_splits, manifest_of
from trainable.tensorboard import TrialWriter

log = logging.getLogger(__name__)


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


def objective_value(report: EpochReport, objective: str) -> float:
    if objective == keys.BEST_COMBINED_LOSS:
        return report.best_combined_loss
    return report.selected_heldout[objective.removeprefix(keys.selected(""))]


def resolve_config(setup: TrialSetup, tune_config: dict[str, Any]) -> TrainConfig:
    """The search space's values over the experiment's base config; unknown keys fail."""
    return TrainConfig.from_flat({**setup.base.to_flat(), **tune_config})


def to_tune_metrics(report: EpochReport, objective: str) -> dict[str, float]:
    """Exactly `keys.REPORTED`, every epoch."""
    fold_values = [objective_value(fold, objective) for fold in report.folds]
    metrics = {
        # The sample SD (ddof=1): the folds are a sample of the splits the data allows.
        keys.OBJECTIVE_FOLD_STD: float(np.std(fold_values, ddof=1)) if fold_values else math.nan,
        keys.EPOCH: report.epoch,
        keys.TRAIN_LOSS: report.train_loss,
        keys.HELDOUT_LOSS: report.heldout_loss,
        keys.COMBINED_LOSS: report.combined_loss,
        keys.BEST_COMBINED_LOSS: report.best_combined_loss,
        keys.BEST_EPOCH: report.best_epoch,
        keys.SELECTED_LOSS: report.selected_heldout[LOSS],
        keys.LR: report.lr,
        keys.EPOCH_SECONDS: report.seconds,
        keys.TRAIN_SECONDS: report.train_seconds,
        keys.IMAGES_PER_SECOND: report.images_per_second,
        keys.PEAK_GPU_BYTES: report.peak_gpu_bytes,
        keys.TEST_LOSS: report.test_loss,
    }
    for m in METRIC_KEYS:
        metrics[keys.on_heldout(m)] = report.heldout[m]
        metrics[keys.selected(m)] = report.selected_heldout[m]
        metrics[keys.on_test(m)] = report.test.get(m, math.nan)
    return {k: metrics[k] for k in keys.REPORTED}


def selection_record(
    report: EpochReport, setup: TrialSetup, splits: list[Split], eval_size: int
) -> Selected:
    """metrics.json: the selected epoch, its held-out and test metrics, and the protocol
    behind them; with K folds, each fold's too."""
    split = splits[0]
    if setup.select_on_test:
        selection = "held-out = test part (reference protocol; optimistic)"
    elif setup.folds > 1:
        selection = f"validation folds ({setup.folds}-fold cross-validation; test part locked)"
    else:
        selection = "validation part (test part locked)"
    counts = {"train": len(split.train), "validation": len(split.validation)}
    if setup.folds > 1:
        counts = {"cross-validated": len(split.train) + len(split.validation)}
    rules = {
        "epoch_rule": (
            f"lowest {setup.base.selection_train_weight:g} x train loss + "
            f"{1 - setup.base.selection_train_weight:g} x held-out loss"
        ),
        "heldout_loss": "soft Dice loss pooled over every pixel of the part",
        "threshold": (
            "chosen on the validation part: the highest pooled Dice on 0.05, 0.10, ..., "
            "0.95 (the lowest on a tie), for the held-out and test metrics"
            if setup.choose_threshold
            else "fixed (the config's)"
        ),
        "evaluation_size": eval_size,
        "folds": setup.folds,
    }
    objective, per_fold = None, ()
    if report.folds:
        values = [objective_value(fold, setup.objective) for fold in report.folds]
        objective = {
            "metric": setup.objective,
            "per_fold": values,
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)),  # sample SD, as reported every epoch
        }
        per_fold = tuple(
            {
                "fold": k,
                "selected_epoch": fold.best_epoch,
                "threshold": fold.threshold,
                keys.COMBINED_LOSS: fold.best_combined_loss,
                "heldout": fold.selected_heldout,
                keys.TEST_LOSS: fold.test_loss,
                "test": fold.test,
            }
            for k, fold in enumerate(report.folds)
        )
    return Selected(
        epoch=report.best_epoch,
        selection=selection,
        split=split.policy.value,
        split_seed=split.seed,
        counts={**counts, "test": len(split.test)},
        combined_loss=report.best_combined_loss,
        test={"loss": report.test_loss, **report.test},
        folds=objective,
        models=tuple(model_files(setup.folds)),
        heldout=report.selected_heldout,
        threshold=report.threshold,
        rules=rules,
        per_fold=per_fold,
    )


def selection_arrays(report: EpochReport, names: list[str], groups: np.ndarray) -> SelectionArrays:
    """What the reporter needs about the selected model on the test part: ROC/PR curves,
    per-image Dice and the predicted masks, and each image's near-duplicate group (a
    bootstrap of the test part resamples whole groups)."""
    assert report.test_stats is not None and report.test_predictions is not None
    curves = report.test_stats.curves()
    # 65,537 curve points are more than a plot needs; keep about a thousand.
    step = max(1, len(curves["fpr"]) // 1000)
    return SelectionArrays(
        epoch=report.epoch,
        names=tuple(names),
        per_image_dice=report.test_stats.per_image_dice(),
        per_image_counts=report.test_stats.per_image_counts(),
        predictions=report.test_predictions,
        curves={name: values[::step] for name, values in curves.items()},
        groups=np.asarray(groups, dtype=np.int64),
        per_image_hd95=report.test_stats.per_image_hd95(),
    )


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


class DeterministicFailure(RuntimeError):
    """A failure that a retry would only repeat (see FAILURE_FILE)."""


# Failures that training the same config again would repeat: Tune's retries are for lost
# workers and nodes, and Tune has no per-error retry policy, so the trial records them and
# a retry ends at once instead of training again.
DETERMINISTIC = (NonFiniteLossError, torch.OutOfMemoryError, ValueError)


def _refuse_known_failure(storage: TrialStorage) -> None:
    recorded = storage.read_text(FAILURE_FILE)
    if recorded is not None:
        reason = Failure.from_text(recorded, storage.path(FAILURE_FILE)).reason
        raise DeterministicFailure(f"not retried, it would fail again: {reason}")


def _record_failure(storage: TrialStorage, error: BaseException) -> None:
    storage.write_text(FAILURE_FILE, Failure(f"{type(error).__name__}: {error}").to_text())


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


def trial_storage() -> TrialStorage:
    """This trial's folder on the experiment's storage (local, NFS or s3://)."""
    context = tune.get_context().get_storage()
    return TrialStorage(context.storage_filesystem, context.trial_fs_path)


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


class Reports:
    """Reports every epoch to Tune, in order, each once what it announces is on storage.

    Snapshots (the selected weights on improvement, the full state every `every` epochs)
    are copied while the next epoch starts and written by one writer thread while
    training goes on; an epoch's report waits in a queue until its writes are done, so
    Tune (and a scheduler that stops the trial after it) never sees an epoch whose files
    are not there. It is sent at the latest when the next epoch ends, before anything of
    that epoch is recorded (`send_pending`). A full state's report carries a Tune
    checkpoint holding only a pointer to it; older states are then deleted."""

    def __init__(self, storage: TrialStorage, every: int, epochs: int) -> None:
        self.storage, self.every, self.epochs = storage, every, epochs
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-writer")
        self.queue: deque[tuple[dict[str, float], list[Future], str | None, int]] = deque()
        self.snapshots = Snapshots()
        self.states: list[str] = []  # the full states kept: the last two reported

    def epoch(
        self,
        metrics: dict[str, float],
        epoch: int,
        weights: dict[str, dict],
        training: Sequence[TrainingState],
    ) -> None:
        """`weights`: file name -> the selected model's state dict, for files to rewrite;
        `training`: the states being trained (one per fold), the full state's source."""

        optimizers = [state.optimizer for state in training]
        changing = [buffer for state in training for buffer in state.model.buffers()]

        def write(name: str, path: str, tree: dict) -> Future:
            copy = self.snapshots.take(name, tree, optimizers, changing)
            job = self.writer.submit(lambda: self.storage.write_tensors(path, copy.result()))
            self.snapshots.writing(name, job)
            return job

        def full_state() -> dict:  # built only when used (the fp16 scale reads the GPU)
            return {"folds": [state.to_dict() for state in training]}

        jobs = [write(name, self.storage.path(name), tree) for name, tree in weights.items()]
        state_name = None
        if epoch % self.every == 0 and epoch < self.epochs:
            state_name = self.storage.state_name(epoch)
            jobs.append(write(STATE_FOLDER, self.storage.path(state_name), full_state()))
        elif self.every < self.epochs:
            # The optimiser's state exists from the first step on: make its buffer now.
            self.snapshots.prepare(STATE_FOLDER, full_state, self.writer)
        self.queue.append((metrics, jobs, state_name, epoch))
        self._send(wait=epoch >= self.epochs)  # now if nothing is left to write

    def send_pending(self) -> None:
        """Report every queued epoch, each once its writes are done (they ran while the
        next epoch trained). Tune may stop the trial in here."""
        self._send(wait=True)

    def close(self) -> None:
        """Send what is left (the last epoch's report waits for its writes)."""
        try:
            self._send(wait=True)
        finally:
            self.snapshots.close()
            self.writer.shutdown(wait=True)

    def abandon(self) -> None:
        """The trial is stopping (its scheduler, an error, an interrupt): report nothing
        more. A write in progress ends on its own (write-then-rename: whole or absent)."""
        self.queue.clear()
        self.snapshots.close(wait=False)
        self.writer.shutdown(wait=False, cancel_futures=True)

    def _send(self, wait: bool) -> None:
        while self.queue:
            metrics, jobs, state_name, epoch = self.queue[0]
            if not wait and not all(job.done() for job in jobs):
                return
            for job in jobs:
                job.result()  # a failed write fails the trial here
            self.queue.popleft()
            if state_name is None:
                tune.report(metrics)
                continue
            with tempfile.TemporaryDirectory() as directory:
                (Path(directory) / POINTER_FILE).write_text(
                    StatePointer(state_name, epoch).to_text()
                )
                try:
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
                finally:
                    # The previous state stays too: the driver's last snapshot of the
                    # experiment may still point to it.
                    self.states = [*self.states[-1:], state_name]
                    self.storage.keep_only_states(self.states)


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
    trial_dir = Path(tune.get_context().get_trial_dir())
    storage = trial_storage()
    _refuse_known_failure(storage)
    try:
        _train(tune_config, data, setup, trial_dir, storage, weights or {}, entered)
    except DETERMINISTIC as error:
        _record_failure(storage, error)
        raise


def _train(
    tune_config: dict[str, Any],
    sized: SizedData,
    setup: TrialSetup,
    trial_dir: Path,
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
    data, truth = sized.at(config.image_size), sized.evaluation
    device = pick_device()
    # A GPU trial's CPUs feed it: DataLoader workers (one thread each) and the trainer's
    # one. A CPU trial's all compute, in the trainer (augmenting inline).
    workers = setup.num_workers if device.type == "cuda" else 0
    limit_threads(max(1, setup.cpus - workers))
    if device.type == "cpu" and ray.get_gpu_ids():
        log.warning(
            "Ray assigned GPU %s but CUDA is not available: training on the CPU", ray.get_gpu_ids()
        )
    splits = experiment_splits(
        data, setup.split_policy, setup.split_seed, setup.folds, not setup.select_on_test
    )
    split = splits[0]
    (trial_dir / SPLIT_FILE).write_text(json.dumps(manifest_of(splits, data.names), indent=1))
    config.save(trial_dir / CONFIG_FILE)

    # A checkpoint points to one training state per fold (one without cross-validation).
    resume_from, note = load_checkpoint(tune.get_checkpoint(), storage, device)
    log_placement(storage, device, resume_from[0]["epoch"] if resume_from else 0, note, startup)

    heldout = split.test if setup.select_on_test else split.validation
    examples = heldout[: setup.examples]
    writer = TrialWriter(trial_dir, setup.image_every)  # one run per trial, named as it
    files = model_files(setup.folds)
    reports = Reports(storage, setup.checkpoint_every, config.epochs)

    def on_epoch_end(report: EpochReport, states: list[TrainingState]) -> None:
        # Tune decides on an epoch (ASHA's stop) when its report is sent, which waits for
        # that epoch's writes: send the earlier ones first, so that a stop lands before
        # anything of this epoch is recorded, and every record of a stopped trial
        # (model.pt, metrics.json, TensorBoard) describes the epoch Tune ranked.
        reports.send_pending()
        writer.epoch(report)
        if writer.wants_images(report.epoch, config.epochs):
            writer.images(
                report.epoch,
                truth.images[examples],
                truth.masks[examples],
                report.heldout_predictions[: len(examples)],
            )
        weights = {}
        if report.improved:
            for fold, state, file in zip(report.folds or (report,), states, files, strict=True):
                if fold.improved:
                    weights[file] = state.model.state_dict()
            test = split.test
            arrays = selection_arrays(report, [data.names[i] for i in test], data.groups[test])
            arrays.write(trial_dir / SELECTION_FILE)
            selected = selection_record(report, setup, splits, truth.image_size)
            (trial_dir / METRICS_FILE).write_text(selected.to_text())
        writer.flush()
        reports.epoch(to_tune_metrics(report, setup.objective), report.epoch, weights, states)

    common = {
        "device": device,
        "truth": truth,
        "num_workers": workers,
        "encoder_state": encoder_state,
        "compiled": setup.compiled,
        "choose_threshold": setup.choose_threshold,
    }
    try:
        if setup.folds > 1:
            fit_folds(
                config, data, splits, resume_from=resume_from, on_epoch_end=on_epoch_end, **common
            )
        else:
            fit(
                config,
                data,
                split,
                select_on_test=setup.select_on_test,
                resume_from=resume_from[0] if resume_from else None,
                on_epoch_end=lambda report, state: on_epoch_end(report, [state]),
                **common,
            )
    except (SystemExit, KeyboardInterrupt):  # Tune stops a trial by raising in it
        reports.abandon()  # no report after that
        raise
    except Exception:
        with contextlib.suppress(Exception):  # the epochs written before the error
            reports.close()
        raise
    else:
        reports.close()
    finally:
        writer.close()
