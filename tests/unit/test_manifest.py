"""Datasets from a CSV manifest (path,label[,split]): its rows, its bad rows, its splits, a run trained on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vggtune import api, cli
from vggtune.data.items import MANIFEST_ROW, UNREADABLE

from vggtune.data import dataset as data
from vggtune.data import discovery

from vggtune.training import schedule as training
from vggtune.errors import UserError

from conftest import make_dataset, quick_config


def write_manifest(path, rows, header=("path", "label", "split")) -> None:
    path.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n")


@pytest.fixture
def images(tmp_path):
    return make_dataset(tmp_path / "images", n_per_class=20)


def rows_of(images, split=lambda name, i: ""):
    """Relative paths (from tmp_path), each with its class and the split `split` gives it."""
    return [(f"images/{name}/{name}.{i}.jpg", name, split(name, i)) for name in ("cat", "dog") for i in range(20)]


def test_rows_become_files_relative_to_the_csv_or_absolute(tmp_path, images):
    rows = rows_of(images)[:3] + [(str(images / "dog" / "dog.0.jpg"), "dog", "")]
    write_manifest(tmp_path / "m.csv", rows)
    found = discovery.discover(tmp_path / "m.csv")
    assert found.classes == ["cat", "dog"] and found.manifest
    assert [path for path, _ in found.files] == [str(images / "cat" / f"cat.{i}.jpg") for i in range(3)] + [
        str(images / "dog" / "dog.0.jpg")]


def test_bad_rows_are_rejected_with_their_line_and_the_rest_is_used(tmp_path, images, capsys):
    rows = rows_of(images)[:36] + [
        ("images/cat/absent.jpg", "cat", ""),           # no such file
        ("images/dog/dog.18.jpg", "", ""),              # empty label
        ("images/dog/dog.19.jpg", "dog", "holdout"),    # a split that is not one
        ("", "dog", ""),                                # no path
    ]
    write_manifest(tmp_path / "m.csv", rows)
    assert cli.main(["data", "check", str(tmp_path / "m.csv")]) == 1
    assert "36 usable images in 2 classes, 4 rejected" in capsys.readouterr().out
    result = api.check_data(str(tmp_path / "m.csv"))
    assert [folder.images for folder in result.folders] == [36] and not result.clean
    by_path = {Path(row.path).name: row for row in result.rejected}
    assert by_path["absent.jpg"].kind == UNREADABLE and "named in the manifest" in by_path["absent.jpg"].reason
    assert {by_path[name].kind for name in ("dog.18.jpg", "dog.19.jpg", "manifest line 41")} == {MANIFEST_ROW}
    assert "line 39" in by_path["dog.18.jpg"].reason and "line 40" in by_path["dog.19.jpg"].reason


@pytest.mark.parametrize("header, received", [(("file", "class"), "['file', 'class']"),
                                              (("path", "category"), "['path', 'category']")])
def test_a_manifest_without_path_and_label_columns_is_one_line(tmp_path, images, capsys, header, received):
    write_manifest(tmp_path / "m.csv", [("images/cat/cat.0.jpg", "cat")], header=header)
    assert cli.main(["data", "check", str(tmp_path / "m.csv")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and received in error and "allowed: a header row with path and label" in error


def test_the_split_column_decides_val_and_test(tmp_path, images):
    split = lambda name, i: "test" if i < 4 else "val" if i < 7 else "train"    # noqa: E731
    write_manifest(tmp_path / "m.csv", rows_of(images, split))
    splits = data.prepare_splits(tmp_path / "m.csv", None, None, 0.1, 0.1, seed=0)
    names = lambda items: sorted(item.path.rsplit("/", 1)[1] for item in items)    # noqa: E731
    assert names(splits.test) == sorted(f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(4))
    assert names(splits.val) == sorted(f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(4, 7))
    assert len(splits.train) == 26
    with pytest.raises(UserError, match="already names 6 val rows"):
        data.prepare_splits(tmp_path / "m.csv", images, None, 0.1, 0.1, seed=0)
    with pytest.raises(UserError, match="no test rows for cross-validation"):
        data.prepare_splits(tmp_path / "m.csv", None, None, 0.1, 0.1, seed=0, fold=(1, 5))
