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
import pytest
import torch

import vggtune
from vggtune import cli
from vggtune.deploy import onnxexport
from vggtune.training import schedule as training
from vggtune.features.extract import decode_clean

from conftest import make_dataset, quick_config, synthetic_image, tiny_weights_for_module

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    with tiny_weights_for_module(root / "home"):
        # Separable classes: int8 rounding must not flip labels that the model is sure of.
        data = make_dataset(root / "data", n_per_class=24, classes=("cat", "dog", "fox"))
        training.fit(quick_config(data, root / "run", epochs=4, finetune_epochs=1, test_split=0.3,
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
    monkeypatch.setattr(onnxexport, "FP32_TOLERANCE", -1.0)           # nothing can pass
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
    text = README.read_text()
    return re.search(r"<!-- onnxruntime example -->\s*```python\n(.*?)```", text, re.S).group(1)


def test_the_readmes_onnxruntime_example_runs_without_vggtune(run, tmp_path):
    """The snippet, run in a fresh interpreter that cannot import vggtune, gives vggtune's labels."""
    model = vggtune.export(str(run), out=str(tmp_path / "model.onnx")).path
    code = readme_snippet().replace("runs/pets/model.onnx", str(model))
    assert len(code.strip().splitlines()) <= 16 and "vggtune" not in code.replace("\"vggtune\"", "")
    predictor = vggtune.load(run, precision="fp32")
    for i in range(6):
        image = tmp_path / f"photo{i}.jpg"
        synthetic_image(i % 3, 70 + i, size=(61, 47)).save(image, quality=95)
        blocker = tmp_path / "blocker"
        blocker.mkdir(exist_ok=True)
        (blocker / "vggtune.py").write_text("raise ImportError('the example must not need vggtune')\n")
        done = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(blocker)}, timeout=120)
        assert done.returncode == 0, done.stderr
        predictions, _ = predictor.predict([str(image)])
        label, printed = done.stdout.strip().split(" ", 1)
        shown = ast.literal_eval(printed)
        # The same pixels up to resampling (at most 1 grey level apart here): the same probabilities.
        assert max(abs(shown[c] - p) for c, p in predictions[0].probabilities.items()) < 0.01
        assert label == max(shown, key=shown.get)
