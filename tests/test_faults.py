"""Faults and bad input, each ending as correct behaviour, a one-line error that names
the file or flag (nothing written), or a warning for data that is legal but suspicious.

Here: hostile and suspicious files, a full disk, damaged state, a second process, a
cluster that cannot hold a trial or cannot be reached, an open local Ray. Faults that need
a whole sweep live beside it in test_sweep.py (Ctrl-C and SIGTERM with their resume, a
diverging trial, a lost node) and test_report.py (a report from damaged files, an
interrupted trial never the best); path and name checks in test_cli.py."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pyarrow.fs
import pytest
import ray
import torch
from PIL import Image
from ray import tune

from results import layout, records
from results.config import TrainConfig
from results.experiment import load_experiment
from results.records import StatePointer
from results.settings import RunSettings
from trainable.checkpointing import TrialStorage
from trainable.dataset import DataError, discover, load_sample, read_grey
from trainable.integrity import check_dataset, format_report
from trainable.preprocess import load_busi
from trainable.tune_adapter import load_checkpoint
from tuner import experiment_folder, origin, sweep
from tuner.cli import main
from tuner.lock import lock_experiment

SMALL = ["--encoder", "resnet18", "--encoder-weights", "none", "--image-size", "32"]


def _pair(folder, stem, image, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}{suffix}")
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(folder / f"{stem}_mask{suffix}")


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "busi"
    _pair(root / "benign", "benign (1)", np.full((12, 16), 90, dtype=np.uint8))
    return root


def test_upper_case_extensions_are_part_of_the_layout(tiny):
    _pair(tiny / "benign", "benign (2)", np.full((12, 16), 30, dtype=np.uint8), ".PNG")
    names = [s.name for s in discover(tiny)]
    assert names == ["benign (1)", "benign (2)"]
    image, mask = load_sample(discover(tiny)[1])
    assert image.max() == 30 and mask.sum() == 16


def test_a_16_bit_grey_image_is_scaled_not_clipped_to_white(tiny):
    levels = np.array([[0, 257 * 10, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(levels).save(tiny / "benign" / "benign (1).png")
    with Image.open(tiny / "benign" / "benign (1).png") as saved:
        assert saved.mode.startswith("I")  # really 16-bit on disk
    assert read_grey(tiny / "benign" / "benign (1).png")[0].tolist() == [0, 10, 128, 255]


@pytest.mark.parametrize("kind", ["folder", "pipe", "link loop"])
def test_a_non_file_named_like_an_image_is_one_line(tiny, kind, capsys):
    hostile = tiny / "benign" / "benign (2).png"
    if kind == "folder":
        hostile.mkdir()
    elif kind == "pipe":
        os.mkfifo(hostile)
    else:
        hostile.symlink_to(hostile)
    with pytest.raises(DataError, match="not a readable file"):
        discover(tiny)
    storage = tiny.parent / "runs"
    small = ["--encoder", "resnet18", "--encoder-weights", "none"]
    assert main(["run", "--data", str(tiny), "--storage", str(storage), *small]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(hostile) in error and not storage.exists()


def test_a_decompression_bomb_is_refused_by_name(tiny, monkeypatch):
    # The same check PIL makes at 178 M pixels, made here on a small file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with pytest.raises(DataError, match=r"benign \(1\)\.png: too large"):
        load_sample(discover(tiny)[0])


# --- masks: one rule that survives anti-aliasing and JPEG noise, with warnings -------


def _mask_file(root: Path, stem: str, values: np.ndarray) -> Path:
    path = root / stem.split(" ")[0] / f"{stem}_mask.png"
    Image.fromarray(values).save(path)
    return path


def test_anti_aliased_edges_and_jpeg_noise_do_not_change_the_lesion(tiny):
    core = np.zeros((12, 16), dtype=np.uint8)
    core[2:6, 2:6] = 255
    graded = core.copy()
    graded[1, 1:7] = graded[6, 1:7] = 100  # a soft edge, darker than mid-grey
    graded[2:6, 1] = graded[2:6, 6] = 200  # and a bright one, inside the rule
    graded[8:, :] = np.random.default_rng(0).integers(1, 4, size=(4, 16))  # JPEG noise
    _mask_file(tiny, "benign (1)", graded)
    _, mask = load_sample(discover(tiny)[0])
    assert mask.sum() == 16 + 8  # the 4x4 core and the bright edge; noise and dim edge out
    data = load_busi(tiny, 16, tiny.parent / "cache", progress=False)
    assert any("1 mask files are not two-valued" in w for w in data.warnings)


@pytest.mark.parametrize("value", [1, 100, 255])
def test_a_two_valued_mask_is_lesion_wherever_it_is_not_zero(tiny, value):
    labels = np.zeros((12, 16), dtype=np.uint8)
    labels[2:6, 2:6] = value  # 1: a label map; 100: a dark but two-valued mask
    _mask_file(tiny, "benign (1)", labels)
    assert load_sample(discover(tiny)[0])[1].sum() == 16


def test_an_empty_lesion_mask_and_missing_classes_are_warned_about(tiny, capsys):
    _mask_file(tiny, "benign (1)", np.zeros((12, 16), dtype=np.uint8))
    report = check_dataset(tiny)
    assert report.usable  # legal data: warned about, not refused
    text = format_report(report)
    assert "warning: 1 benign/malignant images have an empty mask (e.g. benign (1))" in text
    for label in ("malignant", "normal"):
        assert f"warning: no {label} images: results are not comparable" in text


# --- the run: nothing written before the data loaded and Ray is up -----------------


def _settings(data: Path, storage: Path, **changes) -> RunSettings:
    base = TrainConfig.reference().replace(
        encoder="resnet18", encoder_weights="none", image_size=32, epochs=1
    )
    return RunSettings(data=data, base=base, storage=str(storage), name="exp", trials=1, **changes)


@pytest.fixture
def local_ray():
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_trial_no_node_can_hold_is_refused_and_outsiders_cannot_use_local_ray(
    synth_root, tmp_path, local_ray
):
    storage = tmp_path / "runs"
    for changes, flag in (
        ({"cpus_per_trial": os.cpu_count() + 1}, "--cpus-per-trial"),
        ({"gpus_per_trial": 2.0}, "--gpus-per-trial 2"),
    ):
        with pytest.raises(sweep.UserError, match=f"{flag}.*no node has that much"):
            sweep.run(_settings(synth_root, storage, cache_dir=tmp_path / "cache", **changes))
        assert not storage.exists()  # the name is not burnt
    # The local Ray listens on every interface; without this run's token nobody gets in.
    address = ray.get_runtime_context().gcs_address
    read_keys = (
        "from ray._raylet import GcsClient; "
        f"print(GcsClient(address={address!r}).internal_kv_keys(b'', namespace=None, timeout=5))"
    )

    def connect(env: dict[str, str]) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", read_keys]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    outsider = connect({k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")})
    assert outsider.returncode != 0 and "Authentication token is missing" in outsider.stderr
    insider = connect(dict(os.environ))
    assert insider.returncode == 0 and "session_name" in insider.stdout


def test_an_unreachable_cluster_fails_fast_and_writes_nothing(synth_root, tmp_path, capsys):
    storage = tmp_path / "shared"
    started = time.monotonic()
    args = ["run", "--data", str(synth_root), "--storage", str(storage), "--shared-storage"]
    assert main([*args, "--address", "127.0.0.1:9", *SMALL]) == 2
    assert time.monotonic() - started < 60
    error = capsys.readouterr().err.splitlines()[-1]  # after the decoding progress bar
    assert error.startswith("error: --address 127.0.0.1:9: no Ray cluster answers there")
    assert not storage.exists()
    # Ray Client would run the sweep on the head node, away from the driver's study.
    assert main([*args, "--address", "ray://127.0.0.1:10001", *SMALL]) == 2
    assert "Ray Client is not supported" in capsys.readouterr().err
    assert not storage.exists()


def test_a_full_disk_while_creating_the_experiment_leaves_nothing(
    synth_root, tmp_path, monkeypatch
):
    settings = _settings(synth_root, tmp_path / "runs")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(experiment_folder, "save_settings", full)
    data = sweep.load_data(dataclasses.replace(settings, cache_dir=tmp_path / "cache"))
    with pytest.raises(sweep.UserError, match="No space left on device.*nothing was kept"):
        experiment_folder.create_experiment(settings, data)
    assert not Path(settings.experiment_dir).exists()


def test_two_runs_racing_for_one_new_name_get_one_line(synth_root, tmp_path):
    settings = _settings(synth_root, tmp_path / "runs", cache_dir=tmp_path / "cache")
    data = sweep.load_data(settings)
    experiment_folder.create_experiment(settings, data)
    with pytest.raises(sweep.UserError, match="an experiment of that name exists"):
        # the second, after both passed the check
        experiment_folder.create_experiment(settings, data)


def _stopped_experiment(synth_root: Path, storage: Path) -> Path:
    """An experiment folder as an interrupted run leaves it (settings, Tune's state)."""
    settings = _settings(synth_root, storage)
    experiment = Path(settings.experiment_dir)
    experiment.mkdir(parents=True)
    records.save_settings(settings, experiment / layout.SETTINGS_FILE)
    (experiment / layout.TUNE_STATE_FILE).write_bytes(b"pickled by Tune")
    (experiment / "experiment_state-2026-11-29_10-00-00.json").write_text("{}")
    origin.write_origin(str(experiment))
    return experiment


def _resume(storage: Path) -> list[str]:
    return ["run", "--resume", "--name", "exp", "--storage", str(storage)]


def test_a_second_process_on_one_experiment_is_refused(synth_root, tmp_path, capsys):
    experiment = _stopped_experiment(synth_root, tmp_path / "runs")
    held = lock_experiment(experiment)
    try:
        assert main(_resume(tmp_path / "runs")) == 2
    finally:
        held.close()
    error = capsys.readouterr().err
    assert f"{experiment}: in use by another run (pid {os.getpid()}" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize("made", ["elsewhere", "with a forged stamp", "with no stamp"])
def test_resuming_an_experiment_this_machine_did_not_create_warns_first(
    synth_root, tmp_path, capsys, monkeypatch, made
):
    """Resume unpickles Ray's files from the folder: one warning before anything runs
    (here the run then stops at the lock another process holds)."""
    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "other-machine"))
    experiment = _stopped_experiment(synth_root, tmp_path / "runs")
    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "this-machine"))
    stamp = experiment / layout.ORIGIN_FILE
    if made == "with a forged stamp":
        origin.write_origin(str(experiment))  # a valid stamp here, with another id
        record = json.loads(stamp.read_text())
        stamp.write_text(json.dumps({**record, "id": "0" * 32}))
    elif made == "with no stamp":
        stamp.unlink()
    held = lock_experiment(experiment)
    try:
        assert main(_resume(tmp_path / "runs")) == 2
    finally:
        held.close()
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {experiment} was not created here")
    assert "unpickles Ray's state files" in warning and "in use by another run" in error
    assert origin.created_here(str(experiment)) is False


