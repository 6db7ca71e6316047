"""Classification metrics from labels and predicted probabilities: scikit-learn's, in the shape
metrics.json, the terminal, the report and the model card read.

Beside every total stands a per-class figure: precision, recall, F1 and support per class, balanced
accuracy (the mean of the classes' recalls, what accuracy would be if the classes were equally
common) and macro F1; for two classes the sensitivity (recall of the second, "positive" class) and
specificity (recall of the first), each named by its class. The log loss is not clipped: the
probabilities come from the logits in log space (model/policy.py), so it is exact for any probability
float64 holds, and a confidently wrong image counts in full.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from vggtune.model.policy import decide

SMALLEST = np.finfo(np.float64).tiny  # a probability below it (a logit gap over 708) is counted as it


class Interval(NamedTuple):
    """A 95 % interval of one figure; a pair, so `low, high = interval` and JSON's [low, high] hold."""

    low: float
    high: float

    @property
    def constant(self) -> bool:
        """Every resample gave one value (too few images for the figure to vary)."""
        return self.low == self.high


@dataclass(frozen=True)
class ClassScores:
    """One class's figures: precision, recall, F1 and its images in the set (support)."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Metrics:
    """The figures of one set of images, as metrics.json, evaluation.json and every page hold them. An
    undefined figure (ROC AUC with one class present, anything of an empty set) is None. The last six are
    for two classes only: `positive_class` is the user's positive class (the second unless one was named),
    what `f1` is of and `threshold` is on; sensitivity and specificity are the recalls of the positive and the
    other class."""

    n: int
    accuracy: float | None
    balanced_accuracy: float | None  # the mean recall of the classes this set holds
    precision_macro: float
    recall_macro: float
    f1_macro: float
    log_loss: float | None
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted, in the classes' order
    classes: list[str]
    accuracy_95: Interval  # Wilson's interval
    majority_share: float | None  # what always answering the largest class would score
    roc_auc: float | None = None
    positive_class: str | None = None
    threshold: float | None = None
    f1: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None

    task = "single-label"
    accuracy_name = "accuracy"
    # the figures a summary keeps (cv.json's pooled and per-fold rows)
    summary_keys = ("n", "accuracy", "balanced_accuracy", "log_loss", "f1", "f1_macro", "roc_auc")

    @property
    def two_classes(self) -> bool:
        return self.positive_class is not None

    @property
    def negative_class(self) -> str | None:
        """Two classes: the class that is not the positive one."""
        return next((name for name in self.classes if name != self.positive_class), None) if self.two_classes else None

    @property
    def headline_f1(self) -> float | None:
        """The F1 one line shows: the positive class's (two classes), else the macro average."""
        return self.f1 if self.two_classes else self.f1_macro

    def own_intervals(self) -> dict:
        """None: a single-label set's intervals are drawn apart (analysis.intervals), from its images."""
        return {}

    def to_dict(self) -> dict:
        """The JSON form: the two-class figures only where there are two classes."""
        values = dataclasses.asdict(self)
        values["accuracy_95"] = list(self.accuracy_95)
        if not self.two_classes:
            values = {key: value for key, value in values.items() if key not in TWO_CLASS_FIELDS}
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Metrics:
        """The record a to_dict() (or metrics.json) holds; keys it does not know (evaluate's extras) are left."""
        fields = known_fields(cls, values)
        fields["per_class"] = {name: ClassScores(**row) for name, row in values["per_class"].items()}
        fields["accuracy_95"] = Interval(*values["accuracy_95"])
        return cls(**fields)


def known_fields(record: type, values: dict) -> dict:
    """The items of `values` that are fields of the dataclass `record` (a JSON file's other keys are left)."""
    names = {field.name for field in dataclasses.fields(record)}
    return {key: value for key, value in values.items() if key in names}


TWO_CLASS_FIELDS = ("roc_auc", "positive_class", "threshold", "f1", "sensitivity", "specificity")


