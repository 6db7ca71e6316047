import math

import numpy as np
import pytest

from vggtune.cli.text import confusion_table
from vggtune.training.metrics import classification_metrics, roc_auc


def test_binary_metrics_on_a_known_case():
    labels = [0, 0, 0, 1, 1, 1, 1, 0]
    p1 = [0.1, 0.4, 0.6, 0.8, 0.7, 0.3, 0.9, 0.2]
    probs = np.stack([1 - np.array(p1), p1], axis=1)
    result = classification_metrics(labels, probs, ["cat", "dog"])
    assert result.confusion_matrix == [[3, 1], [1, 3]]
    assert result.accuracy == pytest.approx(0.75)
    assert result.per_class["dog"].precision == pytest.approx(0.75)
    assert result.per_class["dog"].recall == pytest.approx(0.75)
    assert result.f1 == pytest.approx(0.75)
    # 16 positive/negative pairs, 14 ranked right (0.6 > 0.3 and 0.4 > 0.3 are wrong)
    assert result.roc_auc == pytest.approx(14 / 16)
    expected_loss = -np.mean([math.log(1 - 0.1), math.log(0.6), math.log(0.4), math.log(0.8), math.log(0.7),
                              math.log(0.3), math.log(0.9), math.log(0.8)])
    assert result.log_loss == pytest.approx(expected_loss)


def test_roc_auc_counts_ties_half():
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(np.array([0, 1, 1]), np.array([0.1, 0.9, 0.8])) == pytest.approx(1.0)


def test_multiclass_macro_scores_and_table():
    labels = [0, 1, 2, 2]
    probs = np.eye(3)[[0, 2, 2, 2]]
    result = classification_metrics(labels, probs, ["a", "b", "c"])
    assert result.roc_auc is None and "roc_auc" not in result.to_dict()
    assert result.per_class["b"].recall == 0.0
    assert result.recall_macro == pytest.approx((1 + 0 + 1) / 3)
    table = confusion_table(result)
    assert table.splitlines()[2].split() == ["b", "0", "0", "1"]
