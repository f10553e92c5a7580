"""Builds and runs the Ray Tune experiment. The only place that calls `ray.init` or
creates a `Tuner`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from search_spaces import get_space
from trainable.config import TrainConfig
from trainable.dataset import discover
from trainable.errors import UserError
from trainable.model import check_weights
from trainable.preprocess import SizedData, dataset_fingerprint, load_sized
from trainable.splits import SplitPolicy
from trainable.synth import SYNTHETIC_MARKER
from trainable.tune_adapter import TrialSetup, train_busi
from tuner.progress import TrialHParams, TrialLines, TrialNamer, quiet_ray
from tuner.searcher import BudgetAwareOptunaSearch, sqlite_storage, tpe_sampler
from tuner.settings import RunSettings, Scheduler

log = logging.getLogger(__name__)

SETTINGS_FILE = "busi_tune_settings.json"
DATA_FILE = "data.json"  # the data's provenance
NO_AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def save_settings(settings: RunSettings, path: Path) -> None:
    """Paths saved absolute, so resume, report and evaluate work from any folder."""
    flat = dataclasses.asdict(settings)
    flat["base"] = settings.base.to_flat()
    flat["data"] = str(settings.data.resolve())
    flat["cache_dir"] = str(settings.cache_dir.resolve()) if settings.cache_dir else None
    path.write_text(json.dumps(flat, indent=2, default=str) + "\n")


def load_settings(path: Path) -> RunSettings:
    flat = json.loads(path.read_text())
    # Experiments from before the objective's direction followed its metric saved a mode.
    flat.pop("mode", None)
    flat["base"] = TrainConfig.from_flat(flat["base"])
    flat["data"] = Path(flat["data"])
    flat["cache_dir"] = Path(flat["cache_dir"]) if flat["cache_dir"] else None
    flat["split"] = SplitPolicy(flat["split"])
    flat["scheduler"] = Scheduler(flat["scheduler"])
    return RunSettings(**flat)


def resolve_settings(settings: RunSettings) -> RunSettings:
    """Refuse to overwrite or to resume nothing; on resume, the saved settings win.
    Writes nothing."""
    if not settings.storage_is_local:
        return settings  # remote storage: Tune itself refuses a clash or a missing run
    directory = Path(settings.experiment_dir)
    if settings.resume:
        if not (directory / SETTINGS_FILE).is_file():
            raise UserError(
                f"{directory}: no experiment to resume; check --storage and --name "
                "(or start it without --resume)"
            )
        saved = load_settings(directory / SETTINGS_FILE)
        # The experiment is where it was found: a moved --storage wins over the saved one.
        return dataclasses.replace(
            saved, storage=settings.storage, resume=True, address=settings.address
        )
    if (directory / SETTINGS_FILE).is_file():
        raise UserError(
            f"{directory}: an experiment of that name exists; continue it with --resume "
            "or choose another --name"
        )
    if directory.exists():
        raise UserError(f"{directory}: exists and is not an experiment; choose another --name")
    return settings


def data_provenance(root: Path) -> dict:
    """Where the data came from: its folder, its content hash (every PNG's bytes, as the
    cache keys it), its size, and whether `data synth` wrote it."""
    samples = discover(Path(root).resolve())
    return {
        "path": str(Path(root).resolve()),
        "content_hash": dataset_fingerprint(samples, Path(root).resolve()),
        "images": len(samples),
        "synthetic": (Path(root) / SYNTHETIC_MARKER).is_file(),
    }


def create_experiment(settings: RunSettings) -> None:
    if settings.storage_is_local:
        directory = Path(settings.experiment_dir)
        directory.mkdir(parents=True)
        save_settings(settings, directory / SETTINGS_FILE)
        provenance = data_provenance(settings.data)
        (directory / DATA_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def load_data(settings: RunSettings) -> SizedData:
    """Preprocessed once per experiment, at every size the space can ask for; evaluated at
    the base config's size."""
    sizes = (settings.base.image_size,)
    if not settings.reference_only:
        sizes = get_space(settings.space).image_sizes(settings.base)
    return load_sized(settings.data, sizes, settings.base.image_size, settings.cache_dir)


def init_ray(settings: RunSettings) -> None:
    if ray.is_initialized():
        return
    if settings.address:
        ray.init(address=settings.address, logging_level=logging.WARNING)
    else:
        # address="local": a new Ray, never one another session left running here.
        ray.init(
            address="local",
            num_gpus=settings.local_gpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )


