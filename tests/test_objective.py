"""The training levers of training/objective.py: label smoothing, mixup on cached features,
discriminative rates, weight averaging (SWA); each on its own and through a whole run."""
import dataclasses
import json

import numpy as np
import pytest
import torch

import vggtune
import vggtune.training.schedule as train_module
from vggtune.errors import UserError
from vggtune.fsutil import load_tensors
from vggtune.model.heads import HeadSpec
from vggtune.training.objective import Average, Objective, parameter_groups, rate_factor, set_rates
from vggtune.training.rundir import RunDir

from conftest import quick_config


def test_label_smoothing_moves_the_targets_toward_uniform_for_both_heads():
    logits, labels = torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 0, 0])
    smoothed = HeadSpec("flatten", 2).loss(logits, labels, 0.1)
    targets = torch.tensor([0.95, 0.05, 0.05])
    p = torch.sigmoid(logits[:, 0])
    assert smoothed.item() == pytest.approx(-(targets * p.log() + (1 - targets) * (1 - p).log()).mean().item(), rel=1e-5)
    assert smoothed.item() > HeadSpec("flatten", 2).loss(logits, labels).item()
    logits3, labels3 = torch.tensor([[3.0, 0.0, -1.0]]), torch.tensor([0])
    q = torch.softmax(logits3, 1)[0]
    expected = -(torch.tensor([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]) * q.log()).sum()
    assert HeadSpec("gap", 3).loss(logits3, labels3, 0.1).item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixup_blends_each_example_with_the_next_and_weighs_both_labels():
    head = HeadSpec("gap", 3)
    features, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    mixed, weight = Objective(head, mixup=0.4).mix(features, np.random.default_rng(0))
    assert 0 < weight < 1
    assert torch.allclose(mixed, weight * features + (1 - weight) * features[[3, 0, 1, 2]])
    logits = torch.randn(4, 3)
    expected = weight * head.loss(logits, labels) + (1 - weight) * head.loss(logits, labels[[3, 0, 1, 2]])
    assert Objective(head, mixup=0.4).loss(logits, labels, weight).item() == pytest.approx(expected.item())
    unmixed, one = Objective(head).mix(features, np.random.default_rng(0))
    assert one == 1.0 and unmixed is features


def test_discriminative_rates_slow_each_earlier_block_and_keep_the_parameter_order():
    names = ["backbone.block3.conv1.weight", "backbone.block4.conv1.weight", "backbone.block4.conv1.bias",
             "backbone.block5.conv1.weight", "head.out.weight"]
    parameters = {name: torch.nn.Parameter(torch.zeros(1)) for name in names}
    groups = parameter_groups(parameters, ("block3", "block4", "block5"), 1e-3, 10.0)
    assert [group["lr"] for group in groups] == pytest.approx([1e-5, 1e-4, 1e-3])
    assert [p for group in groups for p in group["params"]] == list(parameters.values())
    assert len(parameter_groups(parameters, ("block3", "block4", "block5"), 1e-3, 1.0)) == 1


def test_a_cosine_schedule_anneals_every_group_from_its_own_rate_and_constant_keeps_it():
    assert [rate_factor("constant", epoch, 4) for epoch in range(4)] == [1.0] * 4
    cosine = [rate_factor("cosine", epoch, 4) for epoch in range(4)]
    assert cosine[0] == 1.0 and cosine[2] == pytest.approx(0.5) and all(a > b > 0 for a, b in zip(cosine, cosine[1:]))
    parameters = {name: torch.nn.Parameter(torch.zeros(1)) for name in ("backbone.block4.w", "backbone.block5.w")}
    optimizer = torch.optim.Adam(parameter_groups(parameters, ("block4", "block5"), 1e-3, 10.0))
    set_rates(optimizer, cosine[2])
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.5e-4, 0.5e-3])
    set_rates(optimizer, 1.0)                       # from the starting rates, not the last ones
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])


def test_the_average_is_the_mean_of_what_was_added_and_swapping_twice_restores():
    parameter = torch.nn.Parameter(torch.zeros(3))
    average = Average({"w": parameter})
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            parameter.fill_(value)
        average.add({"w": parameter})
    average.swap({"w": parameter})
    assert torch.allclose(parameter, torch.full((3,), 3.0))
    average.swap({"w": parameter})
    assert torch.allclose(parameter, torch.full((3,), 6.0)) and torch.allclose(average.mean["w"], torch.full((3,), 3.0))


