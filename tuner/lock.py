"""One process at a time per experiment: an advisory lock on a file in its folder, held
while the run lasts and released by the kernel however the process ends (kill -9
included). Works on a local disk and on NFS (Linux maps flock to NFS locks)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import IO

from results.errors import UserError
from results.layout import LOCK_FILE

log = logging.getLogger(__name__)


def lock_experiment(directory: Path) -> IO[str]:
    """The held lock (keep the returned file open); UserError when another run holds it
    or the folder cannot hold a lock file. A filesystem without locks (an NFS mount
    without lockd) gets a warning and no lock."""
    try:
        handle = open(Path(directory) / LOCK_FILE, "a+")  # noqa: SIM115 (held until the run ends)
    except OSError as error:
        raise UserError(
            f"{directory}: cannot write its lock file ({error.strerror}); check the folder's "
            "permissions, or choose another --storage"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"{directory}: in use by another run ({holder}); wait for it to end or stop it, "
            "then continue with --resume"
        ) from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
            handle.close()
            raise UserError(f"{directory}: cannot be locked ({error.strerror})") from None
        log.warning("%s: this filesystem has no locks; run one process on it at a time", directory)
        return handle
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle
