"""A trial's files in its storage folder, written so that the training barely waits.

The reference model's resumable state is 2.4 GB (model + Adam); `torch.save` of it blocks
6.6 s on a 2-core VM, and Tune then copies the folder to storage. Here a copy thread
snapshots the tensors into host memory while the next epoch starts (`Snapshots`: the
next optimiser step waits for it), and one writer thread streams each snapshot straight
into the trial's storage folder (local, NFS or s3:// through pyarrow), in the order they
were made. Tune's checkpoint holds only a pointer to the state file, so its copy is a few
bytes. Records that must survive a move to another node (placement, failure) are written
there directly too. Nothing here imports Ray.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pyarrow.fs
import torch

from results import storage
from results.layout import STATE_FOLDER, state_file, state_file_epoch


def snapshot(tree: Any, into: Any = None) -> Any:
    """A copy of a state tree (dicts, lists, tensors, numbers) in host memory, which
    training no longer changes. From a GPU the tensors go to pinned memory asynchronously
    on the current stream, and one synchronisation of that stream waits for all of them.
    `into`, an earlier snapshot of a tree of the same structure, is overwritten instead of
    allocating: a fresh 2.4 GB buffer costs more in page faults than the copy itself
    (reference state, 2-core VM: 4.1 s against 0.34 s)."""
    copied = _copy(tree, into)
    if torch.cuda.is_available():
        torch.cuda.current_stream().synchronize()
    return copied


def _copy(tree: Any, into: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        source = tree.detach()
        if (
            isinstance(into, torch.Tensor)
            and into.shape == source.shape
            and into.stride() == source.stride()
            and into.dtype == source.dtype
        ):
            return into.copy_(source, non_blocking=source.device.type != "cpu")
        if source.device.type == "cpu":
            return source.clone()
        return _host_like(source).copy_(source, non_blocking=True)
    if isinstance(tree, dict):
        into = into if isinstance(into, dict) else {}
        return {key: _copy(value, into.get(key)) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        into = (
            into
            if isinstance(into, list | tuple) and len(into) == len(tree)
            else [None] * len(tree)
        )
        return type(tree)(_copy(value, old) for value, old in zip(tree, into, strict=True))
    return tree


def _memory(tensor: torch.Tensor) -> tuple[str, int]:
    """Where a tensor's values live: a state dict's tensors share it with the module's."""
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def _clone_changing(tree: Any, changing: set[tuple[str, int]]) -> Any:
    """`tree` with the tensors that live in `changing` cloned on their own device."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone() if _memory(tree) in changing else tree
    if isinstance(tree, dict):
        return {key: _clone_changing(value, changing) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_clone_changing(value, changing) for value in tree)
    return tree


def _host_like(tensor: torch.Tensor) -> torch.Tensor:
    """An empty host tensor laid out as `tensor` (channels-last stays channels-last: a
    copy between two layouts would first make a contiguous copy on the GPU), pinned for
    GPU tensors so that their copies are asynchronous."""
    pinned = tensor.device.type != "cpu"
    return torch.empty_like(tensor, device="cpu", pin_memory=pinned)


def allocate(tree: Any) -> Any:
    """An empty host buffer shaped as `tree`, every page touched: what `snapshot` would
    allocate, without reading the values."""
    if isinstance(tree, torch.Tensor):
        return _host_like(tree.detach()).zero_()
    if isinstance(tree, dict):
        return {key: allocate(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(allocate(value) for value in tree)
    return tree


class _StepBarrier:
    """An optimiser's step pre-hook: the step waits for the copies of what it changes."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.pending: list[Future] = []
        optimizer.register_step_pre_hook(self)

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        while self.pending:
            self.pending.pop().result()  # a failed copy fails the training step


