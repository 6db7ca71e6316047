"""Evaluating a finished run on its own test split or on a labelled folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import data
from .errors import UserError
from .fsutil import atomic_write_json, display_path
from .metrics import classification_metrics
from .predict import Predictor


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


def evaluate(run: str | Path, data_dir: str | None = None, output: str | None = None,
             device: str = "auto", precision: str = "auto") -> dict:
    """Metrics of a run's model on labelled images; also written as JSON (default RUN/evaluation.json)."""
    predictor = Predictor(run, device=device, precision=precision)
    paths, labels, rejected = labelled_files(Path(run), predictor.classes, data_dir)
    predictions, unreadable = predictor.predict(paths)
    rejected += unreadable
    if not predictions:
        first = f" (first: {display_path(rejected[0][0])}: {rejected[0][1]})" if rejected else ""
        raise UserError(f"evaluate: none of {len(rejected)} images could be read{first}; "
                        "allowed: a folder with readable images in class folders")
    label_of = dict(zip(paths, labels))
    probabilities = [[p.probabilities[c] for c in predictor.classes] for p in predictions]
    result = classification_metrics([label_of[p.path] for p in predictions], probabilities, predictor.classes)
    result["rejected"] = [{"path": display_path(p), "reason": r} for p, r in rejected]
    result["data"] = display_path(data_dir) if data_dir else "test split of the run"
    target = Path(output) if output else Path(run) / "evaluation.json"
    atomic_write_json(target, result)
    return result
