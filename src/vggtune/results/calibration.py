"""`vggtune calibrate RUN DATA`: the rule refitted on a few labelled images of the source the model is used on.

A model that ranks another source's images well can still decide badly there: the images changed, so its
probabilities are off by a scale and a shift. Calibrate scores a small labelled sample of the new source and
fits, by maximum a posteriori with priors that shrink toward the rule in force (small samples move it only
as far as they can show), what cross-validation within the sample chooses: nothing (the rule in force stays),
the offsets alone, or the scale too:
- one class an image: a logistic recalibration of the averaged log-probabilities, log_softmax(scale * log p
  + offsets) (for two classes, the logit scaled and shifted); the decision threshold stays the user's, now on
  probabilities that are right for that source;
- several labels an image: each label's threshold (its best F1 on the sample, drawn toward the labels' shared
  one where few images carry it).
The "after" figures are out of sample (each fold of the sample scored by a choice and fit on the others); a bootstrap
of the sample says how far the fitted rule could move. The rule goes into model.json; the one it replaced is
kept by name and `--restore NAME` brings it back.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.model_selection import StratifiedKFold

from vggtune.deploy.predict import Predictor
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.results.evaluated import Evaluated, from_training, score
from vggtune.results.modelcard import write_model_card
from vggtune.training import figures as scored
from vggtune.training.metrics import wilson_interval
from vggtune.training.multilabel import best_thresholds

if TYPE_CHECKING:  # annotations only
    from vggtune.model.policy import ScoringPolicy
    from vggtune.training.rundir import RunDir

MIN_A_CLASS = 5  # images of each class (each label's carriers and others) below which nothing can be said
FOLDS = 5  # the sample's folds for the out-of-sample "after"
DRAWS = 200  # bootstrap resamples of the sample for the rule's spread
SCALE_PRIOR = 0.5  # standard deviation of log(scale) around 1 (the rule in force)
OFFSET_PRIOR = 2.0  # standard deviation of each offset around 0, in logits (2: a threshold of 0.5 may move to 0.88)


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` did: the sample, the figures before (the rule in force) and after (out of sample), the
    rules in words, how far the fitted rule could move, and the name the rule it replaced is kept under."""

    run: str
    data: str
    per_class: dict[str, int]
    before: scored.Figures
    after: scored.Figures
    rule_before: str
    rule_after: str
    spread: str
    kept_as: str
    name: str
    rejected: tuple[tuple[str, str], ...] = ()  # (file, why) of the sample's files that could not be read

    def rows(self) -> list[tuple[str, float | None, tuple | None, float | None, tuple | None]]:
        """(figure, before, its 95 % interval, after, its interval): the headline figures, and each class's
        recall (two classes: sensitivity and specificity; several labels: micro F1 and mAP)."""
        rows: list[tuple[str, float | None, tuple | None, float | None, tuple | None]]
        rows = [("images", self.before.n, None, self.after.n, None)]
        rows.append(
            (
                self.before.accuracy_name,
                self.before.accuracy,
                tuple(self.before.accuracy_95),
                self.after.accuracy,
                tuple(self.after.accuracy_95),
            )
        )
        if self.before.task == "multi-label":
            for key, name in (("f1_micro", "F1 (micro)"), ("map", "mAP")):
                rows.append(
                    (
                        name,
                        getattr(self.before, key),
                        self.before.own_intervals().get(key),
                        getattr(self.after, key),
                        self.after.own_intervals().get(key),
                    )
                )
        else:
            rows.append(("balanced accuracy", self.before.balanced_accuracy, None, self.after.balanced_accuracy, None))
            for label, count in self.per_class.items():
                recall = [figures.per_class[label].recall for figures in (self.before, self.after)]  # type: ignore[union-attr]
                bound = [tuple(wilson_interval(round(r * count), count)) for r in recall]
                rows.append((f"recall of {label}", recall[0], bound[0], recall[1], bound[1]))
        rows.append(("log loss", self.before.log_loss, None, self.after.log_loss, None))
        return rows

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "data": self.data,
            "per_class": self.per_class,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "rule_before": self.rule_before,
            "rule_after": self.rule_after,
            "spread": self.spread,
            "kept_as": self.kept_as,
            "name": self.name,
            "rejected": [{"path": display_path(path), "reason": reason} for path, reason in self.rejected],
        }


