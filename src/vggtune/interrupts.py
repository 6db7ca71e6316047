"""Ctrl-C and SIGTERM held back while native code runs that must not be cut short.

Python runs a signal's handler between two of its own instructions. Inside a converter or compiler
that calls back into Python (OpenVINO's `convert_model` traces the network, `torch.onnx.export`
too) the KeyboardInterrupt is raised inside the callback and unwinds through C++ frames that
cannot pass it on; once, a Ctrl-C during the first run's engine measurement ended the process with
SIGABRT and no line. Inside `held()` a signal is noted, not acted on, and delivered again as soon
as the section ends, where the usual handlers turn it into exit 130 or 143 with one line. A section
that does not end within GRACE_S of the signal, or a second signal, ends the process at once
(`os._exit`): a hung native call must never make the process deaf to SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

HELD = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 10.0


@contextlib.contextmanager
def held():
    """Inside: SIGINT and SIGTERM wait until the block ends, then arrive as they would have. A no-op
    outside the main thread (only it receives Python's signals) and for a signal the process ignores."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    done = threading.Event()

    def note(got: int, frame) -> None:
        if received:
            _end_now(got)
        received.append(got)
        threading.Thread(target=_end_unless, args=(done, got), daemon=True).start()

    previous = {number: signal.getsignal(number) for number in HELD}
    for number, handler in previous.items():
        if handler not in (signal.SIG_IGN, None):
            signal.signal(number, note)
    try:
        yield
    finally:
        done.set()
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)
        if received:
            signal.raise_signal(received[0])  # now, to its own handler: KeyboardInterrupt, Terminated


def _end_unless(done: threading.Event, number: int) -> None:
    if not done.wait(GRACE_S):
        _end_now(number)


def _end_now(number: int) -> None:
    """The process ends here, without clean-up: what the held section was doing cannot be interrupted."""
    name = signal.Signals(number).name
    print(f"vggtune: stopped by {name} inside native code that did not return; nothing more was saved", file=sys.stderr)
    sys.stderr.flush()
    os._exit(128 + number)
