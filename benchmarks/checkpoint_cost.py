"""What checkpointing costs a trial of the reference model, before and after the
checkpoint policy, measured side by side on its real state (ResNeXt101-32x16d U-Net
with Adam state after one step: 201 M parameters).

    python -m benchmarks.checkpoint_cost [--encoder resnext101_32x16d] [--every 10]

Before (commit e90ca44 and earlier): every epoch the trial `torch.save`d model + Adam
state into a temporary folder and Tune copied that folder to storage, both in the
training thread; the selected weights (model.pt) were saved there on each improvement.
After (trainable/checkpointing.py): the training thread only snapshots tensors into host
memory (into the buffer of the previous snapshot: the first one allocates it); a writer
thread streams the snapshot into the trial's storage folder; the full state every
--every epochs (never after the last), the selected weights on each improvement.
Training is blocked for the snapshots only.

Bytes per 20-epoch trial count every file written for it: before, 2 x the state per epoch
(temporary + storage copy) + the weights per improvement; after, the state per interval
+ the weights per improvement. --improvements sets how many epochs improve the
selection (20 = every epoch, the worst case).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch

from benchmarks.common import machine, report, table
from trainable.checkpointing import TrialStorage, allocate, snapshot
from trainable.config import TrainConfig
from trainable.model import build_model

GB = 1e9
H200_EPOCH_S = 1.2  # benchmarks/README.md section 6: the estimated reference epoch


def reference_state(encoder: str, size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model and its full training state after one Adam step (so Adam's moments
    exist), on the CPU, without pretrained weights."""
    config = TrainConfig.reference().replace(encoder=encoder, encoder_weights="none")
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(2, 1, size, size)).mean().backward()
    optimizer.step()
    return model, {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def timed(action) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model, state = reference_state(args.encoder, args.input_size)
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        temporary, storage = scratch / "tmp", scratch / "storage"
        temporary.mkdir()
        # Before: torch.save in the training thread, then Tune's copy to storage.
        save_s, _ = timed(lambda: torch.save(state, temporary / "state.pt"))
        copy_s, _ = timed(lambda: shutil.copytree(temporary, storage / "checkpoint_000000"))
        state_bytes = (temporary / "state.pt").stat().st_size
        weights_save_s, _ = timed(lambda: torch.save(model.state_dict(), temporary / "model.pt"))
        weights_bytes = (temporary / "model.pt").stat().st_size
        # After: the state's buffer is allocated on the writer thread ahead of its first
        # use; the selected weights' buffer by their first snapshot; then every snapshot
        # copies into its buffer, and the write runs on the thread (timed alone here).
        allocate_s, buffer = timed(lambda: allocate(state))
        state_snapshot_s, copy = timed(lambda: snapshot(state, buffer))
        first_weights_s, weights = timed(lambda: snapshot(model.state_dict()))
        weights_snapshot_s, _ = timed(lambda: snapshot(model.state_dict(), weights))
        trial = TrialStorage(pyarrow.fs.LocalFileSystem(), str(storage / "trial"))
        write_s, _ = timed(lambda: trial.write_tensors(trial.state_path(1), copy))
    epochs, every, improvements = args.epochs, args.every, args.improvements
    full_states = math.ceil(epochs / every) - 1  # none after the last epoch
    before_block = save_s + copy_s + weights_save_s * improvements / epochs
    weights_block = first_weights_s + weights_snapshot_s * (improvements - 1) if improvements else 0
    after_block = (state_snapshot_s * full_states + weights_block) / epochs
    return {
        "machine": machine(),
        "encoder": args.encoder,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "state_gb": state_bytes / GB,
        "weights_gb": weights_bytes / GB,
        "epochs": epochs,
        "every": every,
        "improvements": improvements,
        "seconds": {
            "before_save": save_s,
            "before_tune_copy": copy_s,
            "before_weights_save": weights_save_s,
            "after_state_buffer_on_the_thread": allocate_s,
            "after_state_snapshot": state_snapshot_s,
            "after_first_weights_snapshot": first_weights_s,
            "after_weights_snapshot": weights_snapshot_s,
            "after_background_write": write_s,
        },
        "blocked_per_epoch_s": {"before": before_block, "after": after_block},
        "gb_per_trial": {
            "before": (2 * epochs * state_bytes + improvements * weights_bytes) / GB,
            "after": (full_states * state_bytes + improvements * weights_bytes) / GB,
        },
    }


def format_results(r: dict[str, Any]) -> str:
    s, blocked, written = r["seconds"], r["blocked_per_epoch_s"], r["gb_per_trial"]
    rows = [
        ["blocked per epoch (s)", blocked["before"], blocked["after"],
         blocked["before"] / max(blocked["after"], 1e-9)],
        ["  share of a 1.2 s H200 epoch", blocked["before"] / H200_EPOCH_S,
         blocked["after"] / H200_EPOCH_S, None],
        [f"GB written per {r['epochs']}-epoch trial", written["before"], written["after"],
         written["before"] / written["after"]],
    ]  # fmt: skip
    parts = ", ".join(f"{k} {v:.3f} s" for k, v in s.items())
    return (
        f"{r['encoder']} U-Net, {r['parameters_m']:.0f} M parameters: state "
        f"{r['state_gb']:.2f} GB, weights {r['weights_gb']:.2f} GB; full state every "
        f"{r['every']} epochs, {r['improvements']} of {r['epochs']} epochs improve\n"
        f"{parts}\n" + table(["", "before", "after", "ratio"], rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnext101_32x16d")
    parser.add_argument("--input-size", type=int, default=64, help="for the one Adam step")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=10, help="full state interval (epochs)")
    parser.add_argument("--improvements", type=int, default=20)
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the files")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = measure(args)
    report(results, format_results(results), args.json)


if __name__ == "__main__":
    main()
