"""Experiments on object storage (s3://, served by moto on localhost): a sweep whose driver
is killed resumes from the bucket alone, readers need no node's disk, a two-node cluster
moves a lost trial, and pretrained weights travel from the driver."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import ray

from results import storage
from results.config import TrainConfig
from results.layout import PLACEMENT_FILE, RESULT_FILE, SETTINGS_FILE
from results.settings import RunSettings, Scheduler, SplitPolicy
from tuner import sweep

pytestmark = pytest.mark.slow

TINY = TrainConfig.reference().replace(
    encoder="resnet18", encoder_weights="none", image_size=32, batch_size=8, epochs=3
)


def _cli(args: list[str], cwd: Path, cache: Path, ray_tmp: Path) -> subprocess.Popen:
    """`python -m tuner …` as a separate driver: its own cache, its own Ray folders (at a
    short path: Ray's socket paths must fit in 107 bytes, see conftest's `short_dir`)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BUSI_TUNE_CACHE": str(cache), "RAY_TMPDIR": str(ray_tmp)}
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its Ray processes can be killed with it, as a group
    )


def _remote_study(location: str, name: str, into: Path) -> optuna.Study | None:
    """The study as the bucket holds it (None before its first snapshot)."""
    data = storage.read_bytes(storage.join(location, f"{name}.sqlite"))
    if data is None:
        return None
    into.write_bytes(data)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{into}")


def _rows(location: str, trial: str) -> list[dict]:
    text = (storage.read_bytes(storage.join(location, trial, RESULT_FILE)) or b"").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _placements(location: str, trial: str) -> list[dict]:
    text = (storage.read_bytes(storage.join(location, trial, PLACEMENT_FILE)) or b"").decode()
    return [json.loads(line) for line in text.splitlines()]


def _trial_names(location: str) -> list[str]:
    return sorted({p.split("/")[0] for p in storage.list_files(location) if p.startswith("trial_")})


def test_a_sweep_on_s3_survives_a_killed_driver_and_is_read_from_anywhere(
    s3_storage, synth_root, tmp_path, short_dir
):
    location = storage.join(s3_storage, "killed")
    ray_a, ray_c = short_dir(), short_dir()
    run = [
        "run", "--data", str(synth_root), "--encoder", "resnet18", "--encoder-weights", "none",
        "--image-size", "32", "--epochs", "2", "--trials", "2", "--max-concurrent", "1",
        "--scheduler", "fifo", "--storage", s3_storage, "--name", "killed",
    ]  # fmt: skip
    first = _cli(run, tmp_path / "a", tmp_path / "cache-a", ray_a)
    # Killed (SIGKILL, Ray with it) once the bucket's study, which travels with Tune's
    # own snapshot, holds the first finished trial.
    deadline = time.time() + 600
    while time.time() < deadline:
        study = _remote_study(location, "killed", tmp_path / "peek.sqlite")
        if study and any(t.state.name == "COMPLETE" for t in study.trials):
            break
        assert first.poll() is None, first.communicate()[0][-3000:]
        time.sleep(0.5)
    time.sleep(2)  # the rest of that snapshot's upload
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    finished = [t.user_attrs["trial_name"] for t in study.trials if t.state.name == "COMPLETE"]
    rows_before = {name: _rows(location, name) for name in finished}

    # Resumed by another driver: another folder, cache and Ray, the data mounted at
    # another path; the bucket is all it has of the run.
    mounted = shutil.copytree(synth_root, tmp_path / "mounted" / "busi")
    resume = ["run", "--resume", "--name", "killed", "--storage", s3_storage]
    resume += ["--data", str(mounted)]
    second = _cli(resume, tmp_path / "c", tmp_path / "cache-c", ray_c)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-3000:]
    study = _remote_study(location, "killed", tmp_path / "after.sqlite")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    for name in finished:  # not run again: same epochs, one start
        assert _rows(location, name) == rows_before[name]
        assert len(_placements(location, name)) == 1
    assert len(_trial_names(location)) == 2

    # Read from a fresh process elsewhere, with every local folder of the runs gone.
    for folder in [tmp_path / name for name in ("a", "c", "cache-a", "cache-c")]:
        shutil.rmtree(folder)
    for folder in (ray_a, ray_c):
        shutil.rmtree(folder)
    report = _cli(["report", location], tmp_path / "d", tmp_path / "cache-d", short_dir())
    output, _ = report.communicate(timeout=300)
    assert report.returncode == 0, output[-3000:]
    assert "trials: 2 — 2 finished" in output, output
    assert storage.is_file(storage.join(location, "report", "report.md"))
    evaluate = _cli(
        ["evaluate", location, "--json"], tmp_path / "d", tmp_path / "cache-d", short_dir()
    )
    output, _ = evaluate.communicate(timeout=300)
    assert evaluate.returncode == 0, output[-3000:]
    result = json.loads(output.strip().splitlines()[-1])
    best = result["trial"]
    recorded = json.loads(storage.read_bytes(storage.join(location, best, "metrics.json")))
    assert result["dice"] == pytest.approx(recorded["test"]["dice"], abs=1e-6)


