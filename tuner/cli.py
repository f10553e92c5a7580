"""`python -m tuner`: the command line. The only module that prints."""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import re
import shlex
import sys
from pathlib import Path

from results import keys, storage
from results.config import TrainConfig
from results.errors import UserError
from results.settings import ConflictPolicy, RunSettings, Scheduler, SplitPolicy

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
DEFAULT_TRIALS = 32
TRAINING_FLAGS = ("encoder", "encoder_weights", "image_size", "batch_size", "epochs")


class _Parser(argparse.ArgumentParser):
    """No abbreviations (`--dem` must not start a demo, `--epoch 2` must not pass for
    `--epochs 2`), and a suggestion when a flag or command is mistyped."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        super().error(message + suggestion(message, self))


def _known_words(parser: argparse.ArgumentParser, command: str = "") -> dict[str, list[str]]:
    """Every option string and command name of a parser and its subcommands, with the
    commands that have it ("" for the top level)."""
    words: dict[str, list[str]] = {}
    for action in parser._actions:
        for option in action.option_strings:
            words.setdefault(option, []).append(command)
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.setdefault(name, []).append(command)
                full = f"{command} {name}".strip()
                for word, owners in _known_words(sub, full).items():
                    words.setdefault(word, []).extend(owners)
    return words


def suggestion(message: str, parser: argparse.ArgumentParser) -> str:
    """ "; did you mean --trials?" for the first mistyped word that has a close match, or
    "; --json is an option of `evaluate`" for a flag given to a command that lacks it."""
    unknown = re.findall(r"unrecognized arguments: (.*)", message)
    unknown = unknown[0].split() if unknown else re.findall(r"invalid choice: '([^']*)'", message)
    known = _known_words(parser)
    for word in unknown:
        flag = word.split("=")[0]
        if flag in known:  # right flag, wrong command
            owners = ", ".join(f"`{owner}`" for owner in known[flag] if owner)
            return f"; {flag} is an option of {owners}, not of this command"
        close = difflib.get_close_matches(flag, list(known), n=1, cutoff=0.6)
        if close:
            return f"; did you mean {close[0]}?"
    return ""


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    ref = TrainConfig.reference()
    group = parser.add_argument_group("model and budget (defaults: the reference study)")

    def flag(name: str, kind: type, text: str) -> None:
        field = name.removeprefix("--").replace("-", "_")
        default = f"{getattr(ref, field)}; --demo: {DEMO[field]}"
        group.add_argument(name, type=kind, default=None, help=f"{text} (default: {default})")

    flag("--encoder", str, "smp encoder")
    flag("--encoder-weights", str, "smp weights name, a weights file (.safetensors/.pth), or none")
    flag("--image-size", int, "pixels, a multiple of 32")
    flag("--batch-size", int, "images per step")
    flag("--epochs", int, "epochs of a full trial: the budget")


def _add_run_parser(commands) -> None:
    run = commands.add_parser(
        "run",
        help="run a sweep (or the reference config alone with --reference)",
        description="Run an Optuna search around the reference through Ray Tune, or with "
        "--reference the reference config alone as one Ray Tune trial.",
    )
    what = run.add_argument_group("what to run")
    what.add_argument(
        "--data",
        type=Path,
        help="BUSI folder (Dataset_BUSI_with_GT layout); with --resume, the same data at "
        "another path (its content is checked against the run's)",
    )
    what.add_argument(
        "--demo",
        action="store_true",
        help="sweep a synthetic set it generates, with a small model "
        f"({DEMO['trials']} trials, {DEMO['epochs']} epochs, "
        f"{DEMO['image_size']} px, {DEMO['encoder']})",
    )
    what.add_argument(
        "--reference",
        action="store_true",
        help="run the reference config alone, reference protocol: random "
        "80/20 split, selection on the test part (optimistic)",
    )
    _add_training_flags(run)
    sweep = run.add_argument_group("the search")
    sweep.add_argument(
        "--trials",
        type=int,
        default=None,
        help="configs to try, the first being the base config itself "
        f"(default: {DEFAULT_TRIALS}; --demo: {DEMO['trials']})",
    )
    sweep.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials at once (default: as many as resources allow)",
    )
    sweep.add_argument(
        "--space", default="reference", help="search space, see `spaces` (default: %(default)s)"
    )
    sweep.add_argument(
        "--scheduler",
        choices=[s.value for s in Scheduler],
        default="asha",
        help="asha stops trials whose objective trails at the grace period's epoch, x3, "
        "...; fifo trains every trial for the whole budget (default: %(default)s)",
    )
    sweep.add_argument(
        "--grace-period",
        type=int,
        default=None,
        help="epochs every trial trains before ASHA may stop it (default: 40%% of the "
        "budget: 8 of 20 epochs; --demo: 3)",
    )
    sweep.add_argument(
        "--metric",
        default=keys.DEFAULT_OBJECTIVE,
        help="what configs are ranked by: the selected model's value on the validation "
        "part, selected_heldout_<loss|dice|iou|dice_per_image|hd95|...>, maximised or "
        "minimised as the metric wants (hd95: pixels, minimised); or best_combined_loss, "
        "the epoch rule's own value, which holds 20%% training loss and so penalises "
        "augmentation (default: %(default)s)",
    )
    sweep.add_argument(
        "--threshold",
        type=_number_or_auto,
        default=None,
        help="probability above which a pixel is lesion (every metric but the loss and the "
        "curves): a number, or auto: each trial chooses it on its validation part (the "
        "highest pooled Dice on 0.05, 0.10, ..., 0.95), records it in metrics.json and "
        "scores its test part at it; not with --reference, which has no validation part "
        f"(default: {TrainConfig.reference().threshold})",
    )
    sweep.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split, the sampler and training (default: %(default)s)",
    )
    sweep.add_argument(
        "--split",
        choices=[p.value for p in SplitPolicy],
        default=None,
        help="grouped (near-duplicates kept on one side) or random (the reference's, which "
        "leaks near-duplicates across parts) (default: grouped; --reference: random)",
    )
    sweep.add_argument(
        "--conflicts",
        choices=[p.value for p in ConflictPolicy],
        default=None,
        help="exclude leaves out the copies of one frame whose labels or lesion masks "
        "contradict (`data check` lists them), neither trained on nor scored; keep uses "
        "them (default: exclude; --reference: keep)",
    )
    sweep.add_argument(
        "--folds",
        type=int,
        default=1,
        help="K > 1: each trial trains K models in lockstep, one per fold of the training "
        "part (grouped and stratified like the split), and is ranked by their mean; its "
        "test metrics are the K models' ensemble (default: %(default)s, one validation part)",
    )
    final = run.add_argument_group("the final round: the winner over seeds")
    final.add_argument(
        "--final-seeds",
        type=int,
        default=None,
        help="after the last trial, retrain the reference config and the --final-top best "
        "configs with S fresh training seeds each (a Tune run <name>-final beside the sweep, "
        "full budget, same split), pick the winner on their mean validation objective and "
        "say with intervals over seeds and test-image groups whether it beats the "
        "reference on test; 0: off, the sweep's best trial is the winner (default: 2 when "
        "trials run on GPUs, 0 on CPUs)",
    )
    final.add_argument(
        "--final-top",
        type=int,
        default=3,
        help="configs of the final round besides the reference (default: %(default)s)",
    )
    where = run.add_argument_group("where and how")
    where.add_argument(
        "--storage",
        default="./runs",
        help="folder or URI (s3://...) for experiments (default: %(default)s)",
    )
    where.add_argument(
        "--shared-storage",
        action="store_true",
        help="the local --storage path is mounted by every node, e.g. NFS (default: off)",
    )
    where.add_argument(
        "--name", default="", help="experiment name (default: sweep-/reference-<date-time>)"
    )
    where.add_argument(
        "--resume", action="store_true", help="continue the experiment --name (default: off)"
    )
    where.add_argument(
        "--address",
        default=None,
        help="Ray cluster address, e.g. auto (default: start Ray locally)",
    )
    where.add_argument(
        "--gpus-per-trial",
        type=_number_or_auto,
        default=None,
        help="a fraction packs trials on one GPU; auto measures the heaviest trial's GPU "
        "memory on the cluster and packs what fits with 10%% free, at most one trial per 2 "
        "of the node's CPUs per GPU, and says the plan (default: auto; 0 without GPUs)",
    )
    where.add_argument(
        "--cpus-per-trial",
        type=int,
        default=None,
        help="CPUs of a trial: on a GPU, one feeds it and the others run DataLoader workers "
        "(augmentation); on a CPU, all compute "
        "(default: 1 for CPU trials; for GPU trials the CPUs a node can give each of its "
        "GPU trials, at most 8)",
    )
    where.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a trial lost to a dead worker (default: %(default)s)",
    )
    where.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        help="epochs between a trial's full training states, which a retry or --resume "
        "continues from (it loses at most this many epochs); the selected weights are "
        "written on every improvement regardless (default: %(default)s)",
    )
    where.add_argument(
        "--reuse-actors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start a trial in the Ray worker a finished trial leaves, skipping a new "
        "worker's start and imports; results are identical either way (default: on)",
    )
    where.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile each trial's model: its first steps compile (minutes for the "
        "reference model), later steps may run faster on a GPU; see benchmarks/README.md, "
        "section 5 (default: off)",
    )
    where.add_argument(
        "--local-gpus",
        type=int,
        default=None,
        help="GPUs to declare when starting Ray locally (default: detected)",
    )
    where.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="preprocessed-data cache (default: $BUSI_TUNE_CACHE or ~/.cache/busi-tune)",
    )
    run.set_defaults(handler=_run)


AUTO = "auto"


def _number_or_auto(value: str) -> float | str:
    """A flag's value: a number, or "auto" (--threshold, --gpus-per-trial)."""
    if value == AUTO:
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number or auto") from None


