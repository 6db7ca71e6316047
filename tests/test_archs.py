"""The backbone is a value: VGG19 and VGG16-BN train, save, reload and predict through the same loaders
as VGG16 (random-init torchvision weights, since no pretrained copy of them can be had offline)."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
import torchvision

import vggtune
from vggtune.errors import UserError
from vggtune.model import arch as archs
from vggtune.model import weights

from conftest import make_dataset

OPTIONS = dict(size=32, epochs=2, finetune_epochs=1, batch_size=8, hidden=8, views=1, dropout=0.0,
               val_split=0.25, test_split=0.25, lr=1e-3, quiet=True, no_report=True, precision="fp32")


def torchvision_file(arch: str, path):
    """A torchvision state dict of `arch` with random weights, its convolutions' part as torchvision names them."""
    torch.manual_seed(0)
    network = getattr(torchvision.models, arch)(weights=None)
    torch.save({k: v for k, v in network.state_dict().items() if k.startswith("features.")}, path)
    return network.features.eval()


def test_vgg16_bn_from_a_weights_file_trains_and_predicts_what_training_scored(tmp_path):
    features = torchvision_file("vgg16_bn", tmp_path / "vgg16_bn.pth")
    data = make_dataset(tmp_path / "data", n_per_class=8)
    results = vggtune.train(str(data), out=str(tmp_path / "run"), arch="vgg16_bn",
                            weights=str(tmp_path / "vgg16_bn.pth"), **OPTIONS)
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert spec["arch"] == "vgg16_bn" and [len(spec["blocks"][f"block{i}"]) for i in range(1, 6)] == [2, 2, 3, 3, 3]
    predictor = vggtune.load(tmp_path / "run")
    assert predictor.model.arch.batch_norm and "block1.bn1.running_var" in predictor.model.backbone.state_dict()
    # The frozen blocks kept torchvision's batch-norm statistics: training never updates them.
    for ours, theirs in ((predictor.model.backbone.block1.bn1, features[1]), (predictor.model.backbone.block4.bn3, features[31])):
        assert torch.equal(ours.running_mean, theirs.running_mean) and torch.equal(ours.running_var, theirs.running_var)
    evaluated = vggtune.evaluate(str(tmp_path / "run"), report=False)
    assert evaluated.metrics.confusion_matrix == results.test.confusion_matrix
    assert evaluated.metrics.log_loss == pytest.approx(results.test.log_loss, abs=1e-3)


def test_vgg19_comes_from_its_download_and_fine_tunes_its_four_convolution_block(tmp_path, monkeypatch):
    monkeypatch.delenv("VGGTUNE_OFFLINE")
    served = tmp_path / "vgg19-test.pth"
    torchvision_file("vgg19", served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    record = dataclasses.replace(weights.VGG19_IMAGENET1K_V1, name="vgg19-test", url=served.as_uri(), url_sha256=digest[:8])
    monkeypatch.setitem(weights.DEFAULT_WEIGHTS, "vgg19", record)
    data = make_dataset(tmp_path / "data", n_per_class=8)
    vggtune.train(str(data), out=str(tmp_path / "run"), arch="vgg19", finetune_blocks=2, **OPTIONS)
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert spec["arch"] == "vgg19" and spec["weights"] == "vgg19-test" and len(spec["blocks"]["block5"]) == 4
    assert weights.cache_path(record).is_file()                       # converted once, as VGG16's are
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "arch: vgg19" in config and "finetune_blocks: 2" in config
    assert len(vggtune.load(tmp_path / "run").predict([str(p) for p in (data / "cat").glob("*.jpg")])[0]) == 8


def test_an_unknown_arch_or_a_file_for_another_arch_is_one_line(tmp_path):
    with pytest.raises(UserError, match="arch: received 'vgg11'; allowed: vgg16, vgg19, vgg16_bn"):
        vggtune.train(str(tmp_path), arch="vgg11")
    torchvision_file("vgg19", tmp_path / "vgg19.pth")
    with pytest.raises(UserError, match="vgg19.pth: no tensor features.*bn|has shape|allowed: a torchvision vgg16_bn"):
        weights.load_user_file(tmp_path / "vgg19.pth", "vgg16_bn")
    with pytest.raises(UserError, match="--weights: received x.h5 for vgg19; allowed: .pth, .pt, .safetensors"):
        (tmp_path / "x.h5").write_bytes(b"")
        weights.load_user_file(tmp_path / "x.h5", "vgg19")
    with pytest.raises(UserError, match="--finetune-blocks: received 5; allowed: 1, 2, 3, 4"):
        vggtune.TrainConfig(data=".", arch="vgg19", finetune_blocks=5)
    assert archs.get("vgg16_bn").fusion_groups("block1") == [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"]]
