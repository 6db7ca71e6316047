"""What the command line prints: metrics, cross-validation tables and predictions as text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vggtune.cliapi import describe_interval, display_path, most_confused, per_class_rows, two_class_rule

if TYPE_CHECKING:  # annotations only
    from vggtune.api import Calibration, CrossValidation, Metrics, MultiLabelMetrics, RunRow, TrialResult

MATRIX_CLASSES = 10  # beyond this many classes a terminal shows the most confused pairs instead


def confusion_table(result: Metrics) -> str:
    """The confusion matrix as aligned text (rows are true classes, columns predicted); with more than
    MATRIX_CLASSES classes, the most confused pairs (report.html has the whole matrix)."""
    classes, corner = result.classes, "true \\ predicted"
    if len(classes) > MATRIX_CLASSES:
        pairs = most_confused(result.confusion_matrix, classes, limit=MATRIX_CLASSES)
        lines = [f"most confused ({len(classes)} classes; the whole matrix is in report.html):"]
        lines += [f"{count:>5}  {true} taken for {predicted}" for true, predicted, count in pairs] or ["    none"]
        return "\n".join(lines)
    first = max(len(corner), *(len(c) for c in classes)) + 2
    width = max(6, *(len(c) for c in classes), *(len(str(v)) for row in result.confusion_matrix for v in row)) + 2
    lines = [corner.ljust(first) + "".join(c.rjust(width) for c in classes)]
    for name, row in zip(classes, result.confusion_matrix):
        lines.append(name.ljust(first) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


SMALL_INTERVAL = 0.1  # a 95 % interval wider than this gets a warning


def metrics_lines(result: Metrics) -> list[str]:
    low, high = result.accuracy_95
    lines = [
        f"images             {result.n}",
        f"accuracy           {_number(result.accuracy)}  (95% interval {low:.3f}-{high:.3f})",
        f"balanced accuracy  {_number(result.balanced_accuracy)}  (the mean of the classes' recalls)",
        f"F1 (macro)         {result.f1_macro:.4f}",
    ]
    if result.two_classes:
        negative, positive = result.negative_class, result.positive_class
        said = two_class_rule(result.classes, result.classes.index(str(positive)), float(result.threshold or 0.5))
        lines.append(f"rule               {said}")
        lines.append(f"sensitivity        {_number(result.sensitivity)}  (recall of {positive})")
        lines.append(f"specificity        {_number(result.specificity)}  (recall of {negative})")
        lines.append(f"F1 ({positive})".ljust(19) + f"{_number(result.f1)}  (positive class: {positive})")
        lines.append(f"ROC AUC            {_number(result.roc_auc)}")
    lines.append(f"log loss           {_number(result.log_loss)}")
    lines += per_class_lines(result)
    if high - low > SMALL_INTERVAL:
        lines.insert(
            0,
            f"warning: only {result.n} images: the accuracy could be anywhere from {low:.2f} "
            f"to {high:.2f} (95% interval); more test images narrow it",
        )
    return lines


def multilabel_lines(result: MultiLabelMetrics) -> list[str]:
    """A multi-label set's figures: totals with their 95 % intervals, then each label's."""

    def bounded(key: str, value: float | None) -> str:
        bound = result.intervals_95.get(key)
        return _number(value) + (f"  (95% interval {bound.low:.3f}-{bound.high:.3f})" if bound else "")

    low, high = result.accuracy_95
    lines = [
        f"images             {result.n}",
        f"mAP                {bounded('map', result.map)}  (mean average precision over the labels)",
        f"F1 (micro)         {bounded('f1_micro', result.f1_micro)}",
        f"F1 (macro)         {bounded('f1_macro', result.f1_macro)}",
        f"subset accuracy    {_number(result.subset_accuracy)}  (95% interval {low:.3f}-{high:.3f}; every label right)",
        f"Hamming loss       {_number(result.hamming_loss)}  (the share of wrong image-label decisions)",
        f"log loss           {_number(result.log_loss)}  (binary, per label)",
        "per label:",
        "  " + "label".ljust(16) + f"{'precision':>10}{'recall':>8}{'F1':>8}{'AP':>8}{'images':>8}{'threshold':>11}",
    ]
    for name, row in result.per_label.items():
        average = "-" if row.average_precision is None else f"{row.average_precision:.3f}"
        lines.append(
            "  " + name.ljust(16) + f"{row.precision:>10.3f}{row.recall:>8.3f}{row.f1:>8.3f}{average:>8}"
            f"{row.support:>8}{row.threshold:>11.3f}"
        )
    return lines


def per_class_lines(result: Metrics) -> list[str]:
    """Precision, recall, F1 and images of each class (beyond 12 classes, the worst by recall)."""
    title, rows = per_class_rows(result)
    width = max(5, *(len(row[0]) for row in rows)) + 2
    lines = [f"{title}:", "  " + "class".ljust(width) + f"{'precision':>10}{'recall':>8}{'F1':>8}{'images':>8}"]
    for name, precision, recall, f1, support in rows:
        lines.append("  " + name.ljust(width) + f"{precision:>10.3f}{recall:>8.3f}{f1:>8.3f}{support:>8}")
    return lines


def cv_lines(result: CrossValidation) -> list[str]:
    """The table `vggtune cv` prints: one line per fold, then the pooled figures with intervals (multi-label:
    subset accuracy, log loss and micro F1 a fold; subset accuracy, mAP and micro F1 pooled)."""
    pooled = result.pooled
    accuracy = pooled.accuracy_name.replace("subset accuracy", "subset acc.")
    width = len(accuracy)
    lines = [f"{'fold':>6}  {'images':>6}  {accuracy:>{width}}  {'log loss':>8}  {'F1':>6}  {'seconds':>7}"]
    for row in result.per_fold:
        scores = row.metrics
        seconds = "" if row.seconds is None else f"{row.seconds:.1f}"
        lines.append(
            f"{row.fold:>6}  {scores.n:>6}  {_number(scores.accuracy):>{width}}  {_number(scores.log_loss):>8}  "
            f"{_number(scores.headline_f1):>6}  {seconds:>7}"
        )
    lines.append(f"pooled over {pooled.n} images (95 % intervals):")
    shown = TERMINAL[pooled.task].pooled(result)
    names = max(9, *(len(name) for name, _, _ in shown))
    for name, value, bound in shown:
        lines.append(f"  {name:<{names}} {_number(value)}  ({describe_interval(bound) or 'no interval'})")
    return lines


def _single_label_pooled(result: CrossValidation) -> list[tuple]:
    pooled, ranges = result.pooled, result.intervals_95
    f1_key = "f1" if pooled.two_classes else "f1_macro"
    return [
        ("accuracy", pooled.accuracy, ranges.accuracy),
        ("log loss", pooled.log_loss, ranges.log_loss),
        ("F1", getattr(pooled, f1_key), ranges.of(f1_key)),
    ]


def _multilabel_pooled(result: CrossValidation) -> list[tuple]:
    pooled: MultiLabelMetrics = result.pooled  # TERMINAL chose it by its task
    return [
        ("subset accuracy", pooled.subset_accuracy, pooled.accuracy_95),
        ("mAP", pooled.map, pooled.intervals_95.get("map")),
        ("F1 (micro)", pooled.f1_micro, pooled.intervals_95.get("f1_micro")),
    ]


@dataclass(frozen=True)
class TaskText:
    """How the terminal shows one task's figures: a set's lines, and the pooled rows of `vggtune cv`
    (name, value, 95 % interval)."""

    lines: Callable[[Any], list[str]]
    pooled: Callable[[CrossValidation], list[tuple]]


# By the figures' task (their records' `task`): a new task adds its entry here
TERMINAL = {
    "single-label": TaskText(lambda m: metrics_lines(m) + confusion_table(m).splitlines(), _single_label_pooled),
    "multi-label": TaskText(multilabel_lines, _multilabel_pooled),
}


def figures_lines(figures) -> list[str]:
    """A set's figures as the terminal shows them, whichever task they are of."""
    return TERMINAL[figures.task].lines(figures)