def test_two_node_cluster_on_s3_moves_a_lost_trial_with_the_drivers_weights(
    s3_storage, synth_root, tmp_path, monkeypatch
):
    """A node is removed mid-trial: the trial resumes on the other node from its checkpoint
    in the bucket, and its placement record keeps both starts. The encoder's weights are a
    relative file that only the driver ever reads: it is gone once the driver has it.

    The head runs no trial (no CPU): with one there, a loaded machine can start the second
    trial's worker more slowly than the first trial trains, and Tune then reuses the first
    trial's actor on the head for it, so no trial ever runs on a node that can be removed."""
    import segmentation_models_pytorch as smp
    from ray.cluster_utils import Cluster
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    encoder = smp.encoders.get_encoder("resnet18", in_channels=3, weights=None)
    save_file(encoder.state_dict(), "encoder.safetensors")
    real = sweep.pretrained_encoders

    def read_then_remove(pairs):
        found = real(pairs)
        Path("encoder.safetensors").unlink()  # no trial can read it from here on
        return found

    monkeypatch.setattr(sweep, "pretrained_encoders", read_then_remove)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = {node.node_id: node for node in (cluster.add_node(num_cpus=1) for _ in range(2))}
    removed: list[str] = []
    sweep_done = threading.Event()
    location = storage.join(s3_storage, "cluster")
    try:
        ray.init(address=cluster.address)
        settings = RunSettings(
            data=synth_root,
            base=TINY.replace(epochs=6, encoder_weights="encoder.safetensors"),
            split=SplitPolicy.RANDOM,
            trials=2,
            space="reference",
            scheduler=Scheduler.FIFO,
            storage=s3_storage,
            address=cluster.address,
            name="cluster",
            max_failures=2,
            checkpoint_every=2,  # a resume point at epochs 2 and 4
            cache_dir=tmp_path / "cache",
        )

        def remove_a_node_mid_trial() -> None:
            while not sweep_done.is_set():
                files = storage.list_files(location) if storage.exists(location) else {}
                for trial in {p.split("/")[0] for p in files if p.startswith("trial_")}:
                    starts = _placements(location, trial)
                    # Its second full state written: the driver has long had the first.
                    if starts and f"{trial}/state/epoch_0004.pt" in files:
                        node_id = starts[0]["node_id"]
                        cluster.remove_node(workers[node_id])
                        removed.append(node_id)
                        return
                time.sleep(0.2)

        killer = threading.Thread(target=remove_a_node_mid_trial, daemon=True)
        killer.start()
        try:
            _, results = sweep.run(settings)
        finally:
            sweep_done.set()
            killer.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert all(r.error is None for r in results)
    assert all(r.metrics["training_iteration"] == 6 for r in results)
    placements = {name: _placements(location, name) for name in _trial_names(location)}
    nodes = {entry["node_id"] for entries in placements.values() for entry in entries}
    assert len(removed) == 1 and nodes == set(workers)  # trials ran on both nodes
    moved = [entries for entries in placements.values() if len(entries) > 1]
    assert len(moved) == 1, placements
    first_start, restart = moved[0]
    assert first_start["node_id"] == removed[0] != restart["node_id"]
    assert restart["resumed_after_epoch"] >= 2  # from a checkpoint, not from epoch 0
    saved = json.loads(storage.read_bytes(storage.join(location, SETTINGS_FILE)))
    assert saved["base"]["encoder_weights"] == str(tmp_path / "encoder.safetensors")
