"""Pixel-level segmentation metrics for binary lesion masks.

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
- normal_fp_rate: fraction of empty-mask ("normal") images with any predicted lesion pixel, NaN
  when there are none

Per-image metrics are computed on lesion images only (a non-empty reference mask): as in
nnU-Net, an empty reference makes a per-image Dice undefined (NaN), so normal images are left
out of them (normal_fp_rate covers those). Each is reduced over the lesion images, NaN when
there are none:

- dice_per_image, dice_per_image_sd, dice_per_image_median: mean, sample standard deviation
  (ddof=1, NaN with fewer than two lesion images) and median of the per-image Dice
- hd95, hd95_median: mean and median of the per-image HD95, the symmetric 95th-percentile
  Hausdorff distance in pixels at the size scored (the evaluation size); see :func:`hd95`.
  A lesion image with no predicted pixel scores the image diagonal sqrt(H^2 + W^2), more than
  any distance inside the image (the BraTS convention), so a miss counts as the worst outline
  rather than vanishing from the mean
- missed_lesion_rate: fraction of lesion images with no predicted pixel (the images that
  score the diagonal)

The soft Dice loss of a whole part, ``1 - 2 sum(p y) / (sum(p) + sum(y))`` with the sums taken
over every pixel of every image (float64), is accumulated beside the counts: like the pooled
metrics it does not depend on how the images are batched or ordered, unlike the mean of smp's
batch-pooled ``DiceLoss`` over batches (which also scores a lesion-free batch as 0).

roc_auc and average_precision are computed on a 65,536-bin histogram of the probabilities
(equal-width bins over [0, 1], probability 1.0 in the last bin; pixels within one bin are ties).
roc_auc is the trapezoidal area under the bin-wise cumulative (FPR, TPR) points; average
precision is scikit-learn's sum over thresholds of (R_n - R_{n-1}) * P_n with thresholds at the
bin boundaries. Both agree with scikit-learn to better than 1e-4 on continuous probabilities.

:class:`PixelStats` takes torch tensors on any device, or numpy arrays, and accumulates on the
batch's device: counts and histograms are exact integers wherever they are summed, so a GPU
gives the same metrics as the CPU, and nothing waits for the GPU until the metrics are read.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from results.keys import (  # the names live with the other keys; re-exported
    ACCURACY,
    AVERAGE_PRECISION,
    DICE,
    DICE_PER_IMAGE,
    DICE_PER_IMAGE_MEDIAN,
    DICE_PER_IMAGE_SD,
    F1,
    HD95,
    HD95_MEDIAN,
    IOU,
    METRIC_KEYS,
    MISSED_LESION_RATE,
    NORMAL_FP_RATE,
    PRECISION,
    RECALL,
    ROC_AUC,
)

__all__ = [
    "ACCURACY",
    "AVERAGE_PRECISION",
    "DICE",
    "DICE_PER_IMAGE",
    "DICE_PER_IMAGE_MEDIAN",
    "DICE_PER_IMAGE_SD",
    "F1",
    "HD95",
    "HD95_MEDIAN",
    "IOU",
    "METRIC_KEYS",
    "MISSED_LESION_RATE",
    "NORMAL_FP_RATE",
    "PRECISION",
    "RECALL",
    "ROC_AUC",
    "THRESHOLD_GRID",
    "PixelStats",
    "best_threshold",
    "compute_metrics",
    "hd95",
]

# The thresholds `--threshold auto` chooses from: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _ratio(num: np.ndarray, den: int) -> np.ndarray:
    """Element-wise ``num / den`` as float64, all NaN when ``den`` is 0."""
    if den == 0:
        return np.full(num.shape, np.nan)
    return num / den


def _image_axes_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-image shape with singleton axes dropped, so (N,1,H,W) matches (N,H,W)."""
    return tuple(d for d in shape[1:] if d != 1)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if values.size > 1 else math.nan


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else math.nan


