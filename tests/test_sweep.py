"""Sweeps through Ray Tune on the CPU: tiny encoder, 32-64 px, a few epochs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
import ray
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import search_spaces
from results.config import TrainConfig
from results.layout import FAILURE_FILE, METRICS_FILE, PLACEMENT_FILE, SELECTION_FILE
from results.settings import RunSettings, Scheduler
from search_spaces import SearchSpace
from trainable.tensorboard import IMAGE_TAG, SCALAR_TAGS
from tuner import packing, sweep
from tuner.cli import main

pytestmark = pytest.mark.slow

TINY = TrainConfig.reference().replace(
    encoder="resnet18", encoder_weights="none", image_size=64, batch_size=8, epochs=3
)


@pytest.fixture(autouse=True)
def fresh_ray():
    yield
    ray.shutdown()


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if p.name.startswith("trial_"))


def _progress_rows(trial: Path) -> list[dict]:
    lines = (
        (trial / "result.json").read_text().splitlines() if (trial / "result.json").exists() else []
    )
    return [json.loads(line) for line in lines]


def _study(settings: RunSettings) -> optuna.Study:
    return optuna.load_study(study_name=settings.name, storage=f"sqlite:///{settings.study_path}")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_demo_sweep_end_to_end(tmp_path):
    """The README's first command, shrunk: the reference first, TensorBoard for every trial.
    With every worker line shown (RAY_DEDUP_LOGS=0), Ray patches print at once: the start
    must survive it (it failed every time when Tune was handed `print`)."""
    process = _cli(
        *shlex.split(
            f"run --demo --trials 4 --epochs 2 --storage '{tmp_path / 'runs'}' --name demo "
            f"--cache-dir '{tmp_path / 'cache'}'"
        ),
        cwd=tmp_path,
        env={"RAY_DEDUP_LOGS": "0"},
    )
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    assert "tensorboard --logdir" in output and "published" in output
    experiment = tmp_path / "runs" / "demo"
    trials = _trial_dirs(experiment)
    assert len(trials) == 4
    first = json.loads((trials[0] / "config.json").read_text())
    reference = TINY.replace(epochs=2).to_flat()
    assert {k: first[k] for k in search_spaces.get_space("reference").keys} == {
        k: reference[k] for k in search_spaces.get_space("reference").keys
    }
    for trial in trials:
        events = EventAccumulator(str(trial), size_guidance={"images": 0})
        events.Reload()
        assert set(SCALAR_TAGS) <= set(events.Tags()["scalars"])
        assert IMAGE_TAG in events.Tags()["images"]
        image = events.Images(IMAGE_TAG)[0]
        assert image.width == 3 * 64 and image.height == 4 * 64  # 4 examples, 3 panels
        assert [s.step for s in events.Scalars("loss/combined")][0] == 1
        assert (trial / METRICS_FILE).is_file() and (trial / SELECTION_FILE).is_file()
        # A finished sweep keeps each trial's selected weights, not its training states.
        assert (trial / "model.pt").is_file() and not list(trial.glob("checkpoint_*"))
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{experiment}/demo.sqlite")
    assert len(study.trials) == 4
    # One name per trial: folder, Optuna (attribute and number), progress line, report.
    names = [t.name for t in trials]
    assert [t.user_attrs["trial_name"] for t in study.trials] == names
    assert [int(name.split("_")[1]) for name in names] == [t.number for t in study.trials]
    lines = [line for line in output.splitlines() if re.match(r"\[\d+/4\] ", line)]
    assert len(lines) == 4 and all(any(n in line for n in names) for line in lines)
    assert "Experiment state snapshotting" not in output and "Trial status" not in output
    assert output.count("tensorboard --logdir") == 1  # ours, not Ray's as well
    assert main(["report", str(experiment)]) == 0
    report = (experiment / "report" / "report.md").read_text()
    assert all(name in report for name in names)
    assert "**data: synthetic**" in report
    # The winner's test Dice with its interval over the test part's groups (one run).
    assert re.search(r"test dice \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] \(test-image groups", report)
    assert (experiment / "report" / "parallel_coordinates.png").is_file()
    # HParams: one experiment at the root, with a column for every parameter the space can
    # sample (the conditional ones too), and in each trial only its own session.
    root = EventAccumulator(str(experiment))
    root.Reload()
    columns = {h.name for h in _experiment_summary(root).hparam_infos}
    space = search_spaces.get_space("reference").parameters(TINY)
    assert columns == {*space, "state"} and len(space) == 25
    # Tune's own name of each trial (its tables, errors, ExperimentAnalysis) is its folder's.
    state = json.loads(next(experiment.glob("experiment_state-*.json")).read_text())
    tune_names = [json.loads(t[0]) for t in state["trial_data"]]
    assert sorted(t["custom_trial_name"] for t in tune_names) == names
    # HParams: the searched values, the true state and the selected epoch's metrics.
    for trial in trials:
        hparams = _hparams(trial)
        rows = _progress_rows(trial)
        assert hparams["metrics"]["hparams/selected_heldout_dice"] == pytest.approx(
            rows[-1]["selected_heldout_dice"]
        )
        assert hparams["metrics"]["hparams/test_dice"] == pytest.approx(rows[-1]["test_dice"])
        ran = len(rows)
        state = "finished" if ran == 2 else f"stopped early at epoch {ran}"
        assert hparams["state"] == state and "lr" in hparams["values"]


def _experiment_summary(events):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events.SummaryMetadata("_hparams_/experiment").plugin_data.content
    return HParamsPluginData.FromString(content).experiment


def _hparams(trial: Path) -> dict:
    """The HParams plugin's records in a trial's event files, read back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(trial))
    events.Reload()
    start = HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    ).session_start_info
    values = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
    metrics = {
        tag: events.Scalars(tag)[-1].value
        for tag in events.Tags()["scalars"]
        if tag.startswith("hparams/")
    }
    assert "_hparams_/experiment" not in events.summary_metadata  # the root's, not its own
    return {"values": values, "state": values["state"], "metrics": metrics}


