"""The report's numbers: bootstrap intervals, curves, calibration, most-confused pairs."""
import numpy as np
import pytest

from vggtune.results import analysis
from vggtune.training.metrics import classification_metrics, roc_auc


def test_intervals_hold_the_estimate_and_narrow_with_more_images():
    rng = np.random.default_rng(0)
    def draw(n):
        labels = rng.integers(0, 2, n)
        p = np.clip(labels * 0.4 + rng.normal(0.3, 0.25, n), 0.01, 0.99)
        return labels, np.stack([1 - p, p], 1)
    small, large = draw(60), draw(2000)
    small_bounds, large_bounds = analysis.intervals(*small, ["a", "b"]), analysis.intervals(*large, ["a", "b"])
    estimate = classification_metrics(*large, ["a", "b"])
    for key in ("accuracy", "f1", "roc_auc", "log_loss"):
        assert large_bounds.of(key).low <= getattr(estimate, key) <= large_bounds.of(key).high, key
        width = lambda bounds: bounds.of(key).high - bounds.of(key).low  # noqa: E731
        assert 0 < width(large_bounds) < width(small_bounds), key


def independent_macro_f1(labels, predicted, n_classes: int) -> float:
    """Macro F1 from its definition, one class at a time, apart from metrics.py."""
    scores = []
    for c in range(n_classes):
        tp = sum(1 for y, p in zip(labels, predicted) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predicted) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predicted) if y == c and p != c)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / n_classes


def test_every_interval_holds_its_estimate_with_many_classes_and_few_images():
    """37 classes of 2 test images: a plain resample leaves classes out and scored them 0, which put
    macro-F1's whole interval below its estimate (0.7252 against 0.3656-0.5818 in a report)."""
    rng = np.random.default_rng(3)
    classes = [f"breed{i}" for i in range(37)]
    labels = np.repeat(np.arange(37), 2)
    predicted = np.where(rng.random(len(labels)) < 0.75, labels, rng.integers(0, 37, len(labels)))
    probabilities = np.full((len(labels), 37), 0.2 / 36)
    probabilities[np.arange(len(labels)), predicted] = 0.8
    estimate = independent_macro_f1(labels.tolist(), predicted.tolist(), 37)
    assert estimate == pytest.approx(classification_metrics(labels, probabilities, classes).f1_macro)
    bounds = analysis.intervals(labels, probabilities, classes)
    assert bounds.f1_macro.low <= estimate <= bounds.f1_macro.high
    assert bounds.f1_macro.high - bounds.f1_macro.low > 0.05
    loss = float(np.mean(-np.log(probabilities[np.arange(len(labels)), labels])))
    assert bounds.log_loss.low <= loss <= bounds.log_loss.high
    assert bounds.f1 is None and bounds.roc_auc is None                          # two-class figures only


