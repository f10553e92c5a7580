"""The sweep as Ray Tune runs it: the data and pretrained weights it needs, the trainable,
Tune's configs (the Optuna searcher, the scheduler, the callbacks), the run itself (new or
restored), and what follows it (a full disk named in one line, whether every trial
ended, the training states pruned). The only place that creates a `Tuner` for a sweep;
the experiment's folder is tuner.experiment_folder's, the cluster tuner.cluster's."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import TrialScheduler

from results.config import TrainConfig
from results.errors import UserError
from results.experiment import Experiment, State, load_experiment
from results.layout import STATE_FOLDER, TUNE_CHECKPOINT_PREFIX
from results.settings import RunSettings
from search_spaces import get_space
from trainable.model import EncoderState, pretrained_encoders
from trainable.preprocess import SizedData, load_sized
from trainable.splits import folds_problem
from trainable.trial_setup import TrialSetup
from trainable.tune_adapter import train_busi
from tuner import cluster, console, experiment_folder
from tuner.lock import lock_experiment
from tuner.progress import TrialHParams, TrialLines, TrialNamer, TrialOutcome, quiet_ray
from tuner.scheduling import SchedulerState, build_scheduler
from tuner.searcher import BudgetAwareOptunaSearch, StudyStorage, restoring, tpe_sampler

NO_AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def load_data(settings: RunSettings) -> SizedData:
    """Preprocessed once per experiment, at every size the space can ask for; evaluated at
    the base config's size."""
    sizes = (settings.base.image_size,)
    if not settings.reference_only:
        sizes = get_space(settings.space).image_sizes(settings.base)
    return load_sized(
        settings.data, sizes, settings.base.image_size, settings.cache_dir, True, settings.conflicts
    )


def resolve_pretrained(
    settings: RunSettings, configs: list[TrainConfig] | None = None
) -> dict[tuple[str, str], EncoderState]:
    """Every encoder's pretrained weights a trial can ask for (the space's, or those of
    `configs`), read once here, before Ray starts: hub cache or file, one clear line when
    they cannot be had."""
    if configs is not None:
        pairs = [(c.encoder, c.encoder_weights) for c in configs]
    elif settings.reference_only:
        pairs = [(settings.base.encoder, settings.base.encoder_weights)]
    else:
        pairs = list(get_space(settings.space).encoder_weights(settings.base).items())
    return pretrained_encoders(pairs)


def build_trainable(
    settings: RunSettings, data: SizedData, weights: dict[tuple[str, str], ray.ObjectRef]
):
    setup = TrialSetup(
        base=settings.base,
        split_policy=settings.split,
        split_seed=settings.seed,
        select_on_test=settings.reference_only,
        folds=settings.folds,
        objective=settings.metric,
        cpus=settings.cpus_per_trial,
        checkpoint_every=settings.checkpoint_every,
        compiled=settings.compiled,
        choose_threshold=settings.choose_threshold,
        # One CPU trains; the others run DataLoader workers (augmentation).
        num_workers=settings.cpus_per_trial - 1,
    )
    resources = {"cpu": settings.cpus_per_trial, "gpu": cluster.gpus_per_trial(settings)}
    # with_parameters puts the arrays in Ray's object store once for every trial: a worker
    # node needs no copy of the data.
    trainable = tune.with_parameters(train_busi, data=data, setup=setup, weights=weights)
    return tune.with_resources(trainable, resources)


def build_tune_config(
    settings: RunSettings, scheduler: TrialScheduler | None = None
) -> tune.TuneConfig:
    if settings.reference_only:
        namer = TrialNamer(sweep=False)
        return tune.TuneConfig(num_samples=1, trial_name_creator=namer, trial_dirname_creator=namer)
    space = get_space(settings.space)
    searcher = BudgetAwareOptunaSearch(
        space=space.define(settings.base),
        metric=settings.metric,
        mode=settings.mode,
        points_to_evaluate=[space.reference_point(settings.base)],
        sampler=tpe_sampler(settings.seed),
        study_name=settings.name,
        storage=StudyStorage(settings.experiment_dir, settings.name),
        budget_epochs=settings.base.epochs,
    )
    return tune.TuneConfig(
        metric=settings.metric,
        mode=settings.mode,
        search_alg=searcher,
        scheduler=scheduler or build_scheduler(settings),
        num_samples=settings.trials,
        max_concurrent_trials=settings.max_concurrent,
        reuse_actors=settings.reuse_actors,
        # One name everywhere: Tune's own (its tables, errors, ExperimentAnalysis) as well.
        trial_name_creator=TrialNamer(sweep=True),
        trial_dirname_creator=TrialNamer(sweep=True),
    )


def build_run_config(
    settings: RunSettings,
    write: Callable[[str], None] | None = None,
    scheduler: TrialScheduler | None = None,
    namer: TrialNamer | None = None,
) -> tune.RunConfig:
    """With `write`, quiet: Ray's live table and notices give way to one line per ended
    trial (named by `namer`, default the sweep's or a --reference run's); without, Ray's
    own output (`-v`). With the sweep's `scheduler`, its state goes with Tune's
    snapshots (SchedulerState)."""
    # One TensorBoard run per trial, the trial's own: Ray's logger would add a second.
    # Tune adds its default loggers unless told not to; the two the reporter reads are
    # added here instead.
    os.environ[NO_AUTO_LOGGERS_ENV] = "1"
    callbacks = [
        CSVLoggerCallback(),
        JsonLoggerCallback(),
        TrialHParams(settings.base.epochs),
        TrialOutcome(),
    ]
    if scheduler is not None:
        callbacks.append(SchedulerState(scheduler))
    if write is not None:
        namer = namer or TrialNamer(sweep=not settings.reference_only)
        trials = 1 if settings.reference_only else settings.trials
        callbacks.append(
            TrialLines(write, namer, settings.metric, settings.mode, trials, settings.base.epochs)
        )
    return tune.RunConfig(
        callbacks=callbacks,
        name=settings.name,
        storage_path=settings.storage_path,
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        # Checkpoints exist to resume: only the latest is kept. The selected weights are
        # each trial's model.pt, written when its selection improves.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        # Trial-written files (TensorBoard images, metrics.json) reach the storage path.
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=1 if write is None else 0,
    )


