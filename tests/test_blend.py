"""WiSE-FT (--blend): the fine-tuned weights blended with where the fine-tuning started, the share given or
chosen on the validation split, said and kept in metrics.json; a resumed run blends as an unbroken one.
Tiny network and synthetic images."""
from __future__ import annotations

import json

import pytest
import torch

from vggtune import api, cli
from vggtune.errors import UserError
from vggtune.training import validation as blending
from vggtune.training.config import TrainConfig

from conftest import quick_config


def test_config_takes_a_share_or_val_and_names_what_is_allowed():
    assert TrainConfig(data="d").blend == 1.0                      # the fine-tuning whole, as before
    assert TrainConfig(data="d", blend="0.25").blend == 0.25
    assert TrainConfig(data="d", blend="val").blend == "val"
    for wrong in (1.5, -0.1, "half", True):
        with pytest.raises(UserError, match=r"--blend: received .*; allowed: 0 <= x <= 1"):
            TrainConfig(data="d", blend=wrong)


def _head_and_block(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith(("head", "backbone.block5"))}


def test_a_share_of_0_is_the_head_only_model_and_1_the_fine_tuned_one(tiny_weights, dataset, tmp_path):
    """Three runs of one seed: the fine-tuning whole, none of it, and half: the half run's parameters lie
    halfway between the other two's, and the none run is the run without a fine-tuning stage."""
    runs = {share: tmp_path / f"run{share}" for share in (0.0, 0.5, 1.0)}
    for share, out in runs.items():
        api.train_with(quick_config(dataset, out, blend=share))
    api.train_with(quick_config(dataset, tmp_path / "head", finetune_epochs=0))
    params = {share: _head_and_block(api.load(str(out)).model) for share, out in runs.items()}
    head_only = _head_and_block(api.load(str(tmp_path / "head")).model)
    moved = [name for name in params[1.0] if not torch.equal(params[1.0][name], params[0.0][name])]
    assert moved and any(name.startswith("backbone.block5") for name in moved)
    for name in params[1.0]:
        assert torch.allclose(params[0.5][name], (params[0.0][name] + params[1.0][name]) / 2, atol=1e-5)
        assert torch.allclose(params[0.0][name], head_only[name], atol=1e-6)
    metrics = {share: json.loads((out / "metrics.json").read_text()) for share, out in runs.items()}
    assert "blend" not in metrics[1.0] and metrics[0.5]["blend"] == {"share": 0.5, "validation_losses": []}
    assert "blend: 0.5" in (runs[0.5] / "config.yaml").read_text()


def test_blend_val_tries_each_share_on_validation_keeps_the_lowest_loss_and_says_it(tiny_weights, dataset,
                                                                                    tmp_path, caplog):
    out = tmp_path / "run"
    api.train_with(quick_config(dataset, out, blend="val", quiet=False))
    kept = json.loads((out / "metrics.json").read_text())["blend"]
    losses = dict(map(tuple, kept["validation_losses"]))
    assert sorted(losses) == list(blending.SHARES)
    assert losses[kept["share"]] == min(losses.values())
    assert f"blend: {kept['share']:g} of the fine-tuning kept (validation loss at each share: 0 " in caplog.text


def test_a_resumed_run_blends_from_the_same_start_as_an_unbroken_one(tiny_weights, dataset, tmp_path, monkeypatch):
    """Stopped after the first fine-tuning epoch and resumed: the start point is still the pretrained block and
    the head-only stage's head, so the blended model equals the unbroken run's."""
    whole = tmp_path / "whole"
    api.train_with(quick_config(dataset, whole, blend=0.5))
    broken = tmp_path / "broken"
    from vggtune.training import schedule
    real = schedule.train_epoch
    calls = {"n": 0}

    def stop_in_the_fine_tuning(run, stage, *args):
        if stage.name == "finetune":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(run, stage, *args)
    monkeypatch.setattr(schedule, "train_epoch", stop_in_the_fine_tuning)
    with pytest.raises(KeyboardInterrupt):
        api.train_with(quick_config(dataset, broken, blend=0.5, keep_state=True))
    monkeypatch.setattr(schedule, "train_epoch", real)
    api.train_with(quick_config(dataset, broken, blend=0.5, keep_state=True), resume=True)
    a, b = _head_and_block(api.load(str(whole)).model), _head_and_block(api.load(str(broken)).model)
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_the_command_line_takes_blend_and_refuses_a_wrong_one_in_one_line(tiny_weights, dataset, tmp_path, capsys):
    assert cli.main(["train", str(dataset), "--out", str(tmp_path / "r"), "--blend", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--blend: received 2" in err and "val (chosen on the validation split)" in err
