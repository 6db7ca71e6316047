"""What a run's validation split decides: the score each epoch is chosen by, the temperature
(--calibrate) and the two-class decision threshold (--threshold val); and the loss's class weights,
which that score must respect."""

from __future__ import annotations

from vggtune.progress import say
from vggtune.training.config import CHOSEN_ON_VALIDATION, IMBALANCED
from vggtune.training.figures import Validation
from vggtune.training.metrics import balanced_log_loss, best_threshold
from vggtune.training.multilabel import best_thresholds, binary_log_loss
from vggtune.training.objective import class_weights, positive_weights
from vggtune.training.scoring import Scorer
from vggtune.training.session import Run


def weights_of(run: Run):
    """The loss's weight per class (objective.class_weights), from the training split's labels; a multi-label
    run's weight of each label's positives (objective.positive_weights)."""
    if run.spec.task.several:
        return positive_weights(run.config.class_weights, run.labels["train"])
    return class_weights(run.config.class_weights, run.labels["train"], len(run.spec.classes), IMBALANCED)


def chosen_rule(run: Run, cut: str, policy):
    """The final scoring `policy` with the decision rule its task fits on the validation split: each label's
    threshold (multi-label), or the two-class threshold."""
    if run.spec.task.several:
        return policy.labelling_at(label_thresholds(run, cut, policy))
    return policy.deciding_at(decision_threshold(run, cut, policy))


def scorer(run: Run, policy=None) -> Scorer:
    """The run's model scored under `policy` (default: the one model.json will hold)."""
    return Scorer(run.model, run.runtime, list(run.spec.classes), run.config.batch_size, policy or run.spec.scoring)


def calibrated(run: Run, cut: str):
    """Temperature scaling: the run's scoring policy at the temperature that minimises the validation log loss."""
    if not len(run.labels["val"]):
        say("calibrate: no validation images, temperature left at 1")
        return run.spec.scoring
    final = scorer(run)
    positions, logits = final.view_logits(run.sources.by_cut[cut]["val"], len(run.labels["val"]), cut)
    temperature = final.fit_temperature(logits, run.labels["val"][positions].numpy())
    say(f"calibrate: temperature {temperature:.3f}, fitted on {len(positions)} validation images")
    return run.spec.scoring.at(temperature)


def label_thresholds(run: Run, cut: str, policy) -> tuple[float, ...]:
    """A multi-label run's threshold a label: --threshold's number for every label where one is given (other
    than the default 0.5), else each label's with the best F1 on the validation split under the final
    scoring `policy` (0.5 for every label without validation images)."""
    given = run.config.threshold
    n_labels = len(run.spec.classes)
    if given != CHOSEN_ON_VALIDATION and float(given) != 0.5:
        return (float(given),) * n_labels
    if not len(run.labels["val"]):
        say("thresholds: no validation images, 0.5 for every label")
        return (0.5,) * n_labels
    _, labels, probabilities = scorer(run, policy).scored(run.sources.by_cut[cut]["val"], run.labels["val"], cut)
    thresholds = best_thresholds(labels, probabilities)
    chosen = ", ".join(f"{name} {value:.3f}" for name, value in zip(run.spec.classes, thresholds))
    say(f"thresholds: {chosen}; each label's best F1 on {len(labels)} validation images")
    return thresholds


def decision_threshold(run: Run, cut: str, policy) -> float:
    """The two-class threshold the config names, or with --threshold val the one with the best balanced
    accuracy on the validation split under the final scoring `policy` (0.5 where it cannot be chosen)."""
    if run.config.threshold != CHOSEN_ON_VALIDATION:
        return float(run.config.threshold)
    if len(run.spec.classes) != 2 or not len(run.labels["val"]):
        say("threshold: not chosen (two classes and validation images needed), left at 0.5")
        return 0.5
    _, labels, probabilities = scorer(run, policy).scored(run.sources.by_cut[cut]["val"], run.labels["val"], cut)
    threshold = best_threshold(labels, probabilities[:, 1])
    if threshold is None:
        say("threshold: the validation split holds one class, left at 0.5")
        return 0.5
    say(
        f"threshold: {threshold:.4f} on the probability of {run.spec.classes[1]}, chosen on "
        f"{len(labels)} validation images (the best balanced accuracy there)"
    )
    return threshold


def validate(run: Run, cut: str) -> Validation | None:
    """The epoch's validation loss and accuracy, of the clean view alone: epochs are chosen as the classic
    recipe chooses them, and test-time augmentation changes only the final scores. With class weights the
    loss is the balanced log loss (each class's mean, averaged), which those weights minimise."""
    if not len(run.labels["val"]):
        return None
    clean = scorer(run, run.spec.scoring.clean())
    _, labels, probabilities = clean.scored(run.sources.by_cut[cut]["val"], run.labels["val"], cut)
    if run.spec.task.several:  # the mean binary cross-entropy, what training minimises; label accuracy
        entropy = binary_log_loss(labels, probabilities)
        accuracy = float(((probabilities > 0.5) == (labels == 1)).mean())
        return Validation(float(entropy), accuracy, float(entropy), accuracy)
    result = clean.summary(labels, probabilities)
    balanced = balanced_log_loss(labels, probabilities)
    loss = _number(result.log_loss) if weights_of(run) is None else balanced
    return Validation(loss, _number(result.accuracy), balanced, _number(result.balanced_accuracy))


def _number(value: float | None) -> float:
    """A figure that Metrics leaves None where it is not a number (a set without a class), as NaN."""
    return float("nan") if value is None else value
