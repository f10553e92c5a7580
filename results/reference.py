"""The reference study's published numbers, as data (results/reference_metrics.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REFERENCE_FILE = Path(__file__).with_name("reference_metrics.json")


@dataclass(frozen=True)
class PublishedReference:
    source: str
    protocol: dict[str, str]
    counts: dict[str, int]  # images of the data set, and of its training and test parts
    best_epoch: int
    combined_loss: float
    test: dict[str, float]  # "loss" and the metric keys of trainable.metrics
    inconsistencies: tuple[str, ...]


def load_reference(path: Path = REFERENCE_FILE) -> PublishedReference:
    raw = json.loads(path.read_text())
    return PublishedReference(
        source=raw["source"],
        protocol=raw["protocol"],
        counts=raw["counts"],
        best_epoch=raw["best_epoch"],
        combined_loss=raw["combined_loss"],
        test=raw["test"],
        inconsistencies=tuple(raw["inconsistencies"]),
    )