def _boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 4-neighbour (6 in 3-D) outside it; outside the array is
    background, so lesion pixels on the image border are boundary."""
    return mask & ~ndimage.binary_erosion(mask)


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the boundaries of two non-empty
    bool masks, in pixels (Euclidean, pixel spacing 1): the larger of the two directed
    distances' 95th percentiles (numpy's linear interpolation), each directed distance
    being from a boundary pixel of one mask to the nearest boundary pixel of the other
    (MONAI's ``compute_hausdorff_distance(percentile=95)``). Computed on the bounding box
    of both masks plus a one-pixel margin, which changes no distance."""
    box = ndimage.find_objects((pred | truth).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    pred_edge, truth_edge = _boundary(pred[box]), _boundary(truth[box])
    to_truth = ndimage.distance_transform_edt(~truth_edge)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge)[truth_edge]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def best_threshold(
    probs: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    grid: tuple[float, ...] = THRESHOLD_GRID,
) -> float:
    """The threshold of ``grid`` with the highest pooled Dice of ``probs`` (strict ``>``)
    against ``masks`` (the lowest such threshold on a tie): `--threshold auto` calls it on
    the validation part only."""
    probs = torch.as_tensor(probs)
    truth = torch.as_tensor(masks, device=probs.device).reshape(probs.shape) != 0
    true_pixels = int(truth.sum())
    dices = []
    for threshold in grid:
        pred = probs > threshold
        tp, predicted = int((pred & truth).sum()), int(pred.sum())
        den = predicted + true_pixels
        dices.append(2 * tp / den if den else 1.0)
    return float(grid[int(np.argmax(dices))])


