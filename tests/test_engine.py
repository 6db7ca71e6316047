"""The engines for the frozen blocks: each one against PyTorch fp32 on the same weights, compiled once
and reused, `auto` chosen by a measurement kept per machine, and the choices refused with one line."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import vggtune
import vggtune.api
from vggtune import cli
from vggtune.errors import UserError
from vggtune.features import choice, engine as engines
from vggtune.features.choice import ENGINE_VARIABLE, resolve
from vggtune.features.engine import Engine, frozen
from vggtune.model import quantize
from vggtune.model.classifier import Classifier
from vggtune.model.heads import HeadSpec
from vggtune.model.runtime import Runtime

from conftest import TINY, quick_config, tiny_state_dict

CPU_FP32 = Runtime(torch.device("cpu"), bf16=False)
CPU_BF16 = Runtime(torch.device("cpu"), bf16=True)
CPU_INT8 = Runtime(torch.device("cpu"), bf16=False, int8=True)
INSTALLED = [name for name in ("openvino", "onnxruntime") if engines.installed(name)]
# fp32 runtimes sum in other orders than oneDNN; relative to the largest feature
FP32_TOLERANCE = 1e-4


def tiny_model() -> Classifier:
    model = Classifier(HeadSpec("flatten", 2, hidden=8), size=64, arch=TINY)
    model.backbone.load_state_dict(tiny_state_dict())
    return model.eval().to(memory_format=torch.channels_last)


@pytest.fixture
def unpinned(monkeypatch):
    """`auto` as users get it: measured, not pinned to PyTorch as in the rest of the suite."""
    monkeypatch.delenv(ENGINE_VARIABLE, raising=False)


def test_the_runtimes_are_installed_where_pip_install_puts_them():
    """CI installs vggtune as a user does: both runtimes come with it on x86-64, so each is tested."""
    import platform
    if platform.machine() in ("x86_64", "AMD64"):
        assert INSTALLED == ["openvino", "onnxruntime"]


@pytest.mark.parametrize("name", INSTALLED)
@pytest.mark.parametrize("after,upto", [(None, "block4"), ("block4", "block5"), (None, "block5")])
def test_each_engine_computes_pytorchs_features(name, after, upto):
    model = tiny_model()
    assert set(engines.KINDS) == set(engines.ENGINES) - {"auto"}
    assert all(key == kind.name for key, kind in engines.KINDS.items())
    channels = 3 if after is None else model.arch.channels(after)
    for batch, side in ((1, 64), (5, 96)):           # the batch and the image size are free
        side = side if after is None else side // model.arch.reduction(after)
        x = torch.randn(batch, channels, side, side)
        expected = frozen(model, CPU_FP32, Engine("torch", "fp32"), after, upto)(x)
        got = frozen(model, CPU_FP32, Engine(name, "fp32"), after, upto)(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert (got - expected).abs().max() <= FP32_TOLERANCE * expected.abs().max(), (name, batch, side)


@pytest.mark.skipif("openvino" not in INSTALLED, reason="openvino is not installed")
def test_openvino_bf16_stays_within_bf16_rounding():
    model = tiny_model()
    x = torch.randn(3, 3, 64, 64)
    expected = frozen(model, CPU_FP32, Engine("torch", "fp32"), upto="block4")(x)
    got = frozen(model, CPU_BF16, Engine("openvino", "bf16"), upto="block4")(x)
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()


def int8_model(upto: str = "block4") -> Classifier:
    model = tiny_model()
    quantize.calibrate_model(model, upto, torch.randn(8, 3, 64, 64), CPU_INT8.autocast)
    return model


@pytest.mark.skipif("openvino" not in INSTALLED, reason="openvino is not installed")
@pytest.mark.parametrize("int8_upto,upto", [("block4", "block4"), ("block4", "block5"), ("block5", "block5")])
def test_openvino_runs_the_int8_blocks_pytorch_calibrated(int8_upto, upto):
    """The same quantized network: the same weights and activation scales, so features agree up to a
    rounding step or two of the int8 grid, far closer than to the float network."""
    model = int8_model(int8_upto)
    x = torch.randn(4, 3, 64, 64)
    expected = frozen(model, CPU_INT8, Engine("torch", "int8"), upto=upto)(x)
    got = frozen(model, CPU_INT8, Engine("openvino", "int8"), upto=upto)(x)
    with torch.no_grad():
        floats = model.backbone.run(x, upto=upto)                  # the float network it quantizes
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    assert (got - expected).abs().mean() < (floats - expected).abs().mean() / 2


@pytest.mark.skipif("openvino" not in INSTALLED, reason="openvino is not installed")
def test_a_new_calibration_compiles_the_int8_range_again():
    model = int8_model()
    first = frozen(model, CPU_INT8, Engine("openvino", "int8"), upto="block4")
    assert frozen(model, CPU_INT8, Engine("openvino", "int8"), upto="block4") is first
    quantize.calibrate_model(model, "block4", 5 * torch.randn(8, 3, 64, 64), CPU_INT8.autocast)
    assert frozen(model, CPU_INT8, Engine("openvino", "int8"), upto="block4") is not first


def test_auto_for_int8_times_int8_blocks(unpinned, isolated_home):
    """The run's own calibration comes after the engine is chosen: the measurement calibrates a probe."""
    model = tiny_model()
    chosen = resolve("auto", CPU_INT8, model)
    entry = json.loads((isolated_home / "engines.json").read_text())[choice.machine_key("int8", model)]
    assert set(entry["images_per_s"]) == {"torch int8", *(["openvino int8"] if "openvino" in INSTALLED else [])}
    assert chosen.precision == "int8" and model.int8_frozen is None


