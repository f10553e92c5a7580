"""`python -m tuner confirm` and a sweep's final round: is the tuned config really better
than the reference?

A sweep picks its best trial out of many noisy runs, so its margin over the reference is
biased upwards, and one run per config says nothing of seed noise. Here the in-sweep
reference config and the sweep's best configs are retrained for the full budget with
fresh training seeds, on the sweep's split and (confirm --split-seeds) on other splits of
the same policy. The winner is picked on validation: the best mean over its runs of the
objective the sweep optimised, never on test. The test part then says, with intervals
over training seeds, test-image groups and splits (results.intervals), whether each
config is distinguishable from the reference.

One primary endpoint: the test value of the metric the sweep optimised (test Dice for
`selected_heldout_dice`). The other metrics are secondary: their intervals are
Bonferroni-corrected for their number, so that reading all of them keeps the error rate
of one. The same assessment, of one run per config, gives the report of a sweep without a
final round its numbers. The statistics are pure functions; the retraining is in
`tuner.retrain` (the only package that runs Ray).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from results import escape, keys
from results.errors import UserError
from results.experiment import Experiment, State, Trial
from results.intervals import (
    CONFIDENCE,
    RESAMPLES,
    UNDECIDED,
    Scores,
    bonferroni,
    estimate,
    group_summary,
    t_interval,
    verdict,
)
from results.keys import (
    ACCURACY,
    DICE,
    DICE_PER_IMAGE,
    IOU,
    LOWER_IS_BETTER,
    PRECISION,
    RECALL,
    ROC_AUC,
)
from results.layout import CONFIRM_FILE, own_folder
from results.records import (
    Candidate,
    Comparison,
    Confirmation,
    ConfirmProtocol,
    Estimate,
    RecordedRun,
    Winner,
)

log = logging.getLogger(__name__)

# Test metrics assessed (f1 is left out: on pooled counts it is the Dice, a duplicate).
METRICS = (DICE, IOU, PRECISION, RECALL, ACCURACY, ROC_AUC, DICE_PER_IMAGE, keys.LOSS)
REFERENCE = "reference"
THIS_RUN = "this run"  # a --reference run's one trial
CONFIRM, FINAL, SWEEP = "confirm", "final", "sweep"  # what retrained the runs, if anything


def primary_metric(objective: str) -> str:
    """The test metric of the objective a sweep optimised: `selected_heldout_dice` ->
    `dice`; the combined loss (a selection rule with a training term) -> the test loss."""
    if objective == keys.BEST_COMBINED_LOSS:
        return keys.LOSS
    return objective.removeprefix(keys.selected(""))


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
    names = sorted({k for t in chosen for k in t.params})
    labels = [REFERENCE, "best", *(f"rank {i}" for i in range(2, len(others) + 1))]
    return tuple(
        Candidate(label, t.name, _rank(t, ranked), {k: t.config.to_flat()[k] for k in names})
        for label, t in zip(labels, chosen, strict=True)
    )


def _rank(trial: Trial, ranked: list[Trial]) -> int:
    return 1 + next((i for i, t in enumerate(ranked) if t.name == trial.name), len(ranked))


def training_seeds(base_seed: int, count: int) -> list[int]:
    """`count` fresh training seeds: the ones after the sweep's own, which trained the
    trials being confirmed (re-running it would replay the winning trial)."""
    return [base_seed + 1 + i for i in range(count)]


def split_seeds(sweep_seed: int, count: int) -> list[int]:
    """The sweep's own split first, then `count - 1` other draws of the same policy."""
    return [sweep_seed + i for i in range(count)]


@dataclass(frozen=True)
class Run:
    """One run of a config: a retraining, or a sweep's own trial."""

    label: str
    seed: int  # its training seed
    trial: str
    state: str
    objective: float | None  # the sweep's objective on its validation part
    scores: Scores | None  # its test part; None if it did not count (see run_of)


def run_of(trial: Trial, label: str, counts: bool = True) -> Run:
    """A trial as a run of the config `label`; one that does not count (a retraining
    that did not finish its budget) keeps its state for the record, and no numbers."""
    selected = trial.selected if counts else None
    selection = trial.selection() if selected else None
    scores = None
    if selected is not None:
        scores = Scores(
            split_seed=selected.split_seed,
            test=selected.test,
            names=selection.names if selection else (),
            groups=selection.groups if selection else None,
            counts=selection.per_image_counts if selection else None,
            per_image_dice=selection.per_image_dice if selection else None,
        )
    seed = trial.config.seed if trial.config else int(trial.params.get("seed", -1))
    objective = trial.objective if selected is not None else None
    return Run(label, seed, trial.name, trial.state, objective, scores)