def gpus_per_trial(settings: RunSettings) -> float:
    if settings.gpus_per_trial is not None:
        return settings.gpus_per_trial
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_trainable(settings: RunSettings, data: SizedData):
    setup = TrialSetup(
        base=settings.base,
        split_policy=settings.split,
        split_seed=settings.seed,
        select_on_test=settings.reference_only,
        folds=settings.folds,
        objective=settings.metric,
        cpus=settings.cpus_per_trial,
        # One CPU trains; the others run DataLoader workers (augmentation).
        num_workers=settings.cpus_per_trial - 1,
    )
    resources = {"cpu": settings.cpus_per_trial, "gpu": gpus_per_trial(settings)}
    # with_parameters puts the arrays in Ray's object store once for every trial.
    return tune.with_resources(tune.with_parameters(train_busi, data=data, setup=setup), resources)


def build_tune_config(settings: RunSettings) -> tune.TuneConfig:
    if settings.reference_only:
        return tune.TuneConfig(num_samples=1, trial_dirname_creator=TrialNamer(sweep=False))
    space = get_space(settings.space)
    searcher = BudgetAwareOptunaSearch(
        space=space.define(settings.base),
        metric=settings.metric,
        mode=settings.mode,
        points_to_evaluate=[space.reference_point(settings.base)],
        sampler=tpe_sampler(settings.seed),
        study_name=settings.name,
        storage=sqlite_storage(str(settings.study_path)),
        budget_epochs=settings.base.epochs,
    )
    epochs = settings.base.epochs
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=max(1, epochs // 5),
            reduction_factor=3,
        )
        if settings.scheduler is Scheduler.ASHA
        else FIFOScheduler()
    )
    return tune.TuneConfig(
        metric=settings.metric,
        mode=settings.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=settings.trials,
        max_concurrent_trials=settings.max_concurrent,
        trial_dirname_creator=TrialNamer(sweep=True),
    )


def build_run_config(
    settings: RunSettings, write: Callable[[str], None] | None = None
) -> tune.RunConfig:
    """With `write`, quiet: Ray's live table and notices give way to one line per ended
    trial; without, Ray's own output (`-v`)."""
    # One TensorBoard run per trial, the trial's own: Ray's logger would add a second.
    # Tune adds its default loggers unless told not to; the two the reporter reads are
    # added here instead.
    os.environ[NO_AUTO_LOGGERS_ENV] = "1"
    callbacks = [CSVLoggerCallback(), JsonLoggerCallback()]
    if settings.storage_is_local:
        callbacks.append(TrialHParams(settings.base.epochs))
    if write is not None:
        namer = TrialNamer(sweep=not settings.reference_only)
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
    on resume) and Tune's results. `write` takes a line per ended trial (quiet output)."""
    os.environ[NO_AUTO_LOGGERS_ENV] = "1"  # also on resume: see build_run_config
    if write is not None:
        quiet_ray()
    settings = resolve_settings(settings)
    if not settings.reference_only:
        try:
            get_space(settings.space)  # an unknown name fails before anything starts
        except KeyError as error:
            raise UserError(f"run: {error.args[0]}") from None
    check_weights(settings.base)
    data = load_data(settings)  # bad data fails here, before anything is written
    if not settings.resume:
        create_experiment(settings)
    init_ray(settings)
    trainable = build_trainable(settings, data)
    if settings.resume:
        tuner = tune.Tuner.restore(settings.experiment_dir, trainable, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=build_tune_config(settings),
            run_config=build_run_config(settings, write),
        )
    results = tuner.fit()
    prune_checkpoints(settings, results)
    return settings, results


def all_ended(settings: RunSettings, results: tune.ResultGrid) -> bool:
    """Every planned trial ran and ended (finished, stopped early or errored): not an
    interrupted run."""
    planned = 1 if settings.reference_only else settings.trials
    ended = results.num_terminated + results.num_errors
    return len(results) >= planned and ended == len(results)


def resume_command(settings: RunSettings) -> str:
    """The command that continues this experiment, shell-quoted."""
    words = ["python", "-m", "tuner", "run", "--resume", "--name", settings.name]
    return shlex.join([*words, "--storage", settings.storage_path])


def prune_checkpoints(settings: RunSettings, results: tune.ResultGrid) -> int:
    """Once every planned trial has ended, the training states kept for resuming are dead
    weight (each one is weights + Adam state: 2.4 GB for the reference model): delete those
    of the trials that ended normally, keeping model.pt. Errored trials keep theirs, and
    an interrupted experiment keeps everything. Returns the folders deleted."""
    if not settings.storage_is_local or not all_ended(settings, results):
        return 0
    deleted = 0
    for result in results:
        if result.error is None:
            for folder in Path(result.path).glob("checkpoint_*"):
                shutil.rmtree(folder)
                deleted += 1
    return deleted
