"""Ctrl-C (SIGINT) and SIGTERM at each moment of a first run on the defaults users get (engine auto,
the report on): while the engines are measured, while OpenVINO compiles the frozen blocks, while the
cache fills, while a checkpoint is written. Each ends with exit 130 or 143 and one line naming the
command that resumes, never a native abort, and the resumed run finishes.

The signal comes from another thread a moment after the named step began, as a terminal's Ctrl-C
reaches a process busy in native code; the step is named exactly, whatever the machine's speed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from safetensors.torch import save_file

from vggtune.features import engine as engines

from conftest import make_dataset, tiny_state_dict

pytestmark = pytest.mark.defaults

SIGNAL_DURING = """
import os, signal, sys, threading, time
moment, number = sys.argv[1], getattr(signal, sys.argv[2])
twice = moment.endswith("-twice")
moment = moment.removesuffix("-twice")

sent = []

def soon():                                   # once: the step may run many times (a batch, a file)
    if not sent:
        sent.append(threading.Timer(0.02, os.kill, (os.getpid(), number)))
        sent[0].start()
        if twice:                             # a second Ctrl-C while the first one ends the command
            threading.Timer(0.2, os.kill, (os.getpid(), number)).start()

def signalled(real):
    def call(*args, **kwargs):
        soon()
        return real(*args, **kwargs)
    return call

if moment == "measurement":
    from vggtune.features import choice
    choice.measure = signalled(choice.measure)
elif moment == "compile":
    from vggtune.features import engine
    engine.OpenVinoFrozen.__init__ = signalled(engine.OpenVinoFrozen.__init__)
elif moment == "extraction":
    from vggtune.features import cache
    cache.ShardWriter.add = signalled(cache.ShardWriter.add)
elif moment == "checkpoint":
    from vggtune.training import checkpoints
    real_save = checkpoints.save_tensors
    def save_tensors(*args, **kwargs):       # in the writer's thread: the main thread trains or waits on it
        soon()
        time.sleep(0.1)
        return real_save(*args, **kwargs)
    checkpoints.save_tensors = save_tensors
from vggtune.cli import main
sys.argv = ["vggtune", *sys.argv[3:]]         # main() as the installed program calls it
sys.exit(main())
"""

MOMENTS = [("measurement", "SIGINT"), ("measurement", "SIGTERM"), ("compile", "SIGINT"), ("compile", "SIGTERM"),
           ("extraction", "SIGINT"), ("extraction-twice", "SIGINT"), ("checkpoint", "SIGTERM")]


@pytest.mark.parametrize("moment,name", MOMENTS)
def test_a_signal_at_any_moment_ends_with_one_line_and_the_run_resumes(moment, name, tmp_path):
    if moment == "compile" and not engines.installed("openvino"):
        pytest.skip("OpenVINO is not installed here")
    data = make_dataset(tmp_path / "data", n_per_class=20)
    weights = tmp_path / "tiny.safetensors"
    save_file(tiny_state_dict(), str(weights))
    out = tmp_path / "run"
    env = dict(os.environ, VGGTUNE_HOME=str(tmp_path / "home"), VGGTUNE_OFFLINE="1")
    flags = ["--size", "32", "--epochs", "2", "--finetune-epochs", "1", "--batch-size", "8", "--weights", str(weights)]
    if moment == "compile":
        flags += ["--engine", "openvino"]             # its compile is the moment, with nothing measured first
    # A terminal's signals: a suite started in the background ignores SIGINT, and a child inherits that.
    done = subprocess.run([sys.executable, "-c", SIGNAL_DURING, moment, name, "train", str(data), "--out", str(out),
                           *flags], env=env, capture_output=True, text=True, timeout=180,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    expected = 128 + getattr(signal, name)
    assert done.returncode == expected, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr and "Aborted" not in done.stderr and "terminate" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        f"vggtune train: interrupted; `vggtune train --resume --out {out}` continues this run"
    assert not (out / "model.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "vggtune", "train", "--resume", "--out", str(out)], env=env,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "model.json").is_file() and (out / "report.html").is_file()
