"""`python -m tuner`: the command line's grammar. Every command, flag, default and help
text; a mistyped one refused with a suggestion; then the command's handler
(tuner.commands), whose UserError is one `error:` line (exit status 2). Flag defaults come
from where the tuner reads them (RunSettings, TrainConfig.reference(), results.settings'
defaults, write_synthetic_busi's, tuner.inference's), never typed twice."""

from __future__ import annotations

import argparse
import difflib
import inspect
import re
from pathlib import Path

from results.config import TrainConfig
from results.errors import UserError
from results.layout import EXPORT_FORMATS
from results.settings import (
    CPUS_PER_GPU_TRIAL,
    GPU_FINAL_SEEDS,
    GPU_HEADROOM,
    GRACE_SHARE,
    MAX_DEFAULT_CPUS,
    REDUCTION_FACTOR,
    ConfirmSettings,
    ConflictPolicy,
    RunSettings,
    Scheduler,
    SplitPolicy,
    default_grace_period,
)
from trainable.synth import write_synthetic_busi  # no torch: cv2 and PIL only
from tuner import commands, console
from tuner.commands import AUTO, DEMO
from tuner.inference import (
    ENSEMBLE,
    EVALUATE_BATCH_SIZE,
    PREDICT_BATCH_SIZE,
    Part,
    Tta,
)


def _percent(share: float) -> str:
    """A share as help text shows it: 0.4 -> 40%% (argparse formats help with %)."""
    return f"{share:.0%}".replace("%", "%%")


# Flags of both `run` and `confirm`.
GPUS_PER_TRIAL_HELP = (
    "a fraction packs trials on one GPU; auto measures the heaviest trial's GPU memory on "
    f"the cluster and packs what fits with {_percent(GPU_HEADROOM)} free, at most one trial "
    f"per {CPUS_PER_GPU_TRIAL} of the node's CPUs per GPU, and says the plan (default: auto; "
    "0 without GPUs)"
)
CPUS_PER_TRIAL_HELP = (
    "CPUs of a trial: on a GPU, one feeds it and the others run DataLoader workers "
    "(augmentation); on a CPU, all compute (default: 1 for CPU trials; for GPU trials the "
    f"CPUs a node can give each of its GPU trials, at most {MAX_DEFAULT_CPUS})"
)


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


_REFERENCE = TrainConfig.reference()
CONFIRM_DEFAULTS = ConfirmSettings()


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    ref = _REFERENCE
    group = parser.add_argument_group("model and budget (defaults: the reference study)")

    def flag(name: str, kind: type, text: str) -> None:
        field = name.removeprefix("--").replace("-", "_")
        default = f"{getattr(ref, field)}; --demo: {DEMO[field]}"
        group.add_argument(name, type=kind, default=None, help=f"{text} (default: {default})")

    flag("--encoder", str, "smp encoder")
    flag("--encoder-weights", str, "smp weights name, a weights file (.safetensors/.pth), or none")
    flag("--image-size", int, "pixels, a multiple of 32")
    flag(
        "--batch-size",
        int,
        "images per step of the base config only: a --reference run's trial, or a sweep's "
        "trial_000 (the reference point); the sweep's other trials sample it from the "
        "space's batch sizes (see `spaces`), to which this value is added",
    )
    flag("--epochs", int, "epochs of a full trial: the budget")


