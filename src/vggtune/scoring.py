"""Scoring a model: its loss, its predicted labels and class probabilities, metrics over a split."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .metrics import classification_metrics
from .model import Classifier
from .runtime import Runtime


@dataclass
class Scorer:
    """One sigmoid unit for two classes (binary cross-entropy), softmax over N units otherwise."""
    model: Classifier
    runtime: Runtime
    classes: list[str]
    batch_size: int

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
        return torch.nn.functional.cross_entropy(logits, labels)

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 0] > 0).long() if self.binary else logits.argmax(1)

    def probabilities(self, source, labels: torch.Tensor, cut: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, class probabilities) of a split's clean views, from features at `cut`."""
        _, kept_labels, probabilities = self.scored(source, labels, cut)
        return kept_labels, probabilities

    def scored(self, source, labels: torch.Tensor, cut: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions in the split, their labels, class probabilities) of the views that could be read."""
        self.model.eval()
        all_positions, all_probs = [], []
        with torch.inference_mode():
            for start in range(0, len(labels), self.batch_size):
                positions = list(range(start, min(start + self.batch_size, len(labels))))
                x, kept = source.batch(positions, [0] * len(positions))
                if not kept:
                    continue
                with self.runtime.autocast():
                    logits = self.model.from_features(self.runtime.to_input(x), cut).float()
                all_probs.append(self.model.probabilities(logits).cpu().numpy())
                all_positions += kept
        if not all_probs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(self.classes)))
        positions = np.asarray(all_positions, dtype=np.int64)
        return positions, labels[positions].numpy(), np.concatenate(all_probs)

    def metrics(self, source, labels: torch.Tensor, cut: str) -> dict:
        return self.summary(*self.probabilities(source, labels, cut))

    def summary(self, labels: np.ndarray, probabilities: np.ndarray) -> dict:
        return classification_metrics(labels, probabilities, self.classes)