def read_runs(candidates: Sequence[Candidate], retrained: Sequence[Experiment]) -> list[Run]:
    """Each trial of the retraining experiments, matched to its candidate by its config;
    only runs that trained their whole budget count."""
    runs = []
    for experiment in retrained:
        for trial in experiment.trials:
            items = trial.params.items()
            label = next((c.label for c in candidates if c.point.items() <= items), None)
            if label is None:
                log.warning("%s: its config is none of the candidates'; left out", trial.name)
                continue
            runs.append(run_of(trial, label, counts=trial.status is State.FINISHED))
    return runs


def _scores(runs: Sequence[Run], label: str) -> list[Scores]:
    return [r.scores for r in runs if r.label == label and r.scores is not None]


def pick_winner(
    candidates: Sequence[Candidate], runs: Sequence[Run], objective: str, mode: str
) -> Winner | None:
    """The candidate with the best mean validation objective over its runs (a tie keeps
    the one listed first, the reference); each candidate's mean with its t-interval."""
    validation = {
        c.label: t_interval([r.objective for r in runs if r.label == c.label and r.scores])
        for c in candidates
    }
    scored = [c for c in candidates if math.isfinite(validation[c.label].mean)]
    if not scored:
        return None
    order = {c.label: i for i, c in enumerate(candidates)}
    winner = min(
        scored, key=lambda c: keys.rank_key(validation[c.label].mean, mode, order[c.label])
    )
    return Winner(
        label=winner.label,
        trial=winner.trial,
        rule=f"the {keys.best_is(mode)} mean validation {objective} "
        "over its runs (the test part picks nothing)",
        validation={label: Estimate(**dataclasses.asdict(i)) for label, i in validation.items()},
    )


def _interval(metric: str, a: list[Scores], b: list[Scores] | None, level: float) -> Estimate:
    interval = estimate(metric, a, b, confidence=level)
    judged = None if b is None else verdict(interval, metric)
    return Estimate(**dataclasses.asdict(interval), confidence=level, verdict=judged)


def assess(
    kind: str,
    experiment: Experiment,
    candidates: Sequence[Candidate],
    runs: Sequence[Run],
    protocol: ConfirmProtocol,
    retrained_in: Sequence[str] = (),
) -> Confirmation:
    """Everything confirm.json (and final.json) holds: the plan, every run, the winner,
    each config's test numbers and each one's difference from the reference."""
    settings = experiment.settings
    primary = primary_metric(settings.metric)
    secondary = [m for m in METRICS if m != primary]
    level = bonferroni(CONFIDENCE, len(secondary))
    levels = {primary: CONFIDENCE, **dict.fromkeys(secondary, level)}
    parts = {}
    for run in runs:
        if run.scores is not None and run.scores.split_seed not in parts:
            parts[run.scores.split_seed] = group_summary(run.scores.groups, len(run.scores.names))
    reference = _scores(runs, REFERENCE)
    return Confirmation(
        kind=kind,
        experiment=experiment.location,
        retrained_in=tuple(retrained_in),
        confidence=CONFIDENCE,
        primary_metric=primary,
        objective=settings.metric,
        secondary_metrics=tuple(secondary),
        secondary_confidence=level,
        resamples=RESAMPLES,
        protocol=dataclasses.replace(protocol, test_groups={str(k): v for k, v in parts.items()}),
        seeds=tuple(sorted({r.seed for r in runs})),
        split_seeds=tuple(sorted(parts)),
        candidates=tuple(candidates),
        runs=tuple(
            RecordedRun(
                label=r.label,
                seed=r.seed,
                split_seed=r.scores.split_seed if r.scores else None,
                trial=r.trial,
                state=r.state,
                objective=r.objective,
                test=r.scores.test if r.scores else None,
            )
            for r in runs
        ),
        winner=pick_winner(candidates, runs, settings.metric, settings.mode),
        summary={
            c.label: {m: _interval(m, _scores(runs, c.label), None, levels[m]) for m in levels}
            for c in candidates
        },
        comparisons=tuple(
            Comparison(
                c.label,
                {m: _interval(m, _scores(runs, c.label), reference, levels[m]) for m in levels},
            )
            for c in candidates
            if c.label != REFERENCE and _scores(runs, c.label) and reference
        ),
    )


