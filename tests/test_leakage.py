"""Leakage: the same content never in two splits, nor a near-duplicate group; near-duplicates within a
split reported as warnings, across classes as likely label conflicts."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import vggtune
from vggtune import cli
from vggtune.data.items import DUPLICATE, IN_DATA

from vggtune.data import dataset as data
import vggtune.training.schedule as training

from conftest import make_dataset, quick_config


def smooth_photo(seed: int, size=(160, 120)) -> Image.Image:
    """Large smooth shapes, like a photo at thumbnail scale (noise would defeat any perceptual hash)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        r = int(rng.integers(15, 50))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def test_exact_copy_in_test_folder_is_reported_and_kept_out_of_training(tmp_path, capsys):
    train = make_dataset(tmp_path / "train", n_per_class=5)
    test = make_dataset(tmp_path / "test", n_per_class=0)
    (test / "cat" / "copy.jpg").write_bytes((train / "cat" / "cat.3.jpg").read_bytes())
    smooth_photo(99).save(test / "dog" / "own.jpg")
    assert cli.main(["data", "check", str(train), "--test-data", str(test)]) == 1
    assert "cat.3.jpg: same content as test file" in capsys.readouterr().out
    rejected = vggtune.check_data(str(train), test_data=str(test)).rejected
    assert [(Path(row.path).name, row.kind, row.where) for row in rejected] == [("cat.3.jpg", DUPLICATE, IN_DATA)]
    splits = data.prepare_splits(train, None, test, 0.0, 0.0, seed=0)
    assert "cat.3.jpg" not in {p.split("/")[-1] for p in (i.path for i in splits.train)}


def four_photos_a_class(root):
    """cat.0-3 and dog.0-3: distinct smooth photos, no two of them alike."""
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            smooth_photo(10 * label + i).save(root / name / f"{name}.{i}.jpg", quality=95)
    return root


def test_near_duplicates_are_warned_not_removed(tmp_path, capsys):
    root = four_photos_a_class(tmp_path / "d")
    original = Image.open(root / "cat" / "cat.0.jpg")
    original.resize((80, 60)).save(root / "cat" / "cat.resized.jpg", quality=60)
    assert cli.main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: near-duplicates")]
    assert len(warnings) == 1 and "cat.0.jpg" in warnings[0] and "cat.resized.jpg" in warnings[0]
    result = vggtune.check_data(str(root))
    assert result.clean and result.folders[0].images == 9      # a warning, not a rejection
    assert [sorted(Path(pair[i]).name for i in (0, 2)) for pair in result.near_duplicates] == [
        ["cat.0.jpg", "cat.resized.jpg"]]


def test_training_writes_near_duplicates_csv(tmp_path, tiny_weights, dataset):
    out = tmp_path / "run"
    training.fit(quick_config(dataset, out, finetune_epochs=0))
    lines = (out / "near_duplicates.csv").read_text().splitlines()
    assert lines[0] == "path,split,near_duplicate_of,its_split,dhash_distance,label_conflict"


def training_and_test_folders(tmp_path):
    """train/ and test/, six distinct smooth photos a class in each, none alike across the two."""
    train, test = tmp_path / "train", tmp_path / "test"
    for root, offset in ((train, 0), (test, 300)):
        for label, name in enumerate(("cat", "dog")):
            (root / name).mkdir(parents=True)
            for i in range(6):
                smooth_photo(offset + 10 * label + i).save(root / name / f"{name}.{offset + i}.jpg", quality=95)
    return train, test


def test_a_near_copy_of_a_held_out_image_is_kept_out_of_training(tmp_path, tiny_weights):
    """A given test folder cannot move: the training image whose near copy it holds leaves training, as an
    exact copy does (it was only listed); near copies within training stay, in one split."""
    train, test = training_and_test_folders(tmp_path)
    Image.open(train / "cat" / "cat.0.jpg").resize((80, 60)).save(train / "cat" / "cat.small.jpg", quality=60)
    Image.open(train / "dog" / "dog.1.jpg").resize((120, 90)).save(test / "dog" / "dog.copy.jpg", quality=70)
    out = tmp_path / "run"
    training.fit(quick_config(train, out, test_data=str(test), finetune_epochs=0, epochs=1))
    rows = [line.split(",") for line in (out / "near_duplicates.csv").read_text().splitlines()[1:]]
    assert len(rows) == 1, rows
    assert {rows[0][0].rsplit("/", 1)[1], rows[0][2].rsplit("/", 1)[1]} == {"cat.0.jpg", "cat.small.jpg"}
    assert rows[0][1] == rows[0][3]                                     # one split
    rejected = (out / "rejected.csv").read_text()
    assert "dog.1.jpg,near-duplicate of test file" in rejected and "kept out of two splits" in rejected


def test_near_duplicate_groups_stay_in_one_split(tmp_path):
    """Ten images with a resized and a recompressed copy each: every group lands in one split, for the
    plain split and for each cross-validation fold (before, copies were dealt out like any image)."""
    root = tmp_path / "d"
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            photo = smooth_photo(100 * label + i)
            photo.save(root / name / f"{name}.{i}.jpg", quality=95)
            if i < 5:
                photo.resize((120, 90)).save(root / name / f"{name}.{i}.small.jpg", quality=80)
                photo.save(root / name / f"{name}.{i}.again.jpg", quality=40)
    def group(path: str) -> str:
        name = path.rsplit("/", 1)[1]
        return ".".join(name.split(".")[:2])
    for splits in [data.prepare_splits(root, None, None, 0.3, 0.3, seed=s) for s in range(3)] + \
                  [data.prepare_splits(root, None, None, 0.2, 0.0, seed=0, fold=(k, 3)) for k in (1, 2, 3)]:
        where = {}
        for name in ("train", "val", "test"):
            for item in getattr(splits, name):
                where.setdefault(group(item.path), set()).add(name)
        assert len(where) == 20 and all(len(places) == 1 for places in where.values()), where
        assert sum(len(getattr(splits, n)) for n in ("train", "val", "test")) == 40
        assert splits.val and splits.test


