"""Samples per second delivered to the training step, (a) by a naive Dataset that decodes
and resizes each PNG on every read and (b) by ours (`SegmentationSet` over the cached
arrays), with augmentation off and at the heaviest setting of the `reference` space; and
the fraction of a training step (resnet18) spent waiting for the next batch.

    python -m benchmarks.data_pipeline --data ../shared/busi/Dataset_BUSI_with_GT

Within each repeat the settings run side by side; the table shows medians over repeats.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import add_data_flags, report, table
from results.config import TrainConfig
from results.settings import SplitPolicy
from search_spaces import AUGMENTATION_PROBABILITIES, AUGMENTATION_STRENGTHS
from trainable.augment import build_augmentation, normalise
from trainable.dataset import Sample, discover, load_sample
from trainable.engine import Precision, pick_device, train_one_epoch
from trainable.loading import limit_threads, make_train_loader
from trainable.model import build_loss, build_model
from trainable.optim import build_optimizer
from trainable.preprocess import BusiArrays, load_busi, resize_pair
from trainable.splits import make_split


def heaviest_augmentation(config: TrainConfig) -> TrainConfig:
    """Every augmentation of the `reference` space on at its highest probability, with
    every strength at the top of its range."""
    top = max(AUGMENTATION_PROBABILITIES)
    strengths = {
        name: high
        for ranges in AUGMENTATION_STRENGTHS.values()
        for name, (_, high) in ranges.items()
    }
    return config.replace(**dict.fromkeys(AUGMENTATION_STRENGTHS, top), **strengths)


class NaiveSet(torch.utils.data.Dataset):
    """A plain Dataset over files: decode and resize the PNGs on every item read."""

    def __init__(self, samples: list[Sample], size: int, config: TrainConfig) -> None:
        self.samples, self.size = samples, size
        self.augmentation = build_augmentation(config)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = resize_pair(*load_sample(self.samples[i]), self.size)
        if self.augmentation is not None:
            pair = self.augmentation(image=image, mask=mask)
            image, mask = pair["image"], pair["mask"]
        return (
            torch.from_numpy(normalise(image)).unsqueeze(0),
            torch.from_numpy(mask.astype(np.float32)).unsqueeze(0),
        )


def _endless(loader: torch.utils.data.DataLoader) -> Iterator:
    while True:
        yield from loader


def samples_per_second(loader: torch.utils.data.DataLoader, batches: int) -> float:
    """Rate over `batches` batches, after the first (worker start-up is not counted here;
    the waiting measurement below includes it)."""
    stream = _endless(loader)
    next(stream)
    started = time.perf_counter()
    count = sum(len(images) for images, _ in itertools.islice(stream, batches))
    return count / (time.perf_counter() - started)


class TimedBatches:
    """The first `batches` batches of a loader, adding up the time spent getting each
    (the iterator's creation included, as at the start of every epoch)."""

    def __init__(self, loader: torch.utils.data.DataLoader, batches: int) -> None:
        self.loader, self.batches, self.waited = loader, batches, 0.0

    def __iter__(self) -> Iterator:
        started = time.perf_counter()
        iterator = iter(self.loader)
        for _ in range(self.batches):
            batch = next(iterator)
            self.waited += time.perf_counter() - started
            yield batch
            started = time.perf_counter()


def step_wait(
    config: TrainConfig, loader: torch.utils.data.DataLoader, steps: int, device: torch.device
) -> tuple[float, float]:
    """(seconds per training step, seconds of it waiting for data) over `steps` steps of
    the engine's own `train_one_epoch`, after one warm-up step."""
    model = build_model(config).to(device)
    precision = Precision.for_device(device, config)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    loss_fn = build_loss(config.loss)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16)

    def epoch(batches: TimedBatches) -> None:
        train_one_epoch(model, batches, loss_fn, optimizer, device, precision, scaler)

    epoch(TimedBatches(loader, 1))  # warm-up: first-step allocations
    timed = TimedBatches(loader, steps)
    started = time.perf_counter()
    epoch(timed)
    return (time.perf_counter() - started) / steps, timed.waited / steps


def augmentation_profile(
    data: BusiArrays, indices: np.ndarray, heaviest: TrainConfig
) -> list[dict[str, Any]]:
    """Milliseconds per image of each augmentation of `heaviest` alone, always applied."""
    alone = dict.fromkeys(AUGMENTATION_STRENGTHS, 0.0)
    profile = []
    for probability in AUGMENTATION_STRENGTHS:
        augmentation = build_augmentation(heaviest.replace(**alone | {probability: 1.0}))
        started = time.perf_counter()
        for i in indices:
            augmentation(image=data.images[i], mask=data.masks[i])
        seconds = (time.perf_counter() - started) / len(indices)
        name = probability.removeprefix("aug_").removesuffix("_p")
        profile.append({"augmentation": name, "ms_per_image": 1000 * seconds})
    return profile