def test_swa_keeps_the_average_of_the_fine_tune_epochs_up_to_the_best(tmp_path, dataset, tiny_weights, monkeypatch):
    after_each_epoch, real_epoch = [], train_module.train_epoch

    def recorded(run, stage, net, optimizer, rng):
        result = real_epoch(run, stage, net, optimizer, rng)
        if stage.name == "finetune":
            after_each_epoch.append(run.model.backbone.block5.conv1.weight.detach().clone())
        return result

    monkeypatch.setattr(train_module, "train_epoch", recorded)
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, swa=True, finetune_epochs=3, patience=0))
    kept = json.loads((out / "metrics.json").read_text())["kept_epochs"]["finetune"]
    saved, _ = load_tensors(out / "model.safetensors")
    expected = torch.stack(after_each_epoch[:kept]).mean(0)
    assert torch.allclose(saved["backbone.block5.conv1.weight"].float(), expected, atol=1e-6)
    assert kept == 1 or not torch.allclose(expected, after_each_epoch[kept - 1])     # an average, not an epoch


def test_mixup_and_smoothing_change_training_and_resume_repeats_it_exactly(tmp_path, dataset, tiny_weights,
                                                                             monkeypatch):
    levers = dict(mixup=0.4, label_smoothing=0.1, swa=True, finetune_blocks=2, block_lr_ratio=10.0)
    train_module.fit(quick_config(dataset, tmp_path / "plain"))
    train_module.fit(quick_config(dataset, tmp_path / "whole", **levers))
    plain, whole = RunDir(tmp_path / "plain").history(), RunDir(tmp_path / "whole").history()
    assert plain[0].train_loss != whole[0].train_loss
    real_epoch, calls = train_module.train_epoch, []

    def interrupted(run, stage, net, optimizer, rng):
        calls.append(stage.name)
        if calls.count("finetune") == 2:
            raise KeyboardInterrupt
        return real_epoch(run, stage, net, optimizer, rng)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.fit(quick_config(dataset, tmp_path / "cut", **levers))
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    vggtune.train(str(dataset), out=str(tmp_path / "cut"), resume=True, quiet=True)
    assert RunDir(tmp_path / "cut").history() == whole
    a, _ = load_tensors(tmp_path / "whole" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("option, value, flag", [("label_smoothing", 0.5, "--label-smoothing"),
                                                 ("mixup", -1.0, "--mixup"), ("block_lr_ratio", 0.5, "--block-lr-ratio")])
def test_lever_values_out_of_range_name_the_flag(tmp_path, option, value, flag):
    with pytest.raises(UserError, match=f"^{flag}: received {value}; allowed"):
        quick_config(tmp_path, tmp_path / "run", **{option: value})


def test_crop_one_keeps_the_whole_shorter_side_and_the_predictor_follows_model_json(tmp_path, dataset, tiny_weights):
    from vggtune.cli.parser import build_parser
    assert build_parser().parse_args(["train", "DATA", "--crop", "1"]).crop == 1.0
    out = tmp_path / "run"
    results = train_module.fit(quick_config(dataset, out, crop=1.0))
    assert json.loads((out / "model.json").read_text())["preprocessing"]["resize"] == 32
    assert vggtune.evaluate(str(out)).metrics.log_loss == pytest.approx(results.test.log_loss, abs=1e-3)
    default = train_module.fit(quick_config(dataset, tmp_path / "default"))
    assert json.loads((tmp_path / "default" / "model.json").read_text())["preprocessing"]["resize"] == round(32 * 256 / 224)
    assert default.test.log_loss != results.test.log_loss
    with pytest.raises(UserError, match=r"^--crop: received 0.3; allowed"):
        quick_config(dataset, out, crop=0.3)


def test_the_asymmetric_loss_is_cross_entropy_on_positives_and_fades_easy_negatives(monkeypatch):
    from vggtune.training import objective
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.2, 1.5]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 1]])
    monkeypatch.setattr(objective, "ASL_NEGATIVE_FOCUS", 0.0)
    monkeypatch.setattr(objective, "ASL_CLIP", 0.0)                # no focus, no clip: binary cross-entropy
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    assert objective.asymmetric_loss(logits, labels) == pytest.approx(bce.item(), abs=1e-6)
    monkeypatch.undo()
    easy, hard = torch.tensor([[-3.0]]), torch.tensor([[1.0]])     # negatives at P 0.047 and 0.73
    absent = torch.tensor([[0]])
    assert objective.asymmetric_loss(easy, absent) == 0.0          # below the clip: not counted
    assert 0 < objective.asymmetric_loss(hard, absent) < torch.nn.functional.binary_cross_entropy_with_logits(
        hard, absent.float())
    present = torch.tensor([[1]])
    assert objective.asymmetric_loss(easy, present) == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(easy, present.float()).item(), abs=1e-6)


