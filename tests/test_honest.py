"""Honest on any data (issue #39): per-class figures beside every total, the imbalance said in words,
a given test folder scored whole with its own rejects, a test set that disagrees with validation said
so, and the tool's own weak answers owned up to. Tiny network and synthetic images here; the real
X-rays are in the integration test at the end."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vggtune import cli
from vggtune.data import balance
from vggtune.training.metrics import ClassScores, classification_metrics

from conftest import make_dataset, require_real_weights, shared_data, synthetic_image

QUICK = ["--size", "32", "--epochs", "3", "--finetune-epochs", "1", "--hidden", "8", "--batch-size", "8",
         "--head", "flatten", "--lr", "1e-2"]


def imbalanced(root, small: int = 12, large: int = 36):
    make_dataset(root, n_per_class=large, classes=("cat", "dog"))
    for path in sorted((root / "cat").iterdir())[small:]:
        path.unlink()
    return root


def test_two_class_metrics_name_sensitivity_and_specificity_by_class():
    labels = [0] * 4 + [1] * 8
    p = np.array([[0.9, 0.1]] * 2 + [[0.2, 0.8]] * 2 + [[0.1, 0.9]] * 8)      # half the normals missed
    result = classification_metrics(labels, p, ["NORMAL", "PNEUMONIA"])
    assert result.accuracy == pytest.approx(10 / 12)
    assert result.balanced_accuracy == pytest.approx((0.5 + 1.0) / 2)
    assert result.sensitivity == 1.0 and result.specificity == 0.5
    assert result.majority_share == pytest.approx(8 / 12)
    assert result.per_class["NORMAL"] == ClassScores(precision=1.0, recall=0.5, f1=pytest.approx(2 / 3), support=4)


def test_class_warnings_say_imbalance_tiny_classes_and_names_alike():
    assert balance.class_warnings({"cat": 100, "dog": 140}) == []                  # 1 : 1.4 is not imbalanced
    said = balance.class_warnings({"rose": 779, "Rose": 1, "tulip": 260})
    assert any("imbalanced, 1 : 779.0" in w and "always answering rose would score 0.749" in w for w in said)
    assert any("fewer than 5 images: Rose (1)" in w for w in said)
    assert any("'rose', 'Rose' differ only in case" in w for w in said)
    assert not any("hold ';'" in w for w in said)
    assert balance.counts_line({"a": 10, "b": 29}, "training") == "classes in training: a 10, b 29 (1 : 2.9)"


def test_a_label_column_with_semicolons_is_said_by_data_check_and_train(tmp_path, tiny_weights, capsys, caplog):
    """path,label with cells like cat;dog trains one class a set, as written (it can be a real name), and both
    commands say so in one line naming the labels column."""
    root = tmp_path / "images"
    root.mkdir()
    rows = []
    for i in range(36):
        name = ("cat", "dog", "cat;dog")[i % 3]
        synthetic_image(i % 2, i).save(root / f"{i}.png")
        rows.append((f"images/{i}.png", name))
    manifest = tmp_path / "pets.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    line = "1 class name(s) hold ';' ('cat;dog'), each read as one class of its own; for several labels an image, "
    assert cli.main(["data", "check", str(manifest)]) == 0
    captured = capsys.readouterr()
    assert line in captured.out + captured.err and "name the manifest's column labels" in captured.out + captured.err
    assert cli.main(["train", str(manifest), "--out", str(tmp_path / "run"), *QUICK]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err + caplog.text
    assert said.count(line) >= 1 and json.loads((tmp_path / "run" / "model.json").read_text())["classes"] == [
        "cat", "cat;dog", "dog"]


def test_train_says_the_imbalance_and_prints_per_class_figures(tmp_path, tiny_weights, capsys, caplog):
    data = imbalanced(tmp_path / "data")
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run"), *QUICK]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err + caplog.text
    assert "classes in training: cat 10, dog 28 (1 : 2.8)" in said            # the training split's 80 %
    assert "warning: the classes are imbalanced, 1 : 2.8" in said
    assert "balanced accuracy" in said and "specificity" in said and "(recall of cat)" in said
    assert "per class:" in said and "precision  recall      F1  images" in said
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert {"balanced_accuracy", "sensitivity", "specificity", "per_class", "f1_macro"} <= set(metrics)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| class | precision | recall | F1 | images |" in card and "split by class from the same folder" in card
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Per class" in page and "balanced accuracy" in page and "imbalanced" in page


def test_a_given_test_folder_is_scored_whole_and_its_rejects_listed_apart(tmp_path, tiny_weights, capsys):
    data = make_dataset(tmp_path / "data", n_per_class=20)
    test = tmp_path / "test"
    for label, name in enumerate(("cat", "dog")):
        (test / name).mkdir(parents=True)
        for i in range(100, 106):
            synthetic_image(label, i).save(test / name / f"{i}.jpg")
    shutil.copy(test / "cat" / "100.jpg", test / "cat" / "copy-of-100.jpg")        # a copy within the test folder
    (test / "dog" / "broken.jpg").write_bytes(b"not an image")
    (data / "cat" / "broken.jpg").write_bytes(b"not an image either")
    out = tmp_path / "run"
    assert cli.main(["train", str(data), "--test-data", str(test), "--out", str(out), *QUICK]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert metrics["n"] == 13                                     # 12 + the copy; only the unreadable file out
    with open(out / "rejected.csv", newline="") as handle:
        folders = {"/".join(row["path"].split("/")[-3:]): row["folder"] for row in csv.DictReader(handle)}
    assert folders == {"data/cat/broken.jpg": "data", "test/dog/broken.jpg": "test"}
    page = (out / "report.html").read_text()
    assert "Left out of the test folder" in page and "Left out of the training data" in page
    card = (out / "README.md").read_text()
    assert "the test folder `" in card and "given apart from the training data" in card
    assert "1 of its files left out" in card
    capsys.readouterr()
    # data check counts each folder under its own name
    assert cli.main(["data", "check", str(data), "--test-data", str(test)]) == 1
    out_text = capsys.readouterr().out
    assert f"{data}: 40 usable images" in out_text and f"{test}: 13 usable images in 2 classes, 1 rejected" in out_text


def test_a_test_folder_that_disagrees_with_validation_is_said_so(tmp_path, tiny_weights, capsys):
    """The test images come from elsewhere: here their classes' colours are swapped, a shift no figure on
    the training folder can show."""
    data = make_dataset(tmp_path / "data", n_per_class=30)
    test = tmp_path / "test"
    for label, name in enumerate(("cat", "dog")):
        (test / name).mkdir(parents=True)
        for i in range(200, 215):
            synthetic_image(1 - label, i).save(test / name / f"{i}.jpg")
    out = tmp_path / "run"
    assert cli.main(["train", str(data), "--test-data", str(test), "--out", str(out), *QUICK, "--epochs", "6"]) == 0
    said = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] < metrics["val"]["accuracy_95"][0], metrics
    assert f"warning: accuracy on the test folder {test}" in said and "below the validation split's 95 % interval" in said
    page = (out / "report.html").read_text()
    assert "below the validation split" in page and "look unlike every training image" in page
    assert "below the validation split" in (out / "README.md").read_text()
    # evaluate --data says the same of another folder
    assert cli.main(["evaluate", str(out), "--data", str(test), "--output", str(tmp_path / "e.json")]) == 0
    assert "below the validation split" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["validation_gap"]


def test_the_audit_owns_up_when_its_models_are_no_better_than_the_majority_class():
    from vggtune.results.audit import Scored
    from vggtune.results.auditscores import strength
    labels = np.array([0] * 38 + [1] * 62)
    guessing = np.tile([0.4, 0.6], (100, 1))                           # always the larger class: 0.62
    weak = strength(Scored(["no", "yes"], [], labels, guessing))
    assert not weak.trusted and weak.accuracy == weak.majority_share == 0.62
    assert "out-of-fold accuracy 0.620 against 0.620 for always answering yes" in weak.describe()
    knowing = np.where(labels[:, None] == 1, [0.1, 0.9], [0.9, 0.1])
    assert strength(Scored(["no", "yes"], [], labels, knowing)).trusted


def test_a_stage_that_keeps_its_last_epoch_says_the_epochs_may_be_too_few(tmp_path, tiny_weights, caplog):
    data = make_dataset(tmp_path / "data", n_per_class=20)
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run"), *QUICK, "--epochs", "2", "--lr", "1e-4",
                     "--finetune-epochs", "0", "--no-report"]) == 0
    from vggtune.training.rundir import RunDir
    kept = RunDir(tmp_path / "run").metrics().kept_epochs["head"]
    warned = "head: kept its last epoch (2)" in caplog.text and "--epochs more" in caplog.text
    assert warned == (kept == 2), (kept, caplog.text[-500:])


@pytest.mark.integration
def test_chest_x_rays_imbalanced_and_from_elsewhere(tmp_path):
    """Real X-rays: trained on 40 normal and 120 pneumonia images of the published training folder (90 % of them
    to train, 10 % to validate), tested on
    40 of each others whose contrast is inverted (the shift we apply and state: another device's rendering).
    The terminal, the report and the model card say the imbalance, the per-class figures and the gap."""
    require_real_weights()
    source = shared_data("chest-xray-train")
    normal, pneumonia = sorted((source / "NORMAL").iterdir()), sorted((source / "PNEUMONIA").iterdir())
    train, test = tmp_path / "train", tmp_path / "test"
    for folder, files in ((train / "NORMAL", normal[:40]), (train / "PNEUMONIA", pneumonia[:120])):
        folder.mkdir(parents=True)
        for path in files:
            (folder / path.name).symlink_to(path)
    for folder, files in ((test / "NORMAL", normal[-40:]), (test / "PNEUMONIA", pneumonia[-40:])):
        folder.mkdir(parents=True)
        for path in files:
            with Image.open(path) as image:
                Image.eval(image.convert("L"), lambda v: 255 - v).save(folder / path.name)
    shutil.copy(test / "NORMAL" / normal[-1].name, test / "NORMAL" / "copy.jpeg")     # a copy within it: scored
    (test / "PNEUMONIA" / "truncated.jpeg").write_bytes((test / "PNEUMONIA" / pneumonia[-1].name).read_bytes()[:300])
    out = tmp_path / "run"
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "vggtune", "train", str(train), "--test-data", str(test), "--out",
                           str(out), "--size", "96", "--epochs", "4", "--finetune-epochs", "1"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "classes in training: NORMAL 36, PNEUMONIA 108 (1 : 3.0)" in said
    assert "warning: the classes are imbalanced" in said
    assert "specificity" in said and "(recall of NORMAL)" in said and "per class:" in said
    card = (out / "README.md").read_text()
    assert f"the test folder `{test}`" in card and "| NORMAL |" in card
    page = (out / "report.html").read_text()
    assert "Per class" in page and "Sensitivity " in page and "(recall of NORMAL)" in page
    assert "Left out of the test folder" in page and "truncated.jpeg" in page
    resize = json.loads((out / "model.json").read_text())["preprocessing"]["resize"]
    assert f"Images smaller than the resize ({resize} px shorter side)" in page
    assert ("no image is enlarged" in page) == (resize <= 224)              # the X-rays are 224 px
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 81                                 # 80 and the copy; the truncated file out
    below = metrics["test"]["accuracy"] < metrics["val"]["accuracy_95"][0]
    assert ("below the validation split's 95 % interval" in said) == below, metrics
    assert ("look unlike every training image" in page) == below
