"""What a model is asked: one class an image (`SINGLE_LABEL`) or any set of labels (`MULTI_LABEL`).

The task is chosen once, from the data (a manifest's `labels` column: data/manifest.py), kept in model.json
(the head's `multi_label`) and asked by everything downstream instead of branching on it:
- the output units, the loss and the activation (log-softmax, the two-class sigmoid, a sigmoid a label);
- the decision rule: a class from the probabilities at the two-class threshold, or each label past its own
  threshold; `--threshold` as a new rule; the rule's fields in model.json, `serve`'s /info and the export
  metadata; the answer a prediction gives;
- how training starts (a multi-label head's biases at each label's log-odds) and what it compares with;
- the words: "classes" or "labels".
Its metrics record is training/figures.py's (`figures` by task), its report and model-card sections are
results/'s, each chosen by `task.name` in one place.

torch is imported where a task computes, not when this module is (the command line's help needs none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vggtune.errors import UserError

if TYPE_CHECKING:  # annotations only
    pass

SEPARATOR = ";"  # between the labels of one image: a manifest's cell, an answer (data/labelsets.py's too)


@dataclass(frozen=True)
class SingleLabel:
    """One class an image: two classes get one sigmoid unit whose logit favours the second (binary
    cross-entropy), more get a softmax unit a class (cross-entropy)."""

    name: str = "single-label"
    noun: str = "classes"
    weights_name: str = "class weights"
    several: bool = False
    default_head: str = "gap"  # --head auto's choice (BENCHMARKS.md section 19)
    default_loss: str = "cross-entropy"  # --loss auto's
    default_fit: str = "crop"  # --fit auto's: the weights' own preprocessing

    def n_outputs(self, n_classes: int) -> int:
        return 1 if n_classes == 2 else n_classes

    def sigmoid(self, n_classes: int) -> bool:
        """Two classes: one sigmoid unit whose logit favours the second class."""
        return n_classes == 2

    def loss(self, logits, labels, smoothing: float, class_weights, n_classes: int):
        """Cross-entropy against targets moved `smoothing` of the way toward uniform over the classes; with
        `class_weights`, each image weighs its class's weight (the mean is over the weights, as PyTorch's)."""
        from torch import nn

        if self.sigmoid(n_classes):
            targets = labels.float() * (1 - smoothing) + smoothing / 2
            if class_weights is None:
                return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], targets)
            weights = class_weights.to(logits.device)[labels]
            each = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], targets, reduction="none")
            return (each * weights).sum() / weights.sum()
        weight = None if class_weights is None else class_weights.to(logits.device)
        return nn.functional.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)

    def predicted(self, logits, n_classes: int):
        return (logits[:, 0] > 0).long() if self.sigmoid(n_classes) else logits.argmax(1)

    def log_probabilities(self, logits, n_classes: int):
        import torch

        if self.sigmoid(n_classes):
            z = logits[:, 0]
            return torch.stack([torch.nn.functional.logsigmoid(-z), torch.nn.functional.logsigmoid(z)], dim=1)
        return torch.log_softmax(logits, dim=1)

    def negative_log_likelihood(self, log_probabilities, labels) -> float:
        """The log loss of (image, class) log-probabilities against class indexes."""
        rows = np.arange(len(labels))
        return float(-log_probabilities[rows, labels].mean())

    def targets(self, items: Sequence[Any], n_classes: int):
        """What training compares the outputs with: each image's class index."""
        import torch

        return torch.tensor([item.label for item in items], dtype=torch.long)

    def initial_bias(self, targets):
        """Where the output biases start: PyTorch's own initialisation."""
        return None

    def decide(self, policy, probabilities) -> np.ndarray:
        """Each image's class index, at the policy's two-class threshold."""
        return policy.decide(probabilities)

    def answer(self, classes: Sequence[str], decided) -> tuple[str, list[str] | None]:
        """One image's answer from its decision: its class, and no label list."""
        return classes[int(decided)], None

    def truth(self, names: Sequence[str], classes: Sequence[str]) -> np.ndarray:
        """Images' classes, given by name, as indexes."""
        return np.asarray([list(classes).index(name) for name in names], dtype=np.int64)

    def rule_at(self, policy, threshold, classes: Sequence[str]):
        """The policy deciding at another two-class threshold (predict's and evaluate's --threshold)."""
        if len(classes) != 2:
            raise UserError(
                f"--threshold: received {threshold} for a model of {len(classes)} classes; "
                "allowed: a threshold for two-class models only"
            )
        _check_probability(threshold, f"the probability of {classes[1]} above which an image is called {classes[1]}")
        return policy.deciding_at(threshold)

    def rule_fields(self, classes: Sequence[str], policy) -> dict:
        """The rule's fields in model.json beside the threshold on the second class, which every model.json
        holds: the positive class, and the rule in words."""
        if len(classes) != 2:
            return {"rule": self.words(classes, policy)}
        return {"positive_class": classes[policy.positive], "rule": policy.rule_words(classes)}

    def words(self, classes: Sequence[str], policy) -> str:
        """The rule in force, as every output says it."""
        if len(classes) == 2:
            return policy.rule_words(classes)
        return "the most probable class" + policy.recalibration_note

    def describe(self, classes: Sequence[str], named: str) -> str:
        """What the model is, in the model card's words (`named`: the classes, listed)."""
        return f"An image classifier for {len(classes)} classes ({named})"

    def describe_rule(self, classes: Sequence[str], policy) -> str:
        """The decision rule in the model card's words ("" where it is the most probable class)."""
        if len(classes) != 2:
            return ""
        return f"; the rule: {policy.rule_words(classes)}"

    def metadata(self, classes: Sequence[str], policy) -> dict:
        """What `serve`'s /info and an exported file's metadata add to say how the outputs are read: the rule
        (two classes: `threshold` is on the second class's probability, whichever class is positive)."""
        fields = self.rule_fields(classes, policy)
        return {**fields, "threshold": policy.threshold} if len(classes) == 2 else fields


