"""The text printed at the end of `python -m tuner run`, read from the experiment as the
report reads it (results.experiment): the same trial states, counted in the report's words
(results.words.state_counts), and the same best trial."""

from __future__ import annotations

import shlex

from results import storage
from results.compare import comparison_table
from results.experiment import Experiment
from results.layout import METRICS_FILE
from results.settings import RunSettings
from results.words import state_counts


def summarise(settings: RunSettings, experiment: Experiment) -> str:
    """`settings`: those the run ran with (the experiment's, where it is now)."""
    lines = [f"experiment: {storage.shown(settings.experiment_dir)}"]
    lines.append(state_counts(experiment.trials))  # the report's words
    for trial in experiment.trials:
        if trial.errored:
            lines.append(f"  errored {trial.name}: {trial.error}")
    # An interrupted or errored trial is never the best: only completed ones compete.
    best = experiment.best
    if best is not None:
        selected = best.selected
        title = "the reference config" if settings.reference_only else "best trial"
        lines.append(f"{title}: {best.name} ({settings.metric} = {best.objective:.4f})")
        final = settings.final_seeds and not settings.reference_only
        if selected:
            lines.append(f"selected epoch {selected.epoch}; selection on the {selected.selection}")
        if selected and final:
            # Test numbers only for the winner, which the final round picks below.
            lines.append("test metrics: the final round's winner's, below")
        elif selected:
            lines.append("test metrics at the selected epoch vs the published reference:")
            lines.append(comparison_table(selected.test))
            details = storage.join(settings.experiment_dir, best.name, METRICS_FILE)
            lines.append(f"details: {storage.shown(details)}")
    if not settings.reference_only:
        lines.append(f"optuna study: {storage.shown(settings.study_location)}")
    # Printed commands are shell-quoted, so they can be pasted whatever the name holds.
    where = shlex.quote(storage.shown(settings.experiment_dir))
    lines.append(f"report:      python -m tuner report {where}")
    lines.append(f"tensorboard: tensorboard --logdir {where}")
    return "\n".join(lines)