class PixelStats:
    """Accumulates confusion counts, probability histograms and per-image stats over batches,
    and keeps the predicted and true masks (bool, on the batch's device) for HD95."""

    def __init__(self, threshold: float = 0.5, bins: int = 2**16) -> None:
        """Set the decision ``threshold`` (strict ``>``) and the histogram resolution ``bins``."""
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.threshold = float(threshold)
        self.bins = int(bins)
        # On the device of the first batch: negatives' bins, then positives' (one bincount).
        self._hist: torch.Tensor | None = None
        self._soft: torch.Tensor | None = None  # float64: sum of p * y, sum of p + sum of y
        self._out_of_range: torch.Tensor | None = None  # any probability outside [0, 1]
        self._counts: list[torch.Tensor] = []  # per image: tp, fp, fn
        # Per batch: predicted and true masks (bool, flat) and the images' shape.
        self._masks: list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]] = []
        self._hd95: np.ndarray | None = None  # per image, computed when first read
        self._pixels = 0

    def update(self, probs: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> None:
        """Add a batch: ``probs`` in [0, 1] and binary ``masks``, first axis = images."""
        probs = torch.as_tensor(probs)
        masks = torch.as_tensor(masks, device=probs.device)
        if probs.ndim < 2 or masks.ndim < 2 or probs.shape[0] != masks.shape[0]:
            raise ValueError(
                f"expected (N, ...) arrays, got {tuple(probs.shape)} and {tuple(masks.shape)}"
            )
        if _image_axes_shape(probs.shape) != _image_axes_shape(masks.shape):
            raise ValueError(
                f"shape mismatch: probs {tuple(probs.shape)} vs masks {tuple(masks.shape)}"
            )
        if probs.numel() == 0:
            return
        if probs.dtype not in (torch.float32, torch.float64):
            probs = probs.float()
        n = probs.shape[0]
        probs = probs.reshape(n, -1)
        truth = masks.reshape(n, -1) != 0
        if self._hist is None:
            device = probs.device
            self._hist = torch.zeros(2 * self.bins, dtype=torch.int64, device=device)
            self._soft = torch.zeros(2, dtype=torch.float64, device=device)
            self._out_of_range = torch.zeros((), dtype=torch.bool, device=device)
        # Checked when the metrics are read: raising here would wait for the GPU.
        self._out_of_range |= ~((probs >= 0) & (probs <= 1)).all()
        self._soft[0] += (probs * truth).sum(dtype=torch.float64)
        self._soft[1] += probs.sum(dtype=torch.float64) + truth.sum()

        pred = probs > self.threshold
        tp_i = (pred & truth).sum(dim=1)
        pred_i = pred.sum(dim=1)
        true_i = truth.sum(dim=1)
        self._counts.append(torch.stack([tp_i, pred_i - tp_i, true_i - tp_i], dim=1))
        self._masks.append((pred, truth, _image_axes_shape(masks.shape) or (1,)))
        self._hd95 = None
        self._pixels += probs.numel()

        # Bin index floor(p * bins), with p == 1.0 folded into the last bin; positives are
        # shifted by `bins` so that one bincount fills both histograms.
        idx = (probs * self.bins).long().clamp_(0, self.bins - 1)
        idx += truth * self.bins
        self._hist += torch.bincount(idx.ravel(), minlength=2 * self.bins)

    def _checked(self) -> None:
        if self._out_of_range is not None and bool(self._out_of_range):
            raise ValueError("probabilities must lie in [0, 1] (some were outside, or NaN)")

    @property
    def neg_hist(self) -> np.ndarray:
        return self._histogram()[: self.bins]

    @property
    def pos_hist(self) -> np.ndarray:
        return self._histogram()[self.bins :]

    def _histogram(self) -> np.ndarray:
        if self._hist is None:
            return np.zeros(2 * self.bins, dtype=np.int64)
        return self._hist.cpu().numpy()

    def dice_loss(self) -> float:
        """Soft Dice loss pooled over every pixel accumulated so far (0 when both the truth
        and the probabilities are all zero)."""
        self._checked()
        if self._soft is None:
            return 0.0
        intersection, total = self._soft.tolist()
        return 1.0 - 2.0 * intersection / total if total else 0.0

    def per_image_counts(self) -> np.ndarray:
        """(N, 3) int: tp, fp, fn of every image in update order; their sums are the
        pooled counts, so a bootstrap over images can recompute the pooled metrics."""
        if not self._counts:
            return np.empty((0, 3), np.int64)
        return torch.cat(self._counts).cpu().numpy().astype(np.int64)

    def per_image_dice(self) -> np.ndarray:
        """Dice of every image in update order, NaN for images without a lesion."""
        tp, fp, fn = self.per_image_counts().T
        dice = np.full(tp.shape, np.nan)
        has_lesion = tp + fn > 0
        dice[has_lesion] = (
            2.0 * tp[has_lesion] / (2 * tp[has_lesion] + fp[has_lesion] + fn[has_lesion])
        )
        return dice

    def per_image_hd95(self) -> np.ndarray:
        """HD95 (:func:`hd95`) of every image in update order: NaN for images without a
        lesion, the image diagonal for a lesion image with no predicted pixel."""
        if self._hd95 is None:
            values = []
            for pred, truth, shape in self._masks:
                pred = pred.cpu().numpy().reshape(-1, *shape)
                truth = truth.cpu().numpy().reshape(-1, *shape)
                for p, t in zip(pred, truth, strict=True):
                    if not t.any():
                        values.append(math.nan)
                    else:
                        values.append(hd95(p, t) if p.any() else math.hypot(*shape))
            self._hd95 = np.array(values, dtype=np.float64)
        return self._hd95

    def curves(self) -> dict[str, np.ndarray]:
        """ROC and PR points, one per bin edge from threshold 1 down to 0 (``bins + 1`` points).

        Point k counts pixels whose bin lies at or above edge ``thresholds[k]`` as positive.
        Keys: ``thresholds``, ``fpr``, ``tpr``, ``precision``, ``recall``. ``fpr`` (``tpr`` and
        ``recall``) are NaN when there are no negative (positive) pixels; ``precision`` is 1.0
        where nothing is predicted.
        """
        histogram = self._histogram()
        tps = np.concatenate(([0], np.cumsum(histogram[self.bins :][::-1])))
        fps = np.concatenate(([0], np.cumsum(histogram[: self.bins][::-1])))
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
        if self._pixels == 0:
            raise ValueError("no pixels accumulated")
        self._checked()
        counts = self.per_image_counts()
        tp, fp, fn = (int(c) for c in counts.sum(axis=0))
        total = self._pixels
        tn = total - tp - fp - fn
        dice_den = 2 * tp + fp + fn
        dice = 2 * tp / dice_den if dice_den else 1.0
        histogram = self._histogram()
        if histogram[self.bins :].any() and histogram[: self.bins].any():
            curves = self.curves()
            fpr, tpr, recall = curves["fpr"], curves["tpr"], curves["recall"]
            roc_auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
            average_precision = float(np.sum(np.diff(recall) * curves["precision"][1:]))
        else:
            roc_auc = average_precision = np.nan
        lesion = counts[:, 0] + counts[:, 2] > 0  # images with a lesion
        lesion_dice = self.per_image_dice()[lesion]
        lesion_hd95 = self.per_image_hd95()[lesion]
        missed = counts[lesion, 0] + counts[lesion, 1] == 0
        normal_fp = counts[~lesion, 1] > 0
        return {
            ACCURACY: (tp + tn) / total,
            PRECISION: tp / (tp + fp) if tp + fp else float(fn == 0),
            RECALL: tp / (tp + fn) if tp + fn else float(fp == 0),
            F1: dice,
            IOU: tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            DICE: dice,
            ROC_AUC: roc_auc,
            AVERAGE_PRECISION: average_precision,
            DICE_PER_IMAGE: _mean(lesion_dice),
            DICE_PER_IMAGE_SD: _sd(lesion_dice),
            DICE_PER_IMAGE_MEDIAN: _median(lesion_dice),
            HD95: _mean(lesion_hd95),
            HD95_MEDIAN: _median(lesion_hd95),
            MISSED_LESION_RATE: _mean(missed),
            NORMAL_FP_RATE: _mean(normal_fp),
        }


def compute_metrics(
    probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """One-shot :class:`PixelStats`: a single update, then compute."""
    stats = PixelStats(threshold=threshold)
    stats.update(probs, masks)
    return stats.compute()
