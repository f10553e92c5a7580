"""The sweep's trial scheduler, and its state carried across --resume.

Tune saves its searcher's state with every snapshot of the experiment, but not the
scheduler's: a restored ASHA starts with empty rungs, so trials it would have stopped run
on (a resumed demo trained 4 trials to the end instead of 3). `SchedulerState` is a Tune
callback, whose state Tune does save and restore, holding ASHA's rungs: a resumed sweep
compares its trials with the same records as the uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from results import keys
from results.settings import REDUCTION_FACTOR, RunSettings, default_grace_period


def grace_period(settings: RunSettings) -> int:
    """--grace-period, or its default for the budget."""
    if settings.grace_period is not None:
        return settings.grace_period
    return default_grace_period(settings.base.epochs)


def build_scheduler(settings: RunSettings) -> TrialScheduler:
    """ASHA with its first rung at the grace period, or FIFO (RunSettings.stops_trials_early)."""
    if not settings.stops_trials_early:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=keys.ITERATION,
        max_t=settings.base.epochs,
        grace_period=grace_period(settings),
        reduction_factor=REDUCTION_FACTOR,
    )


class SchedulerState(tune.Callback):
    """The scheduler's state (ASHA's rungs: each trial's value at each milestone) in Tune's
    snapshots of the experiment. Tune pickles the run and tune configs together, so after a
    restore this callback still holds the very scheduler Tune runs with."""

    def __init__(self, scheduler: TrialScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        if type(self.scheduler) is FIFOScheduler:  # (ASHA is a FIFOScheduler subclass)
            return None  # nothing to carry
        return {"scheduler": dict(vars(self.scheduler))}

    def set_state(self, state: dict[str, Any]) -> None:
        vars(self.scheduler).update(state["scheduler"])
