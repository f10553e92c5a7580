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


@pytest.fixture(autouse=True)
def root_logging_restored():
    """A script's main() run in-process (a benchmark's) may configure the root logger with
    handlers bound to this test's captured streams, which close after it: later tests
    would log into closed files. Each test leaves the root logger as it found it."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


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
    from results.config import TrainConfig

    return TrainConfig.reference().replace(
        encoder="resnet18", encoder_weights="none", image_size=64, epochs=2, batch_size=8
    )


def _redraw_test_masks(root: Path, test_names: set[str]) -> int:
    """Every mask file of a test image becomes a square in its top-left corner."""
    import numpy as np
    from PIL import Image

    from trainable.dataset import discover

    changed = 0
    for sample in discover(root):
        if sample.name not in test_names:
            continue
        for path in sample.mask_paths:
            with Image.open(path) as mask:
                width, height = mask.size
            square = np.zeros((height, width), dtype=np.uint8)
            square[: height // 4, : width // 4] = 255
            Image.fromarray(square).save(path)
            changed += 1
    return changed


def _small_sweep(data: Path, storage: Path, name: str, base) -> Path:
    import ray

    from results.settings import RunSettings, Scheduler
    from tuner import sweep

    settings = RunSettings(
        data=data,
        base=base,
        trials=4,
        max_concurrent=1,  # results arrive in one order, so TPE and ASHA see one history
        scheduler=Scheduler.ASHA,
        storage=str(storage),
        name=name,
        cache_dir=storage / "cache",
    )
    try:
        sweep.run(settings)
    finally:
        ray.shutdown()
    return Path(settings.experiment_dir)


@pytest.fixture(scope="session")
def twin_base():
    """4 trials of 3 epochs: small enough for CI, long enough for ASHA to stop a trial."""
    from results.config import TrainConfig

    return TrainConfig.reference().replace(
        encoder="resnet18", encoder_weights="none", image_size=64, epochs=3, lr=1e-3
    )


@pytest.fixture(scope="session")
def twin_sweeps(tmp_path_factory, twin_base):
    """Two sweeps on synthetic datasets that differ only in the test part's masks:
    (original, altered) experiment folders; the datasets are beside their parent."""
    import shutil

    from results.settings import SplitPolicy
    from trainable.preprocess import load_busi
    from trainable.splits import make_split
    from trainable.synth import write_synthetic_busi

    root = tmp_path_factory.mktemp("twins")
    original = root / "original"
    write_synthetic_busi(original)
    data = load_busi(original, twin_base.image_size, root / "cache", progress=False)
    split = make_split(data, SplitPolicy.GROUPED, seed=0, with_validation=True)
    altered = root / "altered"
    shutil.copytree(original, altered)
    assert _redraw_test_masks(altered, {data.names[i] for i in split.test}) >= len(split.test)
    runs = root / "runs"
    return (
        _small_sweep(original, runs, "original", twin_base),
        _small_sweep(altered, runs, "altered", twin_base),
    )


@pytest.fixture
def short_dir():
    """Folders at short paths for Ray's temporary files (its socket paths must fit in 107
    bytes), removed afterwards."""
    import shutil
    import tempfile

    made = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp")))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def s3_storage():
    """An S3 API on localhost (moto's server, in its own process so that it never competes
    with a driver in this one for the GIL) with one empty bucket; yields its URI. The
    standard AWS variables point pyarrow, Ray and every process started from here at it."""
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    variables = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "moto did not start"
                time.sleep(0.1)
        boto3.client("s3").create_bucket(Bucket="busi-tune")
        yield "s3://busi-tune/runs"
    finally:
        server.terminate()
        server.wait(timeout=30)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
