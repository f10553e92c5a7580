"""`python -m tuner report`: an experiment compared with the published reference.

Writes EXPERIMENT_DIR/report/: report.md (GitHub-readable, plots embedded), trials.csv and
PNG plots. Reads the experiment folder offline (no Ray). Every number is printed with
the protocol behind it, so that the optimistic published numbers (epoch selected on the
test set) are never mistaken for honest ones (epoch selected on a validation part). Test
numbers are shown for the winner and the reference config only (a table of every
trial's would invite picking on test), each with its interval (results.intervals) and
what differs from the paper.
"""

from __future__ import annotations

import csv
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from results import escape, keys, storage
from results.compare import COMPARABLE, COMPARED, LOSS_NOT_COMPARED, deltas
from results.config import TrainConfig, describe_params
from results.confirm import (
    FINAL,
    REFERENCE,
    confirmation_lines,
    endpoint_lines,
    in_words,
    interval_text,
    sweep_assessment,
)
from results.experiment import Experiment, State, Trial
from results.keys import (
    AVERAGE_PRECISION,
    DICE_PER_IMAGE,
    LOSS,
    METRIC_KEYS,
    NORMAL_FP_RATE,
)
from results.layout import (
    COMPARISON_PLOT,
    CONFIRM_FILE,
    CURVES_PLOT,
    EXAMPLES_PLOT,
    FINAL_FILE,
    HISTORY_PLOT,
    IMPORTANCE_PLOT,
    MARKDOWN_FILE,
    PARALLEL_PLOT,
    PLOT_FILES,
    REPORT_DIR,
    ROC_PR_PLOT,
    TRIALS_FILE,
    own_folder,
)
from results.plots import (
    ImageReader,
    Plot,
    plot_comparison,
    plot_examples,
    plot_history,
    plot_importance,
    plot_learning_curves,
    plot_parallel,
    plot_roc_pr,
)
from results.records import read_confirmation
from results.reference import PublishedReference, load_reference

log = logging.getLogger(__name__)


TEST_KEYS = (LOSS, *METRIC_KEYS)
TRIALS_CSV_PARAM = "param_"  # trials.csv's column prefix of a searched value
# Test metrics the published table does not report, shown beside it.
UNPUBLISHED = (AVERAGE_PRECISION, DICE_PER_IMAGE, NORMAL_FP_RATE)


@dataclass(frozen=True)
class ReportPaths:
    directory: Path
    markdown: Path
    trials_csv: Path
    plots: tuple[Path, ...]


# --- words shared by the terminal table and the markdown ------------------------------


def state_counts(trials: tuple[Trial, ...]) -> str:
    states = [t.status for t in trials]
    counts = ", ".join(f"{states.count(state)} {state.value}" for state in State)
    return f"trials: {len(states)} — {counts}"


def _counts(experiment: Experiment) -> str:
    selected = next((t.selected for t in experiment.trials if t.selected), None)
    if selected is None:
        return "no trial selected an epoch"
    return ", ".join(f"{n} {part}" for part, n in selected.counts.items())


