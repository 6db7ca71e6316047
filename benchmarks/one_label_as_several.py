"""Photos with one label each, trained as multi-label data (a `labels` column): where a head made for several
objects must be no worse than the one it replaces. flowers-5 (120 photos a class, 128 px) and oxford-pets-370
(37 breeds of 10), a seeded fifth of each class tested; each --heads entry ("+asl": the asymmetric loss)
trained with vggtune's defaults on the same images. Test mAP, micro-F1 and subset accuracy with intervals.

    python benchmarks/one_label_as_several.py --work /tmp/one-label [--heads gap places]

Writes benchmarks/results/<--name>.json.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, head_options, save, table, train_options  # noqa: E402

import vggtune  # noqa: E402
from vggtune.training.rundir import RunDir  # noqa: E402

SETS = {"flowers-5": (DATA / "flowers-5", 120), "pets-37": (DATA / "oxford-pets-370", None)}


def manifest(source: Path, per_class: int | None, path: Path, seed: int = 0) -> Path:
    rows = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        names = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rng = random.Random(seed)
        if per_class is not None:
            names = sorted(rng.sample(names, min(per_class, len(names))))
        tested = set(rng.sample(names, len(names) // 5))
        rows += [(str(p), folder.name, "test" if p in tested else "") for p in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "labels", "split"), *rows])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--heads", nargs="+", default=["gap", "places"])
    parser.add_argument("--option", nargs="+", default=[], metavar="KEY=VALUE", help="more vggtune.train options")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--name", default="one-label-as-several")
    args = parser.parse_args()
    work, rows = Path(args.work), []
    for name in args.sets:
        source, per_class = SETS[name]
        listed = manifest(source, per_class, work / name / "labels.csv")
        for head in args.heads:
            out = work / name / (f"run-{head}" + "".join(f"-{entry}" for entry in args.option))
            if not (out / "metrics.json").is_file():
                vggtune.train(str(listed), out=str(out), quiet=True, no_report=True, **head_options(head),
                              **train_options(args.option))
            test = RunDir(out).finished_metrics().test
            rows.append({"set": name, "head": " ".join([head, *args.option]), "images": test.n, "mAP": round(test.map, 4),
                         "mAP_95": list(test.intervals_95["map"]), "F1_micro": round(test.f1_micro, 4),
                         "F1_micro_95": list(test.intervals_95["f1_micro"]),
                         "subset_accuracy": round(test.subset_accuracy, 4), "subset_accuracy_95": list(test.accuracy_95)})
            print(table(rows, ["set", "head", "images", "mAP", "F1_micro", "subset_accuracy"]), flush=True)
    save(args.name, {"rows": rows})


if __name__ == "__main__":
    main()