def test_a_degenerate_interval_says_so():
    """Six test images, all right: every resample scores 1, and the text says there is no interval."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([[0.9, 0.1]] * 3 + [[0.2, 0.8]] * 3)
    bounds = analysis.intervals(labels, probabilities, ["cat", "dog"])
    assert bounds.f1 == bounds.roc_auc == (1.0, 1.0) and bounds.f1.constant
    assert analysis.describe_interval(bounds.f1) == "none: every resample gives 1.0000 (too few test images to vary)"
    assert not bounds.accuracy.constant                                       # Wilson's is never one value
    assert analysis.describe_interval((0.25, 0.5)) == "0.2500 to 0.5000"


def test_intervals_to_dict_is_the_json_form_in_figure_order():
    labels = np.array([0, 1] * 20)
    probabilities = np.array([[0.7, 0.3], [0.4, 0.6]] * 20)
    bounds = analysis.intervals(labels, probabilities, ["cat", "dog"], draws=50)
    values = bounds.to_dict()
    assert list(values) == ["accuracy", "balanced_accuracy", "f1_macro", "log_loss", "f1", "roc_auc"]
    assert values["accuracy"] == list(bounds.accuracy) and all(len(pair) == 2 for pair in values.values())
    assert list(analysis.intervals([], np.zeros((0, 2)), ["cat", "dog"]).to_dict()) == ["accuracy"]


def test_roc_curve_area_is_roc_auc_and_pr_curve_ends_at_full_recall():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(labels * 0.3 + rng.random(300), 1)          # many ties
    fpr, tpr = analysis.roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))      # the trapezoid rule, in numpy 1.24 too
    assert area == pytest.approx(roc_auc(labels, scores))
    recall, precision, average = analysis.pr_curve(labels, scores)
    assert recall[-1] == 1 and precision[-1] == pytest.approx(labels.mean()) and 0 < average <= 1


def test_reliability_is_zero_for_calibrated_and_large_for_overconfident():
    confidence = np.repeat(np.linspace(0.55, 0.95, 5), 1000)
    correct = np.concatenate([np.arange(1000) < round(c * 1000) for c in np.linspace(0.55, 0.95, 5)])
    probabilities = np.stack([confidence, 1 - confidence], 1)
    labels = np.where(correct, 0, 1)
    assert analysis.reliability(labels, probabilities)["ece"] < 0.01
    overconfident = np.stack([np.full(1000, 0.99), np.full(1000, 0.01)], 1)
    result = analysis.reliability(np.r_[np.zeros(500), np.ones(500)].astype(int), overconfident)
    assert result["ece"] == pytest.approx(0.49) and result["bins"][-1]["count"] == 1000


def test_most_confused_pairs_largest_first():
    confusion = [[5, 3, 0], [1, 7, 4], [0, 0, 9]]
    assert analysis.most_confused(confusion, ["a", "b", "c"]) == [("b", "c", 4), ("a", "b", 3), ("b", "a", 1)]


def test_image_losses_are_the_cross_entropy_of_the_true_class():
    losses = analysis.image_losses([0, 1], [[0.9, 0.1], [0.9, 0.1]])
    assert losses == pytest.approx([-np.log(0.9), -np.log(0.1)])


def test_mcnemar_counts_only_the_discordant_images():
    from vggtune.results.analysis import mcnemar
    a = [True] * 90 + [False] * 10
    b = [True] * 80 + [False] * 10 + [True] * 2 + [False] * 8      # a alone right on 10, b alone on 2
    result = mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (10, 2)
    assert result["p"] == pytest.approx(0.03857, abs=1e-4)        # 2 * P(X <= 2), X ~ Binomial(12, 1/2)
    assert mcnemar(a, a)["p"] == 1.0


def _hand_written_curves(labels, scores):
    """The curves as analysis.py computed them by hand before scikit-learn's replaced them (2026-12-06)."""
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="mergesort")
    positive, ordered = labels[order] == 1, scores[order]
    last_of_ties = np.r_[np.nonzero(np.diff(ordered))[0], len(ordered) - 1]
    tps = np.r_[0, np.cumsum(positive)[last_of_ties]].astype(np.float64)
    fps = np.r_[0, np.cumsum(~positive)[last_of_ties]].astype(np.float64)
    precision = tps[1:] / np.maximum(tps[1:] + fps[1:], 1)
    recall = tps[1:] / max(tps[-1], 1)
    return fps / fps[-1], tps / tps[-1], recall, precision, float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_library_curves_and_mcnemar_give_the_figures_the_hand_written_ones_gave(seed):
    from math import comb

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(labels * 0.4 + rng.random(200), 2)           # ties among the scores
    fpr, tpr, recall, precision, average = _hand_written_curves(labels, scores)
    assert np.allclose(analysis.roc_curve(labels, scores), (fpr, tpr))
    new_recall, new_precision, new_average = analysis.pr_curve(labels, scores)
    assert np.allclose(new_recall, recall) and np.allclose(new_precision, precision)
    assert new_average == pytest.approx(average, abs=1e-12)
    only_a, only_b = rng.integers(0, 30, 2)
    a = [True] * only_a + [False] * only_b
    b = [False] * only_a + [True] * only_b
    n, k = only_a + only_b, min(only_a, only_b)
    hand = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    assert analysis.mcnemar(a, b)["p"] == pytest.approx(hand, rel=1e-9)