class Snapshots:
    """Copies of a trial's states into host buffers, made while the training goes on.

    A snapshot taken at an epoch's end equals the state at that moment. The tensors the
    next forward pass changes in place (`changing`: the models' buffers, BatchNorm's
    running statistics, a few MB) are cloned at once on their device. Everything else
    (parameters, the optimiser's moments) changes only in an optimiser step, so it is
    copied on a copy thread (from a GPU: into pinned memory on a side stream) during the
    next epoch's first batch, forward and backward, and each optimiser's next step waits
    for the copy. Buffers are kept per name (a weights file, the full state) and reused
    once their write is done; `prepare` makes one on another thread ahead of its first
    use, so that neither the training nor the copies pay its page faults."""

    def __init__(self) -> None:
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-snapshot")
        self._stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        self._buffers: dict[str, Future] = {}
        self._barriers: dict[torch.optim.Optimizer, _StepBarrier] = {}

    def prepare(self, name: str, tree: Callable[[], Any], executor: Executor) -> None:
        """Allocate the named buffer on `executor`'s thread, shaped as what `tree()`
        builds (called only if the buffer does not exist yet)."""
        if name not in self._buffers:
            self._buffers[name] = executor.submit(allocate, tree())

    def take(
        self,
        name: str,
        tree: Any,
        optimizers: Iterable[torch.optim.Optimizer],
        changing: Iterable[torch.Tensor],
    ) -> Future:
        """Start copying `tree` into the named buffer; the future's result is the copy.
        `optimizers` are those whose steps would change `tree`'s other tensors."""
        tree = _clone_changing(tree, {_memory(tensor) for tensor in changing})
        ready = torch.cuda.current_stream().record_event() if self._stream else None
        copy = self._copier.submit(self._copy, tree, self._buffers.get(name), ready)
        for optimizer in optimizers:
            if optimizer not in self._barriers:
                self._barriers[optimizer] = _StepBarrier(optimizer)
            self._barriers[optimizer].pending.append(copy)
        self._buffers[name] = copy
        return copy

    def _copy(self, tree: Any, buffer: Future | None, ready: torch.cuda.Event | None) -> Any:
        # The buffer's previous write must be done: a write slower than the epochs.
        into = buffer.result() if buffer is not None else None
        if ready is None:
            return snapshot(tree, into)
        try:
            with torch.cuda.stream(self._stream):
                self._stream.wait_event(ready)  # the epoch's last kernels, the clones
                return snapshot(tree, into)
        finally:  # a copy that failed halfway still ends before its sources can be freed
            self._stream.synchronize()

    def writing(self, name: str, job: Future) -> None:
        """`job` reads the named buffer and returns it when done (`TrialStorage.write_tensors`)."""
        self._buffers[name] = job

    def close(self, wait: bool = True) -> None:
        self._copier.shutdown(wait=wait, cancel_futures=not wait)


class TrialStorage:
    """One trial's folder on Tune's storage filesystem (`fs`, `folder` as Tune names
    them). Every write is write-then-rename: a reader never sees half a file."""

    def __init__(self, fs: pyarrow.fs.FileSystem, folder: str) -> None:
        self.fs, self.folder = fs, folder.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    @staticmethod
    def state_name(epoch: int) -> str:
        return state_file(epoch)

    def state_path(self, epoch: int) -> str:
        return self.path(self.state_name(epoch))

    def _write(self, path: str, write) -> None:
        storage.write_whole(self.fs, path, write)

    def write_text(self, name: str, text: str) -> None:
        self._write(self.path(name), lambda stream: stream.write(text.encode()))

    def read_text(self, name: str) -> str | None:
        try:
            return storage.read_whole(self.fs, self.path(name)).decode()
        except FileNotFoundError:
            return None

    def append_line(self, name: str, line: str) -> None:
        """One process writes a trial's records at a time (Tune runs one attempt)."""
        self.write_text(name, (self.read_text(name) or "") + line + "\n")

    def write_tensors(self, path: str, tree: Any) -> Any:
        """Returns `tree`, so that a job's result is the buffer it wrote from."""
        self._write(path, lambda stream: torch.save(tree, stream))
        return tree

    def read_tensors(self, path: str, device: torch.device) -> Any:
        """Tensors and plain values only (`weights_only`: no code from the file runs)."""
        data = storage.read_whole(self.fs, path)
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)

    def keep_only_states(self, names: list[str]) -> None:
        """Delete the full states older than the oldest of `names` (see `state_name`),
        whole or partial. A newer one may be being written by the writer thread (a 2.4 GB
        state can take longer than an epoch): it is never touched."""
        oldest = min(state_file_epoch(name) for name in names)
        selector = pyarrow.fs.FileSelector(self.path(STATE_FOLDER), allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            epoch = state_file_epoch(info.base_name)
            if info.type == pyarrow.fs.FileType.File and epoch is not None and epoch < oldest:
                self.fs.delete_file(info.path)
