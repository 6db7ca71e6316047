"""Multi-label metrics, scikit-learn's, in the shape metrics.json, the terminal and evaluate read; and the
per-label thresholds chosen on validation images.

An image carries any set of the labels. Per label: precision, recall, F1 at its threshold, average
precision (the area under its precision-recall curve, threshold-free) and its images (support). Over
the labels: micro F1 (every image-label decision pooled), macro F1 and mAP (each label counts alike),
subset accuracy (the image's whole label set right) and Hamming loss (the share of wrong image-label
decisions). The log loss is each label's binary cross-entropy, averaged. 95 % intervals: Wilson for subset
accuracy, a percentile bootstrap over the images for micro F1, macro F1 and mAP.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

from vggtune.model.policy import decide_labels
from vggtune.training.metrics import SMALLEST, Interval, known_fields, wilson_interval

TASK = "multi-label"  # metrics.json's "task" of these figures
BOOTSTRAP_DRAWS = 1000


@dataclass(frozen=True)
class LabelScores:
    """One label's figures: at its threshold, and average precision (None where no image carries it)."""

    precision: float
    recall: float
    f1: float
    average_precision: float | None
    support: int  # images carrying the label
    threshold: float


@dataclass(frozen=True)
class MultiLabelMetrics:
    """The figures of one set of multi-label images. `accuracy` is subset accuracy (every label of the image
    right), so tables of runs read it beside single-label runs' accuracy."""

    n: int
    classes: list[str]  # the labels
    per_label: dict[str, LabelScores]
    f1_micro: float
    f1_macro: float
    map: float | None  # mean average precision over the labels some image carries
    subset_accuracy: float | None
    hamming_loss: float | None
    log_loss: float | None  # mean binary cross-entropy over images and labels
    accuracy_95: Interval  # Wilson's, of subset accuracy
    intervals_95: dict[str, Interval] = dataclasses.field(default_factory=dict)  # f1_micro, f1_macro, map
    task: str = TASK

    two_classes = False
    balanced_accuracy = None
    accuracy_name = "subset accuracy"  # what `accuracy` is: every label of an image right
    # the figures a summary keeps (cv.json's pooled and per-fold rows)
    summary_keys = ("n", "subset_accuracy", "f1_micro", "f1_macro", "map", "hamming_loss", "log_loss")

    @property
    def accuracy(self) -> float | None:
        return self.subset_accuracy

    @property
    def headline_f1(self) -> float | None:
        """The F1 one line shows: micro, over every (image, label) decision."""
        return self.f1_micro

    def own_intervals(self) -> dict[str, Interval]:
        """The bootstrap intervals drawn with these figures (f1_micro, f1_macro, map)."""
        return dict(self.intervals_95)

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(self.per_label[name].threshold for name in self.classes)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["accuracy_95"] = list(self.accuracy_95)
        values["intervals_95"] = {key: list(bound) for key, bound in self.intervals_95.items()}
        return values

    @classmethod
    def from_dict(cls, values: dict) -> MultiLabelMetrics:
        known = known_fields(cls, values)
        known["per_label"] = {name: LabelScores(**row) for name, row in values["per_label"].items()}
        known["accuracy_95"] = Interval(*values["accuracy_95"])
        known["intervals_95"] = {key: Interval(*bound) for key, bound in values.get("intervals_95", {}).items()}
        return cls(**known)


def is_multilabel(values: dict) -> bool:
    """A metrics dict (metrics.json's val or test) of multi-label figures."""
    return values.get("task") == TASK


def multilabel_metrics(
    targets, probabilities, classes: list[str], thresholds: tuple[float, ...] = (), intervals: bool = False
) -> MultiLabelMetrics:
    """The figures of images with 0/1 `targets` (image, label) and each label's probability, each label given
    where its probability exceeds its threshold (0.5 where none are given). `intervals`: with bootstrap
    intervals (a thousand resamples: for final figures, not every epoch's)."""
    targets = np.asarray(targets, dtype=np.int64).reshape(-1, len(classes))
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(classes))
    thresholds = tuple(thresholds) or (0.5,) * len(classes)
    decided = decide_labels(probabilities, thresholds).astype(np.int64)
    n = len(targets)
    precision, recall, f1, support = precision_recall_fscore_support(targets, decided, average=None, zero_division=0)
    precisions = _average_precisions(targets, probabilities)
    exact = int((decided == targets).all(axis=1).sum())
    return MultiLabelMetrics(
        n=n,
        classes=list(classes),
        per_label={
            name: LabelScores(
                float(precision[i]), float(recall[i]), float(f1[i]), precisions[i], int(support[i]), thresholds[i]
            )
            for i, name in enumerate(classes)
        },
        f1_micro=_f1(targets, decided, "micro"),
        f1_macro=_f1(targets, decided, "macro"),
        map=_mean(precisions),
        subset_accuracy=exact / n if n else None,
        hamming_loss=float((decided != targets).mean()) if n else None,
        log_loss=binary_log_loss(targets, probabilities) if n else None,
        accuracy_95=wilson_interval(exact, n),
        intervals_95=_bootstrap(targets, probabilities, thresholds) if intervals and n else {},
    )


def binary_log_loss(targets, probabilities) -> float:
    """The mean over images and labels of each label's binary cross-entropy."""
    return float(label_losses(targets, probabilities).mean())


