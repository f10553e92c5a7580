"""The only test numbers a report shows: the winner (picked on validation) and the
reference config, from the sweep's final round (final.json) when there is one, else from
the sweep itself; each with what differs from the paper, and the primary endpoint with
its interval."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from results.config import TrainConfig
from results.confirm import (
    FINAL,
    REFERENCE,
    confirmation_lines,
    in_words,
    interval_text,
    sweep_assessment,
)
from results.experiment import Experiment, Trial
from results.layout import (
    FINAL_FILE,
)
from results.records import Confirmation
from results.reference import PublishedReference, load_reference

log = logging.getLogger(__name__)


def read_final(experiment: Experiment) -> Confirmation | None:
    """The sweep's final round (final.json), None without one; a damaged one, or one from
    another version, is said in the log and left out. Read as a typed record, then checked
    by rendering it (its labels must match): a file from elsewhere can hold anything."""
    path = experiment.path / FINAL_FILE
    if not path.is_file():
        return None
    try:
        result = Confirmation.from_text(path.read_bytes(), path)
        if result.kind != FINAL:
            raise ValueError("not a final round")
        confirmation_lines(result)
        primary_lines(experiment, result)
        return result
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as error:
        log.warning("%s: damaged (%s); left out of the report", path, type(error).__name__)
        return None


def shown_trial(experiment: Experiment, result: Confirmation | None) -> Trial | None:
    """The trial whose test images and curves are drawn: the final round's winner's (its
    sweep trial), else the best trial; chosen on validation either way. `result`: the
    experiment's `assessment`."""
    if result is not None and result.kind == FINAL and result.winner is not None:
        name = result.winner.trial
        return next((t for t in experiment.trials if t.name == name), experiment.best)
    return experiment.best


def assessment(experiment: Experiment) -> Confirmation | None:
    """The numbers the report shows: the final round's when there is one, else the
    sweep's own (its best trial and its reference trial, one run each)."""
    return read_final(experiment) or sweep_assessment(experiment)


@dataclass(frozen=True)
class HeadlineRow:
    """The winner or the reference config, as it is set against the published numbers."""

    label: str  # its label in the assessment
    title: str  # plain text: escaped when shown in Markdown
    trial: Trial | None  # the sweep's trial of its config
    test: dict[str, float]  # mean over its runs
    runs: int
    differences: tuple[str, ...]  # what differs from the paper, in words


def headline(experiment: Experiment, result: Confirmation | None) -> list[HeadlineRow]:
    """The winner (picked on validation) and the reference config, once if they are the
    same config; a --reference run's one trial."""
    if result is None or result.winner is None:
        return []
    winner = result.winner.label
    labels = [winner] + ([REFERENCE] if winner != REFERENCE else [])
    trials = {c.label: c.trial for c in result.candidates}
    by_name = {t.name: t for t in experiment.trials}
    rows = []
    for label in labels:
        tests = [r.test for r in result.runs if r.label == label and r.test]
        if not tests:
            continue
        trial = by_name.get(trials.get(label))
        if experiment.settings.reference_only:
            title = f"this run: {trials[label]}"
        elif result.kind == FINAL:
            role = "winner" if label == winner else "reference config"
            if label == winner == REFERENCE:
                role = "winner = reference config"
            title = f"{role} ({label}, from {trials[label]}), mean of {len(tests)} runs"
        else:
            role = {winner: "winner", REFERENCE: "reference config"}[label]
            if label == winner == REFERENCE:
                role = "winner = reference config"
            title = f"{role}: {trials[label]}"
        mean = {
            m: float(np.mean([t[m] for t in tests if m in t]))
            for m in tests[0]
            if all(m in t for t in tests)
        }
        differences = paper_differences(experiment, trial, label, winner, len(tests), result)
        rows.append(HeadlineRow(label, title, trial, mean, len(tests), differences))
    return rows


def paper_differences(
    experiment: Experiment,
    trial: Trial | None,
    label: str,
    winner: str,
    runs: int,
    result: Confirmation,
    reference: PublishedReference | None = None,
) -> tuple[str, ...]:
    """What differs between this row's numbers and the paper's, in words: data, split,
    training images, epoch selection, how the config was chosen, model and budget,
    threshold, runs, the loss."""
    reference = reference or load_reference()
    settings = experiment.settings
    paper = TrainConfig.reference()
    said = []
    provenance = experiment.provenance
    excluded = len(provenance.excluded) if provenance else 0
    if provenance and provenance.synthetic:
        said.append("synthetic data, not BUSI")
    elif provenance and (excluded or provenance.images != reference.counts["images"]):
        left = f", {excluded} contradicting copies left out" if excluded else ""
        said.append(
            f"{provenance.images - excluded} of {provenance.images} images{left} "
            f"(paper: all {reference.counts['images']})"
        )
    if settings.split.value == "grouped":
        said.append("grouped split, near-duplicates on one side (paper: random, which leaks them)")
    else:
        said.append(f"random split, seed {settings.seed} (paper: a draw of its own)")
    counts = trial.selected.counts if trial is not None and trial.selected else {}
    train = counts.get("train", counts.get("cross-validated"))
    if train is not None and train != reference.counts["train"]:
        validation = counts.get("validation")
        held = f", {validation} held out for validation" if validation else ""
        said.append(f"{train} training images{held} (paper: {reference.counts['train']})")
    if not settings.reference_only:
        said.append("epoch selected on validation (paper: on test, optimistic)")
        if label == winner and label != REFERENCE:
            how = "on the mean over its runs" if result.kind == FINAL else "one run each"
            said.append(
                f"config chosen on validation among {len(experiment.trials)} trials ({how}; "
                "paper: one config)"
            )
    config = trial.config if trial is not None else None
    if config is not None:
        for name in ("encoder", "encoder_weights", "image_size", "epochs", "batch_size"):
            ours, theirs = getattr(config, name), getattr(paper, name)
            if ours != theirs:
                said.append(f"{name} {ours} (paper: {theirs})")
        threshold = trial.selected.threshold if trial.selected else None
        threshold = config.threshold if threshold is None else threshold
        if threshold != paper.threshold:
            said.append(f"threshold {threshold:g} (paper: {paper.threshold:g})")
    if runs > 1:
        said.append(f"mean of {runs} training seeds (paper: one run)")
    said.append("test loss defined otherwise: not compared")
    return tuple(said)


def primary_lines(
    experiment: Experiment, result: Confirmation | None, quote: Callable[[str], str] = str
) -> list[str]:
    """The primary endpoint of the winner and the reference config with its interval, and
    their difference with its verdict: what decides, in words; `quote` renders what was
    read from the experiment's files (escape.text for Markdown)."""
    rows = headline(experiment, result)
    if not rows:
        return []
    primary = result.primary_metric
    said = []
    for row in rows:
        raw = result.summary[row.label][primary]
        said.append(
            f"{quote(row.title)}: test {quote(primary)} {interval_text(raw)} "
            f"({quote(raw.covers or 'nothing measured')})"
        )
    comparison = result.comparison(rows[0].label)
    if comparison is not None:
        raw = comparison.estimates[primary]
        verdict = in_words("the winner", quote(raw.verdict), "the primary endpoint")
        said.append(
            f"winner − reference config, test {quote(primary)}: "
            f"{interval_text(raw, signed=True)} ({quote(raw.covers or 'nothing measured')}): "
            f"{verdict}"
        )
        if result.kind != FINAL:
            said.append(
                "one run per config: seed noise is not in these intervals (a config's runs "
                "differ by several points of Dice); `run --final-seeds S` or `confirm` "
                "measure it"
            )
    return said
