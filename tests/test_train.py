import json
import os

import numpy as np
import pytest
import torch

import vggtune
import vggtune.training.schedule as train_module

from vggtune.features.cache import FeatureCache
from vggtune.training.config import TrainConfig

from badfiles import write_unusable
from conftest import quick_config


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_run_directory_is_self_describing(tmp_path, dataset, tiny_weights):
    out = tmp_path / "run"
    results = train_module.fit(quick_config(dataset, out))
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "model.safetensors", "model.json",
                 "rejected.csv", "splits.json"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pt"))
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["head"] * 3 + ["finetune"] * 2
    assert results.test.accuracy >= 0.8
    assert set(results.test.to_dict()) >= {"accuracy", "precision_macro", "recall_macro", "f1", "roc_auc", "log_loss",
                                    "confusion_matrix"}
    description = json.loads((out / "model.json").read_text())
    assert description["classes"] == ["cat", "dog"] and description["weights"] == "tiny-test"


def test_loaded_predictor_agrees_with_training_evaluation(tmp_path, dataset, tiny_weights):
    out = tmp_path / "run"
    results = train_module.fit(quick_config(dataset, out))
    predictor = vggtune.load(out)
    paths = sorted(str(p) for p in (dataset / "dog").glob("*.jpg"))
    predictions, rejected = predictor.predict(paths + [str(tmp_path / "missing.jpg")])
    assert len(predictions) == len(paths) and rejected[0][1] == "file vanished before it could be read"
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in predictions)
    evaluated = vggtune.evaluate(str(out))
    assert evaluated.metrics.n == results.test.n
    # Training scores cached float16 features, the predictor the images: the same labels, the
    # same log loss to the third decimal.
    assert evaluated.metrics.confusion_matrix == results.test.confusion_matrix
    assert evaluated.metrics.log_loss == pytest.approx(results.test.log_loss, abs=1e-3)
    assert (out / "evaluation.json").is_file()


def test_same_seed_same_metrics(tmp_path, dataset, tiny_weights):
    train_module.fit(quick_config(dataset, tmp_path / "a"))
    train_module.fit(quick_config(dataset, tmp_path / "b"))
    assert read_jsonl(tmp_path / "a" / "metrics.jsonl") == read_jsonl(tmp_path / "b" / "metrics.jsonl")


@pytest.mark.parametrize("stop_at", [("head", 1), ("finetune", 0), ("finetune", 1)])
def test_resume_after_interruption_gives_the_same_result(tmp_path, dataset, tiny_weights, monkeypatch, stop_at):
    train_module.fit(quick_config(dataset, tmp_path / "whole"))
    real_epoch = train_module.train_epoch
    calls = []

    def interrupted(session, stage, net, optimizer, rng):
        calls.append(stage.name)
        if (stage.name, calls.count(stage.name) - 1) == stop_at:
            raise KeyboardInterrupt
        return real_epoch(session, stage, net, optimizer, rng)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.fit(quick_config(dataset, tmp_path / "cut"))
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    assert not (tmp_path / "cut" / "model.json").exists()
    vggtune.train(str(dataset), out=str(tmp_path / "cut"), resume=True, quiet=True)
    assert read_jsonl(tmp_path / "cut" / "metrics.jsonl") == read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["test"]
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())["test"]
    assert resumed["log_loss"] == whole["log_loss"]


def test_bad_files_are_skipped_and_listed_not_fatal(tmp_path, dataset, tiny_weights):
    expected = write_unusable(dataset / "cat", np.random.default_rng(1))
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, finetune_epochs=0))
    listed = (out / "rejected.csv").read_text()
    for path in expected:
        assert path.name in listed


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_stops_at_the_right_epoch_and_keeps_the_best(tmp_path, dataset, tiny_weights, patience):
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, epochs=30, finetune_epochs=0, patience=patience, lr=0.05,
                                  keep_state=True))
    losses = [row["val_loss"] for row in read_jsonl(out / "metrics.jsonl")]
    best, since_best = 0, 0
    for epoch in range(1, len(losses)):
        best, since_best = (epoch, 0) if losses[epoch] < losses[best] else (best, since_best + 1)
        assert since_best < patience or epoch == len(losses) - 1, "trained on past its patience"
    assert len(losses) < 30 and since_best == patience          # stopped exactly when patience ran out
    from vggtune.fsutil import load_tensors
    saved, _ = load_tensors(out / "model.safetensors")
    kept, _ = load_tensors(out / "state" / "head-best.safetensors")
    assert {k.removeprefix("param.") for k in kept} == {k for k in saved if k.startswith("head.")}
    assert all(torch.equal(saved[k.removeprefix("param.")], v) for k, v in kept.items())
    head_only = dict(saved)
    state, _ = load_tensors(out / "state" / "head-last.safetensors")
    assert any(not torch.equal(head_only[k.removeprefix("param.")], v) for k, v in state.items()
               if k.startswith("param."))                        # the last epoch's weights were not kept