def test_a_near_duplicate_under_another_class_is_a_likely_label_conflict(tmp_path, capsys):
    root = four_photos_a_class(tmp_path / "d")
    Image.open(root / "cat" / "cat.2.jpg").resize((100, 75)).save(root / "dog" / "dog.resaved.jpg", quality=70)
    assert cli.main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("label conflict?")]
    assert len(lines) == 1 and "cat.2.jpg (cat)" in lines[0] and "dog.resaved.jpg (dog)" in lines[0]


def alike_at_9x8(seed: int, size=(288, 256)) -> Image.Image:
    """A strong left-to-right gradient (the same 9x8 dHash for every seed) under blocks of noise that differ
    by seed: two of these are different photos that a 64-bit hash calls near-duplicates."""
    rng = np.random.default_rng(seed)
    ramp = np.tile(np.linspace(10, 245, size[0]), (size[1], 1))
    blocks = np.kron(rng.integers(-12, 13, (size[1] // 8, size[0] // 8)), np.ones((8, 8)))
    grey = np.clip(ramp + blocks, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))


def test_only_a_copy_whose_pixels_match_leaves_training_and_it_is_said_by_class(tmp_path, tiny_weights, capsys):
    """A casting-defect set lost 28 % of a class to a 9x8 hash that called different castings copies of test
    photos. Now the hash proposes and the pixels decide; what leaves is said by class; a flag keeps it."""
    from vggtune.data.dataset import difference_hash
    from vggtune.data.similar import PIXEL_DIFFERENCE, pixel_difference

    train, test = training_and_test_folders(tmp_path)
    alike_at_9x8(1).save(train / "cat" / "look.jpg", quality=95)
    alike_at_9x8(2).save(test / "cat" / "look-alike.jpg", quality=95)
    bits = bin(difference_hash(Image.open(train / "cat" / "look.jpg"))
               ^ difference_hash(Image.open(test / "cat" / "look-alike.jpg"))).count("1")
    assert bits <= 4                                                     # the hash calls them near-duplicates
    assert pixel_difference(str(train / "cat" / "look.jpg"), str(test / "cat" / "look-alike.jpg")) > PIXEL_DIFFERENCE
    Image.open(train / "dog" / "dog.1.jpg").resize((120, 90)).save(test / "dog" / "dog.copy.jpg", quality=70)
    out = tmp_path / "run"
    quick = ["--epochs", "1", "--finetune-epochs", "0", "--size", "32", "--batch-size", "8", "--hidden", "16",
             "--views", "1"]
    assert cli.main(["train", str(train), "--test-data", str(test), "--out", str(out), *quick]) == 0
    said = capsys.readouterr().err
    assert "left out of training: 1 copies of held-out images, their pixels alike (dog 1;" in said
    rejected = (out / "rejected.csv").read_text()
    assert "dog.1.jpg,near-duplicate of test file" in rejected and "mean pixel difference" in rejected
    assert "look.jpg" not in rejected                                    # a look-alike, kept
    kept = tmp_path / "kept"
    assert cli.main(["train", str(train), "--test-data", str(test), "--out", str(kept), *quick,
                     "--keep-near-duplicates"]) == 0
    assert "dog.1.jpg" not in (kept / "rejected.csv").read_text() and "left out of training" not in capsys.readouterr().err


def test_a_look_alike_under_another_class_is_no_label_conflict_and_check_and_report_agree(tmp_path, capsys,
                                                                                         tiny_weights):
    """`data check` once said "label conflict?" ten times and exited 1 for photos alike at 9x8 pixels, while the
    report said "Label conflicts: None". Now a conflict is a pair alike in pixels too, the same in both."""
    root = four_photos_a_class(tmp_path / "d")
    alike_at_9x8(1).save(root / "cat" / "look.jpg", quality=95)
    alike_at_9x8(2).save(root / "dog" / "look-alike.jpg", quality=95)
    assert cli.main(["data", "check", str(root)]) == 0               # a look-alike: a warning, not a conflict
    out = capsys.readouterr().out
    assert "label conflict?" not in out and "warning: near-duplicates" in out
    Image.open(root / "cat" / "cat.2.jpg").resize((100, 75)).save(root / "dog" / "dog.resaved.jpg", quality=70)
    assert cli.main(["data", "check", str(root)]) == 1               # a copy under another class: a conflict
    assert sum(line.startswith("label conflict?") for line in capsys.readouterr().out.splitlines()) == 1
    out = tmp_path / "run"
    training.fit(quick_config(root, out, finetune_epochs=0, val_split=0.0, test_split=0.0))
    import vggtune.api
    vggtune.api.report(str(out))
    page = (out / "report.html").read_text()
    conflicts = page.split("<h3>Label conflicts</h3>")[1].split("<h3>")[0]
    assert "dog.resaved.jpg" in conflicts or "cat.2.jpg" in conflicts      # the report names the same conflict
    assert "look.jpg" not in conflicts and "look-alike.jpg" not in conflicts
