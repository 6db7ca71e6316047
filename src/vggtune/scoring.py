"""Scoring a model: its loss, its predicted labels and class probabilities, metrics over a split."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import distributed
from .metrics import classification_metrics
from .model import Classifier
from .runtime import Runtime
from .transforms import scored_views


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
        """(positions in the split, their labels, class probabilities) of the images that could be read;
        the probabilities are the model's (temperature, and with `tta` the mean over both views)."""
        positions, logits = self.view_logits(source, len(labels), cut)
        return positions, labels[positions].numpy(), self.combine(logits)

    def combine(self, view_logits: np.ndarray) -> np.ndarray:
        """Class probabilities from logits (view, image, output): the clean view's, or with `tta` the
        mean over the views, each at the model's temperature."""
        views = view_logits if self.model.tta else view_logits[:1]
        with torch.no_grad():
            probabilities = torch.stack([self.model.probabilities(torch.from_numpy(v)) for v in views]).mean(0)
        return probabilities.numpy().reshape(-1, len(self.classes))

    def view_logits(self, source, n_items: int, cut: str, views: tuple[int, ...] | None = None):
        """(positions that could be read, logits (view, position, output)) of the `views` the source holds;
        by default those the model averages (the clean view, and with `tta` its mirror image). Under
        torchrun each rank scores its share and every rank gets all of them."""
        wanted = scored_views(self.model.tta) if views is None else views
        slots = [slot for slot, view in enumerate(source.view_ids) if view in wanted]
        self.model.eval()
        all_positions, all_logits = [], []
        mine = distributed.share(range(n_items))
        with torch.inference_mode():
            for start in range(0, len(mine), self.batch_size):
                positions = list(mine[start:start + self.batch_size])
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
        """The temperature that minimises the log loss of the model's probabilities (`tta` included) on
        held-out logits (view, image, output): a golden-section search over T in [1, 20] on a log scale
        (Guo et al., 2017, "On calibration of modern neural networks"). Never below 1: the validation split chose the
        epochs, so its loss is optimistic, and where it has no errors the best fit would sharpen the
        probabilities without limit (BENCHMARKS.md section 14). The model keeps its own temperature."""
        model, saved, rows = self.model, self.model.temperature, np.arange(len(labels))

        def loss(log_t: float) -> float:
            model.temperature = float(np.exp(log_t))
            return float(-np.log(np.clip(self.combine(view_logits)[rows, labels], 1e-7, 1)).mean())

        low, high, ratio = 0.0, float(np.log(20)), (np.sqrt(5) - 1) / 2
        try:
            for _ in range(60):                   # the bracket shrinks to 1e-12 of its width
                a, b = high - ratio * (high - low), low + ratio * (high - low)
                if loss(a) < loss(b):
                    high = b
                else:
                    low = a
        finally:
            model.temperature = saved
        return round(float(np.exp((low + high) / 2)), 6)

    def metrics(self, source, labels: torch.Tensor, cut: str) -> dict:
        return self.summary(*self.probabilities(source, labels, cut))

    def summary(self, labels: np.ndarray, probabilities: np.ndarray) -> dict:
        return classification_metrics(labels, probabilities, self.classes)


def _merged(positions: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (positions, logits (view, position, output)), in the order of the positions."""
    if distributed.world().size == 1:
        return positions, logits
    parts = distributed.concat([(positions, logits)])
    positions = np.concatenate([part[0] for part in parts])
    logits = np.concatenate([part[1] for part in parts], axis=1)
    order = np.argsort(positions, kind="stable")
    return positions[order], logits[:, order]