def _gpus(value: float | str | None) -> float | None:
    """--gpus-per-trial for the settings: None (auto) is planned once Ray is up."""
    return None if value == AUTO else value


def _add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="check a BUSI folder, or write a synthetic one")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser("check", help="integrity report of a BUSI folder")
    check.add_argument(
        "dir",
        type=Path,
        nargs="?",
        default=Path("Dataset_BUSI_with_GT"),
        help="the BUSI folder (default: %(default)s)",
    )
    check.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON: every near-duplicate group and contradicting copy "
        "by name, and their counts (default: text)",
    )
    check.set_defaults(handler=_data_check)
    synth = data_commands.add_parser("synth", help="write a synthetic BUSI-layout dataset")
    synth.add_argument("dir", type=Path, help="new folder to create")
    for label, count in (("benign", 24), ("malignant", 12), ("normal", 8)):
        synth.add_argument(
            f"--{label}", type=int, default=count, help=f"{label} images (default: %(default)s)"
        )
    synth.add_argument(
        "--seed", type=int, default=0, help="the same seed writes the same bytes (default: 0)"
    )
    synth.set_defaults(handler=_data_synth)


def _add_report_parser(commands) -> None:
    report = commands.add_parser(
        "report",
        help="tables, plots and report.md of an experiment, compared with the reference",
        description="Read an experiment folder offline (no Ray cluster) and write "
        "EXPERIMENT_DIR/report/: report.md, trials.csv and PNG plots.",
    )
    report.add_argument("dir", help="the experiment folder, <storage>/<name> (or s3://…)")
    report.add_argument(
        "--all-test-metrics",
        action="store_true",
        help="also write every trial's test metrics into trials.csv; the report shows those "
        "of the winner and the reference config only, since picking among trials by their "
        "test numbers would be picking on test (default: off)",
    )
    report.set_defaults(handler=_report)


