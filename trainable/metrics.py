"""Pixel-level segmentation metrics for binary lesion masks (numpy only).

Pipeline, in the MONAI / segmentation_models_pytorch style: confusion counts -> one-line formulas
-> a dict keyed by the module-level name constants. :class:`PixelStats` accumulates over batches;
:func:`compute_metrics` is the one-shot wrapper.

A pixel is predicted lesion where ``prob > threshold`` (strictly greater: a probability exactly
equal to the threshold is background). Pooled metrics use the tp, fp, fn and tn counts summed
over all pixels of all images:

- accuracy = (tp + tn) / (tp + fp + fn + tn)
- precision = tp / (tp + fp)
- recall = tp / (tp + fn)
- dice = 2 tp / (2 tp + fp + fn)
- f1 = 2 precision recall / (precision + recall); on pooled counts this is the dice formula, and
  it is computed from the counts so that f1 == dice exactly
- iou = tp / (tp + fp + fn)

Zero-division rules:

- precision when tp + fp == 0: 1.0 if fn == 0 else 0.0 (nothing predicted: right only if there
  was nothing to find)
- recall when tp + fn == 0: 1.0 if fp == 0 else 0.0
- dice, f1 and iou when their denominator is 0: 1.0 (empty truth, empty prediction)
- roc_auc and average_precision: NaN when only one class of pixel is present
- dice_per_image: mean of the per-image dice over images with a lesion, NaN when there are none
  (nnU-Net: an empty reference makes Dice undefined)
- normal_fp_rate: fraction of empty-mask ("normal") images with any predicted lesion pixel, NaN
  when there are none

The soft Dice loss of a whole part, ``1 - 2 sum(p y) / (sum(p) + sum(y))`` with the sums taken
over every pixel of every image (float64), is accumulated beside the counts: like the pooled
metrics it does not depend on how the images are batched or ordered, unlike the mean of smp's
batch-pooled ``DiceLoss`` over batches (which also scores a lesion-free batch as 0).

roc_auc and average_precision are computed on a 65,536-bin histogram of the probabilities
(equal-width bins over [0, 1], probability 1.0 in the last bin; pixels within one bin are ties).
roc_auc is the trapezoidal area under the bin-wise cumulative (FPR, TPR) points; average
precision is scikit-learn's sum over thresholds of (R_n - R_{n-1}) * P_n with thresholds at the
bin boundaries. Both agree with scikit-learn to better than 1e-4 on continuous probabilities.
"""

from __future__ import annotations

import numpy as np

ACCURACY = "accuracy"
PRECISION = "precision"
RECALL = "recall"
F1 = "f1"
IOU = "iou"
DICE = "dice"
ROC_AUC = "roc_auc"
AVERAGE_PRECISION = "average_precision"
DICE_PER_IMAGE = "dice_per_image"
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
    NORMAL_FP_RATE,
)

__all__ = [
    "ACCURACY",
    "AVERAGE_PRECISION",
    "DICE",
    "DICE_PER_IMAGE",
    "F1",
    "IOU",
    "METRIC_KEYS",
    "NORMAL_FP_RATE",
    "PRECISION",
    "RECALL",
    "ROC_AUC",
    "PixelStats",
    "compute_metrics",
]


def _ratio(num: np.ndarray, den: int) -> np.ndarray:
    """Element-wise ``num / den`` as float64, all NaN when ``den`` is 0."""
    if den == 0:
        return np.full(num.shape, np.nan)
    return num / den


