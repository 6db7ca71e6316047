"""One decision rule, in the user's words, in every output: a two-class run whose positive class is the
alphabetically first (a defect) and whose threshold is not 0.5. The terminal, model.json, predictions.csv,
predict, evaluate, serve (/info and its answers), the ONNX metadata and the docs' ONNX example agree."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

import vggtune
from vggtune import cli
from vggtune.deploy.service import ServeConfig

from conftest import make_dataset, synthetic_image
from test_export import snippet
from test_serve import client_for

TINY = ["--epochs", "3", "--finetune-epochs", "1", "--size", "32", "--batch-size", "8", "--hidden", "16",
        "--lr", "0.01", "--finetune-lr", "0.001", "--dropout", "0", "--val-split", "0.25", "--test-split", "0.25"]
RULE = "defect where P(defect) >= 0.3, else good"


def by_rule(p_defect: float) -> str:
    return "defect" if p_defect >= 0.3 - 1e-9 else "good"


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("parts"), n_per_class=16, classes=("defect", "good"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory, tiny_weights_module):
    out = tmp_path_factory.mktemp("runs") / "run"
    code = cli.main(["train", str(data), "--out", str(out), "--positive-class", "defect", "--threshold", "0.3", *TINY])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def tiny_weights_module(tmp_path_factory):
    from conftest import tiny_weights_for_module
    with tiny_weights_for_module(tmp_path_factory.mktemp("home")):
        yield


def test_model_json_and_the_run_say_the_rule(run):
    model = json.loads((run / "model.json").read_text())
    assert model["positive_class"] == "defect" and model["rule"] == RULE
    assert model["threshold"] == pytest.approx(0.7)                     # kept on the second class's probability
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["positive_class"] == "defect" and metrics["threshold"] == pytest.approx(0.3)
    assert metrics["sensitivity"] == metrics["per_class"]["defect"]["recall"]


def test_predictions_csv_applies_the_rule_not_the_larger_probability(run):
    with open(run / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["predicted"] == by_rule(float(row["defect"])) for row in rows)


def test_predict_and_evaluate_apply_and_say_it(run, data, tmp_path, capsys):
    files = sorted(str(p) for p in (data / "good").iterdir())[:6] + sorted(str(p) for p in (data / "defect").iterdir())[:6]
    code, out, err = run_cli(capsys, "predict", run, *files, "--format", "csv")
    assert code == 0 and f"rule: {RULE}" in err
    rows = list(csv.DictReader(out.splitlines()))
    assert all(row["label"] == by_rule(float(row["defect"])) for row in rows)
    code, out, _ = run_cli(capsys, "evaluate", run, "--data", data, "--output", tmp_path / "e.json", "--no-report")
    assert code == 0 and f"rule               {RULE}" in out
    with open(tmp_path / "e.predictions.csv", newline="") as handle:
        assert all(row["predicted"] == by_rule(float(row["defect"])) for row in csv.DictReader(handle))
    # the positive class and a threshold given to predict: the same rule said the other way round
    other = vggtune.predict(str(run), files, positive_class="good", threshold=0.7)
    assert other.rule == "good where P(good) > 0.7, else defect"
    assert [p.label for p in other.predictions] == [by_rule(p.probabilities["defect"]) for p in other.predictions]


def test_serve_answers_and_info_follow_the_rule(run, tmp_path):
    client = client_for(ServeConfig(str(run)))
    try:
        info = client.get("/info").json()
        assert info["rule"] == RULE and info["positive_class"] == "defect" and info["threshold"] == pytest.approx(0.7)
        images = []
        for i in range(6):
            images.append(tmp_path / f"part{i}.jpg")
            synthetic_image(i % 2, 300 + i).save(images[-1])
        answer = client.post("/predict", files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images])
        for served in answer.json()["predictions"]:
            assert served["label"] == by_rule(served["probabilities"]["defect"])
    finally:
        client.__exit__(None, None, None)


def test_the_exported_metadata_and_the_docs_example_apply_it(run, data, tmp_path):
    model = vggtune.export(str(run), out=str(tmp_path / "model.onnx")).path
    code = snippet("onnxruntime").replace("runs/pets/model.onnx", str(model))
    image = sorted((data / "defect").iterdir())[0]
    done = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    label = done.stdout.strip().splitlines()[-1].split(" ", 1)[0]
    assert label == vggtune.predict(str(run), [str(image)]).predictions[0].label


def test_a_target_recall_chooses_the_threshold_on_validation(data, tmp_path, tiny_weights_module, capsys):
    out = tmp_path / "recall"
    code, _, err = run_cli(capsys, "train", data, "--out", out, "--positive-class", "defect", "--target-recall", "0.9",
                           *TINY)
    assert code == 0
    assert "to reach a recall of 0.9" in err and "the threshold's 95 % interval" in err
    assert "warning: the threshold was set on " in err and "defect validation images" in err
    assert "about 100 a class are needed" in err
    model = json.loads((out / "model.json").read_text())
    assert model["positive_class"] == "defect"
    with open(out / "predictions.csv", newline="") as handle:
        val = [row for row in csv.DictReader(handle) if row["split"] == "val" and row["label"] == "defect"]
    assert sum(row["predicted"] == "defect" for row in val) >= 0.9 * len(val)


def test_a_cost_ratio_chooses_the_threshold_with_the_least_cost_on_validation(data, tmp_path, tiny_weights_module,
                                                                              capsys):
    """A missed defect costing 20 false alarms moves the rule towards defect: no more defects missed on
    validation than at an even cost, and the validation figures it prints are those of predictions.csv."""
    missed = {}
    for cost in (1, 20):
        out = tmp_path / f"cost{cost}"
        code, _, err = run_cli(capsys, "train", data, "--out", out, "--positive-class", "defect", "--cost-ratio",
                               str(cost), *TINY)
        assert code == 0 and f"for the least cost where a missed defect costs {cost} false alarms" in err
        with open(out / "predictions.csv", newline="") as handle:
            val = [row for row in csv.DictReader(handle) if row["split"] == "val"]
        missed[cost] = sum(row["label"] == "defect" and row["predicted"] != "defect" for row in val)
        false_alarms = sum(row["label"] != "defect" and row["predicted"] == "defect" for row in val)
        assert f"there {missed[cost]} of " in err and f"defect missed, {false_alarms} false alarms)" in err
    assert missed[20] <= missed[1]


def test_the_least_cost_threshold_counts_each_error_at_its_price():
    from vggtune.training.metrics import threshold_for_cost
    positive = np.array([False, False, False, True, True, True])
    scores = np.array([0.1, 0.3, 0.6, 0.4, 0.8, 0.9])
    assert threshold_for_cost(positive, scores, 0.5) == pytest.approx(0.7)       # one miss (0.4), no false alarm
    assert threshold_for_cost(positive, scores, 5.0) == pytest.approx(0.35)      # no miss, one false alarm (0.6)
    assert threshold_for_cost(positive, scores, 1.0) == pytest.approx(0.35)      # equal: the one nearer 0.5


@pytest.mark.parametrize("flags, words", [
    (["--positive-class", "scratch"], "--positive-class: received 'scratch'; allowed: one of the classes defect, good"),
    (["--target-recall", "0.9", "--threshold", "0.3"], "each sets the rule; allowed: one of them"),
    (["--cost-ratio", "5", "--target-recall", "0.9"], "--target-recall 0.9 with --cost-ratio 5.0: each sets the rule"),
    (["--cost-ratio", "0"], "--cost-ratio: received 0.0; allowed: x > 0"),
    (["--target-recall", "1.5"], "--target-recall: received 1.5; allowed: 0 < x < 1"),
])
def test_a_rule_that_cannot_be_is_one_line(data, tmp_path, capsys, flags, words):
    code, _, err = run_cli(capsys, "train", data, "--out", tmp_path / "bad", *flags, *TINY)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
