"""results/resampling.py: every draw's figures at once equal `classification_metrics` on that draw."""

import numpy as np
import pytest

from vggtune.results import resampling
from vggtune.training.metrics import classification_metrics


@pytest.mark.parametrize("n_classes, threshold", [(2, 0.5), (2, 0.3), (4, 0.5)])
def test_each_draw_scores_as_classification_metrics_does(n_classes, threshold, monkeypatch):
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 90)
    if n_classes > 2:
        labels[labels == n_classes - 1] = 0  # a class absent
    probabilities = rng.dirichlet(np.ones(n_classes), 90).round(1)  # tied scores
    probabilities /= probabilities.sum(1, keepdims=True)
    monkeypatch.setattr(resampling, "PICKS_PER_CHUNK", 90 * 3)  # chunks of 3 draws
    figures = resampling.resampled_figures(labels, probabilities, 8, np.random.default_rng(0), threshold)
    picks = np.concatenate(list(resampling.stratified_picks(labels, 8, np.random.default_rng(0))))
    classes = [str(c) for c in range(n_classes)]
    two_class = {"f1", "roc_auc"} if n_classes == 2 else set()
    assert set(figures) == {"balanced_accuracy", "f1_macro", "log_loss"} | two_class
    for draw, rows in enumerate(picks):
        expected = classification_metrics(labels[rows], probabilities[rows], classes, threshold)
        for key, values in figures.items():
            assert values[draw] == pytest.approx(getattr(expected, key), abs=1e-12), (key, draw)


def test_each_draw_holds_each_class_as_often_as_the_set():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 9)
    for picks in resampling.stratified_picks(labels, 20, np.random.default_rng(0)):
        assert all(np.array_equal(np.bincount(labels[row], minlength=3), [5, 2, 9]) for row in picks)


def test_roc_auc_is_left_out_where_one_class_is_present():
    labels = np.zeros(12, np.int64)
    probabilities = np.tile([0.7, 0.3], (12, 1))
    assert "roc_auc" not in resampling.resampled_figures(labels, probabilities, 5, np.random.default_rng(0))
