"""Training images per second of the reference model (ResNeXt101-32x16d U-Net, 256 px,
batch 8, random init) in fp32, bf16 autocast and bf16 + channels-last, and the last with
torch.compile (`--compile`, default on CUDA: what `run --compile` buys, and its one-time
cost in the warm-up column), with the engine's own `train_one_epoch`; the peak GPU memory
of a trial, and how many such trials fit on one GPU with fractional GPUs. Runs without
Ray.

    python -m benchmarks.gpu_throughput --cache .gpu_bundle/busi-256.npz --out "$OUT"

On the CPU it runs too (for tests, with --encoder resnet18 --image-size 64); memory
figures are then null.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import add_data_flags, data_source, load_arrays, machine, table, write_json
from results.config import TrainConfig
from results.settings import GPU_HEADROOM, SplitPolicy
from trainable.engine import Precision, pick_device, train_one_epoch
from trainable.loading import make_train_loader
from trainable.model import build_loss, build_model
from trainable.optim import build_optimizer
from trainable.splits import make_split

# name: (autocast dtype, channels-last, torch.compile); bf16+channels-last is what a
# trial runs on CUDA, and with `run --compile` the compiled mode.
MODES: dict[str, tuple[torch.dtype | None, bool, bool]] = {
    "fp32": (None, False, False),
    "bf16": (torch.bfloat16, False, False),
    "bf16+channels-last": (torch.bfloat16, True, False),
    "bf16+channels-last+compile": (torch.bfloat16, True, True),
}
TRIAL_MODE = "bf16+channels-last"
RESULT_FILE = "gpu_throughput.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_mode(
    config: TrainConfig,
    mode: str,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    dtype, channels_last, compiled = MODES[mode]
    precision = Precision(dtype, channels_last)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    parameters = sum(p.numel() for p in model.parameters())
    if compiled:
        model = torch.compile(model)  # as the engine does: the forward only
    loss_fn = build_loss(config.loss)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def steps(count: int) -> float:
        _sync(device)
        started = time.perf_counter()
        train_one_epoch(model, batches[:count], loss_fn, optimizer, device, precision, scaler)
        _sync(device)
        return time.perf_counter() - started

    warmup = steps(args.warmup)  # a compiled model compiles here
    seconds = statistics.median(steps(args.steps) for _ in range(args.repeats))
    result = {
        "mode": mode,
        "parameters": parameters,
        "autocast": str(dtype).removeprefix("torch.") if dtype else None,
        "channels_last": channels_last,
        "compiled": compiled,
        "warmup_seconds": warmup,
        "step_seconds": seconds / args.steps,
        "images_per_second": args.steps * config.batch_size / seconds,
        "peak_allocated_bytes": None,
        "peak_reserved_bytes": None,
        "device_used_bytes": None,
    }
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        # The whole process on the device: CUDA context and library workspaces too.
        result["device_used_bytes"] = total - free
    return result


def trials_per_gpu(trial: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """How many trials of the trial mode fit on one such GPU, from the device memory one
    uses (context included), with GPU_HEADROOM left free."""
    if device.type != "cuda":
        return {"gpu_memory_bytes": None, "per_trial_bytes": None, "fit": None}
    total = torch.cuda.get_device_properties(device).total_memory
    per_trial = trial["device_used_bytes"]
    fit = math.floor((1 - GPU_HEADROOM) * total / per_trial)
    return {
        "gpu_memory_bytes": total,
        "per_trial_bytes": per_trial,
        "headroom": GPU_HEADROOM,
        "fit": fit,
        "gpus_per_trial": 1 / fit if fit else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    config = TrainConfig.reference().replace(
        encoder=args.encoder,
        encoder_weights="none",
        image_size=args.image_size,
        batch_size=args.batch_size,
    )
    data = load_arrays(args, config.image_size)
    split = make_split(data, SplitPolicy.RANDOM, config.seed, with_validation=False)
    # Real batches from the trial's own loader (no augmentation), reused for every mode.
    loader = make_train_loader(data, split, config, num_workers=0)
    count = max(args.warmup, args.steps)
    batches = list(itertools.islice(itertools.cycle(loader), count))
    compile_too = device.type == "cuda" if args.compile is None else args.compile
    modes = []
    for mode, (_, _, compiled) in MODES.items():
        if compiled and not compile_too:
            continue
        modes.append(measure_mode(config, mode, batches, args, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next mode starts from the context alone
    fp32 = modes[0]["images_per_second"]
    for mode in modes:
        mode["speedup_over_fp32"] = mode["images_per_second"] / fp32
    trial = next(m for m in modes if m["mode"] == TRIAL_MODE)
    return {
        "machine": machine(),
        "settings": {
            "encoder": config.encoder,
            "encoder_weights": "none (random init)",
            "parameters": modes[0]["parameters"],
            "image_size": config.image_size,
            "batch_size": config.batch_size,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "repeats": args.repeats,
            "device": str(device),
            # "fp32" convolutions run in TF32 when cuDNN allows it (PyTorch's default).
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "data": data_source(args),
        },
        "modes": modes,
        "packing": {"mode": TRIAL_MODE, **trials_per_gpu(trial, device)},
    }


def _gib(value: int | None) -> float | None:
    return None if value is None else value / 2**30


def format_results(results: dict[str, Any]) -> str:
    s, packing = results["settings"], results["packing"]
    gpu = results["machine"]["gpu"]
    lines = [
        f"training throughput: {s['encoder']} U-Net ({s['parameters'] / 1e6:.0f} M parameters, "
        f"random init), {s['image_size']} px, batch {s['batch_size']}, on "
        f"{gpu['name'] if gpu else s['device']}; median of {s['repeats']} x {s['timed_steps']} "
        f"steps after {s['warmup_steps']} warm-up",
        table(
            [
                "mode",
                "images/s",
                "x fp32",
                "step s",
                "warm-up s",
                "peak alloc GiB",
                "device used GiB",
            ],
            [
                [
                    m["mode"],
                    m["images_per_second"],
                    m["speedup_over_fp32"],
                    m["step_seconds"],
                    m["warmup_seconds"],
                    _gib(m["peak_allocated_bytes"]),
                    _gib(m["device_used_bytes"]),
                ]
                for m in results["modes"]
            ],
        ),
    ]
    if packing["fit"] is not None:
        lines.append(
            f"trials per GPU ({packing['mode']}): {packing['fit']} "
            f"(--gpus-per-trial {packing['gpus_per_trial']:.3g}): "
            f"{_gib(packing['per_trial_bytes']):.1f} GiB each of "
            f"{_gib(packing['gpu_memory_bytes']):.0f} GiB, {packing['headroom']:.0%} left free"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_throughput", description=__doc__.split("\n\n")[0]
    )
    add_data_flags(parser, cache_file=True)
    ref = TrainConfig.reference()
    model = parser.add_argument_group("model and timing")
    model.add_argument("--encoder", default=ref.encoder, help="(default: %(default)s)")
    model.add_argument(
        "--image-size", type=int, default=ref.image_size, help="(default: %(default)s)"
    )
    model.add_argument(
        "--batch-size", type=int, default=ref.batch_size, help="(default: %(default)s)"
    )
    model.add_argument("--warmup", type=int, default=5, help="untimed steps (default: %(default)s)")
    model.add_argument("--steps", type=int, default=20, help="timed steps (default: %(default)s)")
    model.add_argument("--repeats", type=int, default=3, help="(default: %(default)s)")
    model.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    model.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure bf16+channels-last with torch.compile (default: on CUDA only; "
        "on a CPU its compilation takes minutes)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT", "runs/gpu-benchmarks")),
        help=f"folder for {RESULT_FILE} (default: $OUT if set, else runs/gpu-benchmarks)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    results = run(args)
    write_json(args.out / RESULT_FILE, results)
    print(format_results(results))
    return results


if __name__ == "__main__":
    main()
