"""ONNX export: the whole classifier, a free batch dimension, metadata enough to use it without
vggtune, and a parity check that keeps no file when it fails."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch

import vggtune
from vggtune import cli
from vggtune.deploy import exporting
from vggtune.training import schedule as training
from vggtune.features.extract import decode_clean

from conftest import make_dataset, quick_config, synthetic_image, tflite_python, tiny_weights_for_module

EXPORT_PAGE = Path(__file__).resolve().parents[1] / "docs" / "export.md"     # the snippets users copy


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    with tiny_weights_for_module(root / "home"):
        # Separable classes: int8 rounding must not flip labels that the model is sure of.
        data = make_dataset(root / "data", n_per_class=24, classes=("cat", "dog", "fox"))
        training.fit(quick_config(data, root / "run", epochs=8, finetune_epochs=1, test_split=0.3,
                                  tta=False))    # int8 must not flip labels the model is sure of: one view
        yield root / "run"


def test_fp32_export_agrees_with_pytorch_at_any_batch_size(run, tmp_path):
    import onnxruntime
    result = vggtune.export(str(run), out=str(tmp_path / "m.onnx"))
    assert result.path == tmp_path / "m.onnx" and result.max_difference <= 1e-4 and result.label_agreement == 1
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    spec = vggtune.load(run).spec
    meta = json.loads(session.get_modelmeta().custom_metadata_map["vggtune"])
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["weights"] == spec.weights
    assert meta["input"]["resize"] == spec.preprocessing.resize and meta["input"]["crop"] == spec.preprocessing.size
    assert json.loads((tmp_path / "m.onnx.json").read_text()) == meta
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_inputs()[0].shape[0] == "batch"
    predictor = vggtune.load(run, precision="fp32")
    views = torch.stack([decode_clean(synthetic_image(i % 3, 50 + i), spec.preprocessing)[0] for i in range(7)])
    expected = predictor.probabilities(views).numpy()
    for batch in (1, 7):
        got = session.run(None, {"images": views[:batch].permute(0, 2, 3, 1).numpy()})[0]
        assert got.shape == (batch, 3) and np.abs(got - expected[:batch]).max() <= 1e-4


def test_int8_export_keeps_the_labels_and_the_accuracy(run, tmp_path, capsys):
    assert cli.main(["export", str(run), "--precision", "int8", "--out", str(tmp_path / "q.onnx")]) == 0
    out = capsys.readouterr().out
    assert "int8" in out and "test accuracy" in out
    figures = re.search(r"same label on ([\d.]+)%; test accuracy ([\d.]+) \(the run: ([\d.]+)\)", out)
    agreement, onnx_accuracy, run_accuracy = map(float, figures.groups())
    assert agreement >= 99 and abs(onnx_accuracy - run_accuracy) <= 0.005
    assert (tmp_path / "q.onnx").stat().st_size > 0


def test_a_failed_parity_check_keeps_no_file_and_exits_1(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(exporting, "FP32_TOLERANCE", -1.0)           # nothing can pass
    assert cli.main(["export", str(run), "--out", str(tmp_path / "bad.onnx")]) == 1
    assert "parity check failed" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []                           # no file, no temporary left behind


def test_export_mistakes_are_one_line(run, tmp_path, capsys):
    assert cli.main(["export", str(tmp_path)]) == 2
    with pytest.raises(SystemExit) as exited:
        cli.main(["export", str(run), "--precision", "fp16"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "no model.json" in err and "invalid choice" in err


def readme_snippet() -> str:
    return snippet("onnxruntime")


def example_inputs(folder: Path) -> list[Path]:
    """What users feed the example: small and large JPEGs (a large one decodes at a reduced scale), an
    EXIF-rotated one, a transparent PNG, a palette PNG with a transparent colour, a grey one."""
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(3):
        path = folder / f"photo{i}.jpg"
        synthetic_image(i % 3, 70 + i, size=(61, 47)).save(path, quality=95)
        paths.append(path)
    large = folder / "large.jpg"
    synthetic_image(1, 80, size=(64, 48)).resize((640, 480), Image.BILINEAR).save(large, quality=90)
    rotated = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                                       # orientation: rotate 90 degrees to view
    synthetic_image(0, 81, size=(70, 50)).save(rotated, quality=92, exif=exif)
    clear = folder / "clear.png"
    pixels = np.asarray(synthetic_image(2, 82, size=(60, 60)).convert("RGBA")).copy()
    pixels[:, :30, 3] = 40                                 # half the picture nearly transparent
    Image.fromarray(pixels, "RGBA").save(clear)
    palette = folder / "palette.png"
    indexed = synthetic_image(1, 83, size=(50, 50)).quantize(16)
    indexed.info["transparency"] = 0
    indexed.save(palette, transparency=0)
    grey = folder / "grey.jpg"
    synthetic_image(0, 84, size=(50, 50)).convert("L").save(grey, quality=90)
    return paths + [large, rotated, clear, palette, grey]


def test_the_readmes_onnxruntime_example_gives_vggtunes_probabilities(run, tmp_path):
    """The snippet gives vggtune's probabilities on every kind of input (it once dropped transparency and
    decoded large JPEGs at full size)."""
    model = vggtune.export(str(run), out=str(tmp_path / "model.onnx")).path
    check_snippet(readme_snippet().replace("runs/pets/model.onnx", str(model)), vggtune.load(run, precision="fp32"),
                  tmp_path)


def test_openvino_export_agrees_with_pytorch_and_carries_the_metadata(run, tmp_path, capsys):
    import openvino
    assert cli.main(["export", str(run), "--format", "openvino", "--out", str(tmp_path / "m.xml")]) == 0
    assert "openvino fp32" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["m.bin", "m.xml", "m.xml.json"]       # nothing else left behind
    core = openvino.Core()
    model = core.read_model(str(tmp_path / "m.xml"))
    meta = json.loads(model.get_rt_info(["vggtune"]).astype(str))
    assert meta == json.loads((tmp_path / "m.xml.json").read_text())
    assert meta["format"] == "vggtune-openvino/1" and meta["classes"] == ["cat", "dog", "fox"]
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    spec = vggtune.load(run).spec
    views = torch.stack([decode_clean(synthetic_image(i % 3, 60 + i), spec.preprocessing)[0] for i in range(5)])
    expected = vggtune.load(run, precision="fp32").probabilities(views).numpy()
    for batch in (1, 5):                                  # the batch dimension is free, as in the ONNX graph
        got = compiled(views[:batch].permute(0, 2, 3, 1).numpy())[compiled.output(0)]
        assert np.abs(got - expected[:batch]).max() <= 1e-4


def test_openvino_int8_keeps_the_labels_and_the_accuracy(run, tmp_path):
    result = vggtune.export(str(run), out=str(tmp_path / "q.xml"), precision="int8", format="openvino")
    assert result.label_agreement >= 0.99 and abs(result.accuracy_exported - result.accuracy_run) <= 0.005
    assert (tmp_path / "q.bin").stat().st_size > 0


def test_each_format_refuses_what_it_cannot_write(run, tmp_path, capsys):
    assert cli.main(["export", str(run), "--format", "openvino", "--out", str(tmp_path / "m.onnx")]) == 2
    assert cli.main(["export", str(run), "--format", "tflite", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "ending in .xml" in err[0] and "for tflite; allowed: fp32" in err[1]
    assert os.listdir(tmp_path) == []


def snippet(name: str) -> str:
    return re.search(rf"<!-- {name} example -->\s*```python\n(.*?)```", EXPORT_PAGE.read_text(), re.S).group(1)


def check_snippet(code: str, predictor, tmp_path, python: str = sys.executable) -> None:
    """The README snippet `code`, run in a fresh interpreter that cannot import vggtune, on every kind of
    input users feed it, gives the predictor's probabilities to within 1e-4."""
    # short enough to read at a glance: 28 lines, with the padding a multi-label model's images take
    assert len(code.strip().splitlines()) <= 28 and "vggtune" not in code.replace("\"vggtune\"", "")
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "vggtune.py").write_text("raise ImportError('the example must not need vggtune')\n")
    for image in example_inputs(tmp_path / "inputs"):
        done = subprocess.run([python, "-c", code, str(image)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(blocker)}, timeout=300)
        assert done.returncode == 0, done.stderr
        predictions, rejected = predictor.predict([str(image)])
        assert not rejected, rejected
        label, printed = done.stdout.strip().splitlines()[-1].split(" ", 1)
        shown = ast.literal_eval(printed)
        assert max(abs(shown[c] - p) for c, p in predictions[0].probabilities.items()) < 1e-4, image.name
        assert label == predictions[0].label                      # the run's rule, as vggtune decides


