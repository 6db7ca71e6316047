"""Leakage: the same content never in two splits; near-duplicates reported as warnings."""
import numpy as np
from PIL import Image, ImageDraw

from vggtune import cli

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
    out = capsys.readouterr().out
    assert "cat.3.jpg: same content as test file" in out and "kept out of two splits" in out
    splits = data.prepare_splits(train, None, test, 0.0, 0.0, seed=0)
    assert "cat.3.jpg" not in {p.split("/")[-1] for p in (i.path for i in splits.train)}


def test_near_duplicates_are_warned_not_removed(tmp_path, capsys):
    root = tmp_path / "d"
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            smooth_photo(10 * label + i).save(root / name / f"{name}.{i}.jpg", quality=95)
    original = Image.open(root / "cat" / "cat.0.jpg")
    original.resize((80, 60)).save(root / "cat" / "cat.resized.jpg", quality=60)
    assert cli.main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: near-duplicates")]
    assert len(warnings) == 1 and "cat.0.jpg" in warnings[0] and "cat.resized.jpg" in warnings[0]
    assert "9 usable images" in out                     # a warning, not a rejection


def test_training_writes_near_duplicates_csv(tmp_path, tiny_weights, dataset):
    out = tmp_path / "run"
    training.fit(quick_config(dataset, out, finetune_epochs=0))
    lines = (out / "near_duplicates.csv").read_text().splitlines()
    assert lines[0] == "path,split,near_duplicate_of,its_split,dhash_distance"


def test_a_cross_split_near_duplicate_is_listed_first(tmp_path, tiny_weights):
    train, test = tmp_path / "train", tmp_path / "test"
    for root, offset in ((train, 0), (test, 300)):
        for label, name in enumerate(("cat", "dog")):
            (root / name).mkdir(parents=True)
            for i in range(6):
                smooth_photo(offset + 10 * label + i).save(root / name / f"{name}.{offset + i}.jpg", quality=95)
    Image.open(train / "cat" / "cat.0.jpg").resize((80, 60)).save(train / "cat" / "cat.small.jpg", quality=60)
    Image.open(train / "dog" / "dog.1.jpg").resize((120, 90)).save(test / "dog" / "dog.copy.jpg", quality=70)
    out = tmp_path / "run"
    training.fit(quick_config(train, out, test_data=str(test), finetune_epochs=0, epochs=1))
    rows = [line.split(",") for line in (out / "near_duplicates.csv").read_text().splitlines()[1:]]
    assert len(rows) == 2, rows
    names = [{row[0].rsplit("/", 1)[1], row[2].rsplit("/", 1)[1]} for row in rows]
    assert names[0] == {"dog.1.jpg", "dog.copy.jpg"} and {rows[0][1], rows[0][3]} == {"train", "test"}
    assert names[1] == {"cat.0.jpg", "cat.small.jpg"} and rows[1][1] == rows[1][3] == "train"