def confirmation(
    experiment: Experiment,
    candidates: Sequence[Candidate],
    retrained: Sequence[Experiment],
    kind: str = CONFIRM,
) -> Confirmation:
    """The assessment of retrained runs (one experiment per split)."""
    settings = retrained[0].settings
    counts = next((t.selected.counts for e in retrained for t in e.trials if t.selected), {})
    protocol = ConfirmProtocol(
        split=settings.split.value,
        split_seed=experiment.settings.seed,
        counts=counts,
        epochs=settings.base.epochs,
        scheduler="fifo (no early stopping)",
        selection="validation part (test part locked); numbers are on the test part",
    )
    runs = read_runs(candidates, retrained)
    return assess(kind, experiment, candidates, runs, protocol, [e.location for e in retrained])


def sweep_assessment(experiment: Experiment) -> Confirmation | None:
    """The sweep's own numbers, one run per config: its best trial (the winner, picked on
    validation) against its reference trial; a --reference run's one trial alone. None
    without a scored best trial."""
    best, reference = experiment.best, experiment.reference
    if best is None:
        return None
    ranked = experiment.ranked()
    chosen = [(REFERENCE, reference)] if reference is not None else []
    if experiment.settings.reference_only:
        chosen = [(THIS_RUN, best)]
    elif best is not reference:
        chosen.append(("best", best))
    candidates = [Candidate(label, t.name, _rank(t, ranked), dict(t.params)) for label, t in chosen]
    runs = [run_of(t, label) for label, t in chosen]
    selected = best.selected
    protocol = ConfirmProtocol(
        split=experiment.settings.split.value,
        split_seed=experiment.settings.seed,
        counts=selected.counts if selected else {},
        epochs=experiment.settings.base.epochs,
        scheduler=experiment.settings.scheduler.value,
        selection="validation part (test part locked); numbers are on the test part",
    )
    return assess(SWEEP, experiment, candidates, runs, protocol)


def save_confirmation(result: Confirmation, directory: Path) -> Path:
    path = own_folder(directory) / CONFIRM_FILE
    path.unlink(missing_ok=True)  # written anew, never through a link in its place
    path.write_text(result.to_text())
    return path


# --- in words ------------------------------------------------------------------------