def _image_axes_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-image shape with singleton axes dropped, so (N,1,H,W) matches (N,H,W)."""
    return tuple(d for d in shape[1:] if d != 1)


class PixelStats:
    """Accumulates confusion counts, probability histograms and per-image stats over batches."""

    def __init__(self, threshold: float = 0.5, bins: int = 2**16) -> None:
        """Set the decision ``threshold`` (strict ``>``) and the histogram resolution ``bins``."""
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.threshold = float(threshold)
        self.bins = int(bins)
        self.tp = self.fp = self.fn = self.tn = 0
        self.pos_hist = np.zeros(self.bins, dtype=np.int64)
        self.neg_hist = np.zeros(self.bins, dtype=np.int64)
        self.soft_intersection = 0.0  # sum of p * y, float64
        self.soft_total = 0.0  # sum of p + sum of y, float64
        self._dice: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []  # per image: tp, fp, fn
        self._normal_fp: list[np.ndarray] = []

    def update(self, probs: np.ndarray, masks: np.ndarray) -> None:
        """Add a batch: ``probs`` in [0, 1] and binary ``masks``, first axis = images."""
        probs = np.asarray(probs)
        masks = np.asarray(masks)
        if probs.ndim < 2 or masks.ndim < 2 or probs.shape[0] != masks.shape[0]:
            raise ValueError(f"expected (N, ...) arrays, got {probs.shape} and {masks.shape}")
        if _image_axes_shape(probs.shape) != _image_axes_shape(masks.shape):
            raise ValueError(f"shape mismatch: probs {probs.shape} vs masks {masks.shape}")
        if probs.size == 0:
            return
        if probs.dtype not in (np.float32, np.float64):
            probs = probs.astype(np.float32)
        lo, hi = probs.min(), probs.max()
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(f"probabilities must lie in [0, 1], got range [{lo}, {hi}]")
        n = probs.shape[0]
        probs = probs.reshape(n, -1)
        truth = masks.reshape(n, -1)
        if truth.dtype != np.bool_:
            truth = truth != 0

        self.soft_intersection += float(probs[truth].sum(dtype=np.float64))
        self.soft_total += float(probs.sum(dtype=np.float64)) + int(np.count_nonzero(truth))

        pred = probs > self.threshold
        tp_i = np.count_nonzero(pred & truth, axis=1)
        pred_i = np.count_nonzero(pred, axis=1)
        true_i = np.count_nonzero(truth, axis=1)
        del pred
        tp = int(tp_i.sum())
        fp = int(pred_i.sum()) - tp
        fn = int(true_i.sum()) - tp
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += probs.size - tp - fp - fn

        self._counts.append(np.stack([tp_i, pred_i - tp_i, true_i - tp_i], axis=1))
        has_lesion = true_i > 0
        dice_i = np.full(n, np.nan)
        dice_i[has_lesion] = 2.0 * tp_i[has_lesion] / (pred_i[has_lesion] + true_i[has_lesion])
        self._dice.append(dice_i)
        self._normal_fp.append(pred_i[~has_lesion] > 0)

        # Bin index floor(p * bins), with p == 1.0 folded into the last bin; positives are shifted
        # by `bins` so that one bincount fills both histograms.
        idx = (probs * self.bins).astype(np.intp)
        np.minimum(idx, self.bins - 1, out=idx)
        np.add(idx, self.bins, out=idx, where=truth)
        counts = np.bincount(idx.ravel(), minlength=2 * self.bins)
        self.neg_hist += counts[: self.bins]
        self.pos_hist += counts[self.bins :]

    def dice_loss(self) -> float:
        """Soft Dice loss pooled over every pixel accumulated so far (0 when both the truth
        and the probabilities are all zero)."""
        if self.soft_total == 0:
            return 0.0
        return 1.0 - 2.0 * self.soft_intersection / self.soft_total

    def per_image_counts(self) -> np.ndarray:
        """(N, 3) int: tp, fp, fn of every image in update order; their sums are the
        pooled counts, so a bootstrap over images can recompute the pooled metrics."""
        return np.concatenate(self._counts) if self._counts else np.empty((0, 3), np.int64)

    def per_image_dice(self) -> np.ndarray:
        """Dice of every image in update order, NaN for images without a lesion."""
        return np.concatenate(self._dice) if self._dice else np.empty(0)

    def curves(self) -> dict[str, np.ndarray]:
        """ROC and PR points, one per bin edge from threshold 1 down to 0 (``bins + 1`` points).

        Point k counts pixels whose bin lies at or above edge ``thresholds[k]`` as positive.
        Keys: ``thresholds``, ``fpr``, ``tpr``, ``precision``, ``recall``. ``fpr`` (``tpr`` and
        ``recall``) are NaN when there are no negative (positive) pixels; ``precision`` is 1.0
        where nothing is predicted.
        """
        tps = np.concatenate(([0], np.cumsum(self.pos_hist[::-1])))
        fps = np.concatenate(([0], np.cumsum(self.neg_hist[::-1])))
        predicted = tps + fps
        precision = np.ones(predicted.shape)
        np.divide(tps, predicted, out=precision, where=predicted > 0)
        tpr = _ratio(tps, int(tps[-1]))
        return {
            "thresholds": np.linspace(1.0, 0.0, self.bins + 1),
            "fpr": _ratio(fps, int(fps[-1])),
            "tpr": tpr,
            "precision": precision,
            "recall": tpr.copy(),
        }

    def compute(self) -> dict[str, float]:
        """All :data:`METRIC_KEYS` from what has been accumulated so far."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        total = tp + fp + fn + tn
        if total == 0:
            raise ValueError("no pixels accumulated")
        dice_den = 2 * tp + fp + fn
        dice = 2 * tp / dice_den if dice_den else 1.0
        if self.pos_hist.any() and self.neg_hist.any():
            curves = self.curves()
            fpr, tpr, recall = curves["fpr"], curves["tpr"], curves["recall"]
            roc_auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
            average_precision = float(np.sum(np.diff(recall) * curves["precision"][1:]))
        else:
            roc_auc = average_precision = np.nan
        dice_i = self.per_image_dice()
        lesion_dice = dice_i[~np.isnan(dice_i)]
        normal_fp = np.concatenate(self._normal_fp)
        return {
            ACCURACY: (tp + tn) / total,
            PRECISION: tp / (tp + fp) if tp + fp else float(fn == 0),
            RECALL: tp / (tp + fn) if tp + fn else float(fp == 0),
            F1: dice,
            IOU: tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            DICE: dice,
            ROC_AUC: roc_auc,
            AVERAGE_PRECISION: average_precision,
            DICE_PER_IMAGE: float(lesion_dice.mean()) if lesion_dice.size else np.nan,
            NORMAL_FP_RATE: float(normal_fp.mean()) if normal_fp.size else np.nan,
        }


def compute_metrics(
    probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """One-shot :class:`PixelStats`: a single update, then compute."""
    stats = PixelStats(threshold=threshold)
    stats.update(probs, masks)
    return stats.compute()
