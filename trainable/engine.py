"""The training engine: `train_one_epoch`, `evaluate` and `fit`, free of Ray.

Two decisions, two rules. Inside a run, the epoch is selected by the reference's rule:
after each epoch, combined = 0.2 x train loss + 0.8 x held-out loss, lowest wins. Across
runs, configs are ranked by the selected model's held-out metrics (`selected_heldout`),
which the adapter reports every epoch; the training loss plays no part in them.

The held-out loss and metrics are computed over the whole part at one evaluation size
(pixels pooled, the soft Dice loss from pooled sums), so they do not depend on batch size,
order or the size a run trains at. Under the locked-test protocol the held-out part is the
validation part, and the test part is evaluated only when the selection improves, so the
selected model's test metrics are known without the test part ever influencing a choice.

The decision threshold is the config's, or with `choose_threshold` the one of
`metrics.THRESHOLD_GRID` with the highest pooled Dice on the held-out (validation) part,
chosen again at every evaluation from that part's probabilities; the held-out metrics are
at that threshold, and the selected model's test metrics at the one chosen with it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from results.config import TrainConfig
from results.keys import LOSS
from trainable.augment import normalise
from trainable.loading import make_train_loader
from trainable.metrics import PixelStats, best_threshold
from trainable.model import EncoderState, build_loss, build_model
from trainable.optim import build_optimizer, build_scheduler
from trainable.preprocess import BusiArrays
from trainable.splits import Split

log = logging.getLogger(__name__)

# Evaluation's batch size changes nothing but speed and memory (the results are pooled).
EVAL_BATCH_SIZE = 16


class NonFiniteLossError(FloatingPointError):
    """Training diverged. Raised so that Tune marks the trial errored (and Optuna FAIL)."""


@dataclass(frozen=True)
class EpochReport:
    """What one epoch produced; the test details are set only on epochs that improved."""

    epoch: int  # 1-based
    train_loss: float
    heldout_loss: float
    combined_loss: float
    heldout: dict[str, float]
    heldout_predictions: np.ndarray  # bool (N, E, E) at the evaluation size, in part order
    lr: float
    seconds: float
    train_seconds: float  # of `seconds`, training; the rest evaluates
    images_per_second: float
    peak_gpu_bytes: float  # peak allocated so far, NaN on a CPU
    improved: bool
    best_epoch: int
    best_combined_loss: float
    selected_heldout: dict[str, float]  # "loss" and metrics of the best-so-far model
    test_loss: float  # of the best-so-far model
    test: dict[str, float]  # metrics of the best-so-far model on the test part
    threshold: float  # the best-so-far model's decision threshold (its held-out and test)
    test_stats: PixelStats | None = None
    test_predictions: np.ndarray | None = None  # bool (N, E, E), set with test_stats
    folds: tuple[EpochReport, ...] = ()  # cross-validation: each fold's own report


@dataclass
class TrainingState:
    """Everything needed to resume a fit exactly where it stopped."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    # fp16's loss scale (GPUs without bf16); disabled, it has no state.
    scaler: torch.amp.GradScaler
    epoch: int = 0
    best_epoch: int = 0
    best_combined_loss: float = math.inf
    best_heldout: dict[str, float] = field(default_factory=dict)
    best_test_loss: float = math.nan
    best_test: dict[str, float] = field(default_factory=dict)
    best_threshold: float = 0.5  # the selected model's decision threshold
    # The selected model's test probabilities, kept only for a cross-validation ensemble.
    best_test_probabilities: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_combined_loss": self.best_combined_loss,
            "best_heldout": self.best_heldout,
            "best_test_loss": self.best_test_loss,
            "best_test": self.best_test,
            "best_threshold": self.best_threshold,
            "best_test_probabilities": self.best_test_probabilities,
        }

    def load(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler and saved["scheduler"]:
            self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # states written before it was saved have none
            self.scaler.load_state_dict(saved["scaler"])
        self.epoch = saved["epoch"]
        self.best_epoch = saved["best_epoch"]
        self.best_combined_loss = saved["best_combined_loss"]
        self.best_heldout = saved["best_heldout"]
        self.best_test_loss = saved["best_test_loss"]
        self.best_test = saved["best_test"]
        # States written before the threshold could be chosen used the config's.
        self.best_threshold = saved.get("best_threshold", self.best_threshold)
        probabilities = saved["best_test_probabilities"]
        # Kept on the CPU (as evaluate makes them), whatever device the state was loaded to.
        self.best_test_probabilities = probabilities.cpu() if probabilities is not None else None


@dataclass(frozen=True)
class Precision:
    """Autocast settings: bf16 where the GPU supports it, fp16 otherwise, none on CPU."""

    dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device, config: TrainConfig) -> Precision:
        if device.type != "cuda":
            return cls(None, False)
        dtype = None
        if config.mixed_precision:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(dtype, config.channels_last)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def layout(self, tensor: torch.Tensor) -> torch.Tensor:
        return (
            tensor.contiguous(memory_format=torch.channels_last) if self.channels_last else tensor
        )


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: Precision,
    scaler: torch.amp.GradScaler,
) -> float:
    """One pass over the training part; returns the mean batch loss. The losses are summed
    on the device and read once: `loss.item()` per step would wait for the GPU every step."""
    model.train()
    total, batches = torch.zeros((), device=device), 0
    for images, masks in loader:
        images = precision.layout(images.to(device, non_blocking=True))
        masks = masks.to(device, non_blocking=True)
        with precision.autocast(device):
            loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach().float()
        batches += 1
    mean = total.item() / max(batches, 1)
    if not math.isfinite(mean):
        raise NonFiniteLossError(f"training loss became {mean}; lower the learning rate")
    return mean


