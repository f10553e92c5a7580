"""The report's figures, each drawn from an experiment into a PNG file, or absent with
the reason (a `Plot`)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import optuna
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial

from results import escape, keys
from results.compare import COMPARABLE, LOSS_NOT_COMPARED
from results.errors import UserError
from results.experiment import Experiment, State, Trial
from results.keys import (
    AVERAGE_PRECISION,
    DICE,
    ROC_AUC,
)
from results.reference import PublishedReference

log = logging.getLogger(__name__)

MAX_IMPORTANCES = 15
MIN_IMPORTANCE_TRIALS = 8  # and two per varied parameter: see importance_needs
DPI = 120


class LabelledImages(Protocol):
    """Images and masks by name, at one size (the trainable's `BusiArrays`)."""

    names: tuple[str, ...]
    images: np.ndarray
    masks: np.ndarray


# Reads a dataset folder at an image size. The caller passes the data pipeline's reader:
# the reporter sits below the trainable and imports none of it.
ImageReader = Callable[[Path, int], LabelledImages]


@dataclass(frozen=True)
class Plot:
    """One figure of the report: its file, or why it could not be drawn."""

    title: str
    path: Path | None
    note: str  # a caption, or the reason the plot is absent: plain text, escaped when shown


# --- plots ---------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    """A Figure without pyplot: no global state, and PNGs through the Agg canvas whatever
    the session's backend."""
    return Figure(figsize=(width, height), layout="tight")


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    return path


def plot_comparison(
    shown: list[tuple[str, dict[str, float]]], reference: PublishedReference, path: Path
) -> Plot:
    """(1) The winner and the reference config (`shown`: title, test metrics) vs published,
    metric by metric (not the loss, defined otherwise than the paper's)."""
    title = "Test metrics of the winner and the reference config vs the published reference"
    if not shown:
        return Plot(title, None, "absent: no trial selected an epoch, so there are no test metrics")
    bars = list(shown)
    bars.append(("published (selection on test: optimistic)", reference.test))
    figure = _figure(10, 4.5)
    axis = figure.subplots()
    width = 0.8 / len(bars)
    x = np.arange(len(COMPARABLE))
    for i, (label, test) in enumerate(bars):
        values = [test.get(m, math.nan) for m in COMPARABLE]
        axis.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label)
    axis.set_xticks(x, list(COMPARABLE))
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("test part, selected epoch")
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    note = (
        "Metric by metric: " + ", ".join(b[0] for b in bars) + f". The test loss is left out: "
        f"{LOSS_NOT_COMPARED}."
    )
    return Plot(title, _save(figure, path), note)


# Line style by a trial's state (its legend entry is the state's name).
STATE_STYLE = {
    State.FINISHED: "-",
    State.STOPPED: "--",
    State.INTERRUPTED: "-.",
    State.ERRORED: ":",
}


# Colour and width of the emphasised curves by their marks, and their legend entry.
ROLE_STYLE = {
    "B": ("tab:red", 2.5, "best trial (B)"),
    "BR": ("tab:red", 2.5, "best = reference trial (BR)"),
    "R": ("tab:blue", 2.0, "reference trial (R)"),
}


def drawn_curves(experiment: Experiment) -> list[Trial]:
    """The trials with a learning curve: those that reported at least one epoch."""
    return [t for t in experiment.trials if t.rows]


def curve_legend(experiment: Experiment) -> dict[str, dict]:
    """The legend of the learning curves, label → line style, from the curves drawn
    alone: a best or reference trial without a row, or a state no drawn trial is in, is
    not named."""
    curves = drawn_curves(experiment)
    drawn = {experiment.marks(t) for t in curves}
    legend = {
        label: {"color": colour, "lw": width}
        for mark, (colour, width, label) in ROLE_STYLE.items()
        if mark in drawn
    }
    present = {t.status for t in curves}
    for state, style in STATE_STYLE.items():
        if state in present:
            legend[state.value] = {"color": "grey", "ls": style}
    return legend