def run(
    settings: RunSettings, write: Callable[[str], None] | None = None
) -> tuple[RunSettings, tune.ResultGrid]:
    """Run (or resume) the experiment; returns the settings it ran with (the saved ones
    on resume) and Tune's results. `write` takes a line per ended trial (quiet output).
    Nothing is written before the data has loaded and Ray is up, so a failed start
    leaves no folder behind and the name stays free."""
    os.environ[NO_AUTO_LOGGERS_ENV] = "1"  # also on resume: see build_run_config
    if write is not None:
        quiet_ray()
    settings = experiment_folder.resolve_settings(settings)
    if not settings.reference_only:
        try:
            get_space(settings.space)  # an unknown name fails before anything starts
        except KeyError as error:
            raise UserError(f"run: {error.args[0]}") from None
    lock = None  # held from here until the run and its pruning are over
    try:
        if settings.resume:
            experiment_folder.warn_if_foreign(settings)
            if settings.storage_is_local:
                lock = lock_experiment(Path(settings.experiment_dir))
            experiment_folder.check_resumable(settings)
        pretrained = resolve_pretrained(settings)
        data = load_data(settings)  # bad data fails here, before anything is written
        if settings.folds > 1 and (
            problem := folds_problem(data.evaluation, settings.split, settings.seed, settings.folds)
        ):
            raise UserError(problem)
        for warning in data.evaluation.warnings:
            console.warn(f"warning: {warning}")
        cluster.init_ray(settings)
        settings = cluster.resolve_final_seeds(cluster.resolve_cpus(cluster.resolve_gpus(settings)))
        cluster.check_resources(settings)
        weights = cluster.ship(pretrained)
        del pretrained  # up to a GB of arrays: the object store holds them now
        if not settings.resume:
            experiment_folder.create_experiment(settings, data)
        with experiment_folder.freed_if_no_trial_starts(settings):
            if not settings.resume and settings.storage_is_local:
                lock = lock_experiment(Path(settings.experiment_dir))
            results = fit_tuner(settings, data, weights, write)
        if any(result.error is not None and disk_full(result.error) for result in results):
            raise disk_full_error(settings)
        prune_checkpoints(settings, results)
    finally:
        if lock is not None:
            lock.close()
    return settings, results


def fit_tuner(
    settings: RunSettings,
    data: SizedData,
    weights: dict[tuple[str, str], ray.ObjectRef],
    write: Callable[[str], None] | None,
):
    """Tune's run (new or restored); a full disk, wherever Tune or SQLite met it, is one
    line with the command that continues."""
    trainable = build_trainable(settings, data, weights)
    try:
        with restoring(settings.experiment_dir):  # the study where the experiment is now
            return _fit(settings, trainable, write)
    except Exception as error:
        if not disk_full(error):
            raise
        raise disk_full_error(settings) from None


def _fit(settings: RunSettings, trainable, write: Callable[[str], None] | None):
    if settings.resume:
        # Errored trials run again: a lost node or a full disk may be gone now, and a
        # deterministic failure ends at once on its failure.json.
        tuner = tune.Tuner.restore(settings.experiment_dir, trainable, resume_errored=True)
    else:
        scheduler = build_scheduler(settings)
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=build_tune_config(settings, scheduler),
            run_config=build_run_config(settings, write, scheduler),
        )
    return tuner.fit()


def disk_full_error(settings: RunSettings) -> UserError:
    return UserError(
        f"{settings.experiment_dir}: no space left on the device; free some, then continue "
        f"with: {experiment_folder.resume_command(settings)}"
    )


def disk_full(error: BaseException) -> bool:
    """Whether a full disk is behind the error, wherever it surfaced: in a trial (Tune
    wraps it), in the study (SQLite says "disk is full") or in Tune's own writes."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen) or "database or disk is full" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def all_ended(settings: RunSettings, experiment: Experiment) -> bool:
    """Every planned trial of the run (a sweep, a --reference run or a retraining run of
    tuner.retrain) ran and ended, finished, stopped early or errored, as the experiment's
    reader names their states: not an interrupted run."""
    planned = 1 if settings.reference_only else settings.trials
    trials = experiment.trials
    return len(trials) >= planned and not any(t.status is State.INTERRUPTED for t in trials)


def prune_checkpoints(settings: RunSettings, results: tune.ResultGrid) -> int:
    """Once every planned trial has ended, the training states kept for resuming are dead
    weight (each one is weights + Adam state: 2.4 GB for the reference model): delete those
    of the trials that ended normally (Tune's checkpoint_* pointers and the state/ they
    point to), keeping model.pt. Errored trials keep theirs, and an interrupted experiment
    keeps everything. Returns the folders deleted."""
    if not all_ended(settings, load_experiment(settings.experiment_dir)):
        return 0
    deleted = 0
    for result in results:
        if result.error is None:
            selector = pyarrow.fs.FileSelector(result.path, allow_not_found=True)
            for info in result.filesystem.get_file_info(selector):
                name = info.base_name
                if info.type == pyarrow.fs.FileType.Directory and (
                    name == STATE_FOLDER or name.startswith(TUNE_CHECKPOINT_PREFIX)
                ):
                    result.filesystem.delete_dir(info.path)
                    deleted += 1
    return deleted
