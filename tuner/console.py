"""The terminal: the one module that writes to it. Results and outcomes go to stdout
(`say`), warnings, errors and resume hints to stderr (`warn`), and a sweep's quiet
progress lines through `line` (see progress.ConsoleLines). Everything else logs
(`logging`, through `log_to_stderr`): its warnings as `warning: …` lines like `warn`'s,
the rest with `-v`.

One exception: tqdm's progress bars, which tqdm itself draws on stderr, only when stderr is
a terminal (`disable=None`) and only when the caller asks for progress: `checking BUSI`
(trainable.integrity, `data check`), `decoding BUSI` (trainable.preprocess, loading data)
and `predicting` (tuner.inference.predict). A bar redraws itself in place, which a line
written here cannot; in a pipe or a log file there is none."""

from __future__ import annotations

import logging
import sys


def say(text: str = "") -> None:
    """A line (or lines) on stdout."""
    print(text)


def warn(text: str) -> None:
    """A line on stderr."""
    print(text, file=sys.stderr)


class _Lowercase(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname.lower()}: {record.getMessage()}"
        return f"{line}\n{self.formatException(record.exc_info)}" if record.exc_info else line


def log_to_stderr(verbose: bool) -> None:
    """Log records on stderr: warnings and errors as `warning: …`/`error: …` lines (as
    `warn` writes them); with `verbose`, every record from INFO, named by its logger."""
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_Lowercase())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def line(text: str) -> None:
    """A progress line on the `sys.stdout` of the moment, flushed at once, so that it shows
    as its trial ends (also when stdout is a pipe or a file)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
