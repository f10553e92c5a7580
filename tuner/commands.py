"""What each command of `python -m tuner` does once its flags are parsed (tuner.cli): the
run's settings from its flags, then the library's calls and what the command prints,
through tuner.console. Imported at every start: whatever pulls in torch or Ray is imported
inside the command that needs it, so a mistyped flag is refused at once."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from results import storage
from results.config import TrainConfig
from results.errors import UserError
from results.settings import ConfirmSettings, ConflictPolicy, RunSettings, Scheduler, SplitPolicy
from tuner import console
from tuner.inference import Tta

if TYPE_CHECKING:
    from results.experiment import Experiment

# The demo: a synthetic set and a model small enough for a laptop CPU in minutes.
DEMO_DATA_DIR = "demo-data"
DEMO = {
    "encoder": "resnet18",
    "encoder_weights": "none",
    "image_size": 64,
    "batch_size": 8,
    "epochs": 8,
    "trials": 8,
}
# 88 images: enough that the demo's tuned model learns the synthetic lesions (Dice ~0.8).
DEMO_SYNTH = {"n_benign": 48, "n_malignant": 24, "n_normal": 16}
TRAINING_FLAGS = ("encoder", "encoder_weights", "image_size", "batch_size", "epochs")
AUTO = "auto"  # --threshold auto, --gpus-per-trial auto


def _gpus(value: float | str | None) -> float | None:
    """--gpus-per-trial for the settings: None (auto) is planned once Ray is up."""
    return None if value == AUTO else value


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Flags left unset take the reference's values (the demo's with --demo), and the
    settings' own defaults."""
    ref = TrainConfig.reference().to_flat()
    defaults = {**ref, "trials": RunSettings.trials, **(DEMO if args.demo else {})}
    chosen = {
        name: defaults[name] if getattr(args, name) is None else getattr(args, name)
        for name in (*TRAINING_FLAGS, "trials")
    }
    if args.demo and not args.resume:  # beside the runs, or in the cache for s3://…
        if args.data is not None:
            raise UserError(
                f"run: --demo writes and uses its own synthetic data, so --data {args.data} "
                "would be ignored; drop --demo to run on that folder"
            )
        local = storage.cache_root() if storage.is_remote(args.storage) else Path(args.storage)
        args.data = local / DEMO_DATA_DIR
    if args.resume and not args.name:
        raise UserError("run: --resume needs the --name of the experiment to continue")
    if args.data is None and not args.resume:  # on resume: the saved data, unless given
        raise UserError("run: give --data DIR (a BUSI folder), --demo, or --resume --name NAME")
    fixed = {} if args.threshold in (None, AUTO) else {"threshold": args.threshold}
    try:
        base = TrainConfig.reference().replace(
            seed=args.seed, **{name: chosen[name] for name in TRAINING_FLAGS}, **fixed
        )
    except ValueError as error:
        raise UserError(f"run: {error}") from None
    # --reference: the reference protocol's split and data (random, conflicts kept).
    split = SplitPolicy.RANDOM if args.reference else RunSettings.split
    conflicts = ConflictPolicy.KEEP if args.reference else RunSettings.conflicts
    return RunSettings(
        data=args.data,
        base=base,
        reference_only=args.reference,
        trials=chosen["trials"],
        max_concurrent=args.max_concurrent,
        space=args.space,
        scheduler=Scheduler(args.scheduler),
        grace_period=args.grace_period,
        metric=args.metric,
        seed=args.seed,
        split=SplitPolicy(args.split or split),
        conflicts=ConflictPolicy(args.conflicts or conflicts),
        folds=args.folds,
        storage=args.storage,
        name=args.name,
        shared_storage=args.shared_storage,
        resume=args.resume,
        address=args.address,
        gpus_per_trial=_gpus(args.gpus_per_trial),
        cpus_per_trial=args.cpus_per_trial,
        max_failures=args.max_failures,
        checkpoint_every=args.checkpoint_every,
        reuse_actors=args.reuse_actors,
        compiled=args.compile,
        choose_threshold=args.threshold == AUTO,
        final_seeds=args.final_seeds,
        final_top=args.final_top,
        local_gpus=args.local_gpus,
        cache_dir=args.cache_dir,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)  # bad flags fail here, before Ray and torch load
    if settings.data is not None and not args.demo:
        from trainable.dataset import discover

        discover(settings.data)  # a wrong path or layout: one line, before weights or Ray
    from results.experiment import load_experiment
    from tuner import experiment_folder, interrupts, summary, sweep

    interrupts.stop_on_sigterm()

    if args.demo and not settings.resume and not settings.data.exists():
        from trainable.synth import write_synthetic_busi

        count = write_synthetic_busi(settings.data, **DEMO_SYNTH)
        where = storage.shown(settings.data)
        console.say(f"wrote a synthetic BUSI set of {count} images to {where}")
    from tuner.progress import ConsoleLines

    settings, _ = sweep.run(settings, None if args.verbose else ConsoleLines())
    experiment = load_experiment(settings.experiment_dir)
    console.say(summary.summarise(settings, experiment))
    if args.demo:
        console.say(
            "(synthetic data: the comparison shows the pipeline working, not a BUSI result)"
        )
    if not sweep.all_ended(settings, experiment):  # Ctrl-C or SIGTERM: Tune stops, returns
        resume = experiment_folder.resume_command(settings)
        console.warn(f"interrupted; continue with: {resume}")
        return interrupts.exit_status()
    if all(trial.errored for trial in experiment.trials):
        console.warn("error: every trial errored; see the lines above")
        return 1
    if settings.final_seeds and not settings.reference_only:
        return _final_round(settings, experiment, None if args.verbose else ConsoleLines())
    return 0


