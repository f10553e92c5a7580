import copy
import math
import os
import threading
from concurrent.futures import Future

import cv2
import numpy as np
import pyarrow.fs
import pytest
import torch

from results.settings import SplitPolicy
from trainable import engine, loading, optim
from trainable.checkpointing import Snapshots, TrialStorage
from trainable.engine import NonFiniteLossError, TrainingState, fit
from trainable.metrics import METRIC_KEYS
from trainable.splits import Split, make_split

CPU = torch.device("cpu")


def _reports(config, data, split, **kwargs):
    reports = []
    state = fit(
        config, data, split, device=CPU, on_epoch_end=lambda r, s: reports.append(r), **kwargs
    )
    return state, reports


def test_overfits_four_images(synth_arrays, tiny_config):
    lesions = [i for i, label in enumerate(synth_arrays.labels) if label != "normal"][:4]
    data = synth_arrays.rows(lesions)
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


def test_same_seed_same_metrics_and_resume_continues_identically(
    synth_arrays, tiny_config, tmp_path
):
    split = make_split(synth_arrays, SplitPolicy.RANDOM, seed=0, with_validation=True)
    config = tiny_config.replace(epochs=2, aug_hflip_p=0.5, aug_gauss_noise_p=0.5)
    _, run_a = _reports(config, synth_arrays, split)
    _, run_b = _reports(config, synth_arrays, split)
    assert [r.train_loss for r in run_a] == [r.train_loss for r in run_b]
    assert run_a[-1].heldout == run_b[-1].heldout

    # The state is written as a trial writes it: snapshot taken at epoch 1 and copied
    # while epoch 2 starts (changing the live tensors), written after, then read back.
    # The copy is held back 0.3 s (its buffer's last "write"), so epoch 2 is under way.
    storage = TrialStorage(pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial"))
    snapshots, copies = Snapshots(), []

    def snapshot_epoch_one(report, state) -> None:
        if report.epoch == 1:
            slow_write = Future()
            threading.Timer(0.3, slow_write.set_result, [None]).start()
            snapshots.writing("state", slow_write)
            training = [state.optimizer], state.model.buffers()
            copies.append(snapshots.take("state", state.to_dict(), *training))

    fit(config, synth_arrays, split, device=CPU, on_epoch_end=snapshot_epoch_one)
    storage.write_tensors(storage.state_path(1), copies[0].result())
    snapshots.close()
    saved = storage.read_tensors(storage.state_path(1), CPU)
    _, resumed = _reports(config, synth_arrays, split, resume_from=saved)
    assert [r.epoch for r in resumed] == [2]
    assert resumed[0].train_loss == pytest.approx(run_a[1].train_loss, rel=1e-5)
    assert resumed[0].heldout["dice"] == pytest.approx(run_a[1].heldout["dice"], rel=1e-5)


def test_a_compiled_model_trains_the_same_and_saves_plain_names(
    synth_arrays, tiny_config, monkeypatch
):
    """`--compile` wraps the forward with torch.compile. Dynamo's `eager` backend (the
    graph capture without code generation, which takes minutes on a CPU) keeps the
    numbers: the run equals the plain one, and the state keeps the module's names."""
    compile_calls = []
    plain_compile = torch.compile

    def eager_compile(model, **options):
        compile_calls.append(model)
        return plain_compile(model, backend="eager", **options)

    monkeypatch.setattr(torch, "compile", eager_compile)
    split = make_split(synth_arrays, SplitPolicy.RANDOM, seed=0, with_validation=True)
    config = tiny_config.replace(epochs=1)
    plain_state, plain = _reports(config, synth_arrays, split)
    compiled_state, compiled = _reports(config, synth_arrays, split, compiled=True)
    assert len(compile_calls) == 1
    assert [r.train_loss for r in compiled] == pytest.approx([r.train_loss for r in plain])
    assert compiled[-1].heldout["dice"] == pytest.approx(plain[-1].heldout["dice"])
    saved = compiled_state.model.state_dict()
    assert saved.keys() == plain_state.model.state_dict().keys()
    assert not any(name.startswith("_orig_mod") for name in saved)


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


def test_the_threshold_is_chosen_on_validation_never_on_test(synth_arrays, tiny_config):
    """--threshold auto: changing only the test part's masks changes no threshold and no
    held-out value, only the test metrics; the chosen threshold's validation Dice is the
    grid's best, and the test metrics use it."""
    import dataclasses

    from trainable.metrics import THRESHOLD_GRID

    split = make_split(synth_arrays, SplitPolicy.GROUPED, seed=0, with_validation=True)
    masks = synth_arrays.masks.copy()
    masks[split.test] = 0
    masks[split.test, :16, :16] = 1  # every test mask a square in a corner
    altered = dataclasses.replace(synth_arrays, masks=masks)
    config = tiny_config.replace(epochs=2)
    _, fixed = _reports(config, synth_arrays, split)
    state, auto = _reports(config, synth_arrays, split, choose_threshold=True)
    _, other = _reports(config, synth_arrays, split, truth=altered, choose_threshold=True)
    assert all(r.threshold == 0.5 for r in fixed)
    for a, b, f in zip(auto, other, fixed, strict=True):
        assert a.threshold == b.threshold and a.threshold in THRESHOLD_GRID
        assert a.selected_heldout == pytest.approx(b.selected_heldout, nan_ok=True)
        assert a.test != pytest.approx(b.test, nan_ok=True)
        # The same model as at 0.5 (the loss is soft), scored at the grid's best threshold.
        assert a.heldout_loss == f.heldout_loss and a.heldout["dice"] >= f.heldout["dice"]
    assert state.best_threshold == auto[-1].threshold
    for a in auto:
        if a.improved:  # the test part scored at the threshold chosen with the selection
            assert a.test_stats.threshold == a.threshold
            assert a.test == a.test_stats.compute()
    assert {r.threshold for r in auto} != {0.5}, "0.5 chosen: the test shows less"
    with pytest.raises(ValueError, match="validation part"):
        fit(config, synth_arrays, split, device=CPU, select_on_test=True, choose_threshold=True)


def _trained(config, data, split):
    """A model after one epoch of training, in eval mode."""
    state = fit(config.replace(epochs=1), data, split, device=CPU)
    return state.model.eval()


def test_heldout_loss_and_metrics_do_not_depend_on_batch_size_or_order(synth_arrays, tiny_config):
    split = make_split(synth_arrays, SplitPolicy.GROUPED, seed=0, with_validation=True)
    model = _trained(tiny_config, synth_arrays, split)
    precision = engine.Precision.for_device(CPU, tiny_config)
    # The validation part and the test part together: normal images form their own batches
    # at some batch sizes, which is what made the old batch-mean loss move.
    part = np.concatenate([split.validation, split.test])
    shuffled = np.random.default_rng(1).permutation(part)

    def on(indices, batch_size):
        return engine.evaluate(
            model, synth_arrays, synth_arrays, indices, CPU, precision, 0.5, batch_size
        ).metrics()

    reference = on(part, 16)
    assert 0.0 < reference["loss"] < 1.0
    # The network's own output moves by ~1e-7 with the batch size (other kernels); the
    # curve metrics bin probabilities at 1/65536 and so can move by ~1e-6 (seen: 1.3e-6).
    binned = {"roc_auc": 1e-5, "average_precision": 1e-5}
    for indices, batch_size in [(part, 1), (part, 3), (part, 8), (shuffled, 5)]:
        values = on(indices, batch_size)
        for key, value in reference.items():
            tolerance = binned.get(key, 1e-6)
            assert values[key] == pytest.approx(value, abs=tolerance, nan_ok=True), (
                key,
                batch_size,
            )


def test_the_objective_ignores_training_loss_the_epoch_rule_does_not(
    synth_arrays, tiny_config, monkeypatch
):
    """A trial whose training loss is higher (as augmentation makes it) but whose model and
    validation are identical gets the same objective; the combined loss calls it worse."""
    split = make_split(synth_arrays, SplitPolicy.GROUPED, seed=0, with_validation=True)
    config = tiny_config.replace(epochs=3)
    _, plain = _reports(config, synth_arrays, split)
    real_train = engine.train_one_epoch
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a: real_train(*a) + 0.3)
    _, harder = _reports(config, synth_arrays, split)
    assert [r.train_loss + 0.3 for r in plain] == pytest.approx([r.train_loss for r in harder])
    assert plain[-1].best_epoch == harder[-1].best_epoch
    assert harder[-1].selected_heldout == plain[-1].selected_heldout
    assert harder[-1].best_combined_loss == pytest.approx(plain[-1].best_combined_loss + 0.06)
    # The objective is the selected epoch's validation values, not the last epoch's.
    selected = plain[plain[-1].best_epoch - 1]
    assert plain[-1].selected_heldout == {"loss": selected.heldout_loss, **selected.heldout}