@dataclass(frozen=True)
class Evaluation:
    """A model on one part: the pooled soft Dice loss, the pooled pixel statistics and
    the predicted masks, all at the evaluation size."""

    loss: float
    stats: PixelStats
    predictions: np.ndarray  # bool (N, E, E), in the order of the indices
    probabilities: torch.Tensor | None = None  # float32 (N, E, E) on the CPU, when asked

    def metrics(self) -> dict[str, float]:
        return {LOSS: self.loss, **self.stats.compute()}


def combined_loss(train_loss: float, heldout_loss: float, train_weight: float) -> float:
    """The reference's epoch-selection rule: w x train + (1 - w) x held-out (lowest wins)."""
    return train_weight * train_loss + (1 - train_weight) * heldout_loss


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: np.ndarray,
    device: torch.device,
    precision: Precision,
    out_size: int,
) -> torch.Tensor:
    """Lesion probabilities (N, out_size, out_size) of uint8 images (N, S, S). A model
    that works at another size has its probabilities resized (bilinear) to `out_size`."""
    x = precision.layout(torch.from_numpy(normalise(images)).unsqueeze(1).to(device))
    with precision.autocast(device):
        logits = model(x)
    return resize_probabilities(torch.sigmoid(logits.float()), out_size)


def resize_probabilities(probs: torch.Tensor, out_size: int) -> torch.Tensor:
    """(N, 1, S, S) probabilities -> (N, out_size, out_size), bilinear when S differs."""
    if probs.shape[-1] != out_size:
        probs = F.interpolate(probs, size=(out_size, out_size), mode="bilinear").clamp_(0, 1)
    return probs.squeeze(1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    inputs: BusiArrays,
    truth: BusiArrays,
    indices: np.ndarray,
    device: torch.device,
    precision: Precision,
    threshold: float,
    batch_size: int = EVAL_BATCH_SIZE,
    keep_probabilities: bool = False,
) -> Evaluation:
    """The model on `indices`, without augmentation: images from `inputs` (the size the
    model works at), scored against the masks of `truth` (the evaluation size)."""
    model.eval()
    size = truth.image_size
    kept = torch.empty((len(indices), size, size)) if keep_probabilities else None
    # Statistics and predicted masks stay on the device; the masks come back once, at the end.
    stats = PixelStats(threshold=threshold)
    predictions = []
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size]
        probs = predict_probabilities(model, inputs.images[rows], device, precision, size)
        if kept is not None:
            kept[start : start + len(rows)] = probs.cpu()
        stats.update(probs, torch.from_numpy(truth.masks[rows]).to(device, non_blocking=True))
        predictions.append(probs > threshold)
    predicted = (
        torch.cat(predictions).cpu().numpy() if predictions else np.empty((0, size, size), bool)
    )
    return Evaluation(stats.dice_loss(), stats, predicted, kept)