def _add_run_parser(subparsers) -> None:
    run = subparsers.add_parser(
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
        f"(default: {RunSettings.trials}; --demo: {DEMO['trials']})",
    )
    sweep.add_argument(
        "--max-concurrent",
        type=int,
        default=RunSettings.max_concurrent,
        help="trials at once (default: as many as resources allow)",
    )
    sweep.add_argument(
        "--space",
        default=RunSettings.space,
        help="search space, see `spaces` (default: %(default)s)",
    )
    sweep.add_argument(
        "--scheduler",
        choices=[s.value for s in Scheduler],
        default=RunSettings.scheduler.value,
        help="asha stops trials whose objective trails at the grace period's epoch, "
        f"x{REDUCTION_FACTOR}, ...; fifo trains every trial for the whole budget "
        "(default: %(default)s)",
    )
    sweep.add_argument(
        "--grace-period",
        type=int,
        default=RunSettings.grace_period,
        help="epochs every trial trains before ASHA may stop it (default: "
        f"{_percent(GRACE_SHARE)} of the budget: {default_grace_period(_REFERENCE.epochs)} "
        f"of {_REFERENCE.epochs} epochs; --demo: {default_grace_period(DEMO['epochs'])})",
    )
    sweep.add_argument(
        "--metric",
        default=RunSettings.metric,
        help="what configs are ranked by: the selected model's value on the validation "
        "part, selected_heldout_<loss|dice|iou|dice_per_image|hd95|...>, maximised or "
        "minimised as the metric wants (hd95: pixels, minimised); or best_combined_loss, "
        "the epoch rule's own value, which holds "
        f"{_percent(_REFERENCE.selection_train_weight)} training loss and so penalises "
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
        f"(default: {_REFERENCE.threshold})",
    )
    sweep.add_argument(
        "--seed",
        type=int,
        default=RunSettings.seed,
        help="seed of the split, the sampler and training (default: %(default)s)",
    )
    sweep.add_argument(
        "--split",
        choices=[p.value for p in SplitPolicy],
        default=None,
        help="grouped (near-duplicates kept on one side) or random (the reference's, which "
        "leaks near-duplicates across parts) "
        f"(default: {RunSettings.split}; --reference: {SplitPolicy.RANDOM})",
    )
    sweep.add_argument(
        "--conflicts",
        choices=[p.value for p in ConflictPolicy],
        default=None,
        help="exclude leaves out the copies of one frame whose labels or lesion masks "
        "contradict (`data check` lists them), neither trained on nor scored; keep uses "
        f"them (default: {RunSettings.conflicts}; --reference: {ConflictPolicy.KEEP})",
    )
    sweep.add_argument(
        "--folds",
        type=int,
        default=RunSettings.folds,
        help="K > 1: each trial trains K models in lockstep, one per fold of the training "
        "part (grouped and stratified like the split), and is ranked by their mean; its "
        "test metrics are the K models' ensemble (default: %(default)s, one validation part)",
    )
    final = run.add_argument_group("the final round: the winner over seeds")
    final.add_argument(
        "--final-seeds",
        type=int,
        default=RunSettings.final_seeds,
        help="after the last trial, retrain the reference config and the --final-top best "
        "configs with S fresh training seeds each (a Tune run <name>-final beside the sweep, "
        "full budget, same split), pick the winner on their mean validation objective and "
        "say with intervals over seeds and test-image groups whether it beats the "
        "reference on test; 0: off, the sweep's best trial is the winner (default: "
        f"{GPU_FINAL_SEEDS} when trials run on GPUs, 0 on CPUs)",
    )
    final.add_argument(
        "--final-top",
        type=int,
        default=RunSettings.final_top,
        help="configs of the final round besides the reference (default: %(default)s)",
    )
    where = run.add_argument_group("where and how")
    where.add_argument(
        "--storage",
        default=RunSettings.storage,
        help="folder or URI (s3://...) for experiments (default: %(default)s)",
    )
    where.add_argument(
        "--shared-storage",
        action="store_true",
        help="the local --storage path is mounted by every node, e.g. NFS (default: off)",
    )
    where.add_argument(
        "--name",
        default=RunSettings.name,
        help="experiment name (default: sweep-/reference-<date-time>)",
    )
    where.add_argument(
        "--resume", action="store_true", help="continue the experiment --name (default: off)"
    )
    where.add_argument(
        "--address",
        default=RunSettings.address,
        help="Ray cluster address, e.g. auto (default: start Ray locally)",
    )
    where.add_argument(
        "--gpus-per-trial",
        type=_number_or_auto,
        default=RunSettings.gpus_per_trial,
        help=GPUS_PER_TRIAL_HELP,
    )
    where.add_argument(
        "--cpus-per-trial",
        type=int,
        default=RunSettings.cpus_per_trial,
        help=CPUS_PER_TRIAL_HELP,
    )
    where.add_argument(
        "--max-failures",
        type=int,
        default=RunSettings.max_failures,
        help="retries of a trial lost to a dead worker (default: %(default)s)",
    )
    where.add_argument(
        "--checkpoint-every",
        type=int,
        default=RunSettings.checkpoint_every,
        help="epochs between a trial's full training states, which a retry or --resume "
        "continues from (it loses at most this many epochs); the selected weights are "
        "written on every improvement regardless (default: %(default)s)",
    )
    where.add_argument(
        "--reuse-actors",
        action=argparse.BooleanOptionalAction,
        default=RunSettings.reuse_actors,
        help="start a trial in the Ray worker a finished trial leaves, skipping a new "
        "worker's start and imports; results are identical either way "
        f"(default: {_on_off(RunSettings.reuse_actors)})",
    )
    where.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=RunSettings.compiled,
        help="torch.compile each trial's model: its first steps compile (minutes for the "
        "reference model), later steps may run faster on a GPU; see benchmarks/README.md, "
        f"section 5 (default: {_on_off(RunSettings.compiled)})",
    )
    where.add_argument(
        "--local-gpus",
        type=int,
        default=RunSettings.local_gpus,
        help="GPUs to declare when starting Ray locally (default: detected)",
    )
    where.add_argument(
        "--cache-dir",
        type=Path,
        default=RunSettings.cache_dir,
        help="preprocessed-data cache (default: $BUSI_TUNE_CACHE or ~/.cache/busi-tune)",
    )
    run.set_defaults(handler=commands.run)


def _on_off(default: bool) -> str:
    return "on" if default else "off"


def _number_or_auto(value: str) -> float | str:
    """A flag's value: a number, or "auto" (--threshold, --gpus-per-trial)."""
    if value == AUTO:
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number or auto") from None


