"""Is a batch of new images like the training images? Said without labels, where `predict` and `evaluate` see
a batch: the share of them beyond the training images' out-of-distribution fence (their embeddings far out
from a sample of the training images', by the audit's score and fence), against the share of training images
themselves beyond it; and the predicted class mix against the training split's. Where either differs beyond
noise (a one-sided binomial or chi-square test at P_VALUE) and by a margin that matters, one warning line names
`vggtune calibrate`: a model's ranking can carry to another source while its rule does not.

The training images' embeddings are computed on the first check (a sample of SHIFT_SAMPLE, where the training
images are at hand) and kept in the run folder (RunDir.shift_reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import binomtest, chisquare, mannwhitneyu

from vggtune.results.auditrecords import OOD_NEIGHBOURS
from vggtune.results.auditscores import embed, far_below
from vggtune.training.metrics import wilson_interval

if TYPE_CHECKING:  # annotations only
    from vggtune.deploy.predict import Predictor
    from vggtune.training.rundir import RunDir

MIN_BATCH = 20  # fewer images say nothing either way: no check
SHIFT_SAMPLE = 200  # training images embedded once for the fence, and at most as many of a batch
P_VALUE = 0.001  # a check that runs on every batch must stay quiet on images like the training images
FAR_MARGIN = 0.10  # ... and speak only of a difference that matters: ten points more far out
# or the batch as a whole farther from the training images than they are from each other: the chance that a
# batch image is farther from its nearest training images than a training image is from its own
FARTHER = 0.70
MIX_MARGIN = 0.15  # or a predicted class mix that moved by this much (total variation distance)


@dataclass(frozen=True)
class Shift:
    """One batch against the training images: how many were checked, the share of them and of the training
    sample beyond the fence, the predicted mix against training's, the two tests' p-values, and the warning."""

    images: int
    far_share: float
    training_far_share: float
    far_p: float
    farther: float  # the chance a batch image lies farther out than a training image (0.5: alike)
    farther_p: float
    mix: dict[str, float]
    training_mix: dict[str, float]
    mix_p: float | None
    warning: str | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def check(
    folder: RunDir, predictor: Predictor, paths: list[str], predicted: list[str], embedded: list | None = None
) -> Shift | None:
    """The batch `paths` (image files, with the class each was given; `embedded`: their embeddings where the
    prediction kept them) against the training images; None where the batch is too small, the model is
    multi-label, or no training image can be read here."""
    if len(paths) < MIN_BATCH or predictor.spec.task.several:
        return None
    reference = training_embeddings(folder, predictor)
    if reference is None:
        return None
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(paths), min(SHIFT_SAMPLE, len(paths)), replace=False))
    if embedded is not None and len(embedded) == len(paths):
        batch = np.stack([embedded[i] for i in chosen])
    else:
        batch = embed(predictor, [paths[i] for i in chosen], "shift check: embeddings")
    if int((~np.isnan(batch).any(axis=1)).sum()) < MIN_BATCH:
        return None
    splits = folder.saved_splits()
    return compare(reference, batch, predicted, splits.classes, np.asarray(splits.counts("train")))


def compare(reference: np.ndarray, batch: np.ndarray, predicted: list[str], classes: list[str], counts) -> Shift:
    """The three tests, two on the embeddings and one on the classes given (benchmarks/shift_warning.py calls
    this directly)."""
    own_scores, scores = out_of_distribution(reference, batch)
    checked = len(scores)
    far, own = len(far_below(scores, own_scores)) / checked, len(far_below(own_scores)) / len(own_scores)
    # the training images' own share, at the top of its 95 % interval: the fence was fitted on few of them
    expected = max(float(wilson_interval(round(own * len(own_scores)), len(own_scores))[1]), 1e-3)
    far_p = float(binomtest(round(far * checked), checked, expected, alternative="greater").pvalue)
    # a lower score is farther out: how often a batch image's is below a training image's (ties half)
    ranked = mannwhitneyu(own_scores, scores, alternative="greater")
    farther, farther_p = float(ranked.statistic / (len(own_scores) * checked)), float(ranked.pvalue)
    training_mix = counts / counts.sum()
    observed = np.array([predicted.count(name) for name in classes], dtype=np.float64)
    mix = observed / max(observed.sum(), 1)
    mix_p = float(chisquare(observed, training_mix * observed.sum()).pvalue) if observed.sum() else None
    reasons = []
    if far_p < P_VALUE and far - expected >= FAR_MARGIN:
        reasons.append(
            f"{far:.0%} of {checked} lie beyond the training images' out-of-distribution fence "
            f"({own:.0%} of the training images do)"
        )
    elif farther_p < P_VALUE and farther >= FARTHER:
        reasons.append(
            f"they lie farther from the training images than those lie from each other ({farther:.0%} of pairs "
            f"of one of them and a training image, against 50 % for images like them)"
        )
    if mix_p is not None and mix_p < P_VALUE and 0.5 * np.abs(mix - training_mix).sum() >= MIX_MARGIN:
        said = ", ".join(f"{c} {m:.0%}" for c, m in zip(classes, mix))
        trained = ", ".join(f"{c} {m:.0%}" for c, m in zip(classes, training_mix))
        reasons.append(f"the classes given ({said}) are not the training mix ({trained})")
    warning = None
    if reasons:
        warning = (
            f"these {len(predicted)} images differ from the training images: {'; '.join(reasons)}. The model may "
            "rank them well and still decide badly: label a few tens of them and run `vggtune calibrate RUN "
            "THEM` (docs: When your images change)"
        )
    return Shift(
        checked,
        float(far),
        float(own),
        far_p,
        farther,
        farther_p,
        dict(zip(classes, mix.tolist())),
        dict(zip(classes, training_mix.tolist())),
        mix_p,
        warning,
    )


def out_of_distribution(reference: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's out-of-distribution scores (exp of minus the mean distance to the k nearest training images;
    lower is farther out) of the training sample itself (each against the others) and of the batch."""
    from cleanlab.outlier import OutOfDistribution

    reference, batch = reference[~np.isnan(reference).any(axis=1)], batch[~np.isnan(batch).any(axis=1)]
    detector = OutOfDistribution(params={"k": min(OOD_NEIGHBOURS, len(reference) - 1)})
    own = detector.fit_score(features=reference, verbose=False)
    return own, detector.score(features=batch)


def training_embeddings(folder: RunDir, predictor: Predictor) -> np.ndarray | None:
    """A sample of the training images' embeddings: kept in the run folder after the first time."""
    kept = folder.shift_reference()
    if kept is not None:
        return kept
    splits = folder.splits()
    if splits is None:
        return None
    paths = [item.path for item in splits.train]
    rng = np.random.default_rng(0)
    paths = [paths[i] for i in sorted(rng.choice(len(paths), min(SHIFT_SAMPLE, len(paths)), replace=False))]
    embeddings = embed(predictor, paths, "shift check: the training images' embeddings, once")
    embeddings = embeddings[~np.isnan(embeddings).any(axis=1)]
    if len(embeddings) < MIN_BATCH:
        return None  # the training images are not here (another machine): nothing to measure against
    folder.write_shift_reference(embeddings, len(paths))
    return embeddings
