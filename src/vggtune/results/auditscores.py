"""The audit's three searches over out-of-fold scores (audit.py runs them): label issues by cleanlab's
self-confidence ranking, images unlike every other by cleanlab's out-of-distribution score on the
fold models' embeddings, and near-duplicates filed under two classes."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vggtune.progress import progress

if TYPE_CHECKING:                      # annotations only
    from vggtune.results.audit import Scored
    from vggtune.training.config import TrainConfig
    from vggtune.training.rundir import PredictionRow

OOD_NEIGHBOURS = 10           # cleanlab's k for the feature-based score (fewer on a small dataset)
OOD_FENCE = 3.0               # flagged beyond Q3 + 3 IQR of -log(score): Tukey's "far out"


def label_issues(scored: Scored) -> np.ndarray:
    """Positions of the likely mislabelled images, surest first (cleanlab's self-confidence ranking)."""
    from cleanlab.filter import find_label_issues
    if len(set(scored.labels.tolist())) < 2:
        return np.zeros(0, dtype=np.int64)
    probabilities = scored.probabilities / scored.probabilities.sum(axis=1, keepdims=True)
    return np.asarray(find_label_issues(scored.labels, probabilities, return_indices_ranked_by="self_confidence",
                                        n_jobs=1), dtype=np.int64)


class FoldModels:
    """Each fold's Predictor, loaded on first use and kept: the embeddings and the page's Grad-CAM
    overlays both need them."""

    def __init__(self, cv_folder: Path):
        self.cv_folder, self.loaded = Path(cv_folder), {}

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
        scores[readable] = OutOfDistribution(params={"k": neighbours}).fit_score(features=embeddings[readable],
                                                                                   verbose=False)
    return scores


def fold_embeddings(rows: list[PredictionRow], models: FoldModels) -> np.ndarray:
    """Each image's embedding (Predictor.embeddings) by its own fold's model; NaN rows for unreadable images."""
    import torch
    from vggtune.features.extract import decode_clean
    embeddings: np.ndarray | None = None
    bar = progress(total=len(rows), desc="audit: embeddings", unit="image")
    for fold in sorted({row.split for row in rows}):
        predictor = models[fold]
        positions = [i for i, row in enumerate(rows) if row.split == fold]
        for start in range(0, len(positions), predictor.batch_size):
            batch = positions[start:start + predictor.batch_size]
            views = [(i, decode_clean(rows[i].path, predictor.preprocessing)[0]) for i in batch]
            good = [(i, view) for i, view in views if view is not None]
            if good:
                vectors = predictor.embeddings(torch.stack([view for _, view in good])).numpy()
                if embeddings is None:
                    embeddings = np.full((len(rows), vectors.shape[1]), np.nan, dtype=np.float32)
                embeddings[[i for i, _ in good]] = vectors
            bar.update(len(batch))
    bar.close()
    return embeddings if embeddings is not None else np.full((len(rows), 1), np.nan, dtype=np.float32)


def far_below(scores: np.ndarray) -> np.ndarray:
    """Positions far out among the scores: -log(score) (cleanlab's score is exp(-distance / t), which
    squeezes the far ones together near 0) above Q3 + OOD_FENCE x IQR."""
    distances = -np.log(np.clip(scores, 1e-300, 1))
    valid = distances[~np.isnan(distances)]
    if len(valid) < 4:
        return np.zeros(0, dtype=np.int64)
    q1, q3 = np.percentile(valid, [25, 75])
    return np.flatnonzero(np.nan_to_num(distances, nan=-np.inf) > q3 + OOD_FENCE * (q3 - q1))


def cross_class_duplicates(config: TrainConfig) -> list[tuple[str, str, int]]:
    """(path, the other path, hash distance) of near-duplicates filed under two classes, both ways round."""
    from vggtune.data import dataset, similar
    found = dataset.discover(config.data)
    items, _ = dataset.scan(found)
    pairs = [(a, b, d) for a, b, d in similar.near_duplicates(items) if a.label != b.label]
    return [(a.path, b.path, d) for a, b, d in pairs] + [(b.path, a.path, d) for a, b, d in pairs]
