"""`python -m tuner confirm`: is the tuned config really better than the reference?

A sweep picks its best trial out of many noisy runs, so its margin over the reference is
biased upwards. Here the reference config and the best config(s) are retrained with K
fresh training seeds on the same split, and the test metrics are compared with
intervals: per seed (a t-interval over the K paired differences) and per test image (a
bootstrap over images of the paired per-image Dice). The statistics are pure functions;
the retraining itself is in `tuner.confirm` (the only package that runs Ray).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from results import escape
from results.compare import COMPARED
from results.experiment import Experiment, Trial
from results.layout import own_folder
from trainable.errors import UserError
from trainable.keys import DICE, DICE_PER_IMAGE, NORMAL_FP_RATE

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIRM_FILE = "confirm.json"
METRICS = (*COMPARED, DICE_PER_IMAGE)
LOWER_IS_BETTER = frozenset({"loss", NORMAL_FP_RATE})
REFERENCE = "reference"
BETTER, WORSE, UNDECIDED = "better", "worse", "not distinguishable"


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # seeds for a t-interval, test images for the bootstrap


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval; the bounds are NaN with fewer than two values."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if x.size else math.nan
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, int(x.size))
    half = stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(mean, float(mean - half), float(mean + half), int(x.size))


def bootstrap_mean(
    differences: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Mean of a (seeds, images) array of paired differences, with a percentile interval
    from resampling images: the test images are the sample drawn from the population, and
    each image keeps its seeds together. Images with a NaN (no lesion: Dice undefined)
    are left out."""
    kept = differences[:, ~np.isnan(differences).any(axis=0)]
    if kept.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    per_image = kept.mean(axis=0)
    rng = np.random.default_rng(seed)
    means = per_image[rng.integers(0, per_image.size, size=(resamples, per_image.size))].mean(1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(per_image.mean()), float(low), float(high), int(per_image.size))


