"""The report's figures, drawn with matplotlib's object API on its Agg canvas (no display, no
pyplot state) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from vggtune.results import analysis

if TYPE_CHECKING:  # annotations only
    from vggtune.training.figures import EpochRow


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def training_curves(rows: list[EpochRow], stage: str, chosen_epoch: int | None) -> bytes:
    """Loss and accuracy per epoch of one stage, train and validation, the kept epoch marked."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(9, 3.2)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = [row.epoch for row in rows]
    figures = [row.figures() for row in rows]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, [values[f"train_{metric}"] for values in figures], "o-", label=f"train {metric}")
        if all(f"val_{metric}" in values for values in figures):
            axes.plot(epochs, [values[f"val_{metric}"] for values in figures], "s-", label=f"validation {metric}")
        if chosen_epoch:
            axes.axvline(chosen_epoch, color="grey", linestyle="--", label=f"kept: epoch {chosen_epoch}")
        axes.set_xlabel("epoch")
        if max(epochs) - min(epochs) < 20:  # few epochs: each one a tick (MaxNLocator goes fractional below 2)
            axes.set_xticks(range(min(epochs), max(epochs) + 1))
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # one epoch: not a 0.95-1.05 axis
        axes.set_title(f"{stage}: {metric}")
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    return _png(figure)


def confusion(matrix, classes: list[str]) -> bytes:
    """Counts and row-normalised (recall per true class), side by side; beyond 12 classes the normalised
    matrix alone, so that a page's width shows its class names at a readable size."""
    matrix = np.asarray(matrix)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    label_cells = len(classes) <= 12
    panels = (
        ((matrix, "counts"), (normalised, "normalised by true class"))
        if label_cells
        else ((normalised, "normalised by true class (counts: the most confused pairs below)"),)
    )
    side = max(3.5, 0.3 * len(classes) + 1.5) if label_cells else 0.22 * len(classes) + 2.5
    figure = _figure(len(panels) * side + 1, side)
    axes_list = figure.subplots(1, len(panels)) if len(panels) > 1 else [figure.subplots(1, 1)]
    for axes, (values, title) in zip(axes_list, panels):
        image = axes.imshow(values, cmap="Blues")
        figure.colorbar(image, ax=axes, shrink=0.8)
        ticks = range(len(classes))
        axes.set_xticks(ticks, classes, rotation=90, fontsize="small" if label_cells else 8)
        axes.set_yticks(ticks, classes, fontsize="small" if label_cells else 8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(title)
        if label_cells:
            for (i, j), value in np.ndenumerate(values):
                text = f"{value:d}" if values is matrix else f"{value:.2f}"
                axes.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    color="white" if value > values.max() / 2 else "black",
                    fontsize="small",
                )
    return _png(figure)


def roc_and_pr(labels, scores, positive: str, auc: float | None) -> bytes:
    figure = _figure(9, 3.6)
    roc_axes, pr_axes = figure.subplots(1, 2)
    fpr, tpr = analysis.roc_curve(labels, scores)
    roc_axes.plot(fpr, tpr, drawstyle="steps-post")
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_axes.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC ({positive} positive), AUC {auc:.4f}" if auc is not None else f"ROC ({positive} positive)",
    )
    recall, precision, average = analysis.pr_curve(labels, scores)
    pr_axes.plot(recall, precision, drawstyle="steps-post")
    pr_axes.set(
        xlabel="recall", ylabel="precision", ylim=(0, 1.02), title=f"precision-recall, average precision {average:.4f}"
    )
    for axes in (roc_axes, pr_axes):
        axes.grid(alpha=0.3)
    return _png(figure)


def reliability(calibration: dict) -> bytes:
    """Accuracy against confidence per bin (bars) beside the diagonal of perfect calibration."""
    figure = _figure(4.5, 4)
    axes = figure.subplots()
    bins = calibration["bins"]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    axes.bar(
        centres,
        [b["accuracy"] for b in bins],
        width=[b["high"] - b["low"] for b in bins],
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    axes.plot(
        [b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="black", label="mean confidence"
    )
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for centre, b in zip(centres, bins):
        axes.annotate(str(b["count"]), (centre, b["accuracy"]), ha="center", va="bottom", fontsize="x-small")
    axes.set(
        xlabel="confidence (largest probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1.05),
        title=f"reliability, ECE {calibration['ece']:.4f}",
    )
    axes.legend(fontsize="small", loc="upper left")
    return _png(figure)
