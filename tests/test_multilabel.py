"""Multi-label classification: a manifest's `labels` column (several labels an image, or none) through
data check, training (one sigmoid a label), per-label thresholds, metrics and predict. The tiny network on
synthetic images whose halves carry the labels (the real weights on photos side by side are in
test_multilabel_photos.py, out of reach of this module's tiny-weights fixture)."""
from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    half,
    quick_config,
    tflite_python,
    tiny_weights_for_module,
    write_multilabel,
)

import vggtune
from vggtune import cli
from vggtune.deploy.service import ServeConfig
from vggtune.deploy.webapp import create_app
from vggtune.training import schedule as training
from vggtune.training.multilabel import MultiLabelMetrics
from vggtune.training.rundir import RunDir


def test_data_check_counts_labels_and_label_sets(tmp_path, capsys):
    manifest = write_multilabel(tmp_path / "data", per_set=4)
    with open(manifest, "a") as handle:
        handle.write("set4-0.jpg,red;blue;red\n")       # a label twice is one label; a copy of set4-0 kept once
    result = vggtune.check_data(manifest)
    folder = result.folders[0]
    assert result.splits.multi_label and result.classes == ["blue", "green", "red"]
    assert folder.counts == {"blue": 12, "green": 12, "red": 12} and folder.images == 28
    assert folder.label_sets["(none)"] == 4 == folder.without_labels and folder.label_sets["blue;red"] == 4
    assert len(folder.label_sets) == 7
    assert cli.main(["data", "check", manifest]) == 1                      # the duplicate row is rejected
    out = capsys.readouterr().out
    assert "28 usable images in 3 labels (several per image)" in out and "4 of 28 images carry none" in out


def test_a_label_seen_once_is_flagged(tmp_path):
    manifest = write_multilabel(tmp_path / "data", per_set=3, sets=[(0,), (1,), (0, 1)])
    half(2, 999).save(tmp_path / "data" / "green.jpg")
    with open(manifest, "a") as handle:
        handle.write("green.jpg,green\n")               # green on one image only
    warnings = vggtune.check_data(manifest).folders[0].warnings
    assert any("seen once: green" in line for line in warnings)


