import json
from contextlib import nullcontext

import pytest
import torch

import vggtune
import vggtune.training.schedule as train_module
from vggtune.model import quantize
from vggtune.features.cache import FeatureKey
from vggtune.model.classifier import Backbone, Classifier
from vggtune.model.heads import HeadSpec
from vggtune.model.runtime import choose_runtime

from conftest import TINY, quick_config, tiny_state_dict


def tiny_backbone() -> Backbone:
    backbone = Backbone(TINY)
    backbone.load_state_dict(tiny_state_dict())
    return backbone.eval()


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))


def test_int8_blocks_track_the_float_blocks():
    backbone = tiny_backbone()
    frozen = quantize.calibrate(backbone, "block4", images(16), nullcontext)
    held_out = images(8, seed=1)
    with torch.inference_mode():
        exact = backbone.run(held_out, upto="block4")
        int8 = frozen(held_out)
    assert int8.dtype == torch.float32 and int8.shape == exact.shape
    assert not torch.equal(int8, exact)                 # really quantized
    assert cosine(int8, exact).min() > 0.98


def test_the_saved_scales_rebuild_the_same_network_and_calibration_is_deterministic():
    backbone = tiny_backbone()
    frozen = quantize.calibrate(backbone, "block3", images(16), nullcontext)
    again = quantize.calibrate(backbone, "block3", images(16), nullcontext)
    assert again.calibration == frozen.calibration
    assert set(frozen.calibration["scales"]) == {"quant", "block1.conv1", "block2.conv1", "block3.conv1"}
    rebuilt = quantize.rebuild(backbone, json.loads(json.dumps(frozen.calibration)))
    with torch.inference_mode():
        assert torch.equal(rebuilt(images(4, seed=2)), frozen(images(4, seed=2)))
    other = quantize.calibrate(backbone, "block3", images(16, seed=3) * 3, nullcontext)
    keys = [FeatureKey("tiny", {}, TINY, calibration).at("block4") for calibration in
            (frozen.calibration, other.calibration, json.loads(json.dumps(frozen.calibration)))]
    assert keys[0]["int8"] != keys[1]["int8"] and keys[0] == keys[2]


def test_classifier_runs_int8_blocks_then_float_blocks():
    model = Classifier(HeadSpec("flatten", 2, hidden=8), size=32, arch=TINY).eval()
    model.backbone.load_state_dict(tiny_state_dict())
    float_logits = model(images(4)).detach()
    model.use_int8_frozen(quantize.calibrate(model.backbone, "block4", images(16), nullcontext))
    assert "_int8_frozen" not in dict(model.named_modules()) and not any("int8" in k for k in model.state_dict())
    with torch.inference_mode():
        int8_logits = model(images(4))
        with pytest.raises(ValueError, match="inside the int8 blocks"):
            model.features(images(1), "block3")
    assert not torch.equal(int8_logits, float_logits)
    torch.testing.assert_close(int8_logits, float_logits, rtol=0.2, atol=0.2)


def test_an_int8_run_keys_its_cache_and_predicts_through_the_same_blocks(tmp_path, dataset, tiny_weights,
                                                                         isolated_home):
    out = tmp_path / "run"
    results = train_module.fit(quick_config(dataset, out, precision="int8"))
    description = json.loads((out / "model.json").read_text())
    assert description["precision"] == "int8" and description["int8"]["upto"] == "block4"
    keys = [json.loads((d / "key.json").read_text()) for d in (isolated_home / "features").iterdir()]
    expected = FeatureKey("tiny-test", {}, TINY, description["int8"]).at("block4")["int8"]
    assert len(keys) == 2 and all(k["int8"] == expected for k in keys)
    train_module.fit(quick_config(dataset, tmp_path / "again", precision="int8"))   # same split: same calibration
    assert len(list((isolated_home / "features").iterdir())) == 2
    assert (tmp_path / "again" / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
    train_module.fit(quick_config(dataset, tmp_path / "fp32", precision="fp32"))
    assert len(list((isolated_home / "features").iterdir())) == 4     # float features are other entries
    evaluated = vggtune.evaluate(str(out))
    assert evaluated.metrics.accuracy == pytest.approx(results.test.accuracy, abs=1 / evaluated.metrics.n + 1e-9)
    assert evaluated.metrics.log_loss == pytest.approx(results.test.log_loss, rel=0.05, abs=1e-3)
    assert vggtune.load(out).runtime.int8


def test_int8_mistakes_are_one_line_errors(tmp_path, dataset, tiny_weights):
    with pytest.raises(vggtune.UserError, match="int8: runs on the CPU only, received --device cuda"):
        choose_runtime("cuda", "int8")
    train_module.fit(quick_config(dataset, tmp_path / "run", epochs=1, finetune_epochs=0))
    with pytest.raises(vggtune.UserError, match="trained without it"):
        vggtune.load(tmp_path / "run", precision="int8")
    train_module.fit(quick_config(dataset, tmp_path / "int8", epochs=1, finetune_epochs=0, precision="int8"))
    with pytest.raises(vggtune.UserError, match="frozen blocks run in int8 on the CPU, received --device cuda"):
        vggtune.load(tmp_path / "int8", device="cuda")
    assert vggtune.load(tmp_path / "int8", precision="fp32").model.int8_frozen is not None


def test_int8_without_the_cache_runs_the_same_blocks_every_epoch(tmp_path, dataset, tiny_weights, isolated_home):
    out = tmp_path / "run"
    results = train_module.fit(quick_config(dataset, out, precision="int8", no_cache=True))
    assert not (isolated_home / "features").exists()
    assert json.loads((out / "model.json").read_text())["int8"]["upto"] == "block4"
    assert results.test.accuracy >= 0.8