def score_probabilities(
    probs: torch.Tensor, masks: np.ndarray, threshold: float, batch_size: int = EVAL_BATCH_SIZE
) -> Evaluation:
    """The same pooled evaluation for probabilities already made (an ensemble's mean)."""
    stats = PixelStats(threshold=threshold)
    for start in range(0, len(probs), batch_size):
        stats.update(probs[start : start + batch_size].numpy(), masks[start : start + batch_size])
    return Evaluation(stats.dice_loss(), stats, (probs > threshold).numpy(), probs)


class Trainer:
    """One model on one split, an epoch at a time: `fit` runs one, `fit_folds` runs K in
    lockstep. Selection by combined loss on the held-out part, evaluated against the
    masks of `truth` (the experiment's evaluation size; `data` itself by default).

    The held-out part is the test part when `select_on_test` (the reference protocol,
    optimistic) and the validation part otherwise. `choose_threshold` chooses the decision
    threshold on the validation part (see the module's docstring), never on the test part."""

    def __init__(
        self,
        config: TrainConfig,
        data: BusiArrays,
        split: Split,
        *,
        device: torch.device,
        truth: BusiArrays | None = None,
        select_on_test: bool = False,
        num_workers: int = 0,
        resume_from: dict[str, Any] | None = None,
        keep_test_probabilities: bool = False,
        encoder_state: EncoderState | None = None,
        compiled: bool = False,
        choose_threshold: bool = False,
    ) -> None:
        if choose_threshold and select_on_test:
            raise ValueError(
                "the threshold is chosen on the validation part; this protocol has none"
            )
        torch.manual_seed(config.seed)
        if device.type == "cuda":
            # Every batch has one shape: let cuDNN time its kernels once and keep the fastest.
            torch.backends.cudnn.benchmark = True
        self.config, self.data, self.split, self.device = config, data, split, device
        self.truth = data if truth is None else truth
        self.select_on_test = select_on_test
        self.keep_test_probabilities = keep_test_probabilities
        self.choose_threshold = choose_threshold
        self.heldout = split.test if select_on_test else split.validation
        if len(self.heldout) == 0:
            raise ValueError("the split has no validation part; make it with_validation=True")
        model = build_model(config, encoder_state).to(device)
        self.precision = Precision.for_device(device, config)
        if self.precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, config)
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision.dtype == torch.float16)
        self.state = TrainingState(model, optimizer, build_scheduler(optimizer, config), scaler)
        self.state.best_threshold = config.threshold
        # torch.compile wraps the forward only: the state, and every file written from it,
        # keeps the plain module's parameter names.
        self.forward_model = torch.compile(model) if compiled else model
        if resume_from is not None:
            self.state.load(resume_from)
            log.info("resuming after epoch %d", self.state.epoch)
        self.loss_fn = build_loss(config.loss)
        self.loader = make_train_loader(data, split, config, num_workers)

    @property
    def done(self) -> bool:
        return self.state.epoch >= self.config.epochs

    def evaluate_on(
        self, indices: np.ndarray, threshold: float, keep_probabilities: bool = False
    ) -> Evaluation:
        return evaluate(
            self.forward_model,
            self.data,
            self.truth,
            indices,
            self.device,
            self.precision,
            threshold,
            keep_probabilities=keep_probabilities,
        )

    def evaluate_heldout(self) -> tuple[Evaluation, float]:
        """The held-out part at the config's threshold, or at the one chosen on it."""
        if not self.choose_threshold:
            return self.evaluate_on(self.heldout, self.config.threshold), self.config.threshold
        fixed = self.evaluate_on(self.heldout, self.config.threshold, keep_probabilities=True)
        masks = self.truth.masks[self.heldout]
        threshold = best_threshold(fixed.probabilities, masks)
        return score_probabilities(fixed.probabilities, masks, threshold), threshold

    def step(self) -> EpochReport:
        """Train one epoch, evaluate, update the selection."""
        config, state, loader = self.config, self.state, self.loader
        epoch = state.epoch + 1
        # Re-seeding per epoch makes a resumed run draw the same batches and augmentations.
        loader.sampler.generator.manual_seed(config.seed * 1000 + epoch)
        started = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(
            self.forward_model, loader, self.loss_fn, state.optimizer, self.device, self.precision,
            state.scaler,
        )  # fmt: skip
        train_seconds = time.perf_counter() - started
        if state.scheduler is not None:
            state.scheduler.step()
        on_heldout, threshold = self.evaluate_heldout()
        combined = combined_loss(train_loss, on_heldout.loss, config.selection_train_weight)
        improved = combined < state.best_combined_loss
        on_test = None
        if improved:
            state.best_epoch, state.best_combined_loss = epoch, combined
            state.best_heldout = on_heldout.metrics()
            state.best_threshold = threshold
            on_test = (
                on_heldout
                if self.select_on_test
                else self.evaluate_on(self.split.test, threshold, self.keep_test_probabilities)
            )
            state.best_test_loss, state.best_test = on_test.loss, on_test.stats.compute()
            state.best_test_probabilities = on_test.probabilities
        state.epoch = epoch
        log.info(
            "epoch %d: train %.4f held-out %.4f combined %.4f%s",
            epoch,
            train_loss,
            on_heldout.loss,
            combined,
            " *" if improved else "",
        )
        return EpochReport(
            epoch=epoch,
            train_loss=train_loss,
            heldout_loss=on_heldout.loss,
            combined_loss=combined,
            heldout=on_heldout.stats.compute(),
            heldout_predictions=on_heldout.predictions,
            lr=lr,
            seconds=time.perf_counter() - started,
            train_seconds=train_seconds,
            images_per_second=len(self.split.train) / train_seconds,
            peak_gpu_bytes=peak_gpu_bytes(self.device),
            improved=improved,
            best_epoch=state.best_epoch,
            best_combined_loss=state.best_combined_loss,
            selected_heldout=dict(state.best_heldout),
            test_loss=state.best_test_loss,
            test=dict(state.best_test),
            threshold=state.best_threshold,
            test_stats=on_test.stats if on_test else None,
            test_predictions=on_test.predictions if on_test else None,
        )


