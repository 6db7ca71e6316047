"""Progress for long work: a bar on a terminal, a few plain lines in a log file, nothing when quiet."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


QUIET_SECONDS = 5.0


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
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({rate:.1f}/s)", file=sys.stderr, flush=True)
        while self.next_mark <= self.done / self.total:
            self.next_mark += 0.1

    def close(self) -> None:
        pass


class _Silent:
    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "it", quiet: bool = False):
    if quiet:
        return _Silent()
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return _Lines(total, desc, unit)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)
