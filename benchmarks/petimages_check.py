"""A second, independent check: trained on cats-vs-dogs-2k, tested on PetImages. Nothing is chosen here.

For each seed, `vggtune train ../shared/data/cats-vs-dogs-2k` (its own 80/10/10 split) with the
classic recipe's training settings, then its model scored on the first 1,000 photos of each class
of petimages-180-10k (cat/dog 5001-6000, resized to 180 px), old way and new way: one clean view
at the trained temperature (classic), or the recipe's defaults (cv_study.py's scoring of the same
model). Pooled over the seeds, each compared on the same images (McNemar, log-loss interval) with the
first setting's "+ tta" row: the defaults of 2026-11-30.
Writes results/<--name>.json; the runs stay in --work.

    cd benchmarks && ../.venv/bin/python petimages_check.py --seeds 1 2 3 --settings default gap
"""
import argparse
from pathlib import Path

import vggtune
from vggtune.data import dataset as data
from vggtune.data import discovery

from common import DATA, machine, save, table
from cv_study import NEW_DEFAULT, SCORED, TEN_CROP, TTA_VIEWS, options_of, row_of, scored


# cv_study.py's scorings but the ten crops (eight more views of 2,000 photos a seed; not a default).
SCORINGS = {suffix: how for suffix, how in SCORED.items() if how[0] != TEN_CROP}


def first_photos(folder: Path, per_class: int) -> list:
    """The first `per_class` images of each class, in numeric order of their names, scanned and checked."""
    found = discovery.discover(folder)
    by_class = {}
    for path, name in sorted(found.files, key=lambda pair: int(Path(pair[0]).stem.split(".")[-1])):
        by_class.setdefault(name, [])
        if len(by_class[name]) < per_class:
            by_class[name].append((path, name))
    found.files = [pair for name in found.classes for pair in by_class.get(name, [])]
    items, rejected = data.scan(found)
    for path, reason in rejected:
        print(f"rejected {path}: {reason}")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default=str(DATA / "cats-vs-dogs-2k"))
    parser.add_argument("--test", default=str(DATA / "petimages-180-10k"))
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=["default"],
                        help="training settings of cv_study.py (joined by ' + '); the first is the baseline")
    parser.add_argument("--work", default="/tmp/vggtune-petimages")
    parser.add_argument("--name", default="petimages-check")
    args = parser.parse_args()
    test_items = first_photos(Path(args.test), args.per_class)
    rows, cache, base = [], {}, None
    for setting in args.settings:
        runs = []
        for seed in args.seeds:
            run = Path(args.work) / f"{setting.replace(' ', '-')}-seed-{seed}"
            if not (run / "model.json").is_file():
                vggtune.train(args.train, out=str(run), seed=seed, quiet=True, no_report=True, **options_of(setting))
            runs.append(run)
        for suffix, (views, calibrate) in SCORINGS.items():
            probabilities, labels = scored(runs, views, calibrate, cache, test_items, TTA_VIEWS)
            # Paired across settings by seed and photo, not by run folder.
            probabilities, labels = ({(run.split("-seed-")[-1], path): value for (run, path), value in mapping.items()}
                                     for mapping in (probabilities, labels))
            base = base or (probabilities if suffix == NEW_DEFAULT else None)
            rows.append(row_of(setting + suffix, probabilities, labels, base or probabilities, ["cat", "dog"]))
            print(table(rows[-1:], list(rows[-1])), flush=True)
    print(table(rows, list(rows[0])))
    save(args.name, {"machine": machine(), "train": args.train, "test": args.test, "seeds": args.seeds,
                     "test_images": len(test_items), "settings": {s: options_of(s) for s in args.settings},
                     "baseline": args.settings[0] + NEW_DEFAULT, "rows": rows})


if __name__ == "__main__":
    main()
