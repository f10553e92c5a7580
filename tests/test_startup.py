"""A run's start survives what Ray does to the driver: Ray swaps `builtins.print` for its
own as soon as the driver prints a worker's line (always with RAY_DEDUP_LOGS=0), and
everything Tune pickles must still pickle then. A start that fails before its first trial
leaves the name free."""

from __future__ import annotations

import builtins
import json
import pickletools
import shlex
import time
from pathlib import Path

import pytest
import ray
from ray import cloudpickle
from ray.experimental import tqdm_ray

from results.config import TrainConfig
from results.settings import RunSettings
from tuner import cluster, experiment_folder, sweep
from tuner.cli import main
from tuner.progress import ConsoleLines

TINY = TrainConfig.reference().replace(
    encoder="resnet18", encoder_weights="none", image_size=32, batch_size=8, epochs=1
)


def _force_ray_print_patch() -> None:
    tqdm_ray.instance()
    assert builtins.print is tqdm_ray.safe_print


@pytest.fixture
def undo_ray_print_patch(monkeypatch):
    """Ray's print patch may be forced in this test; undone afterwards."""
    monkeypatch.setattr(builtins, "print", builtins.print)
    monkeypatch.setattr(tqdm_ray, "_manager", None)
    monkeypatch.delenv("RAY_TQDM_PATCH_PRINT", raising=False)


@ray.remote
def _worker_line() -> None:
    print("a worker's line")


@pytest.fixture
def patch_after_ray_starts(undo_ray_print_patch, monkeypatch):
    """Ray patches print as soon as a worker's line reaches the driver, which can happen
    any time after ray.init: here a worker prints right after it, and the start waits for
    the line (and so the patch) before it builds the Tuner."""
    started = cluster.init_ray

    def init_ray_then_a_worker_line(settings):
        started(settings)
        ray.get(_worker_line.remote())
        deadline = time.monotonic() + 60
        while builtins.print is not tqdm_ray.safe_print:
            assert time.monotonic() < deadline, "the worker's line never reached the driver"
            time.sleep(0.05)

    monkeypatch.setattr(cluster, "init_ray", init_ray_then_a_worker_line)


def _globals(pickled: bytes) -> set[tuple[str, str]]:
    """The (module, name) pairs a pickle refers to by reference."""
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(pickled):
        if opcode.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
        elif opcode.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def test_what_tune_pickles_holds_no_builtin_function_after_ray_patches_print(
    undo_ray_print_patch, tmp_path
):
    _force_ray_print_patch()
    settings = RunSettings(data=tmp_path, base=TINY, storage=str(tmp_path), name="pickled")
    Path(settings.experiment_dir).mkdir()
    for handed_to_tune in (
        sweep.build_run_config(settings, ConsoleLines()),
        sweep.build_tune_config(settings),
    ):
        pickled = cloudpickle.dumps(handed_to_tune)
        builtin_functions = {
            (module, name)
            for module, name in _globals(pickled)
            if module == "builtins" and not isinstance(getattr(builtins, name, None), type)
        }
        # getattr is how cloudpickle rebuilds a class's attributes, never swapped by anyone.
        assert builtin_functions <= {("builtins", "getattr")}, builtin_functions


def test_console_lines_write_to_the_stdout_of_the_moment(capsys):
    pickled = cloudpickle.loads(cloudpickle.dumps(ConsoleLines()))
    pickled("[1/2] trial_000_x  finished")
    assert capsys.readouterr().out == "[1/2] trial_000_x  finished\n"


@pytest.mark.slow
def test_sweep_reference_and_folds_start_after_ray_patched_print(
    patch_after_ray_starts, synth_root, tmp_path, capsys
):
    """Fails with `Can't pickle <built-in function print>` when the quiet output hands Tune
    the `print` of before the patch. One local Ray serves the three runs."""
    common = (
        f"--data '{synth_root}' --encoder resnet18 --encoder-weights none --image-size 32 "
        f"--epochs 1 --storage '{tmp_path / 'runs'}' --cache-dir '{tmp_path / 'cache'}'"
    )
    try:
        for extra in (
            "--trials 1 --name sweep",
            "--reference --name ref",
            "--trials 1 --folds 2 --name folds",
        ):
            assert main(shlex.split(f"run {common} {extra}")) == 0, capsys.readouterr()
            out = capsys.readouterr().out
            assert "[1/1] trial_000_" in out and "trials: 1 — 1 finished" in out
    finally:
        ray.shutdown()
    metrics = json.loads(
        next((tmp_path / "runs" / "folds").glob("trial_*/metrics.json")).read_text()
    )
    assert len(metrics["objective"]["per_fold"]) == 2


def test_a_start_that_fails_before_its_first_trial_leaves_the_name_free(
    synth_root, tmp_path, monkeypatch
):
    """Whatever breaks once the experiment is written (here Tune, before any trial), the
    folder goes, and the same command runs again (not "an experiment of that name
    exists"). Ray is left out: these steps are tested with it elsewhere."""

    def tune_fails(*args, **kwargs):
        raise RuntimeError("Tune could not start")

    monkeypatch.setattr(cluster, "init_ray", lambda settings: None)
    monkeypatch.setattr(cluster, "plan_packing", lambda settings: None)  # a cluster of no GPU
    monkeypatch.setattr(cluster, "check_resources", lambda settings: None)
    monkeypatch.setattr(cluster, "ship", lambda pretrained: {})
    monkeypatch.setattr(sweep, "fit_tuner", tune_fails)
    args = shlex.split(
        f"run --data '{synth_root}' --encoder resnet18 --encoder-weights none --image-size 32 "
        f"--cpus-per-trial 1 --storage '{tmp_path}' --name free --cache-dir '{tmp_path / 'c'}'"
    )
    for _ in range(2):
        with pytest.raises(RuntimeError, match="Tune could not start"):
            main(args)
        assert not (tmp_path / "free").exists()


def test_an_experiment_whose_trial_started_is_kept(tmp_path):
    settings = RunSettings(data=tmp_path, base=TINY, storage=str(tmp_path), name="kept")
    trial = Path(settings.experiment_dir) / "trial_000_ab12" / "placement.jsonl"
    trial.parent.mkdir(parents=True)
    trial.write_text("{}\n")
    with pytest.raises(KeyboardInterrupt), experiment_folder.freed_if_no_trial_starts(settings):
        raise KeyboardInterrupt
    assert trial.is_file()
