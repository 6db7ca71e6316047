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
    if n == 2:
        result["roc_auc"] = roc_auc(labels, probabilities[:, 1])
        result["f1"] = per_class[classes[1]]["f1"]
    return result


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
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    for end in range(1, len(scores) + 1):
        if end == len(scores) or sorted_scores[end] != sorted_scores[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    n_pos, n_neg = positives.sum(), negatives.sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_table(result: dict) -> str:
    """The confusion matrix as aligned text: rows are true classes, columns predicted."""
    classes = result["classes"]
    width = max(8, *(len(c) for c in classes)) + 1
    lines = ["true \\ predicted".ljust(width) + "".join(c[:width - 1].rjust(width) for c in classes)]
    for name, row in zip(classes, result["confusion_matrix"]):
        lines.append(name[:width - 1].ljust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def summary_lines(result: dict) -> list[str]:
    lines = [f"images     {result['n']}", f"accuracy   {result['accuracy']:.4f}",
             f"precision  {result['precision_macro']:.4f} (macro)", f"recall     {result['recall_macro']:.4f} (macro)",
             f"F1         {result['f1_macro']:.4f} (macro)"]
    if "roc_auc" in result:
        lines.append(f"ROC AUC    {result['roc_auc']:.4f}")
    lines.append(f"log loss   {result['log_loss']:.4f}")
    return lines