def test_a_model_trained_at_another_size_is_scored_at_the_evaluation_size(
    synth_root, cache_dir, tiny_config
):
    from trainable.preprocess import load_sized

    sized = load_sized(synth_root, (32,), 64, cache_dir, progress=False)
    split = make_split(sized.at(32), SplitPolicy.GROUPED, seed=0, with_validation=True)
    config = tiny_config.replace(image_size=32, epochs=1)
    state, reports = _reports(config, sized.at(32), split, truth=sized.evaluation)
    (report,) = reports
    assert report.heldout_predictions.shape == (len(split.validation), 64, 64)
    assert report.test_predictions.shape == (len(split.test), 64, 64)
    precision = engine.Precision.for_device(CPU, config)
    again = engine.evaluate(
        state.model, sized.at(32), sized.evaluation, split.validation, CPU, precision, 0.5
    )
    assert again.metrics() == pytest.approx(report.selected_heldout, nan_ok=True)
    assert np.array_equal(again.predictions, report.heldout_predictions)


def test_folds_train_in_lockstep_and_report_means_and_the_ensemble(synth_arrays, tiny_config):
    from trainable.splits import make_folds

    folds = make_folds(synth_arrays, SplitPolicy.GROUPED, seed=0, k=3)
    config = tiny_config.replace(epochs=2)
    reports, saved = [], {}

    def keep(report, states):
        reports.append(report)
        saved[report.epoch] = copy.deepcopy([s.to_dict() for s in states])  # as torch.save

    states = engine.fit_folds(config, synth_arrays, folds, device=CPU, on_epoch_end=keep)
    assert [r.epoch for r in reports] == [1, 2] and len(states) == 3
    last = reports[-1]
    assert len(last.folds) == 3
    for key, value in last.selected_heldout.items():
        assert value == pytest.approx(np.mean([f.selected_heldout[key] for f in last.folds]))
    # The test metrics are the ensemble's: the folds' selected probabilities averaged.
    mean = torch.stack([s.best_test_probabilities for s in states]).mean(0)
    test = folds[0].test
    ensemble = engine.score_probabilities(mean, synth_arrays.masks[test], 0.5)
    assert last.test == ensemble.stats.compute() and last.test_loss == ensemble.loss
    # Each fold alone gives what one fit on that fold gives.
    _, alone = _reports(config, synth_arrays, folds[1])
    assert alone[-1].selected_heldout == last.folds[1].selected_heldout
    # Resumed after epoch 1, all folds continue exactly.
    resumed = []
    engine.fit_folds(
        config, synth_arrays, folds, device=CPU, resume_from=saved[1],
        on_epoch_end=lambda report, states: resumed.append(report),
    )  # fmt: skip
    assert [r.epoch for r in resumed] == [2]
    assert resumed[0].selected_heldout == pytest.approx(last.selected_heldout, rel=1e-5)
    assert resumed[0].test == pytest.approx(last.test, rel=1e-5, nan_ok=True)


