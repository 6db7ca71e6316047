"""training/multilabel.py and data/labelsets.py: multi-label figures against scikit-learn and definitions,
the per-label thresholds, the record's JSON form, and the strata splits are stratified by."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, hamming_loss

from vggtune.data.labelsets import iterative_parts, strata
from vggtune.training.multilabel import (
    MultiLabelMetrics,
    SHRINK_POSITIVES,
    best_thresholds,
    multilabel_metrics,
    weighted_average_precision,
)


def draw(n=300, labels=5, seed=0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, labels)) < 0.3).astype(int)
    probabilities = np.clip(targets * 0.45 + rng.random((n, labels)) * 0.6, 0.001, 0.999).round(2)   # ties
    return targets, probabilities


def test_figures_are_scikit_learns():
    targets, probabilities = draw()
    thresholds = (0.5, 0.4, 0.6, 0.5, 0.45)
    result = multilabel_metrics(targets, probabilities, list("abcde"), thresholds)
    decided = (probabilities > np.asarray(thresholds)).astype(int)
    assert result.f1_micro == pytest.approx(f1_score(targets, decided, average="micro"))
    assert result.f1_macro == pytest.approx(f1_score(targets, decided, average="macro"))
    assert result.hamming_loss == pytest.approx(hamming_loss(targets, decided))
    assert result.subset_accuracy == pytest.approx((decided == targets).all(1).mean())
    assert result.map == pytest.approx(np.mean([average_precision_score(targets[:, i], probabilities[:, i])
                                                for i in range(5)]))
    assert result.per_label["b"].threshold == 0.4 and result.per_label["a"].support == targets[:, 0].sum()
    assert result.intervals_95 == {}


def test_weighted_average_precision_is_scikit_learns_with_sample_weights():
    targets, probabilities = draw(seed=1)
    weights = np.random.default_rng(2).integers(0, 3, (4, len(targets))).astype(float)
    for i in range(3):
        ours = weighted_average_precision(targets[:, i], probabilities[:, i], weights)
        theirs = [average_precision_score(targets[:, i], probabilities[:, i], sample_weight=w) for w in weights]
        assert np.allclose(ours, theirs)
    assert np.isnan(weighted_average_precision(np.zeros(4, int), np.arange(4) / 4, np.ones((1, 4))))[0]


def test_intervals_hold_their_estimates():
    targets, probabilities = draw(seed=3)
    result = multilabel_metrics(targets, probabilities, list("abcde"), intervals=True)
    for key in ("f1_micro", "f1_macro", "map"):
        low, high = result.intervals_95[key]
        assert low <= getattr(result, key) <= high and high - low < 0.2, key


def test_a_label_many_images_carry_keeps_nearly_its_own_best_f1():
    rng = np.random.default_rng(4)
    targets = (rng.random((2000, 2)) < 0.5).astype(int)
    probabilities = np.clip(0.3 * targets + rng.random((2000, 2)) * 0.7, 0, 1)
    chosen = best_thresholds(targets, probabilities)
    for i, threshold in enumerate(chosen):
        best = max(f1_score(targets[:, i], probabilities[:, i] > t) for t in np.unique(probabilities[:, i]) - 1e-9)
        assert f1_score(targets[:, i], probabilities[:, i] > threshold) == pytest.approx(best, abs=0.005)


def test_a_label_one_image_carries_is_drawn_toward_the_shared_threshold():
    # label 0: 40 images carry it, clearly apart at 0.3; label 1: one image, its probability 0.9
    targets = np.zeros((80, 2), int)
    targets[:40, 0] = 1
    targets[0, 1] = 1
    probabilities = np.full((80, 2), 0.1)
    probabilities[:40, 0] = 0.5
    probabilities[0, 1] = 0.9
    own_alone = best_thresholds(targets[:, 1:], probabilities[:, 1:])[0]   # its own best: between 0.1 and 0.9
    shared, one = best_thresholds(targets, probabilities)
    assert 0.1 < shared < 0.5                                              # label 0's separation point
    assert abs(one - shared) < abs(own_alone - shared) / 2                  # five parts shared to one its own
    assert one == pytest.approx((own_alone + SHRINK_POSITIVES * shared) / (1 + SHRINK_POSITIVES), abs=1e-6)


def test_a_label_nobody_carries_gets_the_shared_threshold_and_none_at_all_gets_half():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    probabilities = np.array([[0.8, 0.3], [0.2, 0.1], [0.7, 0.2]])
    (pooled,) = best_thresholds(targets.reshape(-1, 1), probabilities.reshape(-1, 1))   # every decision pooled
    first, second = best_thresholds(targets, probabilities)
    assert second == pooled and 0.3 < pooled < 0.7 and first != pooled
    assert best_thresholds(np.zeros((3, 1), int), np.full((3, 1), 0.2)) == (0.5,)


def test_the_record_reads_back_from_its_json_form():
    targets, probabilities = draw(seed=5)
    result = multilabel_metrics(targets, probabilities, list("abcde"), intervals=True)
    assert MultiLabelMetrics.from_dict(result.to_dict()) == result
    assert result.to_dict()["task"] == "multi-label" and result.accuracy == result.subset_accuracy


def test_an_image_is_stratified_by_its_rarest_label():
    targets = [(0, 1), (0,), (0,), (1, 2), (), (2,)]
    # label 0: 3 images, 1: 2, 2: 2; ties go to the lower label; none: its own stratum (3)
    assert strata(targets, 3) == [1, 0, 0, 1, 3, 2]


def test_iterative_stratification_spreads_every_label_in_proportion_not_only_the_rarest():
    """Labels that are never an image's rarest (a common one beside a rare one) are still dealt in proportion:
    the rarest-label key alone put all 40 common+rare images' common label wherever the rare one went."""
    rng = np.random.default_rng(3)
    targets = [(0, 1)] * 40 + [(0,)] * 160 + [(2,)] * 90 + [(1, 2)] * 10 + [()] * 20
    order = rng.permutation(len(targets))
    targets = [targets[i] for i in order]
    shares = (0.7, 0.15, 0.15)
    parts = iterative_parts(targets, shares, seed=0)
    for label in (0, 1, 2):
        carrying = [p for t, p in zip(targets, parts) if label in t]
        for part, share in enumerate(shares):
            assert abs(carrying.count(part) - share * len(carrying)) <= 1.5, (label, part)
    assert abs(parts.count(0) - 0.7 * len(targets)) <= 2
    assert parts == iterative_parts(targets, shares, seed=0)                      # seeded
    assert set(iterative_parts(targets, (1.0, 0.0, 0.0), seed=0)) == {0}         # a part of no share stays empty