def _final_round(settings: RunSettings, experiment: Experiment, write) -> int:
    """After the last trial: the winner over fresh seeds (--final-seeds)."""
    from results.confirm import choose_candidates, confirmation_lines
    from tuner import experiment_folder, interrupts
    from tuner.retrain import final_round

    try:
        candidates = choose_candidates(experiment, settings.final_top)
    except UserError as error:  # no reference trial, or nothing to compare it with
        console.warn(f"final round left out: {error}")
        return 0
    console.say(
        f"final round: {', '.join(c.label for c in candidates)}, {settings.final_seeds} fresh "
        f"seeds each, the whole budget ({settings.base.epochs} epochs)"
    )
    result = final_round(settings, experiment, candidates, write)
    if result is None:  # Ctrl-C or SIGTERM
        resume = experiment_folder.resume_command(settings)
        console.warn(f"interrupted; continue with: {resume}")
        return interrupts.exit_status()
    console.say("\n".join(confirmation_lines(result)))
    return 0


def data_check(args: argparse.Namespace) -> int:
    from trainable.integrity import check_dataset, format_report, report_json

    if not args.dir.is_dir():
        raise UserError(f"data check: {args.dir}: no such folder; give the BUSI folder")

    report = check_dataset(args.dir, progress=True)
    console.say(json.dumps(report_json(report), indent=1) if args.json else format_report(report))
    return 0 if report.usable else 1


def data_synth(args: argparse.Namespace) -> int:
    from trainable.synth import write_synthetic_busi

    count = write_synthetic_busi(
        args.dir,
        n_benign=args.benign,
        n_malignant=args.malignant,
        n_normal=args.normal,
        seed=args.seed,
    )
    console.say(f"wrote {count} images in the BUSI layout to {args.dir}")
    return 0


def spaces(args: argparse.Namespace) -> int:
    from search_spaces import SPACES

    for space in SPACES.values():
        console.say(f"{space.name:<10} {space.description}")
    return 0


def report(args: argparse.Namespace) -> int:
    from results.layout import REPORT_DIR
    from results.report import write_report
    from results.tables import format_terminal_table
    from trainable.preprocess import load_busi
    from tuner.experiment_folder import open_experiment

    experiment = open_experiment(args.dir)
    # The examples' images come from the reader's cache ($BUSI_TUNE_CACHE), never from a
    # folder the experiment's settings name.
    read_images = functools.partial(load_busi, progress=False)
    paths = write_report(experiment, args.all_test_metrics, read_images)
    console.say(format_terminal_table(experiment, result=paths.assessment))
    console.say(f"report:  {storage.shown(paths.markdown)}")
    console.say(f"trials:  {storage.shown(paths.trials_csv)}")
    for plot in paths.plots:
        console.say(f"plot:    {storage.shown(plot)}")
    if experiment.is_remote:
        console.say(f"copied:  {storage.join(experiment.location, REPORT_DIR)}/")
    return 0


