import json

import numpy as np
import pytest

import vggtune
import vggtune.training as train_module

from vggtune.cache import FeatureCache
from vggtune.config import TrainConfig

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
    assert results["test"]["accuracy"] >= 0.8
    assert set(results["test"]) >= {"accuracy", "precision_macro", "recall_macro", "f1", "roc_auc", "log_loss",
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
    assert evaluated["n"] == results["test"]["n"]
    assert evaluated["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1 / evaluated["n"] + 1e-9)
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

    def interrupted(session, stage, optimizer, rng):
        calls.append(stage.name)
        if (stage.name, calls.count(stage.name) - 1) == stop_at:
            raise KeyboardInterrupt
        return real_epoch(session, stage, optimizer, rng)

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


def test_early_stopping_stops_a_stage(tmp_path, dataset, tiny_weights):
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, epochs=30, finetune_epochs=0, patience=1, lr=0.05))
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) < 30


def test_no_cache_recomputes_and_still_learns(tmp_path, dataset, tiny_weights, isolated_home):
    results = train_module.fit(quick_config(dataset, tmp_path / "run", no_cache=True))
    assert not (isolated_home / "features").exists()
    assert results["test"]["accuracy"] >= 0.8


def test_three_classes_use_softmax(tmp_path, tiny_weights):
    from conftest import make_dataset
    data = make_dataset(tmp_path / "d", n_per_class=10, classes=("a", "b", "c"))
    results = train_module.fit(quick_config(data, tmp_path / "run", head="gap", epochs=8, lr=1e-2))
    assert "roc_auc" not in results["test"]
    assert len(results["test"]["confusion_matrix"]) == 3


def test_config_errors_name_what_is_allowed():
    with pytest.raises(vggtune.UserError, match=r"--head: received 'dense'; allowed: flatten, gap"):
        TrainConfig(data=".", head="dense")
    with pytest.raises(vggtune.UserError, match="--size: received 100"):
        TrainConfig(data=".", size=100)


def test_no_test_split_still_trains_and_reports_validation(tmp_path, dataset, tiny_weights):
    results = train_module.fit(quick_config(dataset, tmp_path / "run", test_split=0.0, finetune_epochs=1))
    assert "test" not in results and results["val"]["n"] == 12


def test_finetuning_two_blocks_trains_from_the_block3_cache(tmp_path, dataset, tiny_weights, isolated_home):
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, finetune_blocks=2, finetune_epochs=1))
    cuts = sorted(p.name.split("-")[0] for p in (isolated_home / "features").iterdir())
    assert cuts == ["block3", "block5"]
    from vggtune.rundir import load_tensors
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
    train_views, val, test = 2 * len(splits["train"]), len(splits["val"]), len(splits["test"])
    assert test > 0 and entries == {"block4": train_views + val + test, "block5": train_views + val}
    timing = json.loads((out / "metrics.json").read_text())["timing"]
    assert {"features_train_s", "features_val_s", "features_test_s", "score_test_s"} <= set(timing)


def test_checkpoints_cut_short_by_a_kill_are_removed_fresh_ones_kept(tmp_path):
    import os
    import time
    from vggtune.rundir import make_dirs
    state = tmp_path / "run" / "state"
    state.mkdir(parents=True)
    stale, fresh = state / ".finetune-last.safetensors.ab12.tmp", state / ".head-last.safetensors.cd34.tmp"
    stale_top = tmp_path / "run" / ".metrics.json.ef56.tmp"
    for leftover in (stale, fresh, stale_top):
        leftover.write_bytes(b"x" * 100)
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    os.utime(stale_top, (an_hour_ago, an_hour_ago))
    make_dirs(tmp_path / "run")
    assert not stale.exists() and not stale_top.exists() and fresh.exists()
