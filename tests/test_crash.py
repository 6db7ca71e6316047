"""kill -9 at random moments of cache building and of both training stages, then --resume:
the run completes with exactly the metrics of a run that was never interrupted."""
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from conftest import make_dataset, tiny_state_dict

pytestmark = pytest.mark.slow

HEAD_EPOCHS = 10
FLAGS = ["--size", "32", "--epochs", str(HEAD_EPOCHS), "--finetune-epochs", "10", "--views", "3", "--batch-size", "8",
         "--hidden", "16", "--dropout", "0", "--lr", "0.01", "--finetune-lr", "0.001", "--patience", "0",
         "--precision", "fp32", "--val-split", "0.2", "--test-split", "0.2", "--quiet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    data = make_dataset(root / "data", n_per_class=150)
    weights = root / "tiny.safetensors"
    save_file(tiny_state_dict(), str(weights))
    return root, data, weights


# Runs `vggtune train` and kills it with SIGKILL, from inside, at a named moment: just after the
# count-th file whose name matches `pattern` has been renamed into place ("after"), or while the
# count-th such temporary file is being written, before it is synced and renamed ("inside").
# The moment is exact, so every kill lands where its test says, on any machine at any speed.
KILL_AT = """
import fnmatch, os, signal, sys
pattern, count, moment = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = [0]
real_fsync, real_replace = os.fsync, os.replace

def matched(name):
    if fnmatch.fnmatch(os.path.basename(name), pattern):
        seen[0] += 1
        if seen[0] >= count:
            os.kill(os.getpid(), signal.SIGKILL)

def fsync(fd):
    if moment == "inside":
        try:
            matched(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    real_fsync(fd)

def replace(source, target, *args, **options):
    real_replace(source, target, *args, **options)
    if moment == "after":
        matched(str(target))

os.fsync, os.replace = fsync, replace
from vggtune.cli import main
sys.exit(main(sys.argv[4:]))
"""


def start(home: Path, data: Path, out: Path, weights: Path, resume: bool, kill_at: tuple | None = None):
    # The killed runs and the reference must run the same engine: auto's measurement in each home may choose
    # another (the engines differ by rounding); test_signals.py interrupts runs on the unpinned default.
    env = dict(os.environ, VGGTUNE_HOME=str(home), VGGTUNE_OFFLINE="1", PYTHONHASHSEED="0", VGGTUNE_ENGINE="torch")
    args = ["--resume", "--out", str(out)] if resume else [str(data), "--out", str(out), "--weights", str(weights), *FLAGS]
    program = ["-c", KILL_AT, *map(str, kill_at)] if kill_at else ["-m", "vggtune"]
    return subprocess.Popen([sys.executable, *program, "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def epochs_done(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def shards(home: Path) -> int:
    return len(list((home / "features").glob("*/shard-*.json"))) if (home / "features").exists() else 0


def temporaries(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.exists() for p in folder.rglob("*.tmp")}


@pytest.fixture(scope="module")
def reference(setup):
    """The same run, never interrupted."""
    root, data, weights = setup
    process = start(root / "home-ref", data, root / "ref", weights, resume=False)
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    return root / "ref"


def read_history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert(condition: bool, path: Path) -> None:
    assert condition, f"{path} is cut short"


def assert_every_final_file_loads(out: Path, home: Path) -> None:
    from vggtune.features.cache import FeatureCache
    from vggtune.fsutil import load_tensors
    readers = {".json": lambda p: json.loads(p.read_text()), ".safetensors": load_tensors,
               ".jsonl": lambda p: [json.loads(line) for line in p.read_text().splitlines()],
               ".yaml": lambda p: yaml.safe_load(p.read_text()), ".csv": lambda p: list(csv.reader(p.open())),
               ".html": lambda p: _assert(p.read_text().endswith("</html>\n"), p),
               ".md": lambda p: _assert(p.read_text().startswith("---\n"), p)}
    finals = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    # TensorBoard's event files are append-only logs (a killed writer leaves the last record cut, which
    # TensorBoard's reader skips): each must still read back.
    events = [p for p in finals if p.parent.name == "tensorboard" and p.name.startswith("events.out.tfevents.")]
    finals = [p for p in finals if p not in events]
    assert {p.suffix for p in finals} <= set(readers), finals
    for path in finals:
        readers[path.suffix](path)
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    records = [list(EventFileLoader(str(path)).Load()) for path in events]     # a damaged file raises here
    assert any(records)                 # (a writer killed before its first write leaves an empty file)
    for folder in (home / "features").iterdir():
        cache = FeatureCache.existing(folder)
        assert cache.index() and cache.damaged == [], folder


def test_ten_kills_then_resume_give_identical_metrics(setup, reference):
    """Each kill lands after the run has made progress since it was started: a new shard, new epochs,
    or inside a write (a shard's or a checkpoint's, before it is synced and renamed)."""
    root, data, weights = setup
    home, out = root / "home-killed", root / "killed"
    # (what is hit, the file name, the how-many-th, the moment); metrics.jsonl is rewritten after each
    # epoch and once when a stage resumes, so its third rename means at least two new epochs.
    targets = [("cache", "shard-*.json", 2, "after"), ("shard write", ".shard-*.tmp", 1, "inside")]
    targets += [("epochs", "metrics.jsonl", 3, "after")] * 3 + [("checkpoint write", ".head-last.*.tmp", 2, "inside")]
    targets += [("epochs", "metrics.jsonl", 3, "after")] * 3 + [("checkpoint write", ".finetune-last.*.tmp", 2, "inside")]
    targets += [("epochs", "metrics.jsonl", 3, "after")] * 2
    kills = []
    for name, *kill_at in targets:
        process = start(home, data, out, weights, resume=(out / "config.yaml").exists(), kill_at=kill_at)
        code = process.wait(timeout=300)
        assert code in (0, -signal.SIGKILL), process.stderr.read().decode()
        if code == -signal.SIGKILL:
            kills.append((name, epochs_done(out)))
    left_by_kills = temporaries(home, out)
    if not (out / "model.json").is_file():          # the last target may come after the run's end
        final = start(home, data, out, weights, resume=True)
        assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    assert not (out / "state").exists()             # a finished run keeps no checkpoints

    names = [name for name, _ in kills]
    assert len(kills) >= 10, kills
    assert {"cache", "shard write", "checkpoint write"} <= set(names), kills
    assert any(done > HEAD_EPOCHS for _, done in kills), kills          # some kills in the fine-tune stage
    assert read_history(out) == read_history(reference)
    assert json.loads((out / "metrics.json").read_text())["test"] == json.loads((reference / "metrics.json").read_text())["test"]
    assert_every_final_file_loads(out, home)
    assert temporaries(home, out) <= left_by_kills            # the uninterrupted last run leaves none of its own
    assert len(left_by_kills) <= len(kills)                   # at most one half-written file per kill


def test_two_trainings_share_one_cache_at_the_same_time(setup, reference):
    from vggtune.features.cache import FeatureCache
    root, data, weights = setup
    home = root / "home-shared"
    runs = [root / "together-a", root / "together-b"]
    processes = [start(home, data, out, weights, resume=False) for out in runs]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    expected = json.loads((reference / "metrics.json").read_text())["test"]
    for out in runs:                          # each exactly as the run that had the cache to itself
        assert json.loads((out / "metrics.json").read_text())["test"] == expected
        assert read_history(out) == read_history(reference)
    for folder in (home / "features").iterdir():
        cache = FeatureCache.existing(folder)
        assert cache.index() and cache.damaged == []
    third = start(home, data, root / "after", weights, resume=False)
    shards_before = shards(home)
    assert third.wait(timeout=300) == 0
    assert shards(home) == shards_before                     # everything was already cached
