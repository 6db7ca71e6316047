"""What the report computes from each image's probabilities: intervals by bootstrap, ROC and
precision-recall curves, calibration (reliability and expected calibration error), the most
confused pairs. numpy only."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from vggtune.model.policy import decide
from vggtune.results.resampling import resampled_figures
from vggtune.training.metrics import SMALLEST, Interval, Metrics, classification_metrics, wilson_interval

if TYPE_CHECKING:  # annotations only
    from vggtune.training.figures import Figures
    from vggtune.training.multilabel import MultiLabelMetrics

BOOTSTRAP_DRAWS = 1000


@dataclass(frozen=True)
class Intervals:
    """The 95 % intervals of one set's figures, named as `Metrics` names them: accuracy's always, the
    others where the set has images and the figure is defined (F1 of the positive class and ROC AUC for
    two classes only). `to_dict()` is the JSON form, {figure: [low, high]}."""

    accuracy: Interval
    balanced_accuracy: Interval | None = None
    f1_macro: Interval | None = None
    log_loss: Interval | None = None
    f1: Interval | None = None
    roc_auc: Interval | None = None

    def of(self, figure: str) -> Interval | None:
        """The interval of `figure` (a Metrics field name), None where it has none."""
        return getattr(self, figure, None)

    def to_dict(self) -> dict[str, list[float]]:
        return {field.name: list(getattr(self, field.name)) for field in fields(self) if getattr(self, field.name)}


def intervals(
    labels,
    probabilities,
    classes: list[str],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    threshold: float = 0.5,
    positive: int = 1,
) -> Intervals:
    """95 % intervals: Wilson for accuracy; for F1, ROC AUC and log loss a percentile bootstrap that
    resamples the images within each true class, so every resample has every class as often as the
    test set has it (a plain resample of a 37-class test set misses some classes and scores them 0,
    putting macro-F1's whole interval below its own estimate). A percentile interval can still lie to
    one side of the estimate when the resamples are skewed: it is then widened to reach the estimate.
    Where every resample gives the same value the interval is that value twice (`describe_interval`
    says so)."""
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    probabilities = np.asarray(probabilities, np.float64).reshape(n, len(classes))
    accuracy = wilson_interval(int((decide(probabilities, threshold) == labels).sum()), n)
    if n == 0:
        return Intervals(accuracy)
    estimate = classification_metrics(labels, probabilities, classes, threshold, positive)
    samples = resampled_figures(labels, probabilities, draws, np.random.default_rng(seed), threshold, positive)
    bootstrapped = {}
    for key, values in samples.items():
        centre = getattr(estimate, key)
        if len(values) and centre is not None:
            low, high = np.percentile(values, [2.5, 97.5])
            bootstrapped[key] = Interval(round(float(min(low, centre)), 4), round(float(max(high, centre)), 4))
    return Intervals(accuracy, **bootstrapped)


def predicted(probabilities, threshold: float = 0.5) -> np.ndarray:
    """Each image's decided class, as the model decides it (model/policy.py's rule at its threshold)."""
    return decide(probabilities, threshold)


def describe_interval(bound: Interval | None) -> str:
    """A 95 % interval as text: "low to high", or what it means when every resample gave one value."""
    if not bound:
        return ""
    bound = Interval(*bound)
    if bound.constant:
        return f"none: every resample gives {bound.low:.4f} (too few test images to vary)"
    return f"{bound.low:.4f} to {bound.high:.4f}"


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct score, from (0, 0) to (1, 1): scikit-learn's."""
    from sklearn.metrics import roc_curve as sklearn_roc_curve

    fpr, tpr, _ = sklearn_roc_curve(np.asarray(labels) == 1, np.asarray(scores, np.float64), drop_intermediate=False)
    return fpr, tpr


def pr_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, float]:
    """(recall, precision, average precision) of the positive class (label 1), highest threshold first:
    scikit-learn's curve, without the (0, 1) point it appends, and its average precision."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    positive, scores = np.asarray(labels) == 1, np.asarray(scores, np.float64)
    precision, recall, _ = precision_recall_curve(positive, scores, drop_intermediate=False)
    return recall[-2::-1], precision[-2::-1], float(average_precision_score(positive, scores))


def reliability(labels, probabilities, bins: int = 10) -> dict:
    """Top-label calibration: per confidence bin, the mean confidence, the accuracy and the count;
    `ece` is the count-weighted mean gap between them (expected calibration error)."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, np.float64)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = abs(confidence[members].mean() - correct[members].mean())
            ece += gap * members.sum() / len(labels)
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return {"bins": rows, "ece": float(ece)}


def most_confused(confusion, classes: list[str], limit: int = 10) -> list[tuple[str, str, int]]:
    """(true class, predicted class, count) of the largest off-diagonal cells, largest first."""
    confusion = np.asarray(confusion)
    pairs = [
        (classes[i], classes[j], int(confusion[i, j]))
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and confusion[i, j] > 0
    ]
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))[:limit]


