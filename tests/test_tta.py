"""Test-time augmentation (the mirror image) and temperature scaling: the same probabilities from the
cache during training, from a loaded Predictor, and from the exported graph."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vggtune
import vggtune.training.schedule as train_module
from vggtune.model.classifier import Classifier
from vggtune.model.heads import HeadSpec
from vggtune.model.policy import ScoringPolicy
from vggtune.training.scoring import Scorer

from conftest import TINY, quick_config, tiny_state_dict


def noisy_labels(dataset, count: int = 4):
    """Some images under the other class's folder: a model sure of them is wrong, so a fitted temperature softens."""
    for i in range(count):
        (dataset / "cat" / f"cat.{i}.jpg").rename(dataset / "dog" / f"cat-as-dog.{i}.jpg")
        (dataset / "dog" / f"dog.{i}.jpg").rename(dataset / "cat" / f"dog-as-cat.{i}.jpg")
    return dataset


def test_fitted_temperature_recovers_the_scale_that_made_the_labels():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 4000).astype(np.float32)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-z / 2.5))).astype(np.int64)    # true temperature 2.5
    model = Classifier(HeadSpec("gap", 2, 8, 0.0), size=32, arch=TINY)
    scorer = Scorer(model, None, ["cat", "dog"], 32)
    fitted = scorer.fit_temperature(z[None, :, None], labels)
    assert fitted == pytest.approx(2.5, rel=0.1) and scorer.policy.temperature == 1.0
    separated = (z > 0).astype(np.int64)                 # no errors: the best fit would sharpen without end
    assert scorer.fit_temperature(z[None, :, None], separated) == pytest.approx(1.0, abs=1e-4)


def test_tta_averages_the_image_and_its_mirror_image():
    model = Classifier(HeadSpec("flatten", 3, 8, 0.0), size=32, arch=TINY).eval()
    model.backbone.load_state_dict(tiny_state_dict())
    images, head = torch.randn(4, 3, 32, 32), model.head_spec
    clean, tta = ScoringPolicy.of(tta=False), ScoringPolicy.of(tta=True)
    with torch.no_grad():
        plain = clean.classify(model, images, head)
        mirrored = head.probabilities(model(images.flip(-1)))
        both = tta.classify(model, images, head)
        cooled = tta.at(2.0).classify(model, images, head)
    assert torch.allclose(both, (plain + mirrored.double()) / 2, atol=1e-6)
    assert not torch.allclose(both, plain, atol=1e-3)
    expected = (head.probabilities(model(images) / 2) + head.probabilities(model(images.flip(-1)) / 2)) / 2
    assert cooled.dtype == torch.float64 and torch.allclose(cooled, expected.double(), atol=1e-6)
    assert tta.tta and not clean.tta and tta.clean() == clean     # new values; the policies themselves unchanged


def test_training_with_tta_and_calibration_agrees_with_the_loaded_predictor(tmp_path, dataset, tiny_weights):
    out = tmp_path / "run"
    results = train_module.fit(quick_config(noisy_labels(dataset), out, tta=True, calibrate=True))
    spec = json.loads((out / "model.json").read_text())
    assert spec["tta"] is True and spec["temperature"] > 1.0
    # Training scored the cached clean and mirrored views; the predictor flips the decoded image.
    evaluated = vggtune.evaluate(str(out), report=False)
    assert evaluated.metrics.confusion_matrix == results.test.confusion_matrix
    assert evaluated.metrics.log_loss == pytest.approx(results.test.log_loss, abs=1e-3)


def test_calibration_lowers_the_validation_log_loss(tmp_path, dataset, tiny_weights):
    plain = train_module.fit(quick_config(dataset, tmp_path / "plain", epochs=2, finetune_epochs=0))
    calibrated = train_module.fit(quick_config(dataset, tmp_path / "cal", epochs=2, finetune_epochs=0,
                                               calibrate=True))
    # At T = 1 (the fit's lower bound) the two differ only by float32 rounding of the logits' scale.
    assert calibrated.val.log_loss <= plain.val.log_loss + 1e-6
    assert calibrated.val.confusion_matrix == plain.val.confusion_matrix   # a scale moves no label


def test_calibrate_without_validation_images_keeps_temperature_one(tmp_path, dataset, tiny_weights):
    train_module.fit(quick_config(dataset, tmp_path / "run", val_split=0.0, calibrate=True, finetune_epochs=0))
    assert json.loads((tmp_path / "run" / "model.json").read_text())["temperature"] == 1.0


def test_no_cache_run_with_tta_matches_the_cached_run(tmp_path, dataset, tiny_weights):
    cached = train_module.fit(quick_config(dataset, tmp_path / "a", tta=True, finetune_epochs=0))
    live = train_module.fit(quick_config(dataset, tmp_path / "b", tta=True, finetune_epochs=0, no_cache=True))
    assert live.test.confusion_matrix == cached.test.confusion_matrix


def test_the_classic_recipe_is_one_flag_away_and_given_options_win():
    from vggtune.training.config import RECIPES, TrainConfig
    from vggtune.errors import UserError
    classic = TrainConfig.from_recipe("classic", data=".")
    assert (classic.recipe, classic.head, classic.tta, classic.calibrate) == ("classic", "flatten", False, False)
    assert TrainConfig.from_recipe("classic", data=".", tta=True).tta is True
    assert TrainConfig.from_recipe(data=".") == TrainConfig(data=".")          # "vggtune": the defaults
    default = TrainConfig(data=".")
    changed = {name for name in TrainConfig.__dataclass_fields__ if getattr(classic, name) != getattr(default, name)}
    assert changed == {"recipe", "tta", "head", "lr", "class_weights", "finetune_lr", "dropout", "size"}
    assert default.tta is True
    assert (default.head, default.lr, classic.lr, default.finetune_lr, classic.finetune_lr) == ("auto", 1e-3, 3e-4,
                                                                                                3e-5, 1e-5)
    assert set(RECIPES["classic"]) <= {f for f in TrainConfig.__dataclass_fields__}
    with pytest.raises(UserError, match="--recipe: received 'keras'; allowed: vggtune, classic"):
        TrainConfig.from_recipe("keras", data=".")


