"""Classification metrics from labels and predicted probabilities, numpy only."""
from __future__ import annotations

import numpy as np


def classification_metrics(labels, probabilities, classes: list[str]) -> dict:
    """accuracy, per-class and macro precision/recall/F1, log loss, confusion matrix, ROC AUC (2 classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        precision = tp / max(confusion[:, i].sum(), 1)
        recall = tp / max(confusion[i, :].sum(), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(confusion[i, :].sum())}
    result = {
        "n": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
        "precision_macro": float(np.mean([c["precision"] for c in per_class.values()])),
        "recall_macro": float(np.mean([c["recall"] for c in per_class.values()])),
        "f1_macro": float(np.mean([c["f1"] for c in per_class.values()])),
        "log_loss": log_loss(labels, probabilities),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
    }
    correct = int((predicted == labels).sum())
    result["accuracy_95"] = list(wilson_interval(correct, len(labels)))
    if n == 2:
        result["roc_auc"] = roc_auc(labels, probabilities[:, 1])
        result["positive_class"] = classes[1]           # what "f1" (and P in ROC AUC) is of
        result["f1"] = per_class[classes[1]]["f1"]
    return {key: _none_for_nan(value) for key, value in result.items()}


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion (Wilson score): honest for small n and for 0 or n correct."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4))


def _none_for_nan(value):
    """Undefined metrics (ROC AUC with one class present) are null in JSON, not NaN, which JSON lacks."""
    return None if isinstance(value, float) and np.isnan(value) else value


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    if not len(labels):
        return float("nan")
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, eps, 1.0)).mean())


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula, ties counted half."""
    positives, negatives = labels == 1, labels == 0
    if not positives.any() or not negatives.any():
        return float("nan")
    sorted_scores = np.sort(scores, kind="mergesort")
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_rank = np.repeat(first + (counts + 1) / 2, counts)          # 1-based, ties share their mean
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[scores.argsort(kind="mergesort")] = average_rank
    n_pos, n_neg = positives.sum(), negatives.sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