# A space that makes trial 2 diverge (lr 1e12 gives a NaN loss in the first epoch) and
# trials 3 and 4 collapse (lr 3: every pixel called lesion, Dice 0.105 for good), so that
# ASHA has trials to stop. (An untrained model scores 0.12 here, above what a learning
# one reaches in its first 3 epochs: "learns nothing" would not be stopped.)
@dataclass(frozen=True)
class _ForcedOutcomes:
    base: TrainConfig

    def __call__(self, trial: optuna.Trial) -> dict | None:
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        forced = {2: 1e12, 3: 3.0, 4: 3.0}.get(trial.number)
        return {"lr": forced} if forced else None


@pytest.fixture
def forced_space(monkeypatch):
    space = SearchSpace("forced", "test only", _ForcedOutcomes, keys=("lr",))
    monkeypatch.setitem(search_spaces.SPACES, "forced", space)
    return space


def test_asha_stops_bad_trials_and_a_nan_trial_errors(synth_root, tmp_path, forced_space):
    settings = RunSettings(
        data=synth_root,
        base=TINY.replace(lr=3e-3, epochs=5),
        trials=5,
        max_concurrent=1,
        space="forced",
        scheduler=Scheduler.ASHA,
        storage=str(tmp_path),
        name="asha",
        cache_dir=tmp_path / "cache",
    )
    _, results = sweep.run(settings)
    assert len(results) == 5
    by_number = {int(Path(r.path).name.split("_")[1]): r for r in results}
    nan_trial = by_number[2]  # folder numbers are Optuna's trial numbers
    assert nan_trial.error is not None and "training loss became nan" in str(nan_trial.error)
    others = [r for n, r in by_number.items() if n != 2]
    assert all(r.error is None for r in others)
    epochs = {n: r.metrics["training_iteration"] for n, r in by_number.items() if n != 2}
    assert epochs[0] == 5  # the reference point ran the whole budget
    assert min(epochs[3], epochs[4]) < 5, epochs  # ASHA stopped a collapsed trial
    states = {t.number: t.state.name for t in _study(settings).trials}
    assert states[2] == "FAIL"
    assert states[0] == "COMPLETE"
    for number, ran in epochs.items():
        expected = "COMPLETE" if ran == 5 else "PRUNED"
        assert states[number] == expected
    pruned = [t for t in _study(settings).trials if t.state.name == "PRUNED"]
    assert all(t.user_attrs["epochs_run"] < 5 for t in pruned)
    # Every epoch is in the study, the last included; a stopped trial shows its value.
    for trial in _study(settings).trials:
        if trial.state.name in ("COMPLETE", "PRUNED"):
            ran = trial.user_attrs["epochs_run"]
            assert sorted(trial.intermediate_values) == list(range(1, ran + 1))
            assert trial.value == trial.intermediate_values[ran]
    # Every record of a trial describes the model Tune and the study ranked, also when ASHA
    # stopped it (it used to record the epoch it trained past the decision).
    values = {t.number: t.value for t in _study(settings).trials}
    for number, ran in epochs.items():
        trial = Path(by_number[number].path)
        metrics = json.loads((trial / METRICS_FILE).read_text())
        assert metrics["selected_epoch"] <= ran
        assert metrics["heldout"]["dice"] == pytest.approx(values[number])
        assert int(np.load(trial / SELECTION_FILE)["epoch"]) == metrics["selected_epoch"]
        events = EventAccumulator(str(trial))
        events.Reload()
        assert [e.step for e in events.Scalars("loss/combined")][-1] == ran, number
    # A diverging trial trains once: Tune's retries end at once instead of repeating it.
    nan_dir = Path(nan_trial.path)
    assert len((nan_dir / PLACEMENT_FILE).read_text().splitlines()) == 1
    assert "NonFiniteLossError" in (nan_dir / FAILURE_FILE).read_text()