def protocol_lines(
    experiment: Experiment, reference: PublishedReference, quote: Callable[[str], str] = str
) -> list[str]:
    """How every number was obtained, in sentences; `quote` renders what was read from
    the experiment's files (escape.text for Markdown)."""
    settings = experiment.settings
    if settings.reference_only:
        selection = (
            "the epoch of the run was selected on the test part itself (the reference "
            "protocol): its test numbers are optimistic, like the published ones"
        )
        choice = "a --reference run: one trial, the reference config"
    else:
        selection = (
            "each trial's epoch was selected on the validation part and the test part was "
            "locked (never used for any choice): test numbers are honest estimates"
        )
        if settings.folds > 1:
            selection = (
                f"{settings.folds}-fold cross-validation of the training part: each trial "
                "trained one model per fold and selected each one's epoch on its own "
                "validation fold; its objective is the mean over the folds (± their sample SD) and "
                "its test metrics are those of the folds' ensemble (probabilities averaged); "
                "the test part was locked (never used for any choice): test numbers are "
                "honest estimates"
            )
        extreme = keys.best_is(settings.mode)
        choice = (
            f"objective: configs are ranked by `{settings.metric}` ({settings.mode}imised), "
            f"{objective_words(settings.metric)}; best trial (B): the {extreme} value (never "
            "chosen on test); reference trial (R): the base config, run inside the sweep "
            "under the same protocol"
        )
    split_words = {
        "grouped": "near-duplicate groups kept on one side of every cut",
        "random": "the reference's random split, which puts near-duplicates of BUSI's on "
        "both sides of a cut and so flatters held-out numbers",
    }[settings.split.value]
    return [
        f"split: {settings.split.value}, {split_words} (seed {settings.seed}; "
        f"{quote(_counts(experiment))})",
        f"selection: {selection}; the epoch rule is the reference's, lowest "
        f"{settings.base.selection_train_weight:g} × train loss + "
        f"{1 - settings.base.selection_train_weight:g} × held-out loss",
        f"evaluation: every trial at {settings.base.image_size} px (a trial trained at "
        "another size has its probabilities resized to it), threshold "
        f"{settings.base.threshold:g}, pixels pooled over the whole part; the loss is the "
        "soft Dice loss pooled over every pixel of the part, which does not depend on "
        "batch size or order (the paper's is smp's batch-pooled Dice loss averaged over "
        "batches, which does, and which scores a lesion-free batch as 0)",
        choice,
        f"published reference: {reference.protocol['selection']}; split "
        f"{reference.protocol['split']}",
        "test metrics: of the winner and the reference config only, at their selected "
        "epochs (every trial's would invite picking on test: `report --all-test-metrics` "
        "writes them into trials.csv); Δ = ours − published, higher is better for every "
        f"metric compared; the test loss is {LOSS_NOT_COMPARED}",
    ]


def objective_words(metric: str) -> str:
    if metric == keys.BEST_COMBINED_LOSS:
        return (
            "the selected epoch's combined loss, which holds 20 % training loss and so "
            "penalises augmentation"
        )
    return "the selected model's value on the whole validation part"


def _details(trial: Trial) -> str:
    searched = describe_params(trial.params)
    if trial.selected and trial.selected.folds:
        per_fold = ", ".join(f"{v:.4f}" for v in trial.selected.folds.per_fold)
        searched += f"; objective per fold {per_fold} (± {trial.fold_spread:.4f})"
    return f"{searched}; error: {trial.error}" if trial.error else searched


def fold_warning(experiment: Experiment) -> str | None:
    """Cross-validation: is the best trial's lead over the reference inside the spread of
    its folds? Then the ranking may be the luck of the folds."""
    best, reference = experiment.best, experiment.reference
    if best is None or reference is None or best is reference or best.fold_spread is None:
        return None
    lead = abs(best.objective - reference.objective)
    if lead >= best.fold_spread:
        return None
    return (
        f"warning: the best trial's lead over the reference trial ({lead:.4f}) is inside the "
        f"spread of its folds (± {best.fold_spread:.4f}): the ranking may be the folds' luck"
    )