@dataclass(frozen=True)
class MultiLabel:
    """Any set of labels an image, none included: one sigmoid unit a label, each its own binary cross-entropy,
    each label given where its probability exceeds its own threshold."""

    name: str = "multi-label"
    noun: str = "labels"
    weights_name: str = "positive weights"
    several: bool = True
    # --head and --loss auto's choices: each label scored at each place and pooled, so what else is in the
    # picture does not decide it, and the asymmetric loss, whose easy negatives do not outweigh a label's few
    # positives (BENCHMARKS.md sections 29 and 31)
    default_head: str = "places"
    default_loss: str = "asymmetric"
    # --fit auto's: the whole image padded to the square input, so that an object at its edge keeps its label
    # (photos side by side: micro-F1 0.93 to 0.97, BENCHMARKS.md section 31)
    default_fit: str = "pad"

    def n_outputs(self, n_classes: int) -> int:
        return n_classes

    def sigmoid(self, n_classes: int) -> bool:
        return False

    def loss(self, logits, labels, smoothing: float, class_weights, n_classes: int):
        """The mean of every label's binary cross-entropy against (image, label) 0/1 targets; `class_weights`
        weigh each label's positives (PyTorch's pos_weight)."""
        from torch import nn

        targets = labels.float() * (1 - smoothing) + smoothing / 2
        positive = None if class_weights is None else class_weights.to(logits.device)
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=positive)

    def predicted(self, logits, n_classes: int):
        """(image, label) 1 where the label's probability passes 0.5."""
        return (logits > 0).long()

    def log_probabilities(self, logits, n_classes: int):
        import torch

        return torch.nn.functional.logsigmoid(logits)

    def negative_log_likelihood(self, log_probabilities, labels) -> float:
        """Each label's binary cross-entropy, averaged: log(1 - p) from log p, exactly."""
        import torch

        positive = torch.from_numpy(np.asarray(labels, dtype=bool))
        return float(-torch.where(positive, log_probabilities, torch.log(-torch.expm1(log_probabilities))).mean())

    def targets(self, items: Sequence[Any], n_classes: int):
        """(image, label) 0/1 of the labels each image carries."""
        import torch

        rows = torch.zeros(len(items), n_classes)
        for row, item in enumerate(items):
            rows[row, list(item.targets)] = 1
        return rows

    def initial_bias(self, targets):
        """Each label's log-odds in the training split, so training starts where always answering each label's
        share would: from 0 (every probability 0.5) the biases of rare labels must first travel to about -2,
        which at Adam's steps of about the learning rate takes thousands of steps (Lin et al., 2017, section
        4.1, start a rare class's bias the same way)."""
        import torch

        carried = targets.mean(0).clamp(0.001, 0.999)
        return torch.log(carried / (1 - carried))

    def decide(self, policy, probabilities) -> np.ndarray:
        """(image, label) True where the label's probability exceeds its threshold."""
        return policy.labels(probabilities)

    def answer(self, classes: Sequence[str], decided) -> tuple[str, list[str] | None]:
        """One image's labels, joined by ";" as its label."""
        labels = [name for name, on in zip(classes, decided) if on]
        return SEPARATOR.join(labels), labels

    def truth(self, names: Sequence[str], classes: Sequence[str]) -> np.ndarray:
        """Images' label sets, given as "cat;dog", as (image, label) True/False."""
        return np.asarray([[label in name.split(SEPARATOR) for label in classes] for name in names], dtype=bool)

    def rule_at(self, policy, threshold, classes: Sequence[str]):
        """The policy at `threshold` for every label (predict's and evaluate's --threshold)."""
        _check_probability(threshold, "the probability above which an image is given a label, for every label")
        return policy.labelling_at((float(threshold),) * len(classes))

    def describe(self, classes: Sequence[str], named: str) -> str:
        return (
            f"A multi-label image classifier for {len(classes)} labels ({named}), any set of them an image "
            "(one sigmoid a label)"
        )

    def describe_rule(self, classes: Sequence[str], policy) -> str:
        given = ", ".join(f"{name} {value:.3g}" for name, value in zip(classes, policy.thresholds))
        return f"; a label is given above its threshold ({given}; chosen on the validation split)"

    def rule_fields(self, classes: Sequence[str], policy) -> dict:
        """Each label's threshold, by name, and the rule in words."""
        thresholds = dict(zip(classes, policy.thresholds or [0.5] * len(classes)))
        return {"thresholds": thresholds, "rule": self.words(classes, policy)}

    def words(self, classes: Sequence[str], policy) -> str:
        return "each label where its probability > its threshold"

    def metadata(self, classes: Sequence[str], policy) -> dict:
        """Each output is its label's own probability (a sigmoid); a label is given past its threshold."""
        return {"multi_label": True, **self.rule_fields(classes, policy)}


def two_class_rule(classes, positive: int, threshold: float) -> str:
    """A two-class rule in words, `threshold` on the positive class's probability: the second class is given
    above it, the first at or above it (as model/policy.py's `decide` computes it, on the second's probability)."""
    named, other = classes[positive], classes[1 - positive]
    return f"{named} where P({named}) {'>' if positive else '>='} {threshold:.4g}, else {other}"


Task = SingleLabel | MultiLabel
SINGLE_LABEL, MULTI_LABEL = SingleLabel(), MultiLabel()
TASKS: dict[str, Task] = {task.name: task for task in (SINGLE_LABEL, MULTI_LABEL)}


def of(several: bool) -> Task:
    """The task of data (or a model) with several labels an image, or one."""
    return MULTI_LABEL if several else SINGLE_LABEL


def _check_probability(threshold, meaning: str) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise UserError(f"--threshold: received {threshold}; allowed: 0 < x < 1 ({meaning})")
