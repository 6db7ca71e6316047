"""report.html, the model card and Grad-CAM, on tiny runs: every section, images that decode, the
top losses naming the files the metrics call wrong, maps with the input's aspect."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vggtune
from vggtune import cli
from vggtune.training import schedule as training
from vggtune.deploy.gradcam import grad_cam
from vggtune.training.rundir import RunDir, read_predictions

from badfiles import write_unusable
from conftest import quick_config, synthetic_image, tiny_weights_for_module, train_reported
from test_golden import noisy_image

SECTIONS = ("verdict", "curves", "confusion", "calibration", "top-losses", "data", "run")


def noisy_dataset(root: Path, classes=("cat", "dog"), per_class: int = 30) -> Path:
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noisy_image(label, i).save(root / name / f"{name}.{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A two-class run on noisy images (it makes mistakes) and a three-class run, tiny weights."""
    root = tmp_path_factory.mktemp("report-runs")
    with tiny_weights_for_module(root / "home"):
        two = noisy_dataset(root / "two")
        three = noisy_dataset(root / "three", ("cat", "dog", "fox"), 20)
        train_reported(two, root / "run2", precision="fp32", epochs=4, patience=0,
                                  val_split=0.2, test_split=0.3)
        train_reported(three, root / "run3", precision="fp32")
        yield {"two": root / "run2", "three": root / "run3", "data3": three, "root": root}


def sections(page: str) -> list[str]:
    return re.findall(r"<section id='([^']+)'>", page)


def inline_images(page: str) -> list[Image.Image]:
    images = []
    for mime, data in re.findall(r"src='data:(image/[a-z]+);base64,([^']+)'", page):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        images.append(image)
    return images


