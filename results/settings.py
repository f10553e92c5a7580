"""The run settings: one frozen object built from the command line, checked once."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path

from results import keys, storage
from results.config import TrainConfig
from results.errors import UserError
from results.layout import study_file_name


class SplitPolicy(enum.StrEnum):
    RANDOM = "random"
    GROUPED = "grouped"


class ConflictPolicy(enum.StrEnum):
    """What a run does with copies of one frame whose labels or masks contradict."""

    EXCLUDE = "exclude"  # leave every such copy out: neither trained on nor scored
    KEEP = "keep"  # use them as they are (the reference protocol's data)


class Scheduler(enum.StrEnum):
    ASHA = "asha"
    FIFO = "fifo"


# Defaults the tuner settles once it knows the budget or the cluster, and the rules `--help`
# states (tuner.cli): kept here, where importing them loads neither Ray nor torch.

# ASHA's first rung, as a share of the budget: 8 of 20 epochs. Earlier rungs (a fifth, as
# before) stop slow starters (a low learning rate, strong augmentation, a warm-up) on
# values that say little about where they end.
GRACE_SHARE = 0.4
REDUCTION_FACTOR = 3  # ASHA's: a rung keeps the top third
# --final-seeds when trials run on GPUs. On CPUs the final round is off: there it would
# cost more than a CPU-sized sweep itself (confirm does it on demand).
GPU_FINAL_SEEDS = 2
MAX_DEFAULT_CPUS = 8  # --cpus-per-trial of a GPU trial: more DataLoader workers rarely help
# --gpus-per-trial auto (tuner.packing): the GPU memory kept free (allocator fragmentation,
# evaluation, cuDNN workspaces chosen later), and the CPUs each packed trial needs (one
# trains, one runs a DataLoader worker).
GPU_HEADROOM = 0.10
CPUS_PER_GPU_TRIAL = 2


def default_grace_period(epochs: int) -> int:
    """--grace-period's default: GRACE_SHARE of the budget, at least 1 epoch."""
    return max(1, round(GRACE_SHARE * epochs))