def _value(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _test(trial: Trial | None) -> dict[str, float] | None:
    return trial.selected.test if trial is not None and trial.selected else None


# --- the winner and the reference config: the only test numbers shown ------------------


def read_final(experiment: Experiment) -> dict[str, Any] | None:
    """The sweep's final round (final.json), None without one; a damaged one, or one from
    another version, is said in the log and left out. It is checked by rendering it: a
    file from elsewhere can hold anything."""
    path = experiment.path / FINAL_FILE
    if not path.is_file():
        return None
    try:
        result = read_confirmation(path.read_text(), path)
        if result["kind"] != FINAL:
            raise ValueError("not a final round")
        confirmation_lines(result)
        primary_lines(experiment, result)
        return result
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        log.warning("%s: damaged (%s); left out of the report", path, type(error).__name__)
        return None


def shown_trial(experiment: Experiment) -> Trial | None:
    """The trial whose test images and curves are drawn: the final round's winner's (its
    sweep trial), else the best trial; chosen on validation either way."""
    final = read_final(experiment)
    if final is not None and final["winner"] is not None:
        name = final["winner"]["trial"]
        return next((t for t in experiment.trials if t.name == name), experiment.best)
    return experiment.best


def assessment(experiment: Experiment) -> dict[str, Any] | None:
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


def headline(experiment: Experiment, result: dict[str, Any] | None) -> list[HeadlineRow]:
    """The winner (picked on validation) and the reference config, once if they are the
    same config; a --reference run's one trial."""
    if result is None or result["winner"] is None:
        return []
    winner = result["winner"]["label"]
    labels = [winner] + ([REFERENCE] if winner != REFERENCE else [])
    trials = {c["label"]: c["trial"] for c in result["candidates"]}
    by_name = {t.name: t for t in experiment.trials}
    rows = []
    for label in labels:
        tests = [r["test"] for r in result["runs"] if r["label"] == label and r["test"]]
        if not tests:
            continue
        trial = by_name.get(trials.get(label))
        if experiment.settings.reference_only:
            title = f"this run: {trials[label]}"
        elif result["kind"] == FINAL:
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
    result: dict[str, Any],
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
            how = "on the mean over its runs" if result["kind"] == FINAL else "one run each"
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
    experiment: Experiment, result: dict[str, Any] | None, quote: Callable[[str], str] = str
) -> list[str]:
    """The primary endpoint of the winner and the reference config with its interval, and
    their difference with its verdict: what decides, in words; `quote` renders what was
    read from the experiment's files (escape.text for Markdown)."""
    rows = headline(experiment, result)
    if not rows:
        return []
    primary = result["primary"]["metric"]
    said = []
    for row in rows:
        raw = result["summary"][row.label][primary]
        said.append(
            f"{quote(row.title)}: test {quote(primary)} {interval_text(raw)} "
            f"({quote(raw['covers'] or 'nothing measured')})"
        )
    comparison = next((c for c in result["comparisons"] if c["label"] == rows[0].label), None)
    if comparison is not None:
        raw = comparison[primary]
        verdict = in_words("the winner", quote(raw["verdict"]), "the primary endpoint")
        said.append(
            f"winner − reference config, test {quote(primary)}: "
            f"{interval_text(raw, signed=True)} ({quote(raw['covers'] or 'nothing measured')}): "
            f"{verdict}"
        )
        if result["kind"] != FINAL:
            said.append(
                "one run per config: seed noise is not in these intervals (a config's runs "
                "differ by several points of Dice); `run --final-seeds S` or `confirm` "
                "measure it"
            )
    return said


def format_terminal_table(
    experiment: Experiment, reference: PublishedReference | None = None
) -> str:
    """The trials as text (objective and searched values: no test numbers, the test part
    picks nothing), then the winner's and the reference config's test metrics beside the
    published ones, and the primary endpoint with its interval."""
    reference = reference or load_reference()
    settings = experiment.settings
    kind = "--reference run" if settings.reference_only else f"sweep ({settings.space} space)"
    lines = [
        f"experiment: {experiment.location} — {kind}; {state_counts(experiment.trials)}",
        *protocol_lines(experiment, reference),
        "",
        f"{'':3}{'trial':<24}{'state':<28}{'objective':>10}  searched values",
    ]
    for trial in experiment.trials:
        lines.append(
            f"{experiment.marks(trial):<3}{trial.name:<24}{trial.state:<28}"
            f"{_value(trial.objective):>10}  {_details(trial)}"
        )
    if warning := fold_warning(experiment):
        lines.append(warning)
    result = assessment(experiment)
    rows = headline(experiment, result)
    if not rows:
        return "\n".join(lines)
    width = 3 + max(len(row.title) for row in rows)
    lines += [
        "",
        "test part vs the published reference (the winner and the reference config only):",
        f"{'':{width}}" + "".join(f"{m:>10}" for m in COMPARABLE),
        f"{'published reference':{width}}"
        + "".join(f"{reference.test[m]:>10.4f}" for m in COMPARABLE),
    ]
    for row in rows:
        difference = deltas(row.test, reference)
        lines += [
            f"{row.title:{width}}" + "".join(f"{_value(row.test.get(m)):>10}" for m in COMPARABLE),
            f"{'   Δ published':{width}}"
            + "".join(f"{_value(difference[m], signed=True):>10}" for m in COMPARABLE),
            f"   differs from the paper: {'; '.join(row.differences)}",
        ]
    return "\n".join([*lines, *primary_lines(experiment, result)])


# --- trials.csv ----------------------------------------------------------------------


