"""Builds and runs the Ray Tune experiment. The only place that calls `ray.init` or
creates a `Tuner`."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import json
import logging
import os
import secrets
import shlex
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import TrialScheduler

from results import storage
from results.config import TrainConfig
from results.errors import UserError
from results.experiment import INTERRUPTED, open_study, optuna_states, trial_state
from results.layout import (
    DATA_FILE,
    SETTINGS_FILE,
    STATE_FOLDER,
)
from results.records import DataProvenance, damaged_settings, load_settings, save_settings
from results.settings import RunSettings
from search_spaces import SPACES, get_space
from trainable.dataset import discover
from trainable.model import EncoderState, pretrained_encoders
from trainable.preprocess import SizedData, dataset_fingerprint, load_sized
from trainable.splits import folds_problem
from trainable.synth import SYNTHETIC_MARKER
from trainable.trial_setup import TrialSetup
from trainable.tune_adapter import train_busi
from tuner import interrupts, origin
from tuner.lock import lock_experiment
from tuner.packing import plan as plan_packing
from tuner.progress import (
    TrialHParams,
    TrialLines,
    TrialNamer,
    TrialOutcome,
    quiet_ray,
    write_sweep_hparams,
)
from tuner.scheduling import SchedulerState, build_scheduler
from tuner.searcher import BudgetAwareOptunaSearch, StudyStorage, restoring, tpe_sampler

log = logging.getLogger(__name__)

NO_AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
TUNE_STATE_FILE = "tuner.pkl"  # Tune's own files, needed to resume
TUNE_RUN_STATE = "experiment_state-*.json"
CONNECT_TIMEOUT_S = 15
MAX_DEFAULT_CPUS = 8  # more DataLoader workers than this rarely help one GPU
# --final-seeds when trials run on GPUs. On CPUs the final round is off: there it would
# cost more than a CPU-sized sweep itself (confirm does it on demand).
GPU_FINAL_SEEDS = 2
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"


def resolve_settings(settings: RunSettings) -> RunSettings:
    """Refuse to overwrite or to resume nothing, on local and remote storage alike; on
    resume, the saved settings win. Writes nothing."""
    location = settings.experiment_dir
    settings_file = storage.join(location, SETTINGS_FILE)
    if settings.resume:
        if not storage.is_file(settings_file):
            raise UserError(
                f"{location}: no experiment to resume; check --storage and --name "
                "(or start it without --resume)"
            )
        saved = load_settings(settings_file)
        if saved.space not in SPACES:
            valid = ", ".join(SPACES)
            reason = f"unknown search space {saved.space!r}; valid: {valid}"
            raise damaged_settings(settings_file, reason)
        data = saved.data
        if settings.data is not None and settings.data.resolve() != saved.data:
            data = same_data_elsewhere(settings.data, location)
        # The experiment is where it was found: a moved --storage wins over the saved one.
        return dataclasses.replace(
            saved, data=data, storage=settings.storage, resume=True, address=settings.address
        )
    if storage.is_file(settings_file):
        raise UserError(
            f"{location}: an experiment of that name exists; continue it with --resume "
            "or choose another --name"
        )
    if storage.exists(location):
        raise UserError(f"{location}: exists and is not an experiment; choose another --name")
    return settings


def same_data_elsewhere(given: Path, location: str) -> Path:
    """`--data` on resume: the run's data at another path (another machine's mount),
    accepted when its content hash is the one the run recorded."""
    record = storage.join(location, DATA_FILE)
    try:
        recorded = DataProvenance.from_text(storage.read_bytes(record) or b"", record).content_hash
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise UserError(
            f"{record}: missing or damaged, so --data {given} cannot be checked against the "
            "run's data; leave --data out to use the path the run was started with"
        ) from None
    found = data_provenance(given).content_hash if given.is_dir() else "no folder"
    if found != recorded:
        raise UserError(
            f"--data {given}: not the data {location} ran on (content {found}, recorded "
            f"{recorded}); pass that data, or leave --data out"
        )
    return given.resolve()


def data_provenance(root: Path, data: SizedData | None = None) -> DataProvenance:
    """Where the data came from: its folder, its content hash (every PNG's bytes, as the
    cache keys it), its size, whether `data synth` wrote it, and what loading it said."""
    samples = discover(Path(root).resolve())
    return DataProvenance(
        path=str(Path(root).resolve()),
        content_hash=dataset_fingerprint(samples, Path(root).resolve()),
        images=len(samples),
        synthetic=(Path(root) / SYNTHETIC_MARKER).is_file(),
        warnings=tuple(data.evaluation.warnings) if data else (),
        excluded=tuple(data.evaluation.excluded) if data else (),  # --conflicts exclude
    )


def create_experiment(settings: RunSettings, data: SizedData) -> None:
    """The experiment's folder with its settings and data provenance. A failure (a full
    disk) leaves nothing behind, so the name stays free."""
    location = settings.experiment_dir
    if settings.storage_is_local:
        try:
            Path(location).mkdir(parents=True)
        except FileExistsError:  # another run took the name since resolve_settings
            raise UserError(
                f"{location}: an experiment of that name exists; continue it with --resume "
                "or choose another --name"
            ) from None
        except OSError as error:
            raise UserError(
                f"{location}: cannot be made ({error.strerror}); choose another --storage"
            ) from None
    else:
        # A study left on this driver by an earlier experiment of that URI is not this one's.
        settings.study_path.unlink(missing_ok=True)
    try:
        save_settings(settings, storage.join(location, SETTINGS_FILE))
        provenance = data_provenance(settings.data, data)
        storage.write_bytes(storage.join(location, DATA_FILE), provenance.to_text().encode())
        origin.write_origin(location)
        if not settings.reference_only:
            write_sweep_hparams(location, get_space(settings.space), settings.base)
    except (OSError, UserError) as error:  # UserError: remote storage's, one line already
        remove_experiment(settings)
        if isinstance(error, UserError):
            raise
        raise UserError(
            f"{location}: could not be written ({error.strerror}); nothing was kept"
        ) from None


def remove_experiment(settings: RunSettings) -> None:
    """Delete a new experiment that never ran a trial, so that its name is free again."""
    location = settings.experiment_dir
    if settings.storage_is_local:
        shutil.rmtree(location, ignore_errors=True)
    else:
        with contextlib.suppress(UserError, OSError):
            storage.delete_dir(location)
        settings.study_path.unlink(missing_ok=True)


def trial_started(location: str) -> bool:
    """Whether any trial of the experiment has started (its folder holds a file)."""
    with contextlib.suppress(UserError, OSError):
        return any(name.startswith("trial_") for name in storage.list_files(location))
    return True  # storage unreadable: keep what is there


@contextlib.contextmanager
def freed_if_no_trial_starts(settings: RunSettings) -> Iterator[None]:
    """A new experiment whose start fails, for whatever reason, before its first trial
    (Ray, Tune, Ctrl-C) is removed: its name stays free for the same command again."""
    try:
        yield
    except BaseException:
        if not settings.resume and not trial_started(settings.experiment_dir):
            remove_experiment(settings)
        raise


def check_resumable(settings: RunSettings) -> None:
    """Refuse, before Ray starts, a run whose saved state Tune could not read (it would
    log the error and silently start over) or whose study is damaged. With remote storage
    the study's copy that goes with Tune's state becomes the driver's study."""
    location = settings.experiment_dir
    tuner_state = storage.join(location, TUNE_STATE_FILE)
    states = sorted(
        name
        for name in storage.list_files(location, recursive=False)
        if fnmatch.fnmatch(name, TUNE_RUN_STATE)
    )
    damaged = None
    if not storage.size(tuner_state):
        damaged = tuner_state
    elif not states:
        damaged = storage.join(location, TUNE_RUN_STATE)
    else:
        try:
            json.loads(storage.read_bytes(storage.join(location, states[-1])) or b"")
        except (json.JSONDecodeError, UnicodeDecodeError):
            damaged = storage.join(location, states[-1])
    if damaged is not None:
        raise UserError(
            f"{damaged}: Tune's run state is missing or damaged (a full disk, or a copy cut "
            "short), so the run cannot continue; `report` still reads its trials: start a "
            "new experiment with another --name"
        )
    if settings.reference_only:
        return
    if not settings.storage_is_local:
        snapshot = settings.study_location
        if not storage.is_file(snapshot):
            raise UserError(
                f"{snapshot}: the sweep's study is missing, so the run cannot continue; "
                "`report` still reads its trials: start a new experiment with another --name"
            )
        storage.download(snapshot, settings.study_path)
    open_study(settings.study_path, settings.name)  # a damaged study: one line


