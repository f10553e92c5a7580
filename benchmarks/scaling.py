"""Scaling on paper: how long a 32-trial `reference`-space sweep of the full reference
model takes with ASHA on 1, 8 and 64 GPUs, and which resource bounds it. An estimate
from stated figures, not a measurement: every input is a flag whose help says where its
default comes from.

    python -m benchmarks.scaling

Per trial-epoch: GPU compute c = epoch FLOP / (utilisation x peak), and what
checkpointing blocks and writes, by --policy:

- before: the full state (--checkpoint-gb) written twice every epoch (torch.save into a
  temporary folder, then Tune's copy to storage), both blocking the training;
- after (trainable/checkpointing.py): the full state every --checkpoint-every epochs and
  the selected weights (--weights-gb) on each improving epoch (--improving), each copied
  to host memory (at --d2h-gbps) while the next epoch's first step computes, whose
  optimiser step waits for what the copy has left (the only blocking part), and written
  by a thread.

A sweep takes at least the longest of: its GPU compute spread over the GPUs; the trials'
own serial work (start-up + epochs x (c + blocked)) spread over the trials running at
once; the checkpoint bytes over the storage bandwidth; and its longest trial (the full
budget). The GPU-busy share is the GPU compute over the estimate, per GPU.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from benchmarks.common import table
from benchmarks.early_stopping import asha_expected_fraction

# (GPUs, trials packed per GPU with fractional GPUs)
LAYOUTS = ((1, 1), (1, 4), (8, 1), (64, 1))
BATCH = 8
# The epoch FLOP figure is the reference's: 624 training images. A sweep trial trains on
# 499 and evaluates 125 validation images (and the test part when it improves), about
# 5-15 % less: the estimate errs long.
STEPS_PER_EPOCH = 624 // BATCH


def estimate(args: argparse.Namespace, gpus: int, per_gpu: int) -> dict[str, Any]:
    fraction = args.asha_fraction or asha_expected_fraction(args.epochs)
    trial_epochs = fraction * args.trials * args.epochs
    compute = args.epoch_tflop / (args.utilisation * args.peak_tflops)  # s per trial-epoch
    nodes = math.ceil(gpus / args.gpus_per_node)
    running = min(args.trials, gpus * per_gpu)
    # The copy to storage goes to the node's disk on one node, to shared storage (which
    # every node must reach) on several.
    storage = args.disk_gbps if nodes == 1 else args.shared_gbps
    if args.policy == "before":
        checkpoint = 2 * args.checkpoint_gb / args.disk_gbps  # one trial alone on its node
        # Temporary copies go to each node's disk, then to storage.
        io = trial_epochs * args.checkpoint_gb * (1 / (nodes * args.disk_gbps) + 1 / storage)
    else:
        written = args.checkpoint_gb / args.checkpoint_every + args.weights_gb * args.improving
        step = compute / STEPS_PER_EPOCH  # what a copy overlaps before the step waits

        def wait(gb: float) -> float:
            return max(0.0, gb / args.d2h_gbps - step)

        checkpoint = (
            wait(args.checkpoint_gb) / args.checkpoint_every
            + wait(args.weights_gb) * args.improving
        )
        io = trial_epochs * written / storage
    starts = args.trials * args.trial_start_s / running
    bounds = {
        "GPU compute": trial_epochs * compute / gpus,
        "trial work": starts + trial_epochs * (compute + checkpoint) / running,
        "storage bandwidth": io,
        "longest trial": args.trial_start_s + args.epochs * (compute + checkpoint),
    }
    bound = max(bounds, key=bounds.get)
    if bound == "trial work":  # name what dominates the trials' own work
        parts = {
            "trial start-ups": starts,
            "checkpoint writes": trial_epochs * checkpoint / running,
            "GPU compute": trial_epochs * compute / running,
        }
        bound = f"trial work: mostly {max(parts, key=parts.get)}"
    return {
        "gpus": gpus,
        "trials_at_once": running,
        "trial_epochs": trial_epochs,
        "epoch_compute_s": compute,
        "epoch_checkpoint_s": checkpoint,
        "bounds_s": bounds,
        "wall_s": args.sweep_start_s + max(bounds.values()),
        "bottleneck": bound,
        "idle_gpus": max(0, gpus - math.ceil(args.trials / per_gpu)),
        "gpu_busy": bounds["GPU compute"] / (args.sweep_start_s + max(bounds.values())),
    }


def augmentation_workers(args: argparse.Namespace) -> int:
    """DataLoader workers a trial needs so that augmenting a batch (on the CPU) takes no
    longer than its training step on the GPU."""
    step = args.epoch_tflop / (args.utilisation * args.peak_tflops) / STEPS_PER_EPOCH
    return math.ceil(BATCH * args.aug_ms / 1000 / step)


def format_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    first = rows[0]
    lines = [
        f"{args.trials} trials x {args.epochs} epochs with ASHA: {first['trial_epochs']:.0f} "
        f"trial-epochs; per trial-epoch {first['epoch_compute_s']:.2f} s GPU compute "
        f"({args.utilisation:.0%} of {args.peak_tflops:.0f} TFLOP/s) and "
        f"{first['epoch_checkpoint_s']:.2f} s blocked by checkpoints ({args.policy})",
        table(
            [
                "GPUs",
                "trials at once",
                "idle GPUs",
                "GPU compute s",
                "trial work s",
                "storage s",
                "longest trial s",
                "estimate min",
                "GPU busy",
                "bound by",
            ],
            [
                [
                    r["gpus"],
                    r["trials_at_once"],
                    r["idle_gpus"],
                    r["bounds_s"]["GPU compute"],
                    r["bounds_s"]["trial work"],
                    r["bounds_s"]["storage bandwidth"],
                    r["bounds_s"]["longest trial"],
                    r["wall_s"] / 60,
                    f"{r['gpu_busy']:.0%}",
                    r["bottleneck"],
                ]
                for r in rows
            ],
        ),
        f"a trial at the heaviest augmentation needs {augmentation_workers(args)} DataLoader "
        f"worker(s) ({args.aug_ms} ms per image on one core) to keep its GPU fed",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0]
    )
    sweep = parser.add_argument_group("the sweep (defaults: the CLI's)")
    sweep.add_argument("--trials", type=int, default=32, help="(default: %(default)s)")
    sweep.add_argument("--epochs", type=int, default=20, help="(default: %(default)s)")
    sweep.add_argument(
        "--asha-fraction",
        type=float,
        default=None,
        help="trial-epochs ASHA trains over FIFO's (default: the synchronous-limit value for "
        "the sweep's grace period, 40 %% of the budget, and reduction factor 3)",
    )
    sweep.add_argument(
        "--policy",
        choices=("before", "after"),
        default="after",
        help="checkpoint policy (default: %(default)s; see the module's help)",
    )
    sweep.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        help="after: epochs between full states (default: %(default)s, the CLI's)",
    )
    sweep.add_argument(
        "--improving",
        type=float,
        default=0.5,
        help="after: fraction of epochs that improve the selection and write the weights "
        "(default: %(default)s, assumption)",
    )
    cost = parser.add_argument_group("costs")
    cost.add_argument(
        "--epoch-tflop",
        type=float,
        default=195,
        help="FLOP of one epoch, in TFLOP (default: %(default)s = an estimated 3.9 PFLOP per "
        "20-epoch training / 20: see benchmarks/README.md)",
    )
    cost.add_argument(
        "--peak-tflops",
        type=float,
        default=790,
        help="bf16 peak of one GPU (default: %(default)s, an 8192^3 bf16 matmul on the H200, "
        "device KINDS.md)",
    )
    cost.add_argument(
        "--utilisation",
        type=float,
        default=0.2,
        help="fraction of that peak a training step reaches (default: %(default)s, an "
        "assumption: see benchmarks/README.md)",
    )
    cost.add_argument(
        "--checkpoint-gb",
        type=float,
        default=2.4,
        help="one checkpoint with Adam state (default: %(default)s, docs/performance.md)",
    )
    cost.add_argument(
        "--weights-gb",
        type=float,
        default=0.81,
        help="the selected weights, fp32 (default: %(default)s, benchmarks.checkpoint_cost)",
    )
    cost.add_argument(
        "--d2h-gbps",
        type=float,
        default=25.0,
        help="device-to-host copy into pinned memory, GB/s (default: %(default)s, assumed: "
        "about half of PCIe 5 x16)",
    )
    cost.add_argument(
        "--disk-gbps",
        type=float,
        default=4.0,
        help="a node's local NVMe write bandwidth, GB/s (default: %(default)s, assumption)",
    )
    cost.add_argument(
        "--shared-gbps",
        type=float,
        default=10.0,
        help="shared storage (NFS/S3) aggregate write bandwidth, GB/s (default: %(default)s, "
        "assumption)",
    )
    cost.add_argument(
        "--trial-start-s",
        type=float,
        default=20,
        help="a trial's start: Ray worker + imports (14 s measured on the CPU VM by "
        "benchmarks.trial_overhead) + building the 201 M-parameter model and CUDA "
        "(assumed 6 s) (default: %(default)s)",
    )
    cost.add_argument(
        "--sweep-start-s",
        type=float,
        default=20,
        help="imports, data load and Ray start, once (default: %(default)s)",
    )
    cost.add_argument("--gpus-per-node", type=int, default=8, help="(default: %(default)s)")
    cost.add_argument(
        "--aug-ms",
        type=float,
        default=2.6,
        help="CPU ms per 256 px image at the heaviest augmentation (default: %(default)s, "
        "measured by benchmarks.data_pipeline: 1/343 s - 1/3162 s)",
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    rows = [estimate(args, gpus, per_gpu) for gpus, per_gpu in LAYOUTS]
    print(format_rows(rows, args))
    return rows


if __name__ == "__main__":
    main()
