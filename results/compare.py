"""Side-by-side comparison of a run's test metrics with the published reference."""

from __future__ import annotations

import math

from results.keys import ACCURACY, DICE, F1, IOU, LOSS, PRECISION, RECALL, ROC_AUC
from results.reference import PublishedReference, load_reference

# The published table's rows, in its order ("loss" is the test Dice loss).
COMPARED = (LOSS, ACCURACY, PRECISION, RECALL, F1, IOU, DICE, ROC_AUC)
# The rows set beside ours. Not the loss: the paper's is smp's batch-pooled Dice loss
# averaged over batches (it moves with batch size and scores a lesion-free batch as 0),
# ours the soft Dice loss pooled over every pixel of the part. Same name, another number.
COMPARABLE = tuple(m for m in COMPARED if m != LOSS)
LOSS_NOT_COMPARED = (
    "not compared: ours is the soft Dice loss pooled over the whole part, the paper's "
    "smp's batch Dice loss averaged over batches"
)


def deltas(test: dict[str, float], reference: PublishedReference) -> dict[str, float]:
    """ours - published, for every comparable metric (NaN where ours is missing)."""
    return {m: test.get(m, math.nan) - reference.test[m] for m in COMPARABLE}


def comparison_table(test: dict[str, float], reference: PublishedReference | None = None) -> str:
    """A plain-text table: metric, ours, published, difference; the loss last, without
    the paper's (see LOSS_NOT_COMPARED)."""
    reference = reference or load_reference()
    difference = deltas(test, reference)
    lines = [f"{'metric':<10} {'ours':>8} {'published':>10} {'diff':>8}"]
    for metric in COMPARABLE:
        lines.append(
            f"{metric:<10} {test.get(metric, math.nan):>8.4f} "
            f"{reference.test[metric]:>10.4f} {difference[metric]:>+8.4f}"
        )
    loss = test.get(LOSS, math.nan)
    lines.append(f"{'loss':<10} {loss:>8.4f} {'—':>10} {'—':>8}  ({LOSS_NOT_COMPARED})")
    return "\n".join(lines)