def test_the_asymmetric_loss_is_for_several_labels_an_image(tiny_weights, dataset, tmp_path, capsys):
    from vggtune import cli
    code = cli.main(["train", str(dataset), "--out", str(tmp_path / "r"), "--loss", "asymmetric", "--size", "32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--loss asymmetric: received for data of one class an image" in err


def test_a_plateau_undoes_an_epoch_that_did_not_improve_and_goes_on_at_a_third_of_the_rate(
        tmp_path, dataset, tiny_weights, monkeypatch):
    assert [rate_factor("plateau", 3, 5, setbacks) for setbacks in (0, 1, 2)] == pytest.approx([1, 1 / 3, 1 / 9])
    real_validate, real_epoch = train_module.validate, train_module.train_epoch
    worse_at = {("finetune", 2), ("finetune", 3)}    # the fine-tuning's 2nd and 3rd epochs score worse than its 1st
    seen: dict = {"start": [], "rate": [], "stage": None}

    def validated(run, cut):
        validation = real_validate(run, cut)
        return dataclasses.replace(validation, loss=9.0) if (seen["stage"], len(seen["start"])) in worse_at else validation

    def recorded(run, stage, net, optimizer, rng):
        seen["stage"] = stage.name
        if stage.name == "finetune":
            seen["start"].append(run.model.backbone.block5.conv1.weight.detach().clone())
            seen["rate"].append(max(group["lr"] for group in optimizer.param_groups))
        return real_epoch(run, stage, net, optimizer, rng)

    monkeypatch.setattr(train_module, "validate", validated)
    monkeypatch.setattr(train_module, "train_epoch", recorded)
    out = tmp_path / "run"
    train_module.fit(quick_config(dataset, out, schedule="plateau", finetune_epochs=4, patience=0))
    assert seen["rate"] == pytest.approx([1e-3, 1e-3, 1e-3 / 3, 1e-3 / 9])
    after_first = seen["start"][1]
    assert torch.equal(seen["start"][2], after_first) and torch.equal(seen["start"][3], after_first)  # stepped back
    assert not torch.equal(seen["start"][0], after_first)
    assert [row.epoch for row in RunDir(out).history() if row.stage == "finetune"] == [1, 2, 3, 4]

    def interrupted(run, stage, net, optimizer, rng):       # stopped in the epoch after the first step back
        if stage.name == "finetune" and len(seen["start"]) == 2:
            raise KeyboardInterrupt
        return recorded(run, stage, net, optimizer, rng)

    seen.update(start=[], rate=[])
    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.fit(quick_config(dataset, tmp_path / "cut", schedule="plateau", finetune_epochs=4, patience=0))
    monkeypatch.setattr(train_module, "train_epoch", recorded)
    vggtune.train(str(dataset), out=str(tmp_path / "cut"), resume=True, quiet=True)
    assert seen["rate"][-2:] == pytest.approx([1e-3 / 3, 1e-3 / 9])      # the setback was saved with the state
    whole, _ = load_tensors(out / "model.safetensors")
    resumed, _ = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    with pytest.raises(UserError, match="^--swa with --schedule plateau"):
        quick_config(dataset, out, schedule="plateau", swa=True)


def test_l2sp_adds_the_pull_toward_the_pretrained_weights_and_keeps_the_blocks_nearer_them(
        tmp_path, dataset, tiny_weights):
    from vggtune.training.objective import Anchor
    block, head = torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([5.0]))
    anchor = Anchor({"backbone.block5.w": block, "head.w": head}, 0.5)
    with torch.no_grad():
        block.add_(torch.tensor([2.0, -4.0]))
    block.grad, head.grad = torch.zeros(2), torch.zeros(1)
    anchor.pull()
    assert block.grad.tolist() == [1.0, -2.0] and head.grad.tolist() == [0.0]    # 0.5 * (w - w0); the head free
    train_module.fit(quick_config(dataset, tmp_path / "start", finetune_epochs=0))       # block5 as pretrained
    pretrained, _ = load_tensors(tmp_path / "start" / "model.safetensors")
    moved = {}
    for strength in (0.0, 10.0):
        train_module.fit(quick_config(dataset, tmp_path / str(strength), l2sp=strength, patience=0))
        tuned, _ = load_tensors(tmp_path / str(strength) / "model.safetensors")
        moved[strength] = (tuned["backbone.block5.conv1.weight"] - pretrained["backbone.block5.conv1.weight"]).norm()
    assert 0 < moved[10.0] < moved[0.0]
    with pytest.raises(UserError, match=r"^--l2sp: received -1"):
        quick_config(dataset, tmp_path / "bad", l2sp=-1)