def plot_learning_curves(experiment: Experiment, path: Path) -> Plot:
    """(2) Per epoch, every trial: the combined loss that selects its epoch, and the
    held-out Dice its objective is read from. Every curve carries its trial number at its
    end; a trial stopped after one epoch is a dot, not an empty line."""
    title = "Learning curves"
    curves = drawn_curves(experiment)
    if not curves:
        return Plot(title, None, "absent: no trial finished an epoch")
    figure = _figure(11, 4.8)
    loss_axis, dice_axis = figure.subplots(1, 2)
    palette = colormaps["viridis"](np.linspace(0, 0.9, len(curves)))
    heldout = "test" if experiment.settings.reference_only else "validation"
    panels = (
        (loss_axis, keys.COMBINED_LOSS, f"combined loss (0.2 train + 0.8 {heldout}; lower wins)"),
        (dice_axis, keys.on_heldout(DICE), f"{heldout} Dice of the epoch's model"),
    )
    for trial, shade in zip(curves, palette, strict=True):
        colour, width, _ = ROLE_STYLE.get(experiment.marks(trial), (shade, 1.0, ""))
        epochs = [row[keys.EPOCH] for row in trial.rows]
        style = STATE_STYLE[trial.status]
        for axis, key, _ in panels:
            values = [_plotted(row.get(key)) for row in trial.rows]
            axis.plot(epochs, values, style, marker="o", ms=3, color=colour, lw=width)
            axis.annotate(
                f"{trial.number:03d}", (epochs[-1], values[-1]), xytext=(3, 0),
                textcoords="offset points", fontsize=7, color=colour, va="center",
            )  # fmt: skip
    for axis, _, label in panels:
        axis.set(xlabel="epoch", ylabel=label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend = curve_legend(experiment)
    handles = [Line2D([], [], label=label, **style) for label, style in legend.items()]
    # Below the axes, so that no curve's end is hidden under it.
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    figure.suptitle(
        f"{title}: {len(curves)} trials, budget {experiment.settings.base.epochs} epochs"
    )
    # The tight layout leaves the bottom strip to the legend (subplots_adjust it overrides).
    figure.get_layout_engine().set(rect=(0, 0.07, 1, 1))
    errored = [t.name for t in experiment.trials if t.errored]
    note = (
        "Left: the combined loss that selects each trial's epoch; right: the held-out Dice of "
        "each epoch's model. Numbers are the trials' numbers; dashed lines end where the "
        "scheduler stopped a trial early."
    )
    if errored:
        note += f" Errored: {', '.join(errored)}."
    return Plot(title, _save(figure, path), note)


def _plotted(value: object) -> float:
    """A recorded number, NaN (a gap in the line) for anything else."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if number else math.nan


def plot_roc_pr(best: Trial | None, path: Path) -> Plot:
    """(3) ROC and precision-recall curves of the winner's trial on the test part."""
    title = "ROC and precision–recall curves of the winner's trial (test part)"
    if best is None or not best.has_selection:
        return Plot(title, None, "absent: the winner's trial has no selection.npz")
    curves = best.selection().curves
    test = best.selected.test if best.selected else {}
    figure = _figure(9, 4.2)
    roc, pr = figure.subplots(1, 2)
    roc.plot(curves["fpr"], curves["tpr"], color="tab:red", label=f"AUC {test.get(ROC_AUC, 0):.3f}")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (pixels)")
    pr.plot(
        curves["recall"],
        curves["precision"],
        color="tab:red",
        label=f"AP {test.get(AVERAGE_PRECISION, 0):.3f}",
    )
    pr.set(xlabel="recall", ylabel="precision", title="precision–recall (pixels)")
    for axis in (roc, pr):
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.legend(loc="lower right")
    figure.suptitle(f"{best.name}, selected epoch {best.selected.epoch if best.selected else '?'}")
    return Plot(title, _save(figure, path), "Pixel-level curves of the selected model.")


def plot_history(experiment: Experiment, path: Path) -> Plot:
    """(4a) Objective of every trial in order, with the best so far."""
    title = "Optimisation history"
    complete = [
        t for t in experiment.trials if t.optuna_state == "COMPLETE" and t.objective is not None
    ]
    if len(complete) < 2:
        return Plot(title, None, _too_few_complete(experiment, len(complete)))
    sign = keys.best_first(experiment.settings.mode)
    best_so_far = np.minimum.accumulate([sign * t.objective for t in complete]) * sign
    figure = _figure(8, 4)
    axis = figure.subplots()
    axis.plot([t.number for t in complete], [t.objective for t in complete], "o", label="complete")
    axis.step(
        [t.number for t in complete],
        best_so_far,
        where="post",
        color="tab:red",
        label="best so far",
    )
    stopped = [
        t for t in experiment.trials if t.optuna_state == "PRUNED" and t.objective is not None
    ]
    if stopped:
        axis.plot(
            [t.number for t in stopped],
            [t.objective for t in stopped],
            "x",
            color="grey",
            label="stopped early (value when stopped)",
        )
    axis.set(xlabel="trial", ylabel=experiment.settings.metric, title=title)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize=8)
    return Plot(title, _save(figure, path), "Objective per trial; the line is the best so far.")


