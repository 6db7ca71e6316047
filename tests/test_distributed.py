"""torchrun with two CPU processes (gloo), one thread each, every launch bounded by a timeout so that a
hang fails the test instead of stalling CI. The processes run tests/dist_entry.py: vggtune's command
line with the tiny random-init backbone.

The stated tolerance: with dropout 0 and fp32, two processes reach the one-process weights to 1e-5
(the gradients of a batch are summed in another order, so not bit for bit). With dropout each rank
draws its own masks, so a run is another draw of the same recipe, not the same numbers.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_dataset, write_multilabel
from vggtune.features.choice import ENGINE_VARIABLE

ENTRY = Path(__file__).with_name("dist_entry.py")
TIMEOUT_S = 240
TOLERANCE = 1e-5
RECIPE = ["--epochs", "3", "--finetune-epochs", "2", "--size", "32", "--batch-size", "8", "--views", "2",
          "--hidden", "16", "--val-split", "0.2", "--test-split", "0.2", "--lr", "1e-2", "--finetune-lr", "1e-3",
          "--dropout", "0", "--precision", "fp32"]      # fp32 and no dropout: the tolerance below is about these
# What a user types, with the network's size alone made tiny: engine auto, precision auto, the report on.
DEFAULTS = ["--epochs", "2", "--finetune-epochs", "1", "--size", "32", "--batch-size", "8"]

# Every test here runs on the defaults users get: `auto` measures the engines in each test's home, and
# the report is written. A pin of VGGTUNE_ENGINE hid the hang at the end of every multi-process run.
pytestmark = pytest.mark.defaults


def environment(home: Path, **extra) -> dict:
    unpinned = {name: value for name, value in os.environ.items() if name != ENGINE_VARIABLE}
    return {**unpinned, "VGGTUNE_HOME": str(home), "VGGTUNE_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "VGGTUNE_DIST_TIMEOUT": "60", **extra}


def launch(arguments: list[str], home: Path, nproc: int | None = 2, launcher: list[str] | None = None, **extra):
    """torchrun --standalone with `nproc` processes (None: one plain process, no torchrun)."""
    if nproc is None:
        command = [sys.executable, str(ENTRY), *arguments]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", *(launcher or ["--standalone"]),
                   f"--nproc-per-node={nproc}", str(ENTRY), *arguments]
    return subprocess.run(command, env=environment(home, **extra), capture_output=True, text=True, timeout=TIMEOUT_S)


def model_difference(a: Path, b: Path) -> float:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def cache_entries(home: Path) -> dict[str, list[str]]:
    """Each cache folder's entries, over all its shards, with repeats."""
    return {folder.parent.name: [entry for manifest in folder.parent.glob("shard-*.json")
                                 for entry in json.loads(manifest.read_text())["entries"]]
            for folder in (home / "features").glob("*/key.json")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("dist") / "data", n_per_class=30)


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> tuple[Path, Path]:
    """(run, its home) of the same recipe in one plain process: the reference."""
    root = tmp_path_factory.mktemp("one")
    result = launch(["train", str(data), *RECIPE, "--out", str(root / "run")], root / "home", nproc=None)
    assert result.returncode == 0, result.stderr
    return root / "run", root / "home"


