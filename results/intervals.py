"""Intervals that respect the data: the one place `report`, `confirm` and a sweep's final
round get their intervals from.

Three kinds of noise move a test number, and every interval says which it covers:

- the test images. A bootstrap resamples them, and it resamples **whole near-duplicate
  groups** (BUSI holds near-duplicates: two images of one lesion are one draw from the
  population, not two, and resampling them singly makes the interval too narrow). Every
  run scored on the same test part is resampled with the same draws, so a difference of
  two configs is paired by image, as it should be.
- the training seed: the spread of the runs of one config. Two configs' runs that share a
  seed are **not** paired (a seed means nothing across configs: the same number draws
  different weights and batches for another config), so a difference of configs is a
  difference of their means, each with its own spread (Welch).
- the split, with repeated splits: the spread of the per-split results.

On one split the variances add (seeds: sample variance of the runs over their count, each
config; test images: the bootstrap variance of the difference of the configs' mean over
runs), with Welch-Satterthwaite degrees of freedom (the bootstrap part counts as known).
Over several splits the per-split results are averaged, and the variance is the larger of
the two estimates: the spread between splits (K - 1 degrees of freedom), or the sum of
the within-split parts. Pure NumPy and SciPy: no Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from results.keys import DICE, DICE_PER_IMAGE, F1, IOU, LOWER_IS_BETTER, PRECISION, RECALL

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
BETTER, WORSE, UNDECIDED = "better", "worse", "not distinguishable"
# Metrics a bootstrap can recompute on resampled images: pooled from each image's tp, fp,
# fn (selection.npz's per_image_counts), or the mean per-image Dice.
RESAMPLED = (DICE, F1, IOU, PRECISION, RECALL, DICE_PER_IMAGE)


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # NaN: no interval (one run and nothing to resample)
    high: float
    n: int  # the runs behind the mean (of the first config, for a difference)
    covers: str = ""  # the noise the interval includes, in words


@dataclass(frozen=True)
class Scores:
    """One run's numbers on one split's test part: what an interval needs of it."""

    split_seed: int
    test: dict[str, float]  # "loss" and the metric keys, as metrics.json records them
    names: tuple[str, ...] = ()  # the test images, in the order of the arrays below
    groups: np.ndarray | None = None  # near-duplicate group id per image; None: unknown
    counts: np.ndarray | None = None  # (N, 3) tp, fp, fn per image
    per_image_dice: np.ndarray | None = None  # NaN for images without a lesion


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval of independent values; NaN bounds under two values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    mean = float(x.mean()) if x.size else math.nan
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, int(x.size))
    from scipy import stats  # see estimate

    half = stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(mean, float(mean - half), float(mean + half), int(x.size), "runs")


def group_summary(groups: np.ndarray | None, images: int) -> dict[str, int] | None:
    """How the test images fall into near-duplicate groups: images, groups, and the images
    that share their group with another; None when the groups were not recorded."""
    if groups is None:
        return None
    _, sizes = np.unique(groups, return_counts=True)
    return {"images": images, "groups": int(sizes.size), "shared": int(sizes[sizes > 1].sum())}


def draws(groups: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED):
    """Each image's group (0..G-1), and (resamples, G): how often each resample draws each
    group (G draws with replacement): a group's images come and go together."""
    _, index = np.unique(groups, return_inverse=True)
    count = int(index.max()) + 1 if index.size else 0
    rng = np.random.default_rng(seed)
    return index, rng.multinomial(count, np.full(count, 1 / max(count, 1)), size=resamples)