def _add_data_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="check a BUSI folder, or write a synthetic one")
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
    check.set_defaults(handler=commands.data_check)
    synth = data_commands.add_parser("synth", help="write a synthetic BUSI-layout dataset")
    synth.add_argument("dir", type=Path, help="new folder to create")
    written = inspect.signature(write_synthetic_busi).parameters  # its defaults, not typed again
    for label in ("benign", "malignant", "normal"):
        synth.add_argument(
            f"--{label}",
            type=int,
            default=written[f"n_{label}"].default,
            help=f"{label} images (default: %(default)s)",
        )
    synth.add_argument(
        "--seed",
        type=int,
        default=written["seed"].default,
        help="the same seed writes the same bytes (default: %(default)s)",
    )
    synth.set_defaults(handler=commands.data_synth)


def _add_report_parser(subparsers) -> None:
    report = subparsers.add_parser(
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
    report.set_defaults(handler=commands.report)


def _add_confirm_parser(subparsers) -> None:
    confirm = subparsers.add_parser(
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
        "--seeds",
        type=int,
        default=CONFIRM_DEFAULTS.seeds,
        help="training seeds per config (default: %(default)s)",
    )
    confirm.add_argument(
        "--split-seeds",
        type=int,
        default=CONFIRM_DEFAULTS.split_seeds,
        help="splits to retrain on: the sweep's, then other draws of its split policy, each "
        "a Tune run <name>-confirm-split<seed>, so that the split's own noise counts "
        "(default: %(default)s, the sweep's split only)",
    )
    confirm.add_argument(
        "--top",
        type=int,
        default=CONFIRM_DEFAULTS.top,
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
        help=GPUS_PER_TRIAL_HELP,
    )
    confirm.add_argument(
        "--cpus-per-trial",
        type=int,
        default=None,
        help=CPUS_PER_TRIAL_HELP,
    )
    confirm.set_defaults(handler=commands.confirm)


def _add_evaluate_parser(subparsers) -> None:
    evaluate = subparsers.add_parser(
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
        choices=[part.value for part in Part],
        default=Part.TEST.value,
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
        default=EVALUATE_BATCH_SIZE,
        help="images per forward pass; changes no result (default: %(default)s)",
    )
    evaluate.add_argument(
        "--tta",
        choices=[tta.value for tta in Tta],
        default=Tta.NONE.value,
        help="flip: average with the horizontally flipped pass, as `predict --tta flip` "
        "(default: %(default)s)",
    )
    evaluate.add_argument(
        "--ensemble",
        type=int,
        default=ENSEMBLE,
        help="average the probabilities of the K best trials, as `predict --ensemble K`, at "
        "the best trial's threshold (default: %(default)s)",
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print one JSON object instead (default: off)"
    )
    evaluate.set_defaults(handler=commands.evaluate)


def _add_predict_parser(subparsers) -> None:
    predict = subparsers.add_parser(
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
        default=ENSEMBLE,
        help="average the probabilities of the K best trials (default: %(default)s)",
    )
    predict.add_argument(
        "--tta",
        choices=[tta.value for tta in Tta],
        default=Tta.NONE.value,
        help="flip: average with the horizontally flipped pass (default: %(default)s)",
    )
    predict.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="probability above which a pixel is lesion (default: the one the trial was "
        "scored at, which its metrics.json records: its config's, or the one it chose on its "
        "validation part under `run --threshold auto`; with --ensemble, the best trial's; "
        "for an exported file, its model card's)",
    )
    predict.add_argument(
        "--batch-size",
        type=int,
        default=PREDICT_BATCH_SIZE,
        help="images per forward pass (default: %(default)s)",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out (default: refuse)",
    )
    predict.set_defaults(handler=commands.predict)


def _add_export_parser(subparsers) -> None:
    export = subparsers.add_parser(
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
        choices=EXPORT_FORMATS,
        default=EXPORT_FORMATS[0],
        help="torchscript: for torch.jit.load and libtorch; onnx: for onnxruntime and other "
        'ONNX runtimes, needs pip install "busi-tune[onnx]" (default: %(default)s)',
    )
    export.set_defaults(handler=commands.export)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m tuner",
        description="busi-tune: hyper-parameter tuning for BUSI tumour segmentation",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (default: off)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    _add_data_parser(subparsers)
    spaces = subparsers.add_parser("spaces", help="list the search spaces")
    spaces.set_defaults(handler=commands.spaces)
    _add_report_parser(subparsers)
    _add_confirm_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_predict_parser(subparsers)
    _add_export_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.log_to_stderr(args.verbose)
    try:
        return args.handler(args)
    except UserError as error:
        console.warn(f"error: {error}")
        return 2
    except KeyboardInterrupt:  # before Tune started (or in another command): nothing to resume
        from tuner import interrupts

        console.warn("interrupted")
        return interrupts.exit_status()
