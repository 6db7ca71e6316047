"""`vggtune data audit`: out-of-fold scores ranked by cleanlab, off-topic images, cross-class near-duplicates,
the page, issues.csv and a cleaned manifest that trains."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, missing, quick_config, shared_data
from vggtune.cli import main
from vggtune.results import audit as audit_module
from vggtune.results.audit import CONFLICT, LABEL, OFF_TOPIC
from vggtune.results.auditscores import far_below

MOVED = ("cat.3.jpg", "cat.7.jpg")           # cats filed as dogs: the planted label mistakes


def planted(tmp_path):
    """Two cats moved into dog/, a picture under dog/ with a re-saved, resized copy of it under cat/, and a
    grey picture of nothing. (The synthetic stripes all look alike to a perceptual hash, so the copied
    picture is a distinct one.)"""
    data = make_dataset(tmp_path / "data", n_per_class=20)
    for name in MOVED:
        shutil.move(data / "cat" / name, data / "dog" / name)
    ramp = np.add.outer(np.arange(40), np.arange(48) ** 1.5 / 8).astype(np.uint8)
    picture = Image.fromarray(np.stack([ramp, ramp[::-1], 255 - ramp], axis=-1))
    picture.save(data / "dog" / "dog.picture.jpg", quality=95)
    picture.resize((52, 44)).save(data / "cat" / "copy-of-dog.picture.jpg", quality=70)
    Image.new("RGB", (48, 40), (128, 128, 128)).save(data / "dog" / "grey.jpg")
    return data


def run_audit(data, out, **options):
    config = quick_config(data, out / "cv", test_split=0.0, epochs=6, finetune_epochs=0, **options)
    return audit_module.audit(config, 3, out)


def read_issues(out):
    with open(out / "issues.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_audit_flags_the_planted_mistakes_and_writes_page_csv_and_summary(tmp_path, tiny_weights):
    data = planted(tmp_path)
    out = tmp_path / "audit"
    summary = run_audit(data, out)
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in read_issues(out)}
    for name in MOVED:
        assert LABEL in rows[name]["issues"].split("+")
        assert (rows[name]["given_label"], rows[name]["suggested_label"]) == ("dog", "cat")
        assert float(rows[name]["given_label_probability"]) < 0.5
    assert CONFLICT in rows["copy-of-dog.picture.jpg"]["issues"]
    assert "dog.picture.jpg" in rows["copy-of-dog.picture.jpg"]["note"]
    assert CONFLICT in rows["dog.picture.jpg"]["issues"]
    assert OFF_TOPIC in rows["grey.jpg"]["issues"].split("+")
    ranks = [int(row["rank"]) for row in read_issues(out)]
    assert ranks == list(range(1, len(ranks) + 1))
    assert summary.images == 43 and summary.flagged == len(ranks)
    assert json.loads((out / "audit.json").read_text())["by_issue"][LABEL] == summary.by_issue[LABEL] >= 2
    page = (out / "audit.html").read_text()
    assert page.count("<figure class='tile'") == len(ranks)
    assert page.count("data:image/jpeg;base64,") == len(ranks)           # a Grad-CAM thumbnail per tile
    assert "http://" not in page and "https://" not in page                # self-contained
    assert (out / "cv" / "cv.json").is_file() and (out / "cv" / "fold-3" / "model.json").is_file()


def test_manifest_drops_or_relabels_and_trains(tmp_path, tiny_weights):
    data = planted(tmp_path)
    out = tmp_path / "audit"
    config = quick_config(data, out / "cv", test_split=0.0, epochs=6, finetune_epochs=0)
    dropped = audit_module.audit(config, 3, out, tmp_path / "clean.csv")
    kept = {row["path"].rsplit("/", 1)[-1]: row["label"] for row in csv.DictReader(open(tmp_path / "clean.csv"))}
    assert not set(MOVED) & set(kept) and "grey.jpg" not in kept
    assert dropped.manifest.images == len(kept) == 43 - dropped.flagged
    # The second call reuses the cross-validation (same options): only the ranking and the files again.
    relabelled = audit_module.audit(config, 3, out, tmp_path / "relabelled.csv", relabel=True)
    labels = {row["path"].rsplit("/", 1)[-1]: row["label"] for row in csv.DictReader(open(tmp_path / "relabelled.csv"))}
    only_label = [row["path"].rsplit("/", 1)[-1] for row in read_issues(out) if row["issues"] == LABEL]
    assert set(MOVED) <= set(only_label)
    assert all(labels[name] == "cat" for name in MOVED)
    assert relabelled.manifest.relabelled == len(only_label)
    assert "grey.jpg" not in labels
    import vggtune.api
    results = vggtune.api.train_with(quick_config(tmp_path / "clean.csv", tmp_path / "run", epochs=1,
                                                  finetune_epochs=0))
    assert results.test.n + results.val.n < len(kept)


def test_far_below_is_tukeys_far_out_fence():
    distances = np.array([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 2.7, 2.5, np.nan])
    # Of the ten numbers: Q1 1.225, Q3 1.675, so the fence is 1.675 + 3 x 0.45 = 3.025, and 2.7 is inside it.
    assert far_below(np.exp(-distances)).tolist() == []
    distances[8] = 3.1
    assert far_below(np.exp(-distances)).tolist() == [8]
    assert far_below(np.array([0.5, 0.9, np.nan])).tolist() == []


def test_relabel_without_a_manifest_is_one_line_and_exit_2(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    assert main(["data", "audit", str(data), "--relabel", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--relabel" in err and "--write-manifest" in err
    assert not (tmp_path / "a").exists()


def test_audit_command_prints_the_counts_and_files(tmp_path, tiny_weights, capsys):
    data = planted(tmp_path)
    out = tmp_path / "audit"
    status = main(["data", "audit", str(data), "--out", str(out), "--folds", "3", "--size", "32", "--epochs", "4",
                   "--finetune-epochs", "0", "--head", "flatten", "--hidden", "16", "--lr", "0.01", "--quiet",
                   "--write-manifest", str(tmp_path / "clean.csv")])
    printed = capsys.readouterr().out
    assert status == 0
    assert "images flagged" in printed and "audit.html" in printed and "clean.csv" in printed
    assert (out / "issues.csv").is_file() and (tmp_path / "clean.csv").is_file()


@pytest.mark.integration
def test_audit_on_real_photos_finds_flipped_labels(tmp_path):
    """Real weights, 40 cats and 40 dogs of cats-vs-dogs-2k, two of each class's labels flipped in a manifest."""
    root = shared_data("cats-vs-dogs-2k")
    if not root.is_dir():
        missing(f"{root} not found")
    rows = [(str(root / name / f"{name}.{i}.jpg"), name) for name in ("cat", "dog") for i in range(40)]
    flipped = {rows[3][0], rows[10][0], rows[50][0], rows[61][0]}
    manifest = tmp_path / "flipped.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((p, {"cat": "dog", "dog": "cat"}[label] if p in flipped else label) for p, label in rows)
    import vggtune.api
    summary = vggtune.api.audit(str(manifest), out=str(tmp_path / "audit"), folds=4, epochs=30, finetune_epochs=0,
                                views=1, tta=False, quiet=True)
    label_issues = {row["path"] for row in read_issues(tmp_path / "audit") if LABEL in row["issues"]}
    assert summary.images == 80
    assert len(flipped & label_issues) >= 3, (flipped, label_issues)
    assert len(label_issues) <= 8
