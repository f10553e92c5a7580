"""Snapshots that training no longer changes, and a trial's files written whole."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow.fs
import pytest
import torch

from trainable.checkpointing import Snapshots, TrialStorage, snapshot


def test_a_snapshot_does_not_move_with_training():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 4}
    copy = snapshot(state)
    before = copy["model"]["weight"].clone()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()  # training goes on, in place
    assert not torch.equal(model.weight.detach(), before)
    assert torch.equal(copy["model"]["weight"], before)
    assert copy["epoch"] == 4 and copy["optimizer"]["state"][0]["step"] == 1


def test_pruning_never_deletes_a_state_being_written(tmp_path):
    """With a state every epoch and a writer slower than an epoch, epoch 4's state is
    still being written when epoch 3's report prunes: it must come through whole (it was
    deleted mid-write, and the trial errored renaming its .partial)."""
    from results.storage import write_whole

    storage = TrialStorage(pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial"))
    for epoch in (1, 2, 3):
        storage.write_tensors(storage.state_path(epoch), {"epoch": epoch})
    halfway, finish = threading.Event(), threading.Event()

    def slow_write(stream) -> None:
        stream.write(b"first half ")
        halfway.set()
        finish.wait(timeout=30)
        stream.write(b"second half")

    with ThreadPoolExecutor(max_workers=1) as writer:
        job = writer.submit(write_whole, storage.fs, storage.state_path(4), slow_write)
        assert halfway.wait(timeout=30)
        storage.keep_only_states([storage.state_name(2), storage.state_name(3)])
        finish.set()
        job.result()  # raised FileNotFoundError when the .partial was pruned
    state_dir = tmp_path / "trial" / "state"
    names = sorted(p.name for p in state_dir.iterdir())
    assert names == ["epoch_0002.pt", "epoch_0003.pt", "epoch_0004.pt"]
    assert (state_dir / "epoch_0004.pt").read_bytes() == b"first half second half"


def test_trial_storage_writes_whole_files_and_keeps_the_latest_state(tmp_path):
    storage = TrialStorage(pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial"))
    for epoch in (2, 4):
        storage.write_tensors(storage.state_path(epoch), {"epoch": epoch, "w": torch.ones(2)})
    storage.write_tensors(storage.state_path(6), {"epoch": 6, "w": torch.ones(2)})
    storage.keep_only_states([storage.state_name(4), storage.state_name(6)])
    state_dir = tmp_path / "trial" / "state"
    assert sorted(p.name for p in state_dir.iterdir()) == ["epoch_0004.pt", "epoch_0006.pt"]
    loaded = storage.read_tensors(storage.state_path(4), torch.device("cpu"))
    assert loaded["epoch"] == 4 and loaded["w"].tolist() == [1.0, 1.0]
    storage.append_line("placement.jsonl", "a")
    storage.append_line("placement.jsonl", "b")
    assert storage.read_text("placement.jsonl") == "a\nb\n"
    assert storage.read_text("missing.json") is None


def small_training() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A convolution in channels-last (as on a GPU) with BatchNorm (its running
    statistics change in every training forward), and Adam, one step in."""
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    train_step(model, optimizer)
    return model, optimizer


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(5, 2, 4, 4)).square().sum().backward()
    optimizer.step()


def held_back(snapshots: Snapshots, name: str, seconds: float = 0.3) -> None:
    """The named buffer's last write ends in `seconds`: a copy into it waits until then."""
    slow_write = Future()
    threading.Timer(seconds, slow_write.set_result, [None]).start()
    snapshots.writing(name, slow_write)


def test_a_snapshot_is_the_state_it_was_taken_of_while_training_goes_on():
    model, optimizer = small_training()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}
    expected = copy.deepcopy(state)
    snapshots = Snapshots()
    held_back(snapshots, "state")  # the copy cannot start for 0.3 s
    copied = snapshots.take("state", state, [optimizer], model.buffers())
    train_step(model, optimizer)  # the next epoch: forward, backward, then a step
    assert copied.done()  # the step waited for the copy
    for name, value in copied.result()["model"].items():
        assert torch.equal(value, expected["model"][name]), name
    moments = copied.result()["optimizer"]["state"][0]
    assert torch.equal(moments["exp_avg"], expected["optimizer"]["state"][0]["exp_avg"])
    assert moments["step"] == 1 and copied.result()["epoch"] == 1
    # ... and training went on: the running mean and the weights moved since.
    assert not torch.equal(model[1].running_mean, expected["model"]["1.running_mean"])
    assert not torch.equal(model[0].weight.detach(), expected["model"]["0.weight"])
    snapshots.close()


def test_every_folds_next_step_waits_for_the_snapshot_of_all_folds():
    folds = [small_training() for _ in range(2)]
    optimizers = [optimizer for _, optimizer in folds]
    buffers = [buffer for model, _ in folds for buffer in model.buffers()]
    snapshots = Snapshots()
    for stepping in reversed(range(2)):  # fold 1 steps first, then fold 0 alone
        state = {"folds": [model.state_dict() for model, _ in folds]}
        expected = copy.deepcopy(state)
        held_back(snapshots, "state")
        copied = snapshots.take("state", state, optimizers, buffers)
        train_step(*folds[stepping])
        assert copied.done()  # this fold's step waited
        for fold, fold_expected in zip(copied.result()["folds"], expected["folds"], strict=True):
            assert all(torch.equal(fold[name], value) for name, value in fold_expected.items())
    snapshots.close()


def test_snapshot_buffers_are_made_once_and_reused_after_their_write():
    model, optimizer = small_training()
    snapshots = Snapshots()
    with ThreadPoolExecutor(max_workers=1) as writer:
        snapshots.prepare("state", model.state_dict, writer)  # allocated on the thread
        first = snapshots.take("state", model.state_dict(), [optimizer], model.buffers())
        snapshots.writing("state", writer.submit(lambda: first.result()))  # a write's result
        train_step(model, optimizer)
        second = snapshots.take("state", model.state_dict(), [optimizer], model.buffers())
        weight = second.result()["0.weight"]
    assert weight.data_ptr() == first.result()["0.weight"].data_ptr()  # the same buffer
    assert weight.stride() == model[0].weight.stride()  # laid out as the live tensor
    assert torch.equal(weight, model[0].weight.detach())
    snapshots.close()


def test_a_failed_copy_fails_the_next_step():
    model, optimizer = small_training()
    snapshots = Snapshots()
    broken = Future()
    broken.set_exception(MemoryError("pinned memory exhausted"))
    snapshots.writing("state", broken)  # the buffer's last job failed
    snapshots.take("state", model.state_dict(), [optimizer], model.buffers())
    with pytest.raises(MemoryError, match="pinned memory"):
        train_step(model, optimizer)
    snapshots.close()