def calibrate(folder: RunDir, data: str, name: str | None = None, engine: str = "auto") -> Calibration:
    """Fits the rule on the labelled sample `data`, writes it into the run's model.json (the rule in force kept
    by name), and returns the figures before and after."""
    predictor = Predictor(folder.path, engine=engine)
    sample = score(predictor, folder, data)
    spec = predictor.spec
    counts = _check_sample(sample, data)
    if spec.task.several:
        policy, after, spread = _fit_labels(sample, spec.scoring)
    else:
        policy, after, spread = _fit_classes(sample, spec.scoring)
    name = name or f"calibrated {datetime.date.today().isoformat()} on {display_path(data)}"
    described = {
        "name": name,
        "data": display_path(data),
        "per_class": counts,
        "method": "thresholds a label (best F1)" if spec.task.several else "logistic recalibration (MAP)",
        "before": scored.summary(sample.figures),
        "after_out_of_sample": scored.summary(after),
        "spread": spread,
    }
    updated = spec.ruled_by(policy, described)
    updated.save(folder.path)
    _rewrite_card(folder, engine)
    return Calibration(
        str(folder.path),
        display_path(data),
        counts,
        sample.figures,
        after,
        spec.rule,
        updated.rule,
        spread,
        spec.rule_name,
        name,
        tuple(sample.rejected),
    )


def restore(folder: RunDir, name: str) -> str:
    """Puts an earlier rule back in force; returns it in words."""
    spec = folder.model_spec().restoring(name)
    spec.save(folder.path)
    _rewrite_card(folder)
    return spec.rule


def _rewrite_card(folder: RunDir, engine: str = "auto") -> None:
    """The model card (README.md) says which rule is in force and what it was fitted on: written anew."""
    if folder.model_card_file().is_file():
        write_model_card(folder, from_training(folder, Predictor(folder.path, engine=engine)))


def _check_sample(sample: Evaluated, data: str) -> dict[str, int]:
    """Images a class (a label's carriers); refused in one line where a class is missing or too few to fit on."""
    counts = sample.counts()
    if sample.task.several:
        short = {label: n for label, n in counts.items() if min(n, len(sample.rows) - n) < MIN_A_CLASS}
        what = "images with and without each label"
    else:
        short = {label: n for label, n in counts.items() if n < MIN_A_CLASS}
        what = "images of each class"
    if short:
        held = ", ".join(f"{label} {n}" for label, n in short.items())
        raise UserError(
            f"calibrate: {display_path(data)} holds too few images to fit a rule on ({held}); allowed: at least "
            f"{MIN_A_CLASS} {what} (tens are better: the figures printed say how far the rule could move)"
        )
    return counts


def _fit_classes(sample: Evaluated, policy: ScoringPolicy) -> tuple[ScoringPolicy, scored.Figures, str]:
    """The recalibration fitted on the whole sample, the out-of-fold figures, and its spread in words."""
    log_p, labels = np.log(np.clip(sample.probabilities, 1e-12, 1)), sample.labels
    method, scale, offsets = chosen_fit(log_p, labels)
    out_of_fold = np.zeros_like(log_p)
    folds = StratifiedKFold(min(FOLDS, int(np.bincount(labels).min())), shuffle=True, random_state=1)
    for train, held in folds.split(log_p, labels):  # the choice made again within each fold: out of sample
        _, fold_scale, fold_offsets = chosen_fit(log_p[train], labels[train])
        out_of_fold[held] = recalibrate(log_p[held], fold_scale, fold_offsets)
    after = scored.figures(
        sample.task, labels, np.exp(out_of_fold), sample.classes, sample.threshold, positive=sample.positive
    )
    total_scale, total_offsets = _composed(policy, scale, offsets, len(sample.classes))
    done = {"keep": "the rule in force kept", "offsets": "the offsets refitted"}.get(
        method, "the scale and offsets refitted"
    )
    spread = f"{done} (chosen by cross-validation within the sample); {_spread(log_p, labels, sample)}"
    if method == "keep":
        return policy, after, spread
    return policy.recalibrating(total_scale, total_offsets), after, spread


