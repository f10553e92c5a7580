"""Names of the values a trial reports each epoch, shared by the trainable, the Tuner
and the reporter so that the name reported and the name optimised cannot drift apart."""

from __future__ import annotations

from trainable.metrics import METRIC_KEYS

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
HELDOUT_LOSS = "heldout_loss"  # validation part, or test part under the reference protocol
COMBINED_LOSS = "combined_loss"
BEST_COMBINED_LOSS = "best_combined_loss"  # the default objective (minimised)
BEST_EPOCH = "best_epoch"
LR = "lr"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_SECOND = "images_per_second"
TEST_LOSS = "test_loss"  # of the best-so-far model


def on_heldout(metric: str) -> str:
    return f"heldout_{metric}"


def on_test(metric: str) -> str:
    return f"test_{metric}"


HELDOUT_METRICS = tuple(on_heldout(m) for m in METRIC_KEYS)
TEST_METRICS = tuple(on_test(m) for m in METRIC_KEYS)
# Every result carries exactly these keys, every epoch (progress.csv fixes its columns
# from the first report).
REPORTED = (
    EPOCH,
    TRAIN_LOSS,
    HELDOUT_LOSS,
    COMBINED_LOSS,
    BEST_COMBINED_LOSS,
    BEST_EPOCH,
    LR,
    EPOCH_SECONDS,
    IMAGES_PER_SECOND,
    *HELDOUT_METRICS,
    TEST_LOSS,
    *TEST_METRICS,
)