def load_data(settings: RunSettings) -> SizedData:
    """Preprocessed once per experiment, at every size the space can ask for; evaluated at
    the base config's size."""
    sizes = (settings.base.image_size,)
    if not settings.reference_only:
        sizes = get_space(settings.space).image_sizes(settings.base)
    return load_sized(
        settings.data, sizes, settings.base.image_size, settings.cache_dir, True, settings.conflicts
    )


def init_ray(settings: RunSettings) -> None:
    if ray.is_initialized():
        return
    if settings.address:
        check_reachable(settings.address)
        try:
            ray.init(address=settings.address, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise UserError(f"--address {settings.address}: {error}") from None
    else:
        protect_local_ray()
        # address="local": a new Ray, never one another session left running here.
        ray.init(
            address="local",
            num_gpus=settings.local_gpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    interrupts.stop_on_sigterm()  # ray.init installed its own


def protect_local_ray() -> None:
    """A local Ray's servers listen on every interface (Ray 2.60 has no option to bind
    them to localhost), and whoever reaches them can run code: require a token only this
    process and its workers know. A token mode the user set up is kept."""
    if os.environ.get(AUTH_MODE_ENV):
        return
    from ray._raylet import Config

    os.environ[AUTH_MODE_ENV] = "token"
    os.environ[AUTH_TOKEN_ENV] = secrets.token_hex(32)
    Config.initialize("")  # Ray read its configuration at import: read it again


def check_reachable(address: str) -> None:
    """Fail within seconds when nothing listens at host:port (Ray itself retries for
    minutes). `auto` finds a cluster started on this machine, or fails at once."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise UserError(
            f"--address {address}: no Ray cluster answers there ({error}); check the head "
            "node's address and port (`ray status` on it), or leave --address out to run here"
        ) from None


def default_cpus_per_trial(nodes: list[dict[str, float]], gpus: float) -> int:
    """The CPUs a node can give each of its GPU trials (its CPUs over the trials its GPUs
    hold, on the tightest GPU node), at most MAX_DEFAULT_CPUS; 1 for CPU trials. A GPU
    trial's augmentation needs workers: with the heaviest, 2 keep up with an H200
    (benchmarks/README.md, section 6)."""
    if gpus <= 0:
        return 1
    shares = [int(n.get("CPU", 0) * gpus // n["GPU"]) for n in nodes if n.get("GPU", 0) >= gpus]
    return max(1, min(min(shares, default=1), MAX_DEFAULT_CPUS))


def resolve_gpus(settings: RunSettings) -> RunSettings:
    """--gpus-per-trial as given, or planned for this cluster (tuner.packing; saved with
    the run, and said in one line): 0 on a cluster without GPUs."""
    if settings.gpus_per_trial is not None:
        return settings
    packing = plan_packing(settings)
    if packing is None:
        return dataclasses.replace(settings, gpus_per_trial=0.0)
    print(packing.line())
    return dataclasses.replace(settings, gpus_per_trial=packing.gpus_per_trial)


def resolve_cpus(settings: RunSettings) -> RunSettings:
    """--cpus-per-trial as given, or its default for this cluster (saved with the run)."""
    if settings.cpus_per_trial is not None:
        return settings
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    cpus = default_cpus_per_trial(nodes, gpus_per_trial(settings))
    return dataclasses.replace(settings, cpus_per_trial=cpus)


def resolve_final_seeds(settings: RunSettings) -> RunSettings:
    """--final-seeds as given, or its default for where the trials run (saved with the
    run, so a resumed sweep ends with the same final round)."""
    if settings.final_seeds is not None or settings.reference_only:
        return settings
    seeds = GPU_FINAL_SEEDS if gpus_per_trial(settings) > 0 else 0
    return dataclasses.replace(settings, final_seeds=seeds)


def check_resources(settings: RunSettings) -> None:
    """A trial that asks for more than any node has would wait forever: refuse it."""
    cpus, gpus = settings.cpus_per_trial, gpus_per_trial(settings)
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    raise UserError(
        f"--cpus-per-trial {cpus} --gpus-per-trial {gpus:g}: no node has that much (the "
        f"largest has {most_cpus:g} CPUs and {most_gpus:g} GPUs); lower them"
        + ("" if settings.address else ", or declare GPUs with --local-gpus")
    )


def gpus_per_trial(settings: RunSettings) -> float:
    """As resolve_gpus left it (None before it ran: no GPU)."""
    return settings.gpus_per_trial or 0.0


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


def ship(pretrained: dict[tuple[str, str], EncoderState]) -> dict[tuple[str, str], ray.ObjectRef]:
    """Each (encoder, weights) an object of its own in Ray's object store, which only the
    trials training from it fetch: a worker node needs no hub cache or weights file."""
    return {key: ray.put(state) for key, state in pretrained.items()}


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
    resources = {"cpu": settings.cpus_per_trial, "gpu": gpus_per_trial(settings)}
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
    settings = resolve_settings(settings)
    if not settings.reference_only:
        try:
            get_space(settings.space)  # an unknown name fails before anything starts
        except KeyError as error:
            raise UserError(f"run: {error.args[0]}") from None
    lock = None  # held from here until the run and its pruning are over
    try:
        if settings.resume:
            if not origin.created_here(settings.experiment_dir):
                print(origin.foreign_warning(settings.experiment_dir), file=sys.stderr)
            if settings.storage_is_local:
                lock = lock_experiment(Path(settings.experiment_dir))
            check_resumable(settings)
        pretrained = resolve_pretrained(settings)
        data = load_data(settings)  # bad data fails here, before anything is written
        if settings.folds > 1 and (
            problem := folds_problem(data.evaluation, settings.split, settings.seed, settings.folds)
        ):
            raise UserError(problem)
        for warning in data.evaluation.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        init_ray(settings)
        settings = resolve_final_seeds(resolve_cpus(resolve_gpus(settings)))
        check_resources(settings)
        weights = ship(pretrained)
        del pretrained  # up to a GB of arrays: the object store holds them now
        if not settings.resume:
            create_experiment(settings, data)
        with freed_if_no_trial_starts(settings):
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
        f"with: {resume_command(settings)}"
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


def trial_states(settings: RunSettings, results: tune.ResultGrid) -> list[str]:
    """Each trial's state as the report names it (results.experiment.trial_state). Tune
    marks a trial cut off by Ctrl-C as terminated, like one the scheduler stopped; the
    study tells them apart (it still holds the interrupted one RUNNING), and a --reference
    run has no scheduler to stop a trial early."""
    study = None if settings.reference_only else open_study(settings.study_path, settings.name)
    in_study = optuna_states(study)
    states = []
    for result in results:
        tune_id = Path(result.path).name.split("_", 2)[-1]  # trial_<number>_<Tune's id>
        ended = not settings.reference_only and in_study.get(tune_id) != "RUNNING"
        epochs = int((result.metrics or {}).get("training_iteration", 0))
        states.append(trial_state(result.error is not None, epochs, settings.base.epochs, ended))
    return states


def all_ended(settings: RunSettings, results: tune.ResultGrid) -> bool:
    """Every planned trial ran and ended (finished, stopped early or errored): not an
    interrupted run."""
    planned = 1 if settings.reference_only else settings.trials
    states = trial_states(settings, results)
    return len(results) >= planned and not any(s.startswith(INTERRUPTED) for s in states)


def resume_command(settings: RunSettings) -> str:
    """The command that continues this experiment, shell-quoted, with absolute paths: it
    works from any folder."""
    words = ["python", "-m", "tuner", "run", "--resume", "--name", settings.name]
    where = ["--storage", settings.storage_path, "--data", str(Path(settings.data).resolve())]
    return shlex.join([*words, *where])


def prune_checkpoints(settings: RunSettings, results: tune.ResultGrid) -> int:
    """Once every planned trial has ended, the training states kept for resuming are dead
    weight (each one is weights + Adam state: 2.4 GB for the reference model): delete those
    of the trials that ended normally (Tune's checkpoint_* pointers and the state/ they
    point to), keeping model.pt. Errored trials keep theirs, and an interrupted experiment
    keeps everything. Returns the folders deleted."""
    if not all_ended(settings, results):
        return 0
    deleted = 0
    for result in results:
        if result.error is None:
            selector = pyarrow.fs.FileSelector(result.path, allow_not_found=True)
            for info in result.filesystem.get_file_info(selector):
                if info.type == pyarrow.fs.FileType.Directory and (
                    info.base_name == STATE_FOLDER or info.base_name.startswith("checkpoint_")
                ):
                    result.filesystem.delete_dir(info.path)
                    deleted += 1
    return deleted