def trial_row(
    trial: Trial,
    experiment: Experiment,
    reference: PublishedReference,
    test_metrics: bool = False,
) -> dict:
    """One trial; its test metrics and their difference from the published ones only
    with `test_metrics` (report --all-test-metrics)."""
    test = (_test(trial) or {}) if test_metrics else {}
    difference = deltas(test, reference) if test else {}
    tested = {
        **{keys.on_test(m): _csv(test.get(m)) for m in TEST_KEYS},
        **{f"delta_{m}": _csv(difference.get(m)) for m in COMPARABLE},
    }
    return {
        "trial": trial.name,
        "number": trial.number,
        "marks": experiment.marks(trial),
        "state": trial.state,
        "optuna_state": trial.optuna_state or "",
        "epochs_run": trial.epochs_run,
        "selected_epoch": trial.selected.epoch if trial.selected else "",
        "selection": trial.selected.selection if trial.selected else "",
        f"objective_{experiment.settings.metric}": _csv(trial.objective),
        "objective_fold_std": _csv(trial.fold_spread),
        **(tested if test_metrics else {}),
        "error": trial.error or "",
        **{f"{TRIALS_CSV_PARAM}{k}": v for k, v in trial.params.items()},
    }


def _csv(value: float | None) -> str | float:
    return "" if value is None else value


def write_trials_csv(
    experiment: Experiment,
    reference: PublishedReference,
    path: Path,
    test_metrics: bool = False,
) -> None:
    rows = [trial_row(t, experiment, reference, test_metrics) for t in experiment.trials]
    names = dict.fromkeys(k for row in rows for k in row)
    columns = [k for k in names if not k.startswith(TRIALS_CSV_PARAM)]
    columns += sorted(k for k in names if k.startswith(TRIALS_CSV_PARAM))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: escape.csv_cell(v) for k, v in row.items()} for row in rows)


# --- report.md -----------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _with_delta(value: float | None, difference: float | None) -> str:
    return "—" if value is None else f"{value:.4f} ({difference:+.4f})"


def reference_section(reference: PublishedReference) -> list[str]:
    return [
        "## Published reference",
        "",
        f"Source: {reference.source}.",
        "",
        *(f"- {key}: {text}" for key, text in reference.protocol.items()),
        f"- best epoch {reference.best_epoch}, combined loss {reference.combined_loss}",
        "",
        *_table(list(COMPARED), [[f"{reference.test[m]:.4f}" for m in COMPARED]]),
        "",
        "Noted inconsistencies of the paper:",
        "",
        *(f"- {text}" for text in reference.inconsistencies),
    ]


def comparison_section(
    experiment: Experiment, reference: PublishedReference, result: dict[str, Any]
) -> list[str]:
    """The winner and the reference config against the published numbers, each row with
    what differs from the paper; then the metrics the paper lacks and the test loss (not
    beside the paper's: defined otherwise); then the primary endpoint with its interval."""
    rows = headline(experiment, result)
    text = escape.text
    published = [
        "published (paper)",
        *(f"{reference.test[m]:.4f}" for m in COMPARABLE),
        f"one run; {text(reference.protocol['split'])}; " + text(reference.protocol["selection"]),
    ]
    table = [published]
    for row in rows:
        difference = deltas(row.test, reference)
        cells = [_with_delta(row.test.get(m), difference[m]) for m in COMPARABLE]
        table.append([text(row.title), *cells, text("; ".join(row.differences))])
    if result["kind"] == FINAL:
        how = (
            "Winner: picked by the sweep's final round on "
            f"{text(result['winner']['rule'])}; numbers are means over its runs."
        )
    elif experiment.settings.reference_only:
        how = "A --reference run: its one config, one run."
    else:
        how = (
            "Winner: the sweep's best trial on the validation objective (one run); the "
            "reference config is the sweep's own run of it."
        )
    unpublished = [m for m in (*UNPUBLISHED, LOSS) if all(m in row.test for row in rows)]
    lines = [
        how,
        "",
        *_table(["", *COMPARABLE, "what differs from the paper"], table),
        "",
        f"Metrics the paper's table lacks, and the test loss ({LOSS_NOT_COMPARED}):",
        "",
        *_table(
            ["", *unpublished],
            [[text(row.title), *(_value(row.test[m]) for m in unpublished)] for row in rows],
        ),
        "",
        *endpoint_lines(result),
        "",
        *(f"- {line}" for line in primary_lines(experiment, result, text)),
    ]
    return lines


