"""The heads put on a backbone, as values: what a head is (`HeadSpec`, written in model.json) and
the layers each kind builds (`HEADS`, one class and one line per kind).

The head's task (tasks.py) says how its outputs are read: two classes get one sigmoid unit (its logit
favours the second class; binary cross-entropy), more get one softmax unit a class (cross-entropy), a
multi-label head one sigmoid unit a label. Everything that turns logits into a loss, a label,
probabilities or the score Grad-CAM differentiates asks the `HeadSpec`, which asks its task.

torch is imported where a head computes, not when this module is: the command line reads the
registry (the --head choices and their help) before it imports torch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from vggtune import tasks
from vggtune.tasks import Task

if TYPE_CHECKING:  # annotations only
    import torch
    from torch import nn


class HeadKind:
    """One kind of head: its --head help and the layers it builds on the frozen network's features."""

    help = ""

    @staticmethod
    def layers(spec: HeadSpec, channels: int, grid: int) -> OrderedDict:
        raise NotImplementedError


class Flatten(HeadKind):
    """The classic recipe's: Flatten -> Dense(hidden, ReLU) -> dropout -> output."""

    help = "Flatten -> Dense(hidden) -> output (the classic recipe)"

    @staticmethod
    def layers(spec: HeadSpec, channels: int, grid: int) -> OrderedDict:
        from torch import nn

        return OrderedDict(
            flatten=nn.Flatten(),
            dense=nn.Linear(channels * grid * grid, spec.hidden),
            relu=nn.ReLU(),
            dropout=nn.Dropout(spec.dropout),
            out=nn.Linear(spec.hidden, spec.n_outputs),
        )


class GlobalAveragePool(HeadKind):
    """Global average pooling -> dropout -> output: few parameters, for many classes."""

    help = "global average pooling -> output (one class an image: the default, at --lr 1e-3)"

    @staticmethod
    def layers(spec: HeadSpec, channels: int, grid: int) -> OrderedDict:
        from torch import nn

        return OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            dropout=nn.Dropout(spec.dropout),
            out=nn.Linear(channels, spec.n_outputs),
        )


# How sharply log-sum-exp pooling follows a class's best places: 0 is the average (the gap head), infinity the
# maximum. At 5 a class whose score stands out on a tenth of a 7 x 7 map keeps most of it.
SHARPNESS = 5.0


class PlacePool(HeadKind):
    """A score for each class at each place of the feature map, each class's scores pooled on their own by
    log-sum-exp: a label is decided by the places where it is, and what fills the rest of the image does not
    pull it down as the average of the gap head does (a dog beside a flower: Zhu & Wu, ICCV 2021)."""

    help = "each class scored at each place of the map, pooled by log-sum-exp: for several objects an image"

    @staticmethod
    def layers(spec: HeadSpec, channels: int, grid: int) -> OrderedDict:
        from torch import nn

        out = nn.Conv2d(channels, spec.n_outputs, 1)
        # Zero weights: every place scores alike at first, so the pooling starts as the gap head's average and
        # sharpens as the places come apart. PyTorch's random start made the largest of 49 random scores each
        # label's first answer, which few images (37 breeds of 8) could not talk down.
        nn.init.zeros_(out.weight)
        return OrderedDict(
            dropout=nn.Dropout(spec.dropout),
            out=out,
            pool=_log_sum_exp_pool(SHARPNESS),
            flatten=nn.Flatten(),
        )


def _log_sum_exp_pool(sharpness: float):
    """(N, C, H, W) -> (N, C, 1, 1): log of the mean of exp(sharpness * x), over sharpness; a constant map
    pools to itself, so the output biases start at the priors as the other heads' do."""
    import math

    import torch
    from torch import nn

    class LogSumExpPool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            places = x.shape[2] * x.shape[3]
            pooled = torch.logsumexp(sharpness * x.flatten(2), dim=2, keepdim=True) - math.log(places)
            return (pooled / sharpness).unsqueeze(-1)

    return LogSumExpPool()


HEADS: dict[str, type[HeadKind]] = {"flatten": Flatten, "gap": GlobalAveragePool, "places": PlacePool}


@dataclass(frozen=True)
class HeadSpec:
    kind: str  # a key of HEADS
    n_classes: int  # multi-label: the labels
    hidden: int = 256
    dropout: float = 0.0
    multi_label: bool = False  # a sigmoid a label, any set of them an image

    @property
    def task(self) -> Task:
        """What the head is asked (tasks.py): one class an image, or any set of labels."""
        return tasks.of(self.multi_label)

    @property
    def sigmoid(self) -> bool:
        """Two classes: one sigmoid unit whose logit favours the second class."""
        return self.task.sigmoid(self.n_classes)

    @property
    def n_outputs(self) -> int:
        return self.task.n_outputs(self.n_classes)

    def build(self, channels: int, grid: int) -> nn.Module:
        """The head's layers on features of `channels` x grid x grid."""
        if self.kind not in HEADS:
            raise ValueError(f"head kind {self.kind!r}; allowed: {', '.join(HEADS)}")
        from torch import nn

        return nn.Sequential(HEADS[self.kind].layers(self, channels, grid))

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The task's loss (tasks.py): cross-entropy against targets moved `smoothing` of the way toward
        uniform, `class_weights` weighing each image's class (multi-label: each label's positives)."""
        return self.task.loss(logits, labels, smoothing, class_weights, self.n_classes)

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        """Each image's class; multi-label: (image, label) 1 where the label's probability passes 0.5."""
        return self.task.predicted(logits, self.n_classes)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, n_classes) from logits (N, n_outputs); multi-label: each label's own."""
        return self.log_probabilities(logits).exp()

    def log_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Their logarithms, computed from the logits (log-sigmoid, log-softmax): exact and finite where a
        probability itself rounds to 0 or 1 (1 - sigmoid(20) is 0 in float32)."""
        return self.task.log_probabilities(logits, self.n_classes)

    def class_scores(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each row's score for its target class, the quantity Grad-CAM differentiates: the logit for
        softmax and for a multi-label head's label; for the sigmoid unit the logit for the second class and
        its negative for the first, since log P(second)/P(first) is the logit."""
        import torch

        if self.sigmoid:
            return torch.where(targets == 1, logits[:, 0], -logits[:, 0])
        return logits.gather(1, targets.view(-1, 1))[:, 0]

    def to_dict(self) -> dict:
        """model.json's head; `multi_label` only where it is set, so a single-label model.json reads as before."""
        values = asdict(self)
        if not self.multi_label:
            del values["multi_label"]
        return values