def test_a_last_batch_of_one_image_does_not_stop_training(synth_root, cache_dir, tiny_config):
    """At 32 px the encoder's deepest maps are 1 x 1: BatchNorm then refuses a batch of
    one image ("Expected more than 1 value per channel")."""
    from trainable.preprocess import load_busi

    data = load_busi(synth_root, 32, cache_dir, progress=False)
    split = make_split(data, SplitPolicy.GROUPED, seed=0, with_validation=True)
    batch_size = len(split.train) - 1  # the last batch holds exactly one image
    assert len(split.train) % batch_size == 1
    config = tiny_config.replace(image_size=32, epochs=1, batch_size=batch_size)
    _, reports = _reports(config, data, split)
    assert math.isfinite(reports[0].train_loss)
    loader = loading.make_train_loader(data, split, tiny_config, num_workers=0)
    assert not loader.drop_last  # only when a batch of one would be left over


def _epoch(loader, epoch: int) -> list:
    loader.sampler.generator.manual_seed(epoch)  # as Trainer.step does
    return [[t.clone() for t in batch] for batch in loader]


def test_a_trial_of_three_cpus_runs_two_single_threaded_workers(
    synth_arrays, tiny_config, tmp_path, monkeypatch
):
    """--cpus-per-trial 3: 2 persistent DataLoader workers of one thread each (torch and
    OpenCV), and the same batches, augmentation included, as without workers."""
    split = make_split(synth_arrays, SplitPolicy.RANDOM, seed=0, with_validation=True)
    config = tiny_config.replace(aug_hflip_p=0.5, aug_affine_p=0.5, aug_gauss_noise_p=0.5)
    make_batch = loading.SegmentationSet.__getitems__

    def probed(dataset, batch):  # which process made the batch, with how many threads
        line = f"{os.getpid()} {torch.get_num_threads()} {cv2.getNumThreads()}\n"
        with open(tmp_path / f"{os.getpid()}.txt", "a") as log:
            log.write(line)
        return make_batch(dataset, batch)

    monkeypatch.setattr(loading.SegmentationSet, "__getitems__", probed)
    before = torch.get_num_threads(), cv2.getNumThreads()
    loading.limit_threads(1)  # as the trial does for its trainer: 3 CPUs - 2 workers
    loader = loading.make_train_loader(synth_arrays, split, config, num_workers=2)
    assert loader.persistent_workers
    with_workers = [batch for epoch in (1, 2) for batch in _epoch(loader, epoch)]
    lines = [
        line.split() for log in tmp_path.glob("*.txt") for line in log.read_text().splitlines()
    ]
    assert len({pid for pid, _, _ in lines}) == 2  # the same 2 workers for both epochs
    assert {(torch_threads, cv2_threads) for _, torch_threads, cv2_threads in lines} == {("1", "1")}
    torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])

    alone = loading.make_train_loader(synth_arrays, split, config, num_workers=0)
    without = [batch for epoch in (1, 2) for batch in _epoch(alone, epoch)]
    assert len(without) == len(with_workers)
    for (image_a, mask_a), (image_b, mask_b) in zip(with_workers, without, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)


