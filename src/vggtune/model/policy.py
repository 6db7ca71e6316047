"""How a model's logits become its probabilities: an immutable `ScoringPolicy`, kept in model.json.

The policy names the views an image is scored on (its clean view, and with test-time
augmentation that view's mirror image), the temperature the logits are divided by
(1: as trained; fitted on validation data by --calibrate) and, for two classes, the decision
threshold: the second class's probability above which an image is given the second class
(0.5: the more probable class; chosen on validation data by --threshold val); for a multi-label model, a
threshold a label (chosen on validation data). Scoring is a pure function of the
logits and the policy; a different policy (the clean view alone while epochs are chosen, a
candidate temperature) is a new value, never a flipped attribute.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from vggtune.model.heads import HeadSpec
from vggtune.tasks import two_class_rule

CLEAN, MIRROR = 0, -1  # view ids of the clean view and its mirror image; 1.. are augmented training views
TTA_VIEWS = (CLEAN, MIRROR)  # what test-time augmentation averages
# The ten crops of AlexNet and VGG (torchvision's TenCrop): the centre and the four corner crops of the
# resized image, and their mirror images. Corners -2..-5 in FiveCrop's order (top left, top right,
# bottom left, bottom right); -6..-9 the same, mirrored.
CORNERS = (-2, -3, -4, -5)
TEN_CROP = TTA_VIEWS + CORNERS + tuple(view - len(CORNERS) for view in CORNERS)


@dataclass(frozen=True)
class ScoringPolicy:
    temperature: float = 1.0
    views: tuple[int, ...] = (CLEAN,)
    threshold: float = 0.5  # two classes: the second is decided where its probability exceeds this
    thresholds: tuple[float, ...] = ()  # multi-label: a label is given where its probability exceeds its own
    # two classes: the user's positive class (--positive-class), what the rule is said and set in terms of
    # (`positive_threshold`); `threshold` stays on the second class's probability, so the one rule computes alike
    positive: int = 1
    # `vggtune calibrate`: the views' averaged log-probabilities recalibrated for another source's images, as
    # log_softmax(scale * log p + offsets), an offset a class (a logistic recalibration of the logit for two
    # classes: the first class's offset 0); 1 and none as trained
    scale: float = 1.0
    offsets: tuple[float, ...] = ()

    def __post_init__(self):
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"temperature {self.temperature}; allowed: a positive number")
        if self.views not in ((CLEAN,), TTA_VIEWS, TEN_CROP):
            raise ValueError(f"scored views {self.views}; allowed: {(CLEAN,)}, {TTA_VIEWS} or {TEN_CROP}")
        for threshold in (self.threshold, *self.thresholds):
            if not 0 < threshold < 1:
                raise ValueError(f"threshold {threshold}; allowed: 0 < x < 1")
        if self.positive not in (0, 1):
            raise ValueError(f"positive class {self.positive}; allowed: 0 or 1 (two classes)")
        if not 0 < self.scale < float("inf") or not all(math.isfinite(offset) for offset in self.offsets):
            raise ValueError(f"recalibration scale {self.scale}, offsets {self.offsets}; allowed: finite, scale > 0")

    @classmethod
    def of(cls, tta: bool, temperature: float = 1.0) -> ScoringPolicy:
        return cls(temperature, TTA_VIEWS if tta else (CLEAN,))

    @property
    def tta(self) -> bool:
        return self.views == TTA_VIEWS

    def clean(self) -> ScoringPolicy:
        """The clean view alone, at the same temperature: how epochs are chosen."""
        return dataclasses.replace(self, views=(CLEAN,))

    def at(self, temperature: float) -> ScoringPolicy:
        return dataclasses.replace(self, temperature=temperature)

    def deciding_at(self, threshold: float | None) -> ScoringPolicy:
        """The same scoring with another decision threshold on the positive class's probability (None: this one)."""
        return (
            self if threshold is None else self.on_second(float(threshold) if self.positive else 1 - float(threshold))
        )

    def on_second(self, threshold: float) -> ScoringPolicy:
        """The same scoring at `threshold` on the second class's probability (how it is computed and kept)."""
        return dataclasses.replace(self, threshold=float(threshold))

    def with_positive(self, positive: int) -> ScoringPolicy:
        """The same rule, said and set in terms of another positive class."""
        return dataclasses.replace(self, positive=int(positive))

    @property
    def positive_threshold(self) -> float:
        """The threshold on the positive class's probability: the second class's above it, the first's at or
        above it (the same rule, since the two probabilities add up to 1)."""
        return self.threshold if self.positive else 1 - self.threshold

    def rule_words(self, classes) -> str:
        """The two-class rule in force, in the user's words: "PNEUMONIA where P(PNEUMONIA) > 0.95, else NORMAL"."""
        return two_class_rule(classes, self.positive, self.positive_threshold) + self.recalibration_note

    @property
    def recalibrated_here(self) -> bool:
        return self.scale != 1.0 or bool(self.offsets)

    @property
    def recalibration_note(self) -> str:
        """What the rule's words add where `vggtune calibrate` recalibrated the probabilities."""
        return " (P recalibrated by vggtune calibrate)" if self.recalibrated_here else ""

    def labelling_at(self, thresholds: tuple[float, ...]) -> ScoringPolicy:
        """The same scoring with a multi-label model's thresholds, one a label."""
        return dataclasses.replace(self, thresholds=tuple(float(t) for t in thresholds))

    def decide(self, probabilities) -> np.ndarray:
        """Each image's class index from its class probabilities (image, class)."""
        return decide(probabilities, self.threshold)

    def labels(self, probabilities) -> np.ndarray:
        """Multi-label: (image, label) True where the label's probability exceeds its threshold."""
        return decide_labels(probabilities, self.thresholds)

    def probabilities(self, head: HeadSpec, view_logits: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
        """Class probabilities (image, class), float64, from logits (view, image, output) of this policy's
        views, in its order: the mean over the views of each one's probabilities at the temperature."""
        return self.log_probabilities(head, view_logits, dtype).exp()

    def log_probabilities(self, head: HeadSpec, view_logits: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
        """The logarithms of `probabilities`, computed in log space and float64 (the log of the views' mean
        is a log-sum-exp), so that the log loss counts a confidently wrong image in full. An exported graph
        asks for float32: the runtimes it goes to (TFLite) have no float64 kernels."""
        if view_logits.shape[0] != len(self.views):
            raise ValueError(f"logits of {view_logits.shape[0]} views; this policy scores {len(self.views)}")
        per_view = torch.stack([head.log_probabilities(logits.to(dtype) / self.temperature) for logits in view_logits])
        return self.recalibrated(torch.logsumexp(per_view, dim=0) - math.log(len(self.views)))

    def recalibrated(self, log_probabilities: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (image, class) under this policy's recalibration (`vggtune calibrate`)."""
        if not self.recalibrated_here:
            return log_probabilities
        offsets = torch.tensor(self.offsets or (0.0,), dtype=log_probabilities.dtype, device=log_probabilities.device)
        return torch.log_softmax(self.scale * log_probabilities + offsets, dim=-1)

    def recalibrating(self, scale: float, offsets: tuple[float, ...]) -> ScoringPolicy:
        """The same scoring, its averaged log-probabilities recalibrated (`vggtune calibrate`)."""
        return dataclasses.replace(self, scale=float(scale), offsets=tuple(float(o) for o in offsets))

    def view_inputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """This policy's views of clean (N, C, H, W) inputs, in its order."""
        if self.views == TEN_CROP:
            raise ValueError("ten-crop views are cut from the resized image, not from its clean view")
        return [images.flip(-1) if view == MIRROR else images for view in self.views]

    def classify(self, logits_of, images: torch.Tensor, head: HeadSpec, dtype=torch.float64) -> torch.Tensor:
        """Class probabilities of clean inputs, `logits_of` being the network from image to logits."""
        return self.probabilities(
            head, torch.stack([logits_of(view).float() for view in self.view_inputs(images)]), dtype
        )


def decide(probabilities, threshold: float = 0.5) -> np.ndarray:
    """The one rule from probabilities to labels: for two classes the second where its probability
    exceeds `threshold` (at 0.5 exactly the more probable class, ties to the first), else the most
    probable class."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 2 and probabilities.shape[1] == 2:
        return (probabilities[:, 1] > threshold).astype(np.int64)
    return probabilities.argmax(axis=-1)


def decide_labels(probabilities, thresholds: tuple[float, ...] = ()) -> np.ndarray:
    """The multi-label rule: (image, label) True where the label's probability exceeds its threshold (0.5 for
    each where none are given)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities > (np.asarray(thresholds, dtype=np.float64) if thresholds else 0.5)
