"""Which defaults hold on any data? One setting cross-validated on a panel of domains, the same folds
for every setting, compared image by image with today's defaults. Nothing here looks at a test set
other than the folds; the published test folders stay out of every choice.

The panel (subsets of ../shared/data, chosen by a seeded draw, so every setting sees the same images):
  cats-dogs     cats-vs-dogs-2k, 300 a class            ImageNet-like, balanced
  pets-37       oxford-pets-370, all 370                37 breeds of 10: many classes, few images
  flowers-5     flowers-5, 120 a class, 128 px photos   another domain, small images
  chest-xray    chest-xray-train, 900 of 5,216 drawn by patient (1 : 2.9 as the folder), folds grouped
                by patient (the file names carry the ids), so no patient is on both sides
  cats-dogs-1:5 the cats-dogs subset with the cats cut to a fifth (60 cats, 300 dogs): imbalanced
  petimages-180 petimages-180-10k, 300 a class, 180 px photos: only where --datasets names it
and, where a source can be held out, one split trained on one source and tested on another:
  xray-source   NORMAL's `IM-` series (and half the pneumonia patients) to train and validate on,
                NORMAL's `NORMAL2-IM-` series (and the other half) to test on: images from elsewhere
  pets-source   all of cats-vs-dogs-2k (Kaggle's photos) to train and validate on, the 120 cats and 250 dogs
                of oxford-pets-370 (another collection, 37 breeds) to test on

Each dataset is split into --folds folds stratified by class (and grouped by patient); a tenth of each
training part validates. A fold is a `vggtune train` of a manifest (path,label,split) with the setting's
options, so the runs use the feature cache as users' runs do. Scoring-only rows ("+ val threshold": a
two-class threshold chosen on each fold's validation images, applied to its test images) reuse the
fold runs. Per dataset: accuracy, balanced accuracy, macro F1, log loss with 95 % intervals (a
bootstrap within each class), recall per class, and against the first setting on the same images:
McNemar's exact test and paired bootstrap intervals of the balanced-accuracy and log-loss
differences. Writes results/<--name>.json; panel_table.py makes the Markdown table.

    cd benchmarks && ../.venv/bin/python panel.py --work /tmp/panel --name panel --settings default "class weights"

"default" is the defaults the panel started from (classes unweighted, block5 at 1e-5, dropout 0.5, 224 px);
"new defaults" the ones it chose; the other settings change only what they name. `--merge` puts settings
of earlier results files side by side without training.
"""
from __future__ import annotations

import argparse
import csv
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedGroupKFold

import vggtune
from vggtune.results.analysis import intervals, mcnemar
from vggtune.training.metrics import best_threshold, classification_metrics
from vggtune.training.rundir import read_predictions, RunDir

from common import DATA, machine, save

