"""What a run's validation split decides: the score each epoch is chosen by, the share of the fine-tuning
kept (--blend val), the temperature (--calibrate) and the two-class decision rule (--threshold val,
--target-recall, --cost-ratio); and the loss's class weights, which that score must respect."""

from __future__ import annotations

import math

import numpy as np
import torch

from vggtune.progress import say
from vggtune.training.config import CHOSEN_ON_VALIDATION, IMBALANCED
from vggtune.training.figures import Blend, Validation
from vggtune.training.metrics import (
    balanced_log_loss,
    best_threshold,
    threshold_for_cost,
    threshold_for_recall,
    threshold_interval,
)
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
    threshold (multi-label), or the two-class rule: its positive class, and the threshold given, or chosen for
    the best balanced accuracy (--threshold val) or to reach a recall of the positive class (--target-recall)."""
    if run.spec.task.several:
        return policy.labelling_at(label_thresholds(run, cut, policy))
    classes, config = run.spec.classes, run.config
    if len(classes) == 2 and config.positive_class is not None:
        policy = policy.with_positive(classes.index(config.positive_class))
    if config.target_recall is not None and len(classes) == 2:
        return recall_rule(run, cut, policy)
    if config.cost_ratio is not None and len(classes) == 2:
        return cost_rule(run, cut, policy)
    return policy.on_second(decision_threshold(run, cut, policy))


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
    than the default 0.5), else each label's with the best F1 on the validation split (drawn toward the labels'
    shared one where few images carry it: multilabel.best_thresholds) under the final scoring `policy` (0.5 for
    every label without validation images)."""
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
    say(
        f"thresholds: {chosen}; each label's best F1 on {len(labels)} validation images, drawn toward "
        "the labels' shared one where few carry it"
    )
    return thresholds


def decision_threshold(run: Run, cut: str, policy) -> float:
    """The two-class threshold the config names, or with --threshold val the one with the best balanced
    accuracy on the validation split under the final scoring `policy` (0.5 where it cannot be chosen)."""
    if run.config.threshold != CHOSEN_ON_VALIDATION:
        return policy.deciding_at(float(run.config.threshold)).threshold
    if len(run.spec.classes) != 2 or not len(run.labels["val"]):
        say("threshold: not chosen (two classes and validation images needed), left at 0.5")
        return 0.5
    _, labels, probabilities = scorer(run, policy).scored(run.sources.by_cut[cut]["val"], run.labels["val"], cut)
    threshold = best_threshold(labels, probabilities[:, 1])
    if threshold is None:
        say("threshold: the validation split holds one class, left at 0.5")
        return 0.5
    chosen = policy.on_second(threshold)
    say(
        f"rule: {chosen.rule_words(run.spec.classes)}, chosen on {len(labels)} validation images "
        "(the best balanced accuracy there)"
    )
    warn_if_few(run.spec.classes, labels, RULE_IMAGES, "the threshold", chosen)
    return threshold


def recall_rule(run: Run, cut: str, policy):
    """--target-recall R: the highest threshold on the positive class's probability that gives at least R of the
    validation split's positive images the positive class; its 95 % interval from a bootstrap of those images."""
    classes, wanted = run.spec.classes, float(run.config.target_recall or 0)
    scored = _validation_of_both(run, cut, policy, "--target-recall")
    if scored is None:
        return policy
    labels, probabilities = scored
    scores = probabilities[:, policy.positive][labels == policy.positive]
    chosen = policy.deciding_at(threshold_for_recall(scores, wanted))
    low, high = threshold_interval(scores, wanted)
    reached = float((decide_positive(chosen, probabilities) & (labels == policy.positive)).sum() / len(scores))
    say(
        f"rule: {chosen.rule_words(classes)}, chosen on {len(scores)} validation images of {classes[policy.positive]} "
        f"to reach a recall of {wanted:g} (there {reached:.3f}; the threshold's 95 % interval {low:.3g} to {high:.3g})"
    )
    warn_if_few(classes, labels, needed_for_recall(wanted), "the threshold", chosen, only=policy.positive)
    return chosen


def cost_rule(run: Run, cut: str, policy):
    """--cost-ratio C: the threshold on the positive class's probability with the least cost on the validation
    split, a missed positive image costing C false alarms."""
    classes, cost = run.spec.classes, float(run.config.cost_ratio or 1)
    scored = _validation_of_both(run, cut, policy, "--cost-ratio")
    if scored is None:
        return policy
    labels, probabilities = scored
    positive = labels == policy.positive
    chosen = policy.deciding_at(threshold_for_cost(positive, probabilities[:, policy.positive], cost))
    decided = decide_positive(chosen, probabilities)
    named = classes[policy.positive]
    say(
        f"rule: {chosen.rule_words(classes)}, chosen on {len(labels)} validation images for the least cost where a "
        f"missed {named} costs {cost:g} false alarms (there {int((~decided & positive).sum())} of "
        f"{int(positive.sum())} {named} missed, {int((decided & ~positive).sum())} false alarms)"
    )
    warn_if_few(classes, labels, RULE_IMAGES, "the threshold", chosen)
    return chosen