def _interrupt_after_the_first_trial(
    process, experiment: Path, epochs: int, stop: signal.Signals = signal.SIGINT
) -> str:
    """Ctrl-C (or `stop`) as soon as the first trial has finished and the second started;
    returns what the run printed."""
    deadline = time.time() + 600
    while time.time() < deadline:
        trials = _trial_dirs(experiment) if experiment.exists() else []
        started = len(trials) >= 2 and (trials[1] / PLACEMENT_FILE).exists()
        if started and len(_progress_rows(trials[0])) >= epochs:
            break
        time.sleep(0.5)
    process.send_signal(stop)
    output, _ = process.communicate(timeout=300)
    return output


def test_a_stopped_cross_validated_sweep_resumes_no_finished_fold_after_a_move(
    synth_root, tmp_path
):
    """A 3-fold sweep stopped (SIGTERM) after its first trial, moved, and resumed from
    another folder with the command it printed: the finished trial is not retrained, the
    cut-off one continues (both starts recorded), trials rank by their fold mean."""
    storage = tmp_path / "runs"
    args = shlex.split(
        f"run --data '{synth_root}' --encoder resnet18 --encoder-weights none --image-size 64 "
        f"--epochs 2 --trials 2 --folds 3 --max-concurrent 1 --scheduler fifo --no-reuse-actors "
        f"--storage '{storage}' --name folds --cache-dir '{tmp_path / 'cache'}'"
    )
    process = _cli(*args, cwd=tmp_path)
    experiment = storage / "folds"
    # SIGTERM (a scheduler's stop) ends the run as Ctrl-C does, with the shell's 143.
    stopped = _interrupt_after_the_first_trial(process, experiment, epochs=2, stop=signal.SIGTERM)
    assert process.returncode == 143, stopped[-2000:]
    # The driver's own lines: Ray forwards what its stopped workers print (their SIGTERM
    # handler's SystemExit can show as an ignored exception there, depending on timing).
    driver = [line for line in stopped.splitlines() if "pid=" not in line]
    assert not any("Traceback" in x for x in driver)
    assert "1 finished, 0 stopped early, 1 interrupted, 0 errored" in stopped
    assert "best trial: trial_000_" in stopped  # never the interrupted one
    hint = next(line for line in stopped.splitlines() if line.startswith("interrupted;"))
    command = shlex.split(hint.split("continue with:", 1)[1])
    assert command[:4] == ["python", "-m", "tuner", "run"]
    assert command[command.index("--storage") + 1] == str(storage)
    # The experiment moves before it resumes: Tune's pickled searcher opens the study
    # where it is now (nothing is made where it was).
    storage = storage.rename(tmp_path / "moved")
    command[command.index("--storage") + 1] = str(storage)
    experiment = storage / "folds"
    first = _trial_dirs(experiment)[0]
    first_rows = _progress_rows(first)
    fold_models = {p.name: p.stat().st_mtime_ns for p in first.glob("model_fold*.pt")}
    assert sorted(fold_models) == ["model_fold0.pt", "model_fold1.pt", "model_fold2.pt"]

    elsewhere = tmp_path / "elsewhere"  # the printed command works from any folder
    elsewhere.mkdir()
    resumed = _cli(*command[3:], cwd=elsewhere)
    output, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, output[-3000:]
    assert not (tmp_path / "runs").exists()
    # The interrupted trial's record keeps its first start beside the resumed one.
    assert len((_trial_dirs(experiment)[1] / PLACEMENT_FILE).read_text().splitlines()) == 2
    study = optuna.load_study(study_name="folds", storage=f"sqlite:///{experiment}/folds.sqlite")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert _progress_rows(first) == first_rows  # the finished trial's folds: not retrained
    assert {p.name: p.stat().st_mtime_ns for p in first.glob("model_fold*.pt")} == fold_models
    trials = _trial_dirs(experiment)
    assert len(trials) == 2
    for trial in trials:
        metrics = json.loads((trial / METRICS_FILE).read_text())
        objective = metrics["objective"]
        assert objective["metric"] == "selected_heldout_dice" and len(objective["per_fold"]) == 3
        assert objective["mean"] == pytest.approx(np.mean(objective["per_fold"]))
        last = _progress_rows(trial)[-1]
        assert last["selected_heldout_dice"] == pytest.approx(objective["mean"])
        assert last["objective_fold_std"] == pytest.approx(objective["std"])
        assert [f["fold"] for f in metrics["folds"]] == [0, 1, 2]
        assert (
            metrics["protocol"]["counts"]["cross-validated"] + metrics["protocol"]["counts"]["test"]
            == 44
        )
    split = json.loads((trials[0] / "split.json").read_text())
    assert len(split["folds"]) == 3 and not set(split["test"]) & set(sum(split["folds"], []))
    assert "3-fold cross-validation" in output


