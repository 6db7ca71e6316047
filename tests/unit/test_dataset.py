import os

import numpy as np
import pytest
from PIL import Image

from vggtune.data import dataset as data
from vggtune.data import discovery
from vggtune.errors import UserError
from vggtune.data.images import ImageRejected, open_rgb
from vggtune.data.items import DUPLICATE

from badfiles import write_convertible, write_unusable
from conftest import make_dataset, synthetic_image


def test_every_unusable_kind_is_rejected_with_its_reason(tmp_path):
    expected = write_unusable(tmp_path, np.random.default_rng(0))
    for path, word in expected.items():
        sha, reason, _ = data.check_file(str(path))
        assert sha is None, path.name
        assert word in reason, (path.name, reason)


def test_convertible_files_become_rgb(tmp_path):
    for path in write_convertible(tmp_path, label=1):
        sha, reason, _ = data.check_file(str(path))
        assert reason is None, (path.name, reason)
        image = open_rgb(path)
        assert image.mode == "RGB", path.name


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                          # stored sideways: rotate 90 degrees clockwise to display
    stored = Image.new("RGB", (60, 20), "blue")
    stored.paste((255, 0, 0), (0, 0, 30, 20))             # the stored image's left half is red
    stored.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    shown = open_rgb(tmp_path / "r.jpg")
    assert shown.size == (20, 60)
    top, bottom = shown.getpixel((10, 5)), shown.getpixel((10, 55))
    assert top[0] > 200 and top[2] < 60                    # clockwise: the left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.full((20, 20), 65535 // 2, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "s.png")
    pixel = open_rgb(tmp_path / "s.png").getpixel((0, 0))
    assert 120 <= pixel[0] <= 135


def test_transparency_is_composited_over_white(tmp_path):
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert open_rgb(tmp_path / "t.png").getpixel((5, 5)) == (255, 255, 255)


def test_draft_mode_keeps_at_least_the_asked_short_side(tmp_path):
    synthetic_image(0, 1, (800, 600)).save(tmp_path / "big.jpg")
    image = open_rgb(tmp_path / "big.jpg", short_side=256)
    assert min(image.size) >= 256 and min(image.size) < 600


def test_vanished_file_is_a_reason_not_a_crash(tmp_path):
    with pytest.raises(ImageRejected, match="vanished"):
        open_rgb(tmp_path / "gone.jpg")


def test_discover_class_folders_and_kaggle_names(tmp_path):
    root = make_dataset(tmp_path / "folders", n_per_class=3)
    found = discovery.discover(root)
    assert found.classes == ["cat", "dog"] and len(found.files) == 6
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("cat", "dog"):
        for i in range(3):
            synthetic_image(0, i).save(flat / f"{name}.{i}.jpg")
    (flat / "readme.txt").write_text("hello")
    found = discovery.discover(flat)
    assert found.classes == ["cat", "dog"]
    assert [os.path.basename(p) for p, _ in found.rejected] == ["readme.txt"]


def test_kaggle_names_map_each_file_to_its_class(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for label, name in enumerate(("Dog", "cat", "bird")):      # the class is the lower-cased prefix
        for i in range(3):
            synthetic_image(label, i).save(flat / f"{name}.{i + 10 * label}.jpg")
    synthetic_image(0, 9).save(flat / "cat_7.png")
    items, rejected = data.scan(discovery.discover(flat))
    found = discovery.discover(flat)
    assert found.classes == ["bird", "cat", "dog"] and not rejected
    by_name = {os.path.basename(item.path): found.classes[item.label] for item in items}
    assert by_name == {**{f"Dog.{i}.jpg": "dog" for i in range(3)}, **{f"cat.{i + 10}.jpg": "cat" for i in range(3)},
                       **{f"bird.{i + 20}.jpg": "bird" for i in range(3)}, "cat_7.png": "cat"}


@pytest.mark.parametrize("layout,message", [
    ("missing", "does not exist"),
    ("empty", "0 class"),
    ("one-class", "1 class"),
    ("empty-class", "hold no image files"),
])
def test_bad_dataset_layouts_are_user_errors(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout != "missing":
        root.mkdir()
    if layout in ("one-class", "empty-class"):
        make_dataset(root, n_per_class=2, classes=("cat",))
    if layout == "empty-class":
        (root / "dog").mkdir()
    with pytest.raises(UserError, match=message):
        discovery.discover(root)


def test_split_is_stratified_and_content_never_in_two_splits(tmp_path):
    root = make_dataset(tmp_path / "d", n_per_class=20)
    for i in range(5):                      # exact copies of training candidates
        (root / "cat" / f"copy.{i}.jpg").write_bytes((root / "cat" / f"cat.{i}.jpg").read_bytes())
    splits = data.prepare_splits(root, None, None, 0.2, 0.2, seed=3)
    shas = [{i.sha256 for i in s} for s in (splits.train, splits.val, splits.test)]
    assert not (shas[0] & shas[1]) and not (shas[0] & shas[2]) and not (shas[1] & shas[2])
    assert sum(1 for row in splits.rejected if row.kind == DUPLICATE) == 5
    for split, n in ((splits.val, 4), (splits.test, 4)):
        assert [sum(1 for i in split if i.label == c) for c in (0, 1)] == [n, n]
    again = data.prepare_splits(root, None, None, 0.2, 0.2, seed=3)
    assert [i.path for i in again.test] == [i.path for i in splits.test]


def test_separate_test_folder_keeps_its_content_out_of_training(tmp_path):
    root = make_dataset(tmp_path / "train", n_per_class=6)
    test = make_dataset(tmp_path / "test", n_per_class=2)   # same synthetic images as train's first two
    splits = data.prepare_splits(root, None, test, 0.0, 0.1, seed=0)
    assert len(splits.test) == 4 and len(splits.train) == 8
    assert sum(1 for _, r in splits.rejected if "kept out of two splits" in r) == 4
    other = tmp_path / "other"
    make_dataset(other, n_per_class=2, classes=("cat", "cow"))
    with pytest.raises(UserError, match="allowed: the training classes"):
        data.prepare_splits(root, None, other, 0.0, 0.1, seed=0)


def test_data_check_is_a_record_of_each_folder_read(tmp_path):
    from vggtune.data.check import check
    from vggtune.data.items import IN_DATA, IN_TEST, LABEL_CONFLICT

    root = make_dataset(tmp_path / "train", n_per_class=6)
    (root / "dog" / "same.jpg").write_bytes((root / "cat" / "cat.5.jpg").read_bytes())  # one image, two classes
    test = make_dataset(tmp_path / "test", n_per_class=2, classes=("cat", "dog"))
    result = check(str(root), None, str(test))
    assert [(folder.where, folder.folder) for folder in result.folders] == [(IN_DATA, str(root)), (IN_TEST, str(test))]
    data_folder, test_folder = result.folders
    assert test_folder.counts == {"cat": 2, "dog": 2} and test_folder.images == 4
    assert data_folder.images + test_folder.images + len(result.rejected) == 12 + 1 + 4
    assert sum(1 for row in result.rejected if row.kind == LABEL_CONFLICT) == 2 and not result.clean
    assert all(row in data_folder.rejected + test_folder.rejected for row in result.rejected)
    assert data_folder.summary("DATA").startswith("classes in DATA:")
