"""What a person sees while a sweep runs: the time left comes from measured epochs."""

from __future__ import annotations

import pytest

from tuner.progress import EpochClock


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
