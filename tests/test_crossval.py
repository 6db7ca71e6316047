"""`vggtune cv`: k folds, every image a test image exactly once, one extraction for all folds."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import vggtune
from vggtune.results import crossval
from vggtune.data import dataset as data
from vggtune.data import discovery
from vggtune.cli import main
from vggtune.features.cache import FeatureCache
from vggtune.training.config import TrainConfig
from vggtune.errors import UserError

from conftest import make_dataset, quick_config

TINY = dict(epochs=2, finetune_epochs=1, size=32, batch_size=8, views=2, hidden=16, val_split=0.2, quiet=True,
            lr=1e-2, finetune_lr=1e-3, dropout=0.0)


def test_folds_partition_the_images_and_keep_classes_balanced(tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=11)
    found = discovery.discover(root)
    items, _ = data.scan(found)
    tested = []
    for k in range(1, 4):
        train, val, test = data.fold_split(items, (k, 3), 0.2, seed=7)
        assert not {i.path for i in test} & {i.path for i in train + val}
        assert len(train) + len(val) + len(test) == len(items)
        per_class = [sum(1 for i in test if i.label == label) for label in (0, 1)]
        assert sorted(per_class) in ([3, 3], [3, 4], [4, 4])        # 11 per class in 3 folds: 4, 4, 3
        tested += [i.path for i in test]
    assert sorted(tested) == sorted(i.path for i in items)          # each image tested exactly once


def test_cv_pools_out_of_fold_predictions_and_extracts_each_view_once(tmp_path, tiny_weights, isolated_home):
    root = make_dataset(tmp_path / "data", n_per_class=10)
    result = vggtune.cv(str(root), out=str(tmp_path / "cv"), folds=3, **TINY)
    assert [row.fold for row in result.per_fold] == [1, 2, 3]
    assert result.pooled.n == 20 == sum(row.metrics.n for row in result.per_fold)
    low, high = result.intervals_95.accuracy
    assert low <= result.pooled.accuracy <= high
    with open(tmp_path / "cv" / "cv_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in root.rglob("*.jpg"))
    assert json.loads((tmp_path / "cv" / "cv.json").read_text()) == result.to_dict()
    # Each image's clean view and its two augmented views were extracted once, by whichever fold came first.
    reuse = [json.loads((tmp_path / "cv" / f"fold-{k}" / "metrics.json").read_text())["environment"]["feature_cache"]
             for k in (1, 2, 3)]
    stored = sum(len(FeatureCache.existing(folder).index()) for folder in (isolated_home / "features").glob("block4-*"))
    assert sum(r["views_computed"] for r in reuse) == stored                  # none computed twice
    assert sum(r["views_wanted"] for r in reuse) > 2 * stored                 # most read from the cache
    # Every fold folder is an ordinary run: it predicts on its own.
    assert vggtune.load(str(tmp_path / "cv" / "fold-2")).classes == ["cat", "dog"]


def test_cv_keeps_finished_folds_and_refuses_other_options_in_the_same_folder(tmp_path, tiny_weights, monkeypatch):
    root = make_dataset(tmp_path / "data", n_per_class=8)
    first = vggtune.cv(str(root), out=str(tmp_path / "cv"), folds=2, **TINY)
    trained = []
    monkeypatch.setattr("vggtune.training.schedule.fit", lambda config, resume=False: trained.append(config))
    again = vggtune.cv(str(root), out=str(tmp_path / "cv"), folds=2, **TINY)
    assert trained == [] and again.pooled == first.pooled
    assert [row.seconds for row in again.per_fold] == [row.seconds for row in first.per_fold]
    with pytest.raises(UserError, match="other options"):
        vggtune.cv(str(root), out=str(tmp_path / "cv"), folds=2, **dict(TINY, epochs=3))


def test_cv_resumes_an_interrupted_fold(tmp_path, tiny_weights):
    root = make_dataset(tmp_path / "data", n_per_class=8)
    config = crossval.fold_config(TrainConfig.from_recipe(data=str(root), out=str(tmp_path / "cv"), **TINY), 1, 2)
    Path(config.run.out).mkdir(parents=True)
    from vggtune.training.config import save_config
    save_config(config, Path(config.run.out) / "config.yaml")            # started, stopped before the first epoch
    result = vggtune.cv(str(root), out=str(tmp_path / "cv"), folds=2, **TINY)
    assert result.pooled.n == 16


def test_cv_command_prints_folds_and_pooled_figures(tmp_path, tiny_weights, capsys):
    root = make_dataset(tmp_path / "data", n_per_class=8)
    flags = ["--epochs", "1", "--finetune-epochs", "0", "--size", "32", "--hidden", "8", "--quiet"]
    assert main(["cv", str(root), "--folds", "2", "--out", str(tmp_path / "cv"), *flags]) == 0
    printed = capsys.readouterr().out
    assert "pooled over 16 images" in printed and "accuracy" in printed
    assert main(["cv", str(root), "--folds", "1", "--out", str(tmp_path / "cv1"), *flags]) == 2
    assert "--folds: received 1" in capsys.readouterr().err
    with pytest.raises(UserError, match="each fold is a test split"):
        vggtune.cv(str(root), out=str(tmp_path / "cv2"), folds=2, test_data=str(root))


def test_more_folds_than_a_class_has_images_is_refused_before_any_training(tmp_path, tiny_weights, capsys):
    root = make_dataset(tmp_path / "data", n_per_class=8)
    (root / "dog" / "dog.7.jpg").unlink()                        # dog: 7 images
    flags = ["--epochs", "1", "--finetune-epochs", "0", "--size", "32", "--hidden", "8", "--quiet"]
    assert main(["cv", str(root), "--folds", "30", "--out", str(tmp_path / "cv"), *flags]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "--folds: received 30, but class 'dog' has 7 images; allowed: at most 7 folds" in error
    assert not (tmp_path / "cv").exists()                         # nothing trained, nothing written


def test_fold_fields_are_checked():
    with pytest.raises(UserError, match="cv_fold"):
        quick_config(Path("d"), Path("o"), cv_folds=3, cv_fold=4)
