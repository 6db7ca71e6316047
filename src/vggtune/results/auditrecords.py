"""The audit's records: a flagged image (`Finding`), the out-of-fold scores it is judged by (`Scored`), what
`vggtune data audit` returns (`AuditResult`, with the `CleanedManifest` it may write). Their own module so
that audit.py, auditscores.py and auditpage.py share them without importing one another in a circle."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vggtune.training.rundir import PredictionRow

OOD_NEIGHBOURS = 10  # cleanlab's k for the feature-based score (fewer on a small dataset)
OOD_FENCE = 3.0  # flagged beyond Q3 + 3 IQR of -log(score): Tukey's "far out"

LABEL, OFF_TOPIC, CONFLICT = "label", "out-of-distribution", "cross-class-duplicate"


@dataclass(frozen=True)
class Finding:
    """One flagged image: what it is labelled, what its out-of-fold model says, and why it is flagged."""

    path: str
    given: str
    suggested: str  # the out-of-fold model's class
    given_probability: float  # self-confidence: the out-of-fold probability of the given label
    issues: tuple[str, ...]
    ood_score: float  # cleanlab's, in [0, 1]: low is unlike every other image
    fold: str
    note: str = ""  # the other image of a cross-class near-duplicate


@dataclass(frozen=True)
class CleanedManifest:
    """The manifest `--write-manifest` wrote: where, how many images it kept, relabelled and left out."""

    path: str
    images: int
    relabelled: int
    left_out: int


@dataclass(frozen=True)
class AuditResult:
    """What `vggtune data audit` returns: how many images were flagged for each issue, and whether the
    out-of-fold models beat always answering the largest class (else no label issue is flagged).
    `to_dict()` is audit.json."""

    data: str
    images: int
    classes: list[str]
    folds: int
    cv: str  # the cross-validation folder the scores come from
    flagged: int
    by_issue: dict[str, int]  # LABEL, OFF_TOPIC, CONFLICT -> images
    accuracy_out_of_fold: float | None
    majority_class: str
    majority_share: float
    beats_majority_p: float
    label_issues_trusted: bool
    manifest: CleanedManifest | None = None

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values.pop("manifest")
        return {
            **values,
            "method": METHOD,
            **({"manifest": dataclasses.asdict(self.manifest)} if self.manifest else {}),
        }


METHOD = {
    "label": "cleanlab.filter.find_label_issues, ranked by self_confidence",
    "out_of_distribution": f"cleanlab.outlier.OutOfDistribution on the fold model's pooled "
    f"features, k={OOD_NEIGHBOURS}, -log(score) beyond Q3 + {OOD_FENCE} IQR",
    "cross_class_duplicate": "perceptual-hash near-duplicates under two classes",
}


@dataclass(frozen=True)
class Scored:
    """The out-of-fold scores of every usable image, in cv_predictions.csv's order."""

    classes: list[str]
    rows: list[PredictionRow]
    labels: np.ndarray
    probabilities: np.ndarray
