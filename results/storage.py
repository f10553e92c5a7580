"""Where an experiment lives: a local folder or a URI that pyarrow's filesystems open
(`s3://bucket/prefix`, `gs://…`), as Ray Tune's own storage does. Credentials and the
endpoint come from the standard environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, …).

Readers work on a local copy of a remote experiment (`mirror`): its small files (settings,
results, metrics, the study), with weights fetched on demand (`fetch`). No Ray, no torch.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs

from results.errors import UserError
from results.layout import STATE_FOLDER, TUNE_CHECKPOINT_PREFIX

log = logging.getLogger(__name__)
# Never mirrored: resume states (gigabytes), Tune's checkpoints, weights (fetched when a
# command needs them) and TensorBoard's event files.
NOT_MIRRORED = (
    STATE_FOLDER,
    f"{TUNE_CHECKPOINT_PREFIX}*",
    "*.pt",
    "events.out.tfevents.*",
    "*.partial",
)
FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: a full disk


def is_remote(location: str | Path) -> bool:
    return "://" in str(location)


def shown(location: str | Path) -> str:
    """A local path as a person reads it, relative to the working folder when it lies under
    it (`runs/sweep-…`); any other path, and a bucket's URI, as it is."""
    if is_remote(location):
        return str(location)
    path = Path(location)
    try:
        return str(path.relative_to(Path.cwd())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def join(location: str | Path, *names: str) -> str:
    return "/".join([str(location).rstrip("/"), *names])


def parent(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[0]


def cache_root() -> Path:
    """busi-tune's local cache: $BUSI_TUNE_CACHE, else ~/.cache/busi-tune."""
    return Path(os.environ.get("BUSI_TUNE_CACHE", Path.home() / ".cache" / "busi-tune"))


def local_copy_dir(location: str, kind: str) -> Path:
    """A stable local folder for a remote location's copies (one per `kind`)."""
    digest = hashlib.sha1(location.rstrip("/").encode()).hexdigest()[:16]
    return cache_root() / kind / digest


@contextmanager
def _errors(location: str) -> Iterator[None]:
    """A remote storage's error (no credentials, no bucket, no network) as one line; a
    local folder's errors (a full disk, permissions) are left to the caller."""
    try:
        yield
    except (OSError, ValueError, pa.ArrowException) as error:
        if not is_remote(location) or isinstance(
            error, FileNotFoundError | IsADirectoryError | FileExistsError
        ):
            raise
        text = str(error).strip()
        message = text.splitlines()[0] if text else type(error).__name__
        raise UserError(
            f"{location}: the storage cannot be reached ({message}); check the URI and the "
            "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for "
            "an S3-compatible server)"
        ) from None


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    location = str(location)
    if not is_remote(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    with _errors(location):
        return pafs.FileSystem.from_uri(location)


def _info(location: str | Path) -> pafs.FileInfo:
    fs, path = resolve(location)
    with _errors(str(location)):
        return fs.get_file_info(path)


def is_file(location: str | Path) -> bool:
    return _info(location).type == pafs.FileType.File


def exists(location: str | Path) -> bool:
    """A file, or a folder (on an object store: any object under that prefix)."""
    return _info(location).type != pafs.FileType.NotFound


def read_whole(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole file in one read: pyarrow's input *stream* reads an object store in small
    pieces (170 MB from moto's S3: 64 s against 0.3 s this way)."""
    with fs.open_input_file(path) as file:
        return file.read()


def write_whole(fs: pafs.FileSystem, path: str, write: Callable[[BinaryIO], object]) -> None:
    """`write(stream)` into `path`, seen whole or not at all. An object store shows an
    upload only once complete (a rename there would be a second full copy, and S3 cannot
    copy an object over 5 GB in one request; its "folders" need no creating). Locally:
    write-then-rename, nothing left behind by a failed write, and a full disk said as
    such (torch's writer reports it as "unexpected pos")."""
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as stream:
            write(stream)
        return
    fs.create_dir(parent(path))
    partial = f"{path}.partial"
    try:
        with fs.open_output_stream(partial) as stream:
            write(stream)
        fs.move(partial, path)
    except Exception as error:
        if shutil.disk_usage(Path(partial).parent).free < FULL_DISK_BYTES:
            raise OSError(errno.ENOSPC, f"No space left on device writing {path}") from error
        raise
    finally:
        if fs.get_file_info(partial).type != pafs.FileType.NotFound:
            fs.delete_file(partial)


def read_bytes(location: str | Path) -> bytes | None:
    """The file's bytes, None when there is no such file."""
    fs, path = resolve(location)
    try:
        with _errors(str(location)):
            return read_whole(fs, path)
    except (FileNotFoundError, IsADirectoryError):
        return None


def write_bytes(location: str | Path, data: bytes) -> None:
    fs, path = resolve(location)
    with _errors(str(location)):
        write_whole(fs, path, lambda stream: stream.write(data))


def delete_dir(location: str | Path) -> None:
    fs, path = resolve(location)
    with _errors(str(location)):
        fs.delete_dir(path)


def size(location: str | Path) -> int | None:
    """The file's size in bytes, None when there is no such file."""
    info = _info(location)
    return info.size if info.type == pafs.FileType.File else None


def list_files(location: str | Path, recursive: bool = True) -> dict[str, pafs.FileInfo]:
    """The files below the folder (or in it), by their path relative to it; {} when there
    is none."""
    fs, root = resolve(location)
    selector = pafs.FileSelector(root, recursive=recursive, allow_not_found=True)
    with _errors(str(location)):
        infos = fs.get_file_info(selector)
    prefix = root.rstrip("/") + "/"
    return {
        info.path.removeprefix(prefix): info for info in infos if info.type == pafs.FileType.File
    }


def inside(relative: str) -> bool:
    """Whether a relative path stays inside its folder: an object store's keys may hold
    `..` (a crafted bucket's), and a copy must never be written outside the mirror."""
    return all(part not in ("", ".", "..") for part in relative.split("/"))


def mirrored(relative: str) -> bool:
    parts = relative.split("/")
    return not any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in NOT_MIRRORED)


def download(location: str | Path, target: Path, info: pafs.FileInfo | None = None) -> Path:
    """One remote file to `target` (written whole, then renamed), stamped with the remote
    modification time when `info` gives it, so that `stale` needs no agreeing clocks."""
    data = read_bytes(location)
    if data is None:
        raise UserError(f"{location}: no such file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    if info is not None and info.mtime_ns is not None:
        os.utime(partial, ns=(info.mtime_ns, info.mtime_ns))
    partial.replace(target)
    return target


def stale(info: pafs.FileInfo, target: Path) -> bool:
    """Whether the local copy differs from the remote file: missing, another size, or
    another modification time (the copy carries the remote one)."""
    if not target.is_file():
        return True
    copied = target.stat()
    changed = info.mtime_ns is not None and info.mtime_ns != copied.st_mtime_ns
    return copied.st_size != info.size or changed


def mirror(location: str, required: str) -> Path:
    """A local copy of a remote experiment's small files (see NOT_MIRRORED), brought up to
    date: changed files read again, files and folders gone remotely removed (weights
    fetched earlier included). `required`, a file every experiment has, guards against
    copying a whole storage given by mistake. Returns the copy's folder, named like the
    experiment."""
    location = location.rstrip("/")
    if not is_file(join(location, required)):
        raise UserError(
            f"{location}: not an experiment (no {required}); give the experiment's URI, "
            "<storage>/<name>"
        )
    local = local_copy_dir(location, "experiments") / location.rsplit("/", 1)[-1]
    everything = list_files(location)
    for relative, info in everything.items():
        if not inside(relative):
            log.warning("%s: leads out of the experiment; not copied", join(location, relative))
        elif mirrored(relative) and stale(info, local / relative):
            download(join(location, relative), local / relative, info)
    for target in sorted(local.rglob("*"), reverse=True):  # files before their folders
        relative = target.relative_to(local).as_posix()
        if target.is_file() and relative not in everything and not relative.endswith(".partial"):
            target.unlink()
        elif target.is_dir() and not any(target.iterdir()):
            target.rmdir()
    return local


def fetch(location: str, local_root: Path, relative: str) -> Path:
    """A file of a remote experiment that the mirror leaves out (weights), copied into the
    mirror `local_root` when missing or changed; where it would be when there is none."""
    if not inside(relative):
        raise UserError(f"{join(location, relative)}: leads out of the experiment; not read")
    target = local_root / relative
    info = _info(join(location, relative))
    if info.type != pafs.FileType.File:
        target.unlink(missing_ok=True)
        return target
    if stale(info, target):
        download(join(location, relative), target, info)
    return target


def upload(local: Path, location: str) -> None:
    """`local` written to `location`, then stamped with the remote modification time, so
    that a mirror holding it does not read it back (see `stale`)."""
    write_bytes(location, local.read_bytes())
    info = _info(location)
    if info.mtime_ns is not None:
        os.utime(local, ns=(info.mtime_ns, info.mtime_ns))


def upload_folder(local: Path, location: str) -> None:
    """Every file below `local` to the same relative paths below `location`."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        upload(path, join(location, path.relative_to(local).as_posix()))
