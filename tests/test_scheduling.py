"""ASHA's decisions survive --resume: its rungs travel in Tune's snapshots."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

from ray.tune.callback import CallbackList
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from results.config import TrainConfig
from results.settings import RunSettings, Scheduler
from tuner.scheduling import SchedulerState, build_scheduler

BASE = TrainConfig.reference().replace(epochs=10)  # one rung, at epoch 4


def _asha(tmp_path):
    settings = RunSettings(data=tmp_path, base=BASE, storage=str(tmp_path), name="s")
    scheduler = build_scheduler(settings)
    scheduler.set_search_properties("selected_heldout_dice", "max")
    return scheduler


def _decision(scheduler, trial_id: str, dice: float, epoch: int = 4) -> str:
    trial = Trial("train_busi", trial_id=trial_id, stub=True)
    scheduler.on_trial_add(None, trial)
    result = {"training_iteration": epoch, "selected_heldout_dice": dice}
    return scheduler.on_trial_result(None, trial, result)


def test_a_resumed_asha_stops_what_the_uninterrupted_one_stops(tmp_path):
    before = _asha(tmp_path)
    decisions = [_decision(before, f"t{n}", dice) for n, dice in enumerate((0.6, 0.7, 0.8))]
    assert decisions == [TrialScheduler.CONTINUE] * 3  # each the best at its rung so far
    # Tune's own save and restore of callback states, as at a snapshot and a --resume.
    CallbackList([SchedulerState(before)]).save_to_dir(str(tmp_path), "snapshot")
    restored = _asha(tmp_path)
    callbacks = CallbackList([SchedulerState(restored)])
    assert callbacks.can_restore(str(tmp_path))
    callbacks.restore_from_dir(str(tmp_path))
    # A trial below the rung's top third is stopped after the resume as it would have
    # been before it; a fresh ASHA, knowing no earlier trial, lets it go on.
    assert _decision(before, "t3", 0.1) == TrialScheduler.STOP
    assert _decision(restored, "t3", 0.1) == TrialScheduler.STOP
    assert _decision(_asha(tmp_path), "t3", 0.1) == TrialScheduler.CONTINUE


def test_fifo_and_reference_runs_carry_no_scheduler_state(tmp_path):
    fifo = RunSettings(
        data=tmp_path, base=BASE, storage=str(tmp_path), name="f", scheduler=Scheduler.FIFO
    )
    reference = RunSettings(
        data=tmp_path, base=BASE, storage=str(tmp_path), name="r", reference_only=True
    )
    for settings in (fifo, reference):
        scheduler = build_scheduler(settings)
        assert isinstance(scheduler, FIFOScheduler)
        assert SchedulerState(scheduler).get_state() is None


def test_the_grace_period_is_40_percent_of_the_budget_unless_given(tmp_path):
    from tuner.scheduling import grace_period

    def settings(epochs: int, given: int | None = None) -> RunSettings:
        base = TrainConfig.reference().replace(epochs=epochs)
        return RunSettings(
            data=tmp_path, base=base, storage=str(tmp_path), name="g", grace_period=given
        )

    assert [grace_period(settings(e)) for e in (1, 2, 8, 20)] == [1, 1, 3, 8]
    assert grace_period(settings(20, given=5)) == 5
    assert build_scheduler(settings(20))._brackets[0]._rungs[-1][0] == 8  # first milestone


def test_a_grace_period_outside_the_budget_is_one_line(tmp_path, capsys):
    from tuner.cli import main

    assert main(["run", "--data", str(tmp_path), "--epochs", "4", "--grace-period", "5"]) == 2
    assert capsys.readouterr().err == (
        "error: --grace-period 5: must lie between 1 and the budget (--epochs 4)\n"
    )


def test_a_trial_short_of_its_budget_was_stopped_only_where_a_scheduler_stops(tmp_path):
    """The reader's one rule, which the run summary, sweep.all_ended and tuner.retrain
    use: a trial that ended short without an error was stopped early under ASHA, and cut
    off (interrupted) under FIFO, whose retraining runs have no study to say so."""
    from results.experiment import read_trial
    from results.layout import RESULT_FILE
    from tuner.sweep import all_ended

    def trial(epochs: int) -> Path:
        folder = tmp_path / f"trial_00{epochs}_ab"
        folder.mkdir()
        rows = [{"training_iteration": e, "epoch": e} for e in range(1, epochs + 1)]
        (folder / RESULT_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    short, done = trial(4), trial(10)
    for scheduler, state, ended in (
        (Scheduler.ASHA, "stopped early at epoch 4", True),
        (Scheduler.FIFO, "interrupted at epoch 4", False),
    ):
        settings = RunSettings(
            data=tmp_path, base=BASE, storage=str(tmp_path), name="e", trials=2,
            scheduler=scheduler,
        )  # fmt: skip
        trials = tuple(read_trial(folder, settings, {}) for folder in (done, short))
        assert [t.state for t in trials] == ["finished", state]
        experiment = SimpleNamespace(trials=trials)
        assert all_ended(settings, experiment) is ended
        assert not all_ended(dataclasses.replace(settings, trials=3), experiment)
