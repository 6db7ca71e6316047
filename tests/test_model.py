import pytest
import torch

from vggtune.model import (BLOCK_NAMES, Classifier, HeadSpec, blocks_from_state_dict, cut_before, last_blocks,
                           set_trainable)

from conftest import TINY_BLOCKS, tiny_state_dict


def tiny_classifier(kind="flatten", n_classes=2) -> Classifier:
    model = Classifier(HeadSpec(kind, n_classes, hidden=8), size=32, blocks=TINY_BLOCKS)
    model.backbone.load_state_dict(tiny_state_dict())
    return model.eval()


def test_blocks_are_named_and_layout_comes_from_weights():
    model = tiny_classifier()
    assert [name for name, _ in model.backbone.named_children()] == list(BLOCK_NAMES)
    assert "block5.conv1.weight" in model.backbone.state_dict()
    assert blocks_from_state_dict(tiny_state_dict()) == TINY_BLOCKS


@pytest.mark.parametrize("kind,n_classes,outputs", [("flatten", 2, 1), ("flatten", 5, 5), ("gap", 2, 1), ("gap", 37, 37)])
def test_heads_give_one_sigmoid_unit_or_one_unit_per_class(kind, n_classes, outputs):
    model = tiny_classifier(kind, n_classes)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, outputs)


@pytest.mark.parametrize("cut", ["block3", "block4", "block5"])
def test_from_features_equals_whole_model(cut):
    model = tiny_classifier()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        whole = model(images)
        resumed = model.from_features(model.features(images, cut), cut)
    torch.testing.assert_close(whole, resumed)


def test_freeze_by_block_name():
    model = tiny_classifier()
    set_trainable(model, last_blocks(1))
    trainable = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad and name.startswith("backbone")}
    assert trainable == {"block5"}
    assert all(p.requires_grad for p in model.head.parameters())
    set_trainable(model, ())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(ValueError, match="unknown blocks"):
        set_trainable(model, ("block9",))


def test_cut_points_follow_the_trainable_blocks():
    assert cut_before(()) == "block5"
    assert cut_before(last_blocks(1)) == "block4"
    assert cut_before(last_blocks(2)) == "block3"
