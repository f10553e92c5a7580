"""Early stopping: the same sweep (same seed, so the same sampled configs) with ASHA and
with FIFO through the CLI: trial-epochs trained, wall time and the best validation
objective each finds, read from the experiment folders.

    python -m benchmarks.early_stopping --data ../shared/busi/Dataset_BUSI_with_GT

Long on a small CPU: it prints its estimate first (--epoch-seconds), and --trials and
--epochs shrink it.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import OWN_RAY, add_data_flags, report, table
from results.experiment import load_experiment
from results.settings import REDUCTION_FACTOR, Scheduler, default_grace_period
from trainable.metrics import DICE

TRIAL_START_SECONDS = 15  # a trial's actor start, measured with benchmarks.trial_overhead
RUN_START_SECONDS = 30  # imports, data load, Ray start


def asha_expected_fraction(epochs: int) -> float:
    """Trial-epochs ASHA trains over those FIFO trains, in the synchronous limit (many
    trials, each rung keeping exactly the best 1/3). Asynchronous ASHA promotes more
    than that early in a sweep, when a rung has seen few trials."""
    rungs, rung = [], default_grace_period(epochs)
    while rung < epochs:
        rungs.append(rung)
        rung *= REDUCTION_FACTOR
    stops = [*rungs, epochs]
    expected = stops[0] + sum(
        (stops[k + 1] - stops[k]) / REDUCTION_FACTOR ** (k + 1) for k in range(len(rungs))
    )
    return expected / epochs


def estimate_seconds(args: argparse.Namespace, fraction: float) -> float:
    trial_epochs = args.trials * args.epochs * (1 + fraction)
    per_slot = trial_epochs * args.epoch_seconds + 2 * args.trials * TRIAL_START_SECONDS
    return per_slot / args.concurrency + 2 * RUN_START_SECONDS


def read_experiment(directory: Path) -> dict[str, Any]:
    """Per trial: its config, epochs trained and objective; the sweep's best, ranked as the
    reporter ranks it."""
    experiment = load_experiment(directory)
    best = experiment.best
    return {
        "trials": [
            {
                "trial": t.name,
                "params": t.params,
                "epochs": t.epochs_run,
                "objective": t.objective,
                "test_dice": t.selected.test[DICE] if t.selected else math.nan,
                "errored": t.errored,
            }
            for t in experiment.trials
        ],
        "trial_epochs": sum(t.epochs_run for t in experiment.trials),
        "best_objective": best.objective,
        "best_trial": best.name,
        "best_test_dice": best.selected.test[DICE],
    }


def sweep(args: argparse.Namespace, scheduler: Scheduler, storage: Path) -> dict[str, Any]:
    name = f"early-stopping-{scheduler.value}"
    command = [sys.executable, "-m", "tuner", "run", "--data", str(args.data)]
    command += ["--encoder", args.encoder, "--encoder-weights", "none"]
    command += ["--image-size", str(args.image_size), "--epochs", str(args.epochs)]
    command += ["--trials", str(args.trials), "--scheduler", scheduler.value]
    command += ["--seed", str(args.seed), "--storage", str(storage), "--name", name]
    command += ["--max-concurrent", str(args.concurrency)]
    if args.cache_dir:
        command += ["--cache-dir", str(args.cache_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | OWN_RAY)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr}")
    result = {"scheduler": scheduler.value, "wall_seconds": wall} | read_experiment(storage / name)
    print(
        f"{scheduler.value}: {result['trial_epochs']} trial-epochs in {wall:.0f} s, best "
        f"objective {result['best_objective']:.4f}",
        flush=True,
    )
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    fraction = asha_expected_fraction(args.epochs)
    estimate = estimate_seconds(args, fraction)
    print(
        f"estimate: {estimate / 60:.0f} min for {args.trials} trials x {args.epochs} epochs "
        f"with ASHA then FIFO (expected ASHA fraction {fraction:.0%}), at "
        f"{args.epoch_seconds:.0f} s per trial-epoch and {args.concurrency} trials at once",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as storage:
        runs = [sweep(args, s, Path(storage)) for s in (Scheduler.ASHA, Scheduler.FIFO)]
    asha, fifo = runs
    return {
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        }
        | {"grace_period": default_grace_period(args.epochs), "reduction_factor": REDUCTION_FACTOR},
        "estimate_seconds": estimate,
        "asha_expected_fraction": fraction,
        "runs": runs,
        "same_configs": [t["params"] for t in asha["trials"]]
        == [t["params"] for t in fifo["trials"]],
        "asha_over_fifo_epochs": asha["trial_epochs"] / fifo["trial_epochs"],
        "asha_over_fifo_wall": asha["wall_seconds"] / fifo["wall_seconds"],
    }


def format_results(results: dict[str, Any]) -> str:
    s = results["settings"]
    return "\n".join(
        [
            f"early stopping: {s['trials']} trials x {s['epochs']} epochs, {s['encoder']}, "
            f"{s['image_size']} px, seed {s['seed']}, {s['concurrency']} at once; ASHA grace "
            f"{s['grace_period']}, reduction factor {s['reduction_factor']}; same sampled "
            f"configs in both: {'yes' if results['same_configs'] else 'NO'}",
            table(
                [
                    "scheduler",
                    "trial-epochs",
                    "wall s",
                    "best objective",
                    "best trial",
                    "its test dice",
                ],
                [
                    [
                        r["scheduler"],
                        r["trial_epochs"],
                        r["wall_seconds"],
                        r["best_objective"],
                        r["best_trial"],
                        r["best_test_dice"],
                    ]
                    for r in results["runs"]
                ],
            ),
            f"ASHA/FIFO: {results['asha_over_fifo_epochs']:.0%} of the trial-epochs "
            f"(synchronous-limit expectation {results['asha_expected_fraction']:.0%}), "
            f"{results['asha_over_fifo_wall']:.0%} of the wall time; estimate was "
            f"{results['estimate_seconds'] / 60:.0f} min",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.early_stopping", description=__doc__.split("\n\n")[0]
    )
    add_data_flags(parser)
    parser.add_argument("--trials", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=6, help="(default: %(default)s)")
    parser.add_argument("--encoder", default="resnet18", help="(default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="trials at once, each with one CPU (default: %(default)s)",
    )
    parser.add_argument(
        "--epoch-seconds",
        type=float,
        default=40,
        help="one trial-epoch's time, for the estimate only (default: %(default)s, resnet18 "
        "at 64 px on one core of the 2-core VM, measured by benchmarks.trial_overhead)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    results = run(args)
    return report(results, format_results(results), args.json)


if __name__ == "__main__":
    main()