def trials_section(experiment: Experiment) -> list[str]:
    settings = experiment.settings
    # On CPUs alone, device time is the run time times one number: a column that repeats.
    gpu = any(t.on_gpu for t in experiment.trials)
    overview = [
        [
            experiment.marks(t),
            escape.text(t.name),
            t.state,
            str(t.selected.epoch) if t.selected else "—",
            _value(t.objective),
            f"{t.run_seconds:.0f} s" if t.run_seconds is not None else "—",
            *([t.device_time(settings.cpus_per_trial, settings.gpus_per_trial)] if gpu else []),
            escape.text(_details(t)),
        ]
        for t in experiment.trials
    ]
    warning = fold_warning(experiment)
    return [
        "## Trials",
        "",
        f"{state_counts(experiment.trials)}. B = best trial, R = in-sweep reference trial. "
        "Test numbers are left out here: a table of every trial's would invite picking on "
        "test (`report --all-test-metrics` writes them into trials.csv).",
        "",
        *([f"**{warning}**", ""] if warning else []),
        *_table(
            [
                "",
                "trial",
                "state",
                "selected epoch",
                f"{settings.metric}",
                "run time",
                *(["device time"] if gpu else []),
                "searched values",
            ],
            overview,
        ),
    ]


def plot_section(plot: Plot, directory: Path) -> list[str]:
    if plot.path is None:
        return [f"### {plot.title}", "", f"_{escape.text(plot.note)}_", ""]
    return [
        f"### {plot.title}",
        "",
        f"![{plot.title}]({plot.path.relative_to(directory).as_posix()})",
        "",
        escape.text(plot.note),
        "",
    ]


def shown_location(experiment: Experiment) -> str:
    """The experiment as a shared report names it: a bucket's URI, or a local folder's
    name alone (an absolute path tells whose machine it is, and means nothing on another)."""
    return experiment.location if experiment.is_remote else Path(experiment.location).name


def provenance_line(experiment: Experiment) -> str:
    data = experiment.provenance
    if data is None:
        folder = escape.folder_name(experiment.settings.data)
        return f"data: folder {escape.code(folder)} (no data.json)"
    if data.synthetic:
        return (
            f"**data: synthetic** ({data.images} images written by `data synth` in "
            f"folder {escape.code(escape.folder_name(data.path))}): not ultrasound, not BUSI; the "
            "comparison with the published numbers shows the pipeline working, not a result"
        )
    excluded = list(data.excluded)
    left_out = (
        f"; {len(excluded)} left out as copies of one frame whose labels or lesion masks "
        f"contradict (`--conflicts exclude`): {escape.code(', '.join(excluded))}"
        if excluded
        else ""
    )
    return (
        f"data: folder {escape.code(escape.folder_name(data.path))}, {data.images} images, content "
        f"hash {escape.code(data.content_hash)}{left_out}"
    )


def where_section(experiment: Experiment) -> list[str]:
    """What a reader may want to open next: relative to the experiment folder, or on the
    experiment's remote storage."""
    remote = experiment.is_remote

    def place(*names: str) -> str:
        return storage.join(experiment.location, *names) if remote else "/".join(names)

    lines = ["## Where things are", ""]
    if not remote:
        lines += ["Paths relative to the experiment folder.", ""]
    if experiment.best is not None:
        models = experiment.best.selected.models if experiment.best.selected else ()
        for name in models:
            path = place(experiment.best.name, name)
            lines.append(f"- best trial's selected weights: {escape.code(path)}")
    if experiment.study_path is not None:
        study = place(experiment.study_path.name)
        name = escape.code(experiment.settings.name)
        lines.append(f"- Optuna study: {escape.code(study)} (study {name})")
    if remote:
        tensorboard = f"tensorboard --logdir {shlex.quote(experiment.location)}"
        lines.append(f"- TensorBoard: {escape.code(tensorboard)}")
        lines.append("  (TensorBoard reads s3:// with boto3 installed; endpoint in S3_ENDPOINT)")
    else:
        lines.append("- TensorBoard, run in the experiment folder: `tensorboard --logdir .`")
    return [*lines, ""]