def interval_text(raw: Estimate, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if not math.isfinite(raw.mean):
        return "—"
    if not math.isfinite(raw.low):
        return f"{raw.mean:{sign}.4f} (n={raw.n}: no interval)"
    return f"{raw.mean:{sign}.4f} [{raw.low:{sign}.4f}, {raw.high:{sign}.4f}]"


def in_words(label: str, outcome: str, measure: str, level: float = CONFIDENCE) -> str:
    """A verdict as a sentence a reader cannot misread."""
    if outcome == UNDECIDED:
        return (
            f"by {measure}, {label} and the reference are not distinguishable "
            f"(the {level:.0%} interval of the difference includes 0)"
        )
    return (
        f"by {measure}, {label} is {outcome} than the reference "
        f"(the {level:.0%} interval of the difference excludes 0)"
    )


def groups_words(result: Confirmation) -> str:
    """How the test images fall into groups, per split, in words."""
    said = []
    for seed, summary in result.protocol.test_groups.items():
        if summary is None:
            said.append(
                f"split {seed}: no group ids recorded (an experiment from before they were), "
                "so images are resampled singly, which understates the interval"
            )
        else:
            said.append(
                f"split {seed}: {summary['images']} test images in {summary['groups']} "
                f"groups, {summary['shared']} of them sharing a group with a near-duplicate"
            )
    return "; ".join(said)


def endpoint_lines(result: Confirmation) -> list[str]:
    """Which number decides, and how the others are read."""
    secondary = result.secondary_metrics
    return [
        f"Primary endpoint: test `{result.primary_metric}` (the sweep optimised "
        f"`{result.objective}` on validation), {result.confidence:.0%} intervals. "
        f"Secondary: {', '.join(secondary)}, with intervals widened to "
        f"{result.secondary_confidence:.2%} (Bonferroni, {len(secondary)} "
        "comparisons). A bootstrap resamples whole near-duplicate groups of test images "
        f"({result.resamples:,} resamples; {groups_words(result)}). Runs of two configs "
        "with the same seed are not paired (a seed means nothing across configs): a "
        "difference is of the configs' means.",
    ]


def winner_lines(result: Confirmation) -> list[str]:
    """The winner, its rule, and whether it is distinguishable from the reference on the
    primary endpoint."""
    text, winner = escape.text, result.winner
    primary = result.primary_metric
    if winner is None:
        return ["No run of any config selected an epoch: no winner."]
    label = winner.label
    validation = winner.validation[label]
    lines = [
        f"**Winner**: {text(label)} (from {text(winner.trial)}), picked by "
        f"{text(winner.rule)}: {interval_text(validation)} over {validation.n} run(s)."
    ]
    if label == REFERENCE:
        lines.append("The reference config wins on validation: the search found nothing better.")
        return lines
    comparison = result.comparison(label)
    if comparison is None:
        lines.append("The reference config has no run to compare it with.")
        return lines
    raw = comparison.estimates[primary]
    lines.append(
        f"**Verdict** on the test part: {text(label)} − reference, test {text(primary)}: "
        f"{interval_text(raw, signed=True)} (covers {text(raw.covers or 'nothing measured')}): "
        f"{in_words(text(label), text(raw.verdict), 'the primary endpoint', raw.confidence)}."
    )
    return lines


def confirmation_lines(result: Confirmation, endpoints: bool = True) -> list[str]:
    """Markdown for confirm.json or final.json (readable as plain text too): the plan,
    which endpoint decides (unless said already: `endpoints`), the winner, per config its
    validation mean and test intervals, then each difference from the reference with its
    verdict. Every string read from the file is escaped: an experiment, its report folder
    included, can come from elsewhere."""
    text = escape.text
    protocol = result.protocol
    primary = result.primary_metric
    metrics = [primary, *result.secondary_metrics]
    counts = ", ".join(f"{n} {part}" for part, n in protocol.counts.items())
    splits = result.split_seeds
    where = (
        f"the sweep's split ({text(protocol.split)}, seed {text(protocol.split_seed)}; "
        f"{text(counts)})"
    )
    if len(splits) > 1:
        where += (
            f" and {len(splits) - 1} other split(s) of the same policy (seeds "
            f"{', '.join(text(s) for s in splits[1:])}; the configs were chosen on the "
            "sweep's validation part, which another split's test part may overlap)"
        )
    objective = result.objective
    lines = [
        f"Retrained for the full budget ({text(protocol.epochs)} epochs, "
        f"{text(protocol.scheduler)}) with fresh training seeds "
        f"{', '.join(text(s) for s in result.seeds)} on {where}; epochs selected on the "
        f"{text(protocol.selection)}.",
        "",
        *([*endpoint_lines(result), ""] if endpoints else []),
        *winner_lines(result),
        "",
        f"| config | from trial (rank in sweep) | runs | validation `{text(objective)}` | "
        + " | ".join(f"{m} (primary)" if m == primary else m for m in metrics)
        + " |",
        "|---|---|---|---|" + "---|" * len(metrics),
    ]
    validation = result.winner.validation if result.winner else {}
    for candidate in result.candidates:
        label = candidate.label
        summary = result.summary[label]
        runs = sum(r.label == label and r.test is not None for r in result.runs)
        shown = interval_text(validation[label]) if label in validation else "—"
        cells = " | ".join(interval_text(summary[m]) for m in metrics)
        lines.append(
            f"| {text(label)} | {text(candidate.trial)} ({text(candidate.rank)}) | "
            f"{runs} | {shown} | {cells} |"
        )
    lower = ", ".join(m for m in metrics if m in LOWER_IS_BETTER)
    for comparison in result.comparisons:
        label = text(comparison.label)
        by_metric = comparison.estimates
        lines += [
            "",
            f"**{label} − reference** on the test part (for {lower} lower is better):",
            "",
            "| metric | difference | level | interval covers | verdict |",
            "|---|---|---|---|---|",
            *(
                f"| {text(m)}{' (primary)' if m == primary else ''} | "
                f"{interval_text(by_metric[m], signed=True)} | "
                f"{by_metric[m].confidence:.2%} | {text(by_metric[m].covers or '—')} | "
                f"{text(by_metric[m].verdict)} |"
                for m in metrics
            ),
        ]
    return lines
