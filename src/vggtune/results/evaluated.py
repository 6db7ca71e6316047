"""`Evaluated`: the images a model was judged on, each one's true class and probabilities, and how
to get them: by scoring a run's model (`score`) or from what training scored (`from_training`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vggtune.data import balance
from vggtune.deploy.inputs import labelled_files
from vggtune.deploy.predict import Predictor
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.results import analysis
from vggtune.training import figures as scored
from vggtune.training.rundir import PredictionRow, RunDir

if TYPE_CHECKING:  # annotations only
    from vggtune.tasks import Task
    from vggtune.training.figures import Figures
    from vggtune.training.metrics import Metrics
    from vggtune.training.multilabel import MultiLabelMetrics

TEST_SPLIT = "test split of the run"
VAL_SPLIT = "validation split of the run (it kept no test split)"


@dataclass(frozen=True)
class Evaluated:
    """Images a model was judged on: what they were, each one's true class and probabilities, and
    the files that could not be read."""

    data: str  # "test split of the run", "the test folder X", or the folder's name
    classes: list[str]
    rows: list[PredictionRow]
    rejected: list[tuple[str, str]]
    task: Task  # what the model is asked: its figures, counts and findings follow from it
    own: bool = False  # the run's own test (or validation) split, given folder or not
    threshold: float = 0.5  # two classes: the decision threshold the labels are decided at
    thresholds: tuple[float, ...] = ()  # a multi-label model's, one a label
    positive: int = 1  # two classes: the positive class (sensitivity's, F1's)

    @property
    def labels(self) -> np.ndarray:
        """Each image's class index; multi-label: (image, label) 0/1."""
        return scored.truth(self.task, [row.label for row in self.rows], self.classes)

    @property
    def probabilities(self) -> np.ndarray:
        return np.asarray([row.probabilities for row in self.rows], dtype=np.float64).reshape(-1, len(self.classes))

    @functools.cached_property
    def metrics(self) -> Metrics:
        """The figures of these single-label images: computed once, shared by every section of the report and
        the card."""
        if self.task.several:
            raise TypeError("Evaluated.metrics: a multi-label set's figures are MultiLabelMetrics (`figures`)")
        return self.figures  # type: ignore[return-value]  # a single-label task's record

    @property
    def multilabel_figures(self) -> MultiLabelMetrics:
        """The figures of these multi-label images."""
        if not self.task.several:
            raise TypeError("Evaluated.multilabel_figures: a single-label set's figures are Metrics (`metrics`)")
        return self.figures  # type: ignore[return-value]  # a multi-label task's record

    @functools.cached_property
    def figures(self) -> Figures:
        """The figures of these images: Metrics, or a multi-label model's MultiLabelMetrics (with bootstrap
        intervals)."""
        return scored.figures(
            self.task,
            self.labels,
            self.probabilities,
            self.classes,
            self.threshold,
            self.thresholds,
            intervals=True,
            positive=self.positive,
        )

    def counts(self) -> dict[str, int]:
        """Images per class in this set (multi-label: carrying each label)."""
        if self.task.several:
            return dict(zip(self.classes, self.labels.sum(0).tolist()))
        return dict(zip(self.classes, np.bincount(self.labels, minlength=len(self.classes)).tolist()))

    def findings(self, folder: RunDir) -> list[str]:
        """What a reader must be told beside the totals, as sentences: sensitivity and specificity by class,
        an imbalance among the classes, an accuracy below the validation split's interval (multi-label: the
        last alone, of subset accuracy)."""
        if self.task.several:
            gap = validation_gap(folder, self.figures, self.data) if self.data != VAL_SPLIT else None
            return [gap[0].upper() + gap[1:]] if gap else []
        metrics = self.metrics
        said = [
            analysis.two_class_rates(metrics),
            balance.imbalance(self.counts()),
            validation_gap(folder, metrics, self.data) if self.data != VAL_SPLIT else None,
        ]
        return [sentence[0].upper() + sentence[1:] for sentence in said if sentence]

    @functools.cached_property
    def headline(self) -> list[analysis.Figure]:
        """The headline figures with their 95 % intervals: computed once (its bootstrap draws
        1,000 resamples), shared by the report and the model card."""
        if self.task.several:
            return analysis.multilabel_headline(self.multilabel_figures)
        return analysis.headline(self.labels, self.probabilities, self.classes, self.threshold, self.positive)


def score(
    predictor: Predictor, folder: RunDir, data_dir: str | None = None, embeddings: list | None = None
) -> Evaluated:
    """The run's model on its test split, or on a labelled folder (`embeddings`, a list: receives each scored
    image's embedding, as Predictor.predict gives them)."""
    paths, labels, rejected = labelled_files(folder, predictor.classes, data_dir, predictor.spec.task)
    predictions, unreadable = predictor.predict(paths, embeddings)
    rejected += unreadable
    if not predictions:
        first = f" (first: {display_path(rejected[0][0])}: {rejected[0][1]})" if rejected else ""
        raise UserError(
            f"evaluate: none of {len(rejected)} images could be read{first}; "
            "allowed: a folder with readable images in class folders"
        )
    label_of = dict(zip(paths, labels))
    rows = [
        PredictionRow(
            "evaluation" if data_dir else "test",
            p.path,
            label_of[p.path],
            [p.probabilities[c] for c in predictor.classes],
        )
        for p in predictions
    ]
    scoring = predictor.spec.scoring
    name = display_path(data_dir) if data_dir else split_name(folder, "test")
    return Evaluated(
        name,
        predictor.classes,
        rows,
        rejected,
        predictor.spec.task,
        not data_dir,
        scoring.threshold,
        _thresholds(predictor),
        scoring.positive,
    )


def _thresholds(predictor: Predictor) -> tuple[float, ...]:
    """A multi-label model's threshold a label (0.5 each where model.json names none); () otherwise."""
    spec = predictor.spec
    return (spec.scoring.thresholds or (0.5,) * len(spec.classes)) if spec.task.several else ()


def from_training(folder: RunDir, predictor: Predictor) -> Evaluated | None:
    """The test split as training scored it (predictions.csv), else the validation split; None when the
    run held out neither. A run made before predictions.csv existed is scored again on its test split."""
    rows = folder.predictions(predictor.classes)
    if rows is None:
        splits = folder.splits()
        return score(predictor, folder) if splits and splits.test else None
    for split in ("test", "val"):
        chosen = [row for row in rows if row.split == split]
        if chosen:  # what a folder given as this split lost (a split of DATA has its rejects with DATA's)
            return Evaluated(
                split_name(folder, split),
                predictor.classes,
                chosen,
                [row for row in folder.rejected() if row.where == split],
                predictor.spec.task,
                own=True,
                threshold=predictor.spec.scoring.threshold,
                thresholds=_thresholds(predictor),
                positive=predictor.spec.scoring.positive,
            )
    return None


def split_name(folder: RunDir, split: str) -> str:
    """What a run's own test or validation images are called: the folder given as --test-data (--val-data),
    else the split of DATA."""
    config = folder.config()
    given = config.test_data if split == "test" else config.val_data
    if given:
        return f"the {split} folder {display_path(given)}"
    return TEST_SPLIT if split == "test" else VAL_SPLIT


def validation_gap(folder: RunDir, metrics: Figures, tested_on: str) -> str | None:
    """analysis.disagreement of `metrics` (on `tested_on`) with the run's own validation split."""
    trained = folder.metrics()
    return analysis.disagreement(trained.val if trained else None, metrics, tested_on)