# What may be refitted, simplest first: nothing (the rule in force), the offsets alone (a shift of the class
# balance), or the scale too (how sure the model is). The sample chooses by cross-validation within it.
METHODS = ("keep", "offsets", "scale and offsets")


def chosen_fit(log_p: np.ndarray, labels: np.ndarray) -> tuple[str, float, np.ndarray]:
    """(method, scale, offsets): the METHODS entry with the best out-of-fold log-likelihood on the sample (the
    simpler where it is as good), fitted on all of it. A rule that is already right stays as it is."""
    folds = StratifiedKFold(min(FOLDS, int(np.bincount(labels).min())), shuffle=True, random_state=0)
    scores = dict.fromkeys(METHODS, 0.0)
    for train, held in folds.split(log_p, labels):
        for method in METHODS:
            scale, offsets = fit_method(method, log_p[train], labels[train])
            scores[method] += recalibrate(log_p[held], scale, offsets)[np.arange(len(held)), labels[held]].sum()
    best = max(scores.values())
    method = next(m for m in METHODS if scores[m] >= best - 0.5)  # half a nat over the sample: no better
    return (method, *fit_method(method, log_p, labels))


def fit_method(method: str, log_p: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    if method == "keep":
        return 1.0, np.zeros(log_p.shape[1])
    return fit_recalibration(log_p, labels, free_scale=method == "scale and offsets")


def fit_recalibration(log_p: np.ndarray, labels: np.ndarray, free_scale: bool = True) -> tuple[float, np.ndarray]:
    """scale and offsets (the first class's 0) maximising the likelihood of log_softmax(scale * log p + offsets)
    under priors centred on (1, 0): log(scale) ~ N(0, SCALE_PRIOR^2), each offset ~ N(0, OFFSET_PRIOR^2); the
    scale held at 1 unless `free_scale`."""
    n_classes = log_p.shape[1]

    def loss(theta):
        theta = theta if free_scale else np.concatenate([[0.0], theta])
        log_q = recalibrate(log_p, np.exp(theta[0]), np.concatenate([[0.0], theta[1:]]))
        prior = theta[0] ** 2 / (2 * SCALE_PRIOR**2) + (theta[1:] ** 2).sum() / (2 * OFFSET_PRIOR**2)
        return -log_q[np.arange(len(labels)), labels].sum() + prior

    fitted = minimize(loss, np.zeros(n_classes if free_scale else n_classes - 1), method="L-BFGS-B")
    theta = fitted.x if free_scale else np.concatenate([[0.0], fitted.x])
    return float(np.exp(theta[0])), np.concatenate([[0.0], theta[1:]])


def recalibrate(log_p: np.ndarray, scale: float, offsets: np.ndarray) -> np.ndarray:
    """ScoringPolicy.recalibrated in NumPy, for the fits: log_softmax(scale * log p + offsets)."""
    return log_softmax(scale * log_p + offsets, axis=1)


def _composed(policy: ScoringPolicy, scale: float, offsets: np.ndarray, n_classes: int) -> tuple[float, tuple]:
    """The recalibration on top of the one in force: log_softmax(s2 * log_softmax(s1 L + b1) + b2) is
    log_softmax(s2 s1 L + s2 b1 + b2), softmax being blind to a constant a row."""
    earlier = np.asarray(policy.offsets or (0.0,) * n_classes)
    return policy.scale * scale, tuple(scale * earlier + offsets)


def _spread(log_p: np.ndarray, labels: np.ndarray, sample: Evaluated) -> str:
    """How far the fitted rule moves over bootstrap resamples of the sample (within each class), in words: for two
    classes the positive class's probability, as scored before, at which the rule changes its answer."""
    rng = np.random.default_rng(0)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    fits = []
    for _ in range(DRAWS):
        pick = np.concatenate([rows[rng.integers(len(rows), size=len(rows))] for rows in members])
        fits.append(chosen_fit(log_p[pick], labels[pick])[1:])
    if len(sample.classes) != 2:
        offsets = np.array([offsets for _, offsets in fits])
        low, high = np.percentile(offsets, [2.5, 97.5], axis=0)
        ranges = ", ".join(f"{c} {lo:+.2f} to {hi:+.2f}" for c, lo, hi in zip(sample.classes[1:], low[1:], high[1:]))
        return f"the offsets against {sample.classes[0]} over {DRAWS} resamples of the sample (95 %): {ranges}"
    fitted = chosen_fit(log_p, labels)[1:]
    points = np.array([_turning_point(fit, sample) for fit in [fitted, *fits]])
    low, high = np.percentile(points[1:], [2.5, 97.5])
    named = sample.classes[sample.positive]
    return (
        f"the rule now gives {named} from P({named}) {points[0]:.3g} as the model scored before "
        f"(95 % of {DRAWS} resamples of the sample: {low:.3g} to {high:.3g})"
    )


def _turning_point(fit: tuple[float, np.ndarray], sample: Evaluated) -> float:
    """The positive class's probability, before recalibration, where the recalibrated one meets the threshold."""
    scale, offsets = fit
    threshold = sample.threshold  # on the second class's recalibrated probability
    z_second = (np.log(threshold / (1 - threshold)) - offsets[1]) / scale
    p_second = 1 / (1 + np.exp(-z_second))
    return float(p_second if sample.positive else 1 - p_second)


def _fit_labels(sample: Evaluated, policy: ScoringPolicy) -> tuple[ScoringPolicy, scored.Figures, str]:
    """Each label's threshold with its best F1 on the sample (multilabel.best_thresholds); out-of-fold figures,
    the thresholds' spread."""
    targets, probabilities = sample.labels, sample.probabilities
    thresholds = best_thresholds(targets, probabilities)
    folds = np.arange(len(targets)) % FOLDS
    np.random.default_rng(0).shuffle(folds)
    held_thresholds = np.zeros_like(probabilities)
    for fold in range(FOLDS):
        held = folds == fold
        held_thresholds[held] = best_thresholds(targets[~held], probabilities[~held])
    # out of sample: each image decided at its fold's thresholds, as the probabilities moved so that those
    # thresholds sit at 0.5 (the order within a fold kept)
    logit = np.log(np.clip(probabilities, 1e-12, 1 - 1e-12)) - np.log(np.clip(1 - probabilities, 1e-12, 1))
    moved = 1 / (1 + np.exp(-(logit - np.log(held_thresholds / (1 - held_thresholds)))))
    after = scored.figures(
        sample.task, targets, moved, sample.classes, thresholds=(0.5,) * len(sample.classes), intervals=True
    )
    rng = np.random.default_rng(0)
    drawn = np.array(
        [
            best_thresholds(targets[pick], probabilities[pick])
            for pick in (rng.integers(len(targets), size=len(targets)) for _ in range(DRAWS))
        ]
    )
    low, high = np.percentile(drawn, [2.5, 97.5], axis=0)
    ranges = ", ".join(
        f"{c} {t:.3g} ({lo:.3g} to {hi:.3g})" for c, t, lo, hi in zip(sample.classes, thresholds, low, high)
    )
    return policy.labelling_at(thresholds), after, f"each label's threshold (95 % of {DRAWS} resamples): {ranges}"