def render_markdown(
    experiment: Experiment,
    reference: PublishedReference,
    plots: list[Plot],
    directory: Path,
    result: dict[str, Any] | None = None,
) -> str:
    """report.md; `result`: the assessment its test numbers come from (`assessment`)."""
    settings = experiment.settings
    kind = (
        "a --reference run (the reference config alone, reference protocol)"
        if settings.reference_only
        else f"a sweep of {len(experiment.trials)} trials ({settings.trials} planned), space "
        f"`{settings.space}`, scheduler "
        f"`{settings.scheduler.value}`, objective `{settings.metric}` ({settings.mode})"
    )
    base = settings.base
    lines = [
        f"# Report: {escape.text(settings.name)}",
        "",
        f"{escape.code(shown_location(experiment))}: {kind}; base config "
        f"{escape.text(base.encoder)} ({escape.text(base.encoder_weights)} weights), "
        f"{base.image_size} px, "
        f"{base.epochs} epochs.",
        "",
        provenance_line(experiment) + ".",
        "",
        "## How to read the numbers",
        "",
        *(f"- {line}" for line in protocol_lines(experiment, reference, escape.text)),
        "",
        "## The winner against the published reference",
        "",
    ]
    if result is not None and headline(experiment, result):
        lines += comparison_section(experiment, reference, result)
    else:
        lines.append("_No trial has selected an epoch yet: there are no test metrics._")
    if result is not None and result["kind"] == FINAL:
        lines += ["", "### The final round", "", *confirmation_lines(result)]
    lines += ["", *trials_section(experiment), "", *where_section(experiment)]
    lines += ["## Plots", ""]
    for plot in plots:
        lines += plot_section(plot, directory)
    confirm_path = directory / CONFIRM_FILE
    if confirm_path.is_file():
        lines += ["## Confirmation over seeds", "", *_confirmation(confirm_path), ""]
    lines += reference_section(reference)
    return "\n".join(lines) + "\n"


def _confirmation(path: Path) -> list[str]:
    """confirm.json in words; a damaged one is said so (with a warning), not a crash."""
    try:
        return confirmation_lines(read_confirmation(path.read_text(), path))
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSON's are ValueErrors
        log.warning("%s: damaged (%s); left out of the report", path, type(error).__name__)
        return [
            f"_{CONFIRM_FILE} is damaged or from an older version: run `confirm` again to "
            "remake it._"
        ]


def write_report(
    experiment: Experiment,
    all_test_metrics: bool = False,
    read_images: ImageReader | None = None,
) -> ReportPaths:
    """Write EXPERIMENT_DIR/report/ and say where everything went (for a remote
    experiment: written on its local mirror, then uploaded beside its trials). With
    `all_test_metrics`, trials.csv holds every trial's test metrics too; with
    `read_images`, the examples plot shows the winner's test images."""
    reference = load_reference()
    result = assessment(experiment)
    directory = own_folder(experiment.path / REPORT_DIR)
    # A plot absent now must not linger; and every file is written anew, never through a
    # link that an experiment from elsewhere may hold in its place.
    for name in PLOT_FILES:
        (directory / name).unlink(missing_ok=True)
    compared = [(row.title, row.test) for row in headline(experiment, result)]
    shown = shown_trial(experiment)
    # Names from the experiment's files are shown as they are, never read as mathtext.
    with matplotlib.rc_context({"text.parse_math": False}):
        plots = [
            plot_comparison(compared, reference, directory / COMPARISON_PLOT),
            plot_learning_curves(experiment, directory / CURVES_PLOT),
            plot_roc_pr(shown, directory / ROC_PR_PLOT),
            plot_history(experiment, directory / HISTORY_PLOT),
            plot_importance(experiment, directory / IMPORTANCE_PLOT),
            plot_parallel(experiment, directory / PARALLEL_PLOT),
            plot_examples(experiment, shown, directory / EXAMPLES_PLOT, read_images),
        ]
    markdown = directory / MARKDOWN_FILE
    text = render_markdown(experiment, reference, plots, directory, result)
    markdown.unlink(missing_ok=True)
    markdown.write_text(text)
    trials_csv = directory / TRIALS_FILE
    trials_csv.unlink(missing_ok=True)
    write_trials_csv(experiment, reference, trials_csv, all_test_metrics)
    paths = ReportPaths(directory, markdown, trials_csv, tuple(p.path for p in plots if p.path))
    if experiment.is_remote:  # written on the mirror, kept with the experiment
        for path in (markdown, trials_csv, *paths.plots):
            storage.upload(path, storage.join(experiment.location, REPORT_DIR, path.name))
    log.info("report written to %s", directory)
    return paths
