"""vggtune tried as a new user would: a run folder that works from anywhere, no tracebacks, no silent
wrong results, inputs of every kind, a `data check` that can gate, a light run folder, quick help."""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vggtune
from vggtune.data.items import DUPLICATE
from vggtune.training.rundir import RunDir
import vggtune.training.schedule as training
from vggtune import cli, progress

from conftest import make_dataset, quick_config, synthetic_image, train_reported


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err, *words):
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


TRAIN_FLAGS = ["--size", 32, "--batch-size", 8, "--hidden", 16, "--lr", 0.01, "--dropout", 0, "--views", 2,
               "--val-split", 0.2, "--test-split", 0.2, "--quiet"]


def test_a_run_moved_and_used_from_another_folder(tmp_path, capsys, monkeypatch, tiny_weights):
    """Trained with relative paths in one folder; evaluated, predicted and resumed after a move, from another."""
    first = tmp_path / "first"
    make_dataset(first / "tiny", n_per_class=15)
    monkeypatch.chdir(first)
    code, trained, _ = run_cli(capsys, "train", "tiny", "--out", "runs/t", "--epochs", 2, "--finetune-epochs", 1,
                               *TRAIN_FLAGS)
    assert code == 0
    before = json.loads((first / "runs" / "t" / "metrics.json").read_text())["test"]
    shutil.move(first / "runs" / "t", tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "moved")
    assert code == 0 and "Traceback" not in err
    after = json.loads((tmp_path / "moved" / "evaluation.json").read_text())
    assert after["n"] == before["n"] and after["confusion_matrix"] == before["confusion_matrix"]
    code, out, _ = run_cli(capsys, "predict", tmp_path / "moved", first / "tiny" / "dog", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 15


def test_resume_after_a_move_from_another_folder(tmp_path, capsys, monkeypatch, tiny_weights, dataset):
    real_epoch = training.train_epoch

    def stop_in_finetune(*args):
        if args[1].name == "finetune":
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(training, "train_epoch", stop_in_finetune)
    monkeypatch.chdir(dataset.parent)
    with pytest.raises(KeyboardInterrupt):
        training.fit(quick_config(os.path.relpath(dataset), "runs/cut"))
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    shutil.move(dataset.parent / "runs" / "cut", tmp_path / "moved-cut")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "moved-cut")
    assert code == 0, err
    assert (tmp_path / "moved-cut" / "model.json").is_file()
    whole = tmp_path / "whole"
    training.fit(quick_config(dataset, whole))
    read = lambda run: (run / "metrics.jsonl").read_text()  # noqa: E731
    assert read(tmp_path / "moved-cut") == read(whole)


def test_a_missing_data_folder_is_one_line_naming_it(tmp_path, capsys, tiny_weights):
    data = make_dataset(tmp_path / "data", n_per_class=10)
    training.fit(quick_config(data, tmp_path / "run", finetune_epochs=0))
    shutil.rmtree(data)
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "run")
    one_line_error(code, err, str(data), "--data FOLDER")


def test_evaluate_on_a_folder_where_nothing_is_readable_is_one_line(tmp_path, capsys, tiny_weights, dataset):
    training.fit(quick_config(dataset, tmp_path / "run", finetune_epochs=0))
    junk = tmp_path / "junk"
    for name in ("cat", "dog"):
        (junk / name).mkdir(parents=True)
        (junk / name / "a.jpg").write_bytes(b"not a jpeg at all")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "run", "--data", junk)
    one_line_error(code, err, "none of 2 images could be read", "allowed")


def test_evaluate_a_folder_of_one_class_gives_its_recall(tmp_path, capsys, tiny_weights, dataset):
    training.fit(quick_config(dataset, tmp_path / "run", finetune_epochs=0))
    cats = tmp_path / "only-cats"
    (cats / "cat").mkdir(parents=True)
    for i in range(40, 46):
        synthetic_image(0, i).save(cats / "cat" / f"cat.{i}.jpg")
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "run", "--data", cats)
    result = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert code == 0 and result["n"] == 6 and result["per_class"]["cat"]["support"] == 6
    assert result["per_class"]["cat"]["recall"] == result["accuracy"] and result["roc_auc"] is None
    assert "ROC AUC            undefined" in out


def test_kaggle_output_only_where_it_means_something(tmp_path, capsys, tiny_weights):
    data = make_dataset(tmp_path / "three", n_per_class=8, classes=("a", "b", "c"))
    training.fit(quick_config(data, tmp_path / "run", finetune_epochs=0))
    code, out, err = run_cli(capsys, "predict", tmp_path / "run", data / "a", "--kaggle")
    one_line_error(code, err, "two-class", "3 classes", "allowed")
    assert out == ""
    code, out, err = run_cli(capsys, "predict", tmp_path / "run", data / "a", "--kaggle", "--format", "json")
    one_line_error(code, err, "--kaggle", "--format json", "allowed")


