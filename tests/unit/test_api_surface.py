"""The Python API as users call it: a misspelt option, a whole config, one input without a list."""
import numpy as np
import pytest

import vggtune
from vggtune.deploy.predict import _as_list
from vggtune.training.config import TrainConfig


def test_a_misspelt_option_is_a_user_error_naming_the_closest():
    with pytest.raises(vggtune.UserError, match=r"epochz=3 \(did you mean epochs=\?\)"):
        vggtune.train("photos", epochz=3)
    with pytest.raises(vggtune.UserError, match="finetune_lr"):
        vggtune.cv("photos", finetune_rate=1e-5)


def test_config_is_taken_alone():
    with pytest.raises(vggtune.UserError, match="config= with other arguments"):
        vggtune.train("photos", config=TrainConfig(data="photos"))


def test_every_verb_the_docs_name_exists():
    for name in vggtune.__all__:
        assert getattr(vggtune, name) is not None, name
    assert vggtune.predict is vggtune.api.predict


def test_one_input_is_a_list_of_one_and_a_string_is_a_path():
    assert _as_list("x.jpg") == ["x.jpg"]
    image = np.zeros((4, 4, 3), np.uint8)
    assert len(_as_list(image)) == 1 and _as_list(("a", "b")) == ["a", "b"]
    with pytest.raises(TypeError, match="received int; allowed: a path"):
        _as_list(3)


def test_the_api_speaks_its_own_words_and_the_command_line_its_flags(tmp_path, capsys):
    from vggtune import cli
    from vggtune.errors import in_python_words

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    with pytest.raises(vggtune.UserError) as raised:
        vggtune.train(str(tmp_path), out=str(taken), finetune_lr=1e-5)
    assert str(raised.value).startswith("out: ") and "--" not in str(raised.value)
    assert cli.main(["train", str(tmp_path), "--out", str(taken)]) == 2
    assert "error: --out: " in capsys.readouterr().err
    assert in_python_words("--finetune-lr: received -1; allowed: --lr X or --no-report") == (
        "finetune_lr: received -1; allowed: lr=X or no_report=")
    quoted = "--weights FILE, or `pip install --no-deps x`"
    assert in_python_words(quoted) == "weights=FILE, or `pip install --no-deps x`"
