"""The audit's three searches over out-of-fold scores (audit.py runs them): label issues by cleanlab's
self-confidence ranking, images unlike every other by cleanlab's out-of-distribution score on the
fold models' embeddings, and near-duplicates filed under two classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vggtune.progress import progress
from vggtune.results.auditrecords import OOD_FENCE, OOD_NEIGHBOURS, Scored

if TYPE_CHECKING:  # annotations only
    from vggtune.training.config import TrainConfig
    from vggtune.training.rundir import PredictionRow


def label_issues(scored: Scored) -> np.ndarray:
    """Positions of the likely mislabelled images, surest first (cleanlab's self-confidence ranking)."""
    from cleanlab.filter import find_label_issues

    if len(set(scored.labels.tolist())) < 2:
        return np.zeros(0, dtype=np.int64)
    probabilities = scored.probabilities / scored.probabilities.sum(axis=1, keepdims=True)
    return np.asarray(
        find_label_issues(scored.labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1),
        dtype=np.int64,
    )


NOISE_P = 0.05  # the out-of-fold models must beat the majority class at this significance


@dataclass(frozen=True)
class Strength:
    """How far the out-of-fold models beat always answering the largest class: the audit's label issues
    mean something only where they do, beyond noise."""

    accuracy: float
    majority_share: float
    majority_class: str
    p: float  # one-sided binomial test of the right answers against the majority's share

    @property
    def trusted(self) -> bool:
        return self.p < NOISE_P

    def describe(self) -> str:
        return (
            f"out-of-fold accuracy {self.accuracy:.3f} against {self.majority_share:.3f} for always answering "
            f"{self.majority_class} (binomial p = {self.p:.2g})"
        )


def strength(scored: Scored) -> Strength:
    from scipy.stats import binomtest

    n = len(scored.labels)
    counts = np.bincount(scored.labels, minlength=len(scored.classes))
    correct = int((scored.probabilities.argmax(1) == scored.labels).sum())
    share = float(counts.max() / n) if n else 1.0
    p = binomtest(correct, n, share, alternative="greater").pvalue if n and share < 1 else 1.0
    return Strength(correct / n if n else 0.0, share, scored.classes[int(counts.argmax())], float(p))


class FoldModels:
    """Each fold's Predictor, loaded on first use and kept: the embeddings and the page's Grad-CAM
    overlays both need them."""

    def __init__(self, cv_folder: Path):
        self.cv_folder = Path(cv_folder)
        self.loaded: dict = {}

    def __getitem__(self, fold: str):
        if fold not in self.loaded:
            from vggtune.deploy.predict import load

            self.loaded[fold] = load(self.cv_folder / fold)
        return self.loaded[fold]


def off_topic_scores(scored: Scored, models: FoldModels) -> np.ndarray:
    """cleanlab's out-of-distribution score of each image's embedding by the model of the fold that
    tested it (low: unlike every other image), NaN where the image can no longer be read."""
    from cleanlab.outlier import OutOfDistribution

    embeddings = fold_embeddings(scored.rows, models)
    readable = ~np.isnan(embeddings).any(axis=1)
    scores = np.full(len(scored.rows), np.nan)
    if readable.sum() > 2:
        neighbours = min(OOD_NEIGHBOURS, int(readable.sum()) - 1)
        scores[readable] = OutOfDistribution(params={"k": neighbours}).fit_score(
            features=embeddings[readable], verbose=False
        )
    return scores


def fold_embeddings(rows: list[PredictionRow], models: FoldModels) -> np.ndarray:
    """Each image's embedding (Predictor.embeddings) by its own fold's model; NaN rows for unreadable images."""
    embeddings: np.ndarray | None = None
    for fold in sorted({row.split for row in rows}):
        positions = [i for i, row in enumerate(rows) if row.split == fold]
        vectors = embed(models[fold], [rows[i].path for i in positions], f"audit: embeddings, {fold}")
        if embeddings is None:
            embeddings = np.full((len(rows), vectors.shape[1]), np.nan, dtype=np.float32)
        embeddings[positions] = vectors
    return embeddings if embeddings is not None else np.full((len(rows), 1), np.nan, dtype=np.float32)


def embed(predictor, paths: list[str], label: str = "embeddings") -> np.ndarray:
    """The predictor's embedding of each image file, (images, channels); NaN rows for unreadable ones."""
    import torch

    from vggtune.features.extract import decode_clean

    rows: list[np.ndarray | None] = [None] * len(paths)
    bar = progress(total=len(paths), desc=label, unit="image")
    for start in range(0, len(paths), predictor.batch_size):
        batch = range(start, min(start + predictor.batch_size, len(paths)))
        good = [
            (i, view)
            for i in batch
            for view in [decode_clean(paths[i], predictor.preprocessing)[0]]
            if view is not None
        ]
        if good:
            vectors = predictor.embeddings(torch.stack([view for _, view in good])).numpy()
            for (i, _), vector in zip(good, vectors):
                rows[i] = vector
        bar.update(len(batch))
    bar.close()
    width = next((row.shape[0] for row in rows if row is not None), 1)
    return (
        np.stack([row if row is not None else np.full(width, np.nan, np.float32) for row in rows])
        if rows
        else np.zeros((0, width), np.float32)
    )


def far_below(scores: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Positions far out among the scores: -log(score) (cleanlab's score is exp(-distance / t), which
    squeezes the far ones together near 0) above Q3 + OOD_FENCE x IQR of the `reference` scores' (default:
    the scores' own)."""
    distances = _distances(scores)
    valid = _distances(scores if reference is None else reference)
    valid = valid[~np.isnan(valid)]
    if len(valid) < 4:
        return np.zeros(0, dtype=np.int64)
    q1, q3 = np.percentile(valid, [25, 75])
    return np.flatnonzero(np.nan_to_num(distances, nan=-np.inf) > q3 + OOD_FENCE * (q3 - q1))


def _distances(scores: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(scores, 1e-300, 1))


def unlike(reference: np.ndarray, others: np.ndarray) -> tuple[float, float]:
    """(share of `others`, share of `reference` itself) whose embedding lies far out from the reference
    images' (cleanlab's out-of-distribution score fitted on the reference, the same fence as the audit's).
    The reference's own share is what the fence flags among images of the same kind."""
    from cleanlab.outlier import OutOfDistribution

    reference, others = reference[~np.isnan(reference).any(axis=1)], others[~np.isnan(others).any(axis=1)]
    if len(reference) < 5 or not len(others):
        return float("nan"), float("nan")
    detector = OutOfDistribution(params={"k": min(OOD_NEIGHBOURS, len(reference) - 1)})
    own = detector.fit_score(features=reference, verbose=False)
    scored = detector.score(features=others)
    return len(far_below(scored, own)) / len(others), len(far_below(own)) / len(reference)


def cross_class_duplicates(config: TrainConfig) -> list[tuple[str, str, int]]:
    """(path, the other path, hash distance) of near-duplicates filed under two classes, both ways round."""
    from vggtune.data import dataset, discovery, similar

    found = discovery.discover(config.data)
    items, _ = dataset.scan(found)
    pairs = [(a, b, d) for a, b, d in similar.near_duplicates(items) if a.label != b.label]
    return [(a.path, b.path, d) for a, b, d in pairs] + [(b.path, a.path, d) for a, b, d in pairs]
