"""The bootstrap's resampled figures, every draw at once: a stratified resample scored from counts, not
by running `classification_metrics` a thousand times (5 ms a draw whatever the test set's size: five
seconds or more an evaluated set). The draws are the ones the one-at-a-time loop made, in its order,
and each figure follows `training/metrics.py`'s definition, so the intervals are the same."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vggtune.model.policy import decide
from vggtune.training.metrics import SMALLEST

PICKS_PER_CHUNK = 2_000_000  # draws scored together: a few tens of MB whatever the test set's size


def stratified_picks(labels: np.ndarray, draws: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """(draws, n) row indices in chunks: each draw resamples the images of each true class within it,
    so every draw holds each class as often as the set does."""
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    per_chunk = max(1, PICKS_PER_CHUNK // max(1, len(labels)))
    for start in range(0, draws, per_chunk):
        chunk = np.empty((min(per_chunk, draws - start), len(labels)), np.int64)
        for row in chunk:
            row[:] = np.concatenate([rows[rng.integers(len(rows), size=len(rows))] for rows in members])
        yield chunk


def resampled_figures(
    labels: np.ndarray,
    probabilities: np.ndarray,
    draws: int,
    rng: np.random.Generator,
    threshold: float = 0.5,
    positive: int = 1,
) -> dict[str, np.ndarray]:
    """Each figure's value in every draw (balanced accuracy, macro F1, log loss; F1 of the positive class
    and ROC AUC for two classes): the figures the bootstrap takes percentiles of. A figure undefined on
    the set (ROC AUC with one class) is left out."""
    n_classes = probabilities.shape[1]
    predicted = decide(probabilities, threshold)
    losses = -np.log(np.maximum(probabilities[np.arange(len(labels)), labels], SMALLEST))
    chunks: dict[str, list[np.ndarray]] = {}
    for picks in stratified_picks(labels, draws, rng):
        truth = labels[picks]
        figures = _class_figures(truth, predicted[picks], n_classes, positive)
        figures["log_loss"] = losses[picks].mean(axis=1)
        if n_classes == 2 and 0 < labels.sum() < len(labels):
            figures["roc_auc"] = _roc_auc(truth, probabilities[:, 1], picks)
        for key, values in figures.items():
            chunks.setdefault(key, []).append(values)
    return {key: np.concatenate(values) for key, values in chunks.items()}


def _per_draw_counts(draw_labels: np.ndarray, n_classes: int, where: np.ndarray | None = None) -> np.ndarray:
    """(draws, classes): how often each class appears in each draw (where `where` holds)."""
    offsets = np.arange(len(draw_labels))[:, None] * n_classes + draw_labels
    kept = offsets[where] if where is not None else offsets.ravel()
    return np.bincount(kept, minlength=len(draw_labels) * n_classes).reshape(len(draw_labels), n_classes)


def _class_figures(
    truth: np.ndarray, predicted: np.ndarray, n_classes: int, positive: int = 1
) -> dict[str, np.ndarray]:
    """Balanced accuracy over the classes present, macro F1 over every class (0 where undefined, as
    scikit-learn's zero_division=0 gives), and the positive class's F1 for two classes."""
    true_positives = _per_draw_counts(truth, n_classes, truth == predicted).astype(np.float64)
    support = _per_draw_counts(truth, n_classes).astype(np.float64)
    predicted_count = _per_draw_counts(predicted, n_classes).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, true_positives / support, 0.0)
        f1 = np.where(support + predicted_count > 0, 2 * true_positives / (support + predicted_count), 0.0)
    present = support[0] > 0  # the same classes in every draw: the resample is stratified
    figures = {"balanced_accuracy": recall[:, present].mean(axis=1), "f1_macro": f1.mean(axis=1)}
    if n_classes == 2:
        figures["f1"] = f1[:, positive]
    return figures


def _roc_auc(truth: np.ndarray, scores: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """ROC AUC of each draw as the Mann-Whitney statistic: the share of (positive, negative) pairs the
    positive outscores, ties counted half; the area under the ROC curve, as scikit-learn computes it."""
    levels, level_of = np.unique(scores, return_inverse=True)
    drawn_levels = level_of[picks]
    positives = _per_draw_counts(drawn_levels, len(levels), truth == 1).astype(np.float64)
    negatives = _per_draw_counts(drawn_levels, len(levels), truth == 0).astype(np.float64)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    wins = (positives * (negatives_below + 0.5 * negatives)).sum(axis=1)
    return wins / (positives.sum(axis=1) * negatives.sum(axis=1))
