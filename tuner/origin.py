"""Which machine created an experiment: a stamp written at creation, checked on --resume.

Resuming unpickles Ray's own state files from the experiment (tuner.pkl, the searcher's
state), so a crafted folder can run code there; Ray offers no other way to resume. The
stamp is an HMAC, under a key that only this machine's cache holds, of an id made when
the experiment was created: an experiment from elsewhere (downloaded, copied, another
user's) cannot carry a valid one, and resuming it says so once before anything runs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
from pathlib import Path

from results import storage
from results.layout import ORIGIN_FILE
from results.records import NewerFormatError, Origin

KEY_FILE = "machine.key"


def machine_key() -> bytes:
    """This machine's secret (in the cache root, readable by its owner only), made once."""
    path = storage.cache_root() / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another run made it meanwhile
            return path.read_bytes()
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()


def _stamp(experiment_id: str) -> str:
    return hmac.new(machine_key(), experiment_id.encode(), hashlib.sha256).hexdigest()


def write_origin(location: str) -> None:
    experiment_id = secrets.token_hex(16)
    record = Origin(host=socket.gethostname(), id=experiment_id, stamp=_stamp(experiment_id))
    storage.write_bytes(storage.join(location, ORIGIN_FILE), record.to_text().encode())


def created_here(location: str) -> bool:
    """Whether this machine (this cache's key) created the experiment."""
    path = storage.join(location, ORIGIN_FILE)
    try:
        record = Origin.from_text(storage.read_bytes(path) or b"", path)
        return hmac.compare_digest(_stamp(record.id), record.stamp)
    except (ValueError, KeyError, TypeError, NewerFormatError):  # absent, damaged, not one
        return False


def foreign_warning(location: str) -> str:
    return (
        f"warning: {location} was not created here (no valid {ORIGIN_FILE} for this "
        f"machine's key in {Path(storage.cache_root()) / KEY_FILE}): --resume unpickles Ray's "
        "state files from it (tuner.pkl, searcher-state-*.pkl), which can run code; resume "
        "only experiments you trust"
    )
