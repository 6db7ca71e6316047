"""A set's figures, single- or multi-label: the one place that tells the two apart. `Figures` is what a
split's scores are (Metrics, or MultiLabelMetrics for a multi-label model); `figures` computes them,
`from_dict` reads metrics.json's back; `targets` and `label_text` turn a multi-label image's labels
between their text ("cat;dog") and 0/1 rows.

And what one epoch leaves: its validation figures (`Validation`, what epochs are chosen by and what `tune`'s
pruner is told) and its row in the history (`EpochRow`: metrics.jsonl, the resume state, TensorBoard,
MLflow and the report's curves read it); and what a run's fine-tuning kept (`Blend`, --blend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vggtune.data.labelsets import joined, label_names
from vggtune.tasks import MULTI_LABEL, Task
from vggtune.training.metrics import Metrics, classification_metrics
from vggtune.training.multilabel import MultiLabelMetrics, is_multilabel, multilabel_metrics

Figures = Metrics | MultiLabelMetrics  # both answer FiguresLike; the task's own fields beside


class FiguresLike(Protocol):
    """What every set's figures answer, whatever the task: how many images, the headline accuracy (plain, or a
    multi-label model's subset accuracy) with its Wilson interval and its name, the log loss, the F1 a line
    shows, the keys a summary keeps, the intervals the record holds itself (by figure's name; none where they
    are drawn apart), the task, and the JSON form."""

    n: int
    accuracy_95: Any
    task: str
    accuracy_name: str
    summary_keys: tuple[str, ...]

    @property
    def accuracy(self) -> float | None: ...

    @property
    def log_loss(self) -> float | None: ...

    @property
    def headline_f1(self) -> float | None: ...

    def own_intervals(self) -> dict: ...

    def to_dict(self) -> dict: ...


def figures(
    task: Task,
    labels,
    probabilities,
    classes: list[str],
    threshold: float = 0.5,
    thresholds: tuple[float, ...] = (),
    intervals: bool = False,
    positive: int = 1,
) -> Figures:
    """The task's metrics record: Metrics of class indexes `labels` at the two-class `threshold`; a
    multi-label model's MultiLabelMetrics of (image, label) 0/1 `labels` at its `thresholds` (one a label; 0.5
    each where none are given), with its bootstrap intervals where `intervals`; two classes: `positive` names
    the class sensitivity and F1 are of."""
    if task is MULTI_LABEL:
        return multilabel_metrics(labels, probabilities, classes, thresholds, intervals)
    return classification_metrics(labels, probabilities, classes, threshold, positive)


def summary(figures: Figures) -> dict:
    """The figures a summary keeps (the record's `summary_keys`), as its JSON holds them: cv.json's rows, and
    the samples `vggtune calibrate` describes in model.json."""
    values = figures.to_dict()
    return {key: values[key] for key in figures.summary_keys if key in values}


def truth(task: Task, names: list[str], classes: list[str]) -> np.ndarray:
    """Images' true classes, given by name, as `figures` takes them: class indexes, or a multi-label
    image's labels ("cat;dog") as an (image, label) 0/1 row."""
    if task is MULTI_LABEL:
        return targets(names, classes)
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index[name] for name in names], dtype=np.int64)


def from_dict(values: dict | None) -> Figures | None:
    """metrics.json's (or evaluation.json's) figures of a set, as their record."""
    if not values:
        return None
    return MultiLabelMetrics.from_dict(values) if is_multilabel(values) else Metrics.from_dict(values)


def targets(texts: list[str], classes: list[str]) -> np.ndarray:
    """(image, label) 0/1 of multi-label images given as text ("cat;dog", "" for none)."""
    index = {name: i for i, name in enumerate(classes)}
    rows = np.zeros((len(texts), len(classes)), dtype=np.int64)
    for row, text in enumerate(texts):
        rows[row, [index[name] for name in label_names(text)]] = 1
    return rows


def label_text(classes: list[str], label) -> str:
    """An image's class as text: the class of an index, or the labels of a 0/1 (or True/False) row joined."""
    if np.ndim(label):
        return joined([name for name, carried in zip(classes, label) if carried])
    return classes[int(label)]


@dataclass(frozen=True)
class Validation:
    """An epoch's validation figures, of the clean view alone. `loss` is what epochs are chosen by: the log
    loss, or with class weights the balanced log loss (each class's mean, averaged), which those weights
    minimise; a multi-label run's is the mean binary cross-entropy, its accuracy each label's."""

    loss: float
    accuracy: float
    balanced_loss: float
    balanced_accuracy: float


@dataclass(frozen=True)
class EpochRow:
    """One epoch of one stage in the history: its training loss and accuracy, and its validation loss and
    accuracy where the run has validation images."""

    stage: str
    epoch: int  # from 1
    train_loss: float
    train_accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None

    @classmethod
    def of(cls, stage: str, epoch: int, train_loss: float, train_accuracy: float, val: Validation | None) -> EpochRow:
        if val is None:
            return cls(stage, epoch, train_loss, train_accuracy)
        return cls(stage, epoch, train_loss, train_accuracy, val.loss, val.accuracy)

    def figures(self) -> dict[str, float]:
        """The row's figures by name (train_loss, train_accuracy, val_loss, val_accuracy where measured)."""
        values = {"train_loss": self.train_loss, "train_accuracy": self.train_accuracy}
        if self.val_loss is not None and self.val_accuracy is not None:
            values.update(val_loss=self.val_loss, val_accuracy=self.val_accuracy)
        return values

    def to_dict(self) -> dict:
        return {"stage": self.stage, "epoch": self.epoch, **self.figures()}

    @classmethod
    def from_dict(cls, values: dict) -> EpochRow:
        return cls(
            str(values["stage"]),
            int(values["epoch"]),
            values["train_loss"],
            values["train_accuracy"],
            values.get("val_loss"),
            values.get("val_accuracy"),
        )


@dataclass(frozen=True)
class Blend:
    """The share of the fine-tuning kept, and the validation loss at each share tried (none where given)."""

    share: float
    losses: tuple[tuple[float, float], ...] = ()

    def to_dict(self) -> dict:
        return {"share": self.share, "validation_losses": [list(pair) for pair in self.losses]}

    def words(self) -> str:
        tried = ", ".join(f"{share:g} {loss:.4f}" for share, loss in self.losses)
        return f"blend: {self.share:g} of the fine-tuning kept" + (
            f" (validation loss at each share: {tried})" if tried else ""
        )