def _validation_of_both(run: Run, cut: str, policy, flag: str):
    """(labels, probabilities) of the validation split under `policy`, where it holds images of both classes;
    None, and said, where it does not (the rule stays as it is)."""
    classes, held = run.spec.classes, run.labels["val"]
    missing = [name for i, name in enumerate(classes) if not (held == i).any()] if len(held) else list(classes)
    if missing:
        where = "no validation images" if not len(held) else f"the validation split holds no {missing[0]} image"
        say(f"{flag}: {where} to choose the threshold on; the rule stays {policy.rule_words(classes)}")
        return None
    _, labels, probabilities = scorer(run, policy).scored(run.sources.by_cut[cut]["val"], held, cut)
    return labels, probabilities


# A rule set on a class's validation images is only as steady as the recall measured on them: near 0.9 that
# recall's 95 % interval is about +-0.06 on 100 images, +-0.12 on 25.
RULE_IMAGES = 100


def needed_for_recall(wanted: float) -> int:
    """Positive validation images a target recall needs: enough for a miss rate of 1 - R to show at least three
    misses (the rule of three), and at least RULE_IMAGES."""
    return max(RULE_IMAGES, math.ceil(3 / (1 - wanted)))


def decide_positive(policy, probabilities) -> np.ndarray:
    """Which images the rule gives the positive class."""
    return policy.decide(probabilities) == policy.positive


def warn_if_few(classes, labels, needed: int, what: str, rule, only: int | None = None) -> None:
    """One warning line where the validation split holds fewer than `needed` images of a class the rule was set on."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    short = [(classes[i], int(counts[i])) for i in ([only] if only is not None else range(len(classes)))]
    short = [(name, held) for name, held in short if held < needed]
    if not short:
        return
    fewest = min(held for _, held in short)
    spread = 1.96 * math.sqrt(0.09 / max(fewest, 1))
    held = ", ".join(f"{held} {name}" for name, held in short)
    say(
        f"warning: {what} was set on {held} validation images; a recall near 0.9 measured on {fewest} images "
        f"is +-{spread:.2f} (95 %), and about {needed} a class are needed for the rule to hold on new images; "
        f"the rule in force: {rule.rule_words(classes)}"
    )


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


# --blend (WiSE-FT, Wortsman et al., CVPR 2022): the fine-tuned parameters blended with those the fine-tuning
# started from (the pretrained block and the head-only stage's head), start + share * (tuned - start). 1 keeps
# the fine-tuning whole, 0 undoes it. One rate cannot serve every domain (BENCHMARKS.md section 28): on photos
# like ImageNet's the fine-tuning moves too far, on X-rays not far enough; the blend lets the validation split
# say how far to go, for a few validation passes. VGG has no batch norm whose statistics a blend would break.
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # the shares --blend val tries, each scored on the validation split


def starting_point(model) -> dict[str, torch.Tensor]:
    """A copy of the parameters the stage about to run will train, as they are before it."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def blend(run: Run, cut: str, start: dict[str, torch.Tensor]) -> Blend:
    """The model's trained parameters moved to the share `run.config.blend` names, or with `val` to the share
    of SHARES with the lowest validation loss (the larger share among equals; the fine-tuning whole without
    validation images)."""
    tuned = {name: p.detach().clone() for name, p in run.model.named_parameters() if name in start}
    wanted = run.config.blend
    if wanted != CHOSEN_ON_VALIDATION:
        _move(run.model, start, tuned, float(wanted))
        return Blend(float(wanted))
    losses = []
    for share in SHARES:
        _move(run.model, start, tuned, share)
        scored = validate(run, cut)
        if scored is None:
            _move(run.model, start, tuned, 1.0)
            say("blend: no validation images to choose it on; the fine-tuning kept whole")
            return Blend(1.0)
        losses.append((share, float(scored.loss)))
    ranked = [(share, loss if math.isfinite(loss) else math.inf) for share, loss in losses]
    best = min(loss for _, loss in ranked)
    share = max(share for share, loss in ranked if loss <= best)
    _move(run.model, start, tuned, share)
    chosen = Blend(share, tuple(losses))
    say(chosen.words())
    return chosen


def _move(model, start: dict, tuned: dict, share: float) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in start:
                parameter.copy_(torch.lerp(start[name].to(parameter.dtype), tuned[name], share))
