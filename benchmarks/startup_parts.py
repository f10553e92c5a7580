"""Where a trial's start-up goes, part by part, timed in a process that has imported
nothing yet, as a fresh Ray worker starts.

    python -m benchmarks.startup_parts [--encoder resnext101_32x16d] [--image-size 256]

In this order, each once (wall seconds):
- imports, cumulative, in the order a trial worker makes them: torch; Ray Tune;
  `trainable.tune_adapter` (segmentation-models-pytorch with timm and torchvision,
  which import torch._dynamo; albumentations; OpenCV; TensorBoard);
- the U-Net built with random init, resnet18 and --encoder (pretrained weights are
  loaded over a random init, so this is a trial's model build either way);
- the training loader (`make_train_loader`, the reference config at --image-size) up to
  its first batch, with no DataLoader worker and with --workers (persistent: once per
  trial);
- the trial's TensorBoard writer (`TrialWriter`: the event file);
- Ray: `ray.init` of a local cluster, then the first call of a fresh actor that imports
  nothing of ours (the worker process), then of one that imports
  `trainable.tune_adapter` (what a fresh trial worker pays before its trial starts).
The data comes through the project's cache (--data, --cache-dir) at --image-size.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

IMPORTS = ("torch", "ray.tune", "trainable.tune_adapter")


def timed(action) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def time_imports() -> dict[str, float]:
    return {name: timed(lambda name=name: importlib.import_module(name))[0] for name in IMPORTS}


def time_model_builds(encoders: list[str]) -> dict[str, float]:
    from results.config import TrainConfig
    from trainable.model import build_model

    seconds = {}
    for encoder in dict.fromkeys(encoders):
        config = TrainConfig.reference().replace(encoder=encoder, encoder_weights="none")
        seconds[encoder] = timed(lambda config=config: build_model(config))[0]
    return seconds


def time_first_batches(args: argparse.Namespace) -> dict[str, float]:
    from benchmarks.common import load_arrays
    from results.config import TrainConfig
    from results.settings import SplitPolicy
    from trainable.loading import make_train_loader
    from trainable.splits import make_split

    data = load_arrays(args, args.image_size)
    split = make_split(data, SplitPolicy.RANDOM, seed=0, with_validation=True)
    config = TrainConfig.reference().replace(image_size=args.image_size)
    seconds = {}
    for workers in dict.fromkeys((0, args.workers)):
        loader = make_train_loader(data, split, config, workers)
        seconds[f"{workers} workers"] = timed(lambda loader=loader: next(iter(loader)))[0]
        del loader  # its workers stop
    return seconds


def time_writer(folder: Path) -> float:
    from trainable.tensorboard import TrialWriter

    seconds, writer = timed(lambda: TrialWriter(folder, image_every=5))
    writer.close()
    return seconds


def time_ray_workers() -> dict[str, float]:
    import os

    import ray

    from benchmarks.common import OWN_RAY

    os.environ.update(OWN_RAY)

    @ray.remote(num_cpus=0)
    class Bare:
        def ready(self) -> bool:
            return True

    @ray.remote(num_cpus=0)
    class Trial:
        def ready(self) -> bool:
            importlib.import_module("trainable.tune_adapter")
            return True

    init_s, _ = timed(lambda: ray.init(include_dashboard=False, log_to_driver=False))
    try:
        bare_s, _ = timed(lambda: ray.get(Bare.remote().ready.remote()))
        trial_s, _ = timed(lambda: ray.get(Trial.remote().ready.remote()))
    finally:
        ray.shutdown()
    return {"ray.init": init_s, "bare worker": bare_s, "worker + imports": trial_s}


def measure(args: argparse.Namespace, imports: dict[str, float]) -> dict[str, Any]:
    import tempfile

    from benchmarks.common import data_source, machine

    models = time_model_builds(["resnet18", args.encoder])
    batches = time_first_batches(args)
    with tempfile.TemporaryDirectory() as folder:
        writer_s = time_writer(Path(folder))
    ray_s = time_ray_workers()
    return {
        "machine": machine(),
        "data": data_source(args),
        "image_size": args.image_size,
        "imports_s": imports,
        "model_build_s": models,
        "first_batch_s": batches,
        "tensorboard_writer_s": writer_s,
        "ray_s": ray_s,
    }


def format_results(r: dict[str, Any]) -> str:
    from benchmarks.common import table

    rows = [[f"import {name}", s] for name, s in r["imports_s"].items()]
    rows += [["  all imports", sum(r["imports_s"].values())]]
    rows += [[f"build the U-Net, {name}", s] for name, s in r["model_build_s"].items()]
    rows += [
        [f"first batch at {r['image_size']} px, {workers}", s]
        for workers, s in r["first_batch_s"].items()
    ]
    rows += [["TensorBoard writer", r["tensorboard_writer_s"]]]
    rows += [[f"Ray: {name}", s] for name, s in r["ray_s"].items()]
    return table(["part", "seconds"], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    imports = time_imports()  # first: nothing imported before (--help waits for it too)
    from benchmarks.common import add_data_flags, report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnext101_32x16d", help="(default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None)
    add_data_flags(parser)
    args = parser.parse_args(argv)
    results = measure(args, imports)
    return report(results, format_results(results), args.json)


if __name__ == "__main__":
    main()
