"""Scoring a model: its loss, its predicted labels, each view's logits and the class probabilities
its `ScoringPolicy` makes of them, metrics over a split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vggtune import distributed
from vggtune.model.classifier import Classifier
from vggtune.model.policy import ScoringPolicy
from vggtune.model.runtime import Runtime
from vggtune.training.figures import Figures, figures, label_text


@dataclass(frozen=True)
class Scorer:
    """A model scored under one policy; another policy is another Scorer (`with_policy`)."""

    model: Classifier
    runtime: Runtime
    classes: list[str]
    batch_size: int
    policy: ScoringPolicy = ScoringPolicy()

    def with_policy(self, policy: ScoringPolicy) -> Scorer:
        return Scorer(self.model, self.runtime, self.classes, self.batch_size, policy)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model.head_spec.loss(logits, labels)

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        return self.model.head_spec.predicted(logits)

    def scored(self, source, labels: torch.Tensor, cut: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions in the split, their labels, class probabilities) of the images that could be read."""
        positions, logits = self.view_logits(source, len(labels), cut)
        return positions, labels[positions].numpy(), self.combine(logits)

    def combine(self, view_logits: np.ndarray) -> np.ndarray:
        """Class probabilities from logits (view, image, output) of the policy's views."""
        with torch.no_grad():
            probabilities = self.policy.probabilities(self.model.head_spec, torch.from_numpy(view_logits))
        return probabilities.numpy().reshape(-1, len(self.classes))

    def view_logits(self, source, n_items: int, cut: str):
        """(positions that could be read, logits (view, position, output)) of the policy's views, in its order.
        Under torchrun each rank scores its share and every rank gets all of them."""
        slots = [source.view_ids.index(view) for view in self.policy.views]
        self.model.eval()
        all_positions, all_logits = [], []
        mine = distributed.share(range(n_items))
        with torch.inference_mode():
            for start in range(0, len(mine), self.batch_size):
                positions = list(mine[start : start + self.batch_size])
                views = []
                for slot in slots:
                    x, kept = source.batch(positions, [slot] * len(positions))
                    if kept:
                        with self.runtime.autocast():
                            logits = self.model.from_features(self.runtime.to_input(x), cut).float().cpu()
                        views.append(dict(zip(kept, logits)))
                # A live source can lose a file between its views (deleted mid-run): keep what all views have.
                kept = [p for p in positions if views and all(p in view for view in views)]
                if kept and len(views) == len(slots):
                    all_logits.append(torch.stack([torch.stack([view[p] for p in kept]) for view in views]).numpy())
                    all_positions += kept
        if not all_logits:
            all_logits = [np.zeros((len(slots), 0, self.model.head_spec.n_outputs), np.float32)]
        return _merged(np.asarray(all_positions, dtype=np.int64), np.concatenate(all_logits, axis=1))

    def fit_temperature(self, view_logits: np.ndarray, labels: np.ndarray) -> float:
        """The temperature that minimises the log loss of the policy's probabilities on held-out logits
        (view, image, output): a golden-section search over T in [1, 20] on a log scale (Guo et al.,
        2017, "On calibration of modern neural networks"). Never below 1: the validation split chose the
        epochs, so its loss is optimistic, and where it has no errors the best fit would sharpen the
        probabilities without limit (BENCHMARKS.md section 14)."""
        head, logits = self.model.head_spec, torch.from_numpy(view_logits)

        def loss(log_t: float) -> float:
            with torch.no_grad():
                logs = self.policy.at(float(np.exp(log_t))).log_probabilities(head, logits)
            return head.task.negative_log_likelihood(logs, labels)

        low, high, ratio = 0.0, float(np.log(20)), (np.sqrt(5) - 1) / 2
        for _ in range(60):  # the bracket shrinks to 1e-12 of its width
            a, b = high - ratio * (high - low), low + ratio * (high - low)
            if loss(a) < loss(b):
                high = b
            else:
                low = a
        return round(float(np.exp((low + high) / 2)), 6)

    def label_text(self, label) -> str:
        """An image's true class (or a multi-label image's labels) as predictions.csv writes it."""
        return label_text(self.classes, label)

    def metrics(self, source, labels: torch.Tensor, cut: str) -> Figures:
        _, kept_labels, probabilities = self.scored(source, labels, cut)
        return self.summary(kept_labels, probabilities)

    def summary(self, labels: np.ndarray, probabilities: np.ndarray, intervals: bool = False) -> Figures:
        """The figures of these images: Metrics, or for a multi-label model MultiLabelMetrics (`intervals`: with
        its bootstrap intervals)."""
        task, policy = self.model.head_spec.task, self.policy
        return figures(
            task, labels, probabilities, self.classes, policy.threshold, policy.thresholds, intervals, policy.positive
        )


def _merged(positions: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (positions, logits (view, position, output)), in the order of the positions."""
    if distributed.world().size == 1:
        return positions, logits
    parts = distributed.concat([(positions, logits)])
    positions = np.concatenate([part[0] for part in parts])
    logits = np.concatenate([part[1] for part in parts], axis=1)
    order = np.argsort(positions, kind="stable")
    return positions[order], logits[:, order]