def run(args: argparse.Namespace) -> dict[str, Any]:
    limit_threads(args.threads)  # torch and OpenCV, as a trial sets them (workers inherit)
    base = TrainConfig.reference().replace(
        encoder=args.encoder,
        encoder_weights="none",
        image_size=args.image_size,
        batch_size=args.batch_size,
    )
    settings = {"off": base, "reference-max": heaviest_augmentation(base)}
    data = load_busi(args.data, args.image_size, args.cache_dir, progress=False)
    samples = discover(Path(args.data).resolve())
    split = make_split(data, SplitPolicy.RANDOM, seed=0, with_validation=False)
    train_samples = [samples[i] for i in split.train]

    def loaders(config: TrainConfig) -> dict[str, torch.utils.data.DataLoader]:
        naive = torch.utils.data.DataLoader(
            NaiveSet(train_samples, args.image_size, config),
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=args.workers,
        )
        return {"naive": naive, "cached": make_train_loader(data, split, config, args.workers)}

    built = {name: loaders(config) for name, config in settings.items()}
    rates = {(name, kind): [] for name in settings for kind in ("naive", "cached")}
    ratios = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, pair in built.items():
            naive = samples_per_second(pair["naive"], args.batches)
            cached = samples_per_second(pair["cached"], args.batches)
            rates[name, "naive"].append(naive)
            rates[name, "cached"].append(cached)
            ratios[name].append(cached / naive)
    throughput = [
        {
            "augmentation": name,
            "naive_samples_per_s": statistics.median(rates[name, "naive"]),
            "cached_samples_per_s": statistics.median(rates[name, "cached"]),
            "cached_over_naive": statistics.median(ratios[name]),
        }
        for name in settings
    ]

    profile = augmentation_profile(
        data, split.train[: args.profile_images], settings["reference-max"]
    )

    device = pick_device()
    waits = {name: [] for name in settings}
    for _ in range(args.step_repeats):
        for name, config in settings.items():
            waits[name].append(step_wait(config, built[name]["cached"], args.steps, device))
    waiting = []
    for name, pairs in waits.items():
        step = statistics.median(s for s, _ in pairs)
        wait = statistics.median(w for _, w in pairs)
        fraction = statistics.median(w / s for s, w in pairs)
        waiting.append(
            {
                "augmentation": name,
                "step_seconds": step,
                "wait_seconds": wait,
                "wait_fraction": fraction,
            }
        )
    return {
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        }
        | {"device": str(device), "train_images": len(split.train)},
        "throughput": throughput,
        "augmentation_profile": profile,
        "waiting": waiting,
    }


def format_results(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"data pipeline: {s['image_size']} px, batch {s['batch_size']}, {s['workers']} "
        f"DataLoader workers, {s['batches']} batches x {s['repeats']} repeats (medians)",
        table(
            ["augmentation", "naive samples/s", "cached samples/s", "cached/naive"],
            [
                [
                    r["augmentation"],
                    r["naive_samples_per_s"],
                    r["cached_samples_per_s"],
                    r["cached_over_naive"],
                ]
                for r in results["throughput"]
            ],
        ),
        "",
        f"where the augmentation time goes: each transform of reference-max alone, p = 1, "
        f"{s['profile_images']} images (at p = 0.5 each costs half)",
        table(
            ["transform", "ms/image"],
            [[r["augmentation"], r["ms_per_image"]] for r in results["augmentation_profile"]]
            + [
                ["sum x 0.5", 0.5 * sum(r["ms_per_image"] for r in results["augmentation_profile"])]
            ],
        ),
        "",
        f"training step: {s['encoder']}, {s['image_size']} px, batch {s['batch_size']}, "
        f"{s['threads']} torch thread(s), {s['device']}, {s['steps']} steps x "
        f"{s['step_repeats']} repeats (medians)",
        table(
            ["augmentation", "step s", "waiting s", "waiting %"],
            [
                [r["augmentation"], r["step_seconds"], r["wait_seconds"], 100 * r["wait_fraction"]]
                for r in results["waiting"]
            ],
        ),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.data_pipeline", description=__doc__.split("\n\n")[0]
    )
    add_data_flags(parser)
    parser.add_argument("--image-size", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader workers of both pipelines; a trial with --cpus-per-trial N uses "
        "N - 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--batches", type=int, default=20, help="batches timed per rate (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument(
        "--profile-images",
        type=int,
        default=100,
        help="images per transform in the augmentation profile (default: %(default)s)",
    )
    parser.add_argument(
        "--encoder", default="resnet18", help="encoder of the step timing (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, as a trial with --cpus-per-trial N sets N (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="training steps timed per repeat (default: %(default)s)",
    )
    parser.add_argument("--step-repeats", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    results = run(args)
    return report(results, format_results(results), args.json)


if __name__ == "__main__":
    main()
