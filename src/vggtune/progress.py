"""What long work says while it runs, through the `vggtune` logger: a bar on a terminal,
a few plain lines in a log file, nothing when quiet.

Verbosity is the logger's level, set once where a command starts (`verbosity(quiet)`), so
no function below needs a `quiet` argument. Messages go to the standard error stream of
the moment (tests capture it); a program embedding vggtune can set the logger's level or
handlers as with any other library.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from tqdm import tqdm

QUIET_SECONDS = 5.0
log = logging.getLogger("vggtune")


class _CurrentStderr(logging.Handler):
    """sys.stderr as it is when a message is written, not when the handler was made."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


if not log.handlers:
    log.addHandler(_CurrentStderr())
    log.setLevel(logging.INFO)
    log.propagate = False


@contextlib.contextmanager
def verbosity(quiet: bool):
    """Inside: info lines and progress bars only when not quiet."""
    before = log.level
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        log.setLevel(before)


def say(message: str) -> None:
    log.info(message)


class _Lines:
    """tqdm's interface, printing a plain line at each tenth of the work."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit = max(total, 1), desc, unit
        self.done, self.next_mark, self.start = 0, 0.1, time.perf_counter()

    def update(self, count: int = 1) -> None:
        self.done += count
        elapsed = time.perf_counter() - self.start
        # Short work stays silent: the epoch summary line says enough.
        if elapsed >= QUIET_SECONDS and (self.done / self.total >= self.next_mark or self.done >= self.total):
            rate = self.done / max(elapsed, 1e-9)
            say(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({rate:.1f}/s)")
        while self.next_mark <= self.done / self.total:
            self.next_mark += 0.1

    def close(self) -> None:
        pass


class _Silent:
    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "it"):
    if not log.isEnabledFor(logging.INFO):
        return _Silent()
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return _Lines(total, desc, unit)
