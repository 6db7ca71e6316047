"""Which recipe settings hold up on validation data? Cross-validated, never on a test set.

10 head + 10 fine-tune epochs, 80/20 train/validation, no early stopping, repeated on
--folds disjoint training sets (by default images 0-99, 100-199, ... of each class of
cats-vs-dogs-2k: the size of the previous recipe.py) and measured on images 500-649 of
each class: none of them is among recipe.py's test images. --source, --per-class,
--held-skip and --held-per-class choose other data and sizes. The Keras peer can run on
the same folds (--settings "keras peer") to compare on validation data.
Every setting sees the same folds; all runs share one feature cache. Prints mean
accuracy and log loss per setting, writes results/<--name>.json. (results/recipe-study.json
was written while lr 1e-3 was the default: its "default", "head gap", "finetune lr 3e-5"
and "views 3" rows are this script's lr 1e-3 settings.)
"""
import argparse
import json
import statistics
import tempfile
from pathlib import Path

import vggtune

from common import DATA, link_subset, save, table

KERAS_AUGMENT = {"rotation": 36.0, "zoom": 0.2, "shift": 0.0, "colour": 0.0}   # RandomRotation(0.1) is ±0.1 turn
SETTINGS = {       # every entry names its head lr, so the table does not change with the defaults
    "lr 1e-3": {"lr": 1e-3},
    "lr 3e-4": {"lr": 3e-4},
    "lr 1e-4": {"lr": 1e-4},
    "lr 1e-3, head gap": {"lr": 1e-3, "head": "gap"},
    "lr 1e-3, finetune lr 3e-5": {"lr": 1e-3, "finetune_lr": 3e-5},
    "lr 1e-3, views 3": {"lr": 1e-3, "views": 3},
    "lr 3e-4, views 3": {"lr": 3e-4, "views": 3},
    "lr 3e-4, finetune lr 3e-5": {"lr": 3e-4, "finetune_lr": 3e-5},
    "lr 3e-4, dropout 0": {"lr": 3e-4, "dropout": 0.0},
    "lr 3e-4, dropout 0.2": {"lr": 3e-4, "dropout": 0.2},
    "lr 1e-3, dropout 0": {"lr": 1e-3, "dropout": 0.0},
    "lr 3e-4, head gap": {"lr": 3e-4, "head": "gap"},
    "lr 3e-4, views 5": {"lr": 3e-4, "views": 5},
    "lr 3e-4, no fine-tune": {"lr": 3e-4, "finetune_epochs": 0},
    "lr 3e-4, keras augment": {"lr": 3e-4, "augment": KERAS_AUGMENT},
    "lr 3e-4, views 10": {"lr": 3e-4, "views": 10},
    "as keras: lr 1e-3, dropout 0, keras augment, views 10": {"lr": 1e-3, "dropout": 0.0, "augment": KERAS_AUGMENT,
                                                              "views": 10},
    "lr 3e-4, int8": {"lr": 3e-4, "precision": "int8"},
}


SOURCES = ["cats-vs-dogs-2k", "petimages-180-10k"]   # two classes each: the Keras peer takes no more
KERAS = "keras peer"      # ../shared/peers/keras_seed.py, the reference recipe itself, on the same folds


def score(setting: str, fold: Path, held: Path, out: Path) -> dict:
    """Accuracy and log loss on the held images of one setting trained on one fold."""
    if setting == KERAS:                  # its own virtualenv (make bench builds it); it prints no log loss
        from recipe import SEED, keras_run
        peer = keras_run(fold, held, argparse.Namespace(epochs=10, finetune_epochs=10, seed=SEED))
        return {"accuracy": peer["accuracy"], "log_loss": None}
    result = vggtune.train(str(fold), out=str(out), test_data=str(held), val_split=0.2, test_split=0.0,
                           epochs=10, patience=0, quiet=True, **{"finetune_epochs": 10, **SETTINGS[setting]})
    return {"accuracy": result.test.accuracy, "log_loss": result.test.log_loss}


def mean(values: list) -> float | None:
    return None if None in values else round(statistics.mean(values), 4)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=[*SETTINGS, KERAS])
    parser.add_argument("--name", default="recipe-study", help="results/<name>.json")
    parser.add_argument("--source", default="cats-vs-dogs-2k", choices=SOURCES, help="folder of ../shared/data")
    parser.add_argument("--per-class", type=int, default=100, help="training images per class in each fold")
    parser.add_argument("--held-skip", type=int, default=500, help="validation images start after this many per class")
    parser.add_argument("--held-per-class", type=int, default=150)
    args = parser.parse_args()
    if args.folds * args.per_class > args.held_skip:
        parser.error(f"--folds × --per-class: received {args.folds * args.per_class} images per class; "
                     f"allowed: up to --held-skip ({args.held_skip}), so no validation image is trained on")
    work = Path(tempfile.mkdtemp(prefix="vggtune-study-"))
    source = DATA / args.source
    held = link_subset(source, work / "held", args.held_per_class, skip=args.held_skip)
    folds = [link_subset(source, work / f"fold-{k}", args.per_class, skip=args.per_class * k) for k in range(args.folds)]
    rows = []
    for name in args.settings:
        scores = []
        for k, fold in enumerate(folds):
            scores.append(score(name, fold, held, work / f"run-{len(rows)}-{k}"))
            print(json.dumps({"setting": name, "fold": k, **scores[-1]}), flush=True)
        rows.append({"setting": name, "accuracy": mean([s["accuracy"] for s in scores]),
                     "log_loss": mean([s["log_loss"] for s in scores]),
                     "per_fold": [s["accuracy"] for s in scores]})
    held_images = len(list(held.rglob("*.jpg")))
    print(f"\n{args.source}: {args.folds} folds of {2 * args.per_class} training images, {held_images} validation images")
    print(table(rows, ["setting", "accuracy", "log_loss", "per_fold"]))
    save(args.name, {"source": args.source, "folds": args.folds, "per_class": args.per_class,
                     "held_skip": args.held_skip, "held_images": held_images, "rows": rows})


if __name__ == "__main__":
    main()
