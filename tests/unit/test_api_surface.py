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
