"""An experiment in sentences, said the same way in the terminal table, report.md and
the run summary: its trials' states, the protocol behind every number, a trial's searched
values, the folds' warning."""

from __future__ import annotations

from collections.abc import Callable

from results import keys
from results.compare import LOSS_NOT_COMPARED
from results.config import describe_params
from results.experiment import Experiment, State, Trial
from results.reference import PublishedReference


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


def trial_details(trial: Trial) -> str:
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


def shown_value(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def test_metrics_of(trial: Trial | None) -> dict[str, float] | None:
    return trial.selected.test if trial is not None and trial.selected else None
