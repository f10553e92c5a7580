import math

import numpy as np
import pytest
import torch

from trainable import engine
from trainable.engine import NonFiniteLossError, fit
from trainable.metrics import METRIC_KEYS
from trainable.preprocess import BusiArrays
from trainable.splits import Split, SplitPolicy, make_split

CPU = torch.device("cpu")


def _subset(data: BusiArrays, rows: list[int]) -> BusiArrays:
    return BusiArrays(
        names=tuple(data.names[i] for i in rows),
        labels=tuple(data.labels[i] for i in rows),
        images=data.images[rows],
        masks=data.masks[rows],
        groups=data.groups[rows],
    )


def _reports(config, data, split, **kwargs):
    reports = []
    state = fit(
        config, data, split, device=CPU, on_epoch_end=lambda r, s: reports.append(r), **kwargs
    )
    return state, reports


def test_overfits_four_images(synth_arrays, tiny_config):
    lesions = [i for i, label in enumerate(synth_arrays.labels) if label != "normal"][:4]
    data = _subset(synth_arrays, lesions)
    everything = np.arange(4)
    split = Split(SplitPolicy.RANDOM, 0, everything, everything, everything)
    config = tiny_config.replace(epochs=30, batch_size=4, lr=3e-3)
    _, reports = _reports(config, data, split)
    first, last = reports[0], reports[-1]
    assert last.train_loss < 0.3 * first.train_loss  # measured: 0.80 -> 0.11
    assert last.heldout["dice"] > 0.5  # measured: 0.66


def test_selection_is_lowest_combined_loss_and_reports_are_complete(synth_arrays, tiny_config):
    split = make_split(synth_arrays, SplitPolicy.RANDOM, seed=0, with_validation=True)
    state, reports = _reports(tiny_config.replace(epochs=3), synth_arrays, split)
    for r in reports:
        assert math.isclose(r.combined_loss, 0.2 * r.train_loss + 0.8 * r.heldout_loss)
        assert set(r.heldout) == set(METRIC_KEYS) and set(r.test) == set(METRIC_KEYS)
        assert r.heldout_predictions.shape == (len(split.validation), 64, 64)
    best = min(reports, key=lambda r: r.combined_loss)
    assert state.best_epoch == best.epoch == reports[-1].best_epoch
    assert state.best_combined_loss == best.combined_loss
    improved = [r for r in reports if r.improved]
    assert improved[0].epoch == 1
    # The test part is evaluated only when the selection improves; it has its own size.
    assert all(r.test_predictions.shape[0] == len(split.test) for r in improved)
    assert all(r.test_predictions is None for r in reports if not r.improved)


def test_same_seed_same_metrics_and_resume_continues_identically(synth_arrays, tiny_config):
    split = make_split(synth_arrays, SplitPolicy.RANDOM, seed=0, with_validation=True)
    config = tiny_config.replace(epochs=2, aug_hflip_p=0.5, aug_gauss_noise_p=0.5)
    _, run_a = _reports(config, synth_arrays, split)
    _, run_b = _reports(config, synth_arrays, split)
    assert [r.train_loss for r in run_a] == [r.train_loss for r in run_b]
    assert run_a[-1].heldout == run_b[-1].heldout

    saved = {}
    fit(
        config.replace(epochs=1),
        synth_arrays,
        split,
        device=CPU,
        on_epoch_end=lambda r, s: saved.update(s.to_dict()),
    )
    _, resumed = _reports(config, synth_arrays, split, resume_from=saved)
    assert [r.epoch for r in resumed] == [2]
    assert resumed[0].train_loss == pytest.approx(run_a[1].train_loss, rel=1e-5)
    assert resumed[0].heldout["dice"] == pytest.approx(run_a[1].heldout["dice"], rel=1e-5)


def test_non_finite_loss_raises(synth_arrays, tiny_config, monkeypatch):
    split = make_split(synth_arrays, SplitPolicy.RANDOM, seed=0, with_validation=True)

    class NanLoss(torch.nn.Module):
        def forward(self, logits, target):
            return logits.mean() * float("nan")

    monkeypatch.setattr(engine, "build_loss", lambda loss: NanLoss())
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        fit(tiny_config, synth_arrays, split, device=CPU)


def test_reference_protocol_selects_on_test(synth_arrays, tiny_config):
    split = make_split(synth_arrays, SplitPolicy.RANDOM, seed=0, with_validation=False)
    state, reports = _reports(tiny_config, synth_arrays, split, select_on_test=True)
    best = reports[state.best_epoch - 1]
    assert state.best_test_loss == best.heldout_loss
    assert reports[-1].test == best.heldout


def test_locked_protocol_needs_a_validation_part(synth_arrays, tiny_config):
    split = make_split(synth_arrays, SplitPolicy.RANDOM, seed=0, with_validation=False)
    with pytest.raises(ValueError, match="no validation part"):
        fit(tiny_config, synth_arrays, split, device=CPU)
