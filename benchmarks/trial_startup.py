"""Trial start-up in a sweep, with and without reused Ray workers (`--reuse-actors`),
and whether reusing changes any result.

    python -m benchmarks.trial_startup [--trials 4] [--attempts 2]

Runs the same small sweep (FIFO, one trial at a time, 1 epoch, 32 px, resnet18, the
synthetic set it writes) with `reuse_actors` off and on, alternating, and reports the
wall time of each sweep, the start-up saved per reused trial ((off - on) / (trials - 1):
the first trial starts a worker either way) and whether every trial's objective is
identical in both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from benchmarks.common import machine, report, table
from results.config import TrainConfig
from results.layout import parse_trial_folder
from results.settings import RunSettings, Scheduler
from trainable.synth import write_synthetic_busi
from tuner import sweep


def one_sweep(data: Path, storage: Path, name: str, trials: int, reuse: bool) -> dict[str, Any]:
    base = TrainConfig.reference().replace(
        encoder="resnet18", encoder_weights="none", image_size=32, epochs=1
    )
    settings = RunSettings(
        data=data,
        base=base,
        trials=trials,
        max_concurrent=1,
        scheduler=Scheduler.FIFO,
        storage=str(storage),
        name=name,
        cache_dir=storage / "cache",
        reuse_actors=reuse,
    )
    started = time.perf_counter()
    try:
        _, results = sweep.run(settings)
    finally:
        ray.shutdown()
    objectives = {
        parse_trial_folder(Path(r.path).name)[0]: r.metrics[settings.metric] for r in results
    }
    return {"seconds": time.perf_counter() - started, "objectives": objectives}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = scratch / "busi"
        write_synthetic_busi(data)
        runs = {False: [], True: []}
        for attempt in range(args.attempts):
            for reuse in (False, True):
                name = f"{'reuse' if reuse else 'fresh'}-{attempt}"
                runs[reuse].append(one_sweep(data, scratch / "runs", name, args.trials, reuse))
    fresh = statistics.median(r["seconds"] for r in runs[False])
    reused = statistics.median(r["seconds"] for r in runs[True])
    objectives = [r["objectives"] for r in runs[False] + runs[True]]
    return {
        "machine": machine(),
        "trials": args.trials,
        "sweep_seconds": {"fresh": fresh, "reused": reused},
        "saved_per_trial_s": (fresh - reused) / (args.trials - 1),
        "identical": all(o == objectives[0] for o in objectives),
    }


def format_results(r: dict[str, Any]) -> str:
    seconds = r["sweep_seconds"]
    rows = [
        [f"{r['trials']}-trial sweep (s)", seconds["fresh"], seconds["reused"],
         seconds["fresh"] / seconds["reused"]],
    ]  # fmt: skip
    return (
        table(["", "fresh workers", "reused", "ratio"], rows)
        + f"\nstart-up saved per reused trial: {r['saved_per_trial_s']:.1f} s; "
        + f"results identical: {r['identical']}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--attempts", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = measure(args)  # sweep.run starts a Ray of its own (address="local")
    return report(results, format_results(results), args.json)


if __name__ == "__main__":
    main()
