"""kill -9 at random moments of cache building and of both training stages, then --resume:
the run completes with exactly the metrics of a run that was never interrupted."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import save_file

from conftest import make_dataset, tiny_state_dict

pytestmark = pytest.mark.slow

FLAGS = ["--size", "32", "--epochs", "6", "--finetune-epochs", "5", "--views", "3", "--batch-size", "8",
         "--hidden", "16", "--dropout", "0", "--lr", "0.01", "--finetune-lr", "0.001", "--patience", "0",
         "--precision", "fp32", "--val-split", "0.2", "--test-split", "0.2", "--quiet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    data = make_dataset(root / "data", n_per_class=150)
    weights = root / "tiny.safetensors"
    save_file(tiny_state_dict(), str(weights))
    return root, data, weights


def start(home: Path, data: Path, out: Path, weights: Path, resume: bool) -> subprocess.Popen:
    env = dict(os.environ, VGGTUNE_HOME=str(home), VGGTUNE_OFFLINE="1", PYTHONHASHSEED="0")
    args = ["--resume", "--out", str(out)] if resume else [str(data), "--out", str(out), "--weights", str(weights), *FLAGS]
    return subprocess.Popen([sys.executable, "-m", "vggtune", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def epochs_done(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def shards(home: Path) -> int:
    return len(list((home / "features").glob("*/shard-*.json"))) if (home / "features").exists() else 0


def kill_when(process: subprocess.Popen, ready, rng: random.Random, timeout: float = 120) -> bool:
    """SIGKILL shortly after `ready()` turns true; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.2))
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return True


def test_ten_kills_then_resume_give_identical_metrics(setup):
    root, data, weights = setup
    reference = start(root / "home-ref", data, root / "ref", weights, resume=False)
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()

    home, out, rng = root / "home-killed", root / "killed", random.Random(7)
    targets = [("cache", lambda: shards(home) >= 1)]
    targets += [(f"head epoch {k}", lambda k=k: epochs_done(out) >= k) for k in (0, 1, 2, 4, 5)]
    targets += [(f"finetune epoch {k}", lambda k=k: epochs_done(out) >= k) for k in (6, 7, 8, 9, 10)]
    kills = []
    for name, ready in targets:
        process = start(home, data, out, weights, resume=(out / "config.yaml").exists())
        if kill_when(process, ready, rng):
            kills.append((name, epochs_done(out)))
    final = start(home, data, out, weights, resume=True)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()

    assert len(kills) >= 10, kills
    assert any(name.startswith("finetune") for name, _ in kills) and kills[0][0] == "cache"
    read = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert read(out) == read(root / "ref")
    assert json.loads((out / "metrics.json").read_text())["test"] == json.loads((root / "ref" / "metrics.json").read_text())["test"]
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert all(p.name.startswith(".") for p in leftovers)        # temporaries never take a final name


def test_two_trainings_share_one_cache_at_the_same_time(setup):
    from vggtune.cache import FeatureCache
    root, data, weights = setup
    home = root / "home-shared"
    runs = [root / "together-a", root / "together-b"]
    processes = [start(home, data, out, weights, resume=False) for out in runs]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    results = [json.loads((out / "metrics.json").read_text())["test"] for out in runs]
    assert results[0]["n"] == results[1]["n"] > 0
    assert abs(results[0]["accuracy"] - results[1]["accuracy"]) <= 2 / results[0]["n"]
    for folder in (home / "features").iterdir():
        cache = FeatureCache.__new__(FeatureCache)
        cache.dir, cache._index, cache._verified, cache.damaged = folder, None, set(), []
        assert cache.index() and cache.damaged == []
    third = start(home, data, root / "after", weights, resume=False)
    shards_before = shards(home)
    assert third.wait(timeout=300) == 0
    assert shards(home) == shards_before                     # everything was already cached
