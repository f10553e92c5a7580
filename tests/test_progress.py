"""What a person sees while a sweep runs: the time left comes from measured epochs."""

from __future__ import annotations

import pytest

from tuner.progress import EpochClock, TrialLines, TrialNamer


def test_no_eta_until_an_epoch_is_measured():
    clock = EpochClock(trials=8, budget=10)
    assert clock.describe() == ""
    clock.epoch("a", now=100.0, running=1)  # a first epoch holds the trial's start-up
    assert clock.describe() == ""


def test_eta_from_epoch_time_trials_left_and_parallel_trials():
    clock = EpochClock(trials=4, budget=10)
    for second in (0.0, 3.0, 6.0):  # trial a: two measured epochs of 3 s
        clock.epoch("a", now=second, running=2)
    clock.epoch("b", now=1.0, running=2)
    # a has 7 epochs to go, b 9, two trials wait for 10 each: 36 epochs of 3 s, two at once.
    assert clock.seconds_left() == pytest.approx(36 * 3 / 2)
    assert clock.describe() == "ETA 54 s"


def test_ended_trials_set_the_epochs_a_trial_runs():
    """ASHA stops most trials early: once some have ended, a waiting trial is expected to
    run their mean, not the whole budget."""
    clock = EpochClock(trials=5, budget=20)
    for second in (0.0, 10.0, 20.0):
        clock.epoch("a", now=second, running=1)
    clock.trial_ended("a", epochs=3)
    clock.trial_ended("b", epochs=1)
    # 3 trials wait, each expected to run (3 + 1) / 2 = 2 epochs of 10 s, one at a time.
    assert clock.seconds_left() == pytest.approx(3 * 2 * 10)
    assert clock.describe() == "ETA 60 s"
    clock.trial_ended("c", epochs=20)
    clock.trial_ended("d", epochs=20)
    clock.trial_ended("e", epochs=20)
    assert clock.seconds_left() == 0


class _Trial:
    """What TrialLines reads of a Tune trial."""

    def __init__(self, tag: int, value: float, epochs: int = 2) -> None:
        self.experiment_tag = f"{tag}_lr=0.1"
        self.trial_id = f"id{tag:05d}"
        self.last_result = {"training_iteration": epochs, "selected_heldout_dice": value}
        self.config = {}


def _lines(*trials: _Trial, budget: int = 2) -> list[str]:
    written: list[str] = []
    lines = TrialLines(
        written.append, TrialNamer(sweep=True), "selected_heldout_dice", "max", 2000, budget
    )
    for trial in trials:
        lines.on_trial_complete(0, [], trial)
    return written


def test_a_tie_for_best_goes_to_the_lower_trial_number_as_in_the_report():
    """rank_trials breaks a tie by the trial number; so does the best so far, whichever
    of the two trials ends first."""
    written = _lines(_Trial(4, 0.5), _Trial(2, 0.5))
    assert "best 0.5000 (trial_003)" in written[0]
    assert "best 0.5000 (trial_001)" in written[1]


def test_the_best_so_far_is_named_by_its_number_past_999():
    written = _lines(_Trial(1001, 0.5), _Trial(1002, 0.4))
    assert "best 0.5000 (trial_1000)" in written[1]


def test_a_trial_cut_short_is_stopped_early_in_the_reports_words():
    (line,) = _lines(_Trial(3, 0.2, epochs=1))
    assert "  stopped early at epoch 1  " in line
