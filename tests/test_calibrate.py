"""`vggtune calibrate RUN DATA`: the rule refitted on a labelled sample of another source, written into
model.json and used by predict from then on; the earlier rule kept and restorable; a sample that cannot say
anything refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import ImageEnhance

import vggtune
from vggtune import cli
from vggtune.results.calibration import fit_recalibration, recalibrate

from conftest import make_dataset, synthetic_image, tiny_weights_for_module

TINY = ["--epochs", "12", "--finetune-epochs", "1", "--head", "flatten", "--size", "32", "--batch-size", "8", "--hidden", "16",
        "--lr", "0.01", "--finetune-lr", "0.001", "--dropout", "0", "--val-split", "0.2", "--test-split", "0.2"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with tiny_weights_for_module(tmp_path_factory.mktemp("home")):
        yield


def shifted_sample(root, classes, per_class, start=500):
    """The classes' images from "another camera": darker and washed out."""
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = synthetic_image(label, start + i)
            image = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(0.6)).enhance(0.5)
            image.save(root / name / f"{name}.{i}.jpg")
    return root


@pytest.fixture(scope="module")
def run(home, tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    data = make_dataset(root / "data", n_per_class=16, classes=("normal", "pneumonia"))
    out = root / "run"
    assert cli.main(["train", str(data), "--out", str(out), "--quiet", *TINY]) == 0     # with its model card
    return out


def test_calibrate_writes_the_rule_predict_uses_it_and_restore_brings_the_old_one_back(run, tmp_path, capsys):
    sample = shifted_sample(tmp_path / "sample", ("normal", "pneumonia"), 12)
    image = str(sorted((sample / "normal").iterdir())[0])
    (sample / "pneumonia" / "broken.jpg").write_bytes(b"not an image")           # skipped and said
    before = vggtune.predict(str(run), [image]).predictions[0].probabilities
    assert cli.main(["calibrate", str(run), str(sample), "--name", "camera-2"]) == 0
    out, err = capsys.readouterr()
    assert "skipped" in err and "broken.jpg" in err
    assert "before (the rule in force)" in out and "after (out of sample" in out
    assert "recall of normal" in out and "the rule now gives pneumonia from P(pneumonia)" in out
    assert 'kept as "trained"' in out and "chosen by cross-validation within the sample" in out
    model = json.loads((run / "model.json").read_text())
    assert set(model["offsets"]) == {"normal", "pneumonia"} and model["scale"] > 0
    assert model["calibration"]["name"] == "camera-2" and model["calibration"]["per_class"] == {"normal": 12,
                                                                                                "pneumonia": 12}
    assert "trained" in model["earlier_rules"] and model["rule"].endswith("(P recalibrated by vggtune calibrate)")
    card = (run / "README.md").read_text()
    assert 'refitted by `vggtune calibrate` ("camera-2"' in card and "24 labelled images" in card
    after = vggtune.predict(str(run), [image])
    assert after.rule == model["rule"] and after.predictions[0].probabilities != before
    assert cli.main(["calibrate", str(run), "--restore", "trained"]) == 0
    assert vggtune.predict(str(run), [image]).predictions[0].probabilities == pytest.approx(before, abs=1e-9)
    model = json.loads((run / "model.json").read_text())
    assert "offsets" not in model and "camera-2" in model["earlier_rules"]         # the calibrated rule kept too
    assert cli.main(["calibrate", str(run), "--restore", "camera-2"]) == 0
    assert vggtune.predict(str(run), [image]).predictions[0].probabilities == pytest.approx(
        after.predictions[0].probabilities, abs=1e-9)


@pytest.mark.parametrize("per_class, words", [
    ({"normal": 12}, "pneumonia 0"),                     # a class missing
    ({"normal": 3, "pneumonia": 12}, "normal 3"),        # too few to say anything
])
def test_a_sample_that_cannot_say_anything_is_one_line(run, tmp_path, capsys, per_class, words):
    for name, count in per_class.items():
        shifted_sample(tmp_path / "sample", (name,), count)
    before = (run / "model.json").read_text()
    assert cli.main(["calibrate", str(run), str(tmp_path / "sample")]) == 2
    err = capsys.readouterr().err
    assert "holds too few images to fit a rule on" in err and words in err and len(err.strip().splitlines()) == 1
    assert (run / "model.json").read_text() == before


def test_three_classes_get_offsets_and_several_labels_thresholds(home, tmp_path, capsys):
    data = make_dataset(tmp_path / "three", n_per_class=12, classes=("a", "b", "c"))
    out = tmp_path / "run3"
    assert cli.main(["train", str(data), "--out", str(out), "--quiet", *TINY]) == 0
    assert cli.main(["calibrate", str(out), str(shifted_sample(tmp_path / "s3", ("a", "b", "c"), 8))]) == 0
    assert "the offsets against a over 200 resamples" in capsys.readouterr().out
    assert len(json.loads((out / "model.json").read_text())["offsets"]) == 3


def test_the_fit_finds_a_shift_and_a_scale_and_stays_put_without_one():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 600)
    labels = (rng.random(600) < 1 / (1 + np.exp(-true_logit))).astype(np.int64)   # calibrated at the source

    def as_log_p(logit):
        return np.stack([-np.logaddexp(0, logit), -np.logaddexp(0, -logit)], axis=1)
    shifted = as_log_p(0.5 * true_logit + 3.0)              # the new source: squeezed and pushed toward class 1
    scale, offsets = fit_recalibration(shifted, labels)
    assert 1.5 < scale < 2.5 and -7 < offsets[1] < -4       # undoes them: 2 and -6
    calibrated = np.exp(recalibrate(shifted, scale, offsets))
    assert ((calibrated[:, 1] > 0.5) == labels).mean() > ((shifted[:, 1] > np.log(0.5)) == labels).mean() + 0.1
    scale, offsets = fit_recalibration(as_log_p(true_logit), labels)
    assert abs(np.log(scale)) < 0.2 and abs(offsets[1]) < 0.3


def test_the_shift_is_said_without_labels_and_names_calibrate(run, tmp_path, capsys):
    """predict stays quiet on new images like the training images and warns on a batch from elsewhere."""
    assert cli.main(["calibrate", str(run), "--restore", "trained"]) == 0          # as training left it
    alike, elsewhere = tmp_path / "alike", tmp_path / "elsewhere"
    alike.mkdir()
    elsewhere.mkdir()
    for i in range(30):
        synthetic_image(i % 2, 2000 + i).save(alike / f"{i}.jpg")
        noise = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)   # nothing like a part
        from PIL import Image
        Image.fromarray(noise).save(elsewhere / f"{i}.jpg")
    code = cli.main(["predict", str(run), str(alike)])
    err = capsys.readouterr().err
    assert code == 0 and "warning:" not in err
    assert (run / "shift_reference.safetensors").is_file()                 # the training images' fence, kept
    code = cli.main(["predict", str(run), str(elsewhere)])
    err = capsys.readouterr().err
    assert code == 0 and "warning: these 30 images differ from the training images" in err
    assert "beyond the training images' out-of-distribution fence" in err and "vggtune calibrate" in err
