"""Multi-label classification measured on photos side by side (photo_pairs.py): seven labels (cat, dog and
the five flowers), every single label and every pair of labels but three pairs held out of training.

    python benchmarks/multilabel.py --work /tmp/multilabel [--per-set 40] [--test-per-set 10] [--unseen-per-set 40]
        [--head places] [--asymmetric-loss] [--no-sets-as-classes] [--name multilabel]

Trains vggtune (the defaults) on the training set, its test split being a set of the same label sets
given apart (--test-data), then evaluates it on the held-out pairs, never seen together in training.
Beside it, the same photos the usual way out of multi-label data: each label set a class of a
single-label model; such a model cannot answer a pair it never saw (it has no class for it), and the
script counts how often it does. Prints the table and writes benchmarks/results/multilabel.json.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import head_options, save, table  # noqa: E402
from photo_pairs import SOURCES, PhotoPool, label_sets, write_set  # noqa: E402

import vggtune  # noqa: E402

HELD_OUT = (("cat", "rose"), ("dog", "sunflower"), ("daisy", "tulip"))


def as_classes(manifest: Path, target: Path) -> Path:
    """The same images with each label set as one class (path,label: "cat;rose" becomes class "cat+rose")."""
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((str(manifest.parent / row["path"]), row["labels"].replace(";", "+")) for row in rows)
    return target


def figures(metrics) -> dict:
    return {
        "images": metrics.n,
        "mAP": round(metrics.map, 4) if metrics.map is not None else None,
        "mAP_95": list(metrics.intervals_95["map"]) if "map" in metrics.intervals_95 else None,
        "F1_micro": round(metrics.f1_micro, 4),
        "F1_macro": round(metrics.f1_macro, 4),
        "subset_accuracy": round(metrics.subset_accuracy, 4),
        "subset_accuracy_95": list(metrics.accuracy_95),
        "hamming_loss": round(metrics.hamming_loss, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--per-set", type=int, default=40, help="training images of each label set")
    parser.add_argument("--test-per-set", type=int, default=10, help="test images of each seen label set")
    parser.add_argument("--unseen-per-set", type=int, default=40, help="images of each held-out pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", default="gap", help="the multi-label model's head; defaults: the head and loss "
                        "vggtune picks for several labels")
    parser.add_argument("--asymmetric-loss", action="store_true")
    parser.add_argument("--no-sets-as-classes", action="store_true", help="leave out the label-sets-as-classes model")
    parser.add_argument("--name", default="multilabel")
    args = parser.parse_args()
    work = Path(args.work)
    seen, unseen = label_sets(SOURCES, HELD_OUT)
    pool = PhotoPool(seed=args.seed)
    train = write_set(pool, work / "train", {labels: args.per_set for labels in seen})
    test = write_set(pool, work / "test", {labels: args.test_per_set for labels in seen})
    never = write_set(pool, work / "unseen", {labels: args.unseen_per_set for labels in unseen})
    rows = []
    run = work / f"run-{args.head}{'-asl' if args.asymmetric_loss else ''}"
    chosen = head_options(args.head + ("+asl" if args.asymmetric_loss else ""))
    result = vggtune.train(str(train), out=str(run), test_data=str(test), quiet=True, **chosen)
    model = f"vggtune multi-label, head {args.head}" + (", asymmetric loss" if args.asymmetric_loss else "")
    rows.append({"model": model, "tested on": "seen label sets", **figures(result.test)})
    unseen_result = vggtune.evaluate(str(run), data=str(never), report=False)
    rows.append({"model": model, "tested on": "held-out pairs", **figures(unseen_result.metrics)})
    if args.no_sets_as_classes:
        return finish(args, rows, unseen_result)
    # The usual way out: each label set a class. Trained on the same images; on the held-out pairs it can only
    # answer a set it knows, so its subset accuracy there is what the count below says.
    sets = vggtune.train(
        str(as_classes(train, work / "train-sets.csv")),
        out=str(work / "sets-run"),
        test_data=str(as_classes(test, work / "test-sets.csv")),
        quiet=True,
    )
    answered = vggtune.api.predict(str(work / "sets-run"), [str(work / "unseen")])
    truth = {row["path"]: row["labels"].replace(";", "+") for row in csv.DictReader(open(never, newline=""))}
    exact = sum(1 for p in answered.predictions if p.label == truth[Path(p.path).name])
    rows.append(
        {
            "model": "label sets as classes",
            "tested on": "seen label sets",
            "images": sets.test.n,
            "subset_accuracy": round(sets.test.accuracy, 4),
            "subset_accuracy_95": list(sets.test.accuracy_95),
        }
    )
    rows.append(
        {
            "model": "label sets as classes",
            "tested on": "held-out pairs",
            "images": len(answered.predictions),
            "subset_accuracy": round(exact / max(len(answered.predictions), 1), 4),
        }
    )
    finish(args, rows, unseen_result)


def finish(args, rows: list[dict], unseen_result) -> None:
    columns = ["model", "tested on", "images", "mAP", "F1_micro", "F1_macro", "subset_accuracy", "hamming_loss"]
    print(table(rows, columns))
    save(
        args.name,
        {
            "labels": list(SOURCES),
            "held_out_pairs": [list(pair) for pair in HELD_OUT],
            "per_set": args.per_set,
            "test_per_set": args.test_per_set,
            "unseen_per_set": args.unseen_per_set,
            "head": args.head,
            "asymmetric_loss": args.asymmetric_loss,
            "per_label_unseen": {
                name: {"recall": row.recall, "precision": row.precision, "threshold": row.threshold}
                for name, row in unseen_result.metrics.per_label.items()
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
