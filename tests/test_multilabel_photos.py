"""Multi-label classification on real photos with the real weights and every default, the engine unpinned.
A module of its own: test_multilabel.py's module-scoped fixture patches in the tiny weights for its whole module."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_real_weights, shared_data

import vggtune
from vggtune import cli
from vggtune.training.multilabel import MultiLabelMetrics
from vggtune.training.rundir import RunDir

pytestmark = pytest.mark.integration


def test_real_photos_side_by_side_with_a_label_pair_never_seen_in_training(tmp_path, capsys):
    """Two photos a canvas (benchmarks/photo_pairs.py) from cats-vs-dogs-2k and flowers-5, the real weights and
    every default. Cat and dog are never together in training; a model that made each label set a class could
    not answer the pair at all. The defaults for several labels (the places head, the asymmetric loss) decide
    each label by where it is: a cat beside a dog keeps both labels (BENCHMARKS.md sections 29 and 31)."""
    require_real_weights()
    shared_data("cats-vs-dogs-2k"), shared_data("flowers-5")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from photo_pairs import PhotoPool, label_sets, write_set

    labels = ("cat", "daisy", "dog")
    seen, unseen = label_sets(labels, held_out=[("cat", "dog")])
    pool = PhotoPool(seed=1, labels=labels)
    train = write_set(pool, tmp_path / "train", {labels: 24 for labels in seen})
    together = write_set(pool, tmp_path / "together", {unseen[0]: 16})
    alone = write_set(pool, tmp_path / "alone", {("dog",): 16})
    out = tmp_path / "run"
    assert cli.main(["train", str(train), "--out", str(out)]) == 0
    assert "mAP" in capsys.readouterr().out
    tested = RunDir(out).finished_metrics().test
    assert isinstance(tested, MultiLabelMetrics) and tested.map > 0.85, tested.map
    result = vggtune.evaluate(str(out), data=str(together), report=False).metrics
    assert json.loads((out / "model.json").read_text())["head"]["kind"] == "places"
    assert result.n == 16 and result.per_label["daisy"].support == 0
    assert result.per_label["dog"].recall >= 0.75 and result.per_label["cat"].recall >= 0.75, result.per_label
    predictor = vggtune.load(str(out))
    cat = [
        np.mean([p.probabilities["cat"] for p in predictor.predict([str(folder.parent)])[0]])
        for folder in (together, alone)
    ]
    assert cat[0] > cat[1] + 0.1, cat
