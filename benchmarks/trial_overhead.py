"""Per-trial overhead: the same small training run by calling the engine's `fit` directly
and as one Ray Tune trial through the CLI (`python -m tuner run --reference`): epoch time
inside the trial over epoch time outside, and the fixed start-up costs.

    python -m benchmarks.trial_overhead --data ../shared/busi/Dataset_BUSI_with_GT

Runs alternate, direct then trial, --repeats times; the first trial starts with a fresh
(cold) --cache-dir, the others with the cache it wrote (warm). Both sides train with one
torch thread, as a trial does with the CLI's default --cpus-per-trial 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DEFAULT_DATA, OWN_RAY, first_start, report, table
from results import keys
from results.config import TrainConfig
from results.settings import SplitPolicy
from trainable.engine import fit
from trainable.preprocess import load_busi
from trainable.splits import make_split

CPU = torch.device("cpu")
IMPORTS = "import tuner.cli, tuner.sweep, tuner.summary"  # what `python -m tuner run` loads


def direct_run(config: TrainConfig, data_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """`fit` in this process on the reference protocol, as `run --reference` trains."""
    data = load_busi(data_dir, config.image_size, cache_dir, progress=False)
    split = make_split(data, SplitPolicy.RANDOM, config.seed, with_validation=False)
    epochs, iterations = [], []
    last = time.perf_counter()

    def on_epoch_end(report, state) -> None:
        nonlocal last
        epochs.append(report.seconds)
        iterations.append(time.perf_counter() - last)
        last = time.perf_counter()

    fit(config, data, split, device=CPU, select_on_test=True, on_epoch_end=on_epoch_end)
    return {"epoch_seconds": epochs, "iteration_seconds": iterations}


def trial_run(
    config: TrainConfig, data_dir: Path, cache_dir: Path, storage: Path, name: str
) -> dict[str, Any]:
    """One `python -m tuner run --reference` in a subprocess; times from its files."""
    command = [sys.executable, "-m", "tuner", "run", "--reference", "--data", str(data_dir)]
    command += ["--encoder", config.encoder, "--encoder-weights", config.encoder_weights]
    command += ["--image-size", str(config.image_size), "--epochs", str(config.epochs)]
    command += ["--storage", str(storage), "--name", name, "--cache-dir", str(cache_dir)]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | OWN_RAY)
    exited = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr}")
    (trial,) = (storage / name).glob("trial_*")
    results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    started = first_start(trial).time  # the trial function running, before `fit`
    return {
        "epoch_seconds": [r[keys.EPOCH_SECONDS] for r in results],
        "iteration_seconds": [r["time_this_iter_s"] for r in results],
        "launch_to_trial_seconds": started - launched,
        "last_epoch_to_exit_seconds": exited - (started + results[-1]["time_total_s"]),
        "wall_seconds": exited - launched,
    }


def import_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.perf_counter() - started


def load_seconds(config: TrainConfig, data_dir: Path, cache_dir: Path) -> float:
    started = time.perf_counter()
    load_busi(data_dir, config.image_size, cache_dir, progress=False)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    config = TrainConfig.reference().replace(
        encoder=args.encoder,
        encoder_weights="none",
        image_size=args.image_size,
        epochs=args.epochs,
    )
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        startup = {
            "imports_seconds": import_seconds(),
            "load_cold_seconds": load_seconds(config, args.data, scratch / "load"),
            "load_warm_seconds": load_seconds(config, args.data, scratch / "load"),
        }
        direct, trials = [], []
        for repeat in range(args.repeats):
            # The direct runs read a warm cache: their data load is outside `fit` anyway.
            direct.append(direct_run(config, args.data, scratch / "load"))
            trials.append(
                trial_run(
                    config, args.data, scratch / "cli", scratch / "runs", f"overhead-{repeat}"
                )
            )
    # The second trial is the warm one (there is none with --repeats 1).
    for name, trial in zip(("cold", "warm"), trials, strict=False):
        launch = trial["launch_to_trial_seconds"]
        startup[f"launch_to_trial_{name}_seconds"] = launch
        startup[f"ray_and_trial_start_{name}_seconds"] = (
            launch - startup["imports_seconds"] - startup[f"load_{name}_seconds"]
        )
    startup["last_epoch_to_exit_seconds"] = statistics.median(
        t["last_epoch_to_exit_seconds"] for t in trials
    )
    per_epoch = {}
    for kind in ("epoch_seconds", "iteration_seconds"):
        outside = statistics.median(s for run in direct for s in run[kind])
        inside = statistics.median(s for run in trials for s in run[kind])
        per_epoch[kind] = {"direct": outside, "trial": inside, "ratio": inside / outside}
    return {
        "settings": {
            "encoder": config.encoder,
            "image_size": config.image_size,
            "epochs": config.epochs,
            "repeats": args.repeats,
            "data": str(args.data),
        },
        "per_epoch": per_epoch,
        "startup": startup,
        "direct_runs": direct,
        "trial_runs": trials,
    }


def format_results(results: dict[str, Any]) -> str:
    s, e, u = results["settings"], results["per_epoch"], results["startup"]
    epochs = s["epochs"] * s["repeats"]
    lines = [
        f"trial overhead: {s['encoder']}, {s['image_size']} px, {s['epochs']} epochs, "
        f"{s['repeats']} direct and {s['repeats']} trial runs, alternating (medians of "
        f"{epochs} epochs each side)",
        table(
            ["per epoch", "direct s", "trial s", "trial/direct"],
            [
                ["epoch (fit's timer)", *e["epoch_seconds"].values()],
                ["epoch + report and checkpoint", *e["iteration_seconds"].values()],
            ],
        ),
        "",
        table(
            ["fixed costs (s)", "cold cache", "warm cache"],
            [
                ["python + imports", u["imports_seconds"], u["imports_seconds"]],
                ["data load (load_busi)", u["load_cold_seconds"], u["load_warm_seconds"]],
                [
                    "CLI launch -> trial running",
                    u["launch_to_trial_cold_seconds"],
                    u.get("launch_to_trial_warm_seconds"),
                ],
                [
                    "  of which Ray + trial start",
                    u["ray_and_trial_start_cold_seconds"],
                    u.get("ray_and_trial_start_warm_seconds"),
                ],
                [
                    "last epoch -> CLI exit",
                    u["last_epoch_to_exit_seconds"],
                    u["last_epoch_to_exit_seconds"],
                ],
            ],
        ),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.trial_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="BUSI folder (default: %(default)s)"
    )
    parser.add_argument("--encoder", default="resnet18", help="(default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="direct/trial pairs; the first trial has a cold cache (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    results = run(args)
    return report(results, format_results(results), args.json)


if __name__ == "__main__":
    main()