def test_the_readmes_openvino_example_gives_vggtunes_probabilities(run, tmp_path):
    model = vggtune.export(str(run), out=str(tmp_path / "model.xml"), format="openvino").path
    check_snippet(snippet("openvino").replace("runs/pets/model.xml", str(model)), vggtune.load(run, precision="fp32"),
                  tmp_path)


def test_tflite_export_passes_its_parity_check_and_the_readmes_example_agrees(run, tmp_path):
    python = tflite_python()
    home = run.parent / "home"
    done = subprocess.run([python, "-m", "vggtune", "export", str(run), "--format", "tflite", "--out",
                           str(tmp_path / "model.tflite")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VGGTUNE_HOME": str(home)})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = re.search(r"largest probability difference ([\d.e+-]+), same label on ([\d.]+)%", done.stdout)
    assert float(figures.group(1)) <= 1e-4 and float(figures.group(2)) == 100
    meta = json.loads((tmp_path / "model.tflite.json").read_text())
    assert meta["format"] == "vggtune-tflite/1" and meta["classes"] == ["cat", "dog", "fox"]
    code = snippet("tflite").replace("runs/pets/model.tflite", str(tmp_path / "model.tflite"))
    check_snippet(code, vggtune.load(run, precision="fp32"), tmp_path, python)
