"""Shared fixtures: the real BUSI folder (from $BUSI_DATA, skipped when absent), a small
synthetic BUSI folder, and CPU-sized configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def busi_root() -> Path:
    """The real BUSI dataset, from the BUSI_DATA environment variable."""
    value = os.environ.get("BUSI_DATA")
    if not value:
        pytest.skip("real BUSI data: set BUSI_DATA=path/to/Dataset_BUSI_with_GT to run")
    root = Path(value)
    if not (root / "benign").is_dir():
        pytest.skip(f"real BUSI data: BUSI_DATA={value} has no benign/ folder")
    return root
