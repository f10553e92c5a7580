"""The experiment as plain tables: the one `report` prints (trials, then the headline's
test numbers beside the published ones) and trials.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from results import escape, keys, storage
from results.compare import COMPARABLE, deltas
from results.experiment import Experiment, Trial
from results.headline import assessment, headline, primary_lines
from results.keys import LOSS, METRIC_KEYS
from results.records import Confirmation
from results.reference import PublishedReference, load_reference
from results.words import (
    fold_warning,
    protocol_lines,
    shown_value,
    state_counts,
    test_metrics_of,
    trial_details,
)

TEST_KEYS = (LOSS, *METRIC_KEYS)
TRIALS_CSV_PARAM = "param_"  # trials.csv's column prefix of a searched value


def format_terminal_table(
    experiment: Experiment,
    reference: PublishedReference | None = None,
    result: Confirmation | None = None,
) -> str:
    """The trials as text (objective and searched values: no test numbers, the test part
    picks nothing), then the winner's and the reference config's test metrics beside the
    published ones, and the primary endpoint with its interval. `result`: the experiment's
    `assessment`, when the caller has made it already (write_report has)."""
    reference = reference or load_reference()
    settings = experiment.settings
    kind = "--reference run" if settings.reference_only else f"sweep ({settings.space} space)"
    lines = [
        f"experiment: {storage.shown(experiment.location)} — {kind}; "
        f"{state_counts(experiment.trials)}",
        *protocol_lines(experiment, reference),
        "",
        f"{'':3}{'trial':<24}{'state':<28}{'objective':>10}  searched values",
    ]
    for trial in experiment.trials:
        lines.append(
            f"{experiment.marks(trial):<3}{trial.name:<24}{trial.state:<28}"
            f"{shown_value(trial.objective):>10}  {trial_details(trial)}"
        )
    if warning := fold_warning(experiment):
        lines.append(warning)
    result = result or assessment(experiment)
    rows = headline(experiment, result)
    if not rows:
        return "\n".join(lines)
    width = 3 + max(len(row.title) for row in rows)
    lines += [
        "",
        "test part vs the published reference (the winner and the reference config only):",
        f"{'':{width}}" + "".join(f"{m:>10}" for m in COMPARABLE),
        f"{'published reference':{width}}"
        + "".join(f"{reference.test[m]:>10.4f}" for m in COMPARABLE),
    ]
    for row in rows:
        difference = deltas(row.test, reference)
        lines += [
            f"{row.title:{width}}"
            + "".join(f"{shown_value(row.test.get(m)):>10}" for m in COMPARABLE),
            f"{'   Δ published':{width}}"
            + "".join(f"{shown_value(difference[m], signed=True):>10}" for m in COMPARABLE),
            f"   differs from the paper: {'; '.join(row.differences)}",
        ]
    return "\n".join([*lines, *primary_lines(experiment, result)])


def trial_row(
    trial: Trial,
    experiment: Experiment,
    reference: PublishedReference,
    test_metrics: bool = False,
) -> dict:
    """One trial; its test metrics and their difference from the published ones only
    with `test_metrics` (report --all-test-metrics)."""
    test = (test_metrics_of(trial) or {}) if test_metrics else {}
    difference = deltas(test, reference) if test else {}
    tested = {
        **{keys.on_test(m): _csv(test.get(m)) for m in TEST_KEYS},
        **{f"delta_{m}": _csv(difference.get(m)) for m in COMPARABLE},
    }
    return {
        "trial": trial.name,
        "number": trial.number,
        "marks": experiment.marks(trial),
        "state": trial.state,
        "optuna_state": trial.optuna_state or "",
        "epochs_run": trial.epochs_run,
        "selected_epoch": trial.selected.epoch if trial.selected else "",
        "selection": trial.selected.selection if trial.selected else "",
        f"objective_{experiment.settings.metric}": _csv(trial.objective),
        "objective_fold_std": _csv(trial.fold_spread),
        **(tested if test_metrics else {}),
        "error": trial.error or "",
        **{f"{TRIALS_CSV_PARAM}{k}": v for k, v in trial.params.items()},
    }


def _csv(value: float | None) -> str | float:
    return "" if value is None else value


def write_trials_csv(
    experiment: Experiment,
    reference: PublishedReference,
    path: Path,
    test_metrics: bool = False,
) -> None:
    rows = [trial_row(t, experiment, reference, test_metrics) for t in experiment.trials]
    names = dict.fromkeys(k for row in rows for k in row)
    columns = [k for k in names if not k.startswith(TRIALS_CSV_PARAM)]
    columns += sorted(k for k in names if k.startswith(TRIALS_CSV_PARAM))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: escape.csv_cell(v) for k, v in row.items()} for row in rows)
