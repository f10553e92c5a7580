"""Where an experiment lives: a local folder or a URI that pyarrow's filesystems open
(`s3://bucket/prefix`, `gs://…`), as Ray Tune's own storage does. Credentials and the
endpoint come from the standard environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, …).

Readers work on a local copy of a remote experiment (`mirror`): its small files (settings,
results, metrics, the study), with weights fetched on demand (`fetch`). No Ray, no torch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from trainable.errors import UserError

# Never mirrored: resume states (gigabytes), Tune's checkpoints, weights (fetched when a
# command needs them) and TensorBoard's event files.
NOT_MIRRORED = ("state", "checkpoint_*", "*.pt", "events.out.tfevents.*", "*.partial")


def is_remote(location: str | Path) -> bool:
    return "://" in str(location)


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
    except (OSError, ValueError) as error:
        if not is_remote(location) or isinstance(
            error, FileNotFoundError | IsADirectoryError | FileExistsError
        ):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
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


def read_bytes(location: str | Path) -> bytes | None:
    """The file's bytes, None when there is no such file."""
    fs, path = resolve(location)
    try:
        # One read of the whole file: pyarrow's input stream reads an object store in
        # small pieces (170 MB from moto's S3: 64 s against 0.3 s).
        with _errors(str(location)), fs.open_input_file(path) as file:
            return file.read()
    except (FileNotFoundError, IsADirectoryError):
        return None


def write_bytes(location: str | Path, data: bytes) -> None:
    """Locally write-then-rename (a reader never sees half a file); an object store
    shows an upload only once it is complete."""
    fs, path = resolve(location)
    with _errors(str(location)):
        fs.create_dir(path.rsplit("/", 1)[0])
        if isinstance(fs, pafs.LocalFileSystem):
            partial = f"{path}.partial"
            with fs.open_output_stream(partial) as stream:
                stream.write(data)
            fs.move(partial, path)
        else:
            with fs.open_output_stream(path) as stream:
                stream.write(data)


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


def mirrored(relative: str) -> bool:
    parts = relative.split("/")
    return not any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in NOT_MIRRORED)


def download(location: str | Path, target: Path) -> Path:
    """One remote file to `target` (written whole, then renamed)."""
    data = read_bytes(location)
    if data is None:
        raise UserError(f"{location}: no such file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def mirror(location: str) -> Path:
    """A local copy of a remote experiment's small files (see NOT_MIRRORED), brought up to
    date (files whose size changed are read again, files gone are removed), so that every
    reader works on plain files. Returns the copy's folder, named like the experiment."""
    local = local_copy_dir(location, "experiments") / location.rstrip("/").rsplit("/", 1)[-1]
    remote = {rel: info for rel, info in list_files(location).items() if mirrored(rel)}
    if not remote:
        raise UserError(f"{location}: no experiment there; give <storage>/<name>")
    for relative, info in remote.items():
        target = local / relative
        if not target.is_file() or target.stat().st_size != info.size or _changed(info, target):
            download(join(location, relative), target)
    for target in local.rglob("*"):
        relative = target.relative_to(local).as_posix()
        if target.is_file() and mirrored(relative) and relative not in remote:
            target.unlink()
    return local


def _changed(info: pafs.FileInfo, target: Path) -> bool:
    """Rewritten remotely since it was copied (an object store keeps no equal mtimes)."""
    return info.mtime is not None and info.mtime.timestamp() > target.stat().st_mtime


def fetch(location: str, local_root: Path, relative: str) -> Path:
    """A file of a remote experiment that the mirror leaves out (weights), copied into the
    mirror `local_root` when missing or changed; where it would be when there is none."""
    target = local_root / relative
    info = _info(join(location, relative))
    if info.type != pafs.FileType.File:
        target.unlink(missing_ok=True)
        return target
    if not target.is_file() or target.stat().st_size != info.size or _changed(info, target):
        download(join(location, relative), target)
    return target


def upload_folder(local: Path, location: str) -> None:
    """Every file below `local` to the same relative paths below `location`."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        write_bytes(join(location, path.relative_to(local).as_posix()), path.read_bytes())
