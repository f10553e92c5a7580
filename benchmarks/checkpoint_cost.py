"""What checkpointing costs a trial of the reference model, before and after the
checkpoint policy, measured side by side on its real state (ResNeXt101-32x16d U-Net
with Adam state after one step: 201 M parameters).

    python -m benchmarks.checkpoint_cost [--encoder resnext101_32x16d] [--every 10]

Before (commit e90ca44 and earlier): every epoch the trial `torch.save`d model + Adam
state into a temporary folder and Tune copied that folder to storage, both in the
training thread; the selected weights (model.pt) were saved there on each improvement.
Then (commits a086288 to e08711d): the training thread snapshots the tensors into host
buffers (the first snapshot of a kind allocates its buffer) and a writer thread writes
them: the full state every --every epochs (never after the last), the weights on each
improvement. Now (trainable/checkpointing.py, `Snapshots`): the same snapshots are copied
on a copy thread while the next epoch's first batch runs forward and backward (a
training step of the reference model, --batch images at --input-size px, one torch
thread as a CPU trial with one CPU); the optimiser's step waits for the copy. Training is
blocked, now, for what `take` does on the training thread (cloning the BatchNorm
statistics) plus that wait, both timed. That assumes the writes keep up: each file has
one buffer, so a copy also waits for the previous write of its file when that write
outlasts the epochs between them (the background write times are printed).

Bytes per 20-epoch trial count every file written for it: before, 2 x the state per epoch
(temporary + storage copy) + the weights per improvement; after, the state per interval
+ the weights per improvement. --improvements sets how many epochs improve the
selection (20 = every epoch, the worst case).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch

from benchmarks.common import machine, report, table
from results.config import TrainConfig
from trainable.checkpointing import Snapshots, TrialStorage, allocate, snapshot
from trainable.model import build_model

GB = 1e9
H200_EPOCH_S = 1.2  # benchmarks/README.md section 6: the estimated reference epoch


def reference_training(
    encoder: str, size: int, batch: int
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor]:
    """The model and its optimiser after one Adam step (so Adam's moments exist), on the
    CPU, without pretrained weights, and a batch to train on."""
    config = TrainConfig.reference().replace(encoder=encoder, encoder_weights="none")
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 1, size, size)
    forward_backward(model, images)
    optimizer.step()
    return model, optimizer, images


def forward_backward(model: torch.nn.Module, images: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(images).sigmoid().mean().backward()


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def timed(action) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def overlapped_step(
    snapshots: Snapshots,
    name: str,
    tree: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
) -> dict[str, float]:
    """A snapshot taken at an epoch's end, then the next epoch's first training step:
    the seconds the training thread spends in `take` and waiting for the copy."""
    take_s, copy = timed(lambda: snapshots.take(name, tree, [optimizer], model.buffers()))
    step_s, _ = timed(lambda: forward_backward(model, images))
    wait_s, _ = timed(copy.result)  # what the step's pre-hook would wait for
    optimizer.step()
    return {"take": take_s, "forward_backward": step_s, "wait": wait_s}


def before_and_then(
    model: torch.nn.Module, state: dict[str, Any], scratch: Path
) -> tuple[dict[str, float], int, int]:
    """The seconds of each part before and then, and the state's and weights' file sizes."""
    temporary, storage = scratch / "tmp", scratch / "storage"
    temporary.mkdir()
    # Before: torch.save in the training thread, then Tune's copy to storage.
    save_s, _ = timed(lambda: torch.save(state, temporary / "state.pt"))
    copy_s, _ = timed(lambda: shutil.copytree(temporary, storage / "checkpoint_000000"))
    weights_save_s, _ = timed(lambda: torch.save(model.state_dict(), temporary / "model.pt"))
    # Then: the state's buffer allocated on the writer thread ahead of its first use,
    # the weights' by their first snapshot; every snapshot in the training thread.
    allocate_s, buffer = timed(lambda: allocate(state))
    state_snapshot_s, copy = timed(lambda: snapshot(state, buffer))
    first_weights_s, weights = timed(lambda: snapshot(model.state_dict()))
    weights_snapshot_s, _ = timed(lambda: snapshot(model.state_dict(), weights))
    trial = TrialStorage(pyarrow.fs.LocalFileSystem(), str(storage / "trial"))
    write_s, _ = timed(lambda: trial.write_tensors(trial.state_path(1), copy))
    weights_write_s, _ = timed(lambda: trial.write_tensors(trial.path("model.pt"), weights))
    seconds = {
        "before_save": save_s,
        "before_tune_copy": copy_s,
        "before_weights_save": weights_save_s,
        "then_state_buffer_on_the_thread": allocate_s,
        "then_state_snapshot": state_snapshot_s,
        "then_first_weights_snapshot": first_weights_s,
        "then_weights_snapshot": weights_snapshot_s,
        "background_write": write_s,
        "background_weights_write": weights_write_s,
    }
    sizes = [(temporary / name).stat().st_size for name in ("state.pt", "model.pt")]
    return seconds, *sizes


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, optimizer, images = reference_training(args.encoder, args.input_size, args.batch)
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        seconds, state_bytes, weights_bytes = before_and_then(
            model, full_state(model, optimizer), Path(scratch)
        )
    # Now: copies overlapped with the next step; a step alone first, for comparison.
    alone_s = [timed(lambda: forward_backward(model, images))[0] for _ in range(args.repeats)]
    optimizer.step()
    snapshots = Snapshots()
    with ThreadPoolExecutor(max_workers=1) as writer:
        snapshots.prepare("state", lambda: full_state(model, optimizer), writer)
    weights_steps = [
        overlapped_step(snapshots, "model.pt", model.state_dict(), model, optimizer, images)
        for _ in range(args.repeats + 1)  # the first allocates the weights' buffer
    ]
    state_steps = [
        overlapped_step(snapshots, "state", full_state(model, optimizer), model, optimizer, images)
        for _ in range(args.repeats)
    ]
    snapshots.close()

    def blocked(step: dict[str, float]) -> float:
        return step["take"] + step["wait"]

    first_weights_blocked = blocked(weights_steps[0])
    weights_blocked = statistics.median(blocked(step) for step in weights_steps[1:])
    state_blocked = statistics.median(blocked(step) for step in state_steps)
    epochs, every, improvements = args.epochs, args.every, args.improvements
    full_states = math.ceil(epochs / every) - 1  # none after the last epoch

    def per_epoch(state_s: float, first_weights: float, weights_s: float) -> float:
        weights_block = first_weights + weights_s * (improvements - 1) if improvements else 0
        return (state_s * full_states + weights_block) / epochs

    return {
        "machine": machine(),
        "encoder": args.encoder,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "state_gb": state_bytes / GB,
        "weights_gb": weights_bytes / GB,
        "epochs": epochs,
        "every": every,
        "improvements": improvements,
        "step": {"batch": args.batch, "input_size": args.input_size, "threads": args.threads},
        "seconds": {
            **seconds,
            "now_first_weights_blocked": first_weights_blocked,
            "now_weights_blocked": weights_blocked,
            "now_state_blocked": state_blocked,
            "forward_backward_alone": statistics.median(alone_s),
            "forward_backward_during_a_copy": statistics.median(
                step["forward_backward"] for step in weights_steps[1:] + state_steps
            ),
        },
        "blocked_per_epoch_s": {
            "before": (
                seconds["before_save"]
                + seconds["before_tune_copy"]
                + seconds["before_weights_save"] * improvements / epochs
            ),
            "then": per_epoch(
                seconds["then_state_snapshot"],
                seconds["then_first_weights_snapshot"],
                seconds["then_weights_snapshot"],
            ),
            "now": per_epoch(state_blocked, first_weights_blocked, weights_blocked),
        },
        "gb_per_trial": {
            "before": (2 * epochs * state_bytes + improvements * weights_bytes) / GB,
            "after": (full_states * state_bytes + improvements * weights_bytes) / GB,
        },
    }


def format_results(r: dict[str, Any]) -> str:
    s, blocked, written = r["seconds"], r["blocked_per_epoch_s"], r["gb_per_trial"]
    before, then, now = blocked["before"], blocked["then"], blocked["now"]
    rows = [
        ["blocked per epoch (s)", before, then, now, before / max(now, 1e-9)],
        ["  share of a 1.2 s H200 epoch", before / H200_EPOCH_S, then / H200_EPOCH_S,
         now / H200_EPOCH_S, None],
        [f"GB written per {r['epochs']}-epoch trial", written["before"], written["after"],
         written["after"], written["before"] / written["after"]],
    ]  # fmt: skip
    parts = ", ".join(f"{k} {v:.3f} s" for k, v in s.items())
    step = r["step"]
    return (
        f"{r['encoder']} U-Net, {r['parameters_m']:.0f} M parameters: state "
        f"{r['state_gb']:.2f} GB, weights {r['weights_gb']:.2f} GB; full state every "
        f"{r['every']} epochs, {r['improvements']} of {r['epochs']} epochs improve; "
        f"overlapped with a step of {step['batch']} x {step['input_size']} px on "
        f"{step['threads']} thread(s)\n{parts}\n"
        + table(["", "before", "then (in the thread)", "now (overlapped)", "before / now"], rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnext101_32x16d")
    parser.add_argument("--input-size", type=int, default=64, help="of the training step")
    parser.add_argument("--batch", type=int, default=8, help="of the training step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the step")
    parser.add_argument("--repeats", type=int, default=3, help="overlapped steps per kind")
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