def label_losses(targets, probabilities) -> np.ndarray:
    """Each image's binary cross-entropy for each label (image, label): the report's top losses a label."""
    targets = np.asarray(targets, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    picked = np.where(targets == 1, probabilities, 1 - probabilities)
    return -np.log(np.maximum(picked, SMALLEST))


# A label's own best threshold counts as this many positive images: one with few validation images that
# carry it is drawn toward the threshold every label shares. On 37 breeds with one validation image each, the
# label's own best F1 fell on the one probability it had (test micro-F1 0.64 with the gap head, 0.49 with
# places), shrunk it gave 0.70 and 0.63; labels with 28 images a label barely moved (BENCHMARKS.md section 31).
SHRINK_POSITIVES = 5


def best_thresholds(targets, probabilities) -> tuple[float, ...]:
    """Each label's threshold: the one with its best F1 on these images, weighed by the images that carry it
    (n) against SHRINK_POSITIVES with the threshold of the best F1 of every label's decisions pooled (micro
    F1): n / (n + SHRINK_POSITIVES) of its own. 0.5 for every label where no image carries any."""
    targets = np.asarray(targets, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    shared = _best_threshold(targets.ravel(), probabilities.ravel())
    thresholds = []
    for label in range(targets.shape[1]):
        positives = int(targets[:, label].sum())
        own = _best_threshold(targets[:, label], probabilities[:, label]) if positives else shared
        thresholds.append(round((positives * own + SHRINK_POSITIVES * shared) / (positives + SHRINK_POSITIVES), 6))
    return tuple(thresholds)


def _best_threshold(positive: np.ndarray, scores: np.ndarray) -> float:
    """The threshold with the best F1 on these scores: halfway between the two it falls between, the one
    nearest 0.5 among equals; 0.5 where nothing is positive."""
    if not positive.any():
        return 0.5
    levels = np.unique(scores)
    candidates = np.concatenate([[levels[0] / 2], (levels[:-1] + levels[1:]) / 2, [(levels[-1] + 1) / 2]])
    candidates = candidates[(candidates > 0) & (candidates < 1)]
    positives, negatives = np.sort(scores[positive == 1]), np.sort(scores[positive == 0])
    true_positive = len(positives) - np.searchsorted(positives, candidates, side="right")
    false_positive = len(negatives) - np.searchsorted(negatives, candidates, side="right")
    # F1 = 2 TP / (2 TP + FP + FN), FN being the positives at or below the threshold
    f1 = 2 * true_positive / np.maximum(true_positive + false_positive + len(positives), 1)
    best = np.flatnonzero(f1 == f1.max())
    return round(float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]), 6)


def _f1(targets: np.ndarray, decided: np.ndarray, average: str) -> float:
    return float(f1_score(targets, decided, average=average, zero_division=0))


def _average_precisions(targets: np.ndarray, probabilities: np.ndarray) -> list[float | None]:
    return [
        float(average_precision_score(targets[:, i], probabilities[:, i])) if targets[:, i].any() else None
        for i in range(targets.shape[1])
    ]


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _bootstrap(targets: np.ndarray, probabilities: np.ndarray, thresholds: tuple[float, ...]) -> dict[str, Interval]:
    """Percentile 95 % intervals of micro F1, macro F1 and mAP over resamples of the images (seeded). Each
    resample is a weight per image (how often it was drawn), so all of them are scored at once."""
    rng = np.random.default_rng(0)
    n = len(targets)
    picks = rng.integers(n, size=(BOOTSTRAP_DRAWS, n))
    weights = np.bincount((np.arange(BOOTSTRAP_DRAWS)[:, None] * n + picks).ravel(), minlength=BOOTSTRAP_DRAWS * n)
    weights = weights.reshape(BOOTSTRAP_DRAWS, n).astype(np.float64)
    decided = decide_labels(probabilities, thresholds).astype(np.float64)
    true_positive = weights @ (targets * decided)  # (draw, label)
    false_positive = weights @ ((1 - targets) * decided)
    false_negative = weights @ (targets * (1 - decided))
    micro = (
        2
        * true_positive.sum(1)
        / np.maximum(2 * true_positive.sum(1) + false_positive.sum(1) + false_negative.sum(1), 1e-12)
    )
    per_label = 2 * true_positive / np.maximum(2 * true_positive + false_positive + false_negative, 1e-12)
    precisions = np.stack(
        [weighted_average_precision(targets[:, i], probabilities[:, i], weights) for i in range(targets.shape[1])], 1
    )
    with np.errstate(all="ignore"):  # a resample with no positive of any label: NaN, left out below
        mean_precision = np.nanmean(precisions, axis=1)
    draws = {"f1_micro": micro, "f1_macro": per_label.mean(1), "map": mean_precision[~np.isnan(mean_precision)]}
    return {
        key: Interval(*(round(float(bound), 4) for bound in np.percentile(values, [2.5, 97.5])))
        for key, values in draws.items()
        if len(values)
    }


def weighted_average_precision(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """scikit-learn's average precision, sum over distinct thresholds of (recall step) x precision, of one label
    under each row of `weights` (a weight per image): NaN where the weighted images hold no positive."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    last_of_tie = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    drawn = weights[:, order]
    hits = np.cumsum(drawn * positive[order], axis=1)[:, last_of_tie]
    seen = np.cumsum(drawn, axis=1)[:, last_of_tie]
    total = hits[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = hits / np.maximum(seen, 1e-12)
        recall = hits / total
        steps = np.diff(recall, axis=1, prepend=0.0)
        result = (steps * precision).sum(1)
    return np.where(total[:, 0] > 0, result, np.nan)
