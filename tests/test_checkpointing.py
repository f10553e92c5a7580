"""Snapshots that training no longer changes, and a trial's files written whole."""

from __future__ import annotations

import pyarrow.fs
import torch

from trainable.checkpointing import TrialStorage, snapshot


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


def test_host_buffers_are_made_once_and_reused_after_their_write():
    from concurrent.futures import ThreadPoolExecutor

    from trainable.checkpointing import HostBuffers

    model = torch.nn.Linear(4, 3)
    buffers = HostBuffers()
    with ThreadPoolExecutor(max_workers=1) as writer:
        buffers.prepare("state", model.state_dict(), writer)  # allocated on the thread
        first = buffers.take("state", model.state_dict())
        assert torch.equal(first["weight"], model.weight.detach())
        buffers.writing("state", writer.submit(lambda tree: tree, first))  # a write's result
        with torch.no_grad():
            model.weight += 1
        second = buffers.take("state", model.state_dict())
    assert second["weight"].data_ptr() == first["weight"].data_ptr()  # the same buffer
    assert torch.equal(second["weight"], model.weight.detach())
