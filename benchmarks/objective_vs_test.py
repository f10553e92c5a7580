"""Does the objective a sweep optimises predict test quality? For each experiment: every
trial's batch size, objective and test Dice, the Spearman correlation between objective
(oriented so that higher is better) and test Dice across trials, and the best trial vs
the in-sweep reference on the test part.

    python -m benchmarks.objective_vs_test runs/before runs/after [--json out.json]

Reads experiment folders offline (no Ray)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

from benchmarks.common import report, table
from results.experiment import Experiment, Trial, load_experiment


def _test_dice(trial: Trial) -> float | None:
    return trial.selected.test["dice"] if trial.selected else None


def _spearman(rows: list[dict[str, Any]], sign: int) -> float:
    if len(rows) < 3:
        return math.nan
    objective = [sign * r["objective"] for r in rows]
    return float(spearmanr(objective, [r["test_dice"] for r in rows]).statistic)


def summarise(experiment: Experiment) -> dict[str, Any]:
    sign = 1 if experiment.settings.mode == "max" else -1
    rows = [
        {
            "trial": t.name,
            "batch_size": t.config.batch_size if t.config else None,
            "state": t.state,
            "objective": t.objective,
            "test_dice": _test_dice(t),
        }
        for t in experiment.trials
    ]
    scored = [r for r in rows if r["objective"] is not None and r["test_dice"] is not None]
    finished = [r for r in scored if r["state"] == "finished"]
    return {
        "experiment": str(experiment.path),
        "objective": experiment.settings.metric,
        "split": experiment.settings.split.value,
        "trials": rows,
        "spearman_objective_vs_test_dice": _spearman(scored, sign),
        "spearman_among_finished": _spearman(finished, sign),
        "best": experiment.best.name if experiment.best else None,
        "best_test_dice": _test_dice(experiment.best) if experiment.best else None,
        "reference": experiment.reference.name if experiment.reference else None,
        "reference_test_dice": _test_dice(experiment.reference) if experiment.reference else None,
    }


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def to_text(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['experiment']}: objective {summary['objective']}, split {summary['split']}",
        table(
            ["trial", "batch", "state", "objective", "test Dice"],
            [
                [_cell(r[k]) for k in ("trial", "batch_size", "state", "objective", "test_dice")]
                for r in summary["trials"]
            ],
        ),
        f"Spearman(objective, test Dice) over trials: "
        f"{summary['spearman_objective_vs_test_dice']:+.3f} (finished trials only: "
        f"{summary['spearman_among_finished']:+.3f})",
        f"best {summary['best']}: test Dice {_cell(summary['best_test_dice'])}; in-sweep "
        f"reference {summary['reference']}: {_cell(summary['reference_test_dice'])}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", type=Path, nargs="+", help="experiment folders")
    parser.add_argument("--json", type=Path, default=None, help="save results (default: none)")
    args = parser.parse_args()
    summaries = [summarise(load_experiment(path)) for path in args.experiments]
    report({"experiments": summaries}, "\n\n".join(map(to_text, summaries)), args.json)


if __name__ == "__main__":
    main()
