"""`Evaluated`: the images a model was judged on, each one's true class and probabilities, and how
to get them: by scoring a run's model (`score`) or from what training scored (`from_training`)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggtune.deploy.inputs import labelled_files
from vggtune.deploy.predict import Predictor
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.results import analysis
from vggtune.training.metrics import classification_metrics
from vggtune.training.rundir import PredictionRow, RunDir, read_predictions

TEST_SPLIT = "test split of the run"
VAL_SPLIT = "validation split of the run (it kept no test split)"


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

    @functools.cached_property
    def headline(self) -> list[tuple[str, str, float, tuple | None]]:
        """(key, name, value, 95 % interval) of the headline metrics: computed once (its bootstrap draws
        1,000 resamples), shared by the report and the model card."""
        return analysis.headline(self.labels, self.probabilities, self.classes)


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
        splits = RunDir(run).splits()
        return score(predictor, Path(run)) if splits and splits.test else None
    rows = read_predictions(path, classes)
    for split, name in (("test", TEST_SPLIT), ("val", VAL_SPLIT)):
        chosen = [row for row in rows if row.split == split]
        if chosen:
            return Evaluated(name, classes, chosen, [])
    return None
