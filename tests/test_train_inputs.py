"""Training from what the unit tests check alone: a CSV manifest, and features cached as uint8."""

import json

import pytest

from vggtune import cli
from vggtune.training import schedule as training

from conftest import make_dataset, quick_config


def write_manifest(path, rows) -> None:
    path.write_text("\n".join(",".join(row) for row in [("path", "label", "split"), *rows]) + "\n")


def rows_of(split=lambda name, i: ""):
    return [(f"images/{name}/{name}.{i}.jpg", name, split(name, i)) for name in ("cat", "dog") for i in range(20)]


def test_a_run_trains_from_a_manifest_and_evaluates_on_another(tmp_path, tiny_weights):
    make_dataset(tmp_path / "images", n_per_class=20)
    write_manifest(tmp_path / "m.csv", rows_of(lambda name, i: "test" if i < 5 else ""))
    results = training.fit(quick_config(tmp_path / "m.csv", tmp_path / "run", test_split=0.0))
    saved = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert results.test.n == 10 and len(saved["test"]) == 10
    assert all(row["path"].rsplit(".", 2)[-2] in "01234" for row in saved["test"])
    write_manifest(tmp_path / "other.csv", rows_of()[15:25])
    assert cli.main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "other.csv"), "--no-report"]) == 0
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text())["n"] == 10


def test_a_run_trains_on_uint8_features(tmp_path, tiny_weights, isolated_home):
    first = training.fit(quick_config(make_dataset(tmp_path / "d", n_per_class=15), tmp_path / "f16"))
    second = training.fit(quick_config(tmp_path / "d", tmp_path / "u8", feature_storage="uint8"))
    storages = sorted(json.loads(p.read_text())["storage"] for p in (isolated_home / "features").glob("*/key.json"))
    assert storages == ["float16", "float16", "uint8", "uint8"]          # block4 and block5 each
    assert second.test.log_loss == pytest.approx(first.test.log_loss, abs=0.05)