def _add_confirm_parser(commands) -> None:
    confirm = commands.add_parser(
        "confirm",
        help="retrain the reference and the best config over seeds; is the gain real?",
        description="Retrain the in-sweep reference config and the best config(s) for the "
        "full budget with K fresh training seeds each (no early stopping) as a Ray Tune run "
        "<name>-confirm beside the sweep, on the sweep's split and with --split-seeds on "
        "other splits too; pick the winner on validation, then compare each config with "
        "the reference on the test part: the primary endpoint is the metric the sweep "
        "optimised (95% interval over seeds, test-image groups and splits), the others are "
        "secondary (Bonferroni-corrected). Writes EXPERIMENT_DIR/report/confirm.json.",
    )
    confirm.add_argument("dir", help="the sweep's folder, <storage>/<name> (or s3://…)")
    confirm.add_argument(
        "--seeds", type=int, default=3, help="training seeds per config (default: %(default)s)"
    )
    confirm.add_argument(
        "--split-seeds",
        type=int,
        default=1,
        help="splits to retrain on: the sweep's, then other draws of its split policy, each "
        "a Tune run <name>-confirm-split<seed>, so that the split's own noise counts "
        "(default: %(default)s, the sweep's split only)",
    )
    confirm.add_argument(
        "--top",
        type=int,
        default=1,
        help="how many of the best trials to retrain besides the reference (default: %(default)s)",
    )
    confirm.add_argument(
        "--address",
        default=None,
        help="Ray cluster address, e.g. auto (default: start Ray locally)",
    )
    confirm.add_argument(
        "--gpus-per-trial",
        type=_number_or_auto,
        default=None,
        help="a fraction packs trials on one GPU; auto measures the heaviest trial's GPU "
        "memory on the cluster and packs what fits with 10%% free, at most one trial per 2 "
        "of the node's CPUs per GPU, and says the plan (default: auto; 0 without GPUs)",
    )
    confirm.add_argument(
        "--cpus-per-trial",
        type=int,
        default=None,
        help="CPUs of a trial: on a GPU, one feeds it and the others run DataLoader workers "
        "(augmentation); on a CPU, all compute "
        "(default: 1 for CPU trials; for GPU trials the CPUs a node can give each of its "
        "GPU trials, at most 8)",
    )
    confirm.set_defaults(handler=_confirm)