def test_fractional_gpus_pack_two_trials_on_one_declared_gpu(synth_root, tmp_path):
    settings = RunSettings(
        data=synth_root,
        # Long enough (8 epochs) to outlast the few seconds a second trial takes to start.
        base=TINY.replace(epochs=8),
        trials=2,
        space="reference",
        scheduler=Scheduler.FIFO,
        storage=str(tmp_path),
        name="gpus",
        gpus_per_trial=0.5,
        local_gpus=1,
        cache_dir=tmp_path / "cache",
    )
    _, results = sweep.run(settings)
    assert all(r.error is None for r in results)
    placements = [
        json.loads((Path(r.path) / PLACEMENT_FILE).read_text().splitlines()[0]) for r in results
    ]
    assert [p["gpu_ids"] for p in placements] == [["0"], ["0"]]
    assert all(p["device"] == "cpu" for p in placements)  # no CUDA here: CPU fallback
    spans = []
    for r in results:
        rows = _progress_rows(Path(r.path))
        spans.append((placements[len(spans)]["time"], rows[-1]["timestamp"]))
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a  # they ran at the same time
    # auto (the default) on this cluster: its probe runs as a Ray task on the declared GPU,
    # finds no CUDA device to measure on, and plans one trial per GPU.
    plan = packing.plan(dataclasses.replace(settings, gpus_per_trial=None))
    assert (plan.trials_per_gpu, plan.per_trial_bytes, plan.gpus_on_node) == (1, None, 1)


def test_real_busi_sweep(busi_root, tmp_path):
    """2 trials of 1 epoch at 32 px, small encoder, on the real BUSI, as CI runs it."""
    process = _cli(
        *shlex.split(
            f"run --data '{busi_root}' --encoder resnet18 --encoder-weights none --image-size 32 "
            f"--epochs 1 --trials 2 --storage '{tmp_path / 'runs'}' --name real"
        ),  # the shared preprocessing cache ($BUSI_TUNE_CACHE), as the reference run's
        cwd=tmp_path,
    )
    output, _ = process.communicate(timeout=1200)
    assert process.returncode == 0, output[-3000:]
    experiment = tmp_path / "runs" / "real"
    trials = _trial_dirs(experiment)
    assert len(trials) == 2
    for trial in trials:
        metrics = json.loads((trial / METRICS_FILE).read_text())
        counts = metrics["protocol"]["counts"]
        # 780 less the 49 copies of contradicting frames (--conflicts exclude, the default)
        assert sum(counts.values()) == 731 and abs(counts["test"] - 146) <= 3
        assert metrics["protocol"]["split"] == "grouped"  # the default for sweeps
        assert metrics["protocol"]["selection"] == "validation part (test part locked)"
        assert 0.0 < metrics["test"]["dice"] < 1.0
    assert "best trial: trial_" in output and "selection on the validation part" in output