def test_the_same_bytes_under_two_classes_is_a_label_conflict(tmp_path, capsys, tiny_weights):
    data = make_dataset(tmp_path / "data", n_per_class=10)
    shutil.copy(data / "cat" / "cat.3.jpg", data / "dog" / "dog.99.jpg")
    code, out, _ = run_cli(capsys, "data", "check", data)
    conflicts = [line for line in out.splitlines() if "label conflict" in line]
    assert code == 1 and len(conflicts) == 2 and "19 usable images" in out
    train_reported(data, tmp_path / "run", finetune_epochs=0)
    run = RunDir(tmp_path / "run")
    used = {os.path.basename(item.path) for name in ("train", "val", "test") for item in getattr(run.splits(), name)}
    assert not used & {"cat.3.jpg", "dog.99.jpg"} and len(used) == 19
    conflicts = [row for row in run.rejected() if row.kind == "label-conflict"]
    assert sorted(os.path.basename(row.path) for row in conflicts) == ["cat.3.jpg", "dog.99.jpg"]
    # The report and the model card count them by kind, not by the wording of the reason.
    assert "2 of them label conflicts" in (run.path / "README.md").read_text()
    page = (run.path / "report.html").read_text()
    assert page.count("label conflict: the same content") >= 2 and "<td>label-conflict</td><td>2</td>" in page


def test_small_splits_warn_with_an_interval_and_f1_names_its_class(tmp_path, capsys, tiny_weights):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    code, out, _ = run_cli(capsys, "train", data, "--out", tmp_path / "run", "--epochs", 2, "--finetune-epochs", 0,
                           "--size", 32, "--hidden", 16, "--val-split", 0.2, "--test-split", 0.2, "--quiet")
    assert code == 0
    assert "warning: only 2 images: the accuracy could be anywhere from" in out and "95% interval" in out
    assert "F1" in out and "(positive class: dog)" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert metrics["positive_class"] == "dog" and metrics["accuracy_95"][0] < 0.5


def test_predict_takes_paths_pil_images_arrays_bytes_and_files(tmp_path, tiny_weights, dataset):
    training.fit(quick_config(dataset, tmp_path / "run", finetune_epochs=0))
    predictor = vggtune.load(tmp_path / "run")
    path = dataset / "dog" / "dog.4.png"
    synthetic_image(1, 4).save(path)
    image = Image.open(path)
    inputs = [str(path), image, np.asarray(image.convert("RGB")), path.read_bytes(), io.BytesIO(path.read_bytes()),
              b"not an image", np.zeros((4, 4, 3), np.uint8), np.zeros((40, 40, 3), np.float32), 42]
    predictions, rejected = predictor.predict(inputs)
    assert [p.path for p in predictions] == [str(path), "<PIL image 1>", "<numpy array 2>", "<bytes 3>",
                                             "<file object 4>"]
    for p in predictions[1:]:
        assert p.probabilities == pytest.approx(predictions[0].probabilities, abs=1e-6)
    reasons = dict(rejected)
    assert "not an image" in reasons["<bytes 5>"] and "too small" in reasons["<numpy array 6>"]
    assert "allowed: uint8" in reasons["<numpy array 7>"] and "allowed: a path" in reasons["<int 8>"]


def test_data_check_exit_codes_and_an_overlapping_test_folder(tmp_path, capsys):
    clean = make_dataset(tmp_path / "clean", n_per_class=4)
    assert run_cli(capsys, "data", "check", clean)[0] == 0
    (clean / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    assert run_cli(capsys, "data", "check", clean)[0] == 1
    code, _, err = run_cli(capsys, "data", "check", tmp_path / "nowhere")
    one_line_error(code, err, "does not exist")
    code, out, err = run_cli(capsys, "data", "check", clean, "--test-data", clean)
    assert code == 1 and "Traceback" not in err and "error" not in err
    assert f"{clean}: 8 usable images in 2 classes, 1 rejected" in out
    # each folder under its own name: all 8 images are the test folder's, none left to train on
    data_folder, test_folder = vggtune.check_data(str(clean), test_data=str(clean)).folders
    assert (data_folder.images, len(data_folder.rejected)) == (0, 9)              # 8 copies of test files, 1 broken
    assert sum(1 for row in data_folder.rejected if row.kind == DUPLICATE) == 8
    assert (test_folder.where, test_folder.images, len(test_folder.rejected)) == ("test", 8, 1)


def test_a_finished_run_keeps_only_what_using_it_needs(tmp_path, capsys, tiny_weights, dataset):
    training.fit(quick_config(dataset, tmp_path / "run"))
    assert not (tmp_path / "run" / "state").exists()
    assert vggtune.load(tmp_path / "run").predict([str(next(dataset.rglob("*.jpg")))])[0]
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "run")
    one_line_error(code, err, "is a finished run", "allowed")
    training.fit(quick_config(dataset, tmp_path / "kept", keep_state=True))
    assert (tmp_path / "kept" / "state" / "finetune-best.safetensors").is_file()