def confirm(args: argparse.Namespace) -> int:
    from results.confirm import (
        choose_candidates,
        confirmation,
        confirmation_lines,
        save_confirmation,
        split_seeds,
        training_seeds,
    )
    from results.layout import REPORT_DIR
    from tuner import retrain
    from tuner.experiment_folder import open_experiment
    from tuner.progress import ConsoleLines

    plan = ConfirmSettings(args.seeds, args.split_seeds, args.top)
    experiment = open_experiment(args.dir)
    candidates = choose_candidates(experiment, plan.top)
    seeds = training_seeds(experiment.settings.base.seed, plan.seeds)
    splits = split_seeds(experiment.settings.seed, plan.split_seeds)
    locations, complete = retrain.run(
        experiment,
        candidates,
        seeds,
        splits,
        address=args.address,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=_gpus(args.gpus_per_trial),
        write=None if args.verbose else ConsoleLines(),
    )
    if not complete:
        from tuner import interrupts

        console.warn(f"interrupted; the runs so far: {', '.join(map(console.shown, locations))}")
        return interrupts.exit_status()
    retrained = [open_experiment(location) for location in locations]
    result = confirmation(experiment, candidates, retrained)
    path = save_confirmation(result, experiment.path / REPORT_DIR)
    if experiment.is_remote:  # kept with the experiment
        remote = storage.join(experiment.location, REPORT_DIR, path.name)
        storage.upload(path, remote)
        path = remote
    console.say("\n".join(confirmation_lines(result)))
    console.say(f"\nsaved: {storage.shown(path)}")
    where = shlex.quote(storage.shown(experiment.location))
    console.say(f"report with it: python -m tuner report {where}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from tuner.experiment_folder import open_experiment
    from tuner.inference import Part
    from tuner.inference.evaluate import evaluate_trial, format_result
    from tuner.inference.model import pick_trial

    if args.trial is not None and args.ensemble > 1:
        raise UserError("--trial and --ensemble: choose one trial or the K best, not both")
    experiment = open_experiment(args.dir)
    trial = pick_trial(experiment, args.trial)
    result = evaluate_trial(
        experiment,
        trial,
        Part(args.part),
        args.data,
        args.batch_size,
        flip=Tta(args.tta) is Tta.FLIP,
        ensemble=args.ensemble,
    )
    console.say(json.dumps(result.to_json()) if args.json else format_result(result))
    return 0


def predict(args: argparse.Namespace) -> int:
    from tuner.inference import predict as prediction
    from tuner.inference import segmenter

    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UserError(f"--threshold {args.threshold}: must lie strictly between 0 and 1")
    flip = Tta(args.tta) is Tta.FLIP
    if Path(args.source).is_file():
        model = segmenter.from_export(Path(args.source), flip, args.threshold)
        card_file = segmenter.card_path(Path(args.source))
        known = prediction.known_from_card(segmenter.read_card(Path(args.source)), card_file)
    else:
        from tuner.experiment_folder import open_experiment
        from tuner.inference.model import pick_trial

        experiment = open_experiment(args.source)
        model = segmenter.from_experiment(
            experiment, args.trial, args.ensemble, flip, args.threshold
        )
        # Every trial of an experiment has the same split: the first model's says it.
        known = prediction.known_from_experiment(experiment, pick_trial(experiment, args.trial))
    prediction.prepare_output(args.out, args.images, args.overwrite)
    if known.unknown is not None:
        console.warn(
            f"in_experiment unknown for every image: {known.unknown} (predict where the "
            "data is, or with a model exported there)"
        )
    predictions, skipped = prediction.predict_folder(
        model, args.images, args.out, args.batch_size, known=known
    )
    for line in skipped:
        console.warn(f"skipped: {line}")
    console.say(f"segmented {len(predictions)} images with {model.describe()}")
    if line := prediction.summary(predictions):
        console.say(line)
    console.say(f"masks, overlays: {storage.shown(args.out)}")
    console.say(f"table:           {storage.shown(args.out / prediction.CSV_FILE)}")
    return 0


def export(args: argparse.Namespace) -> int:
    from tuner.experiment_folder import open_experiment
    from tuner.inference.export import export as export_model
    from tuner.inference.model import pick_trial

    experiment = open_experiment(args.dir)
    trial = pick_trial(experiment, args.trial)
    card = export_model(experiment, trial, args.out, args.format)
    console.say(f"exported {trial.name} ({args.format}): {storage.shown(args.out)}")
    console.say(f"model card: {storage.shown(card)}")
    console.say(
        f"use it:     python -m tuner predict {shlex.quote(str(args.out))} --images DIR --out DIR"
    )
    return 0
