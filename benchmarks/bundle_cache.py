"""Write the project's preprocessed cache of a BUSI folder as one compressed file, for the
GPU bundle (`benchmarks/gpu_bundle.sh`): the same arrays `trainable.preprocess` caches,
stored with np.savez_compressed, which its reader opens as it is.

    python -m benchmarks.bundle_cache --out .gpu_bundle/busi-256.npz
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA
from trainable.preprocess import load_busi, read_cache


def write_compressed_cache(data: Path, image_size: int, out: Path) -> Path:
    """Preprocess `data` into a fresh cache, then store that cache file compressed."""
    if out.suffix != ".npz":
        raise ValueError(f"{out}: the cache file must end in .npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        arrays = load_busi(data, image_size, Path(directory), progress=False)
        (cache,) = Path(directory).glob("*.npz")
        with np.load(cache) as stored:
            np.savez_compressed(out, **stored)
    copy = read_cache(out)
    if copy.names != arrays.names or not np.array_equal(copy.images, arrays.images):
        raise RuntimeError(f"{out}: does not read back as the cache it was made from")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bundle_cache", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="BUSI folder (default: %(default)s)"
    )
    parser.add_argument("--image-size", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".gpu_bundle/busi-256.npz"),
        help="(default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    out = write_compressed_cache(args.data, args.image_size, args.out)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return out


if __name__ == "__main__":
    main()