@dataclass(frozen=True)
class RunSettings:
    data: Path | None  # None only to resume: the data the run was started with
    base: TrainConfig  # the reference, shrunk by --encoder/--image-size/... if asked
    reference_only: bool = False  # one trial, reference protocol (selection on test)
    trials: int = 32
    max_concurrent: int | None = None
    space: str = "reference"
    scheduler: Scheduler = Scheduler.ASHA
    grace_period: int | None = None  # ASHA's first rung; None: default_grace_period
    metric: str = keys.DEFAULT_OBJECTIVE  # one of keys.OBJECTIVES: validation-side only
    seed: int = 0
    split: SplitPolicy = SplitPolicy.GROUPED  # --reference: the paper's random split
    # Contradicting copies of one frame: left out (--reference: kept, as the paper did).
    conflicts: ConflictPolicy = ConflictPolicy.EXCLUDE
    folds: int = 1  # K > 1: rank configs by their mean over K folds of the training part
    storage: str = "./runs"
    name: str = ""
    shared_storage: bool = False  # a local --storage path that every node mounts (NFS)
    resume: bool = False
    address: str | None = None
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_trial: int | None = None  # None: see tuner.cluster.default_cpus_per_trial
    max_failures: int = 2
    checkpoint_every: int = 10  # epochs between full training states (resume points)
    reuse_actors: bool = True  # start a trial in a finished trial's Ray worker
    compiled: bool = False  # torch.compile each trial's model (an option, not a default)
    choose_threshold: bool = False  # --threshold auto: each trial's, on its validation part
    # The final round: the reference and the `final_top` best configs retrained with
    # `final_seeds` fresh seeds each, the winner picked on their mean validation objective.
    final_seeds: int | None = None  # None: 0 for CPU trials, GPU_FINAL_SEEDS for GPU ones
    final_top: int = 3
    local_gpus: int | None = None  # logical GPUs to declare when starting Ray locally
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        # Trials run in other folders (and on other nodes): a weights file's path absolute.
        object.__setattr__(self, "base", self.base.with_absolute_weights())
        object.__setattr__(self, "conflicts", ConflictPolicy(self.conflicts))  # from JSON
        if not self.name:
            kind = "reference" if self.reference_only else "sweep"
            object.__setattr__(self, "name", f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
        if self.address and self.storage_is_local and not self.shared_storage:
            raise UserError(
                f"--storage {self.storage}: a Ray cluster (--address) needs storage every "
                "node can reach; pass a URI such as s3://bucket/runs, or an NFS path that "
                "every node mounts together with --shared-storage"
            )
        if self.address and self.address.startswith("ray://"):
            raise UserError(
                f"--address {self.address}: Ray Client is not supported (Tune would run the "
                "sweep on the head node, away from this driver's study); run the command on "
                "a node of the cluster with --address auto, or submit it with `ray job submit`"
            )
        if not self.storage_is_local and "?" in self.storage:
            raise UserError(
                f"--storage {self.storage}: options after ? are not supported; give the "
                "endpoint and credentials in AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ..."
            )
        if self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise UserError(
                f"--name {self.name}: one folder name, without / or \\; the experiment goes "
                "into --storage"
            )
        if self.metric not in keys.OBJECTIVES:
            raise UserError(
                f"--metric {self.metric}: not an objective; configs are ranked on the "
                f"validation part only, by one of: {', '.join(keys.OBJECTIVES)}"
            )
        if self.folds < 1 or (self.folds > 1 and self.reference_only):
            raise UserError(
                "--folds must be 1 or more, and 1 with --reference (the reference protocol "
                "has no validation part)"
            )
        if self.choose_threshold and self.reference_only:
            raise UserError(
                "--threshold auto: chosen on the validation part, which a --reference run "
                "has not (it would be chosen on the test part); give a number, or leave it out"
            )
        if self.trials < 1 or (self.cpus_per_trial or 1) < 1 or self.checkpoint_every < 1:
            raise UserError("--trials, --cpus-per-trial and --checkpoint-every must be at least 1")
        if self.grace_period is not None and not 1 <= self.grace_period <= self.base.epochs:
            raise UserError(
                f"--grace-period {self.grace_period}: must lie between 1 and the budget "
                f"(--epochs {self.base.epochs})"
            )
        if self.final_seeds is not None and (self.final_seeds < 0 or self.final_seeds == 1):
            raise UserError(
                f"--final-seeds {self.final_seeds}: 0 (no final round) or at least 2 (an "
                "interval over seeds needs two)"
            )
        if self.final_top < 1:
            raise UserError("--final-top must be at least 1")
        if self.reference_only and self.final_seeds:
            raise UserError(
                "--final-seeds: a final round retrains a sweep's best configs; a --reference "
                "run has one config (leave it out)"
            )
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise UserError("--gpus-per-trial must be 0 or more")

    @property
    def mode(self) -> str:
        """min or max: the objective's own direction."""
        return keys.OBJECTIVES[self.metric]

    @property
    def stops_trials_early(self) -> bool:
        """Whether its scheduler may stop a trial before its budget (ASHA in a sweep). Under
        FIFO, and in a --reference run's one trial, every trial runs to its end: one that
        ended short without an error was cut off."""
        return not self.reference_only and self.scheduler is Scheduler.ASHA

    @property
    def storage_is_local(self) -> bool:
        return not storage.is_remote(self.storage)

    @property
    def storage_path(self) -> str:
        """Absolute for a local folder (Tune requires it), unchanged for a URI."""
        return str(Path(self.storage).resolve()) if self.storage_is_local else self.storage

    @property
    def experiment_dir(self) -> str:
        return storage.join(self.storage_path, self.name)

    @property
    def study_location(self) -> str:
        """The Optuna study in the experiment (on remote storage: the uploaded copy)."""
        return study_location(self.experiment_dir, self.name)

    @property
    def study_path(self) -> Path:
        """The Optuna study the driver writes: see driver_study_path."""
        return driver_study_path(self.experiment_dir, self.name)


def study_location(experiment_dir: str, name: str) -> str:
    return storage.join(experiment_dir, study_file_name(name))


@dataclass(frozen=True)
class ConfirmSettings:
    """`confirm`: the reference and the `top` best configs retrained with `seeds` fresh
    training seeds each, on `split_seeds` splits (the sweep's first)."""

    seeds: int = 3
    split_seeds: int = 1
    top: int = 1

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.split_seeds < 1 or self.seeds * self.split_seeds < 2:
            raise UserError(
                "confirm: --seeds × --split-seeds must be at least 2 (an interval needs two "
                "runs of a config), each at least 1"
            )
        if self.top < 1:
            raise UserError("confirm: --top must be at least 1")


def driver_study_path(experiment_dir: str, name: str) -> Path:
    """The SQLite study the driver writes: in the experiment when its storage is local;
    else a local file (SQLite needs one) that the searcher copies into the experiment with
    every snapshot of Tune's own state (tuner.searcher)."""
    if not storage.is_remote(experiment_dir):
        return Path(study_location(experiment_dir, name))
    return storage.local_copy_dir(experiment_dir, "studies") / study_file_name(name)