def pooled_dice_interval(
    counts: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Pooled Dice of (N, 3) per-image tp, fp, fn counts, with a percentile interval from
    resampling the images: how much the Dice of a few dozen test images can move."""

    def dice(tp, fp, fn):
        den = 2 * tp + fp + fn
        return np.divide(2 * tp, den, out=np.ones_like(den, dtype=float), where=den > 0)

    rng = np.random.default_rng(seed)
    samples = counts[rng.integers(0, len(counts), size=(resamples, len(counts)))].sum(axis=1)
    values = dice(samples[:, 0], samples[:, 1], samples[:, 2])
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    tp, fp, fn = counts.sum(axis=0)
    return Interval(
        float(dice(np.array(tp), np.array(fp), np.array(fn))), float(low), float(high), len(counts)
    )


def verdict(difference: Interval, lower_is_better: bool = False) -> str:
    """better / worse when the interval of (candidate - reference) excludes 0."""
    if difference.low > 0:
        return WORSE if lower_is_better else BETTER
    if difference.high < 0:
        return BETTER if lower_is_better else WORSE
    return UNDECIDED


@dataclass(frozen=True)
class Candidate:
    """A config to retrain: the reference or one of the sweep's best."""

    label: str  # "reference", "best", "rank 2", ...
    trial: str  # the sweep's trial it comes from
    rank: int  # its place by validation objective in the sweep (1 = best)
    point: dict[str, Any]  # its values on every searched key


def choose_candidates(experiment: Experiment, top: int) -> tuple[Candidate, ...]:
    """The in-sweep reference trial and the `top` best other trials (by validation
    objective); their values on the union of the keys any of them searched."""
    if not experiment.is_sweep:
        raise UserError(
            f"confirm: {experiment.location} is a --reference run; confirm compares the "
            "configs of a sweep"
        )
    if experiment.reference is None or experiment.reference.config is None:
        raise UserError(f"confirm: {experiment.location} has no trial of the reference config")
    ranked = experiment.ranked()
    others = [t for t in ranked if t.name != experiment.reference.name][:top]
    if not others:
        raise UserError(f"confirm: {experiment.location} has no other scored trial to compare")
    chosen = [experiment.reference, *others]
    keys = sorted({k for t in chosen for k in t.params})
    labels = [REFERENCE, "best", *(f"rank {i}" for i in range(2, len(others) + 1))]

    def rank(trial: Trial) -> int:
        return 1 + next((i for i, t in enumerate(ranked) if t.name == trial.name), len(ranked))

    return tuple(
        Candidate(label, t.name, rank(t), {k: t.config.to_flat()[k] for k in keys})
        for label, t in zip(labels, chosen, strict=True)
    )


def training_seeds(base_seed: int, count: int) -> list[int]:
    """`count` fresh training seeds: the ones after the sweep's own, which trained the
    trials being confirmed (re-running it would replay the winning trial)."""
    return [base_seed + 1 + i for i in range(count)]


@dataclass(frozen=True)
class Run:
    """One retraining: a candidate with one seed, read from the confirm experiment."""

    label: str
    seed: int
    trial: str
    state: str
    test: dict[str, float] | None  # None if it errored before selecting an epoch
    names: tuple[str, ...]  # test images of per_image_dice
    per_image_dice: np.ndarray | None


def read_runs(candidates: Sequence[Candidate], confirm: Experiment) -> list[Run]:
    """Each trial of the confirm experiment, matched to its candidate by its config."""
    runs = []
    for trial in confirm.trials:
        label = next((c.label for c in candidates if c.point.items() <= trial.params.items()), None)
        if label is None:
            log.warning("%s: its config is none of the candidates'; left out", trial.name)
            continue
        selection = trial.selection() if trial.has_selection else None
        runs.append(
            Run(
                label=label,
                seed=int(trial.params["seed"]),
                trial=trial.name,
                state=trial.state,
                test=trial.selected.test if trial.selected else None,
                names=selection.names if selection else (),
                per_image_dice=selection.per_image_dice if selection else None,
            )
        )
    return runs


def summarise_runs(runs: Sequence[Run]) -> dict[str, Interval]:
    """Mean and t-interval of each metric over the runs (seeds) that produced one."""
    scored = [r.test for r in runs if r.test is not None]
    return {m: t_interval([test[m] for test in scored]) for m in METRICS}


def _paired(runs: Sequence[Run], label: str) -> tuple[list[Run], list[Run]]:
    """(candidate, reference) runs of the seeds where both produced test results."""
    by_seed = {(r.label, r.seed): r for r in runs if r.test is not None}
    seeds = sorted(s for (lbl, s) in by_seed if lbl == label and (REFERENCE, s) in by_seed)
    return [by_seed[label, s] for s in seeds], [by_seed[REFERENCE, s] for s in seeds]


def compare_with_reference(runs: Sequence[Run], label: str) -> dict[str, Any]:
    """candidate - reference, per seed for every metric and per test image for Dice."""
    ours, reference = _paired(runs, label)
    per_seed = {
        m: t_interval([o.test[m] - r.test[m] for o, r in zip(ours, reference, strict=True)])
        for m in METRICS
    }
    usable = [
        (o, r)
        for o, r in zip(ours, reference, strict=True)
        if o.per_image_dice is not None and r.per_image_dice is not None and o.names == r.names
    ]
    differences = [o.per_image_dice - r.per_image_dice for o, r in usable]
    per_image = bootstrap_mean(np.array(differences) if usable else np.empty((0, 0)))
    return {
        "label": label,
        "seeds": [o.seed for o in ours],
        "per_seed": {
            m: {**dataclasses.asdict(i), "verdict": verdict(i, m in LOWER_IS_BETTER)}
            for m, i in per_seed.items()
        },
        "per_image_dice": {
            **dataclasses.asdict(per_image),
            "resamples": RESAMPLES,
            "bootstrap_seed": BOOTSTRAP_SEED,
            "verdict": verdict(per_image),
        },
    }


def confirmation(
    experiment: Experiment, candidates: Sequence[Candidate], confirm: Experiment
) -> dict[str, Any]:
    """Everything confirm.json holds: the plan, every run, intervals and verdicts."""
    runs = read_runs(candidates, confirm)
    settings = confirm.settings
    counts = next((t.selected.counts for t in confirm.trials if t.selected), {})
    return {
        "experiment": experiment.location,
        "confirm_experiment": confirm.location,
        "confidence": CONFIDENCE,
        "protocol": {
            "split": settings.split.value,
            "split_seed": settings.seed,
            "counts": counts,
            "epochs": settings.base.epochs,
            "scheduler": "fifo (no early stopping)",
            "selection": "validation part (test part locked); numbers are on the test part",
        },
        "seeds": sorted({r.seed for r in runs}),
        "candidates": [dataclasses.asdict(c) for c in candidates],
        "runs": [
            {"label": r.label, "seed": r.seed, "trial": r.trial, "state": r.state, "test": r.test}
            for r in runs
        ],
        "summary": {
            c.label: {
                m: dataclasses.asdict(i)
                for m, i in summarise_runs([r for r in runs if r.label == c.label]).items()
            }
            for c in candidates
        },
        "comparisons": [
            compare_with_reference(runs, c.label) for c in candidates if c.label != REFERENCE
        ],
    }


def save_confirmation(result: dict[str, Any], directory: Path) -> Path:
    path = own_folder(directory) / CONFIRM_FILE
    path.unlink(missing_ok=True)  # written anew, never through a link in its place
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _interval_text(raw: dict[str, float], signed: bool) -> str:
    sign = "+" if signed else ""
    if math.isnan(raw["low"]):
        return f"{raw['mean']:{sign}.4f} (n={raw['n']}: no interval)"
    return f"{raw['mean']:{sign}.4f} [{raw['low']:{sign}.4f}, {raw['high']:{sign}.4f}]"


def in_words(label: str, outcome: str, measure: str) -> str:
    """A verdict as a sentence a reader cannot misread."""
    if outcome == UNDECIDED:
        return (
            f"by {measure}, {label} and the reference are not distinguishable "
            "(the interval of the difference includes 0)"
        )
    return (
        f"by {measure}, {label} is {outcome} than the reference "
        "(the interval of the difference excludes 0)"
    )


def confirmation_lines(result: dict[str, Any]) -> list[str]:
    """Markdown for confirm.json (readable as plain text too): per config mean and interval,
    then each difference from the reference with its verdict in words. Every string of the
    file is escaped: an experiment, its report folder included, can come from elsewhere."""
    text = escape.text
    protocol = result["protocol"]
    level = f"{result['confidence']:.0%}"
    counts = ", ".join(f"{n} {part}" for part, n in protocol["counts"].items())
    lines = [
        f"Retrained for the full budget ({text(protocol['epochs'])} epochs, "
        f"{text(protocol['scheduler'])}) with training seeds {text(result['seeds'])}; split "
        f"{text(protocol['split'])} (seed {text(protocol['split_seed'])}; {text(counts)}); "
        f"selection on the {text(protocol['selection'])}. Mean and {level} t-interval over "
        "seeds:",
        "",
        "| config | from trial (rank in sweep) | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for candidate in result["candidates"]:
        summary = result["summary"][candidate["label"]]
        cells = " | ".join(_interval_text(summary[m], signed=False) for m in METRICS)
        lines.append(
            f"| {text(candidate['label'])} | {text(candidate['trial'])} "
            f"({text(candidate['rank'])}) | {cells} |"
        )
    for comparison in result["comparisons"]:
        label = text(comparison["label"])
        pooled = text(comparison["per_seed"][DICE]["verdict"])
        image = comparison["per_image_dice"]
        lines += [
            "",
            f"**{label} − reference**, paired by seed ({len(comparison['seeds'])} seeds, "
            f"{level} t-interval; for loss and normal_fp_rate lower is better):",
            "",
            "| metric | difference | verdict |",
            "|---|---|---|",
            *(
                f"| {text(m)} | {_interval_text(raw, signed=True)} | {text(raw['verdict'])} |"
                for m, raw in comparison["per_seed"].items()
            ),
            "",
            f"Per test image: Dice of the {text(image['n'])} test images with a lesion, paired "
            f"by image and seed, {text(image['resamples'])} bootstrap resamples of the images "
            f"(seed {text(image['bootstrap_seed'])}): {_interval_text(image, signed=True)}.",
            "",
            f"**Verdict** on the test part: "
            f"{in_words(label, pooled, 'pooled Dice over seeds')}; "
            f"{in_words(label, text(image['verdict']), 'per-image Dice')}.",
        ]
    return lines