def test_no_cache_recomputes_and_still_learns(tmp_path, dataset, tiny_weights, isolated_home):
    results = train_module.fit(quick_config(dataset, tmp_path / "run", no_cache=True))
    assert not (isolated_home / "features").exists()
    assert results.test.accuracy >= 0.8


def test_three_classes_use_softmax(tmp_path, tiny_weights):
    from conftest import make_dataset
    data = make_dataset(tmp_path / "d", n_per_class=20, classes=("a", "b", "c"))
    results = train_module.fit(quick_config(data, tmp_path / "run", head="gap", epochs=8, lr=1e-2))
    assert results.test.roc_auc is None and "roc_auc" not in results.test.to_dict()
    assert len(results.test.confusion_matrix) == 3 and results.test.n == 12
    assert results.test.accuracy >= 10 / 12 and results.val.accuracy >= 10 / 12
    predictor = vggtune.load(tmp_path / "run")
    import torch as t
    assert predictor.model(t.zeros(2, 3, 32, 32)).shape == (2, 3)        # one softmax unit per class
    predictions, _ = predictor.predict([str(next((data / "c").glob("*.jpg")))])
    assert set(predictions[0].probabilities) == {"a", "b", "c"}


def test_config_errors_name_what_is_allowed():
    with pytest.raises(vggtune.UserError, match=r"--head: received 'dense'; allowed: auto, flatten, gap, places"):
        TrainConfig(data=".", head="dense")
    with pytest.raises(vggtune.UserError, match="--size: received 100"):
        TrainConfig(data=".", size=100)


def test_no_test_split_still_trains_and_reports_validation(tmp_path, dataset, tiny_weights):
    results = train_module.fit(quick_config(dataset, tmp_path / "run", test_split=0.0, finetune_epochs=1))
    assert results.test is None and results.val.n == 12


def test_finetuning_two_blocks_trains_from_the_block3_cache(tmp_path, dataset, tiny_weights, isolated_home):
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, finetune_blocks=2, finetune_epochs=1, keep_state=True))
    cuts = sorted(p.name.split("-")[0] for p in (isolated_home / "features").iterdir())
    assert cuts == ["block3", "block5"]
    from vggtune.fsutil import load_tensors
    tensors, _ = load_tensors(out / "state" / "finetune-best.safetensors")
    assert {k.split(".")[2] for k in tensors if k.startswith("param.backbone")} == {"block4", "block5"}


def test_test_images_are_extracted_to_the_final_cut_only_and_timed_per_split(tmp_path, dataset, tiny_weights,
                                                                             isolated_home):
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, views=2))
    splits = json.loads((out / "splits.json").read_text())
    entries = {}
    for folder in (isolated_home / "features").iterdir():
        key = json.loads((folder / "key.json").read_text())
        entries[key["cut"]] = len(FeatureCache(isolated_home / "features", key).index())
    # Held-out images at the final cut: the clean view and its mirror image (test-time augmentation, on by
    # default); at block5 the head stage's epochs score the validation images' clean view alone.
    train_views, val, test = 2 * len(splits["train"]), len(splits["val"]), len(splits["test"])
    assert test > 0 and entries == {"block4": train_views + 2 * val + 2 * test, "block5": train_views + val}
    timing = json.loads((out / "metrics.json").read_text())["timing"]
    assert {"features_train_s", "features_val_s", "features_test_s", "score_test_s"} <= set(timing)


def test_checkpoints_cut_short_by_a_kill_are_removed_fresh_ones_kept(tmp_path):
    import os
    import time
    from vggtune.training.rundir import RunDir
    state = tmp_path / "run" / "state"
    state.mkdir(parents=True)
    stale, fresh = state / ".finetune-last.safetensors.ab12.tmp", state / ".head-last.safetensors.cd34.tmp"
    stale_top = tmp_path / "run" / ".metrics.json.ef56.tmp"
    for leftover in (stale, fresh, stale_top):
        leftover.write_bytes(b"x" * 100)
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    os.utime(stale_top, (an_hour_ago, an_hour_ago))
    RunDir(tmp_path / "run").make()
    assert not stale.exists() and not stale_top.exists() and fresh.exists()


