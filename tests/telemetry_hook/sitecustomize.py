"""Put on PYTHONPATH by test_no_telemetry.py: every process start, fork and name look-up that Python makes
is written to the file named by VGGTUNE_TEST_AUDIT_LOG, one event a line, through Python's audit hooks
(PEP 578), so the test sees what a real run did, not what a mock allows."""
import os
import sys

WATCHED = {"os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system", "subprocess.Popen",
           "socket.getaddrinfo", "socket.connect", "socket.gethostbyname", "urllib.Request"}
LOG = os.environ.get("VGGTUNE_TEST_AUDIT_LOG")


def _record(event, args):
    if event in WATCHED and LOG:
        with open(LOG, "a") as log:
            log.write(f"{os.getpid()} {event} {args!r:.200}\n")


if LOG:
    sys.addaudithook(_record)