def _add_evaluate_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="a trial's selected model on the validation or test part, or on other data",
        description="Load a trial's selected model (default: the best trial) and evaluate "
        "it on a part of the experiment's own split, or with --data on every image of "
        "another BUSI-layout folder, at the experiment's evaluation size, through the "
        "models `predict` runs (with its --tta and --ensemble too). Prints the pooled loss "
        "and every metric; on the experiment's parts also what the trial recorded.",
    )
    evaluate.add_argument("dir", help="the experiment folder, <storage>/<name> (or s3://…)")
    evaluate.add_argument(
        "--trial", default=None, help="trial name, e.g. trial_004 (default: the best trial)"
    )
    evaluate.add_argument(
        "--part",
        choices=["validation", "test"],
        default="test",
        help="part of the experiment's split (default: %(default)s)",
    )
    evaluate.add_argument(
        "--data",
        type=Path,
        default=None,
        help="evaluate on every image of this BUSI folder instead (default: the split's part)",
    )
    evaluate.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="images per forward pass; changes no result (default: %(default)s)",
    )
    evaluate.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="flip: average with the horizontally flipped pass, as `predict --tta flip` "
        "(default: %(default)s)",
    )
    evaluate.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="average the probabilities of the K best trials, as `predict --ensemble K`, at "
        "the best trial's threshold (default: %(default)s)",
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print one JSON object instead (default: off)"
    )
    evaluate.set_defaults(handler=_evaluate)


def _add_predict_parser(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="segment a folder of images with a tuned model",
        description="Segment every PNG/JPEG image of --images (any size, grey or RGB) with "
        "the selected model of an experiment's best trial (or --trial, or the --ensemble K "
        "best), or with a file that `export` wrote. Writes <name>_pred.png (mask at the "
        "image's size), <name>_overlay.png and predictions.csv into --out.",
    )
    predict.add_argument(
        "source",
        help="an experiment folder <storage>/<name> (or s3://…), or an exported .pt or .onnx",
    )
    predict.add_argument("--images", type=Path, required=True, help="folder of images (required)")
    predict.add_argument("--out", type=Path, required=True, help="output folder (required)")
    predict.add_argument(
        "--trial", default=None, help="trial name, e.g. trial_004 (default: the best trial)"
    )
    predict.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="average the probabilities of the K best trials (default: %(default)s)",
    )
    predict.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="flip: average with the horizontally flipped pass (default: %(default)s)",
    )
    predict.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="probability above which a pixel is lesion (default: the trained config's, 0.5)",
    )
    predict.add_argument(
        "--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)"
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out (default: refuse)",
    )
    predict.set_defaults(handler=_predict)