def test_a_file_lost_during_a_no_cache_run_is_listed_in_rejected_csv(tmp_path, dataset, tiny_weights, monkeypatch):
    from vggtune.training import session
    real_gather = session.gather_data
    lost = []

    def gather_then_lose_one(config):
        splits = real_gather(config)
        lost.append(splits.train[0].path)
        os.unlink(lost[0])                 # after the scan, before the first epoch reads it
        return splits

    monkeypatch.setattr(session, "gather_data", gather_then_lose_one)
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, no_cache=True, finetune_epochs=0))
    rows = (out / "rejected.csv").read_text().splitlines()
    assert rows.count(f"{lost[0]},file vanished before it could be read,unreadable,data") == 1


def test_damaged_cache_shards_are_computed_again_and_counted(tmp_path, dataset, tiny_weights, isolated_home, capsys):
    train_module.fit(quick_config(dataset, tmp_path / "first", finetune_epochs=0))
    shard = sorted((isolated_home / "features").glob("block5-*/shard-*.npy"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-16:] = b"\x01" * 16
    shard.write_bytes(bytes(raw))
    capsys.readouterr()
    train_module.fit(quick_config(dataset, tmp_path / "second", finetune_epochs=0, quiet=False))
    assert json.loads((tmp_path / "second" / "metrics.json").read_text())["timing"]["damaged_cache_shards"] == 1
    assert "1 damaged shards failed their checksum" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "second" / "metrics.jsonl") == read_jsonl(tmp_path / "first" / "metrics.jsonl")


def test_run_files_get_the_usual_permissions(tmp_path, dataset, tiny_weights):
    previous = os.umask(0o022)
    try:
        train_module.fit(quick_config(dataset, tmp_path / "run", finetune_epochs=1, keep_state=True))
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert {"model.safetensors", "model.json", "head-best.safetensors", "config.yaml"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


def test_separate_validation_folder_and_no_flip(tmp_path, tiny_weights, isolated_home):
    from conftest import make_dataset
    train = make_dataset(tmp_path / "train", n_per_class=8)
    val = make_dataset(tmp_path / "val", n_per_class=0)
    from conftest import synthetic_image
    for label, name in enumerate(("cat", "dog")):
        for i in (20, 21, 22):
            synthetic_image(label, i).save(val / name / f"{name}.{i}.jpg")
    out = tmp_path / "run"
    vggtune.train(str(train), out=str(out), val_data=str(val), test_split=0.0, augment={"flip": False},
                  epochs=2, finetune_epochs=0, size=32, batch_size=8, hidden=16, quiet=True)
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(os.path.basename(r["path"]) for r in splits["val"]) == sorted(
        f"{n}.{i}.jpg" for n in ("cat", "dog") for i in (20, 21, 22))
    assert len(splits["train"]) == 16 and splits["test"] == []
    assert "flip: false" in (out / "config.yaml").read_text()
    flipped = tmp_path / "flipped"
    vggtune.train(str(train), out=str(flipped), val_data=str(val), test_split=0.0,
                  epochs=2, finetune_epochs=0, size=32, batch_size=8, hidden=16, quiet=True)
    from vggtune.features.cache import FeatureCache
    entries = set()
    for folder in (isolated_home / "features").glob("block5-*"):
        entries |= {e.split("/")[1] for e in FeatureCache.existing(folder).index()}
    # One augmented view per setting, each its own entry; the clean view and its mirror image are shared.
    assert len(entries - {"clean", "clean-mirror"}) == 2


def test_checkpoints_are_written_as_the_tensors_were_when_asked(tmp_path):
    """The next epoch trains while the last one's state is written: what lands is the state at the
    time of asking, and a write's error reaches the training thread, not a log nobody reads."""
    from vggtune.errors import UserError
    from vggtune.fsutil import load_tensors
    from vggtune.training.checkpoints import Checkpoints
    parameters, progress = torch.ones(100_000), {"epoch": 1, "history": [{"loss": 0.5}]}
    checkpoints = Checkpoints()
    checkpoints.save(tmp_path / "last.safetensors", {"param.x": parameters}, {"progress": progress})
    parameters.mul_(3)                          # the next epoch's optimiser step, in place
    progress["history"].append({"loss": 0.4})
    checkpoints.wait()
    tensors, metadata = load_tensors(tmp_path / "last.safetensors")
    assert torch.equal(tensors["param.x"], torch.ones(100_000))
    assert metadata["progress"] == {"epoch": 1, "history": [{"loss": 0.5}]}
    checkpoints.save(tmp_path / "missing-folder" / "last.safetensors", {"param.x": parameters})
    with pytest.raises(UserError, match="cannot write"):
        checkpoints.close()
