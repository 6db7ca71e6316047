"""The multi-label panel (issue #55, point 4): finished runs of composites.py, one_label_as_several.py and
multilabel.py, before and after, side by side on the same test images. From each run's saved answers (its
predictions.csv test split, or the evaluation.predictions.csv an evaluate wrote), decided at its own thresholds:
mAP, micro and macro F1, subset accuracy, and micro-F1 on the label combinations training never showed, each
with a 95 % bootstrap interval over the images, and the paired difference of each from the first run.

    python benchmarks/multilabel_panel.py --name multilabel-panel \
        --set "composites seed 0" /tmp/composites/run-gap /tmp/composites-z/run-defaults --held-out dog-flower ...

A --set: its name, the runs (the first is the one the others are measured against), and optionally the
file-name prefix of its held-out combination (--held-out, applied to the last --set given) or
--evaluation (the runs' evaluation.predictions.csv instead of their predictions.csv test split).
Writes benchmarks/results/<--name>.json.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table  # noqa: E402

DRAWS = 1000


def answers(run: Path, evaluation: bool) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(file names, targets, decisions, probabilities) of a run's test images, in file-name order."""
    source = run / ("evaluation.predictions.csv" if evaluation else "predictions.csv")
    with open(source, newline="") as handle:
        rows = [row for row in csv.reader(handle)]
    labels, rows = rows[0][4:], [row for row in rows[1:] if evaluation or row[0] == "test"]
    rows.sort(key=lambda row: Path(row[1]).name)

    def carried(cell: str) -> list[bool]:
        present = set(filter(None, cell.split(";")))
        return [label in present for label in labels]
    return ([Path(row[1]).name for row in rows], np.array([carried(row[2]) for row in rows], int),
            np.array([carried(row[3]) for row in rows], int), np.array([[float(x) for x in row[4:]] for row in rows]))


def measures(targets: np.ndarray, decided: np.ndarray, probabilities: np.ndarray, held: np.ndarray) -> dict:
    carried = targets.sum(0) > 0
    return {
        "mAP": float(np.mean([average_precision_score(targets[:, i], probabilities[:, i])
                              for i in np.flatnonzero(carried)])),
        "micro_F1": float(f1_score(targets, decided, average="micro", zero_division=0)),
        "macro_F1": float(f1_score(targets[:, carried], decided[:, carried], average="macro", zero_division=0)),
        "subset_accuracy": float((targets == decided).all(1).mean()),
        **({"held_out_micro_F1": float(f1_score(targets[held], decided[held], average="micro", zero_division=0))}
           if held.any() else {}),
    }


def compared(runs: list[Path], evaluation: bool, held_out: str | None) -> list[dict]:
    """A row a run: each measure with its interval, and its paired difference from the first run's."""
    read = [answers(run, evaluation) for run in runs]
    names = read[0][0]
    if any(r[0] != names for r in read):
        raise SystemExit(f"{runs}: the runs answered different images")
    held = np.array([bool(held_out) and name.startswith(held_out) for name in names])
    rng = np.random.default_rng(0)
    picks = [rng.integers(len(names), size=len(names)) for _ in range(DRAWS)]
    drawn = [[measures(t[p], d[p], s[p], held[p]) for p in picks] for _, t, d, s in read]
    rows = []
    for run, (_, targets, decided, probabilities), draws in zip(runs, read, drawn):
        row: dict = {"run": str(run), "images": len(names)}
        for key, value in measures(targets, decided, probabilities, held).items():
            row[key] = round(value, 4)
            row[f"{key}_95"] = [round(float(x), 4) for x in np.percentile([d[key] for d in draws], [2.5, 97.5])]
            differences = [d[key] - first[key] for d, first in zip(draws, drawn[0])]
            if run != runs[0]:
                row[f"{key}_diff_95"] = [round(float(x), 4) for x in np.percentile(differences, [2.5, 97.5])]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", nargs="+", action="append", required=True, metavar="NAME RUN")
    parser.add_argument("--held-out", action="append", default=[], metavar="SET=PREFIX")
    parser.add_argument("--evaluation", action="append", default=[], metavar="SET")
    parser.add_argument("--name", default="multilabel-panel")
    args = parser.parse_args()
    prefixes = dict(entry.split("=", 1) for entry in args.held_out)
    results = {}
    for name, *runs in args.set:
        rows = compared([Path(run) for run in runs], name in args.evaluation, prefixes.get(name))
        results[name] = rows
        shown = [{"set": name, **{k: v for k, v in row.items() if not k.endswith("95")}} for row in rows]
        print(table(shown, list(shown[0])), flush=True)
    save(args.name, {"sets": results})


if __name__ == "__main__":
    main()