SEED = 1337
IMAGES = (".jpg", ".jpeg", ".png")
# Each setting: the options it gives `vggtune train`, on top of the defaults the panel started from
# (before it, classes were not weighted, block5 was fine-tuned at 1e-5, the head's dropout was 0.5 and the
# input side 224; the panel chose class weights auto and block5 at 3e-5, then dropout 0.2 and the input side
# from the images: "new defaults"). The candidates and levers before those choices pin what they ran with.
BEFORE = {"class_weights": "off", "finetune_lr": 1e-5, "dropout": 0.5, "size": 224}
CANDIDATE = {"class_weights": "auto", "finetune_lr": 3e-5, "dropout": 0.5, "size": 224}
NEW = {**CANDIDATE, "dropout": 0.2, "size": "auto"}
SETTINGS = {
    "default": {},
    "class weights": {"class_weights": "balanced"},
    "class weights auto": {"class_weights": "auto"},
    "head only": {"finetune_epochs": 0},
    "block4+5 1e-4 ratio 10": {"finetune_blocks": 2, "finetune_lr": 1e-4, "block_lr_ratio": 10.0},
    "block5 1e-4": {"finetune_lr": 1e-4},
    "finetune 10 epochs": {"finetune_epochs": 10},
    "head dropout 0.2": {"dropout": 0.2},
    "size 128": {"size": 128},
    "int8": {"precision": "int8"},
    "block5 3e-5": {"finetune_lr": 3e-5},
    # candidates for the new defaults (BENCHMARKS.md section 22), and levers on top of them
    "class weights auto + block5 3e-5": CANDIDATE,
    "class weights auto + block5 1e-4": {**CANDIDATE, "finetune_lr": 1e-4},
    "new defaults + cosine": {**CANDIDATE, "schedule": "cosine"},
    "new defaults + int8": {**CANDIDATE, "precision": "int8"},
    "new defaults + dropout 0.2": {**CANDIDATE, "dropout": 0.2},
    "new defaults + size 128": {**CANDIDATE, "size": 128},
    "new defaults + size 160": {**CANDIDATE, "size": 160},
    "new defaults + size 192": {**CANDIDATE, "size": 192},
    "new defaults": NEW,
    # which of the panel's changes costs cats and dogs (issue #54): each put back alone, then both
    "new defaults + finetune 1e-5": {**NEW, "finetune_lr": 1e-5},
    "new defaults + dropout 0.5": {**NEW, "dropout": 0.5},
    "new defaults + finetune 1e-5 + dropout 0.5": {**NEW, "finetune_lr": 1e-5, "dropout": 0.5},
    # a lever the data chooses (issues #54 and #56): WiSE-FT, the share of the fine-tuning kept chosen on validation
    "new defaults + blend val": {**NEW, "blend": "val"},
    # epochs that follow the validation loss: the head stage (seconds an epoch on cached features) kept its last
    # epoch on most folds; a larger budget, early stopping (patience 3) ending it
    "new defaults + head 30 epochs": {**NEW, "epochs": 30},
    "new defaults + head lr 3e-3": {**NEW, "lr": 3e-3},
    # the rate follows the validation loss: an epoch that does not lower it is undone and the rate divided by 3
    "new defaults + plateau": {**NEW, "schedule": "plateau"},
    "new defaults + plateau + finetune 10 epochs": {**NEW, "schedule": "plateau", "finetune_epochs": 10},
    # L2-SP: block5 pulled toward its pretrained weights, moving only where the data pulls harder
    "new defaults + l2sp 0.1": {**NEW, "l2sp": 0.1},
    "new defaults + l2sp 1": {**NEW, "l2sp": 1.0},
    # a lever the data chooses: each fold trains both rates and keeps the run with the lower validation loss
    "finetune rate chosen on val": {"choose": ["new defaults", "new defaults + finetune 1e-5"]},
    # ... or keeps both and averages their probabilities
    "both finetune rates averaged": {"average": ["new defaults", "new defaults + finetune 1e-5"]},
    # `vggtune tune` on each fold's training and validation images, its best setting tested on the fold
    "tune 8 trials": {"trials": 8, **CANDIDATE},
    "tune 240 s": {"trials": 50, "timeout": 240, **CANDIDATE},
}


@dataclass(frozen=True)
class Image:
    path: str
    label: str
    group: str            # images of one group (a patient) never sit on both sides of a split


def patient(path: Path) -> str:
    """The patient a chest X-ray's file name names: person123_..., IM-0115-0001, NORMAL2-IM-1427-0001."""
    name = path.stem
    found = re.match(r"(person\d+)_", name) or re.match(r"((?:NORMAL2-)?IM-\d+)-", name)
    return found.group(1) if found else name


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGES)


def per_class(source: Path, count: int | None) -> list[Image]:
    """`count` images of each class (all where None), drawn with the panel's seed."""
    chosen = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        names = files(folder)
        if count is not None:
            names = sorted(random.Random(SEED).sample(names, min(count, len(names))))
        chosen += [Image(str(p), folder.name, str(p)) for p in names]
    return chosen


def by_patient(source: Path, per_label: dict[str, int]) -> list[Image]:
    """Whole patients drawn with the panel's seed until each class holds its count of images."""
    chosen = []
    for label, wanted in per_label.items():
        groups: dict[str, list[Path]] = {}
        for path in files(source / label):
            groups.setdefault(patient(path), []).append(path)
        names = sorted(groups)
        random.Random(SEED).shuffle(names)
        taken = []
        for name in names:
            if len(taken) >= wanted:
                break
            taken += [Image(str(p), label, name) for p in groups[name]]
        chosen += taken
    return chosen


ON_REQUEST = ("petimages-180", "cats-dogs-2k", "petimages-180-10k")


def datasets() -> dict[str, list[Image]]:
    cats = per_class(DATA / "cats-vs-dogs-2k", 300)
    fifth = [i for i in cats if i.label == "cat"][:60] + [i for i in cats if i.label == "dog"]
    return {"cats-dogs": cats, "pets-37": per_class(DATA / "oxford-pets-370", None),
            "flowers-5": per_class(DATA / "flowers-5", 120),
            "chest-xray": by_patient(DATA / "chest-xray-train", {"NORMAL": 232, "PNEUMONIA": 668}),
            "cats-dogs-1:5": fifth,
            # not in the panel's default runs (--datasets names it): a second set of images smaller than the resize
            "petimages-180": per_class(DATA / "petimages-180-10k", 300),
            # at full size (issue #54): the images a small panel lacks; only where --datasets names them
            "cats-dogs-2k": per_class(DATA / "cats-vs-dogs-2k", None),
            "petimages-180-10k": per_class(DATA / "petimages-180-10k", None)}


