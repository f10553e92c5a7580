"""One trial, without Ray: the experiment's split, the config and split records, then
`fit` with an epoch-end callback that writes TensorBoard, the selected model's records
and weights, and reports the epoch through `send` once its files are on storage.

`trainable.tune_adapter` runs it inside Tune; a test or a benchmark can run it alone.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from results.config import TrainConfig
from results.layout import CONFIG_FILE, METRICS_FILE, SELECTION_FILE, SPLIT_FILE, model_files
from results.records import save_config
from trainable.checkpointing import TrialStorage
from trainable.engine import EpochReport, TrainingState, fit, fit_folds
from trainable.loading import limit_threads
from trainable.model import EncoderState
from trainable.preprocess import SizedData
from trainable.reporting import Reports, Send
from trainable.splits import experiment_splits, manifest_of
from trainable.tensorboard import TrialWriter
from trainable.trial_records import selection_arrays, selection_record, to_tune_metrics
from trainable.trial_setup import TrialSetup


def run_trial(
    config: TrainConfig,
    sized: SizedData,
    setup: TrialSetup,
    trial_dir: Path,
    storage: TrialStorage,
    device: torch.device,
    encoder_state: EncoderState | None,
    resume_from: list | None,
    send: Send,
) -> None:
    """Train `config` on the experiment's data, from `resume_from` (one training state per
    fold) or from scratch; every epoch reported through `send`."""
    data, truth = sized.at(config.image_size), sized.evaluation
    # A GPU trial's CPUs feed it: DataLoader workers (one thread each) and the trainer's
    # one. A CPU trial's all compute, in the trainer (augmenting inline).
    workers = setup.num_workers if device.type == "cuda" else 0
    limit_threads(max(1, setup.cpus - workers))
    splits = experiment_splits(
        data, setup.split_policy, setup.split_seed, setup.folds, not setup.select_on_test
    )
    split = splits[0]
    (trial_dir / SPLIT_FILE).write_text(manifest_of(splits, data.names).to_text())
    save_config(config, trial_dir / CONFIG_FILE)

    heldout = split.test if setup.select_on_test else split.validation
    examples = heldout[: setup.examples]
    writer = TrialWriter(trial_dir, setup.image_every)  # one run per trial, named as it
    files = model_files(setup.folds)
    reports = Reports(storage, setup.checkpoint_every, config.epochs, send)

    def on_epoch_end(report: EpochReport, states: list[TrainingState]) -> None:
        # Tune decides on an epoch (ASHA's stop) when its report is sent, which waits for
        # that epoch's writes: send the earlier ones first, so that a stop lands before
        # anything of this epoch is recorded, and every record of a stopped trial
        # (model.pt, metrics.json, TensorBoard) describes the epoch Tune ranked.
        reports.send_pending()
        writer.epoch(report)
        if writer.wants_images(report.epoch, config.epochs):
            writer.images(
                report.epoch,
                truth.images[examples],
                truth.masks[examples],
                report.heldout_predictions[: len(examples)],
            )
        weights = {}
        if report.improved:
            for fold, state, file in zip(report.folds or (report,), states, files, strict=True):
                if fold.improved:
                    weights[file] = state.model.state_dict()
            test = split.test
            arrays = selection_arrays(report, [data.names[i] for i in test], data.groups[test])
            arrays.write(trial_dir / SELECTION_FILE)
            selected = selection_record(report, setup, splits, truth.image_size)
            (trial_dir / METRICS_FILE).write_text(selected.to_text())
        writer.flush()
        reports.epoch(to_tune_metrics(report, setup.objective), report.epoch, weights, states)

    common = {
        "device": device,
        "truth": truth,
        "num_workers": workers,
        "encoder_state": encoder_state,
        "compiled": setup.compiled,
        "choose_threshold": setup.choose_threshold,
    }
    try:
        if setup.folds > 1:
            fit_folds(
                config, data, splits, resume_from=resume_from, on_epoch_end=on_epoch_end, **common
            )
        else:
            fit(
                config,
                data,
                split,
                select_on_test=setup.select_on_test,
                resume_from=resume_from[0] if resume_from else None,
                on_epoch_end=lambda report, state: on_epoch_end(report, [state]),
                **common,
            )
    except (SystemExit, KeyboardInterrupt):  # Tune stops a trial by raising in it
        reports.abandon()  # no report after that
        raise
    except Exception:
        with contextlib.suppress(Exception):  # the epochs written before the error
            reports.close()
        raise
    else:
        reports.close()
    finally:
        writer.close()
