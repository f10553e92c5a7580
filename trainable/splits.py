"""Seeded, class-stratified splits, written to the run directory as a manifest.

`random` is the reference's 80/20 split (624/156 of the 780 BUSI images); `grouped` has
the same proportions but keeps each near-duplicate group on one side, so the same lesion
cannot be in training and test at once. For tuning, a validation part is carved from the
training part with the same policy, or (`make_folds`) the training part is cut into K
folds that take turns as the validation part; the test part is never used for any choice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from results.records import SplitManifest
from results.settings import SplitPolicy
from trainable.preprocess import BusiArrays

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """Indices into a BusiArrays; `validation` is empty for the reference protocol."""

    policy: SplitPolicy
    seed: int
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    fold: int | None = None  # which of K cross-validation folds is the validation part

    def manifest(self, names: tuple[str, ...]) -> SplitManifest:
        sides = {
            side: sorted(names[i] for i in getattr(self, side))
            for side in ("train", "validation", "test")
        }
        digest = hashlib.sha256(json.dumps(sides, sort_keys=True).encode()).hexdigest()
        return SplitManifest(
            policy=self.policy.value,
            seed=self.seed,
            fold=self.fold,
            counts={side: len(members) for side, members in sides.items()},
            sha256=digest,
            **{side: tuple(members) for side, members in sides.items()},
        )


def hold_out(
    candidates: np.ndarray,
    labels: tuple[str, ...],
    groups: np.ndarray,
    fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split `candidates` into (kept, held out): per class, whole groups are drawn in a
    seeded order until the held-out part reaches round(fraction x class size). A group
    counts for the class of its first member, so even a group whose members carry
    different labels stays on one side."""
    rng = np.random.default_rng(seed)
    by_group: dict[int, list[int]] = {}
    for i in sorted(int(i) for i in candidates):
        by_group.setdefault(int(groups[i]), []).append(i)
    held: list[int] = []
    for label in sorted({labels[i] for i in candidates}):
        class_groups = sorted(g for g, members in by_group.items() if labels[members[0]] == label)
        target = round(fraction * sum(len(by_group[g]) for g in class_groups))
        taken = 0
        for group_id in rng.permutation(class_groups):
            group = by_group[int(group_id)]
            if taken + len(group) > target:
                continue  # would overshoot: a smaller group may still fit
            held.extend(group)
            taken += len(group)
    held_set = set(held)
    kept = [i for i in sorted(int(i) for i in candidates) if i not in held_set]
    return np.array(kept, dtype=np.int64), np.array(sorted(held_set), dtype=np.int64)


def _labels_and_groups(data: BusiArrays, policy: SplitPolicy):
    labels = tuple(label.value for label in data.labels)
    # Under the random policy every image is its own group.
    groups = data.groups if policy is SplitPolicy.GROUPED else np.arange(len(data))
    return labels, groups


def make_split(data: BusiArrays, policy: SplitPolicy, seed: int, with_validation: bool) -> Split:
    """Test part first (20 %), then, for tuning, a validation part (20 % of the rest)."""
    policy = SplitPolicy(policy)
    labels, groups = _labels_and_groups(data, policy)
    everything = np.arange(len(data))
    train, test = hold_out(everything, labels, groups, TEST_FRACTION, seed)
    validation = np.array([], dtype=np.int64)
    if with_validation:
        train, validation = hold_out(train, labels, groups, VALIDATION_FRACTION, seed + 1)
    return Split(policy, seed, train, validation, test)


def assign_folds(
    candidates: np.ndarray, labels: tuple[str, ...], groups: np.ndarray, k: int, seed: int
) -> list[np.ndarray]:
    """Cut `candidates` into `k` folds: per class, whole groups in a seeded order, each to
    the fold that holds the fewest images of that class so far (ties: the lower fold), so
    every fold gets its share of every class and no group is cut."""
    rng = np.random.default_rng(seed)
    by_group: dict[int, list[int]] = {}
    for i in sorted(int(i) for i in candidates):
        by_group.setdefault(int(groups[i]), []).append(i)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in sorted({labels[i] for i in candidates}):
        class_groups = sorted(g for g, members in by_group.items() if labels[members[0]] == label)
        counts = [0] * k
        for group_id in rng.permutation(class_groups):
            group = by_group[int(group_id)]
            target = counts.index(min(counts))
            folds[target].extend(group)
            counts[target] += len(group)
    return [np.array(sorted(fold), dtype=np.int64) for fold in folds]


def make_folds(data: BusiArrays, policy: SplitPolicy, seed: int, k: int) -> list[Split]:
    """K splits that share make_split's test part; fold f is the validation part of split
    f and the other folds its training part."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    policy = SplitPolicy(policy)
    labels, groups = _labels_and_groups(data, policy)
    train, test = hold_out(np.arange(len(data)), labels, groups, TEST_FRACTION, seed)
    folds = assign_folds(train, labels, groups, k, seed + 1)
    return [
        Split(
            policy,
            seed,
            np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i])),
            fold,
            test,
            fold=i,
        )
        for i, fold in enumerate(folds)
    ]


def folds_problem(data: BusiArrays, policy: SplitPolicy, seed: int, k: int) -> str | None:
    """Why `k` folds of this data cannot rank a config, or None: every fold must be a
    validation part that holds a lesion image (a Dice over no lesion is undefined)."""

    def workable(j: int) -> bool:
        return all(
            data.masks[split.validation].any() for split in make_folds(data, policy, seed, j)
        )

    if workable(k):
        return None
    largest = next((j for j in range(min(k, len(data)), 1, -1) if workable(j)), None)
    fit = f"the most that do is {largest}" if largest else "no K of 2 or more does; use --folds 1"
    return (
        f"--folds {k}: the training part of this data cannot make {k} validation folds that "
        f"each hold a lesion image (groups stay whole, classes stratified); {fit}"
    )


def folds_manifest(folds: list[Split], names: tuple[str, ...]) -> SplitManifest:
    """split.json of a cross-validated trial: the test part and each validation fold."""
    sides = {
        "test": sorted(names[i] for i in folds[0].test),
        "folds": [sorted(names[i] for i in split.validation) for split in folds],
    }
    digest = hashlib.sha256(json.dumps(sides, sort_keys=True).encode()).hexdigest()
    return SplitManifest(
        policy=folds[0].policy.value,
        seed=folds[0].seed,
        counts={
            "cross-validated": sum(len(f) for f in sides["folds"]),
            "test": len(sides["test"]),
        },
        sha256=digest,
        test=tuple(sides["test"]),
        folds=tuple(tuple(fold) for fold in sides["folds"]),
    )


def manifest_of(splits: list[Split], names: tuple[str, ...]) -> SplitManifest:
    """The manifest of one split, or of K folds."""
    return splits[0].manifest(names) if len(splits) == 1 else folds_manifest(splits, names)


def experiment_splits(
    data: BusiArrays, policy: SplitPolicy, seed: int, folds: int, with_validation: bool
) -> list[Split]:
    """What every trial of an experiment trains on: one split, or K folds."""
    if folds > 1:
        return make_folds(data, policy, seed, folds)
    return [make_split(data, policy, seed, with_validation)]
