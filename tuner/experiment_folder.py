"""The experiment on storage (a local folder, NFS or s3://): its name refused when taken or
resumed when absent, its folder made with the settings, the data's provenance, the origin
stamp and the sweep's HParams, removed again when no trial starts, checked before a resume,
and opened for reading. No Ray; torch only for TensorBoard's HParams writer. A command
that reads an experiment a user names (report, confirm, evaluate, predict, export) opens it
here (`open_experiment`, which checks its search space); `run` and the retraining runs read
back what they have just run (its space checked before it started) with
results.experiment.load_experiment."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from optuna.distributions import CategoricalDistribution

from results import keys, storage
from results.config import TrainConfig
from results.errors import UserError
from results.experiment import Experiment, load_experiment, open_study
from results.layout import (
    DATA_FILE,
    SETTINGS_FILE,
    TUNE_RUN_STATE,
    TUNE_STATE_FILE,
    parse_trial_folder,
)
from results.records import DataProvenance, damaged_settings, load_settings, save_settings
from results.settings import RunSettings
from search_spaces import SPACES, SearchSpace, get_space
from trainable.dataset import discover
from trainable.preprocess import SizedData, dataset_fingerprint
from trainable.synth import SYNTHETIC_MARKER
from tuner import console, origin


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
            raise damaged_settings(settings_file, _unknown_space(saved.space))
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


def _unknown_space(space: str) -> str:
    return f"unknown search space {space!r}; valid: {', '.join(SPACES)}"


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


def write_sweep_hparams(experiment_dir: str, space: SearchSpace, base: TrainConfig) -> None:
    """The sweep's HParams experiment at the experiment's root: one column per parameter
    the space can sample (conditional ones too), the state, and the metrics each trial's
    TrialHParams writes (tuner.progress). Each trial writes only its own session."""
    # torch's TensorBoard writer: imported when an experiment is made, so that opening one
    # (`report`) needs no torch.
    from trainable.tensorboard import write_hparams_experiment

    domains = {}
    for name, distribution in space.parameters(base).items():
        if isinstance(distribution, CategoricalDistribution):
            domains[name] = list(distribution.choices)
        else:
            domains[name] = (float(distribution.low), float(distribution.high))
    metrics = [keys.SELECTED_LOSS, *keys.SELECTED_METRICS, keys.TEST_LOSS, *keys.TEST_METRICS]
    if not storage.is_remote(experiment_dir):
        write_hparams_experiment(Path(experiment_dir), domains, metrics)
        return
    with tempfile.TemporaryDirectory() as local:
        write_hparams_experiment(Path(local), domains, metrics)
        storage.upload_folder(Path(local), experiment_dir)


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
        return any(parse_trial_folder(name.split("/")[0]) for name in storage.list_files(location))
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


def warn_if_foreign(settings: RunSettings) -> None:
    """On resume: one warning, before anything runs, when the origin stamp says another
    machine created the experiment (resuming unpickles Ray's files from it)."""
    if not origin.created_here(settings.experiment_dir):
        console.warn(origin.foreign_warning(settings.experiment_dir))


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


def resume_command(settings: RunSettings) -> str:
    """The command that continues this experiment, shell-quoted, with absolute paths: it
    works from any folder."""
    words = ["python", "-m", "tuner", "run", "--resume", "--name", settings.name]
    where = ["--storage", settings.storage_path, "--data", str(Path(settings.data).resolve())]
    return shlex.join([*words, *where])


def open_experiment(location: str | Path) -> Experiment:
    """An experiment to read, whose search space this busi-tune knows."""
    experiment = load_experiment(location)
    if experiment.settings.space not in SPACES:
        settings_file = storage.join(experiment.location, SETTINGS_FILE)
        raise damaged_settings(settings_file, _unknown_space(experiment.settings.space))
    return experiment
