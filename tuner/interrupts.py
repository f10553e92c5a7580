"""Ctrl-C and SIGTERM end a run the same way: Tune stops its trials, saves its state one
last time and returns; the command then exits 130 (SIGINT) or 143 (SIGTERM) with the
command that resumes the run. Ray's driver otherwise answers SIGTERM with `sys.exit`
from inside its event loop, which dies with a native stack dump."""

from __future__ import annotations

import signal

_received: list[int] = []


def stop_on_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C; call again after `ray.init`, which replaces it."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame) -> None:
    _received.append(signum)
    # While Tune runs, its SIGINT handler stops the run gracefully; otherwise Python's
    # default raises KeyboardInterrupt.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def exit_status() -> int:
    """The shell's status for the signal that stopped the run: 128 + its number."""
    return 128 + (signal.SIGTERM if signal.SIGTERM in _received else signal.SIGINT)
