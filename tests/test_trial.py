"""One trial without Ray: `run_trial` writes every record of a trial and reports each epoch
through the `send` it is given, a full state's report with a checkpoint that points to it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs
import torch

from results import keys
from results.layout import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    POINTER_FILE,
    SELECTION_FILE,
    SPLIT_FILE,
)
from results.records import Selected, StatePointer, read_selection
from trainable.checkpointing import TrialStorage
from trainable.preprocess import load_sized
from trainable.trial import run_trial
from trainable.trial_setup import TrialSetup, resolve_config


def test_a_trial_runs_and_records_without_ray(synth_root, cache_dir, tiny_config, tmp_path):
    sized = load_sized(synth_root, (32,), 32, cache_dir, progress=False)
    setup = TrialSetup(base=tiny_config.replace(image_size=32, epochs=3), checkpoint_every=2)
    config = resolve_config(setup, {"lr": 3e-4})
    trial_dir = tmp_path / "trial_000_abc"
    trial_dir.mkdir()
    storage = TrialStorage(pyarrow.fs.LocalFileSystem(), str(trial_dir))
    sent: list[tuple[dict[str, float], str | None]] = []

    def send(metrics: dict[str, float], checkpoint: Path | None) -> None:
        pointer = None
        if checkpoint is not None:  # the folder lives only while send runs
            path = checkpoint / POINTER_FILE
            pointer = StatePointer.from_text(path.read_text(), path).state
            assert storage.read_tensors(storage.path(pointer), torch.device("cpu"))["folds"]
        sent.append((metrics, pointer))

    device = torch.device("cpu")
    run_trial(config, sized, setup, trial_dir, storage, device, None, None, send)

    assert [m[keys.EPOCH] for m, _ in sent] == [1, 2, 3]
    assert all(set(m) == set(keys.REPORTED) for m, _ in sent)
    assert [p for _, p in sent] == [None, storage.state_name(2), None]  # every 2, not the last
    assert json.loads((trial_dir / CONFIG_FILE).read_text())["lr"] == 3e-4
    manifest = json.loads((trial_dir / SPLIT_FILE).read_text())
    selected = Selected.from_text((trial_dir / METRICS_FILE).read_text(), METRICS_FILE)
    assert selected.epoch == sent[-1][0][keys.BEST_EPOCH]
    assert selected.counts["test"] == len(read_selection(trial_dir / SELECTION_FILE).names)
    assert selected.counts["test"] == len(manifest["test"])
    assert (trial_dir / MODEL_FILE).is_file()
