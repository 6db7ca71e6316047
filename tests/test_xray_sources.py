"""Decisions that carry (issue #56) on real images: the shared chest X-rays with their source split. NORMAL's
`IM-` series (and the first pneumonia patients) train; NORMAL's `NORMAL2-IM-` series (and later patients) are
the other source. The real VGG16 weights, through the command line as a user runs it: the shift check stays
quiet on held-out images of the training source and warns on the same images darkened (the synthetic shift);
calibrate refits the rule on a labelled sample of the other source, and predict decides by it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image, ImageEnhance

from conftest import require_real_weights, shared_data


def link(files, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def vggtune(*args, timeout=900):
    done = subprocess.run([sys.executable, "-m", "vggtune", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def xrays(tmp_path_factory):
    require_real_weights()
    source = shared_data("chest-xray-train")
    normal = sorted((source / "NORMAL").glob("IM-*"))
    elsewhere = sorted((source / "NORMAL").glob("NORMAL2-IM-*"))
    pneumonia = sorted((source / "PNEUMONIA").iterdir())
    root = tmp_path_factory.mktemp("xrays")
    train = root / "train"
    link(normal[:60], train / "NORMAL")
    link(pneumonia[:90], train / "PNEUMONIA")
    held = link(normal[60:75] + pneumonia[90:105], root / "held")                  # the training source, unseen
    darkened = root / "darkened"
    darkened.mkdir()
    for path in normal[60:75] + pneumonia[90:105]:
        with Image.open(path) as image:
            grey = image.convert("L")
            ImageEnhance.Contrast(ImageEnhance.Brightness(grey).enhance(0.6)).enhance(0.5).save(darkened / path.name)
    sample = root / "sample"
    link(elsewhere[:20], sample / "NORMAL")
    link(pneumonia[-30:], sample / "PNEUMONIA")
    out = root / "run"
    vggtune("train", train, "--out", out, "--size", "96", "--epochs", "6", "--finetune-epochs", "0", "--no-report")
    return out, held, darkened, sample


def test_the_shift_check_is_quiet_on_the_training_source_and_warns_on_a_darkened_batch(xrays):
    out, held, darkened, _ = xrays
    said = vggtune("predict", out, held)
    assert "differ from the training images" not in said
    said = vggtune("predict", out, darkened)
    assert "warning: these 30 images differ from the training images" in said and "vggtune calibrate" in said


def test_calibrate_on_the_other_source_writes_the_rule_predict_then_applies(xrays):
    import vggtune as api

    out, _, _, sample = xrays
    files = [str(p) for p in sorted((sample / "NORMAL").iterdir())[:3]]
    before = [p.probabilities for p in api.predict(str(out), files).predictions]
    said = vggtune("calibrate", out, sample, "--name", "second-source")
    assert "before (the rule in force)" in said and "after (out of sample" in said
    model = json.loads((out / "model.json").read_text())
    assert model["calibration"]["name"] == "second-source"
    assert model["calibration"]["per_class"] == {"NORMAL": 20, "PNEUMONIA": 30}
    after = api.predict(str(out), files)
    assert after.rule == model["rule"]                                   # predict decides by the rule written
    printed = subprocess.run([sys.executable, "-m", "vggtune", "predict", str(out), *files, "--format", "json"],
                             capture_output=True, text=True, timeout=600)
    assert [a["label"] for a in json.loads(printed.stdout)] == [p.label for p in after.predictions]
    vggtune("calibrate", out, "--restore", "trained")
    restored = [p.probabilities for p in api.predict(str(out), files).predictions]
    assert all(r == pytest.approx(b, abs=1e-9) for r, b in zip(restored, before))
