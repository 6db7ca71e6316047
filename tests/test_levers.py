"""Accurate on any data (issue #42): class weights in the loss, and a two-class decision threshold chosen on
validation, kept in model.json and used by every path that decides a label (evaluate, predict, serve,
export). Tiny network and synthetic images; the panel that chose the defaults is benchmarks/panel.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vggtune import api, cli
from vggtune.errors import UserError
from vggtune.model.heads import HeadSpec
from vggtune.model.policy import ScoringPolicy, decide
from vggtune.training.config import TrainConfig, input_size
from vggtune.training.metrics import balanced_log_loss, best_threshold, classification_metrics
from vggtune.training.objective import class_weights

from conftest import make_dataset, quick_config


def test_the_decision_rule_at_half_is_the_more_probable_class_and_moves_with_the_threshold():
    p = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [0.1, 0.9]])
    assert decide(p).tolist() == p.argmax(1).tolist() == [0, 1, 0, 1]
    assert decide(p, 0.25).tolist() == [1, 1, 1, 1]
    assert decide(p, 0.65).tolist() == [0, 0, 0, 1]
    three = np.array([[0.2, 0.3, 0.5]])
    assert decide(three, 0.1).tolist() == [2]                  # more than two classes: the most probable
    with pytest.raises(ValueError, match="threshold"):
        ScoringPolicy(threshold=1.0)


def test_the_best_threshold_maximises_balanced_accuracy_and_prefers_the_middle_among_equals():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.8, 0.8, 0.9, 0.9, 0.95, 0.97, 0.99, 0.99])
    threshold = best_threshold(labels, scores)
    assert 0.7 < threshold < 0.8                              # all normals below, all pneumonias above
    metrics = classification_metrics(labels, np.stack([1 - scores, scores], 1), ["n", "p"], threshold)
    assert metrics.balanced_accuracy == 1.0 and metrics.threshold == threshold
    assert classification_metrics(labels, np.stack([1 - scores, scores], 1), ["n", "p"]).specificity == 0.5
    separable = best_threshold(np.array([0, 1]), np.array([0.2, 0.9]))
    assert separable == pytest.approx(0.55)                    # halfway between the scores it falls between
    assert best_threshold(np.array([1, 1]), np.array([0.2, 0.9])) is None


def test_balanced_class_weights_make_every_class_weigh_the_same_and_auto_waits_for_an_imbalance():
    labels = torch.tensor([0] * 10 + [1] * 30)
    weights = class_weights("balanced", labels, 2, 1.5)
    assert weights.tolist() == pytest.approx([2.0, 2 / 3])
    assert (weights * torch.bincount(labels)).tolist() == pytest.approx([20.0, 20.0])
    assert class_weights("off", labels, 2, 1.5) is None
    assert class_weights("auto", torch.tensor([0] * 10 + [1] * 14), 2, 1.5) is None
    assert class_weights("auto", labels, 2, 1.5) is not None
    assert class_weights("balanced", torch.tensor([0, 0, 2]), 3, 1.5).tolist() == pytest.approx([0.75, 0, 1.5])


def test_the_weighted_loss_is_the_weighted_mean_for_sigmoid_and_softmax_heads():
    logits, labels = torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 0, 0])
    each = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction="none")
    weights = torch.tensor([3.0, 1.0])
    expected = (each * weights[labels]).sum() / weights[labels].sum()
    assert HeadSpec("gap", 2).loss(logits, labels, class_weights=weights).item() == pytest.approx(expected.item())
    three = torch.randn(4, 3)
    ce = torch.nn.functional.cross_entropy(three, torch.tensor([0, 1, 2, 2]), weight=torch.tensor([1.0, 2.0, 0.5]))
    assert HeadSpec("gap", 3).loss(three, torch.tensor([0, 1, 2, 2]),
                                   class_weights=torch.tensor([1.0, 2.0, 0.5])).item() == pytest.approx(ce.item())


def test_the_balanced_log_loss_averages_the_classes_own_losses():
    labels = np.array([0, 1, 1, 1])
    p = np.array([[0.5, 0.5], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9]])
    assert balanced_log_loss(labels, p) == pytest.approx((np.log(2) - np.log(0.9)) / 2)


def test_config_takes_a_number_or_val_for_the_threshold_and_names_what_is_allowed():
    assert TrainConfig(data="d", threshold="0.3").threshold == 0.3
    assert TrainConfig(data="d", threshold="val").threshold == "val"
    for bad in ("high", 0, 1.5, True):
        with pytest.raises(UserError, match="--threshold: received .*; allowed: 0 < x < 1, or val"):
            TrainConfig(data="d", threshold=bad)
    with pytest.raises(UserError, match="--class-weights: received 'some'"):
        TrainConfig(data="d", class_weights="some")


def test_class_weights_are_auto_by_default_and_a_run_saved_before_them_resumes_unweighted():
    assert TrainConfig(data="d").class_weights == "auto"
    assert TrainConfig.from_recipe("classic", data="d").class_weights == "off"
    saved = TrainConfig(data="d").to_dict()
    del saved["class_weights"]
    assert TrainConfig.from_dict(saved).class_weights == "off"


def test_the_heads_dropout_is_the_panels_0_2_and_the_classic_recipe_keeps_0_5():
    assert TrainConfig(data="d").dropout == 0.2
    assert TrainConfig.from_recipe("classic", data="d").dropout == 0.5
    assert TrainConfig.from_recipe("classic", data="d", dropout=0.3).dropout == 0.3


def test_size_auto_comes_near_small_images_and_keeps_the_weights_side_for_large_and_tiny_ones():
    assert (input_size("auto", 224, 128), input_size("auto", 224, 180), input_size("auto", 224, 112)) == (128, 192, 128)
    assert input_size("auto", 224, 210) == input_size("auto", 224, 375) == 224        # as large as the crop
    assert input_size("auto", 224, 100) == input_size("auto", 224, None) == 224       # below what was measured
    assert input_size(96, 224, 128) == 96
    assert TrainConfig(data="d").size == "auto" and TrainConfig.from_recipe("classic", data="d").size == 224
    assert TrainConfig(data="d", size="96").size == 96                                 # from the command line
    for bad in (100, "big", 16, True, 96.5):
        with pytest.raises(UserError, match=r"--size: received .*; allowed: a multiple of 32, at least 32, or auto"):
            TrainConfig(data="d", size=bad)


def test_a_run_on_small_images_takes_an_input_side_near_theirs_and_says_so(tiny_weights, tmp_path, caplog, capsys):
    data = make_dataset(tmp_path / "data", n_per_class=10, size=(136, 128))
    out = tmp_path / "run"
    api.train_with(quick_config(data, out, size="auto", quiet=False, epochs=1, finetune_epochs=1))
    assert json.loads((out / "model.json").read_text())["size"] == 128
    assert "input size: 128 px, near the training images' median shorter side of 128 px (--size auto" in caplog.text
    assert "size: auto" in (out / "config.yaml").read_text()              # a resumed or repeated run decides again
    caplog.clear()
    api.train_with(quick_config(data, tmp_path / "given", size=64, quiet=False, epochs=1, finetune_epochs=0))
    assert json.loads((tmp_path / "given" / "model.json").read_text())["size"] == 64
    assert "input size:" not in caplog.text                                # a size given is not announced as chosen
    assert cli.main(["train", str(data), "--out", str(tmp_path / "bad"), "--size", "100"]) == 2
    assert "--size: received 100; allowed: a multiple of 32" in capsys.readouterr().err


@pytest.fixture
def lopsided(tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=40)
    for path in sorted((root / "cat").iterdir())[12:]:
        path.unlink()
    return root


def test_a_threshold_chosen_on_validation_is_kept_in_model_json_and_decides_every_label(tiny_weights, lopsided,
                                                                                         tmp_path, capsys, caplog):
    out = tmp_path / "run"
    config = quick_config(lopsided, out, threshold="val", class_weights="balanced", quiet=False)
    results = api.train_with(config)
    said = caplog.text
    assert "class weights: cat 2.000, dog 0.667" in said and "rule: dog where P(dog) > " in said
    assert "warning: the threshold was set on 2 cat, 8 dog validation images" in said
    threshold = json.loads((out / "model.json").read_text())["threshold"]
    assert 0 < threshold < 1 and results.test.threshold == threshold
    assert api.load(str(out)).spec.scoring.threshold == threshold
    files = sorted(str(p) for p in (lopsided / "dog").iterdir())[:6]
    # predict's --threshold overrides model.json's: near 1 nothing is a dog, near 0 everything is
    for given, label in ((0.999999, "cat"), (1e-6, "dog")):
        result = api.predict(str(out), files, engine="torch", threshold=given)
        assert {p.label for p in result.predictions} == {label} and not result.rejected
    assert cli.main(["predict", str(out), files[0], "--threshold", "2"]) == 2
    assert "--threshold: received 2.0; allowed: 0 < x < 1" in capsys.readouterr().err
    low = api.evaluate(str(out), str(lopsided), str(tmp_path / "low.json"), report=False, threshold=1e-6)
    assert low.metrics.threshold == 1e-6 and low.metrics.specificity == 0.0 and low.metrics.sensitivity == 1.0


def test_the_threshold_is_refused_for_more_than_two_classes(tiny_weights, tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_per_class=8, classes=("a", "b", "c"))
    out = tmp_path / "run"
    api.train_with(quick_config(data, out, threshold="val", epochs=1, finetune_epochs=0))
    assert json.loads((out / "model.json").read_text())["threshold"] == 0.5
    image = str(next((data / "a").iterdir()))
    assert cli.main(["predict", str(out), image, "--threshold", "0.3"]) == 2
    assert "for a model of 3 classes; allowed: a threshold for two-class models only" in capsys.readouterr().err
