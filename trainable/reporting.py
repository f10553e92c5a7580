"""Reporting an epoch once its files are written: the selected weights and the full
training state are copied while the next epoch starts and written on a writer thread,
and each epoch's report waits for its own writes."""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from results.layout import POINTER_FILE, STATE_FOLDER
from results.records import StatePointer
from trainable.checkpointing import Snapshots, TrialStorage
from trainable.engine import TrainingState

# Sends one epoch's metrics, with the folder of a checkpoint to attach (or None): the
# adapter's `tune.report`. Raises to stop the trial (Tune's scheduler does).
Send = Callable[[dict[str, float], Path | None], None]


class Reports:
    """Reports every epoch (to Tune, through `send`), in order, each once what it announces
    is on storage.

    Snapshots (the selected weights on improvement, the full state every `every` epochs)
    are copied while the next epoch starts and written by one writer thread while
    training goes on; an epoch's report waits in a queue until its writes are done, so
    Tune (and a scheduler that stops the trial after it) never sees an epoch whose files
    are not there. It is sent at the latest when the next epoch ends, before anything of
    that epoch is recorded (`send_pending`). A full state's report carries a checkpoint
    folder holding only a pointer to it; older states are then deleted."""

    def __init__(self, storage: TrialStorage, every: int, epochs: int, send: Send) -> None:
        self.storage, self.every, self.epochs, self.send = storage, every, epochs, send
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-writer")
        self.queue: deque[tuple[dict[str, float], list[Future], str | None, int]] = deque()
        self.snapshots = Snapshots()
        self.states: list[str] = []  # the full states kept: the last two reported

    def epoch(
        self,
        metrics: dict[str, float],
        epoch: int,
        weights: dict[str, dict],
        training: Sequence[TrainingState],
    ) -> None:
        """`weights`: file name -> the selected model's state dict, for files to rewrite;
        `training`: the states being trained (one per fold), the full state's source."""

        optimizers = [state.optimizer for state in training]
        changing = [buffer for state in training for buffer in state.model.buffers()]

        def write(name: str, path: str, tree: dict) -> Future:
            copy = self.snapshots.take(name, tree, optimizers, changing)
            job = self.writer.submit(lambda: self.storage.write_tensors(path, copy.result()))
            self.snapshots.writing(name, job)
            return job

        def full_state() -> dict:  # built only when used (the fp16 scale reads the GPU)
            return {"folds": [state.to_dict() for state in training]}

        jobs = [write(name, self.storage.path(name), tree) for name, tree in weights.items()]
        state_name = None
        if epoch % self.every == 0 and epoch < self.epochs:
            state_name = self.storage.state_name(epoch)
            jobs.append(write(STATE_FOLDER, self.storage.path(state_name), full_state()))
        elif self.every < self.epochs:
            # The optimiser's state exists from the first step on: make its buffer now.
            self.snapshots.prepare(STATE_FOLDER, full_state, self.writer)
        self.queue.append((metrics, jobs, state_name, epoch))
        self._send(wait=epoch >= self.epochs)  # now if nothing is left to write

    def send_pending(self) -> None:
        """Report every queued epoch, each once its writes are done (they ran while the
        next epoch trained). Tune may stop the trial in here."""
        self._send(wait=True)

    def close(self) -> None:
        """Send what is left (the last epoch's report waits for its writes)."""
        try:
            self._send(wait=True)
        finally:
            self.snapshots.close()
            self.writer.shutdown(wait=True)

    def abandon(self) -> None:
        """The trial is stopping (its scheduler, an error, an interrupt): report nothing
        more. A write in progress ends on its own (write-then-rename: whole or absent)."""
        self.queue.clear()
        self.snapshots.close(wait=False)
        self.writer.shutdown(wait=False, cancel_futures=True)

    def _send(self, wait: bool) -> None:
        while self.queue:
            metrics, jobs, state_name, epoch = self.queue[0]
            if not wait and not all(job.done() for job in jobs):
                return
            for job in jobs:
                job.result()  # a failed write fails the trial here
            self.queue.popleft()
            if state_name is None:
                self.send(metrics, None)
                continue
            with tempfile.TemporaryDirectory() as directory:
                record = StatePointer(state_name, epoch)
                (Path(directory) / POINTER_FILE).write_text(record.to_text())
                try:
                    self.send(metrics, Path(directory))
                finally:
                    # The previous state stays too: the driver's last snapshot of the
                    # experiment may still point to it.
                    self.states = [*self.states[-1:], state_name]
                    self.storage.keep_only_states(self.states)