def test_recipe_tta_and_calibrate_flags_reach_the_config(tmp_path, dataset, tiny_weights):
    from vggtune.cli import main
    flags = ["--epochs", "1", "--finetune-epochs", "0", "--size", "32", "--hidden", "8", "--quiet"]
    assert main(["train", str(dataset), "--out", str(tmp_path / "a"), "--recipe", "classic", "--tta", *flags]) == 0
    saved = (tmp_path / "a" / "config.yaml").read_text()
    assert "recipe: classic" in saved and "tta: true" in saved and "calibrate: false" in saved
    assert json.loads((tmp_path / "a" / "model.json").read_text())["tta"] is True          # the flag wins
    assert main(["train", str(dataset), "--out", str(tmp_path / "b"), "--no-tta", "--no-calibrate", *flags]) == 0
    saved = (tmp_path / "b" / "config.yaml").read_text()
    assert "recipe: vggtune" in saved and "tta: false" in saved
    assert json.loads((tmp_path / "b" / "model.json").read_text())["tta"] is False
    assert main(["train", str(dataset), "--out", str(tmp_path / "c"), "--recipe", "classic", *flags]) == 0
    assert json.loads((tmp_path / "c" / "model.json").read_text())["tta"] is False         # classic: one view


def test_tta_changes_only_the_final_scores_not_the_training(tmp_path, dataset, tiny_weights):
    with_tta = train_module.fit(quick_config(dataset, tmp_path / "a", tta=True))
    without = train_module.fit(quick_config(dataset, tmp_path / "b", tta=False))
    history = [(tmp_path / name / "metrics.jsonl").read_text() for name in ("a", "b")]
    assert history[0] == history[1]                         # the same epochs, chosen on the clean view
    assert with_tta.test.log_loss != without.test.log_loss


def test_exported_graph_averages_the_mirror_image_too(tmp_path, dataset, tiny_weights):
    import onnxruntime
    train_module.fit(quick_config(noisy_labels(dataset), tmp_path / "run", tta=True, calibrate=True, finetune_epochs=0))
    result = vggtune.export(str(tmp_path / "run"))
    assert result.max_difference <= 1e-4 and result.label_agreement == 1
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["vggtune"])
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["tta"] is True and meta["temperature"] == spec["temperature"] != 1.0
    predictor = vggtune.load(tmp_path / "run", precision="fp32")
    image = np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    expected = predictor.probabilities(torch.from_numpy(image).permute(0, 3, 1, 2)).numpy()
    assert np.abs(session.run(None, {"images": image})[0] - expected).max() <= 1e-4


def test_ten_crop_views_are_torchvisions_ten_crops_of_the_resized_image(tmp_path):
    from PIL import Image
    from torchvision.transforms import v2
    from vggtune.features.cache import entry_name
    from vggtune.features.settings import AugmentConfig
    from vggtune.features.transforms import make_view, resized
    from vggtune.model.policy import TEN_CROP
    from vggtune.model.weights import Preprocessing
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=40, size=32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    expected = v2.TenCrop(32)(resized(image, prep))        # 4 corners + centre, then the same mirrored
    # TenCrop mirrors the image before cropping, so its mirrored top-left crop is our mirrored top-right one.
    order = {0: 4, -1: 9, -2: 0, -3: 1, -4: 2, -5: 3, -6: 6, -7: 5, -8: 8, -9: 7}
    made = {view: make_view(image, prep, AugmentConfig(), "0" * 64, view) for view in TEN_CROP}
    assert all(torch.equal(made[view], expected[order[view]]) for view in TEN_CROP)
    assert len({entry_name("0" * 64, view, AugmentConfig()) for view in TEN_CROP}) == 10
    with pytest.raises(ValueError, match="ten-crop"):
        ScoringPolicy(views=TEN_CROP).view_inputs(torch.zeros(1, 3, 32, 32))


def test_log_loss_counts_a_confidently_wrong_image_in_full():
    """Probabilities from the logits in log space: a logit of 40 against the true class costs 40 nats, not
    the 16.1 that a probability clipped at 1e-7 allowed, and with TTA the log of the views' mean."""
    import math
    from vggtune.model.heads import HeadSpec
    from vggtune.training.metrics import classification_metrics
    head = HeadSpec("gap", 2)
    logits = torch.tensor([[[40.0], [-3.0]], [[38.0], [-3.0]]])          # (view, image, output): image 0 is a cat
    one = ScoringPolicy.of(tta=False).probabilities(head, logits[:1]).numpy()
    assert classification_metrics([0, 0], one, ["cat", "dog"]).log_loss == pytest.approx(
        (40 + math.log1p(math.exp(-40)) + math.log1p(math.exp(-3))) / 2, rel=1e-9)
    both = ScoringPolicy.of(tta=True).log_probabilities(head, logits)[0, 0]
    assert float(both) == pytest.approx(math.log((math.exp(-40) + math.exp(-38)) / 2), rel=1e-9)
    assert float(both) > -40 and math.isfinite(float(both))
