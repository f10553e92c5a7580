"""A packed reference sweep on a GPU node, measured whole: one command gives every figure.

    python -m benchmarks.gpu_sweep [--trials 8] [--epochs 5] [--out DIR]

Runs N trials x E epochs of the reference model (random init: no weights reach a GPU
node here) on the real BUSI through `tuner.sweep.run`, packed as the defaults pack them
(`--gpus-per-trial auto`, FIFO so that every trial runs every epoch), and reports:

- aggregate training images/s over the sweep (every trial's training images over the
  sweep's wall time) and per trial;
- GPU utilisation and memory sampled through NVML (`pip install nvidia-ml-py`, the
  `gpu` extra) at --sample-hz over the sweep; "no NVML" where it is absent;
- per trial, its first epoch against its steady ones, and the first epoch's tax in parts:
  the worker's start (its process starting to the trial running in it; 0 in a reused
  worker; /proc's clock, to about a second), the encoder
  weights from the object store, the rest of its setup (split, model build, checkpoint),
  the first epoch's training beyond a steady one (cuDNN autotuning, DataLoader workers
  starting) and its first evaluation beyond a steady one;
- each trial's peak GPU memory (as it records it in its results) and the packing plan;
- the driver's seconds per `on_trial_result` of the searcher (Ray warns above 0.5 s).

On a CPU (the test runs it tiny) the same figures come out, GPU ones as absent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from benchmarks.common import DEFAULT_DATA, first_start, machine, report, table
from results import keys
from results.config import TrainConfig
from results.layout import RESULT_FILE
from results.settings import RunSettings, Scheduler
from tuner import searcher, sweep
from tuner.progress import ConsoleLines


class NvmlSampler:
    """GPU utilisation (%) and memory in use (bytes) of every GPU, sampled in a thread."""

    def __init__(self, hz: float) -> None:
        self.period = 1 / hz
        self.samples: list[dict[str, Any]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as error:  # no package, no driver, no GPU
            self.error = f"no NVML ({type(error).__name__}: {error})"
            return
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        while not self._stop.wait(self.period):
            self.samples.append(
                {
                    "time": time.time(),
                    "utilization": [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles],
                    "memory_used": [pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles],
                }
            )
        pynvml.nvmlShutdown()

    def __enter__(self) -> NvmlSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"error": self.error or "no samples", "samples": 0}
        busy = [statistics.fmean(s["utilization"]) for s in self.samples]
        return {
            "samples": len(self.samples),
            "utilization_mean_percent": statistics.fmean(busy),
            "utilization_median_percent": statistics.median(busy),
            "memory_used_peak_bytes": max(max(s["memory_used"]) for s in self.samples),
        }


@contextlib.contextmanager
def timing_the_searcher(driver_seconds: list[float]) -> Iterator[None]:
    """The sweep as the CLI runs it, with a clock around the searcher's on_trial_result,
    which Tune runs on its event loop (Ray warns when one takes over 0.5 s)."""
    on_trial_result = searcher.BudgetAwareOptunaSearch.on_trial_result

    def timed(self, trial_id, result):
        began = time.perf_counter()
        try:
            return on_trial_result(self, trial_id, result)
        finally:
            driver_seconds.append(time.perf_counter() - began)

    searcher.BudgetAwareOptunaSearch.on_trial_result = timed
    try:
        yield
    finally:
        searcher.BudgetAwareOptunaSearch.on_trial_result = on_trial_result


def worker_starts(trials: list[Path]) -> dict[str, float]:
    """Seconds from a trial's worker process starting to the trial running in it; 0 for
    a trial that ran in a worker an earlier trial left (--reuse-actors)."""
    starts = [(first_start(t), t.name) for t in trials]
    seen, found = set(), {}
    for start, name in sorted(starts, key=lambda item: item[0].startup["entered"]):
        begun = start.startup
        reused = begun["pid"] in seen or begun["process_started"] is None
        found[name] = 0.0 if reused else begun["entered"] - begun["process_started"]
        seen.add(begun["pid"])
    return found


def trial_figures(trial: Path, worker_start: float) -> dict[str, Any]:
    """A trial's epochs and its start-up in parts, from the files it wrote."""
    rows = [json.loads(line) for line in (trial / RESULT_FILE).read_text().splitlines()]
    start = first_start(trial)
    epochs = [r[keys.EPOCH_SECONDS] for r in rows]
    train = [r[keys.TRAIN_SECONDS] for r in rows]
    evaluate = [e - t for e, t in zip(epochs, train, strict=True)]
    steady = slice(1, None) if len(rows) > 1 else slice(0, 1)
    steady_train, steady_eval = (
        statistics.median(train[steady]),
        statistics.median(evaluate[steady]),
    )
    # The first result arrives when the first epoch ends: what came before it and after
    # the trial entered is its setup.
    first_result = rows[0]["timestamp"]
    setup = first_result - epochs[0] - start.startup["entered"]
    return {
        "trial": trial.name,
        "device": start.device,
        "epochs": len(rows),
        "first_epoch_s": epochs[0],
        "steady_epoch_s": statistics.median(epochs[steady]),
        "first_over_steady": epochs[0] / statistics.median(epochs[steady]),
        "tax_parts_s": {
            "worker_start": worker_start,
            "weights_from_object_store": start.startup["weights_s"],
            "setup_and_model_build": setup - start.startup["weights_s"],
            "first_training_beyond_steady": train[0] - steady_train,
            "first_evaluation_beyond_steady": evaluate[0] - steady_eval,
        },
        "train_images_per_s_steady": statistics.median(
            r[keys.IMAGES_PER_SECOND] for r in rows[steady]
        ),
        "train_images": sum(
            r[keys.IMAGES_PER_SECOND] * t for r, t in zip(rows, train, strict=True)
        ),
        # NaN on a CPU: no peak to report.
        "peak_gpu_bytes": max(
            (r[keys.PEAK_GPU_BYTES] for r in rows if math.isfinite(r[keys.PEAK_GPU_BYTES])),
            default=None,
        ),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = TrainConfig.reference().replace(
        encoder=args.encoder,
        encoder_weights="none",
        image_size=args.image_size,
        epochs=args.epochs,
    )
    with tempfile.TemporaryDirectory() as scratch:
        settings = RunSettings(
            data=args.data,
            base=base,
            trials=args.trials,
            scheduler=Scheduler.FIFO,
            storage=str(Path(scratch) / "runs"),
            name="gpu-sweep",
            gpus_per_trial=args.gpus_per_trial,
            cpus_per_trial=args.cpus_per_trial,
            cache_dir=args.cache_dir,
        )
        driver_seconds: list[float] = []
        began = time.time()
        try:
            with NvmlSampler(args.sample_hz) as gpu, timing_the_searcher(driver_seconds):
                settings, _ = sweep.run(settings, ConsoleLines())
        finally:
            ray.shutdown()
        wall = time.time() - began
        folders = sorted(Path(settings.experiment_dir).glob("trial_*"))
        workers = worker_starts(folders)
        trials = [trial_figures(t, workers[t.name]) for t in folders]
    return {
        "machine": machine(),
        "sweep": {
            "trials": args.trials,
            "epochs": args.epochs,
            "encoder": args.encoder,
            "image_size": args.image_size,
            "gpus_per_trial": settings.gpus_per_trial,
            "cpus_per_trial": settings.cpus_per_trial,
            "wall_s": wall,
            "train_images_per_s": sum(t["train_images"] for t in trials) / wall,
        },
        "gpu": gpu.summary(),
        "driver_on_trial_result_s": {
            "results": len(driver_seconds),
            "median": statistics.median(driver_seconds) if driver_seconds else None,
            "max": max(driver_seconds, default=None),
        },
        "trials": trials,
    }


def _text(results: dict[str, Any]) -> str:
    sweep_ = results["sweep"]
    gpu = results["gpu"]
    driver = results["driver_on_trial_result_s"]
    rows = [
        [
            t["trial"],
            t["first_epoch_s"],
            t["steady_epoch_s"],
            t["first_over_steady"],
            *(t["tax_parts_s"].values()),
            t["train_images_per_s_steady"],
            None if t["peak_gpu_bytes"] is None else t["peak_gpu_bytes"] / 2**30,
        ]
        for t in results["trials"]
    ]
    head = [
        f"{sweep_['trials']} trials x {sweep_['epochs']} epochs, {sweep_['encoder']} at "
        f"{sweep_['image_size']} px, --gpus-per-trial {sweep_['gpus_per_trial']:g} "
        f"--cpus-per-trial {sweep_['cpus_per_trial']}: {sweep_['wall_s']:.0f} s, "
        f"{sweep_['train_images_per_s']:.0f} training images/s in aggregate",
        "GPU (NVML): "
        + (
            gpu["error"]
            if "error" in gpu
            else f"utilisation mean {gpu['utilization_mean_percent']:.0f} %, median "
            f"{gpu['utilization_median_percent']:.0f} % over {gpu['samples']} samples; "
            f"memory peak {gpu['memory_used_peak_bytes'] / 2**30:.1f} GiB"
        ),
        f"driver: searcher.on_trial_result median {1000 * (driver['median'] or 0):.1f} ms, "
        f"max {1000 * (driver['max'] or 0):.1f} ms over {driver['results']} results",
    ]
    headers = [
        "trial",
        "epoch 1 s",
        "steady s",
        "ratio",
        "worker s",
        "weights s",
        "setup s",
        "+train s",
        "+eval s",
        "img/s",
        "peak GiB",
    ]
    return "\n".join([*head, "", table(headers, rows)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--data", type=Path, default=DEFAULT_DATA, help="BUSI folder (default: %(default)s)")
    add("--cache-dir", type=Path, default=None, help="data cache (default: the project's)")
    add("--trials", type=int, default=8, help="(default: %(default)s)")
    add("--epochs", type=int, default=5, help="(default: %(default)s)")
    add("--encoder", default=TrainConfig.reference().encoder, help="(default: %(default)s)")
    add("--image-size", type=int, default=256, help="(default: %(default)s)")
    add("--gpus-per-trial", type=float, default=None, help="(default: auto, as the CLI)")
    add("--cpus-per-trial", type=int, default=None, help="(default: as the CLI)")
    add("--sample-hz", type=float, default=4.0, help="NVML samples/s (default: %(default)s)")
    add("--out", type=Path, default=None, help="folder for gpu_sweep.json (default: none)")
    args = parser.parse_args(argv)
    results = run(args)
    return report(results, _text(results), args.out / "gpu_sweep.json" if args.out else None)


if __name__ == "__main__":
    main()