def calibration_lines(result: Calibration) -> list[str]:
    """`vggtune calibrate`: the sample, the figures before and after (out of sample) with 95 % intervals, the
    rules, how far the new one could move, and how to go back."""
    counts = ", ".join(f"{name} {count}" for name, count in result.per_class.items())
    lines = [f"calibrated {result.run} on {result.data} ({counts})", ""]
    width = max(len(row[0]) for row in result.rows())
    lines.append(f"  {'':<{width}}  {'before (the rule in force)':<28}  after (out of sample, folds of the sample)")
    for name, before, before_95, after, after_95 in result.rows():
        shown = [_with_interval(before, before_95), _with_interval(after, after_95)]
        lines.append(f"  {name:<{width}}  {shown[0]:<28}  {shown[1]}")
    return lines + [
        "",
        f"rule before: {result.rule_before}",
        f"rule now:    {result.rule_after}",
        f"how firm: {result.spread}",
        f'the rule before is kept as "{result.kept_as}": vggtune calibrate {result.run} --restore "{result.kept_as}"',
    ]


def _with_interval(value, bound) -> str:
    if isinstance(value, int):
        return str(value)
    return _number(value) + (f" ({bound[0]:.3f}-{bound[1]:.3f})" if bound else "")


def predictions_text(predictions, classes, fmt: str, kaggle: bool) -> str:
    """Predictions as JSON, as CSV (path, label, each class's probability) or as Kaggle's id,label."""
    if fmt == "json" and not kaggle:
        return (
            json.dumps(
                [
                    {
                        "path": display_path(p.path),
                        "label": p.label,
                        **({"labels": p.labels} if p.labels is not None else {}),
                        "probabilities": p.probabilities,
                    }
                    for p in predictions
                ],
                indent=2,
            )
            + "\n"
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if kaggle:
        writer.writerow(["id", "label"])
        numbered = all(Path(p.path).stem.isdigit() for p in predictions)
        for p in sorted(predictions, key=lambda p: int(Path(p.path).stem)) if numbered else predictions:
            writer.writerow([Path(p.path).stem, f"{p.probabilities[classes[1]]:.6f}"])
    else:
        writer.writerow(["path", "label", *classes])
        for p in predictions:
            writer.writerow([display_path(p.path), p.label, *(f"{p.probabilities[c]:.6f}" for c in classes)])
    return buffer.getvalue()


def _number(value) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def trials_table(trials: Sequence[TrialResult]) -> str:
    """A line per trial of `vggtune tune`: its state, score and settings."""
    names = list(dict.fromkeys(name for trial in trials for name in trial.settings))
    header = ("trial", "state", "val bal. log loss", "val bal. acc.", "s", *names)
    lines = [header]
    for t in trials:
        settings = [t.settings.get(name) for name in names]
        lines.append(
            (
                str(t.number),
                t.state,
                _number(t.score) if t.score is not None else "-",
                _number(t.balanced_accuracy) if t.balanced_accuracy is not None else "-",
                f"{t.seconds:.0f}",
                *(f"{v:.3g}" if isinstance(v, float) else str(v) for v in settings),
            )
        )
    return _aligned(lines)


def _aligned(lines: list[tuple]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def runs_table(rows: Sequence[RunRow]) -> str:
    """The rows as an aligned table, accuracy with its 95 % interval."""
    header = (
        "run",
        "data",
        "head",
        "epochs",
        "precision",
        "tested on",
        "accuracy (95 % interval)",
        "balanced",
        "log loss",
        "wall s",
    )
    lines = [header]
    for r in rows:
        interval = f" ({r.accuracy_95.low:.3f}-{r.accuracy_95.high:.3f})" if r.accuracy_95 else ""
        accuracy = f"{r.accuracy:.4f}{interval}" if r.accuracy is not None else "-"
        lines.append(
            (
                r.run,
                r.data,
                r.head,
                str(r.epochs),
                r.precision,
                f"{r.split} {r.images}" if r.split else "-",
                accuracy,
                f"{r.balanced_accuracy:.4f}" if r.balanced_accuracy is not None else "-",
                f"{r.log_loss:.4f}" if r.log_loss is not None else "-",
                f"{r.wall_s:.0f}" if r.wall_s is not None else "-",
            )
        )
    return _aligned(lines)