def _too_few_complete(experiment: Experiment, count: int) -> str:
    if experiment.study_path is None:
        return "absent: no Optuna study (a --reference run, or the study is not beside it)"
    return f"absent: the study has {count} COMPLETE trial(s); it needs at least 2"


def importance_needs(varied: int) -> int:
    """COMPLETE trials an importance needs to mean something: Optuna's default evaluator
    (fANOVA) fits a random forest to the trials, which with fewer than two trials per
    varied parameter splits on noise, and under 8 trials has nothing to rank."""
    return max(MIN_IMPORTANCE_TRIALS, 2 * varied)


def plot_importance(experiment: Experiment, path: Path) -> Plot:
    """(4b) Optuna's hyper-parameter importance (its default evaluator)."""
    title = "Hyper-parameter importance"
    study = experiment.load_study()
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if study else []
    if len(complete) < 2:
        return Plot(title, None, _too_few_complete(experiment, len(complete)))
    varied = varied_params([t.params for t in complete])
    if not varied:
        return Plot(title, None, "absent: every COMPLETE trial has the same values")
    needed = importance_needs(len(varied))
    if len(complete) < needed:
        reason = (
            f"absent: importance needs ≥ {needed} COMPLETE trials (two per varied parameter, "
            f"{len(varied)} varied, and never fewer than {MIN_IMPORTANCE_TRIALS}); this sweep "
            f"has {len(complete)}"
        )
        return Plot(title, None, reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna warns about small samples; said below
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as error:
            return Plot(title, None, f"absent: Optuna could not compute importances ({error})")
    shown = list(importances.items())[:MAX_IMPORTANCES][::-1]
    figure = _figure(8, 0.35 * len(shown) + 1.5)
    axis = figure.subplots()
    axis.barh([k for k, _ in shown], [v for _, v in shown], color="tab:blue")
    axis.set(xlabel="importance (normalised)", title=title)
    note = (
        f"Optuna's default importance evaluator over the {len(complete)} COMPLETE trials "
        "(trials stopped early are left out); with few trials it is noisy."
    )
    return Plot(title, _save(figure, path), note)


def varied_params(params: list[dict[str, Any]]) -> list[str]:
    """The parameters that take more than one value among these trials (counting only
    the trials that sampled them), in the order the space samples them: a constant one
    tells nothing about the objective."""
    names = dict.fromkeys(name for p in params for name in p)
    return [name for name in names if len({repr(p[name]) for p in params if name in p}) > 1]


def _heights(name: str, trials: list[FrozenTrial]) -> tuple[list[float | None], dict]:
    """Each trial's height (0 to 1) on the axis of `name`, None where it did not sample it,
    and the axis's labels by height. Numbers spread linearly, or by their logarithm when
    the space samples them so; categories evenly, in the order of their choices."""
    present = [t.params[name] for t in trials if name in t.params]
    distribution = next(t.distributions[name] for t in trials if name in t.params)
    if isinstance(distribution, CategoricalDistribution):
        known = list(distribution.choices)
        choices = sorted(
            dict.fromkeys(present), key=lambda c: known.index(c) if c in known else len(known)
        )
        step = 1 / max(len(choices) - 1, 1)
        heights = [
            choices.index(t.params[name]) * step if name in t.params else None for t in trials
        ]
        return heights, {i * step: str(c) for i, c in enumerate(choices)}
    scale = math.log10 if getattr(distribution, "log", False) else float
    low, high = min(map(scale, present)), max(map(scale, present))
    heights = [
        (scale(t.params[name]) - low) / (high - low) if name in t.params else None for t in trials
    ]
    unscale = (lambda x: 10**x) if scale is math.log10 else float
    labels = {h: f"{unscale(low + h * (high - low)):.3g}" for h in (0, 0.5, 1)}
    return heights, labels


def parallel_figure(trials: list[FrozenTrial], metric: str, mode: str) -> Figure:
    """One vertical axis per parameter that varied among `trials`, the objective last;
    one line per trial, coloured by its objective (brighter is better). A trial has a dot
    on the axes of the parameters it sampled only: where it did not sample one (a
    conditional parameter), its line passes the axis dotted, without a dot."""
    names = varied_params([t.params for t in trials])
    objective = [t.value for t in trials]
    low, high = min(objective), max(objective)
    spread = high - low or 1.0
    columns = [_heights(name, trials) for name in names]
    columns.append(([(v - low) / spread for v in objective], {0: f"{low:.4f}", 1: f"{high:.4f}"}))
    lower_is_better = keys.best_first(mode) > 0
    better = [((high - v) if lower_is_better else (v - low)) / spread for v in objective]
    colours = colormaps["viridis"](better)
    # Wide enough for its labels, not so wide that a page shrinks it out of reading.
    figure = _figure(min(max(8, 0.75 * len(columns)), 18), 6)
    axis = figure.subplots()
    solid, dotted, dots = [], [], []
    for i, colour in enumerate(colours):
        points = [(x, h[i]) for x, (h, _) in enumerate(columns) if h[i] is not None]
        dots += [(x, y, colour) for x, y in points]
        for start, end in zip(points, points[1:], strict=False):
            (solid if end[0] == start[0] + 1 else dotted).append(([start, end], colour))
    for segments, style in ((solid, "solid"), (dotted, "dotted")):
        if segments:
            lines = LineCollection([s for s, _ in segments], colors=[c for _, c in segments])
            lines.set(linestyle=style, linewidth=1.2, alpha=0.8)
            axis.add_collection(lines)
    axis.scatter([x for x, _, _ in dots], [y for _, y, _ in dots], s=10, c=[c for *_, c in dots])
    for x, (_, labels) in enumerate(columns):
        axis.axvline(x, color="black", lw=0.8)
        for height, label in labels.items():
            axis.annotate(
                label, (x, height), xytext=(-3, 0), textcoords="offset points", fontsize=7,
                ha="right", va="center", bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 1},
            )  # fmt: skip
    axis.set_xticks(range(len(columns)), [*names, f"{metric} ({mode})"], rotation=30, ha="right")
    axis.set(xlim=(-0.6, len(columns) - 0.6), ylim=(-0.05, 1.05), yticks=[])
    for side in ("left", "right", "top"):
        axis.spines[side].set_visible(False)
    axis.set_title(f"Parameters against the objective: {len(trials)} COMPLETE trials")
    return figure