@pytest.mark.parametrize("which", ["two", "three"])
def test_report_has_every_section_in_order_and_its_images_decode(runs, which):
    page = (runs[which] / "report.html").read_text()
    assert sections(page) == list(SECTIONS)
    images = inline_images(page)
    assert len(images) >= 5 and all(image.width > 0 and image.height > 0 for image in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", page), "the report must not refer to other files"
    assert "Expected calibration error" in page and "95% interval" in page
    # The verdict's figures are the run's own (metrics.json), and each stage names the epoch it kept.
    run = RunDir(runs[which])
    metrics = run.metrics()
    for key, name in (("accuracy", "accuracy"), ("log_loss", "log loss")):
        assert f"<tr><td>{name}</td><td class='n'>{getattr(metrics.test, key):.4f}</td>" in page, key
    for stage, epoch in metrics.kept_epochs.items():
        assert f"kept epoch {epoch}." in page, stage
    assert set(metrics.kept_epochs) == {"head", "finetune"} and all(epoch >= 1 for epoch in metrics.kept_epochs.values())
    binary = which == "two"
    assert ("alt='ROC and PR curves'" in page) == binary      # ROC and PR only for two classes


def test_top_losses_name_the_files_the_metrics_call_wrong(runs):
    run = runs["two"]
    rows = [row for row in read_predictions(run / "predictions.csv", ["cat", "dog"]) if row.split == "test"]
    wrong = {row.path for row in rows if ["cat", "dog"][int(np.argmax(row.probabilities))] != row.label}
    metrics = RunDir(run).metrics().test
    assert len(wrong) == metrics.n - round(metrics.accuracy * metrics.n) and 0 < len(wrong) <= 12
    page = (run / "report.html").read_text()
    shown = set(re.findall(r"<figure class='tile wrong' data-path='([^']+)'", page))
    assert shown == wrong
    unsure = re.findall(r"<figure class='tile unsure' data-path='([^']+)'", page)
    assert unsure and not set(unsure) & wrong


def test_model_card_has_the_hugging_face_layout(runs):
    card = (runs["three"] / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "vggtune" and front["pipeline_tag"] == "image-classification"
    test = RunDir(runs["three"]).metrics().test
    reported = {row["type"]: row["value"] for row in front["model-index"][0]["results"][0]["metrics"]}
    assert list(reported)[0] == "accuracy" and reported["accuracy"] == round(test.accuracy, 4)
    assert reported["log_loss"] == round(test.log_loss, 4) and reported["f1"] == round(test.f1_macro, 4)
    for heading in ("## Model description", "## Intended uses and limitations", "## Training data",
                    "## Training procedure", "## Evaluation results", "## How to use"):
        assert heading in card
    assert "95% interval" in card and "vggtune.load(" in card


def test_gradcam_is_the_images_own_size_and_is_not_constant(runs, tmp_path):
    """A small PNG (enlarged for the network) and a large JPEG (decoded at a reduced scale for it): the map,
    the image and the overlay are each input's own size, 498x415 giving 498x415 (it gave 307x256)."""
    small = tmp_path / "wide.png"
    synthetic_image(1, 3, size=(90, 60)).save(small)                    # 3:2, wider than tall
    large = tmp_path / "photo.jpg"
    synthetic_image(0, 4, size=(64, 48)).resize((498, 415)).save(large, quality=90)
    predictor = vggtune.load(runs["two"])
    explanations, rejected = predictor.explain([str(small), b"not an image", large.read_bytes()])
    assert [name for name, _ in rejected] == ["<bytes 1>"]
    for explanation, size in zip(explanations, ((90, 60), (498, 415))):
        heatmap = explanation.heatmap
        assert heatmap.shape == (size[1], size[0]) == explanation.image.shape[:2]
        left, top, right, bottom = explanation.box
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
        crop = min(size) * predictor.preprocessing.size / predictor.preprocessing.resize    # the centre crop, square
        assert abs((right - left) - (bottom - top)) <= 1 and abs((bottom - top) - crop) <= 1.5
        inside = heatmap[top:bottom, left:right]
        assert inside.std() > 0 and inside.max() == pytest.approx(1.0, abs=0.02) and heatmap[:, :left].max() == 0
        assert explanation.overlay().size == size


def test_gradcam_of_the_sigmoid_head_explains_the_named_class(runs):
    """Negating the one output unit swaps the classes: the map for class 0 must become the map for
    class 1 of the negated model, and differ from the map for class 1 of the original."""
    predictor = vggtune.load(runs["two"], precision="fp32")
    views = torch.stack([torch.from_numpy(np.array(noisy_image(label, 40).resize((32, 32)))).permute(2, 0, 1)
                         for label in (0, 1)])
    model, runtime, prep = predictor.model, predictor.runtime, predictor.preprocessing
    for_cat = grad_cam(model, runtime, views, prep, [0, 0])
    for_dog = grad_cam(model, runtime, views, prep, [1, 1])
    with torch.no_grad():
        model.head.out.weight.neg_()
        model.head.out.bias.neg_()
    negated_for_dog = grad_cam(model, runtime, views, prep, [1, 1])
    assert np.allclose(for_cat, negated_for_dog, atol=1e-5)
    assert not np.allclose(for_cat, for_dog, atol=1e-3)


def test_explain_command_writes_overlays_and_names_what_it_skipped(runs, tmp_path, capsys):
    good = tmp_path / "fox.png"
    synthetic_image(2, 5).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    status = cli.main(["explain", str(runs["three"]), str(good), str(bad), "--class", "fox", "--out", str(tmp_path / "maps")])
    out, err = capsys.readouterr()
    assert status == 1 and "broken.jpg" in err and "map for fox" in out
    png = Image.open(tmp_path / "maps" / "fox.gradcam.png")
    assert png.size[0] > 0
    assert cli.main(["explain", str(runs["three"]), str(good), "--class", "wolf"]) == 2
    assert "allowed" in capsys.readouterr().err


def test_evaluate_on_another_folder_reports_it_with_its_unreadable_files(runs, tmp_path):
    folder = tmp_path / "other"
    for label, name in enumerate(("cat", "dog", "fox")):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            synthetic_image(label, 100 + i).save(folder / name / f"{name}.{i}.jpg")
    write_unusable(folder / "dog", np.random.default_rng(0))
    assert cli.main(["evaluate", str(runs["three"]), "--data", str(folder), "--output", str(tmp_path / "e.json")]) == 0
    page = (tmp_path / "e.html").read_text()
    assert sections(page) == list(SECTIONS)
    assert re.search(r"<h3>Evaluated: [^<]*other</h3>", page)
    assert "Unreadable in" in page and "every file and why" in page
    rows = read_predictions(tmp_path / "e.predictions.csv", ["cat", "dog", "fox"])
    assert len(rows) == 12


def test_report_command_rewrites_report_and_card_and_refuses_a_non_run(runs, tmp_path, capsys):
    out = tmp_path / "again.html"
    assert cli.main(["report", str(runs["two"]), "--out", str(out)]) == 0
    assert sections(out.read_text()) == list(SECTIONS)
    assert "model card" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no model.json" in capsys.readouterr().err


def test_a_run_without_held_out_images_still_gets_a_report(runs, tiny_weights, tmp_path):
    train_reported(runs["data3"], tmp_path / "run", val_split=0.0, test_split=0.0, epochs=1,
                              finetune_epochs=0)
    page = (tmp_path / "run" / "report.html").read_text()
    assert "held out no images" in page and sections(page) == ["verdict", "curves", "data", "run"]
    assert "This run kept no test images" in (tmp_path / "run" / "README.md").read_text()


def test_no_report_flag_skips_it(runs, tiny_weights, tmp_path):
    training.fit(quick_config(runs["data3"], tmp_path / "run", epochs=1, finetune_epochs=0, no_report=True))
    assert not (tmp_path / "run" / "report.html").exists() and not (tmp_path / "run" / "README.md").exists()
    assert (tmp_path / "run" / "predictions.csv").is_file()


def test_report_opens_in_chromium_with_every_image_and_no_network(runs, tmp_path):
    from browser import chromium, images_loaded, requested_urls, screenshot
    page = (runs["two"] / "report.html").resolve()
    with chromium(tmp_path / "profile") as driver:
        requested_urls(driver)                                   # what the browser did before the page
        driver.get(page.as_uri())
        loaded = images_loaded(driver)
        urls = requested_urls(driver, page.as_uri())
        shot = screenshot(driver, tmp_path / "report.png")
    expected = len(re.findall(r"<img ", page.read_text()))
    assert len(loaded) == expected >= 5
    assert all(image["complete"] and image["width"] > 0 and image["height"] > 0 for image in loaded), loaded
    assert urls[0] == page.as_uri() and all(url.startswith(("file:", "data:")) for url in urls), [u[:80] for u in urls]
    assert Image.open(shot).size[1] > 1000


def test_the_api_verbs_stay_functions_after_every_module_is_imported():
    import importlib
    import inspect
    import pkgutil
    for module in pkgutil.walk_packages(vggtune.__path__, "vggtune."):
        if not module.name.endswith("__main__"):          # it runs the command line
            importlib.import_module(module.name)
    for name in vggtune.__all__:
        value = getattr(vggtune, name)
        assert not inspect.ismodule(value) and (callable(value) or name == "__version__"), name


def test_an_int8_head_only_run_gets_its_report_and_maps(runs, tiny_weights, tmp_path):
    """Its int8 blocks reach into block5, the block Grad-CAM needs in float."""
    train_reported(runs["data3"], tmp_path / "run", precision="int8", finetune_epochs=0, epochs=2)
    page = (tmp_path / "run" / "report.html").read_text()
    assert sections(page) == list(SECTIONS) and "Grad-CAM of" in page
    explanations, _ = vggtune.load(tmp_path / "run").explain([synthetic_image(2, 9)])
    assert explanations[0].heatmap.max() == pytest.approx(1.0)