@pytest.mark.parametrize("name", INSTALLED)
def test_a_range_is_compiled_once_and_again_after_its_weights_change(name):
    model = tiny_model()
    first = frozen(model, CPU_FP32, Engine(name, "fp32"), "block4", "block5")
    assert frozen(model, CPU_FP32, Engine(name, "fp32"), "block4", "block5") is first
    x = torch.randn(2, 16, 4, 4)
    before = first(x)
    with torch.no_grad():
        model.backbone.block5.conv1.weight.mul_(2)         # a fine-tuning step changes weights in place
    again = frozen(model, CPU_FP32, Engine(name, "fp32"), "block4", "block5")
    assert again is not first
    assert not torch.allclose(again(x), before)
    assert frozen(model, CPU_FP32, Engine(name, "fp32"), upto="block4") is not again    # another range


def test_building_an_engine_leaves_training_layers_training():
    """Converting the frozen range traces it in eval mode; the blocks that train stay in train mode."""
    model = tiny_model().train()
    for name in INSTALLED:
        frozen(model, CPU_FP32, Engine(name, "fp32"), upto="block4")
    assert all(layer.training for layer in model.modules())


def test_resolve_names_what_runs_and_refuses_what_cannot():
    model = tiny_model()
    assert resolve("torch", CPU_BF16, model) == Engine("torch", "bf16")
    if "onnxruntime" in INSTALLED:
        assert resolve("onnxruntime", CPU_BF16, model) == Engine("onnxruntime", "fp32")   # no bf16 kernels
    if "openvino" in INSTALLED:
        assert resolve("openvino", CPU_BF16, model) == Engine("openvino", "bf16")
    int8 = Runtime(torch.device("cpu"), bf16=False, int8=True)
    assert resolve("torch", int8, model) == Engine("torch", "int8")
    if "openvino" in INSTALLED:
        assert resolve("openvino", int8, model) == Engine("openvino", "int8")
    with pytest.raises(UserError, match=r"--engine: received 'onnxruntime' on cpu int8.*allowed: auto, torch, openvino"):
        resolve("onnxruntime", int8, model)
    cuda = Runtime(torch.device("cuda"), bf16=True)
    assert resolve("auto", cuda, model) == Engine("torch", "bf16")
    with pytest.raises(UserError, match=r"--engine: received 'openvino' on cuda bf16.*allowed: auto or torch"):
        resolve("openvino", cuda, model)
    with pytest.raises(UserError, match=r"--engine: received 'tensorrt'.*allowed: auto, torch, openvino, onnxruntime"):
        resolve("tensorrt", CPU_FP32, model)


def test_an_engine_that_is_not_installed_is_one_line(monkeypatch):
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"received 'openvino' but the package 'openvino' is not installed"):
        resolve("openvino", CPU_FP32, tiny_model())
    assert choice.candidates(CPU_FP32, tiny_model()) == [Engine("torch", "fp32")]


def test_auto_measures_once_per_machine_and_keeps_the_answer(unpinned, isolated_home, monkeypatch):
    model = tiny_model()
    chosen = resolve("auto", CPU_FP32, model)
    kept = json.loads((isolated_home / "engines.json").read_text())
    entry = kept[choice.machine_key("fp32", model)]
    assert set(entry["images_per_s"]) == {f"{name} fp32" for name in ["torch", *INSTALLED]}
    fastest = max(entry["images_per_s"], key=entry["images_per_s"].get)
    assert chosen.describe() == fastest == f"{entry['best']['name']} {entry['best']['precision']}"
    monkeypatch.setattr(choice, "measure", lambda *a: pytest.fail("measured again"))
    assert resolve("auto", CPU_FP32, tiny_model()) == chosen
    assert choice.machine_key("bf16", model) != choice.machine_key("fp32", model)


