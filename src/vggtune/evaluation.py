"""Evaluating a finished run on its own test split or on a labelled folder."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data, distributed
from .errors import UserError
from .fsutil import atomic_write_json, display_path
from .metrics import classification_metrics
from .predict import Predictor
from .rundir import PredictionRow, RunDir, read_predictions, write_predictions

TEST_SPLIT = "test split of the run"
VAL_SPLIT = "validation split of the run (it kept no test split)"


def labelled_files(run: Path, classes: list[str], data_dir: str | None) -> tuple[list[str], list[int], list]:
    """(paths, labels, rejected): a folder's images mapped to the run's classes, else the run's test split."""
    if data_dir is None:
        splits_path = Path(run) / "splits.json"
        try:
            test = json.loads(splits_path.read_text())["test"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{display_path(splits_path)}: no test split ({exc}); allowed: --data DIR") from None
        if not test:
            raise UserError(f"run {display_path(run)} kept no test images; allowed: --data DIR with class folders")
        paths = [row["path"] for row in test]
        if not any(os.path.exists(path) for path in paths):
            folder = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
            raise UserError(f"the run's {len(paths)} test images were under {display_path(folder)}, which holds none "
                            "of them now; allowed: that folder back in place, or --data FOLDER with class folders")
        return paths, [int(row["label"]) for row in test], []
    found = data.discover(data_dir, min_classes=1)
    unknown = sorted(set(found.classes) - set(classes))
    if unknown:
        raise UserError(f"--data: classes {unknown} in {display_path(data_dir)} are not the run's; allowed: {classes}")
    items, rejected = data.scan(found)
    index = {name: classes.index(name) for name in found.classes}
    return [i.path for i in items], [index[found.classes[i.label]] for i in items], rejected


@dataclass(frozen=True)
class Evaluated:
    """Images a model was judged on: what they were, each one's true class and probabilities, and
    the files that could not be read."""
    data: str                                   # "test split of the run", or the folder's name
    classes: list[str]
    rows: list[PredictionRow]
    rejected: list[tuple[str, str]]

    @property
    def labels(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.classes)}
        return np.asarray([index[row.label] for row in self.rows], dtype=np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        return np.asarray([row.probabilities for row in self.rows], dtype=np.float64).reshape(-1, len(self.classes))

    def metrics(self) -> dict:
        return classification_metrics(self.labels, self.probabilities, self.classes)


def score(predictor: Predictor, run: Path, data_dir: str | None = None) -> Evaluated:
    """The run's model on its test split, or on a labelled folder."""
    paths, labels, rejected = labelled_files(Path(run), predictor.classes, data_dir)
    predictions, unreadable = predictor.predict(paths)
    rejected += unreadable
    if not predictions:
        first = f" (first: {display_path(rejected[0][0])}: {rejected[0][1]})" if rejected else ""
        raise UserError(f"evaluate: none of {len(rejected)} images could be read{first}; "
                        "allowed: a folder with readable images in class folders")
    label_of = dict(zip(paths, labels))
    rows = [PredictionRow("evaluation" if data_dir else "test", p.path, predictor.classes[label_of[p.path]],
                          [p.probabilities[c] for c in predictor.classes]) for p in predictions]
    return Evaluated(display_path(data_dir) if data_dir else TEST_SPLIT, predictor.classes, rows, rejected)


def from_training(run: Path, predictor: Predictor) -> Evaluated | None:
    """The test split as training scored it (predictions.csv), else the validation split; None when the
    run held out neither. A run made before predictions.csv existed is scored again on its test split."""
    path, classes = Path(run) / "predictions.csv", predictor.classes
    if not path.is_file():
        splits = RunDir(run).read("splits.json") or {}
        return score(predictor, Path(run)) if splits.get("test") else None
    rows = read_predictions(path, classes)
    for split, name in (("test", TEST_SPLIT), ("val", VAL_SPLIT)):
        chosen = [row for row in rows if row.split == split]
        if chosen:
            return Evaluated(name, classes, chosen, [])
    return None


def evaluate(run: str | Path, data_dir: str | None = None, output: str | None = None,
             device: str = "auto", precision: str = "auto", report: bool = True) -> dict:
    """Metrics of a run's model on labelled images, written as JSON (default RUN/evaluation.json), with
    each image's probabilities (*.predictions.csv) and the report (*.html) beside it. Under torchrun each
    rank scores its share of the images."""
    predictor = Predictor(run, device=device, precision=precision)
    evaluated = score(predictor, Path(run), data_dir)
    result = evaluated.metrics()
    result["rejected"] = [{"path": display_path(p), "reason": r} for p, r in evaluated.rejected]
    result["data"] = evaluated.data
    if not distributed.is_main():          # under torchrun, rank 0 writes
        return result
    target = Path(output) if output else Path(run) / "evaluation.json"
    atomic_write_json(target, result)
    write_predictions(target.with_suffix(".predictions.csv"), predictor.classes, evaluated.rows)
    if report:
        from .reportpage import write_report
        write_report(run, evaluated, predictor, target.with_suffix(".html"))
    return result
