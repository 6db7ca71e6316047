"""Multi-label on composites as issue #55 built them: two photos side by side on a 448 x 224 image, three
labels (cat, dog, flower), trained on cat|cat, dog|dog, flower|flower, cat|dog and cat|flower, tested on
every pair, dog|flower among them, which training never shows. Each --heads entry trains vggtune's defaults
with that head on the same images; micro-F1 overall and on dog|flower, each label's average precision.

    python benchmarks/composites.py --work /tmp/composites [--heads gap places places+asl] [--per-pair 120]

Writes benchmarks/results/<--name>.json. No image is committed: the set is written under --work, from
../shared/data (cats-vs-dogs-2k's cats and dogs, flowers-5's flowers), each photo used once.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, head_options, save, table, train_options  # noqa: E402

import vggtune  # noqa: E402

SOURCES = {"cat": [DATA / "cats-vs-dogs-2k" / "cat"], "dog": [DATA / "cats-vs-dogs-2k" / "dog"],
           "flower": sorted(p for p in (DATA / "flowers-5").iterdir() if p.is_dir())}
LABELS = ("cat", "dog", "flower")
TRAINED = (("cat", "cat"), ("dog", "dog"), ("flower", "flower"), ("cat", "dog"), ("cat", "flower"))
TESTED = (*TRAINED, ("dog", "flower"))
HALF = 224
GREY = (128, 128, 128)


def photos(seed: int) -> dict[str, list[Path]]:
    rng = random.Random(seed)
    pool = {}
    for label, folders in SOURCES.items():
        found = sorted(p for folder in folders for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rng.shuffle(found)
        pool[label] = found
    return pool


def compose(left: Path, right: Path) -> Image.Image:
    """Two photos side by side, each scaled into its 224 x 224 half, grey around it."""
    canvas = Image.new("RGB", (2 * HALF, HALF), GREY)
    for x, path in ((0, left), (HALF, right)):
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        scale = min(HALF / photo.width, HALF / photo.height)
        photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))))
        canvas.paste(photo, (x + (HALF - photo.width) // 2, (HALF - photo.height) // 2))
    return canvas


def write(pool: dict, folder: Path, pairs, count: int, rng: random.Random) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for pair in pairs:
        for i in range(count):
            order = list(pair)
            rng.shuffle(order)
            name = f"{'-'.join(pair)}-{i}.jpg"
            compose(pool[order[0]].pop(), pool[order[1]].pop()).save(folder / name, quality=90)
            rows.append((name, ";".join(sorted(set(pair)))))
    manifest = folder / "labels.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "labels"), *rows])
    return manifest


def scored(run: Path, manifest: Path) -> dict:
    """Micro-F1 over the manifest's images, and on dog|flower alone, at the run's own rule."""
    truth = {row["path"]: set(filter(None, row["labels"].split(";"))) for row in csv.DictReader(open(manifest))}
    answered = vggtune.predict(str(run), [str(manifest.parent / name) for name in truth]).predictions
    given = {Path(p.path).name: set(p.labels or ()) for p in answered}
    names = sorted(truth)

    def rows(chosen):
        return (np.array([[label in truth[n] for label in LABELS] for n in chosen]),
                np.array([[label in given[n] for label in LABELS] for n in chosen]))
    unseen = [n for n in names if n.startswith("dog-flower")]
    one_label = sum(len(given[n]) == 1 for n in unseen)
    return {"images": len(names), "f1_micro": float(f1_score(*rows(names), average="micro")),
            "f1_micro_dog_flower": float(f1_score(*rows(unseen), average="micro")),
            "dog_flower_one_label_only": one_label, "dog_flower_images": len(unseen)}


def maps_apart(run: Path, test: Path) -> dict:
    """Grad-CAM of "dog" and of "flower" on each dog|flower image: the share of each map on the left half, and
    how often the two maps fall on different halves (each label's region, not the pair's)."""
    files = sorted(str(p) for p in test.glob("dog-flower-*.jpg"))
    predictor = vggtune.load(str(run))
    left_shares = []
    for target in ("dog", "flower"):
        explanations, _ = predictor.explain(files, target=target)
        shares = []
        for e in explanations:
            left, top, right, bottom = e.box
            mass = e.heatmap[top:bottom, left:right]
            shares.append(float(mass[:, : (right - left) // 2].sum()) / (float(mass.sum()) or 1.0))
        left_shares.append(np.array(shares))
    dog, flower = left_shares
    return {"maps_on_different_halves": int(((dog > 0.5) != (flower > 0.5)).sum()),
            "maps_left_share_difference": round(float(np.abs(dog - flower).mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--heads", nargs="+", default=["gap", "places"])
    parser.add_argument("--option", nargs="+", default=[], metavar="KEY=VALUE", help="more vggtune.train options")
    parser.add_argument("--per-pair", type=int, default=120)
    parser.add_argument("--test-per-pair", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="composites")
    args = parser.parse_args()
    work = Path(args.work)
    pool, rng = photos(args.seed), random.Random(args.seed)
    train = write(pool, work / "train", TRAINED, args.per_pair, rng)
    test = write(pool, work / "test", TESTED, args.test_per_pair, rng)
    rows = []
    for head in args.heads:  # common.head_options
        out = work / (f"run-{head}" + "".join(f"-{entry}" for entry in args.option))
        if not (out / "metrics.json").is_file():
            vggtune.train(str(train), out=str(out), quiet=True, no_report=True, **head_options(head),
                          **train_options(args.option))
        evaluated = vggtune.evaluate(str(out), data=str(test), report=False).metrics
        rows.append({"head": " ".join([head, *args.option]), **scored(out, test), **maps_apart(out, test.parent), "mAP": evaluated.map,
                     **{f"AP {name}": row.average_precision for name, row in evaluated.per_label.items()}})
        print(table(rows, list(rows[0])), flush=True)
    save(args.name, {"train_pairs": [list(p) for p in TRAINED], "per_pair": args.per_pair,
                     "test_per_pair": args.test_per_pair, "rows": rows})


if __name__ == "__main__":
    main()
