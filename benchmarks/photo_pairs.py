"""A multi-label image set built from the sample photos: two photos side by side on one square canvas,
labelled with both their classes (a single photo beside grey carries one label). Labels: cat and dog
(cats-vs-dogs-2k) and the five flowers of flowers-5.

    pool = PhotoPool(seed=0)                       # each photo used once, across every set built from it
    write_set(pool, folder, {("cat", "rose"): 40, ("dog",): 40})   # folder/labels.csv: path,labels

Each photo fills one half of a 448 x 448 canvas (scaled to 224 px wide, centred, grey around it), so the
centre crop the network sees holds both. A combination of labels can be left out of the training set
and tested apart: a model that learns labels one by one can still answer it, one that treats each label
set as a class cannot. No image is committed: the set is written where asked, from ../shared/data.
"""
from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {
    "cat": DATA / "cats-vs-dogs-2k" / "cat",
    "dog": DATA / "cats-vs-dogs-2k" / "dog",
    **{name: DATA / "flowers-5" / name for name in ("daisy", "dandelion", "rose", "sunflower", "tulip")},
}
SIDE = 448
GREY = (128, 128, 128)


class PhotoPool:
    """The photos of each label in a seeded order, each handed out once."""

    def __init__(self, seed: int = 0, labels=tuple(SOURCES)):
        rng = random.Random(seed)
        self.left = {}
        for label in labels:
            photos = sorted(p for p in SOURCES[label].iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            rng.shuffle(photos)
            self.left[label] = photos
        self.rng = rng

    def take(self, label: str) -> Path:
        if not self.left[label]:
            raise ValueError(f"no {label} photo left; allowed: fewer images of {label}")
        return self.left[label].pop()


def compose(photos: list[Path], right_first: bool = False) -> Image.Image:
    """One or two photos side by side on a grey square, each scaled into its half."""
    canvas = Image.new("RGB", (SIDE, SIDE), GREY)
    halves = [0, SIDE // 2][::-1] if right_first else [0, SIDE // 2]
    for left, path in zip(halves, photos):
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        scale = min((SIDE // 2) / photo.width, SIDE / photo.height)
        photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))))
        canvas.paste(photo, (left + (SIDE // 2 - photo.width) // 2, (SIDE - photo.height) // 2))
    return canvas


def write_set(pool: PhotoPool, folder: Path, counts: dict[tuple[str, ...], int]) -> Path:
    """`counts[label set]` images of each label set in `folder`, and folder/labels.csv (path,labels): its path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for labels, count in counts.items():
        for i in range(count):
            order = list(labels)
            pool.rng.shuffle(order)  # which photo is on the left is no clue
            name = f"{'+'.join(labels)}-{i}.jpg"
            compose([pool.take(label) for label in order], right_first=len(order) == 1 and pool.rng.random() < 0.5).save(
                folder / name, quality=90
            )
            rows.append((name, ";".join(sorted(labels))))
    manifest = folder / "labels.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return manifest


def label_sets(labels, held_out=()) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(every single label and every pair except `held_out`, the held-out pairs), each pair sorted."""
    held = [tuple(sorted(pair)) for pair in held_out]
    pairs = [pair for pair in itertools.combinations(sorted(labels), 2) if pair not in held]
    return [(label,) for label in sorted(labels)] + pairs, held
