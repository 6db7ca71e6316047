"""Safe loading and resource failures: clear errors, no code run, earlier work intact."""
import contextlib
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vggtune
import vggtune.training.schedule as training
from vggtune import cli, fsutil
from vggtune.features import cache

from conftest import make_dataset, quick_config, tiny_weights_for_module


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    with tiny_weights_for_module(root / "home"):
        training.fit(quick_config(make_dataset(root / "data", n_per_class=30), root / "run", finetune_epochs=1))
    return root / "run"


@pytest.fixture
def finished_run(trained_once, tmp_path):
    """A copy of one finished run for each test to tamper with."""
    return Path(shutil.copytree(trained_once, tmp_path / "run"))


def one_line_error(capsys, argv, *words):
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("tamper,words", [
    (lambda d: "not json {", ["not valid JSON"]),
    (lambda d: json.dumps({**d, "format": "something-else/9"}), ["format 'something-else/9'"]),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "preprocessing"}), ["missing or malformed field"]),
    (lambda d: json.dumps({**d, "classes": ["only-one"]}), ["allowed: at least 2 classes"]),
])
def test_tampered_model_json_gives_one_clear_error(finished_run, capsys, tamper, words):
    path = finished_run / "model.json"
    path.write_text(tamper(json.loads(path.read_text())))
    one_line_error(capsys, ["predict", finished_run, finished_run / "config.yaml"], *words)


def test_wrong_shaped_tensor_in_model_is_refused(finished_run, capsys):
    tensors = {k: v.contiguous() for k, v in vggtune.load(finished_run).model.state_dict().items()}
    tensors["head.out.weight"] = torch.zeros(3, 16)
    save_file(tensors, str(finished_run / "model.safetensors"))
    one_line_error(capsys, ["evaluate", finished_run], "does not match model.json")


def test_model_file_that_is_a_pickle_is_refused(finished_run, capsys):
    import pickle
    (finished_run / "model.safetensors").write_bytes(pickle.dumps({"x": np.zeros(3)}))
    one_line_error(capsys, ["evaluate", finished_run], "not a readable safetensors file")


def test_damaged_resume_state_is_a_clear_error(tmp_path, tiny_weights, dataset, capsys, monkeypatch):
    out = tmp_path / "run"
    real_epoch = training.train_epoch
    calls = []

    def stop_in_finetune(session, stage, *rest):
        calls.append(stage.name)
        if stage.name == "finetune":
            raise KeyboardInterrupt
        return real_epoch(session, stage, *rest)

    monkeypatch.setattr(training, "train_epoch", stop_in_finetune)
    with pytest.raises(KeyboardInterrupt):
        training.fit(quick_config(dataset, out))
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    (out / "state" / "head-last.safetensors").write_bytes(b"garbage" * 10)
    one_line_error(capsys, ["train", "--resume", "--out", out], "head-last.safetensors", "not a readable safetensors file")


def test_full_cache_disk_is_one_error_and_earlier_cache_survives(tmp_path, tiny_weights, dataset, capsys,
                                                                 monkeypatch, isolated_home):
    training.fit(quick_config(dataset, tmp_path / "first", finetune_epochs=0))
    before = {p: p.read_bytes() for p in (isolated_home / "features").rglob("shard-*")}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.np, "save", disk_full)
    one_line_error(capsys, ["train", dataset, "--out", tmp_path / "second", "--size", "32", "--views", "3",
                            "--rotation", "5", "--quiet"], "feature cache", "No space left on device")
    after = {p: p.read_bytes() for p in (isolated_home / "features").rglob("shard-*")}
    assert after == before                                   # nothing lost, nothing half-written added
    assert not list((isolated_home / "features").rglob(".shard-*.tmp"))
    assert vggtune.load(tmp_path / "first").predict([str(next(dataset.rglob("*.jpg")))])[0]


def test_unwritable_output_folder_is_one_error_and_writes_nothing(tmp_path, tiny_weights, dataset, capsys, monkeypatch):
    @contextlib.contextmanager
    def refuse(path):                  # no file can be created: every writer goes through atomic_path
        raise PermissionError(errno.EACCES, "Permission denied")
        yield

    monkeypatch.setattr(fsutil, "atomic_path", refuse)
    one_line_error(capsys, ["train", dataset, "--out", tmp_path / "run", "--size", "32", "--quiet"],
                   "Permission denied", "writable")
    assert not [p for p in tmp_path.glob("run/**/*") if p.is_file()]


def test_full_run_folder_mid_training_is_one_error_and_resume_finishes(tmp_path, tiny_weights, dataset, capsys,
                                                                        monkeypatch):
    import safetensors.torch
    real_save = safetensors.torch.save_file     # the writer, called once per tensor file written
    calls = []

    def full_after_three(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_after_three)
    out = tmp_path / "run"
    one_line_error(capsys, ["train", dataset, "--out", out, "--size", "32", "--epochs", "3", "--finetune-epochs", "1",
                            "--hidden", "16", "--quiet"], "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert cli.main(["train", "--resume", "--out", str(out)]) == 0
    assert (out / "model.json").is_file()
