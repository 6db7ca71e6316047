"""--fit: how an image that is not square comes to the square input. crop (the weights' own: the shorter side
resized, the centre kept) cuts off the sides of a wide image; pad keeps the whole image and its shape, on a square
of the mean colour. Every view (clean, mirrored, augmented, ten crops) and Grad-CAM come from `resized`, so they
follow it."""
import numpy as np
import pytest
import torch
from PIL import Image

from vggtune.features.settings import AugmentConfig
from vggtune.features.transforms import eval_view, make_view, resized
from vggtune.model.weights import Preprocessing
from vggtune.training.config import TrainConfig, load_config

CROP = Preprocessing(size=32, resize=40, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
PAD = Preprocessing(size=32, resize=40, mean=(10.2, 20.0, 30.0), std=(1.0, 1.0, 1.0), fit="pad")


def wide_image_red_at_its_left_edge() -> Image.Image:
    """200 x 100, white, its left fifth red: an object at the edge of a wide photo."""
    pixels = np.full((100, 200, 3), 255, np.uint8)
    pixels[:, :40, 1:] = 0
    return Image.fromarray(pixels)


def red_share(view) -> float:
    pixels = view.numpy().astype(int)
    return float(((pixels[0] > 200) & (pixels[1] < 60)).mean())


def test_crop_cuts_off_the_edge_of_a_wide_image_and_pad_keeps_it_whole():
    image = wide_image_red_at_its_left_edge()
    assert tuple(resized(image, CROP).shape) == (3, 40, 80) and tuple(resized(image, PAD).shape) == (3, 40, 40)
    assert red_share(eval_view(image, CROP)) == 0
    padded = resized(image, PAD)
    assert padded[:, :10, :].eq(torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)).all()   # the margin
    assert 0.19 < red_share(padded[:, 10:30, :]) < 0.21              # the whole image, 40 x 20, its fifth red
    assert 0.05 < red_share(eval_view(image, PAD)) < 0.12            # less the centre crop's margin
    augmented = make_view(image, PAD, AugmentConfig(), "0" * 64, 1)
    assert tuple(augmented.shape) == (3, 32, 32)


def test_the_fill_is_the_mean_pixel_in_rgb_whatever_the_channel_order():
    assert PAD.fill == (10, 20, 30)
    bgr = Preprocessing(size=32, resize=40, mean=(30.0, 20.0, 10.2), std=(1.0, 1.0, 1.0), channel_order="BGR")
    assert bgr.fill == (10, 20, 30)


def test_model_json_keeps_the_fit_and_one_written_before_it_reads_as_crop():
    assert Preprocessing.from_dict(PAD.to_dict()) == PAD
    written_before = {key: value for key, value in CROP.to_dict().items() if key != "fit"}
    assert Preprocessing.from_dict(written_before).fit == "crop"
    assert CROP.at_size(64, fit="pad").fit == "pad" and PAD.at_size(64).fit == "pad"


def test_auto_is_the_tasks_fit_and_a_config_written_before_it_keeps_the_crop(tmp_path):
    config = TrainConfig.from_recipe(data="photos")
    assert config.fit == "auto" and config.for_task("fit", False) == "crop" and config.for_task("fit", True) == "pad"
    assert TrainConfig.from_recipe(data="photos", fit="crop").for_task("fit", several=True) == "crop"
    with pytest.raises(Exception, match="--fit: received 'stretch'"):
        TrainConfig.from_recipe(data="photos", fit="stretch")
    (tmp_path / "config.yaml").write_text("data: photos\nout: runs/old\n")
    old = load_config(tmp_path / "config.yaml")
    assert (old.fit, old.loss) == ("crop", "cross-entropy")             # a multi-label run resumed trains as it began
