"""The recipe apart from the run's settings: cv, tune and --resume change only `run`; config.yaml keeps
them in a section of their own and still reads the flat files earlier versions wrote."""
import pytest
import yaml

import vggtune
from vggtune.results.crossval import fold_config
from vggtune.results.tuning import trial_config
from vggtune.training.config import RunSettings, TrainConfig, load_config, option_names, save_config


def test_options_fall_into_the_recipe_or_the_run_settings():
    config = TrainConfig.from_recipe(data="photos", out="runs/x", quiet=True, engine="torch", epochs=3)
    assert config.epochs == 3 and config.run.quiet and config.run.engine == "torch"
    assert config.run.out.endswith("runs/x") and config.option("quiet") is True and config.option("epochs") == 3
    assert not hasattr(config, "quiet")
    assert list(config.options()) == option_names() and "out" in option_names() and "run" not in option_names()


def test_cv_and_tune_change_the_run_settings_and_leave_the_recipe_alone():
    base = TrainConfig.from_recipe(data="photos", out="runs/cv", mlflow="http://x")
    fold = fold_config(base, 2, 5)
    assert (fold.run.cv_fold, fold.run.cv_folds, fold.run.no_report) == (2, 5, True)
    assert fold.with_run(**vars(base.run)) == base                       # only the run settings differ
    trial = trial_config(base, {"dropout": 0.3})
    assert trial.dropout == 0.3 and trial.run.quiet and trial.run.mlflow is None
    assert trial.run.out.endswith("runs/cv/trial")


def test_config_yaml_holds_the_run_settings_in_their_own_section(tmp_path):
    config = TrainConfig.from_recipe(data="photos", out=str(tmp_path / "run"), keep_state=True)
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert list(saved)[-1] == "run" and saved["run"]["keep_state"] is True and "keep_state" not in saved
    assert load_config(tmp_path / "config.yaml") == config


def test_a_flat_config_yaml_of_an_earlier_version_still_loads(tmp_path):
    (tmp_path / "config.yaml").write_text("data: photos\nout: runs/old\nquiet: true\nepochs: 4\ncv_folds: 0\n")
    config = load_config(tmp_path / "config.yaml")
    assert config.epochs == 4 and config.run.quiet and config.run.out.endswith("runs/old")
    assert config.class_weights == "off"                              # as it was written before the option


def test_run_settings_are_checked_like_the_recipe():
    with pytest.raises(vggtune.UserError, match="--engine"):
        TrainConfig.from_recipe(data="photos", engine="tpu")
    with pytest.raises(vggtune.UserError, match="--test-data"):
        TrainConfig(data="photos", test_data="t", run=RunSettings(cv_folds=3, cv_fold=1))
    with pytest.raises(vggtune.UserError, match="allowed: .*engine"):
        load_config_text = {"data": "photos", "run": {"engin": "torch"}}
        TrainConfig.from_dict(load_config_text)