def test_auto_leaves_out_an_engine_that_fails_and_says_so(unpinned, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernels for this processor")
    for name in ("openvino", "onnxruntime"):
        monkeypatch.setitem(engines.KINDS, name, dataclasses.replace(engines.KINDS[name], build=broken))
    with caplog.at_level("INFO", logger="vggtune"):
        chosen = resolve("auto", CPU_FP32, tiny_model())
    assert chosen == Engine("torch", "fp32")
    left_out = [r.message for r in caplog.records if "cannot run here" in r.message]
    assert len(left_out) == len(INSTALLED)


def test_the_variable_pins_auto_and_a_wrong_value_is_one_line(monkeypatch):
    monkeypatch.setenv(ENGINE_VARIABLE, "torch")
    assert resolve("auto", CPU_FP32, tiny_model()).name == "torch"
    monkeypatch.setenv(ENGINE_VARIABLE, "fastest")
    with pytest.raises(UserError, match=r"VGGTUNE_ENGINE: received 'fastest'; allowed: auto, torch"):
        resolve("auto", CPU_FP32, tiny_model())


@pytest.mark.skipif(not INSTALLED, reason="no inference runtime installed")
def test_a_run_on_another_engine_says_so_and_keeps_its_own_cache(tiny_weights, dataset, tmp_path, isolated_home):
    name = INSTALLED[0]
    torch_run = vggtune.api.train_with(quick_config(dataset, tmp_path / "torch", engine="torch", precision="fp32"))
    other_run = vggtune.api.train_with(quick_config(dataset, tmp_path / name, engine=name, precision="fp32"))
    environment = json.loads((tmp_path / name / "metrics.json").read_text())["environment"]
    assert environment["engine"] == f"{name} fp32"
    keys = [json.loads(p.read_text()) for p in (isolated_home / "features").glob("*/key.json")]
    assert {key.get("engine") for key in keys} == {None, f"{name} fp32"}
    # the same images and weights: the features differ in the last bits, the model as good
    assert other_run.test.accuracy == pytest.approx(torch_run.test.accuracy, abs=0.1)


@pytest.mark.skipif(not INSTALLED, reason="no inference runtime installed")
def test_predict_and_explain_on_each_engine_agree_with_pytorch(tiny_weights, dataset, tmp_path):
    run = tmp_path / "run"
    vggtune.api.train_with(quick_config(dataset, run, precision="fp32"))
    images = sorted(str(p) for p in dataset.glob("*/*.jpg"))[:6]
    expected, _ = vggtune.load(run, precision="fp32", engine="torch").predict(images)
    expected_maps, _ = vggtune.load(run, precision="fp32", engine="torch").explain(images[:2])
    for name in INSTALLED:
        predictor = vggtune.load(run, precision="fp32", engine=name)
        assert predictor.engine == Engine(name, "fp32")
        got, _ = predictor.predict(images)
        for a, b in zip(got, expected):
            assert a.label == b.label
            assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in b.probabilities) < 1e-4
        maps, _ = predictor.explain(images[:2])        # the blocks before Grad-CAM's on the engine
        for a, b in zip(maps, expected_maps):
            assert abs(a.heatmap - b.heatmap).max() < 1e-3


@pytest.mark.skipif(not INSTALLED, reason="no inference runtime installed")
def test_the_commands_take_the_engine_flag(tiny_weights, dataset, tmp_path, capsys):
    run = tmp_path / "run"
    vggtune.api.train_with(quick_config(dataset, run))
    images = sorted(str(p) for p in dataset.glob("*/*.jpg"))[:4]
    labels = {}
    for name in ("torch", INSTALLED[-1]):
        assert cli.main(["predict", str(run), *images, "--format", "json", "--engine", name]) == 0
        labels[name] = [row["label"] for row in json.loads(capsys.readouterr().out)]
    assert labels["torch"] == labels[INSTALLED[-1]]
    assert cli.main(["evaluate", str(run), "--no-report", "--engine", INSTALLED[-1]]) == 0
    done = subprocess.run([sys.executable, "-m", "vggtune", "predict", str(run), images[0], "--engine", "tpu"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'tpu'" in done.stderr
