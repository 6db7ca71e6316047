"""`--nproc N`: N processes of the same command on this host, started as `torchrun --standalone
--nproc-per-node N` starts them (RANK, LOCAL_RANK, WORLD_SIZE, and a rendezvous on a free loopback
port), each with its share of the cores.

Started here rather than by torchrun's agent so that the job ends as one command does: a user's
mistake found by the processes is one line, said once, exit 2 (each rank writes it to a file of the
launcher's instead of printing it); `predict`'s exit 1 for skipped inputs is not a failure banner;
and a process that fails stops the others after a short grace, as torchrun's agent stops them.
`torchrun -m vggtune ...` still works, for several hosts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vggtune.errors import UserError

ERRORS_VARIABLE = "VGGTUNE_LAUNCH_ERRORS"  # where a launched rank leaves its one-line error
GRACE_S = 10  # how long the others may finish after one process failed


def launched_size() -> int:
    """The world size torchrun (or this launcher) set for this process, 1 without either."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch(arguments: list[str], processes: int) -> tuple[int, list[str]]:
    """Runs `vggtune ARGUMENTS` as `processes` ranks: (exit status, the lines to print once). Status 2 with
    the ranks' one-line errors when a rank refused the command; else the first failing rank's status."""
    check(processes)
    with tempfile.TemporaryDirectory(prefix="vggtune-launch-") as errors:
        ranks = _start(arguments, processes, Path(errors))
        try:
            statuses, first = _wait(ranks)
        except KeyboardInterrupt:  # Ctrl-C reached the ranks too: they save what they computed first
            _wait(ranks, grace_s=60)
            raise
        refusals = [(Path(errors) / f"rank-{rank}.txt") for rank in range(processes)]
        lines = list(dict.fromkeys(path.read_text().strip() for path in refusals if path.is_file()))
    if lines:
        return 2, lines
    if first is None:
        return 0, []
    if statuses[first] < 0:
        return 1, [f"process {first} of {processes} was stopped by {signal.Signals(-statuses[first]).name}"]
    return statuses[first], []


def check(processes: int) -> None:
    if processes < 1:
        raise UserError(f"--nproc: received {processes}; allowed: 1 or more processes")
    if launched_size() > 1:
        raise UserError("--nproc: this process already runs under torchrun; allowed: torchrun or --nproc, not both")


def _start(arguments: list[str], processes: int, errors: Path) -> list[subprocess.Popen]:
    port = _free_port()
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    ranks = []
    for rank in range(processes):
        environment = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(processes),
            LOCAL_WORLD_SIZE=str(processes),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        environment.setdefault("OMP_NUM_THREADS", threads)
        environment[ERRORS_VARIABLE] = str(errors)
        ranks.append(subprocess.Popen([sys.executable, "-m", "vggtune", *arguments], env=environment))
    return ranks


def _wait(ranks: list[subprocess.Popen], grace_s: float | None = None) -> tuple[list[int], int | None]:
    """(each rank's exit status, the rank that failed first or None). Once one has failed, the others get
    `grace_s` (GRACE_S) to end, then are stopped."""
    grace_s = GRACE_S if grace_s is None else grace_s
    first, failed_at = None, None
    while any([rank.poll() is None for rank in ranks]):  # a list: every rank polled, each time
        if first is None:
            first = next((i for i, rank in enumerate(ranks) if rank.returncode), None)
            failed_at = time.monotonic() if first is not None else None
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            _stop(ranks)
            break
        time.sleep(0.05)
    statuses = [rank.wait() for rank in ranks]
    if first is None:
        first = next((i for i, status in enumerate(statuses) if status), None)
    return statuses, first


def _stop(ranks: list[subprocess.Popen]) -> None:
    for rank in ranks:
        if rank.poll() is None:
            rank.terminate()
    for rank in ranks:
        try:
            rank.wait(10)
        except subprocess.TimeoutExpired:
            rank.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused(message: str) -> bool:
    """In a launched rank: leaves the one-line error for the launcher to print once; False elsewhere."""
    folder = os.environ.get(ERRORS_VARIABLE)
    if not folder or launched_size() <= 1:
        return False
    Path(folder, f"rank-{os.environ.get('RANK', '0')}.txt").write_text(message + "\n")
    return True