def _from_counts(metric: str, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """trainable.metrics' pooled formulas and zero-division rules, on arrays of counts."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric in (DICE, F1):
            den = 2 * tp + fp + fn
            return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)
        if metric == IOU:
            den = tp + fp + fn
            return np.where(den > 0, tp / np.maximum(den, 1), 1.0)
        if metric == PRECISION:
            return np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), (fn == 0).astype(float))
        return np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), (fp == 0).astype(float))


def resampled(metric: str, scores: Scores, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The run's metric on every resample of its test part (`draws`)."""
    groups = weights.shape[1]
    if metric == DICE_PER_IMAGE:
        dice = scores.per_image_dice
        lesion = ~np.isnan(dice)
        total = np.bincount(index[lesion], weights=dice[lesion], minlength=groups)
        images = np.bincount(index[lesion], minlength=groups)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (weights @ total) / (weights @ images)
    summed = np.zeros((groups, 3))
    np.add.at(summed, index, scores.counts)
    tp, fp, fn = (weights @ summed).T
    return _from_counts(metric, tp, fp, fn)


def _resamplable(metric: str, runs: Sequence[Scores]) -> bool:
    """Whether every run holds the per-image records the metric is recomputed from, on
    the same test images."""
    if metric not in RESAMPLED or not runs:
        return False
    field = "per_image_dice" if metric == DICE_PER_IMAGE else "counts"
    names = runs[0].names
    return all(getattr(r, field) is not None and r.names == names and names for r in runs)


@dataclass(frozen=True)
class _Part:
    """One split's estimate: its value and its variance by source."""

    value: float
    seeds: list[tuple[float, int]]  # (variance of a config's mean, its degrees of freedom)
    test: float | None  # bootstrap variance over test groups (or images); None: not known
    grouped: bool  # the bootstrap resampled groups (False: single images, none recorded)
    runs: int

    @property
    def variance(self) -> float:
        parts = [v for v, _ in self.seeds] + ([self.test] if self.test is not None else [])
        return float(sum(parts)) if parts else math.nan


def _finite(runs: Sequence[Scores], metric: str) -> list[Scores]:
    return [r for r in runs if math.isfinite(r.test.get(metric, math.nan))]


def _part(metric: str, a: list[Scores], b: list[Scores] | None, resamples: int) -> _Part:
    configs = [a] if b is None else [a, b]
    means = [float(np.mean([r.test[metric] for r in runs])) for runs in configs]
    seeds = [
        (float(np.var([r.test[metric] for r in runs], ddof=1)) / len(runs), len(runs) - 1)
        for runs in configs
        if len(runs) > 1
    ]
    everyone = [r for runs in configs for r in runs]
    test, grouped = None, False
    if _resamplable(metric, everyone):
        grouped = all(r.groups is not None for r in everyone)
        ids = everyone[0].groups if grouped else np.arange(len(everyone[0].names))
        index, weights = draws(ids, resamples)
        per_config = [
            np.mean([resampled(metric, r, index, weights) for r in runs], axis=0)
            for runs in configs
        ]
        values = per_config[0] - (per_config[1] if b is not None else 0)
        # A resample can draw no lesion image (dice_per_image undefined): left out.
        values = values[np.isfinite(values)]
        test = float(np.var(values, ddof=1)) if values.size > 1 else None
    value = means[0] - (means[1] if b is not None else 0)
    return _Part(value, seeds, test, grouped, len(a))


def _satterthwaite(variance: float, seeds: list[tuple[float, int]], scale: float = 1.0) -> float:
    """Welch-Satterthwaite degrees of freedom; the bootstrap part counts as known."""
    denominator = sum((scale * v) ** 2 / df for v, df in seeds if df > 0)
    return variance**2 / denominator if denominator > 0 else math.inf


def _words(parts: list[_Part], between: bool) -> str:
    if between:
        return f"the spread between {len(parts)} splits (seeds and test images within it)"
    sources = []
    if any(p.seeds for p in parts):
        sources.append("training seeds")
    if any(p.test is not None for p in parts):
        grouped = all(p.grouped for p in parts if p.test is not None)
        sources.append("test-image groups" if grouped else "single test images (no groups)")
    if not any(p.seeds for p in parts) and sources:
        sources.append("not seeds (one run per config)")
    return ", ".join(sources)


def estimate(
    metric: str,
    a: Sequence[Scores],
    b: Sequence[Scores] | None = None,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
) -> Interval:
    """The mean over runs of one config's test `metric` (or, with `b`, the difference of
    two configs' means, a - b), with its interval over everything measured: test-image
    groups, training seeds and splits. Runs are grouped by their split; a difference
    uses the splits both configs ran on."""
    by_split: dict[int, tuple[list[Scores], list[Scores]]] = {}
    for seed in sorted({r.split_seed for r in a}):
        ours = _finite([r for r in a if r.split_seed == seed], metric)
        theirs = None if b is None else _finite([r for r in b if r.split_seed == seed], metric)
        if ours and (theirs is None or theirs):
            by_split[seed] = (ours, theirs)
    if not by_split:
        return Interval(math.nan, math.nan, math.nan, 0)
    parts = [_part(metric, ours, theirs, resamples) for ours, theirs in by_split.values()]
    k = len(parts)
    value = float(np.mean([p.value for p in parts]))
    within = sum(p.variance for p in parts) / k**2
    df = _satterthwaite(within, [s for p in parts for s in p.seeds], 1 / k**2)
    variance, between = within, False
    if k > 1:
        spread = float(np.var([p.value for p in parts], ddof=1)) / k
        if not spread <= within:  # also when within is NaN (nothing measured in a split)
            variance, df, between = spread, k - 1, True
    runs = sum(p.runs for p in parts)
    if not math.isfinite(variance):
        return Interval(value, math.nan, math.nan, runs)
    from scipy import stats  # here: records.Estimate is an Interval, and trials need no scipy

    quantile = stats.t.ppf((1 + confidence) / 2, df) if math.isfinite(df) else None
    if quantile is None:
        quantile = stats.norm.ppf((1 + confidence) / 2)
    half = float(quantile) * math.sqrt(variance)
    return Interval(value, value - half, value + half, runs, _words(parts, between))


def verdict(difference: Interval, metric: str = DICE) -> str:
    """better / worse when the interval of (candidate - reference) excludes 0, in the
    metric's own direction."""
    lower_is_better = metric in LOWER_IS_BETTER
    if difference.low > 0:
        return WORSE if lower_is_better else BETTER
    if difference.high < 0:
        return BETTER if lower_is_better else WORSE
    return UNDECIDED


def bonferroni(confidence: float, comparisons: int) -> float:
    """The confidence of each of `comparisons` intervals that together hold `confidence`."""
    return 1 - (1 - confidence) / max(comparisons, 1)
