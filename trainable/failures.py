"""Failures a retry would only repeat: the trial records them (failure.json), and a retry
reads the record and ends at once instead of training the same config again."""

from __future__ import annotations

import torch

from results.layout import FAILURE_FILE
from results.records import Failure
from trainable.checkpointing import TrialStorage
from trainable.engine import NonFiniteLossError


class DeterministicFailure(RuntimeError):
    """A failure that a retry would only repeat (see FAILURE_FILE)."""


# Failures that training the same config again would repeat: Tune's retries are for lost
# workers and nodes, and Tune has no per-error retry policy, so the trial records them and
# a retry ends at once instead of training again.
DETERMINISTIC = (NonFiniteLossError, torch.OutOfMemoryError, ValueError)


def refuse_known_failure(storage: TrialStorage) -> None:
    recorded = storage.read_text(FAILURE_FILE)
    if recorded is not None:
        reason = Failure.from_text(recorded, storage.path(FAILURE_FILE)).reason
        raise DeterministicFailure(f"not retried, it would fail again: {reason}")


def record_failure(storage: TrialStorage, error: BaseException) -> None:
    storage.write_text(FAILURE_FILE, Failure(f"{type(error).__name__}: {error}").to_text())
