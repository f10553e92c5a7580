"""What a trial records of an epoch: the metrics it reports every epoch (exactly
`keys.REPORTED`), and the selected model's records (metrics.json, selection.npz)."""

from __future__ import annotations

import math

import numpy as np

from results import keys
from results.keys import METRIC_KEYS
from results.layout import model_files
from results.records import FoldObjective, Selected, SelectionArrays
from trainable.engine import EpochReport
from trainable.splits import Split
from trainable.trial_setup import TrialSetup


def objective_value(report: EpochReport, objective: str) -> float:
    if objective == keys.BEST_COMBINED_LOSS:
        return report.best_combined_loss
    return report.selected_heldout[objective.removeprefix(keys.selected(""))]


def to_tune_metrics(report: EpochReport, objective: str) -> dict[str, float]:
    """Exactly `keys.REPORTED`, every epoch."""
    fold_values = [objective_value(fold, objective) for fold in report.folds]
    metrics = {
        # The sample SD (ddof=1): the folds are a sample of the splits the data allows.
        keys.OBJECTIVE_FOLD_STD: float(np.std(fold_values, ddof=1)) if fold_values else math.nan,
        keys.EPOCH: report.epoch,
        keys.TRAIN_LOSS: report.train_loss,
        keys.HELDOUT_LOSS: report.heldout_loss,
        keys.COMBINED_LOSS: report.combined_loss,
        keys.BEST_COMBINED_LOSS: report.best_combined_loss,
        keys.BEST_EPOCH: report.best_epoch,
        keys.SELECTED_LOSS: report.selected_heldout[keys.LOSS],
        keys.LR: report.lr,
        keys.EPOCH_SECONDS: report.seconds,
        keys.TRAIN_SECONDS: report.train_seconds,
        keys.IMAGES_PER_SECOND: report.images_per_second,
        keys.PEAK_GPU_BYTES: report.peak_gpu_bytes,
        keys.TEST_LOSS: report.test_loss,
    }
    for m in METRIC_KEYS:
        metrics[keys.on_heldout(m)] = report.heldout[m]
        metrics[keys.selected(m)] = report.selected_heldout[m]
        metrics[keys.on_test(m)] = report.test.get(m, math.nan)
    return {k: metrics[k] for k in keys.REPORTED}


def selection_record(
    report: EpochReport, setup: TrialSetup, splits: list[Split], eval_size: int
) -> Selected:
    """metrics.json: the selected epoch, its held-out and test metrics, and the protocol
    behind them; with K folds, each fold's too."""
    split = splits[0]
    if setup.select_on_test:
        selection = "held-out = test part (reference protocol; optimistic)"
    elif setup.folds > 1:
        selection = f"validation folds ({setup.folds}-fold cross-validation; test part locked)"
    else:
        selection = "validation part (test part locked)"
    counts = {"train": len(split.train), "validation": len(split.validation)}
    if setup.folds > 1:
        counts = {"cross-validated": len(split.train) + len(split.validation)}
    rules = {
        "epoch_rule": (
            f"lowest {setup.base.selection_train_weight:g} x train loss + "
            f"{1 - setup.base.selection_train_weight:g} x held-out loss"
        ),
        keys.HELDOUT_LOSS: "soft Dice loss pooled over every pixel of the part",
        "threshold": (
            "chosen on the validation part: the highest pooled Dice on 0.05, 0.10, ..., "
            "0.95 (the lowest on a tie), for the held-out and test metrics"
            if setup.choose_threshold
            else "fixed (the config's)"
        ),
        "evaluation_size": eval_size,
        "folds": setup.folds,
    }
    objective, per_fold = None, ()
    if report.folds:
        values = [objective_value(fold, setup.objective) for fold in report.folds]
        objective = FoldObjective(
            metric=setup.objective,
            per_fold=tuple(values),
            mean=float(np.mean(values)),
            std=float(np.std(values, ddof=1)),  # sample SD, as reported every epoch
        )
        per_fold = tuple(
            {
                "fold": k,
                "selected_epoch": fold.best_epoch,
                "threshold": fold.threshold,
                keys.COMBINED_LOSS: fold.best_combined_loss,
                "heldout": fold.selected_heldout,
                keys.TEST_LOSS: fold.test_loss,
                "test": fold.test,
            }
            for k, fold in enumerate(report.folds)
        )
    return Selected(
        epoch=report.best_epoch,
        selection=selection,
        split=split.policy.value,
        split_seed=split.seed,
        counts={**counts, "test": len(split.test)},
        combined_loss=report.best_combined_loss,
        test={keys.LOSS: report.test_loss, **report.test},
        folds=objective,
        models=tuple(model_files(setup.folds)),
        heldout=report.selected_heldout,
        threshold=report.threshold,
        rules=rules,
        per_fold=per_fold,
    )


def selection_arrays(report: EpochReport, names: list[str], groups: np.ndarray) -> SelectionArrays:
    """What the reporter needs about the selected model on the test part: ROC/PR curves,
    per-image Dice and the predicted masks, and each image's near-duplicate group (a
    bootstrap of the test part resamples whole groups)."""
    assert report.test_stats is not None and report.test_predictions is not None
    curves = report.test_stats.curves()
    # 65,537 curve points are more than a plot needs; keep about a thousand.
    step = max(1, len(curves["fpr"]) // 1000)
    return SelectionArrays(
        epoch=report.epoch,
        names=tuple(names),
        per_image_dice=report.test_stats.per_image_dice(),
        per_image_counts=report.test_stats.per_image_counts(),
        predictions=report.test_predictions,
        curves={name: values[::step] for name, values in curves.items()},
        groups=np.asarray(groups, dtype=np.int64),
        per_image_hd95=report.test_stats.per_image_hd95(),
    )