def test_bare_command_version_and_help_do_not_import_torch():
    probe = ("import sys, contextlib, io\nfrom vggtune import cli\nout = io.StringIO()\n"
             "with contextlib.redirect_stdout(out):\n"
             "    codes = [cli.main([])]\n"
             "    for argv in (['--version'], ['--help'], ['train', '--help'], ['predict', '--help'], ['cache', '--help'],\n"
             "                 ['report', '--help'], ['explain', '--help'], ['export', '--help'], ['serve', '--help']):\n"
             "        try:\n            cli.main(argv)\n        except SystemExit as e:\n            codes.append(e.code)\n"
             "print(codes, 'torch' in sys.modules)\nprint(out.getvalue())")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    first, rest = result.stdout.split("\n", 1)
    assert first == "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0] False", result.stdout + result.stderr
    assert "usage: vggtune" in rest and "COMMAND" in rest and "vggtune 0.1.0" in rest
    assert "(default runs/train (runs/train2, ... where taken))" in " ".join(rest.split())   # declared, not this folder


def test_every_flag_has_help_text():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = []
    for name, sub in list(commands.items()) + [("data check", commands["data"]._actions[-1].choices["check"])]:
        for action in sub._actions:
            if action.dest not in ("help", "data_command") and not action.help:
                missing.append(f"{name} {action.option_strings or action.dest}")
    assert missing == []


def test_confusion_table_columns_line_up():
    from vggtune.cli.text import confusion_table
    from vggtune.training.metrics import classification_metrics
    result = classification_metrics([0, 1, 2, 2], np.eye(3)[[0, 1, 2, 1]], ["cat", "a-long-class-name", "z"])
    lines = confusion_table(result).splitlines()
    ends = {len(line) for line in lines}
    assert len(ends) == 1, lines                                        # every row as wide as the header
    header = lines[0]
    for name in result.classes:                                     # each count right-aligned under its class
        column_end = header.index(name) + len(name)
        assert all(line[column_end - 1] != " " for line in lines[1:])


def test_long_scans_and_predictions_show_progress(tmp_path, capsys, monkeypatch, tiny_weights, dataset):
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    training.fit(quick_config(dataset, tmp_path / "run", finetune_epochs=0, quiet=False))
    err = capsys.readouterr().err
    assert "checking images: 60/60 files" in err
    code, _, err = run_cli(capsys, "predict", tmp_path / "run", dataset)
    assert code == 0 and "predicting: 60/60 images" in err


def test_cache_command_where_and_clear(tmp_path, capsys, tiny_weights, dataset, isolated_home):
    training.fit(quick_config(dataset, tmp_path / "run"))
    code, out, _ = run_cli(capsys, "cache")
    lines = out.splitlines()
    assert code == 0 and str(isolated_home / "features") in lines[0] and "MB in 2 folders" in lines[0]
    assert sorted(line.split()[0] for line in lines[1:]) == ["block4", "block5"]
    code, out, _ = run_cli(capsys, "cache", "clear")
    assert code == 0 and "removed" in out and not list((isolated_home / "features").glob("*/shard-*"))
    assert run_cli(capsys, "cache")[1].startswith(f"{isolated_home / 'features'}: 0.0 MB in 0 folders")


