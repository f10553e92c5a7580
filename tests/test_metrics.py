"""Tests for trainable.metrics: pooled metrics vs scikit-learn, zero-division rules, curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn import metrics as skm

from results.keys import OBJECTIVES, selected
from trainable.metrics import (
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
    PixelStats,
    best_threshold,
    compute_metrics,
    hd95,
)


def _blobs(seed: int = 0, n: int = 6, size: int = 64, empty: tuple[int, ...] = (1, 4)):
    """Random elliptic lesions (images in ``empty`` have none) and a noisy sigmoid prediction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if i in empty:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(8, size - 8, 2)
            ry, rx = rng.uniform(3, 12, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    logits = 3.0 * (masks - 0.5) + rng.normal(scale=1.5, size=masks.shape)
    return 1.0 / (1.0 + np.exp(-logits)), masks


def _hand_dice(prob: np.ndarray, mask: np.ndarray) -> float:
    pred = prob > 0.5
    return 2 * np.sum(pred & mask) / (np.sum(pred) + np.sum(mask))


def test_metric_keys():
    assert METRIC_KEYS == (
        "accuracy",
        "precision",
        "recall",
        "f1",
        "iou",
        "dice",
        "roc_auc",
        "average_precision",
        "dice_per_image",
        "dice_per_image_sd",
        "dice_per_image_median",
        "hd95",
        "hd95_median",
        "missed_lesion_rate",
        "normal_fp_rate",
    )
    probs, masks = _blobs()
    assert tuple(compute_metrics(probs, masks)) == METRIC_KEYS
    # Distances and misses are minimised; a spread ranks no config.
    assert OBJECTIVES[selected(DICE_PER_IMAGE)] == "max"
    assert OBJECTIVES[selected(HD95)] == OBJECTIVES[selected(MISSED_LESION_RATE)] == "min"
    assert selected(DICE_PER_IMAGE_SD) not in OBJECTIVES


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_metrics_match_sklearn(seed):
    probs, masks = _blobs(seed)
    y, p = masks.ravel(), probs.ravel()
    pred = p > 0.5
    got = compute_metrics(probs, masks)
    expected = {
        ACCURACY: skm.accuracy_score(y, pred),
        PRECISION: skm.precision_score(y, pred),
        RECALL: skm.recall_score(y, pred),
        F1: skm.f1_score(y, pred),
        DICE: skm.f1_score(y, pred),
        IOU: skm.jaccard_score(y, pred),
        ROC_AUC: skm.roc_auc_score(y, p),
        AVERAGE_PRECISION: skm.average_precision_score(y, p),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    # Imperfect, non-trivial prediction, so the comparison above means something.
    assert 0.6 < got[ROC_AUC] < 0.99
    assert 0.2 < got[DICE] < 0.9
    assert got[F1] == got[DICE]


def test_threshold_other_than_half_matches_sklearn():
    probs, masks = _blobs(3)
    y, pred = masks.ravel(), probs.ravel() > 0.3
    got = compute_metrics(probs, masks, threshold=0.3)
    assert got[PRECISION] == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert got[RECALL] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert got[RECALL] > compute_metrics(probs, masks)[RECALL]


def test_float32_and_channel_axis_give_same_result():
    probs, masks = _blobs(4)
    probs32 = probs.astype(np.float32)
    ref = compute_metrics(probs32.astype(np.float64), masks)
    got = compute_metrics(probs32[:, None], masks.astype(np.uint8))
    assert got.keys() == ref.keys()
    for key in METRIC_KEYS:
        assert got[key] == ref[key] or (math.isnan(got[key]) and math.isnan(ref[key])), key


def test_threshold_is_strict():
    probs = np.array([[[0.5, 0.5], [0.9, 0.1]]])
    masks = np.array([[[1, 0], [1, 0]]])
    got = compute_metrics(probs, masks)
    # 0.5 is background: tp=1 (0.9), fn=1 (first 0.5), fp=0, tn=2.
    assert got[RECALL] == 0.5
    assert got[PRECISION] == 1.0
    assert got[ACCURACY] == 0.75
    assert got[DICE] == pytest.approx(2 / 3)
    nudged = compute_metrics(np.nextafter(probs, 1.0), masks)
    assert nudged[RECALL] == 1.0
    assert nudged[PRECISION] == pytest.approx(2 / 3)


def test_hand_computed_example():
    probs = np.array([[[0.9, 0.6], [0.4, 0.1]]])
    masks = np.array([[[True, False], [True, False]]])
    got = compute_metrics(probs, masks)
    # tp=1 (0.9), fp=1 (0.6), fn=1 (0.4), tn=1 (0.1).
    assert got[ACCURACY] == 0.5
    assert got[PRECISION] == 0.5
    assert got[RECALL] == 0.5
    assert got[F1] == 0.5
    assert got[DICE] == 0.5
    assert got[IOU] == pytest.approx(1 / 3, abs=1e-15)
    # Positive/negative pairs ranked right: (0.9,0.6) (0.9,0.1) (0.4,0.1) -> 3 of 4.
    assert got[ROC_AUC] == pytest.approx(0.75, abs=1e-15)
    # Thresholds 0.9: R=1/2 P=1; 0.6: R=1/2 P=1/2; 0.4: R=1 P=2/3.
    assert got[AVERAGE_PRECISION] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-15)
    assert got[DICE_PER_IMAGE] == 0.5
    assert math.isnan(got[NORMAL_FP_RATE])


def test_hand_computed_curves_with_few_bins():
    stats = PixelStats(bins=4)
    stats.update(np.array([[[0.9, 0.6], [0.4, 0.1]]]), np.array([[[1, 0], [1, 0]]]))
    curves = stats.curves()
    np.testing.assert_allclose(curves["thresholds"], [1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_array_equal(curves["fpr"], [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_array_equal(curves["tpr"], [0.0, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(curves["recall"], curves["tpr"])
    np.testing.assert_allclose(curves["precision"], [1.0, 1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_array_equal(stats.pos_hist, [0, 1, 0, 1])
    np.testing.assert_array_equal(stats.neg_hist, [1, 0, 1, 0])


def test_probability_one_lands_in_last_bin():
    stats = PixelStats(bins=4)
    stats.update(np.array([[1.0, 0.0, 0.99, 0.75]]), np.array([[1, 0, 0, 1]]))
    np.testing.assert_array_equal(stats.pos_hist, [0, 0, 0, 2])
    np.testing.assert_array_equal(stats.neg_hist, [1, 0, 0, 1])
    got = compute_metrics(np.array([[1.0, 0.0]]), np.array([[1, 0]]))
    assert got[ROC_AUC] == 1.0
    assert got[AVERAGE_PRECISION] == 1.0


def test_precision_zero_division():
    nothing_predicted = np.full((2, 3, 3), 0.2)
    assert compute_metrics(nothing_predicted, np.zeros((2, 3, 3)))[PRECISION] == 1.0
    masks = np.zeros((2, 3, 3))
    masks[0, 1, 1] = 1
    assert compute_metrics(nothing_predicted, masks)[PRECISION] == 0.0


def test_recall_zero_division():
    empty = np.zeros((2, 3, 3))
    assert compute_metrics(np.full((2, 3, 3), 0.2), empty)[RECALL] == 1.0
    probs = np.full((2, 3, 3), 0.2)
    probs[1, 0, 0] = 0.8
    assert compute_metrics(probs, empty)[RECALL] == 0.0


def test_overlap_metrics_zero_division():
    empty = np.zeros((2, 3, 3))
    got = compute_metrics(np.full((2, 3, 3), 0.2), empty)
    assert got[DICE] == got[F1] == got[IOU] == 1.0
    # A false positive alone gives a non-zero denominator, hence 0.
    probs = np.full((2, 3, 3), 0.2)
    probs[0, 2, 2] = 0.7
    got = compute_metrics(probs, empty)
    assert got[DICE] == got[F1] == got[IOU] == 0.0


@pytest.mark.parametrize("fill", [0, 1])
def test_ranking_metrics_nan_with_one_class(fill):
    probs = np.linspace(0.0, 1.0, 18).reshape(2, 3, 3)
    got = compute_metrics(probs, np.full((2, 3, 3), fill))
    assert math.isnan(got[ROC_AUC])
    assert math.isnan(got[AVERAGE_PRECISION])


def test_per_image_metrics_nan_when_undefined():
    probs = np.full((2, 3, 3), 0.2)
    no_lesion = compute_metrics(probs, np.zeros((2, 3, 3)))
    for key in (DICE_PER_IMAGE, DICE_PER_IMAGE_SD, DICE_PER_IMAGE_MEDIAN, HD95, HD95_MEDIAN):
        assert math.isnan(no_lesion[key]), key
    assert math.isnan(no_lesion[MISSED_LESION_RATE])
    assert math.isnan(compute_metrics(probs, np.ones((2, 3, 3)))[NORMAL_FP_RATE])
    one_lesion = compute_metrics(probs, np.eye(3)[None].repeat(2, 0) * [[[1]], [[0]]])
    assert math.isnan(one_lesion[DICE_PER_IMAGE_SD])  # a sample SD needs two images
    assert one_lesion[DICE_PER_IMAGE] == one_lesion[DICE_PER_IMAGE_MEDIAN] == 0.0


def test_dice_per_image_and_normal_fp_rate():
    probs = np.full((5, 4, 4), 0.1)
    masks = np.zeros((5, 4, 4), dtype=bool)
    masks[0, :2, :2] = True  # lesion, half found plus one false positive
    probs[0, 0, :2] = 0.9
    probs[0, 3, 3] = 0.9
    probs[1, 2, 2] = 0.6  # normal image with a false positive
    masks[2, 1:3, 1:3] = True  # lesion, nothing predicted: dice 0
    masks[3, :, :] = True  # lesion, fully found
    probs[3] = 0.95
    # image 4: normal, nothing predicted
    stats = PixelStats()
    stats.update(probs, masks)
    dice_0 = 2 * 2 / (3 + 4)
    assert dice_0 == pytest.approx(_hand_dice(probs[0], masks[0]))
    np.testing.assert_allclose(stats.per_image_dice(), [dice_0, np.nan, 0.0, 1.0, np.nan])
    got = stats.compute()
    assert got[DICE_PER_IMAGE] == pytest.approx((dice_0 + 0.0 + 1.0) / 3)
    mean = (dice_0 + 1) / 3
    sd = math.sqrt(((dice_0 - mean) ** 2 + mean**2 + (1 - mean) ** 2) / 2)  # ddof=1
    assert got[DICE_PER_IMAGE_SD] == pytest.approx(sd)
    assert got[DICE_PER_IMAGE_MEDIAN] == pytest.approx(dice_0)
    assert got[NORMAL_FP_RATE] == 0.5
    # HD95 of image 0: predicted boundary (0,0) (0,1) (3,3), true (0,0) (0,1) (1,0) (1,1).
    # Predicted -> true: 0, 0, sqrt(8); 95th percentile 0.9 sqrt(8). True -> predicted:
    # 0, 0, 1, 1; 95th percentile 1. Image 2 is missed: the diagonal sqrt(32). Image 3: 0.
    hd_0 = 0.9 * math.sqrt(8)
    np.testing.assert_allclose(
        stats.per_image_hd95(), [hd_0, np.nan, math.sqrt(32), 0.0, np.nan], rtol=1e-12
    )
    assert got[HD95] == pytest.approx((hd_0 + math.sqrt(32) + 0.0) / 3)
    assert got[HD95_MEDIAN] == pytest.approx(hd_0)
    assert got[MISSED_LESION_RATE] == pytest.approx(1 / 3)
    # Pooled dice differs: it weighs images by pixel count.
    assert got[DICE] == pytest.approx(2 * (2 + 16) / (2 * (2 + 16) + 2 + 6))


def test_dice_per_image_matches_hand_loop_on_blobs():
    probs, masks = _blobs(5, empty=(0, 3))
    got = compute_metrics(probs, masks)
    dices = [_hand_dice(p, m) for p, m in zip(probs, masks, strict=True) if m.any()]
    assert len(dices) == 4
    assert got[DICE_PER_IMAGE] == pytest.approx(np.mean(dices), abs=1e-12)
    normal_fp = [bool((p > 0.5).any()) for p, m in zip(probs, masks, strict=True) if not m.any()]
    assert got[NORMAL_FP_RATE] == np.mean(normal_fp)


def test_hd95_hand_computed():
    truth = np.zeros((8, 12), dtype=bool)
    truth[0, :10] = True  # a line of 10 pixels: every pixel is boundary
    pred = truth.copy()
    pred[4, 0] = True  # one pixel 4 away: 10 distances of 0 and one of 4
    # 95th percentile of 11 values: halfway between the 10th and 11th, 0 and 4.
    assert hd95(pred, truth) == hd95(truth, pred) == 2.0
    one, other = np.zeros((8, 12), bool), np.zeros((8, 12), bool)
    one[0, 0], other[3, 4] = True, True
    assert hd95(one, other) == 5.0
    assert hd95(truth, truth) == 0.0


def _hand_hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """Boundaries by 4-neighbours on a zero-padded copy, distances by brute force."""

    def boundary(mask):
        padded = np.pad(mask, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(mask & ~inner)

    distances = cdist(boundary(pred), boundary(truth))
    return max(np.percentile(distances.min(1), 95), np.percentile(distances.min(0), 95))


def test_hd95_matches_brute_force_on_blobs():
    probs, masks = _blobs(3, empty=(2,))
    probs[4] = 0.0  # a missed lesion
    masks[5, :, :3] = True  # a lesion on the image border
    stats = PixelStats()
    stats.update(probs, masks)
    expected = [
        np.nan if not m.any() else _hand_hd95(p > 0.5, m) if (p > 0.5).any() else math.hypot(64, 64)
        for p, m in zip(probs, masks, strict=True)
    ]
    assert math.isnan(expected[2]) and expected[4] == math.hypot(64, 64)
    np.testing.assert_allclose(stats.per_image_hd95(), expected, rtol=1e-12)
    got = stats.compute()
    assert got[HD95] == pytest.approx(np.nanmean(expected))
    assert got[MISSED_LESION_RATE] == pytest.approx(1 / 5)


def test_best_threshold_maximises_pooled_dice_on_the_grid():
    probs = np.array([[[0.9, 0.6], [0.3, 0.1]]])
    masks = np.array([[[1, 1], [0, 0]]])
    # Dice 0.8 up to 0.25 (0.3 predicted), 1.0 from 0.30 (strict >) to 0.55, 2/3 above.
    assert best_threshold(probs, masks) == 0.3
    assert best_threshold(probs, masks, grid=(0.2, 0.7)) == 0.2
    assert best_threshold(torch.from_numpy(probs), torch.from_numpy(masks)) == 0.3


def test_batches_equal_one_shot():
    probs, masks = _blobs(6)
    one_shot = PixelStats()
    one_shot.update(probs, masks)
    batched = PixelStats()
    for lo, hi in [(0, 1), (1, 3), (3, 6)]:
        batched.update(probs[lo:hi], masks[lo:hi])
    a, b = one_shot.compute(), batched.compute()
    for key in METRIC_KEYS:
        assert a[key] == pytest.approx(b[key], abs=1e-12, nan_ok=True), key
    np.testing.assert_array_equal(one_shot.per_image_dice(), batched.per_image_dice())
    np.testing.assert_array_equal(one_shot.per_image_hd95(), batched.per_image_hd95())
    for name, curve in one_shot.curves().items():
        np.testing.assert_array_equal(curve, batched.curves()[name], err_msg=name)
    assert a == pytest.approx(compute_metrics(probs, masks), nan_ok=True)


def test_curves_shape_monotone_and_area():
    probs, masks = _blobs(7)
    stats = PixelStats()
    stats.update(probs, masks)
    curves = stats.curves()
    fpr, tpr = curves["fpr"], curves["tpr"]
    assert all(len(c) == stats.bins + 1 for c in curves.values())
    assert np.all(np.diff(curves["thresholds"]) < 0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert area == pytest.approx(stats.compute()[ROC_AUC], abs=1e-12)
    assert curves["precision"][0] == 1.0
    assert curves["precision"][-1] == pytest.approx(masks.mean())
    assert np.all((curves["precision"] >= 0) & (curves["precision"] <= 1))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_metrics(np.full((1, 2, 2), 1.5), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_metrics(np.full((1, 2, 2), np.nan), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="no pixels"):
        PixelStats().compute()
    with pytest.raises(ValueError, match="bins"):
        PixelStats(bins=0)


def _stats_on(device: str, probs: np.ndarray, masks: np.ndarray) -> PixelStats:
    stats = PixelStats()
    for start in range(0, len(probs), 3):  # batches of 3, as an evaluation feeds them
        stats.update(
            torch.from_numpy(probs[start : start + 3]).to(device),
            torch.from_numpy(masks[start : start + 3]).to(device),
        )
    return stats


def _random_part(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((8, 32, 32), dtype=np.uint8)
    masks[:6, 8:20, 10:24] = 1  # six lesion images, two lesion-free
    probs = np.clip(masks * 0.6 + rng.normal(0.2, 0.25, masks.shape), 0, 1).astype(np.float32)
    return probs, masks


def test_tensors_give_what_arrays_give():
    probs, masks = _random_part()
    from_arrays = PixelStats()
    for start in range(0, len(probs), 3):
        from_arrays.update(probs[start : start + 3], masks[start : start + 3])
    from_tensors = _stats_on("cpu", probs, masks)
    assert from_tensors.compute() == from_arrays.compute()
    assert from_tensors.dice_loss() == from_arrays.dice_loss()
    np.testing.assert_array_equal(from_tensors.per_image_counts(), from_arrays.per_image_counts())


@pytest.mark.gpu
def test_statistics_accumulated_on_the_gpu_equal_the_cpu_ones():
    probs, masks = _random_part()
    on_gpu, on_cpu = _stats_on("cuda", probs, masks), _stats_on("cpu", probs, masks)
    assert on_gpu.compute() == on_cpu.compute()  # integer counts and histograms: exact
    assert on_gpu.dice_loss() == pytest.approx(on_cpu.dice_loss(), abs=1e-12)  # float64 sums
    np.testing.assert_array_equal(on_gpu.per_image_counts(), on_cpu.per_image_counts())