def source_split() -> list[tuple[Image, str]]:
    """xray-source: NORMAL `IM-` and half the pneumonia patients train (a tenth of them validates);
    NORMAL2 and the other half test."""
    drawn = by_patient(DATA / "chest-xray-train", {"NORMAL": 400, "PNEUMONIA": 800})
    pneumonia = sorted({i.group for i in drawn if i.label == "PNEUMONIA"})
    tested = set(pneumonia[::2])
    rows = []
    for image in drawn:
        elsewhere = image.group.startswith("NORMAL2") if image.label == "NORMAL" else image.group in tested
        rows.append((image, "test" if elsewhere else "train"))
    trained = sorted({i.group for i, split in rows if split == "train"})
    validating = set(trained[::10])
    return [(i, "val" if split == "train" and i.group in validating else split) for i, split in rows]


def pets_source_split() -> list[tuple[Image, str]]:
    """pets-source: cats-vs-dogs-2k trains (a seeded tenth of each class validates); oxford-pets-370's cats
    (its capitalised breeds) and dogs test."""
    rows = []
    for label in ("cat", "dog"):
        names = files(DATA / "cats-vs-dogs-2k" / label)
        validating = set(random.Random(SEED).sample(names, len(names) // 10))
        rows += [(Image(str(p), label, str(p)), "val" if p in validating else "train") for p in names]
    for breed in sorted(p for p in (DATA / "oxford-pets-370").iterdir() if p.is_dir()):
        label = "cat" if breed.name[0].isupper() else "dog"
        rows += [(Image(str(p), label, str(p)), "test") for p in files(breed)]
    return rows


def folds(images: list[Image], count: int) -> list[list[tuple[Image, str]]]:
    """Each fold's (image, split): test is one of `count` folds stratified by class and grouped; a tenth of
    the rest (a larger share where a class has fewer than ten images left), by the same rule, validates."""
    labels = [i.label for i in images]
    groups = [i.group for i in images]
    outer = StratifiedGroupKFold(n_splits=count, shuffle=True, random_state=SEED)
    result = []
    for rest, test in outer.split(images, labels, groups):
        smallest = min(sum(labels[i] == label for i in rest) for label in set(labels))
        inner = StratifiedGroupKFold(n_splits=max(2, min(10, smallest)), shuffle=True, random_state=SEED)
        train, val = next(inner.split(rest, [labels[i] for i in rest], [groups[i] for i in rest]))
        split = {int(i): "test" for i in test} | {int(rest[i]): "train" for i in train} | {int(rest[i]): "val" for i in val}
        result.append([(images[i], split[i]) for i in range(len(images))])
    return result


def write_manifest(rows: list[tuple[Image, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows([(image.path, image.label, split) for image, split in rows])
    return path


def run_fold(manifest: Path, out: Path, options: dict) -> tuple[Path, float]:
    """Trains one fold unless it finished before (a setting with "trials" searches with `vggtune tune`
    and keeps its best run); the run folder and the seconds it took."""
    searched = "trials" in options
    run = out / "best" if searched else out
    metrics = RunDir(run).metrics()
    if metrics is not None and not (out / "seconds.txt").is_file():         # a fold run before seconds.txt
        return run, float(metrics.timing.get("this_call_s", 0))
    if metrics is None:
        started = time.perf_counter()
        if searched:
            vggtune.tune(str(manifest), out=str(out), quiet=True, no_report=True, **options)
        else:
            vggtune.train(str(manifest), out=str(out), quiet=True, no_report=True, **options)
        (out / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return run, float((out / "seconds.txt").read_text())


def chosen_fold(work: Path, setting: str, dataset: str, k: int, manifest: Path) -> tuple[list[Path], float]:
    """A setting's fold run(s) and their seconds: its own run; for a setting that chooses among settings, each
    of theirs trained (or reused) and the one with the lowest validation log loss kept; for one that averages
    settings, all of their runs (their probabilities averaged)."""
    options = SETTINGS[setting]
    candidates = options.get("choose") or options.get("average") or [setting]
    runs = [run_fold(manifest, work / "runs" / name.replace(" ", "_") / dataset / f"fold{k}",
                     {**BEFORE, **SETTINGS[name]}) for name in candidates]
    seconds = sum(seconds for _, seconds in runs)
    if "average" in options:
        return [run for run, _ in runs], seconds
    losses = [RunDir(run).finished_metrics().val.log_loss for run, _ in runs]
    best = int(np.argmin(losses))
    if len(runs) > 1:
        print(f"  {dataset} fold {k}: validation loss " + ", ".join(
            f"{name} {loss:.4f}" for name, loss in zip(candidates, losses)) + f": {candidates[best]}", flush=True)
    return [runs[best][0]], seconds


def scored(runs: list[Path], threshold_from_val: bool) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """(test paths, labels, probabilities, threshold) of a fold's run, or of its runs' probabilities averaged;
    the threshold chosen on the validation images where asked, else the one the first run's model.json holds."""
    classes = RunDir(runs[0]).splits().classes
    read = [read_predictions(out / "predictions.csv", classes) for out in runs]
    if any([r.path for r in rows] != [r.path for r in read[0]] for rows in read):
        raise SystemExit(f"{runs}: their predictions.csv list other images")
    rows = read[0]
    probabilities = np.mean([[r.probabilities for r in rows] for rows in read], axis=0).reshape(len(rows), len(classes))
    threshold = _model_threshold(runs[0])
    val, test = ([i for i, r in enumerate(rows) if r.split == split] for split in ("val", "test"))
    if threshold_from_val and len(classes) == 2:
        chosen = best_threshold([classes.index(rows[i].label) for i in val], probabilities[val, 1])
        threshold = chosen if chosen is not None else threshold
    return ([rows[i].path for i in test], np.array([classes.index(rows[i].label) for i in test]),
            probabilities[test], threshold)


def _model_threshold(out: Path) -> float:
    import json
    return float(json.loads((out / "model.json").read_text()).get("threshold", 0.5))


def figures(classes: list[str], labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> dict:
    """Pooled metrics of out-of-fold scores, each image decided at its fold's threshold; 95 % intervals
    by a bootstrap within each class of those decisions (the log loss's: analysis.intervals)."""
    decided = np.where(probabilities[:, 1] > thresholds, 1, 0) if len(classes) == 2 else probabilities.argmax(1)
    correct = decided == labels
    present = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in present]

    def decisions(pick: np.ndarray) -> tuple[float, float, float]:
        right = correct[pick]
        recall = [right[labels[pick] == c].mean() for c in present]
        return float(right.mean()), float(np.mean(recall)), float(f1_score(labels[pick], decided[pick], average="macro"))
    rng = np.random.default_rng(0)
    drawn = np.array([decisions(np.concatenate([rows[rng.integers(len(rows), size=len(rows))] for rows in members]))
                      for _ in range(300)])
    low, high = np.percentile(drawn, [2.5, 97.5], axis=0)
    accuracy, balanced, f1 = decisions(np.arange(len(labels)))
    log_loss = classification_metrics(labels, probabilities, classes).log_loss
    return {"n": int(len(labels)), "accuracy": accuracy, "balanced_accuracy": balanced, "f1_macro": f1,
            "log_loss": log_loss, "log_loss_95": intervals(labels, probabilities, classes, draws=300).log_loss,
            "accuracy_95": [low[0], high[0]], "balanced_accuracy_95": [low[1], high[1]], "f1_macro_95": [low[2], high[2]],
            "recall": {classes[c]: float(correct[labels == c].mean()) for c in present}, "correct": correct.tolist(),
            "nll": (-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-15, 1))).tolist()}


def paired(labels: np.ndarray, base_row: dict, other_row: dict, draws: int = 1000) -> dict:
    """McNemar on the images, and a bootstrap (within each class) of the balanced-accuracy and the
    log-loss differences."""
    base, other = np.asarray(base_row["correct"]), np.asarray(other_row["correct"])
    nll_difference = np.asarray(other_row["nll"]) - np.asarray(base_row["nll"])
    rng = np.random.default_rng(0)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    def balanced(correct, pick):
        return np.mean([correct[pick[labels[pick] == c]].mean() for c in np.unique(labels)])
    everyone = np.arange(len(labels))
    differences, loss_differences = [], []
    for _ in range(draws):
        pick = np.concatenate([rows[rng.integers(len(rows), size=len(rows))] for rows in members])
        differences.append(balanced(other, pick) - balanced(base, pick))
        loss_differences.append(nll_difference[pick].mean())
    test = mcnemar(base, other)
    return {"balanced_accuracy_diff": float(balanced(other, everyone) - balanced(base, everyone)),
            "balanced_accuracy_diff_95": [float(x) for x in np.percentile(differences, [2.5, 97.5])],
            "log_loss_diff": float(nll_difference.mean()),
            "log_loss_diff_95": [float(x) for x in np.percentile(loss_differences, [2.5, 97.5])],
            "only_here": int((other & ~base).sum()), "only_there": int((base & ~other).sum()), "mcnemar": test}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["default"], choices=SETTINGS)
    parser.add_argument("--datasets", nargs="+", default=None, help="a part of the panel (default: all of it)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/panel")
    parser.add_argument("--name", default="panel")
    parser.add_argument("--merge", nargs="+", metavar="FILE:SETTING",
                        help="no training: compare settings of earlier results files, the first against the others")
    args = parser.parse_args()
    if args.merge:
        return merge(args.name, args.merge)
    work = Path(args.work)
    panel = {name: folds(images, args.folds) for name, images in datasets().items()}
    panel["xray-source"] = [source_split()]
    panel["pets-source"] = [pets_source_split()]
    chosen = args.datasets or [name for name in panel if name not in ON_REQUEST]
    results = {"machine": machine(), "folds": args.folds, "settings": {}}
    for setting in args.settings:
        for name in chosen:
            seconds, parts = 0.0, []
            for k, rows in enumerate(panel[name], 1):
                manifest = write_manifest(rows, work / "manifests" / name / f"fold{k}.csv")
                runs, fold_seconds = chosen_fold(work, setting, name, k, manifest)
                seconds += fold_seconds
                parts.append(runs)
            classes = RunDir(parts[0][0]).splits().classes
            for scoring, from_val in (("", False), (" + val threshold", True)):
                if from_val and len(classes) != 2:
                    continue
                pooled = [scored(out, from_val) for out in parts]
                paths = sum((p[0] for p in pooled), [])
                labels = np.concatenate([p[1] for p in pooled])
                probabilities = np.concatenate([p[2] for p in pooled])
                thresholds = np.concatenate([np.full(len(p[1]), p[3]) for p in pooled])
                row = figures(classes, labels, probabilities, thresholds)
                row.update(seconds=round(seconds, 1), paths=paths, labels=labels.tolist())
                results["settings"].setdefault(setting + scoring, {})[name] = row
                print(f"{setting + scoring:32s} {name:14s} n {row['n']:4d}  acc {row['accuracy']:.4f}  "
                      f"bal {row['balanced_accuracy']:.4f}  F1 {row['f1_macro']:.4f}  "
                      f"loss {row['log_loss']:.4f}  {seconds:.0f} s", flush=True)
            save(args.name, results)
    compare(results)
    save(args.name, results)


def merge(name: str, sources: list[str]) -> None:
    """Settings of earlier panels side by side (their rows hold every image's outcome, and the seeded
    folds are the same), compared as one panel's."""
    import json
    results = {"machine": machine(), "merged_from": sources, "settings": {}}
    for source in sources:
        path, _, setting = source.partition(":")
        held = json.loads(Path(path).read_text())["settings"]
        if setting not in held:
            raise SystemExit(f"--merge: {path} holds no setting {setting!r}; it holds {', '.join(held)}")
        for scoring in ("", " + val threshold"):
            for dataset, row in held.get(setting + scoring, {}).items():
                row.pop("against_first", None)
                results["settings"].setdefault(setting + scoring, {})[dataset] = row
    compare(results)
    save(name, results)


def compare(results: dict) -> None:
    """Each row against the first setting on the same images; pooled over the datasets both hold."""
    base_name = next(iter(results["settings"]))
    base = results["settings"][base_name]
    for setting, by_dataset in results["settings"].items():
        together_base, together_other = [], []
        for name, row in by_dataset.items():
            if name not in base or base[name]["paths"] != row["paths"]:
                continue
            row["against_first"] = paired(np.array(row["labels"]), base[name], row)
            together_base += base[name]["correct"]
            together_other += row["correct"]
        if together_base:
            base_arr, other_arr = np.asarray(together_base), np.asarray(together_other)
            results.setdefault("pooled", {})[setting] = {
                "images": len(base_arr), "only_here": int((other_arr & ~base_arr).sum()),
                "only_there": int((base_arr & ~other_arr).sum()), "mcnemar": mcnemar(base_arr, other_arr)}


if __name__ == "__main__":
    main()
