"""The optimiser and the learning-rate schedule of a config: Adam or AdamW (fused on a
GPU), an optional lower rate for the encoder, a linear warm-up and a cosine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from results.config import LrSchedule, Optimizer, TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """One parameter group at lr; with an encoder learning-rate scale below 1, the
    encoder's parameters in a second group at lr x scale (the first group, the one logged,
    stays the decoder's and head's)."""
    kind = torch.optim.AdamW if config.optimizer is Optimizer.ADAMW else torch.optim.Adam
    parameters: Any = model.parameters()
    if config.encoder_lr_scale != 1.0:
        encoder = {id(p) for p in model.encoder.parameters()}
        parameters = [
            {"params": [p for p in model.parameters() if id(p) not in encoder]},
            {
                "params": list(model.encoder.parameters()),
                "lr": config.lr * config.encoder_lr_scale,
            },
        ]
    # On a GPU, one fused kernel updates every parameter (launch-bound steps at batch 8).
    fused = next(model.parameters()).is_cuda or None
    return kind(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch: linear warm-up over `warmup_epochs`, then constant or a
    cosine over the remaining epochs; None for the reference's constant rate."""
    warmup, epochs = config.warmup_epochs, config.epochs
    cosine = config.lr_schedule is LrSchedule.COSINE
    if not warmup and not cosine:
        return None
    if not warmup:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LrFactor(warmup, epochs, cosine))


@dataclass(frozen=True)
class LrFactor:
    """The learning rate's factor at epoch `e` (0-based): (e + 1) / (warmup + 1) while it
    warms up, then 1, or a cosine from 1 to 0 over the epochs after the warm-up. A class,
    not a closure: the scheduler's state is saved with the training state."""

    warmup: int
    epochs: int
    cosine: bool

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        if not self.cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (epoch - self.warmup) / (self.epochs - self.warmup)))