def image_losses(labels, probabilities) -> np.ndarray:
    """Each image's cross-entropy: -log of the probability given to its true class."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, np.float64)
    return -np.log(np.maximum(probabilities[np.arange(len(labels)), labels], SMALLEST))


class Figure(NamedTuple):
    """One headline figure: its Metrics field, the name a reader sees, its value and 95 % interval."""

    key: str
    name: str
    value: float | None
    interval: Interval | None


def headline(labels, probabilities, classes: list[str], threshold: float = 0.5, positive: int = 1) -> list[Figure]:
    """The figures a reader asks for first, each with its 95 % interval: accuracy, balanced accuracy, F1 (of
    the positive class for two classes, macro otherwise), ROC AUC (two classes), log loss."""
    result = classification_metrics(labels, probabilities, classes, threshold, positive)
    bounds = intervals(labels, probabilities, classes, threshold=threshold, positive=positive)
    binary = result.two_classes
    rows = [
        Figure("accuracy", "accuracy", result.accuracy, bounds.accuracy),
        Figure("balanced_accuracy", "balanced accuracy", result.balanced_accuracy, bounds.balanced_accuracy),
        Figure(
            "f1",
            f"F1 ({result.positive_class} positive)" if binary else "F1 (macro)",
            result.f1 if binary else result.f1_macro,
            bounds.f1 if binary else bounds.f1_macro,
        ),
        Figure("roc_auc", "ROC AUC", result.roc_auc, bounds.roc_auc),
        Figure("log_loss", "log loss", result.log_loss, bounds.log_loss),
    ]
    return [row for row in rows if row.value is not None]


def multilabel_headline(result: MultiLabelMetrics) -> list[Figure]:
    """The figures a reader of a multi-label set asks for first, each with its 95 % interval (Wilson for
    subset accuracy, the bootstrap's for the others; none for the Hamming and log losses)."""
    bounds = result.intervals_95
    rows = [
        Figure("map", "mAP (mean average precision)", result.map, bounds.get("map")),
        Figure("f1_micro", "F1 (micro)", result.f1_micro, bounds.get("f1_micro")),
        Figure("f1_macro", "F1 (macro)", result.f1_macro, bounds.get("f1_macro")),
        Figure("subset_accuracy", "subset accuracy", result.subset_accuracy, result.accuracy_95),
        Figure("hamming_loss", "Hamming loss", result.hamming_loss, None),
        Figure("log_loss", "log loss (binary, per label)", result.log_loss, None),
    ]
    return [row for row in rows if row.value is not None]


PER_CLASS_ROWS = 12  # beyond this many classes, the ones with the lowest recall


def per_class_rows(result: Metrics, limit: int = PER_CLASS_ROWS) -> tuple[str, list[tuple]]:
    """(a title, rows of class, precision, recall, F1, images) of metrics: every class, or beyond `limit`
    classes the `limit` with the lowest recall."""
    rows = [(name, row.precision, row.recall, row.f1, row.support) for name, row in result.per_class.items()]
    if len(rows) <= limit:
        return "per class", rows
    worst = sorted(rows, key=lambda row: (row[2], row[0]))[:limit]
    return f"the {limit} classes of {len(rows)} with the lowest recall", worst


def two_class_rates(result: Metrics) -> str | None:
    """Sensitivity and specificity named by class, for two classes."""
    if result.sensitivity is None or result.specificity is None:
        return None
    negative, positive = result.negative_class, result.positive_class
    return (
        f"sensitivity {result.sensitivity:.3f} (recall of {positive}), specificity "
        f"{result.specificity:.3f} (recall of {negative})"
    )


def disagreement(validation: Figures | None, test: Figures | None, tested_on: str) -> str | None:
    """One sentence where the test accuracy (multi-label: subset accuracy) falls below the validation
    accuracy's 95 % interval: the most common cause is test images from another source than the training
    images (another hospital, camera, season), which no figure on the training folder can show."""
    if not validation or not test or not validation.n or not test.n:
        return None
    low, high = validation.accuracy_95
    if test.accuracy is None or validation.accuracy is None or test.accuracy >= low:
        return None
    accuracy = test.accuracy_name
    return (
        f"{accuracy} on {tested_on} ({test.accuracy:.3f}, {test.n} images) is below the "
        f"validation split's 95 % interval ({low:.3f} to {high:.3f}; {accuracy} {validation.accuracy:.3f} on "
        f"{validation.n} images): these images likely differ from the training images (another source, "
        "another kind of image); look at the top losses in the report"
    )


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test of two classifiers scored on the same images: only the images one of them gets
    right and the other wrong count; p is two-sided, from the binomial distribution with p = 1/2 (SciPy's
    binomtest)."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = min(1.0, float(binomtest(min(only_a, only_b), n, 0.5).pvalue)) if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p": p}