TINY = ["--size", "32", "--epochs", "4", "--finetune-epochs", "1", "--batch-size", "8", "--hidden", "16",
        "--lr", "0.01", "--dropout", "0", "--head", "flatten", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A multi-label run on the tiny network, through the command line with its report and model card."""
    root = tmp_path_factory.mktemp("multilabel")
    with tiny_weights_for_module(root / "home"):
        manifest = write_multilabel(root / "data", per_set=12)
        out = root / "run"
        assert cli.main(["train", manifest, "--out", str(out), *TINY]) == 0
        yield manifest, out


def test_training_learns_one_sigmoid_a_label_and_keeps_thresholds(trained):
    manifest, out = trained
    spec = json.loads((out / "model.json").read_text())
    assert spec["head"]["multi_label"] and spec["head"]["n_classes"] == 3
    assert set(spec["thresholds"]) == {"blue", "green", "red"} and all(0 < t < 1 for t in spec["thresholds"].values())
    metrics = RunDir(out).finished_metrics().test
    assert isinstance(metrics, MultiLabelMetrics) and set(metrics.per_label) == {"blue", "green", "red"}
    assert 0 <= metrics.hamming_loss <= 1 and metrics.map > 0.5 and set(metrics.intervals_95) == {
        "f1_micro", "f1_macro", "map"}
    assert metrics.thresholds == tuple(spec["thresholds"][name] for name in metrics.classes)
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["label"] for row in rows} >= {"", "blue;red"}          # label sets, none included
    splits = RunDir(out).saved_splits()
    assert all(item.targets is not None for item in splits.train) and sum(splits.counts("train")) > len(splits.train)


def test_report_and_model_card_show_each_label(trained):
    _, out = trained
    page = (out / "report.html").read_text()
    assert "Top losses, a label" in page and "<th>average precision</th>" in page
    assert "px longer side)</h3>" in page                # a padded image is enlarged by its longer side
    assert page.count("<h3>blue: ") == 1 and "for blue" in page or "No image wrong about this label" in page
    card = (out / "README.md").read_text()
    assert "multi-label image classifier for 3 labels" in card and "| label | precision | recall |" in card
    assert "It sees the whole image" in card and "only the centre crop" not in card        # padded, not cropped
    assert "yes or no to each label" in card and "always answers with one of these" not in card


def test_predict_gives_each_image_its_label_set_and_the_threshold_can_be_overridden(trained, capsys):
    manifest, out = trained
    image = str(Path(manifest).parent / "set4-0.jpg")
    capsys.readouterr()
    assert cli.main(["predict", str(out), image, "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    assert answer["label"] == ";".join(answer["labels"]) and set(answer["probabilities"]) == {"blue", "green", "red"}
    for threshold, expected in (("0.999999", []), ("0.000001", ["blue", "green", "red"])):
        assert cli.main(["predict", str(out), image, "--format", "json", "--threshold", threshold]) == 0
        assert json.loads(capsys.readouterr().out)[0]["labels"] == expected
    assert cli.main(["predict", str(out), image, "--kaggle"]) == 2
    assert "--kaggle" in capsys.readouterr().err


def test_evaluate_a_manifest_and_a_test_manifest_given_apart(trained, tmp_path):
    manifest, out = trained
    result = vggtune.evaluate(str(out), data=manifest, output=str(tmp_path / "evaluation.json"))
    assert isinstance(result.metrics, MultiLabelMetrics) and result.metrics.n == 84
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert written["task"] == "multi-label" and written["map"] == result.metrics.map
    assert "Top losses, a label" in (tmp_path / "evaluation.html").read_text()


def test_cross_validation_pools_each_label_out_of_fold(trained, tmp_path, capsys):
    manifest, _ = trained
    out = tmp_path / "cv"
    assert cli.main(["cv", manifest, "--folds", "2", "--out", str(out), *TINY]) == 0
    assert "subset acc." in capsys.readouterr().out
    summary = json.loads((out / "cv.json").read_text())
    assert summary["pooled"]["n"] == 84 and set(summary["pooled"]["intervals_95"]) >= {"accuracy", "map", "f1_micro"}
    assert [fold["n"] for fold in summary["per_fold"]] == [42, 42]           # strata split evenly
    with open(out / "cv_predictions.csv", newline="") as handle:
        assert {row["label"] for row in csv.DictReader(handle)} >= {"", "blue;red"}


def test_commands_for_one_label_per_image_refuse_a_multi_label_manifest(trained, tmp_path, capsys):
    manifest, _ = trained
    for command in (["tune", manifest, "--trials", "1"], ["data", "audit", manifest]):
        assert cli.main([*command, "--out", str(tmp_path / command[0])]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "several labels per image" in error, command
        assert not (tmp_path / command[0]).exists()


def test_a_single_label_model_refuses_multi_label_data(tmp_path, tiny_weights, dataset, capsys):
    training.fit(quick_config(dataset, tmp_path / "run", finetune_epochs=0))
    manifest = write_multilabel(tmp_path / "data", per_set=2)
    assert cli.main(["evaluate", str(tmp_path / "run"), "--data", manifest]) == 2
    assert "several labels per image" in capsys.readouterr().err


def test_resume_continues_a_multi_label_run(tmp_path, tiny_weights, monkeypatch):
    manifest = write_multilabel(tmp_path / "data", per_set=8)
    config = quick_config(manifest, tmp_path / "run", epochs=3, finetune_epochs=2)
    real_epoch = training.train_epoch

    def stop_in_finetune(run, stage, *rest):
        if stage.name == "finetune":
            raise KeyboardInterrupt
        return real_epoch(run, stage, *rest)

    monkeypatch.setattr(training, "train_epoch", stop_in_finetune)
    with pytest.raises(KeyboardInterrupt):
        training.fit(config)
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    resumed = training.fit(config, resume=True)
    whole = training.fit(config.with_run(out=str(tmp_path / "whole")))
    assert resumed.test.to_dict() == whole.test.to_dict()         # the same result as a run never stopped


def test_serve_answers_the_label_set(trained):
    from fastapi.testclient import TestClient

    manifest, out = trained
    image = Path(manifest).parent / "set4-0.jpg"
    with TestClient(create_app(ServeConfig(str(out)))) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        info = client.get("/info").json()
        posted = client.post("/predict", files=[("files", (image.name, image.read_bytes(), "image/jpeg"))])
        answer = posted.json()["predictions"][0]
    assert info["multi_label"] and set(info["thresholds"]) == {"blue", "green", "red"}
    expected = vggtune.load(str(out)).predict([str(image)])[0][0]
    assert answer["labels"] == expected.labels and answer["label"] == expected.label


@pytest.mark.parametrize("file_format, package", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_export_carries_the_sigmoids_and_thresholds(trained, file_format, package):
    pytest.importorskip(package)
    _, out = trained
    result = vggtune.export(str(out), format=file_format)
    values = json.loads(result.path.with_name(result.path.name + ".json").read_text())
    assert values["multi_label"] and set(values["thresholds"]) == {"blue", "green", "red"}
    assert result.max_difference < 1e-4 and result.label_agreement == 1.0


@pytest.mark.parametrize("loss", ["cross-entropy", "asymmetric", "auto"])
def test_the_output_biases_start_at_the_priors_or_at_half_for_the_asymmetric_loss(tmp_path, tiny_weights, monkeypatch,
                                                                                   loss):
    manifest = write_multilabel(tmp_path / "data", per_set=8)
    started = []

    def first_epoch(run, stage, *rest):
        started.append(run.model.head.get_parameter("out.bias").detach().clone())
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_epoch", first_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.fit(quick_config(manifest, tmp_path / "run", loss=loss))
    if loss != "cross-entropy":     # the asymmetric loss's clip would leave a rare label's negatives uncounted
        assert started[0].abs().max() == 0
    else:                           # each label's log-odds in the training split (fewer than half carry each)
        assert (started[0] < -0.1).all()


def test_the_places_head_trains_predicts_and_exports_a_label_set(tmp_path):
    """The multi-label defaults (--head places, the asymmetric loss) end to end on the tiny network: trained,
    its label sets predicted, exported to ONNX with the same outputs."""
    pytest.importorskip("onnxruntime")
    with tiny_weights_for_module(tmp_path / "home"):
        manifest = write_multilabel(tmp_path / "data", per_set=12)
        out = tmp_path / "run"
        flags = [flag for flag in TINY if flag not in ("--head", "flatten")]
        assert cli.main(["train", manifest, "--out", str(out), *flags]) == 0
    spec = json.loads((out / "model.json").read_text())
    assert spec["head"]["kind"] == "places" and spec["head"]["multi_label"]
    assert spec["preprocessing"]["fit"] == "pad"                      # the whole image: an edge keeps its label
    assert RunDir(out).finished_metrics().test.map > 0.5
    answer = vggtune.load(str(out)).predict([str(Path(manifest).parent / "set4-0.jpg")])[0][0]
    assert answer.labels is not None and set(answer.probabilities) == {"blue", "green", "red"}
    result = vggtune.export(str(out), format="onnx")
    assert result.max_difference < 1e-4 and result.label_agreement == 1.0
    metadata = json.loads((out / "model.onnx.json").read_text())
    assert metadata["input"]["fit"] == "pad" and "whole image" in metadata["input"]["how"]
    from test_export import check_snippet, snippet     # the docs' onnxruntime example pads as vggtune does
    check_snippet(snippet("onnxruntime").replace("runs/pets/model.onnx", str(result.path)),
                  vggtune.load(str(out), precision="fp32"), tmp_path)


def test_tflite_export_carries_the_sigmoids_and_thresholds(trained, tmp_path):
    python = tflite_python()
    _, out = trained
    done = subprocess.run([python, "-m", "vggtune", "export", str(out), "--format", "tflite", "--out",
                           str(tmp_path / "model.tflite")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same label on 100" in done.stdout
    values = json.loads((tmp_path / "model.tflite.json").read_text())
    assert values["multi_label"] and set(values["thresholds"]) == {"blue", "green", "red"}


def test_calibrate_refits_each_labels_threshold_on_a_sample(trained, tmp_path, capsys):
    manifest, out = trained
    sample = write_multilabel(tmp_path / "sample", per_set=6)
    before = json.loads((out / "model.json").read_text())["thresholds"]
    assert cli.main(["calibrate", str(out), sample, "--name", "site-b"]) == 0
    said = capsys.readouterr().out
    assert "subset accuracy" in said and "F1 (micro)" in said and "each label's threshold (95 % of 200" in said
    model = json.loads((out / "model.json").read_text())
    assert set(model["thresholds"]) == set(before) and model["earlier_rules"]["trained"]["thresholds"] == before
    assert cli.main(["calibrate", str(out), "--restore", "trained"]) == 0
    assert json.loads((out / "model.json").read_text())["thresholds"] == before