def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export",
        help="a trial's selected model as a TorchScript or ONNX file with a JSON model card",
        description="Write the selected model of the best trial (or --trial) as one "
        "TorchScript or ONNX file (grey values 0-255 in, lesion probabilities out, "
        "normalisation inside) and a model card <out>.json beside it. `predict` accepts "
        "the file.",
    )
    export.add_argument("dir", help="the experiment folder, <storage>/<name> (or s3://…)")
    export.add_argument("--out", type=Path, required=True, help="the file to write (required)")
    export.add_argument(
        "--trial", default=None, help="trial name, e.g. trial_004 (default: the best trial)"
    )
    export.add_argument(
        "--format",
        choices=["torchscript", "onnx"],
        default="torchscript",
        help="torchscript: for torch.jit.load and libtorch; onnx: for onnxruntime and other "
        'ONNX runtimes, needs pip install "busi-tune[onnx]" (default: %(default)s)',
    )
    export.set_defaults(handler=_export)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m tuner",
        description="busi-tune: hyper-parameter tuning for BUSI tumour segmentation",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (default: off)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(commands)
    _add_data_parser(commands)
    spaces = commands.add_parser("spaces", help="list the search spaces")
    spaces.set_defaults(handler=_spaces)
    _add_report_parser(commands)
    _add_confirm_parser(commands)
    _add_evaluate_parser(commands)
    _add_predict_parser(commands)
    _add_export_parser(commands)
    return parser


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Flags left unset take the reference's values (the demo's with --demo)."""
    ref = TrainConfig.reference().to_flat()
    defaults = {**ref, "trials": DEFAULT_TRIALS, **(DEMO if args.demo else {})}
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
        split=SplitPolicy(args.split or ("random" if args.reference else "grouped")),
        conflicts=ConflictPolicy(args.conflicts or ("keep" if args.reference else "exclude")),
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


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)  # bad flags fail here, before Ray and torch load
    if settings.data is not None and not args.demo:
        from trainable.dataset import discover

        discover(settings.data)  # a wrong path or layout: one line, before weights or Ray
    from tuner import experiment_folder, interrupts, summary, sweep

    interrupts.stop_on_sigterm()

    if args.demo and not settings.resume and not settings.data.exists():
        from trainable.synth import write_synthetic_busi

        count = write_synthetic_busi(settings.data, **DEMO_SYNTH)
        print(f"wrote a synthetic BUSI set of {count} images to {settings.data}")
    from tuner.progress import ConsoleLines

    settings, results = sweep.run(settings, None if args.verbose else ConsoleLines())
    print(summary.summarise(settings, results))
    if args.demo:
        print("(synthetic data: the comparison shows the pipeline working, not a BUSI result)")
    if not sweep.all_ended(settings, results):  # Ctrl-C or SIGTERM: Tune stops and returns
        resume = experiment_folder.resume_command(settings)
        print(f"interrupted; continue with: {resume}", file=sys.stderr)
        return interrupts.exit_status()
    if results.num_errors == len(results):
        print("error: every trial errored; see the lines above", file=sys.stderr)
        return 1
    if settings.final_seeds and not settings.reference_only:
        return _final_round(settings, None if args.verbose else ConsoleLines())
    return 0


def _final_round(settings: RunSettings, write) -> int:
    """After the last trial: the winner over fresh seeds (--final-seeds)."""
    from results.confirm import choose_candidates, confirmation_lines
    from tuner import confirm, experiment_folder, interrupts

    experiment = experiment_folder.open_experiment(settings.experiment_dir)
    try:
        candidates = choose_candidates(experiment, settings.final_top)
    except UserError as error:  # no reference trial, or nothing to compare it with
        print(f"final round left out: {error}", file=sys.stderr)
        return 0
    print(
        f"final round: {', '.join(c.label for c in candidates)}, {settings.final_seeds} fresh "
        f"seeds each, the whole budget ({settings.base.epochs} epochs)"
    )
    result = confirm.final_round(settings, experiment, candidates, write)
    if result is None:  # Ctrl-C or SIGTERM
        resume = experiment_folder.resume_command(settings)
        print(f"interrupted; continue with: {resume}", file=sys.stderr)
        return interrupts.exit_status()
    print("\n".join(confirmation_lines(result)))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    import json

    from trainable.integrity import check_dataset, format_report, report_json

    if not args.dir.is_dir():
        raise UserError(f"data check: {args.dir}: no such folder; give the BUSI folder")

    report = check_dataset(args.dir, progress=True)
    print(json.dumps(report_json(report), indent=1) if args.json else format_report(report))
    return 0 if report.usable else 1


def _data_synth(args: argparse.Namespace) -> int:
    from trainable.synth import write_synthetic_busi

    count = write_synthetic_busi(
        args.dir,
        n_benign=args.benign,
        n_malignant=args.malignant,
        n_normal=args.normal,
        seed=args.seed,
    )
    print(f"wrote {count} images in the BUSI layout to {args.dir}")
    return 0


def _spaces(args: argparse.Namespace) -> int:
    from search_spaces import SPACES

    for space in SPACES.values():
        print(f"{space.name:<10} {space.description}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from results.report import REPORT_DIR, format_terminal_table, write_report
    from trainable.preprocess import load_busi
    from tuner.experiment_folder import open_experiment

    experiment = open_experiment(args.dir)
    # The examples' images come from the reader's cache ($BUSI_TUNE_CACHE), never from a
    # folder the experiment's settings name.
    read_images = functools.partial(load_busi, progress=False)
    paths = write_report(experiment, args.all_test_metrics, read_images)
    print(format_terminal_table(experiment))
    print(f"report:  {paths.markdown}")
    print(f"trials:  {paths.trials_csv}")
    for plot in paths.plots:
        print(f"plot:    {plot}")
    if experiment.is_remote:
        print(f"copied:  {storage.join(experiment.location, REPORT_DIR)}/")
    return 0


def _confirm(args: argparse.Namespace) -> int:
    from results import confirm
    from results.report import REPORT_DIR
    from tuner import confirm as retrain
    from tuner.experiment_folder import open_experiment
    from tuner.progress import ConsoleLines

    if args.seeds < 1 or args.split_seeds < 1 or args.seeds * args.split_seeds < 2:
        raise UserError(
            "confirm: --seeds × --split-seeds must be at least 2 (an interval needs two runs "
            "of a config), each at least 1"
        )
    if args.top < 1:
        raise UserError("confirm: --top must be at least 1")
    experiment = open_experiment(args.dir)
    candidates = confirm.choose_candidates(experiment, args.top)
    seeds = confirm.training_seeds(experiment.settings.base.seed, args.seeds)
    splits = confirm.split_seeds(experiment.settings.seed, args.split_seeds)
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

        print(f"interrupted; the runs so far: {', '.join(locations)}", file=sys.stderr)
        return interrupts.exit_status()
    retrained = [open_experiment(location) for location in locations]
    result = confirm.confirmation(experiment, candidates, retrained)
    path = confirm.save_confirmation(result, experiment.path / REPORT_DIR)
    if experiment.is_remote:  # kept with the experiment
        remote = storage.join(experiment.location, REPORT_DIR, path.name)
        storage.upload(path, remote)
        path = remote
    print("\n".join(confirm.confirmation_lines(result)))
    print(f"\nsaved: {path}")
    print(f"report with it: python -m tuner report {shlex.quote(experiment.location)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from tuner.experiment_folder import open_experiment
    from tuner.inference import evaluate
    from tuner.inference.model import pick_trial

    if args.trial is not None and args.ensemble > 1:
        raise UserError("--trial and --ensemble: choose one trial or the K best, not both")
    experiment = open_experiment(args.dir)
    trial = pick_trial(experiment, args.trial)
    result = evaluate.evaluate_trial(
        experiment,
        trial,
        evaluate.Part(args.part),
        args.data,
        args.batch_size,
        flip=args.tta == "flip",
        ensemble=args.ensemble,
    )
    print(json.dumps(result.to_json()) if args.json else evaluate.format_result(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tuner.inference import predict, segmenter

    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UserError(f"--threshold {args.threshold}: must lie strictly between 0 and 1")
    flip = args.tta == "flip"
    if Path(args.source).is_file():
        model = segmenter.from_export(Path(args.source), flip, args.threshold)
        known = predict.known_from_card(segmenter.card_path(Path(args.source)))
    else:
        from tuner.experiment_folder import open_experiment
        from tuner.inference.model import pick_trial

        experiment = open_experiment(args.source)
        model = segmenter.from_experiment(
            experiment, args.trial, args.ensemble, flip, args.threshold
        )
        # Every trial of an experiment has the same split: the first model's says it.
        known = predict.known_from_experiment(experiment, pick_trial(experiment, args.trial))
    predict.prepare_output(args.out, args.images, args.overwrite)
    if known.unknown is not None:
        print(
            f"in_experiment unknown for every image: {known.unknown} (predict where the "
            "data is, or with a model exported there)",
            file=sys.stderr,
        )
    predictions, skipped = predict.predict_folder(
        model, args.images, args.out, args.batch_size, known=known
    )
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    print(f"segmented {len(predictions)} images with {model.describe()}")
    if line := predict.summary(predictions):
        print(line)
    print(f"masks, overlays: {args.out}")
    print(f"table:           {args.out / predict.CSV_FILE}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tuner.experiment_folder import open_experiment
    from tuner.inference import export
    from tuner.inference.model import pick_trial

    experiment = open_experiment(args.dir)
    trial = pick_trial(experiment, args.trial)
    card = export.export(experiment, trial, args.out, args.format)
    print(f"exported {trial.name} ({args.format}): {args.out}")
    print(f"model card: {card}")
    print(
        f"use it:     python -m tuner predict {shlex.quote(str(args.out))} --images DIR --out DIR"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before Tune started (or in another command): nothing to resume
        from tuner import interrupts

        print("interrupted", file=sys.stderr)
        return interrupts.exit_status()
