"""Names of the values a trial reports each epoch, shared by the trainable, the Tuner
and the reporter so that the name reported and the name optimised cannot drift apart;
and the objectives a sweep may rank by, each with its direction (lower or higher is
better: `LOWER_IS_BETTER`, `OBJECTIVES`, `best_first`, `rank_key`)."""

from __future__ import annotations

# The pixel metrics (trainable.metrics computes them), by name.
ACCURACY = "accuracy"
PRECISION = "precision"
RECALL = "recall"
F1 = "f1"
IOU = "iou"
DICE = "dice"
ROC_AUC = "roc_auc"
AVERAGE_PRECISION = "average_precision"
# Per lesion image (images whose reference mask is not empty), then reduced over them.
DICE_PER_IMAGE = "dice_per_image"  # mean
DICE_PER_IMAGE_SD = "dice_per_image_sd"  # sample standard deviation (ddof=1)
DICE_PER_IMAGE_MEDIAN = "dice_per_image_median"
HD95 = "hd95"  # mean 95th-percentile Hausdorff distance, pixels at the evaluation size
HD95_MEDIAN = "hd95_median"
MISSED_LESION_RATE = "missed_lesion_rate"  # lesion images with no predicted pixel
NORMAL_FP_RATE = "normal_fp_rate"

METRIC_KEYS: tuple[str, ...] = (
    ACCURACY,
    PRECISION,
    RECALL,
    F1,
    IOU,
    DICE,
    ROC_AUC,
    AVERAGE_PRECISION,
    DICE_PER_IMAGE,
    DICE_PER_IMAGE_SD,
    DICE_PER_IMAGE_MEDIAN,
    HD95,
    HD95_MEDIAN,
    MISSED_LESION_RATE,
    NORMAL_FP_RATE,
)

# The Dice loss pooled over a part, recorded beside the metrics of that part.
LOSS = "loss"
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
HELDOUT_LOSS = "heldout_loss"  # validation part, or test part under the reference protocol
COMBINED_LOSS = "combined_loss"
BEST_COMBINED_LOSS = "best_combined_loss"  # the selected epoch's combined loss
BEST_EPOCH = "best_epoch"
LR = "lr"
EPOCH_SECONDS = "epoch_seconds"
TRAIN_SECONDS = "train_seconds"  # of the epoch's seconds, those training (the rest evaluates)
IMAGES_PER_SECOND = "images_per_second"
PEAK_GPU_BYTES = "peak_gpu_bytes"  # the trial's peak allocated GPU memory so far; NaN on a CPU
TEST_LOSS = "test_loss"  # of the best-so-far model
# Tune's own keys in each result: results so far (a trial reports once an epoch, so its
# epochs run) and the seconds it has trained.
ITERATION = "training_iteration"
TIME_TOTAL = "time_total_s"


def on_heldout(metric: str) -> str:
    return f"heldout_{metric}"


def on_test(metric: str) -> str:
    return f"test_{metric}"


def selected(metric: str) -> str:
    """The held-out value of the selected (best-so-far) model: what configs are ranked by."""
    return f"selected_heldout_{metric}"


SELECTED_LOSS = selected(LOSS)
SELECTED_METRICS = tuple(selected(m) for m in METRIC_KEYS)

# The objectives a sweep may rank configs by, with their direction: the selected model's
# held-out values (never the test part's), or the combined loss with its training term.
# A spread describes a model but ranks none (a uniformly poor model has a small one).
LOWER_IS_BETTER = {LOSS, HD95, HD95_MEDIAN, MISSED_LESION_RATE, NORMAL_FP_RATE}
NOT_OBJECTIVES = {DICE_PER_IMAGE_SD}
OBJECTIVES: dict[str, str] = {
    **{
        selected(m): "min" if m in LOWER_IS_BETTER else "max"
        for m in (LOSS, *METRIC_KEYS)
        if m not in NOT_OBJECTIVES
    },
    BEST_COMBINED_LOSS: "min",
}
DEFAULT_OBJECTIVE = selected(DICE)


def best_first(mode: str) -> int:
    """The sign that sorts an objective's values best first: +1 for "min", -1 for "max"."""
    return 1 if mode == "min" else -1


def rank_key(value: float, mode: str, order: int) -> tuple[float, int]:
    """What ranks trials and candidates, best first: the value in the objective's
    direction, a tie going to the lower `order` (the trial number, the candidate listed
    first)."""
    return best_first(mode) * value, order


def best_is(mode: str) -> str:
    """Which end of an objective's values is best, in words."""
    return "lowest" if best_first(mode) > 0 else "highest"


# Cross-validation: the objective's standard deviation over the folds (NaN with one split).
OBJECTIVE_FOLD_STD = "objective_fold_std"


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
    SELECTED_LOSS,
    *SELECTED_METRICS,
    OBJECTIVE_FOLD_STD,
    LR,
    EPOCH_SECONDS,
    TRAIN_SECONDS,
    IMAGES_PER_SECOND,
    PEAK_GPU_BYTES,
    *HELDOUT_METRICS,
    TEST_LOSS,
    *TEST_METRICS,
)