def fit(
    config: TrainConfig,
    data: BusiArrays,
    split: Split,
    *,
    device: torch.device,
    truth: BusiArrays | None = None,
    select_on_test: bool = False,
    num_workers: int = 0,
    resume_from: dict[str, Any] | None = None,
    on_epoch_end: Callable[[EpochReport, TrainingState], None] | None = None,
    encoder_state: EncoderState | None = None,
    compiled: bool = False,
    choose_threshold: bool = False,
) -> TrainingState:
    """Train `config.epochs` epochs on `data` (at `config.image_size`); see `Trainer`.
    `on_epoch_end` receives each epoch's report and the state to checkpoint; it is where
    Ray reporting happens."""
    trainer = Trainer(
        config,
        data,
        split,
        device=device,
        truth=truth,
        select_on_test=select_on_test,
        num_workers=num_workers,
        resume_from=resume_from,
        encoder_state=encoder_state,
        compiled=compiled,
        choose_threshold=choose_threshold,
    )
    while not trainer.done:
        report = trainer.step()
        if on_epoch_end is not None:
            on_epoch_end(report, trainer.state)
    return trainer.state


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def fold_report(reports: Sequence[EpochReport], trainers: Sequence[Trainer]) -> EpochReport:
    """One epoch of K folds as one report: held-out values are the folds' means (each on
    its own validation fold); test values are those of the ensemble of the folds' selected
    models (probabilities averaged, at the mean of their thresholds), set in full when any
    fold's selection improved."""
    first = trainers[0]
    test_indices = first.split.test
    probabilities = torch.stack([t.state.best_test_probabilities for t in trainers]).mean(0)
    threshold = _mean([t.state.best_threshold for t in trainers])
    ensemble = score_probabilities(probabilities, first.truth.masks[test_indices], threshold)
    improved = any(r.improved for r in reports)
    keys_of = reports[0].heldout.keys()
    return EpochReport(
        epoch=reports[0].epoch,
        train_loss=_mean([r.train_loss for r in reports]),
        heldout_loss=_mean([r.heldout_loss for r in reports]),
        combined_loss=_mean([r.combined_loss for r in reports]),
        heldout={k: _mean([r.heldout[k] for r in reports]) for k in keys_of},
        heldout_predictions=reports[0].heldout_predictions,
        lr=reports[0].lr,
        seconds=sum(r.seconds for r in reports),
        train_seconds=sum(r.train_seconds for r in reports),
        images_per_second=_mean([r.images_per_second for r in reports]),
        peak_gpu_bytes=max(r.peak_gpu_bytes for r in reports),
        improved=improved,
        best_epoch=max(r.best_epoch for r in reports),
        best_combined_loss=_mean([r.best_combined_loss for r in reports]),
        selected_heldout={
            k: _mean([r.selected_heldout[k] for r in reports]) for k in reports[0].selected_heldout
        },
        test_loss=ensemble.loss,
        test=ensemble.stats.compute(),
        threshold=threshold,
        test_stats=ensemble.stats if improved else None,
        test_predictions=ensemble.predictions if improved else None,
        folds=tuple(reports),
    )


