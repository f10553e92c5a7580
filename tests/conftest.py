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
    root = Path(value).resolve()  # subprocess tests run in other folders
    if not (root / "benign").is_dir():
        pytest.skip(f"real BUSI data: BUSI_DATA={value} has no benign/ folder")
    return root


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic BUSI folder (24 benign, 12 malignant, 8 normal)."""
    from trainable.synth import write_synthetic_busi

    root = tmp_path_factory.mktemp("synth") / "busi"
    write_synthetic_busi(root)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def synth_arrays(synth_root, cache_dir):
    from trainable.preprocess import load_busi

    return load_busi(synth_root, 64, cache_dir, progress=False)


@pytest.fixture
def tiny_config():
    """A CPU-sized config: small encoder, no pretrained weights, 64 px, 2 epochs."""
    from trainable.config import TrainConfig

    return TrainConfig.reference().replace(
        encoder="resnet18", encoder_weights="none", image_size=64, epochs=2, batch_size=8
    )