@pytest.mark.parametrize("damage", ["state cut short", "no tuner.pkl", "settings empty"])
def test_resume_of_damaged_state_is_refused_never_started_over(
    synth_root, tmp_path, capsys, damage
):
    experiment = _stopped_experiment(synth_root, tmp_path / "runs")
    if damage == "state cut short":
        damaged = next(experiment.glob("experiment_state-*.json"))
        damaged.write_text('{"runner_data": {"_ses')
    elif damage == "no tuner.pkl":
        damaged = experiment / layout.TUNE_STATE_FILE
        damaged.write_bytes(b"")
    else:
        damaged = experiment / layout.SETTINGS_FILE
        damaged.write_text("")
    before = sorted(p.name for p in experiment.iterdir())
    assert main(_resume(tmp_path / "runs")) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {damaged}: ") and error.count("\n") == 1
    assert "start a new experiment" in error
    assert sorted(p.name for p in experiment.iterdir() if p.name != ".lock") == [
        n for n in before if n != ".lock"
    ]


def test_a_damaged_study_is_one_line_for_resume_and_report(synth_root, tmp_path, capsys):
    experiment = _stopped_experiment(synth_root, tmp_path / "runs")
    study = experiment / "exp.sqlite"
    study.write_bytes(b"SQLite format 3\x00" + b"\xff" * 300)
    assert main(_resume(tmp_path / "runs")) == 2
    assert main(["report", str(experiment)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert all(
        line.startswith(f"error: {study}: the Optuna study cannot be read") for line in lines
    )


# --- checkpoints: loaded as plain tensors; damaged ones restart the trial --------------


class _RunsCode:
    """A pickle that runs code when loaded with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _checkpoint(tmp_path: Path, state: bytes) -> tuple[tune.Checkpoint, TrialStorage]:
    """A Tune checkpoint pointing to a state file holding `state`, as a trial writes it."""
    storage = TrialStorage(pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial"))
    storage._write(storage.state_path(2), lambda stream: stream.write(state))
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    (folder / layout.POINTER_FILE).write_text(StatePointer(storage.state_name(2), 2).to_text())
    return tune.Checkpoint.from_directory(folder), storage


def _saved(tree) -> bytes:
    buffer = io.BytesIO()
    torch.save(tree, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["cut short", "crafted pickle", "wrong content", "pointer"])
def test_a_damaged_checkpoint_restarts_the_trial_with_a_warning(tmp_path, caplog, damage):
    marker = tmp_path / "code-ran"
    good = _saved({"folds": [{"epoch": 2, "weights": torch.ones(3)}]})
    state = {
        "cut short": good[:200],
        "crafted pickle": _saved({"folds": [_RunsCode(marker)]}),
        "wrong content": json.dumps({"not": "a state"}).encode(),
        "pointer": good,
    }[damage]
    checkpoint, storage = _checkpoint(tmp_path, state)
    if damage == "pointer":
        (Path(checkpoint.path) / layout.POINTER_FILE).write_text('{"sta')
    loaded, note = load_checkpoint(checkpoint, storage, torch.device("cpu"))
    assert loaded is None and "restarts from its first epoch" in note
    assert "unreadable" in caplog.text
    assert not marker.exists()  # nothing from the experiment folder ran


def test_a_good_checkpoint_loads(tmp_path):
    good = _saved({"folds": [{"epoch": 2, "weights": torch.ones(3)}]})
    checkpoint, storage = _checkpoint(tmp_path, good)
    (loaded,), note = load_checkpoint(checkpoint, storage, torch.device("cpu"))
    assert note == "" and loaded["epoch"] == 2 and loaded["weights"].tolist() == [1.0, 1.0, 1.0]


# --- a real full disk ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs: room for the settings and the study, not for a checkpoint."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]
    if subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip("a real full disk needs a tmpfs mount (root); the injected ENOSPC covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tuner", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_full_disk_during_a_run_is_one_line_and_never_starts_over(
    synth_root, small_disk, tmp_path
):
    where = ["--storage", str(small_disk), "--name", "full"]
    budget = ["--epochs", "1", "--trials", "1", "--max-failures", "0"]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = _cli("run", "--data", str(synth_root), *SMALL, *budget, *cache, *where, cwd=tmp_path)
    last = first.stderr.strip().splitlines()[-1]
    assert first.returncode == 2, first.stderr[-3000:]
    assert last.startswith(f"error: {small_disk / 'full'}: no space left on the device")
    assert "continue with: python -m tuner run --resume --name full" in last

    subprocess.run(["mount", "-o", "remount,size=2g", str(small_disk)], check=True)
    resumed = _cli("run", "--resume", *where, cwd=tmp_path)
    trials = sorted(p.name for p in (small_disk / "full").glob("trial_*"))
    # Either it continues the one trial, or it refuses in one line; never a second start.
    assert "Restarting experiment" not in resumed.stderr and len(trials) == 1
    if resumed.returncode != 0:
        assert resumed.returncode == 2
        line = resumed.stderr.strip().splitlines()[-1]
        assert "run state is missing or damaged" in line and "start a new experiment" in line
    report = _cli("report", str(small_disk / "full"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    if resumed.returncode == 0:
        # The trial errored once, then finished: the summary, the report and the study
        # agree (the first attempt's error.txt stays, the study keeps it as a retry).
        assert "1 finished, 0 stopped early, 0 interrupted, 0 errored" in resumed.stdout
        (trial,) = load_experiment(small_disk / "full").trials
        assert (trial.state, trial.error) == ("finished", None)
        study = optuna.load_study(
            study_name="full", storage=f"sqlite:///{small_disk}/full/full.sqlite"
        )
        assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


@pytest.mark.slow
def test_a_run_in_which_every_trial_errored_exits_1(synth_root, tmp_path, monkeypatch, capsys):
    diverging = TrainConfig.reference().replace(lr=1e12)  # a NaN loss in the first epoch
    monkeypatch.setattr(TrainConfig, "reference", classmethod(lambda cls: diverging))
    try:
        where = ["--storage", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
        code = main(
            ["run", "--reference", "--data", str(synth_root), *SMALL, "--epochs", "1", *where]
        )
    finally:
        ray.shutdown()
    assert code == 1
    captured = capsys.readouterr()
    assert "errored" in captured.out
    assert (
        captured.err.strip().splitlines()[-1] == "error: every trial errored; see the lines above"
    )
