"""ASHA's decisions survive --resume: its rungs travel in Tune's snapshots."""

from __future__ import annotations

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


def test_every_trial_ended_by_one_rule_for_sweeps_and_retraining_runs(tmp_path):
    """sweep.all_ended, which tuner.confirm uses too: a trial short of its budget ended
    only where a scheduler stops trials (ASHA); under FIFO (a retraining run, whose reader
    has no study to say a trial was cut off) it was interrupted."""
    from types import SimpleNamespace

    from results.experiment import trial_state
    from tuner.sweep import all_ended

    def experiment(*states: str):
        trials = [SimpleNamespace(state=s, errored=s == trial_state(True, 0, 10)) for s in states]
        return SimpleNamespace(trials=tuple(trials))

    def settings(scheduler: Scheduler, trials: int = 2) -> RunSettings:
        return RunSettings(
            data=tmp_path, base=BASE, storage=str(tmp_path), name="e", trials=trials,
            scheduler=scheduler,
        )  # fmt: skip

    finished, errored = trial_state(False, 10, 10), trial_state(True, 3, 10)
    short, cut_off = trial_state(False, 4, 10), trial_state(False, 4, 10, ended=False)
    for scheduler in Scheduler:
        assert all_ended(settings(scheduler), experiment(finished, errored))
        assert not all_ended(settings(scheduler), experiment(finished, cut_off))
        assert not all_ended(settings(scheduler, trials=3), experiment(finished, errored))
    assert all_ended(settings(Scheduler.ASHA), experiment(finished, short))
    assert not all_ended(settings(Scheduler.FIFO), experiment(finished, short))
