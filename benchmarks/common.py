"""What the benchmarks share: where the data is and how to read it, a plain-text table,
JSON output and a description of the machine. Imports nothing from Ray, so the GPU
scripts can use it on a machine without Ray."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from results.layout import PLACEMENT_FILE
from results.records import Placement
from trainable.preprocess import BusiArrays, load_busi, read_cache, resized

# Relative to the repository root, where the benchmarks run.
DEFAULT_DATA = Path(os.environ.get("BUSI_DATA", "../shared/busi/Dataset_BUSI_with_GT"))
# `ray.init()` without an address joins the local cluster last started on the machine
# (/tmp/ray/ray_current_cluster), e.g. another user's; a benchmark must start its own.
OWN_RAY = {"RAY_ADDRESS": "local"}


def add_data_flags(parser: argparse.ArgumentParser, cache_file: bool = False) -> None:
    """--data and --cache-dir; with `cache_file`, also --cache (a preprocessed .npz read
    directly, as the GPU scripts do where the PNGs are not)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="BUSI folder (default: %(default)s)"
    )
    if cache_file:
        group.add_argument(
            "--cache",
            type=Path,
            default=None,
            help="read this preprocessed cache file (.npz as trainable.preprocess writes "
            "it, compressed or not) instead of --data (default: none)",
        )
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="preprocessed-data cache for --data (default: $BUSI_TUNE_CACHE or ~/.cache/busi-tune)",
    )


def report(results: dict[str, Any], text: str, json_path: Path | None) -> dict[str, Any]:
    """Print a benchmark's table and, when asked, save its results as JSON."""
    print(text)
    if json_path:
        write_json(json_path, results)
    return results


def load_arrays(args: argparse.Namespace, image_size: int) -> BusiArrays:
    """The dataset at `image_size`: from `--cache` when given (shrunk if it was cached
    larger), else from `--data` through the project's cache."""
    if getattr(args, "cache", None) is not None:
        return resized(read_cache(args.cache), image_size)
    return load_busi(args.data, image_size, args.cache_dir, progress=False)


def data_source(args: argparse.Namespace) -> str:
    cache = getattr(args, "cache", None)
    return str(cache if cache is not None else args.data)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The first column left-aligned, the rest right-aligned; floats to 3 significant
    digits, whole numbers from 100 up."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        first = row[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def first_start(trial: Path) -> Placement:
    """The first line of a trial's placement.jsonl: its first start."""
    path = trial / PLACEMENT_FILE
    return Placement.from_line(path.read_text().splitlines()[0], path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write then rename, so a run stopped mid-write leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    partial.replace(path)


def machine() -> dict[str, Any]:
    """Date, host, CPU count, Python and torch versions, and the GPU where there is one."""
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_bytes": props.total_memory}
    return info
