"""#28's smaller things a user notices, each checked: terminal output, names and orders, help and
flag matching, and the report's words."""
import argparse
import warnings

import numpy as np
import pytest
from PIL import Image

import vggtune
import vggtune.training.schedule as training
from vggtune import cli
from vggtune.cli import text
from vggtune.data.images import ImageRejected, open_rgb
from vggtune.deploy.predict import Prediction
from vggtune.training.metrics import classification_metrics

from conftest import make_dataset, quick_config


def test_many_classes_print_the_most_confused_pairs_not_a_wide_matrix():
    classes = [f"breed_{i:02d}_with_a_long_name" for i in range(37)]
    confusion = np.eye(37, dtype=int) * 3
    confusion[4, 7] = 2
    confusion[9, 1] = 1
    labels, predicted = np.repeat(np.arange(37), confusion.sum(1)), np.concatenate([np.repeat(np.arange(37), row) for row in confusion])
    lines = text.confusion_table(classification_metrics(labels, np.eye(37)[predicted], classes)).splitlines()
    assert max(len(line) for line in lines) < 100                      # it printed 1,066-character lines
    assert "2  breed_04_with_a_long_name taken for breed_07_with_a_long_name" in lines[1]
    assert len(lines) == 3 and "37 classes" in lines[0]


def test_the_interrupt_line_names_the_real_folder_and_how_cv_continues():
    train = cli.interrupted_line(argparse.Namespace(command="train", out="my runs/cats"))
    assert train == "vggtune train: interrupted; `vggtune train --resume --out 'my runs/cats'` continues this run"
    cv = cli.interrupted_line(argparse.Namespace(command="cv", out="runs/cv"))
    assert "train --resume" not in cv and "the same `vggtune cv` command again continues" in cv
    assert cli.interrupted_line(argparse.Namespace(command="predict")) == "vggtune predict: interrupted"


def test_kaggle_ids_are_in_number_order():
    """Kaggle's test ids are numbers: 1, 2, 10 (as files are listed: 1, 10, 2); other names keep their order."""
    def ids(names):
        predictions = [Prediction(f"/t/{name}.jpg", "dog", {"cat": 0.2, "dog": 0.8}) for name in names]
        written = text.predictions_text(predictions, ["cat", "dog"], "csv", kaggle=True).splitlines()
        return [row.split(",")[0] for row in written[1:]]
    assert ids(["1", "10", "2"]) == ["1", "2", "10"]
    assert ids(["dog.3", "cat.4"]) == ["dog.3", "cat.4"]


def test_weights_convert_names_its_own_flag(tmp_path, capsys):
    photo = tmp_path / "x.jpg"
    Image.new("RGB", (20, 20)).save(photo)
    assert cli.main(["weights", "convert", "--file", str(photo)]) == 2
    err = capsys.readouterr().err
    assert "--file: received x.jpg" in err and "--weights" not in err


def test_a_decompression_bomb_reason_ends_cleanly(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageRejected) as rejected:
        with warnings.catch_warnings():
            open_rgb(str(path))
    reason = str(rejected.value)
    assert reason.startswith("decompression bomb: ") and not reason.endswith(",") and "exceeds" in reason


def test_help_gives_every_boolean_default_and_flags_match_whole(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    whole = " ".join(capsys.readouterr().out.split())
    assert "CSV manifest" in whole.split("options:", 1)[0]                # DATA's help names manifests
    helped = whole.split("options:", 1)[1]
    for flag in ("--calibrate, --no-calibrate", "--no-cache", "--keep-state, --no-keep-state", "--no-report"):
        after = helped.split(flag, 1)[1][:220]
        assert "(default off)" in after, (flag, after)
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "data", "--epoch", "3"])            # was taken as --epochs 3
    assert exited.value.code == 2 and "unrecognized arguments: --epoch 3" in capsys.readouterr().err


def test_evaluate_on_another_folder_says_which(tmp_path, capsys, tiny_weights):
    data = make_dataset(tmp_path / "data", n_per_class=8)
    other = make_dataset(tmp_path / "other", n_per_class=3)
    training.fit(quick_config(data, tmp_path / "run", finetune_epochs=0))
    assert cli.main(["evaluate", str(tmp_path / "run"), "--data", str(other), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"test metrics ({tmp_path / 'run'} on {other}):" in out


def test_the_predictor_takes_a_folder_as_the_command_line_does(tmp_path, tiny_weights):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    (data / "dog" / "notes.txt").write_text("not an image")
    training.fit(quick_config(data, tmp_path / "run", finetune_epochs=0))
    predictor = vggtune.load(tmp_path / "run")
    predictions, rejected = predictor.predict([str(data / "dog"), str(data / "cat" / "cat.0.jpg")])
    files = sorted(str(p) for p in (data / "dog").glob("*.jpg"))
    assert [p.path for p in predictions] == files + [str(data / "cat" / "cat.0.jpg")]
    assert [name for name, _ in rejected] == [str(data / "dog" / "notes.txt")]


def test_the_report_of_a_one_epoch_run_reads_as_written(tmp_path, tiny_weights):
    """No "1 epochs", no "0 most confidently wrong of 0 mistakes", steps named in words, each fact once."""
    from conftest import train_reported
    data = make_dataset(tmp_path / "data", n_per_class=12)
    result = train_reported(data, tmp_path / "run", epochs=1, finetune_epochs=0, patience=0)
    page = (tmp_path / "run" / "report.html").read_text()
    assert "1 epoch;" in page and "1 epochs" not in page
    wrong = round((1 - result.test.accuracy) * result.test.n)
    if wrong:
        assert f"of {wrong} mistake" in page
    else:
        assert "No mistakes on the" in page and "of 0 mistakes" not in page
    assert "features of the training views" in page and "features_train_s" not in page
    machine = page.split("<h3>Model and machine</h3>", 1)[1].split("</table>", 1)[0]
    assert machine.count("<td>weights</td>") == 1 and machine.count("<td>precision</td>") == 1


def test_one_size_rule_for_training_and_prediction(tmp_path):
    """Training's scan and predict refuse and accept the same sizes (a 16 x 16 image was said to be
    refused by one and taken by the other: both take it, and both refuse 15 x 15 in the same words)."""
    from vggtune.data.dataset import check_file
    from vggtune.features.extract import decode_clean
    from vggtune.model.weights import VGG16_IMAGENET1K_V1
    for side, usable in ((15, False), (16, True)):
        path = tmp_path / f"{side}.jpg"
        Image.new("RGB", (side, side), (200, 30, 30)).save(path)
        _, scan_reason, _ = check_file(str(path))
        _, predict_reason = decode_clean(str(path), VGG16_IMAGENET1K_V1.preprocessing)
        assert (scan_reason is None) == (predict_reason is None) == usable
        assert scan_reason == predict_reason