def test_a_run_inside_the_data_folder_is_refused_and_an_old_one_is_no_class(tiny_weights, tmp_path, monkeypatch, capsys):
    """`cd photos && vggtune train .` would write runs/latest into the data and read it back as a class."""
    from vggtune import cli
    data = make_dataset(tmp_path / "photos", n_per_class=12)
    monkeypatch.chdir(data)
    assert cli.main(["train", ".", "--epochs", "1", "--finetune-epochs", "0", "--size", "32"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "runs/train, inside the data folder" in error and "--out: received" in error
    assert not (data / "runs").exists()
    # a run folder already there (an older vggtune wrote it): listed, not a third class
    old = data / "runs" / "latest"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text("data: .\n")
    (old / "model.json").write_text("{}")
    (old / "explain").mkdir()
    synthetic_image(0, 99).save(old / "explain" / "cat.1.gradcam.png")
    assert cli.main(["data", "check", "."]) == 1
    out = capsys.readouterr().out
    assert "24 usable images in 2 classes" in out and "a vggtune run folder, not a class of images" in out


def test_an_out_inside_data_is_refused_before_torchrun_starts_and_by_cv(tmp_path, capsys, monkeypatch):
    from vggtune import cli
    data = make_dataset(tmp_path / "photos", n_per_class=4)
    for command in (["train", str(data), "--nproc", "2"], ["cv", str(data)]):
        assert cli.main([*command, "--out", str(data / "runs" / "x")]) == 2
        assert "inside the data folder" in capsys.readouterr().err
    assert not (data / "runs").exists()


def test_a_torchvision_that_does_not_match_torch_is_one_line_with_the_fix(tmp_path):
    """PyPI's CUDA torchvision beside a CPU torch fails on import with `operator torchvision::nms does not
    exist`, in every command. A torchvision package that fails the same way stands first on the path here."""
    broken = tmp_path / "shadow" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    data = make_dataset(tmp_path / "photos", n_per_class=4)
    env = {**os.environ, "PYTHONPATH": str(broken.parent)}
    done = subprocess.run([sys.executable, "-m", "vggtune", "train", str(data), "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "do not work together" in lines[0] and "pip install --force-reinstall" in lines[0]


def test_train_takes_a_config_file_and_a_flag_given_wins(tmp_path, capsys, monkeypatch, tiny_weights, dataset):
    """`--config FILE.yaml`, the flags' names as keys (dashes or underscores, augment nested or not), as
    Ultralytics takes cfg=; a flag on the command line wins over the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(
        f"data: {dataset}\nepochs: 2\nfinetune-epochs: 1\nsize: 32\nbatch_size: 8\nhidden: 16\nviews: 2\n"
        "lr: 0.01\nseed: 7\naugment:\n  rotation: 3.0\n  flip: false\nquiet: true\n")
    code, _, err = run_cli(capsys, "train", "--config", "recipe.yaml", "--seed", 11, "--out", "runs/c")
    assert code == 0, err
    import yaml
    saved = yaml.safe_load((tmp_path / "runs" / "c" / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["finetune_epochs"] == 1 and saved["size"] == 32
    assert saved["seed"] == 11                                           # the flag won
    assert saved["augment"]["rotation"] == 3.0 and saved["augment"]["flip"] is False
    # a run's own config.yaml is a config file too (its out given anew)
    code, _, err = run_cli(capsys, "train", "--config", "runs/c/config.yaml", "--out", "runs/again", "--quiet")
    assert code == 0, err
    again = yaml.safe_load((tmp_path / "runs" / "again" / "config.yaml").read_text())
    assert {k: v for k, v in again.items() if k != "run"} == {k: v for k, v in saved.items() if k != "run"}
    assert again["run"]["out"].endswith("again") and again["run"]["quiet"] is True


def test_a_config_file_with_an_unknown_option_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    code, _, err = run_cli(capsys, "train", "photos", "--config", tmp_path / "bad.yaml")
    one_line_error(code, err, "'epochz'", "did you mean epochs?")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    code, _, err = run_cli(capsys, "train", "photos", "--config", tmp_path / "list.yaml")
    one_line_error(code, err, "holds a list", "allowed: a mapping")
    (tmp_path / "cv.yaml").write_text("test_data: elsewhere/\n")
    code, _, err = run_cli(capsys, "cv", "photos", "--config", tmp_path / "cv.yaml")
    one_line_error(code, err, "sets test_data, which vggtune cv does not take")


def test_runs_without_out_are_numbered_and_resume_takes_the_last(tmp_path, capsys, monkeypatch, tiny_weights):
    """As Ultralytics does: runs/train, then runs/train2 (a second `vggtune train photos/` once exited 2
    because runs/latest held files); --resume without --out continues the last one."""
    make_dataset(tmp_path / "photos", n_per_class=10)
    monkeypatch.chdir(tmp_path)
    quick = ["--epochs", 1, "--finetune-epochs", 1, *TRAIN_FLAGS]
    assert run_cli(capsys, "train", "photos", *quick)[0] == 0
    assert run_cli(capsys, "train", "photos", *quick)[0] == 0
    assert (tmp_path / "runs" / "train" / "model.json").is_file()
    assert (tmp_path / "runs" / "train2" / "model.json").is_file()
    code, _, err = run_cli(capsys, "train", "--resume")
    assert code == 2 and "runs/train2 is a finished run" in err      # the last one, named
    result = vggtune.train("photos", epochs=1, finetune_epochs=0, size=32, batch_size=8, quiet=True)
    assert result.run.endswith("train3")