def plot_parallel(experiment: Experiment, path: Path) -> Plot:
    """(4c) Every parameter that varied, against the objective at once."""
    title = "Parameters against the objective"
    study = experiment.load_study()
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if study else []
    if len(complete) < 2:
        return Plot(title, None, _too_few_complete(experiment, len(complete)))
    params = [t.params for t in complete]
    varied = varied_params(params)
    same = [name for name in dict.fromkeys(k for p in params for k in p) if name not in varied]
    settings = experiment.settings
    figure = parallel_figure(complete, settings.metric, settings.mode)
    note = (
        f"One line per COMPLETE trial ({len(complete)}), coloured by the objective "
        f"{settings.metric} (brighter is better). Axes: {', '.join(varied) or 'none'}, then "
        "the objective; a line passes dotted, without a dot, the axis of a parameter its "
        "trial did not sample (a conditional one)."
    )
    if same:
        note += f" Left out, the same in every trial that sampled them: {', '.join(same)}."
    return Plot(title, _save(figure, path), note)


class Case(NamedTuple):
    label: str
    index: int  # in the selection's arrays
    rule: str  # why this image, in words


def _median(indices: np.ndarray, values: np.ndarray) -> int:
    """The index whose value is the median (the upper middle one for an even count)."""
    order = indices[np.argsort(values[indices], kind="stable")]
    return int(order[len(order) // 2])


def pick_cases(per_image_dice: np.ndarray, predicted_area: np.ndarray) -> list[Case]:
    """Typical test images, not flattering ones: among images with a lesion, the median
    and the worst Dice; and the lesion-free image (where every predicted pixel is a false
    positive) whose predicted area is the median over the lesion-free ones."""
    lesion = np.flatnonzero(~np.isnan(per_image_dice))
    normal = np.flatnonzero(np.isnan(per_image_dice))
    cases = []
    if lesion.size:
        among = f"the {lesion.size} test images with a lesion"
        worst = int(lesion[np.argmin(per_image_dice[lesion])])
        cases.append(Case("median", _median(lesion, per_image_dice), f"median Dice of {among}"))
        cases.append(Case("worst", worst, f"lowest Dice of {among}"))
    if normal.size:
        rule = f"median predicted area of the {normal.size} lesion-free test images"
        cases.append(Case("lesion-free", _median(normal, predicted_area), rule))
    # One lesion image is both the median and the worst: shown once.
    return [c for i, c in enumerate(cases) if c.index not in [d.index for d in cases[:i]]]


def _overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB: prediction filled in red, truth outlined in bright green, on the grey image."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32) / 255
    rgb[prediction] = 0.45 * rgb[prediction] + 0.55 * np.array([1.0, 0.1, 0.1])
    inner = truth.copy()
    inner[1:] &= truth[:-1]
    inner[:-1] &= truth[1:]
    inner[:, 1:] &= truth[:, :-1]
    inner[:, :-1] &= truth[:, 1:]
    rgb[truth & ~inner] = [0.2, 1.0, 0.2]
    return rgb


def plot_examples(
    experiment: Experiment, best: Trial | None, path: Path, read_images: ImageReader | None
) -> Plot:
    """(5) Test images of the winner's trial (`best`): input beside truth and prediction
    overlaid, read with `read_images` from the experiment's data folder."""
    title = "Test images of the winner's trial: median and worst Dice, a typical lesion-free one"
    if best is None or not best.has_selection:
        return Plot(title, None, "absent: the winner's trial has no selection.npz")
    settings = experiment.settings
    folder = escape.folder_name(settings.data)
    if not settings.data.is_dir():
        return Plot(title, None, f"absent: the data folder {folder} is gone")
    if read_images is None:
        return Plot(title, None, "absent: no image reader was given to the report")
    try:  # cached in the reader's cache ($BUSI_TUNE_CACHE), never where the settings say
        data = read_images(settings.data, settings.base.image_size)
    except UserError as error:
        # Its words name local paths: said in the log, not in a report meant to be shared.
        log.warning("examples left out of the report: %s", error)
        return Plot(title, None, f"absent: the data folder {folder} could not be read")
    selection = best.selection()
    position = {name: i for i, name in enumerate(data.names)}
    if any(name not in position for name in selection.names):
        return Plot(
            title, None, f"absent: the data folder {folder} no longer holds the test images"
        )
    cases = pick_cases(selection.per_image_dice, selection.predictions.sum(axis=(1, 2)))
    if not cases:
        return Plot(title, None, "absent: the test part is empty")
    figure = _figure(5.5, 2.7 * len(cases))
    axes = figure.subplots(len(cases), 2, squeeze=False)
    for row, (label, k, _) in enumerate(cases):
        index = position[selection.names[k]]
        image, truth = data.images[index], data.masks[index].astype(bool)
        prediction = selection.predictions[k]
        score = (
            f"Dice {selection.per_image_dice[k]:.3f}"
            if truth.any()
            else f"no lesion: {int(prediction.sum())} pixels predicted"
        )
        axes[row][0].imshow(image, cmap="gray", vmin=0, vmax=255)
        axes[row][0].set_title(f"{label}: {selection.names[k]}", fontsize=9)
        axes[row][1].imshow(_overlay(image, truth, prediction))
        axes[row][1].set_title(score, fontsize=9)
        for axis in axes[row]:
            axis.axis("off")
    chosen = "; ".join(f"{c.label}, {selection.names[c.index]}: the {c.rule}" for c in cases)
    note = (
        f"{best.name}, selected epoch {selection.epoch}, at the evaluation size: the input, "
        f"and beside it the truth's edge in green over the prediction in red. Chosen by rule: "
        f"{chosen}."
    )
    return Plot(title, _save(figure, path), note)
