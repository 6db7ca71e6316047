"""What a training step minimises and at which rates: the head's loss with label smoothing, class
weights and mixup on cached features, the learning rate of each block that learns (discriminative rates), and the
average of a stage's parameters over its epochs (SWA).

Each is off by default and was measured by five-fold cross-validation (BENCHMARKS.md section 19).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vggtune.model.heads import HeadSpec


@dataclass(frozen=True)
class Objective:
    """The training loss of one head."""

    head: HeadSpec
    smoothing: float = 0.0  # label smoothing: the targets move this far toward uniform (Szegedy et al., 2016)
    mixup: float = 0.0  # alpha of the Beta(alpha, alpha) mixing weight (Zhang et al., 2018); 0: off
    class_weights: torch.Tensor | None = None  # a weight per class (`class_weights`); None: every image weighs 1
    asymmetric: bool = False  # several labels an image: the asymmetric loss instead of binary cross-entropy

    def mix(self, features: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
        """The batch's features, each blended with the next one's (the batch is already shuffled), and the
        weight of its own. The weight is drawn for every batch, so each rank draws the same sequence."""
        if not self.mixup:
            return features, 1.0
        weight = float(rng.beta(self.mixup, self.mixup))
        if len(features) < 2:
            return features, 1.0
        return weight * features + (1 - weight) * features.roll(1, 0), weight

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """The head's loss on smoothed targets; after `mix`, the weighted loss of both images' labels."""
        loss = self._of(logits, labels)
        if weight < 1:
            loss = weight * loss + (1 - weight) * self._of(logits, labels.roll(1, 0))
        return loss

    def _of(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            return asymmetric_loss(logits, labels, self.class_weights)
        return self.head.loss(logits, labels, self.smoothing, self.class_weights)


# The asymmetric loss's settings as Ridnik et al. (ICCV 2021) recommend them: positives as in cross-entropy,
# easy negatives faded by (p)^4, and a negative below a probability of 0.05 not counted at all.
ASL_NEGATIVE_FOCUS, ASL_CLIP = 4.0, 0.05


def asymmetric_loss(logits: torch.Tensor, labels: torch.Tensor, positive_weights=None) -> torch.Tensor:
    """The mean over (image, label) of the asymmetric loss: most labels are absent from most images, and their
    many easy negatives would otherwise outweigh the few positives. `positive_weights` weigh each label's
    positives, as binary cross-entropy's pos_weight."""
    targets = labels.float()
    probability = torch.sigmoid(logits)
    shifted = (probability - ASL_CLIP).clamp(min=0)
    positive = torch.nn.functional.logsigmoid(logits)
    if positive_weights is not None:
        positive = positive * positive_weights.to(logits.device)
    negative = torch.log((1 - shifted).clamp(min=1e-8)) * shifted.pow(ASL_NEGATIVE_FOCUS)
    return -(targets * positive + (1 - targets) * negative).mean()


def class_weights(setting: str, labels: torch.Tensor, n_classes: int, imbalanced: float) -> torch.Tensor | None:
    """A weight per class from the training labels: n / (classes x the class's count), so every class weighs
    the same in total (scikit-learn's "balanced"); None where `setting` is off, or auto and the largest
    class holds less than `imbalanced` times the smallest's images. A class with no image weighs 0."""
    counts = torch.bincount(labels, minlength=n_classes).double()
    present = counts > 0
    if setting == "off" or not present.any():
        return None
    if setting == "auto" and counts[present].max() < imbalanced * counts[present].min():
        return None
    weights = torch.where(present, counts.sum() / (int(present.sum()) * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def positive_weights(setting: str, targets: torch.Tensor) -> torch.Tensor | None:
    """A multi-label run's weight of each label's positives (its negatives over its positives, so both weigh
    alike: PyTorch's pos_weight) where `setting` is balanced; None for auto and off. Auto leaves them off:
    the panel that chose auto for classes (BENCHMARKS.md section 22) had no multi-label data, and most labels
    are rarer than not, so balancing every one would push every probability up."""
    if setting != "balanced":
        return None
    positives = targets.double().sum(0)
    negatives = len(targets) - positives
    return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives)).float()


# --schedule plateau: the rate's share after each epoch that did not lower the validation loss
PLATEAU_FACTOR = 1 / 3


def rate_factor(schedule: str, epoch: int, epochs: int, setbacks: int = 0) -> float:
    """The share of a stage's rate its epoch `epoch` (from 0) learns at: 1; cosine annealing over the
    stage (1 at its first epoch, above 0 at its last); or, on a plateau, PLATEAU_FACTOR for each of the
    `setbacks` epochs before it that did not lower the validation loss."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return PLATEAU_FACTOR**setbacks if schedule == "plateau" else 1.0


def set_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group at its own starting rate (parameter_groups' "initial_lr") times `factor`."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor  # a state saved before initial_lr


def parameter_groups(
    parameters: dict[str, torch.nn.Parameter], blocks: tuple[str, ...], lr: float, ratio: float
) -> list[dict]:
    """Optimiser groups in the parameters' order: the head and the last block at `lr`, each block before
    it at the rate of the one after it divided by `ratio` (fastai's discriminative rates)."""
    groups: list[dict] = []
    for name, parameter in parameters.items():
        block = name.split(".")[1] if name.startswith("backbone.") else None
        rate = lr / ratio ** (len(blocks) - 1 - blocks.index(block)) if block in blocks else lr
        if groups and groups[-1]["lr"] == rate:
            groups[-1]["params"].append(parameter)
        else:
            groups.append({"params": [parameter], "lr": rate, "initial_lr": rate})
    return groups


class Anchor:
    """L2-SP (Li, Grandvalet and Davoine, 2018): the penalty strength/2 * |w - w0|^2 on the fine-tuned blocks'
    parameters, w0 their pretrained values, added to the gradient before each step. Where the data pulls
    little (images like ImageNet's) the blocks stay near their start; where it pulls hard they move."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter], strength: float):
        self.strength = strength
        self.parameters = {name: p for name, p in parameters.items() if name.startswith("backbone.")}
        self.start = {name: p.detach().clone() for name, p in self.parameters.items()}

    def pull(self, *_hook_arguments) -> None:
        """An optimizer step pre-hook: the penalty's gradient joins each parameter's."""
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                if parameter.grad is not None:
                    parameter.grad.add_(parameter - self.start[name], alpha=self.strength)


class Average:
    """The equal-weight average of parameters taken at the end of each epoch (stochastic weight averaging,
    Izmailov et al., 2018), kept beside the parameters that train."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter]):
        self.count = 0
        self.mean = {name: p.detach().clone().float() for name, p in parameters.items()}

    def load(self, mean: dict[str, torch.Tensor], count: int) -> None:
        """Continue the average saved after `count` epochs (a resumed run)."""
        self.mean, self.count = {name: value.clone().float() for name, value in mean.items()}, count

    def add(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        self.count += 1
        with torch.no_grad():
            for name, parameter in parameters.items():
                self.mean[name] += (parameter.detach().float() - self.mean[name]) / self.count

    def swap(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        """Exchange the parameters' values with the average's: call again to exchange them back."""
        with torch.no_grad():
            for name, parameter in parameters.items():
                current = parameter.detach().clone()
                parameter.copy_(self.mean[name])
                self.mean[name] = current.float()
