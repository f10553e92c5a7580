"""Side-by-side comparison of a run's test metrics with the published reference."""

from __future__ import annotations

import math

from results.reference import PublishedReference, load_reference

# The published table's rows, in its order ("loss" is the test Dice loss).
COMPARED = ("loss", "accuracy", "precision", "recall", "f1", "iou", "dice", "roc_auc")


def deltas(test: dict[str, float], reference: PublishedReference) -> dict[str, float]:
    """ours - published, for every metric the table reports (NaN where ours is missing)."""
    return {m: test.get(m, math.nan) - reference.test[m] for m in COMPARED}


def comparison_table(test: dict[str, float], reference: PublishedReference | None = None) -> str:
    """A plain-text table: metric, ours, published, difference."""
    reference = reference or load_reference()
    difference = deltas(test, reference)
    lines = [f"{'metric':<10} {'ours':>8} {'published':>10} {'diff':>8}"]
    for metric in COMPARED:
        lines.append(
            f"{metric:<10} {test.get(metric, math.nan):>8.4f} "
            f"{reference.test[metric]:>10.4f} {difference[metric]:>+8.4f}"
        )
    return "\n".join(lines)