def fit_folds(
    config: TrainConfig,
    data: BusiArrays,
    folds: Sequence[Split],
    *,
    device: torch.device,
    truth: BusiArrays | None = None,
    num_workers: int = 0,
    resume_from: Sequence[dict[str, Any]] | None = None,
    on_epoch_end: Callable[[EpochReport, list[TrainingState]], None] | None = None,
    encoder_state: EncoderState | None = None,
    compiled: bool = False,
    choose_threshold: bool = False,
) -> list[TrainingState]:
    """K-fold cross-validation in lockstep: every epoch trains each fold's model one epoch,
    so every report (and every early-stopping decision on it) rests on all K folds."""
    trainers = [
        Trainer(
            config,
            data,
            split,
            device=device,
            truth=truth,
            num_workers=num_workers,
            resume_from=resume_from[i] if resume_from else None,
            keep_test_probabilities=True,
            encoder_state=encoder_state,
            compiled=compiled,
            choose_threshold=choose_threshold,
        )
        for i, split in enumerate(folds)
    ]
    while not trainers[0].done:
        report = fold_report([t.step() for t in trainers], trainers)
        if on_epoch_end is not None:
            on_epoch_end(report, [t.state for t in trainers])
    return [t.state for t in trainers]


def peak_gpu_bytes(device: torch.device) -> float:
    """The most GPU memory the process has allocated so far; NaN on a CPU."""
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else math.nan


def pick_device() -> torch.device:
    """CUDA when it is really there (Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
