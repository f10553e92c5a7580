"""The training engine: `train_one_epoch`, `evaluate` and `fit`, free of Ray.

Selection follows the reference: after each epoch, combined = 0.2 x train loss + 0.8 x
held-out loss, and the epoch with the lowest combined loss is the selected model. Under
the locked-test protocol the held-out part is the validation part, and the test part is
evaluated only when the selection improves, so that the selected model's test metrics
are known without the test part ever influencing a choice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainable.augment import build_augmentation, normalise
from trainable.config import LrSchedule, Optimizer, TrainConfig
from trainable.metrics import PixelStats
from trainable.model import build_loss, build_model
from trainable.preprocess import BusiArrays
from trainable.splits import Split

log = logging.getLogger(__name__)


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
    heldout_predictions: np.ndarray  # bool (N, S, S), in the order of the held-out part
    lr: float
    seconds: float
    images_per_second: float
    improved: bool
    best_epoch: int
    best_combined_loss: float
    test_loss: float  # of the best-so-far model
    test: dict[str, float]  # metrics of the best-so-far model on the test part
    test_stats: PixelStats | None = None
    test_predictions: np.ndarray | None = None  # bool (N, S, S), set with test_stats


@dataclass
class TrainingState:
    """Everything needed to resume a fit exactly where it stopped."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    epoch: int = 0
    best_epoch: int = 0
    best_combined_loss: float = math.inf
    best_test_loss: float = math.nan
    best_test: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_combined_loss": self.best_combined_loss,
            "best_test_loss": self.best_test_loss,
            "best_test": self.best_test,
        }

    def load(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler and saved["scheduler"]:
            self.scheduler.load_state_dict(saved["scheduler"])
        self.epoch = saved["epoch"]
        self.best_epoch = saved["best_epoch"]
        self.best_combined_loss = saved["best_combined_loss"]
        self.best_test_loss = saved["best_test_loss"]
        self.best_test = saved["best_test"]


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


class SegmentationSet(torch.utils.data.Dataset):
    """Training items from the cached arrays: augmented, normalised, (1, S, S) float32."""

    def __init__(self, data: BusiArrays, indices: np.ndarray, config: TrainConfig) -> None:
        self.data, self.indices = data, indices
        self.augmentation = build_augmentation(config)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, batch: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # Batched fetch: without augmentation one fancy-indexing copy serves the batch.
        rows = self.indices[batch]
        images, masks = self.data.images[rows], self.data.masks[rows]
        if self.augmentation is not None:
            pairs = [
                self.augmentation(image=im, mask=m) for im, m in zip(images, masks, strict=True)
            ]
            images = np.stack([p["image"] for p in pairs])
            masks = np.stack([p["mask"] for p in pairs])
        images = torch.from_numpy(normalise(images)).unsqueeze(1)
        masks = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
        return list(zip(images, masks, strict=True))


def _seed_worker_augmentation(worker_id: int) -> None:
    # Each worker gets its own augmentation stream, derived from the loader's seed.
    info = torch.utils.data.get_worker_info()
    if info.dataset.augmentation is not None:
        info.dataset.augmentation.set_random_seed(info.seed % 2**32)


def make_train_loader(
    data: BusiArrays, split: Split, config: TrainConfig, num_workers: int
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        SegmentationSet(data, split.train, config),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=num_workers,
        worker_init_fn=_seed_worker_augmentation if num_workers else None,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator(),
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
    """One pass over the training part; returns the mean batch loss."""
    model.train()
    total, batches = 0.0, 0
    for images, masks in loader:
        images = precision.layout(images.to(device, non_blocking=True))
        masks = masks.to(device, non_blocking=True)
        with precision.autocast(device):
            loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item()
        batches += 1
    mean = total / max(batches, 1)
    if not math.isfinite(mean):
        raise NonFiniteLossError(f"training loss became {mean}; lower the learning rate")
    return mean


def _eval_batches(
    data: BusiArrays, indices: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size]
        yield data.images[rows], data.masks[rows]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: BusiArrays,
    indices: np.ndarray,
    loss_fn: nn.Module,
    device: torch.device,
    precision: Precision,
    config: TrainConfig,
) -> tuple[float, PixelStats, np.ndarray]:
    """Mean batch loss, pooled pixel statistics and the predicted masks (bool) over
    `indices`, without augmentation."""
    model.eval()
    stats = PixelStats(threshold=config.threshold)
    predictions = np.empty((len(indices), data.image_size, data.image_size), dtype=bool)
    total, batches = 0.0, 0
    for images, masks in _eval_batches(data, indices, config.batch_size):
        x = precision.layout(torch.from_numpy(normalise(images)).unsqueeze(1).to(device))
        y = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1).to(device)
        with precision.autocast(device):
            logits = model(x)
        total += loss_fn(logits.float(), y).item()
        probs = torch.sigmoid(logits.float()).squeeze(1).cpu().numpy()
        stats.update(probs, masks)
        predictions[batches * config.batch_size : (batches + 1) * config.batch_size] = (
            probs > config.threshold
        )
        batches += 1
    return total / max(batches, 1), stats, predictions


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optimizer is Optimizer.ADAMW else torch.optim.Adam
    return kind(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.lr_schedule is LrSchedule.COSINE:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def fit(
    config: TrainConfig,
    data: BusiArrays,
    split: Split,
    *,
    device: torch.device,
    select_on_test: bool = False,
    num_workers: int = 0,
    resume_from: dict[str, Any] | None = None,
    on_epoch_end: Callable[[EpochReport, TrainingState], None] | None = None,
) -> TrainingState:
    """Train `config.epochs` epochs, selecting by combined loss on the held-out part.

    The held-out part is the test part when `select_on_test` (the reference protocol,
    optimistic) and the validation part otherwise. `on_epoch_end` receives each epoch's
    report and the state to checkpoint; it is where Ray reporting happens.
    """
    torch.manual_seed(config.seed)
    heldout = split.test if select_on_test else split.validation
    if len(heldout) == 0:
        raise ValueError("the split has no validation part; make it with_validation=True")
    model = build_model(config).to(device)
    precision = Precision.for_device(device, config)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    state = TrainingState(model, optimizer, build_scheduler(optimizer, config))
    if resume_from is not None:
        state.load(resume_from)
        log.info("resuming after epoch %d", state.epoch)
    loss_fn = build_loss(config.loss)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16)
    loader = make_train_loader(data, split, config, num_workers)
    w = config.selection_train_weight

    while state.epoch < config.epochs:
        epoch = state.epoch + 1
        # Re-seeding per epoch makes a resumed run draw the same batches and augmentations.
        loader.generator.manual_seed(config.seed * 1000 + epoch)
        if loader.dataset.augmentation is not None:
            loader.dataset.augmentation.set_random_seed(config.seed * 1000 + epoch)
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(model, loader, loss_fn, optimizer, device, precision, scaler)
        train_seconds = time.perf_counter() - started
        if state.scheduler is not None:
            state.scheduler.step()
        heldout_loss, heldout_stats, heldout_predictions = evaluate(
            model, data, heldout, loss_fn, device, precision, config
        )
        combined = w * train_loss + (1 - w) * heldout_loss
        improved = combined < state.best_combined_loss
        test_stats = test_predictions = None
        if improved:
            state.best_epoch, state.best_combined_loss = epoch, combined
            if select_on_test:
                test_stats, test_predictions = heldout_stats, heldout_predictions
                state.best_test_loss = heldout_loss
            else:
                state.best_test_loss, test_stats, test_predictions = evaluate(
                    model, data, split.test, loss_fn, device, precision, config
                )
            state.best_test = test_stats.compute()
        state.epoch = epoch
        report = EpochReport(
            epoch=epoch,
            train_loss=train_loss,
            heldout_loss=heldout_loss,
            combined_loss=combined,
            heldout=heldout_stats.compute(),
            heldout_predictions=heldout_predictions,
            lr=lr,
            seconds=time.perf_counter() - started,
            images_per_second=len(split.train) / train_seconds,
            improved=improved,
            best_epoch=state.best_epoch,
            best_combined_loss=state.best_combined_loss,
            test_loss=state.best_test_loss,
            test=dict(state.best_test),
            test_stats=test_stats,
            test_predictions=test_predictions,
        )
        log.info(
            "epoch %d: train %.4f held-out %.4f combined %.4f%s",
            epoch,
            train_loss,
            heldout_loss,
            combined,
            " *" if improved else "",
        )
        if on_epoch_end is not None:
            on_epoch_end(report, state)
    return state


def pick_device() -> torch.device:
    """CUDA when it is really there (Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
