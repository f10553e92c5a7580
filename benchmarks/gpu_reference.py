"""The reference training without Ray: the engine's `fit` (the one the Ray trainable
calls) with exactly the reference config but `encoder_weights` none (random init; no
pretrained weights can be fetched on the GPU machine), on the reference protocol (random
624/156 split, selection on the test part) and on the locked-test protocol (selection on
a validation part), bf16 autocast and channels-last on CUDA.

    python -m benchmarks.gpu_reference --cache .gpu_bundle/busi-256.npz --out "$OUT"

Writes gpu_reference.json (rewritten after every epoch, so a run cut short keeps what it
did) and gpu_reference.log into --out. On the CPU it runs too (for tests, with
--encoder resnet18 --image-size 64 --epochs 1); GPU memory is then null.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import add_data_flags, data_source, load_arrays, machine, table, write_json
from results.compare import comparison_table
from results.config import TrainConfig
from results.settings import SplitPolicy
from trainable.engine import EpochReport, Precision, TrainingState, fit, pick_device
from trainable.metrics import DICE
from trainable.splits import make_split

log = logging.getLogger("benchmarks.gpu_reference")

# protocol: selection on the test part?
PROTOCOLS = {"reference": True, "locked-test": False}
RESULT_FILE = "gpu_reference.json"
LOG_FILE = "gpu_reference.log"
WEIGHTS_NOTE = (
    "encoder_weights none: random init, not the reference's Instagram weights (none can "
    "be fetched on the GPU machine)"
)


def _peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated since the last call (None on the CPU)."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def epoch_record(report: EpochReport, peak_bytes: int | None) -> dict[str, Any]:
    return {
        "epoch": report.epoch,
        "train_loss": report.train_loss,
        "heldout_loss": report.heldout_loss,
        "combined_loss": report.combined_loss,
        "heldout_dice": report.heldout[DICE],
        "seconds": report.seconds,
        "images_per_second": report.images_per_second,
        "peak_gpu_bytes": peak_bytes,
        "improved": report.improved,
    }


def run_protocol(
    name: str,
    config: TrainConfig,
    data,
    device: torch.device,
    payload: dict[str, Any],
    out: Path,
) -> None:
    """Train one protocol, filling payload["protocols"][name] and saving it every epoch."""
    select_on_test = PROTOCOLS[name]
    split = make_split(data, SplitPolicy.RANDOM, config.seed, with_validation=not select_on_test)
    result: dict[str, Any] = {
        "selection": "test part (optimistic)" if select_on_test else "validation part",
        "counts": {
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
        },
        "epochs": [],
    }
    payload["protocols"][name] = result
    _peak_memory(device)
    started = time.perf_counter()

    def on_epoch_end(report: EpochReport, state: TrainingState) -> None:
        record = epoch_record(report, _peak_memory(device))
        result["epochs"].append(record)
        log.info(
            "%s epoch %d: train %.4f held-out %.4f combined %.4f dice %.4f%s | %.1f s, "
            "%.1f images/s, peak %s",
            name,
            report.epoch,
            report.train_loss,
            report.heldout_loss,
            report.combined_loss,
            record["heldout_dice"],
            " *" if report.improved else "",
            report.seconds,
            report.images_per_second,
            "-"
            if record["peak_gpu_bytes"] is None
            else f"{record['peak_gpu_bytes'] / 2**30:.1f} GiB",
        )
        write_json(out / RESULT_FILE, payload)

    state = fit(
        config, data, split, device=device, select_on_test=select_on_test, on_epoch_end=on_epoch_end
    )
    result.update(
        {
            "total_seconds": time.perf_counter() - started,
            "selected_epoch": state.best_epoch,
            "selected_combined_loss": state.best_combined_loss,
            "test_loss": state.best_test_loss,
            "test": state.best_test,
        }
    )
    write_json(out / RESULT_FILE, payload)
    log.info(
        "%s: selected epoch %d (selection on the %s); test metrics there vs the published "
        "reference (%s):\n%s",
        name,
        state.best_epoch,
        result["selection"],
        WEIGHTS_NOTE,
        comparison_table({"loss": state.best_test_loss, **state.best_test}),
    )


def summary_table(payload: dict[str, Any]) -> str:
    rows = []
    for name, r in payload["protocols"].items():
        epochs = r["epochs"]
        peaks = [e["peak_gpu_bytes"] for e in epochs if e["peak_gpu_bytes"] is not None]
        rows.append(
            [
                name,
                r.get("selected_epoch"),
                r.get("test_loss"),
                r.get("test", {}).get(DICE),
                r.get("total_seconds"),
                statistics.median(e["seconds"] for e in epochs) if epochs else None,
                statistics.median(e["images_per_second"] for e in epochs) if epochs else None,
                max(peaks) / 2**30 if peaks else None,
            ]
        )
    return table(
        [
            "protocol",
            "selected epoch",
            "test loss",
            "test dice",
            "total s",
            "epoch s",
            "train images/s",
            "peak GiB",
        ],
        rows,
    )


def setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(out / LOG_FILE, mode="w")]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_reference", description=__doc__.split("\n\n")[0]
    )
    add_data_flags(parser, cache_file=True)
    ref = TrainConfig.reference()
    shrink = parser.add_argument_group("shrinking, for a CPU (defaults: the reference)")
    shrink.add_argument("--encoder", default=ref.encoder, help="(default: %(default)s)")
    shrink.add_argument(
        "--image-size", type=int, default=ref.image_size, help="(default: %(default)s)"
    )
    shrink.add_argument("--epochs", type=int, default=ref.epochs, help="(default: %(default)s)")
    parser.add_argument(
        "--protocols",
        nargs="+",
        choices=list(PROTOCOLS),
        default=list(PROTOCOLS),
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT", "runs/gpu-benchmarks")),
        help=f"folder for {RESULT_FILE} and {LOG_FILE} "
        "(default: $OUT if set, else runs/gpu-benchmarks)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    config = TrainConfig.reference().replace(
        encoder=args.encoder, encoder_weights="none", image_size=args.image_size, epochs=args.epochs
    )
    precision = Precision.for_device(device, config)
    data = load_arrays(args, config.image_size)
    payload: dict[str, Any] = {
        "machine": machine(),
        "device": str(device),
        "precision": {
            "autocast": str(precision.dtype).removeprefix("torch.") if precision.dtype else None,
            "channels_last": precision.channels_last,
        },
        "note": WEIGHTS_NOTE,
        "data": {"source": data_source(args), "images": len(data), "image_size": data.image_size},
        "config": config.to_flat(),
        "protocols": {},
    }
    log.info("%s on %s, %s; %s", config.encoder, device, payload["precision"], WEIGHTS_NOTE)
    for name in args.protocols:
        run_protocol(name, config, data, device, payload, args.out)
    print(summary_table(payload))
    return payload


if __name__ == "__main__":
    main()