def test_the_fp16_loss_scale_is_part_of_the_resumable_state():
    """GPUs without bf16 train in fp16 with a GradScaler whose scale adapts over the
    steps; a resumed trial continues with the scale it had, not the initial one."""

    def state(scale: float, interval: int = 2000) -> TrainingState:
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.Adam(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=interval)
        return TrainingState(model, optimizer, None, scaler)

    saved = state(scale=512.0, interval=7).to_dict()
    resumed = state(scale=65536.0)
    resumed.load(saved)
    assert resumed.scaler.get_scale() == 512.0
    assert resumed.scaler.get_growth_interval() == 7
    legacy = {key: value for key, value in saved.items() if key != "scaler"}
    state(scale=2.0).load(legacy)  # a state written before the scale was saved still loads


def test_the_reference_optimiser_is_one_group_at_a_constant_rate(tiny_config):
    from trainable.model import build_model

    model = build_model(tiny_config)
    optimizer = optim.build_optimizer(model, tiny_config)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 1e-4
    assert optim.build_scheduler(optimizer, tiny_config) is None


def test_the_encoder_trains_at_its_scaled_rate_after_a_linear_warm_up(tiny_config):
    from trainable.model import build_model

    config = tiny_config.replace(encoder_lr_scale=0.1, warmup_epochs=2, epochs=6, lr=1e-3)
    model = build_model(config)
    optimizer = optim.build_optimizer(model, config)
    decoder, encoder = optimizer.param_groups
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(decoder["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    scheduler = optim.build_scheduler(optimizer, config)
    rates = []
    for _ in range(config.epochs):
        rates.append((decoder["lr"], encoder["lr"]))
        optimizer.step()
        scheduler.step()
    assert [d for d, _ in rates] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3, 1e-3])
    assert [e for _, e in rates] == pytest.approx([d / 10 for d, _ in rates])


def test_a_cosine_after_the_warm_up_ends_near_zero():
    factor = optim.LrFactor(warmup=2, epochs=6, cosine=True)
    quarter = 0.5 * math.cos(math.pi / 4)
    expected = [1 / 3, 2 / 3, 1.0, 0.5 + quarter, 0.5, 0.5 - quarter]
    assert [factor(e) for e in range(6)] == pytest.approx(expected)
