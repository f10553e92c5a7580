"""The text printed at the end of `python -m tuner run`."""

from __future__ import annotations

import shlex
from pathlib import Path

from ray import tune

from results import keys, storage
from results.compare import comparison_table
from results.experiment import (
    FINISHED,
    INTERRUPTED,
    STOPPED,
)
from results.layout import METRICS_FILE
from results.records import NewerFormatError, Selected
from results.settings import RunSettings
from tuner.sweep import trial_states


def _selected(result: tune.Result) -> Selected | None:
    """The trial's metrics.json, on whatever storage the trial wrote it."""
    path = f"{result.path}/{METRICS_FILE}"
    try:
        with result.filesystem.open_input_file(path) as file:
            return Selected.from_text(file.read(), path)
    except NewerFormatError:
        raise
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def summarise(settings: RunSettings, results: tune.ResultGrid) -> str:
    lines = [f"experiment: {settings.experiment_dir}"]
    states = trial_states(settings, results)
    interrupted = sum(s.startswith(INTERRUPTED) for s in states)
    lines.append(
        f"trials: {len(states)} — {states.count(FINISHED)} finished, "
        f"{sum(s.startswith(STOPPED) for s in states)} stopped early, "
        f"{states.count('errored')} errored"
        + (f", {interrupted} interrupted" if interrupted else "")
    )
    for result in results:
        if result.error is not None:
            last_line = str(result.error).strip().splitlines()[-1]
            lines.append(f"  errored {Path(result.path).name}: {last_line}")
    # An interrupted or errored trial is never the best: only completed ones compete.
    scored = [
        r
        for r, state in zip(results, states, strict=True)
        if (state == FINISHED or state.startswith(STOPPED)) and settings.metric in (r.metrics or {})
    ]
    if scored:
        sign = keys.best_first(settings.mode)
        best = min(scored, key=lambda r: sign * r.metrics[settings.metric])
        selected = _selected(best)
        title = "the reference config" if settings.reference_only else "best trial"
        lines.append(
            f"{title}: {Path(best.path).name} ({settings.metric} = "
            f"{best.metrics[settings.metric]:.4f})"
        )
        final = settings.final_seeds and not settings.reference_only
        if selected:
            lines.append(f"selected epoch {selected.epoch}; selection on the {selected.selection}")
        if selected and final:
            # Test numbers only for the winner, which the final round picks below.
            lines.append("test metrics: the final round's winner's, below")
        elif selected:
            lines.append("test metrics at the selected epoch vs the published reference:")
            lines.append(comparison_table(selected.test))
            details = storage.join(settings.experiment_dir, Path(best.path).name, METRICS_FILE)
            lines.append(f"details: {details}")
    if not settings.reference_only:
        lines.append(f"optuna study: {settings.study_location}")
    # Printed commands are shell-quoted, so they can be pasted whatever the name holds.
    where = shlex.quote(settings.experiment_dir)
    lines.append(f"report:      python -m tuner report {where}")
    lines.append(f"tensorboard: tensorboard --logdir {where}")
    return "\n".join(lines)
