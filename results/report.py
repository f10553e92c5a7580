"""`python -m tuner report`: an experiment compared with the published reference.

Writes EXPERIMENT_DIR/report/: report.md (GitHub-readable, plots embedded), trials.csv and
PNG plots. Reads the experiment folder offline (no Ray). Every number is printed with the
protocol behind it, so that the optimistic published numbers (epoch selected on the test
set) are never mistaken for honest ones (epoch selected on a validation part). Test
numbers are shown for the winner and the reference config only (a table of every trial's
would invite picking on test), each with its interval (results.intervals) and what
differs from the paper.

Its parts: the words every view shares (results.words), the only test numbers shown
(results.headline), the plain tables (results.tables) and the plots (results.plots); this
module lays out report.md and writes the folder.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import matplotlib

from results import escape, storage
from results.compare import COMPARABLE, COMPARED, LOSS_NOT_COMPARED, deltas
from results.confirm import (
    FINAL,
    confirmation_lines,
    endpoint_lines,
)
from results.experiment import Experiment
from results.headline import assessment, headline, primary_lines, shown_trial
from results.keys import (
    AVERAGE_PRECISION,
    DICE_PER_IMAGE,
    LOSS,
    NORMAL_FP_RATE,
)
from results.layout import (
    COMPARISON_PLOT,
    CONFIRM_FILE,
    CURVES_PLOT,
    EXAMPLES_PLOT,
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
from results.records import Confirmation
from results.reference import PublishedReference, load_reference
from results.tables import write_trials_csv
from results.words import fold_warning, protocol_lines, shown_value, state_counts, trial_details

log = logging.getLogger(__name__)


# Test metrics the published table does not report, shown beside it.
UNPUBLISHED = (AVERAGE_PRECISION, DICE_PER_IMAGE, NORMAL_FP_RATE)


@dataclass(frozen=True)
class ReportPaths:
    directory: Path
    markdown: Path
    trials_csv: Path
    plots: tuple[Path, ...]
    assessment: Confirmation | None  # the numbers shown (a bootstrap: worth making once)


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
    experiment: Experiment, reference: PublishedReference, result: Confirmation
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
    if result.kind == FINAL:
        how = (
            "Winner: picked by the sweep's final round on "
            f"{text(result.winner.rule)}; numbers are means over its runs."
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
            [[text(row.title), *(shown_value(row.test[m]) for m in unpublished)] for row in rows],
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
            shown_value(t.objective),
            f"{t.run_seconds:.0f} s" if t.run_seconds is not None else "—",
            *([t.device_time(settings.cpus_per_trial, settings.gpus_per_trial)] if gpu else []),
            escape.text(trial_details(t)),
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
    result: Confirmation | None = None,
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
    if result is not None and result.kind == FINAL:
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
        return confirmation_lines(Confirmation.from_text(path.read_bytes(), path))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
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
    shown = shown_trial(experiment, result)
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
    shown_plots = tuple(p.path for p in plots if p.path)
    paths = ReportPaths(directory, markdown, trials_csv, shown_plots, result)
    if experiment.is_remote:  # written on the mirror, kept with the experiment
        for path in (markdown, trials_csv, *paths.plots):
            storage.upload(path, storage.join(experiment.location, REPORT_DIR, path.name))
    log.info("report written to %s", directory)
    return paths