@pytest.fixture
def home(one_process, tmp_path) -> Path:
    """A fresh home that knows this machine's engine measurement, as a user's one home does: the runs
    compared with one process then use the engine `auto` chose for it (the engines differ by rounding)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(one_process[1] / "engines.json", home / "engines.json")
    return home


def test_two_processes_fill_the_cache_once_and_match_one_process(data, one_process, home, tmp_path):
    result = launch(["train", str(data), *RECIPE, "--out", str(tmp_path / "run")], home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("test metrics") == 1                 # rank 0 alone reports
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["environment"]["processes"] == 2
    reuse = metrics["environment"]["feature_cache"]
    assert reuse["views_computed"] == reuse["views_wanted"] > 0     # a fresh cache: every view once
    two, one = cache_entries(tmp_path / "home"), cache_entries(one_process[1])
    assert two.keys() == one.keys()
    for folder, entries in two.items():
        assert len(entries) == len(set(entries)), f"{folder}: a view computed twice"
        assert set(entries) == set(one[folder])
    shards = lambda home: len(list((home / "features").glob("*/shard-*.npy")))   # noqa: E731
    assert shards(tmp_path / "home") > shards(one_process[1])       # both ranks wrote their share
    assert model_difference(one_process[0], tmp_path / "run") < TOLERANCE
    assert (tmp_path / "run" / "splits.json").read_text() == (one_process[0] / "splits.json").read_text()


def test_two_processes_on_the_defaults_end_with_the_report(data, tmp_path):
    """The README's torchrun command as users run it. Rank 0's report chose the engine again, with a
    collective the other rank never joined: the job hung until VGGTUNE_DIST_TIMEOUT, then failed."""
    result = launch(["train", str(data), *DEFAULTS, "--out", str(tmp_path / "run")], tmp_path / "home")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "README.md").is_file()
    assert "report.html not written" not in result.stdout + result.stderr
    measured = json.loads((tmp_path / "home" / "engines.json").read_text())      # auto measured, once
    chosen = json.loads((tmp_path / "run" / "metrics.json").read_text())["environment"]["engine"]
    assert [f"{entry['best']['name']} {entry['best']['precision']}" for entry in measured.values()] == [chosen]


def test_two_processes_train_a_multi_label_manifest_as_one_process_does(tmp_path):
    """Several labels an image (tests/conftest.py's synthetic halves): the same model from two processes."""
    manifest = write_multilabel(tmp_path / "data", per_set=8)
    one = launch(["train", manifest, *RECIPE, "--out", str(tmp_path / "one")], tmp_path / "home", nproc=None)
    assert one.returncode == 0, one.stderr[-3000:]
    (tmp_path / "home2").mkdir()
    shutil.copy(tmp_path / "home" / "engines.json", tmp_path / "home2" / "engines.json")
    two = launch(["train", manifest, *RECIPE, "--out", str(tmp_path / "two")], tmp_path / "home2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert model_difference(tmp_path / "one", tmp_path / "two") < TOLERANCE
    tested = [json.loads((tmp_path / run / "metrics.json").read_text())["test"] for run in ("one", "two")]
    assert tested[0]["task"] == "multi-label" and tested[0]["per_label"].keys() == tested[1]["per_label"].keys()
    thresholds = [json.loads((tmp_path / run / "model.json").read_text())["thresholds"] for run in ("one", "two")]
    assert thresholds[0].keys() == thresholds[1].keys()
    assert all(abs(thresholds[0][name] - thresholds[1][name]) < 1e-3 for name in thresholds[0])


def predictions(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_predict_and_evaluate_under_torchrun_merge_one_output(data, one_process, tmp_path):
    run, home = one_process
    inputs = [str(data / "dog"), str(data / "cat"), str(tmp_path / "absent.jpg")]
    single = launch(["predict", str(run), *inputs, "--output", str(tmp_path / "one.csv")], home, nproc=None)
    double = launch(["predict", str(run), *inputs, "--output", str(tmp_path / "two.csv")], home)
    assert single.returncode == 1 and "absent.jpg" in single.stderr           # a missing input is reported
    assert double.returncode != 0 and double.stderr.count("skipped") == 1
    one, two = predictions(tmp_path / "one.csv"), predictions(tmp_path / "two.csv")
    assert len(two) == 61 and [row[:2] for row in two] == [row[:2] for row in one]     # header + 60, in order
    assert max(abs(float(a) - float(b)) for x, y in zip(one[1:], two[1:]) for a, b in zip(x[2:], y[2:])) < 1e-6
    # `vggtune predict --nproc 2` launches the same job itself.
    by_flag = subprocess.run([sys.executable, "-m", "vggtune", "predict", str(run), *inputs, "--output",
                              str(tmp_path / "flag.csv"), "--nproc", "2"], env=environment(home), capture_output=True,
                             text=True, timeout=TIMEOUT_S)
    # predict's documented exit 1 for a skipped input, not a launcher's failure banner (torchrun printed one)
    assert by_flag.returncode == 1 and by_flag.stderr.count("skipped") == 1, by_flag.stderr
    assert "Traceback" not in by_flag.stderr and "FAILED" not in by_flag.stderr and "Error" not in by_flag.stderr
    assert predictions(tmp_path / "flag.csv") == two
    evaluated = launch(["evaluate", str(run), "--data", str(data), "--output", str(tmp_path / "e.json")], home)
    assert evaluated.returncode == 0, evaluated.stderr
    assert (tmp_path / "e.html").is_file()                  # rank 0's report, the other rank waiting
    result = json.loads((tmp_path / "e.json").read_text())
    right = sum(row[1] == Path(row[0]).parent.name for row in one[1:])
    assert result["n"] == 60 and result["accuracy"] == pytest.approx(right / 60)
    labels = {row[0]: row[1] for row in one[1:]}
    merged = {row[1]: row[3] for row in predictions(tmp_path / "e.predictions.csv")[1:]}
    assert merged == {path: labels[path] for path in merged} and len(merged) == 60


def test_a_killed_rank_ends_the_job_and_resume_finishes_it(data, one_process, home, tmp_path):
    started = time.monotonic()
    result = launch(["train", str(data), *RECIPE, "--out", str(tmp_path / "run")], tmp_path / "home",
                    DIE_AT="1:finetune")
    assert result.returncode != 0
    assert time.monotonic() - started < TIMEOUT_S
    assert (tmp_path / "run" / "state" / "head-best.safetensors").is_file()
    assert not (tmp_path / "run" / "model.json").exists()
    resumed = launch(["train", "--resume", "--out", str(tmp_path / "run")], tmp_path / "home")
    assert resumed.returncode == 0, resumed.stderr
    assert "finetune  1/2" in resumed.stderr and "head  1/3" not in resumed.stderr    # the head stage was kept
    assert model_difference(one_process[0], tmp_path / "run") < TOLERANCE


def test_a_script_calling_the_python_api_under_torchrun(data, one_process, home, tmp_path):
    """torchrun script.py, where the script calls vggtune.train: it joins the job by itself."""
    result = launch(["api-train", str(data), str(tmp_path / "run")], tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["environment"]["processes"] == 2
    assert model_difference(one_process[0], tmp_path / "run") < TOLERANCE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_on_the_loopback_address(data, one_process, home, tmp_path):
    """Two torchrun agents (--nnodes 2), as on two hosts sharing a filesystem, meeting at one endpoint."""
    nodes = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=vggtune-test"]
    command = [sys.executable, "-m", "torch.distributed.run", *nodes, "--nproc-per-node=1", str(ENTRY),
               "train", str(data), *RECIPE, "--out", str(tmp_path / "run")]
    agents = [subprocess.Popen(command, env=environment(tmp_path / "home"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [agent.communicate(timeout=TIMEOUT_S) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert [agent.returncode for agent in agents] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum(out.count("test metrics") for out, _ in outputs) == 1
    assert model_difference(one_process[0], tmp_path / "run") < TOLERANCE


def test_nproc_flag_refusals(tmp_path, capsys, monkeypatch):
    from vggtune import cli
    from vggtune.errors import UserError
    assert cli._without_nproc(["train", "D", "--nproc", "2", "--out", "R", "--nproc=3"]) == ["train", "D", "--out", "R"]
    data = tmp_path / "data"                            # never read: the refusals come first
    data.mkdir()
    assert cli.main(["train", str(data), "--nproc", "0", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--nproc: received 0" in error
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")        # checked before any process starts
    assert cli.main(["train", str(data), "--nproc", "2", "--out", str(tmp_path / "used")]) == 2
    assert "already holds files" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["predict", str(tmp_path), "x.jpg", "--nproc", "2"]) == 2
    assert "already runs under torchrun" in capsys.readouterr().err
    from vggtune import api
    with pytest.raises(UserError, match="cv: runs as one process"):
        api.cv(str(tmp_path), out=str(tmp_path / "cv"))


def test_nproc_mistakes_found_before_the_processes_start_are_one_line(data, one_process, tmp_path, capsys,
                                                                      monkeypatch):
    """A one-class DATA, a missing --data, a folder that is no run: refused before any process starts
    (each rank printed the line, then torchrun's traceback, exit 1, about 10 s later)."""
    from vggtune import cli, cliapi
    monkeypatch.setattr(cliapi, "launch", lambda *a: pytest.fail("processes started"))
    one_class = tmp_path / "one"
    (one_class / "cat").mkdir(parents=True)
    (one_class / "cat" / "a.jpg").write_bytes((data / "cat" / "cat.0.jpg").read_bytes())
    run, _ = one_process
    for argv, says in ((["train", str(one_class), "--nproc", "2", "--out", str(tmp_path / "r")], "1 class(es)"),
                       (["evaluate", str(run), "--data", str(tmp_path / "absent"), "--nproc", "2"], "does not exist"),
                       (["predict", str(tmp_path), "x.jpg", "--nproc", "2"], "no model.json")):
        assert cli.main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and says in error, error


def test_a_mistake_the_processes_find_is_one_line_said_once(one_process, data, tmp_path):
    """Found by every rank: one line, exit 2, and no launcher traceback."""
    run, home = one_process
    done = subprocess.run([sys.executable, "-m", "vggtune", "predict", str(run), str(data / "cat"), "--kaggle",
                           "--format", "json", "--nproc", "2"], env=environment(home), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["vggtune predict: error: --kaggle writes Kaggle's CSV (id,label); "
                                                "received --format json; allowed: --kaggle alone, or --format json "
                                                "without it"]


def test_the_launcher_stops_the_others_when_a_process_fails(monkeypatch):
    """A rank that dies ends the job after the grace period, its status and a line naming it."""
    from vggtune import launcher
    started = []

    def start(arguments, processes, errors):
        code = ["import time; time.sleep(60)", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
        started.extend(subprocess.Popen([sys.executable, "-c", line]) for line in code)
        return started
    monkeypatch.setattr(launcher, "_start", start)
    monkeypatch.setattr(launcher, "GRACE_S", 1)
    begun = time.monotonic()
    status, lines = launcher.launch(["train"], 2)
    assert time.monotonic() - begun < 30
    assert status == 1 and lines == ["process 1 of 2 was stopped by SIGKILL"]
    assert started[0].returncode == -15                       # the sleeping one was stopped (SIGTERM)


@pytest.mark.integration
def test_nproc_shortcut_trains_on_real_weights_from_a_manifest(tmp_path):
    """`vggtune train --nproc 2` launches torchrun itself; a manifest picks 16 photos a class in place."""
    from conftest import require_real_weights, shared_data
    require_real_weights()
    source = shared_data("cats-vs-dogs-2k")
    rows = [(str(path), name) for name in ("cat", "dog") for path in sorted((source / name).iterdir())[:16]]
    manifest = tmp_path / "subset.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    command = [sys.executable, "-m", "vggtune", "train", str(manifest), "--nproc", "2", "--out", str(tmp_path / "run"),
               "--size", "64", "--epochs", "1", "--finetune-epochs", "1", "--quiet"]     # report on, engine auto
    env = environment(tmp_path / "home")
    env.pop("OMP_NUM_THREADS")                  # the launcher divides the cores itself
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S * 2)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["environment"]["processes"] == 2 and metrics["test"]["n"] == 4
    assert torch.isfinite(torch.tensor(metrics["test"]["log_loss"]))


def test_ranks_that_share_no_cache_folder_stop_with_one_line_naming_it(data, tmp_path):
    """Each rank fills its share of the views into a VGGTUNE_HOME of its own: after the barrier each misses
    the others' (`_check_visible`), and the job stops with one line, not a traceback."""
    result = launch(["train", str(data), *RECIPE, "--out", str(tmp_path / "run")], tmp_path / "home", HOME_PER_RANK="1")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("vggtune train: error:")]
    assert errors and "views written by other ranks" in errors[0] and "VGGTUNE_HOME on a filesystem every" in errors[0]
    assert (tmp_path / "home" / "rank0" / "features").is_dir() and (tmp_path / "home" / "rank1" / "features").is_dir()