def classification_metrics(
    labels, probabilities, classes: list[str], threshold: float = 0.5, positive: int = 1
) -> Metrics:
    """accuracy and balanced accuracy, per-class and macro precision/recall/F1, log loss, confusion matrix;
    for two classes ROC AUC, sensitivity and specificity of the `positive` class (the second unless the user
    named the first). Labels are decided at the two-class `threshold` on the second class's probability
    (model/policy.py); the log loss and ROC AUC do not depend on it."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(labels), len(classes))
    predicted = decide(probabilities, threshold)
    everyone = list(range(len(classes)))
    confusion = confusion_matrix(labels, predicted, labels=everyone)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=everyone, zero_division=0
    )
    per_class = {
        name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(classes)
    }
    present = support > 0
    correct = int((predicted == labels).sum())
    n = len(labels)
    two = {}
    if len(classes) == 2:
        negative = 1 - positive
        two = {
            "roc_auc": _none_for_nan(roc_auc(labels, probabilities[:, 1])),  # the same of either class
            "positive_class": classes[positive],
            "threshold": float(threshold if positive else 1 - threshold),  # on the positive class's probability
            "f1": per_class[classes[positive]].f1,
            "sensitivity": per_class[classes[positive]].recall if support[positive] else None,
            "specificity": per_class[classes[negative]].recall if support[negative] else None,
        }
    return Metrics(
        n=int(n),
        accuracy=correct / n if n else None,
        # the classes this set holds: a class absent from it has no recall to average
        balanced_accuracy=float(recall[present].mean()) if present.any() else None,
        precision_macro=float(precision.mean()),
        recall_macro=float(recall.mean()),
        f1_macro=float(f1.mean()),
        log_loss=_none_for_nan(log_loss(labels, probabilities)),
        per_class=per_class,
        confusion_matrix=confusion.tolist(),
        classes=list(classes),
        accuracy_95=wilson_interval(correct, n),
        majority_share=float(support.max() / n) if n else None,
        **two,
    )


def wilson_interval(correct: int, n: int, z: float = 1.96) -> Interval:
    """95 % interval of a proportion (Wilson score): honest for small n and for 0 or n correct."""
    if n == 0:
        return Interval(0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4))


def _none_for_nan(value):
    """Undefined metrics (ROC AUC with one class present) are null in JSON, not NaN, which JSON lacks."""
    return None if isinstance(value, float) and np.isnan(value) else value


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean negative log probability of each image's true class: unclipped (see the module's note)."""
    if not len(labels):
        return float("nan")
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(picked, SMALLEST)).mean())


def balanced_log_loss(labels: ArrayLike, probabilities: ArrayLike) -> float:
    """The mean over the classes present of each class's log loss: the log loss as if the classes were
    equally common, which class-weighted training minimises and its epochs are chosen by."""
    labels = np.asarray(labels)
    losses = [log_loss(labels[labels == c], np.asarray(probabilities)[labels == c]) for c in np.unique(labels)]
    return float(np.mean(losses)) if losses else float("nan")


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The threshold on the second class's probability with the best balanced accuracy on these images
    (Youden's J, sensitivity + specificity - 1): halfway between the two scores it falls between, the
    one nearest 0.5 among equals. None where one class is absent (nothing to balance)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if not (labels == 1).any() or not (labels == 0).any():
        return None
    candidates, missed, kept = _at_each_threshold(labels == 1, scores)
    sensitivity = 1 - missed / (labels == 1).sum()
    specificity = kept / (labels == 0).sum()
    return _nearest_half(candidates, sensitivity + specificity - 1)


def threshold_for_cost(positive, scores, cost: float) -> float:
    """The threshold on the positive class's probability with the least cost on these images, a missed positive
    costing `cost` false alarms (Elkan 2001's, counted on the images instead of assumed from calibrated
    probabilities): halfway between the two scores it falls between, the one nearest 0.5 among equals."""
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    candidates, missed, kept = _at_each_threshold(positive, scores)
    false_alarms = (~positive).sum() - kept
    return _nearest_half(candidates, -(cost * missed + false_alarms))


def _at_each_threshold(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each threshold worth trying (below, between and above the scores), and at each the positive images
    missed (their score at or below it) and the negative images kept negative."""
    levels = np.unique(scores)
    candidates = np.concatenate([[levels[0] / 2], (levels[:-1] + levels[1:]) / 2, [(levels[-1] + 1) / 2]])
    missed = np.searchsorted(np.sort(scores[positive]), candidates, side="right")
    kept = np.searchsorted(np.sort(scores[~positive]), candidates, side="right")
    return candidates, missed, kept


def _nearest_half(candidates: np.ndarray, merit: np.ndarray) -> float:
    """The candidate of the highest merit, the one nearest 0.5 among equals."""
    best = np.flatnonzero(merit >= merit.max() - 1e-12)
    chosen = candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]
    return float(np.clip(chosen, 1e-6, 1 - 1e-6))


def threshold_for_recall(scores, wanted: float) -> float:
    """The highest threshold on the positive class's probability that leaves at least `wanted` of these positive
    images' `scores` above it: halfway between the score of the last image it must keep and the next one's."""
    ranked = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    kept = min(len(ranked), max(1, int(np.ceil(wanted * len(ranked) - 1e-9))))
    below = ranked[kept] if kept < len(ranked) else 0.0
    return float(np.clip((ranked[kept - 1] + below) / 2, 1e-6, 1 - 1e-6))


def threshold_interval(scores, wanted: float, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The 95 % interval of `threshold_for_recall` from a bootstrap of the positive images."""
    scores = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    drawn = [threshold_for_recall(scores[rng.integers(len(scores), size=len(scores))], wanted) for _ in range(draws)]
    low, high = np.percentile(drawn, [2.5, 97.5])
    return float(low), float(high)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half); NaN where one class is absent."""
    labels = np.asarray(labels)
    if not (labels == 1).any() or not (labels == 0).any():
        return float("nan")
    return float(roc_auc_score(labels, scores))
