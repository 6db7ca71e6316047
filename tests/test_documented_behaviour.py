"""What the README promises and no other test holds it to: `report --data`, `explain`'s default
folder, Ctrl-C's exit status, `--device cuda` on a machine without a GPU, and that the seed decides
the split."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from vggtune import cli
from vggtune.data import dataset as data
from vggtune.training.rundir import RunDir

from conftest import make_dataset, synthetic_image, tiny_state_dict, train_reported


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import tiny_weights_for_module
    root = tmp_path_factory.mktemp("claims")
    with tiny_weights_for_module(root / "home"):
        dataset = make_dataset(root / "data", n_per_class=20, classes=("cat", "dog", "fox"))
        train_reported(dataset, root / "run", finetune_epochs=1)
        yield root / "run"


def test_report_data_judges_another_folder_and_leaves_the_model_card_alone(run, tmp_path, capsys):
    other = make_dataset(tmp_path / "other", n_per_class=4, classes=("dog",))
    card = (run / "README.md").read_text()
    out = tmp_path / "other.html"
    assert cli.main(["report", str(run), "--data", str(other), "--out", str(out)]) == 0
    page = out.read_text()
    assert "judged on" in page and "other" in page and "Evaluated: " in page
    assert "model card" not in capsys.readouterr().out               # a card is only for the run's own split
    assert (run / "README.md").read_text() == card


def test_explain_writes_its_overlays_into_the_run_by_default(run, tmp_path, capsys):
    image = tmp_path / "fox-photo.jpg"
    synthetic_image(2, 77, size=(64, 48)).save(image)
    assert cli.main(["explain", str(run), str(image)]) == 0
    assert (run / "explain" / "fox-photo.gradcam.png").is_file()
    assert "explain/fox-photo.gradcam.png" in capsys.readouterr().out


def test_device_cuda_without_a_gpu_is_one_line(run, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")           # CI's machines have none, so it runs there
    assert cli.main(["train", str(run.parent / "data"), "--out", str(run.parent / "gpu"), "--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--device: received 'cuda' but no CUDA device is visible" in error
    assert not (run.parent / "gpu").exists()


def test_ctrl_c_stops_training_with_status_130_and_the_run_resumes(tmp_path):
    dataset = make_dataset(tmp_path / "data", n_per_class=40)
    weights = tmp_path / "tiny.safetensors"
    save_file(tiny_state_dict(), str(weights))
    env = dict(os.environ, VGGTUNE_HOME=str(tmp_path / "home"), VGGTUNE_OFFLINE="1")
    out = tmp_path / "run"
    flags = ["--size", "32", "--epochs", "30", "--finetune-epochs", "0", "--hidden", "8", "--patience", "0",
             "--weights", str(weights), "--no-report"]
    # Ctrl-C as a terminal delivers it: a suite started in the background (`make test &`) ignores SIGINT,
    # and a child would inherit that and train on to the end.
    process = subprocess.Popen([sys.executable, "-m", "vggtune", "train", str(dataset), "--out", str(out), *flags],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file():           # an epoch is done: training, not start-up
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    # the real folder, to copy and paste (it said `--out RUN`)
    assert err.strip().splitlines()[-1] == f"vggtune train: interrupted; `vggtune train --resume --out {out}` continues this run"
    assert not (out / "model.json").exists()
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet"]) == 0       # nothing lost
    assert len(RunDir(out).history()) == 30 and (out / "model.json").is_file()


def test_the_seed_decides_the_split(tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=30)
    split = {seed: data.prepare_splits(root, None, None, 0.2, 0.2, seed=seed) for seed in (1, 2)}
    again = data.prepare_splits(root, None, None, 0.2, 0.2, seed=1)
    paths = {seed: [item.path for item in s.val] for seed, s in split.items()}
    assert paths[1] == [item.path for item in again.val]              # the same seed, the same split
    assert paths[1] != paths[2] and len(paths[1]) == len(paths[2]) == 12     # another seed, another one
    for s in split.values():                                         # stratified either way
        assert [sum(1 for item in s.val if item.label == c) for c in (0, 1)] == [6, 6]


# `vggtune train` that sends itself SIGTERM right after the N-th batch of features reaches the cache
# writer: the moment is exact, whatever the machine's speed.
TERMINATE_AFTER = """
import os, signal, sys
from vggtune.features.cache import ShardWriter
real_add, count = ShardWriter.add, [0]

def add(self, entries, features):
    real_add(self, entries, features)
    count[0] += 1
    if count[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGTERM)

ShardWriter.add = add
from vggtune.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_during_extraction_keeps_the_views_computed_and_exits_143(tmp_path):
    from vggtune.features.cache import FeatureCache
    dataset = make_dataset(tmp_path / "data", n_per_class=20)
    weights = tmp_path / "tiny.safetensors"
    save_file(tiny_state_dict(), str(weights))
    home = tmp_path / "home"
    env = dict(os.environ, VGGTUNE_HOME=str(home), VGGTUNE_OFFLINE="1")
    flags = ["--size", "32", "--epochs", "2", "--finetune-epochs", "0", "--hidden", "8", "--views", "1",
             "--batch-size", "8", "--weights", str(weights), "--no-report", "--no-tta"]
    done = subprocess.run([sys.executable, "-c", TERMINATE_AFTER, "3", "train", str(dataset), "--out",
                           str(tmp_path / "run"), *flags], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("vggtune train: interrupted; `vggtune train --resume")
    stored = sum(len(FeatureCache.existing(folder).index()) for folder in (home / "features").iterdir())
    assert stored == 24                          # three batches of 8 views, none lost with the buffer
