import pytest
import torch
import torchvision

from vggtune.errors import UserError
from vggtune.model import arch as archs
from vggtune.model.arch import VGG16, VGG16_BN, VGG19
from vggtune.model.classifier import Backbone, Classifier
from vggtune.model.heads import HEADS, HeadSpec

from conftest import TINY, TINY_BLOCKS, tiny_state_dict


def tiny_classifier(kind="flatten", n_classes=2) -> Classifier:
    model = Classifier(HeadSpec(kind, n_classes, hidden=8), size=32, arch=TINY)
    model.backbone.load_state_dict(tiny_state_dict())
    return model.eval()


def test_blocks_are_named_and_layout_comes_from_weights():
    model = tiny_classifier()
    assert [name for name, _ in model.backbone.named_children()] == list(VGG16.block_names)
    assert "block5.conv1.weight" in model.backbone.state_dict()
    assert archs.from_state_dict(VGG16, tiny_state_dict()).widths == TINY_BLOCKS


@pytest.mark.parametrize("kind,n_classes,outputs", [("flatten", 2, 1), ("flatten", 5, 5), ("gap", 2, 1), ("gap", 37, 37),
                                                    ("places", 2, 1), ("places", 5, 5)])
def test_heads_give_one_sigmoid_unit_or_one_unit_per_class(kind, n_classes, outputs):
    model = tiny_classifier(kind, n_classes)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, outputs)


def test_the_places_head_pools_each_class_by_log_sum_exp_between_the_mean_and_the_max():
    from vggtune.model.heads import SHARPNESS, HeadSpec
    head = HeadSpec("places", 3, multi_label=True).build(8, 4).eval()
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.weight[:, 0] = 1.0                        # every class scores channel 0 at each place
        head.out.bias.copy_(torch.tensor([-2.0, 0.0, 1.0]))
        flat = torch.zeros(1, 8, 4, 4)
        assert torch.allclose(head(flat), torch.tensor([[-2.0, 0.0, 1.0]]))      # a constant map pools to itself
        one_place = flat.clone()
        one_place[0, 0, 1, 2] = 3.0                       # the object in one place of sixteen
        pooled = head(one_place)[0, 0] + 2.0
        assert 3.0 / 16 < pooled < 3.0                    # above the mean (the gap head's), below the max
        assert pooled == pytest.approx((torch.logsumexp(torch.tensor([SHARPNESS * 3.0] + [0.0] * 15), 0)
                                        - torch.log(torch.tensor(16.0))).item() / SHARPNESS, abs=1e-5)


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
    model.set_trainable(VGG16.last(1))
    trainable = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad and name.startswith("backbone")}
    assert trainable == {"block5"}
    assert all(p.requires_grad for p in model.head.parameters())
    model.set_trainable(())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(UserError, match="received 'block9'; allowed: block1, block2, block3, block4, block5"):
        model.set_trainable(("block9",))


def test_cut_points_follow_the_trainable_blocks():
    assert VGG16.cut_before(()) == "block5"
    assert VGG16.cut_before(VGG16.last(1)) == "block4"
    assert VGG16.cut_before(VGG16.last(2)) == "block3"
    assert VGG16.earliest(["block5", "block3", "block4"]) == "block3"
    assert [VGG16.reduction(block) for block in VGG16.block_names] == [2, 4, 8, 16, 32]
    assert VGG16.between("block3") == ("block4", "block5") and VGG16.between(upto="block2") == ("block1", "block2")
    with pytest.raises(UserError, match="--finetune-blocks"):
        VGG16.last(5)


@pytest.mark.parametrize("arch,builder", [(VGG16, torchvision.models.vgg16), (VGG19, torchvision.models.vgg19),
                                          (VGG16_BN, torchvision.models.vgg16_bn)])
def test_each_arch_record_matches_torchvisions_network(arch, builder):
    """Our names map onto torchvision's layer indices, and the same weights give the same features."""
    network = builder(weights=None).eval()
    theirs, names = network.features, arch.torchvision_names()
    state = {key: value for key, value in network.state_dict().items() if key.startswith("features.")}
    ours = Backbone(arch).eval()
    assert set(ours.state_dict()) == {f"{name}.{part.split('.')[-1]}" for name, index in names.items()
                                      for part in state if part.startswith(f"{index}.")}
    ours.load_state_dict({f"{name}.{part.split('.')[-1]}": value for name, index in names.items()
                          for part, value in state.items() if part.startswith(f"{index}.")})
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), theirs(image))
    assert arch.parameter_shapes() == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert arch.gradcam_layer[0] == "block5" and arch.gradcam_layer[1] in dict(getattr(ours, "block5").named_children())


def test_an_unknown_arch_or_head_is_refused_by_name():
    with pytest.raises(UserError, match="--arch: received 'resnet50'; allowed: vgg16, vgg19, vgg16_bn"):
        archs.get("resnet50")
    with pytest.raises(ValueError, match="allowed: flatten, gap, places"):
        HeadSpec("mlp", 2).build(8, 1)
    assert set(HEADS) == {"flatten", "gap", "places"}


@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_head_spec_holds_the_two_class_rule(n_classes):
    spec = HeadSpec("gap", n_classes)
    logits = torch.randn(6, spec.n_outputs)
    targets = torch.tensor([0, 1, 0, 1, 1, 0])
    probabilities = spec.probabilities(logits)
    assert probabilities.shape == (6, n_classes)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(6))
    assert torch.equal(spec.predicted(logits), probabilities.argmax(1))
    # The class score Grad-CAM differentiates orders the classes as the probabilities do.
    scores = torch.stack([spec.class_scores(logits, torch.full((6,), c)) for c in range(n_classes)], 1)
    assert torch.equal(scores.argmax(1), probabilities.argmax(1))
    loss = spec.loss(logits, targets)
    expected = -torch.log(probabilities[torch.arange(6), targets]).mean()
    torch.testing.assert_close(loss, expected)
