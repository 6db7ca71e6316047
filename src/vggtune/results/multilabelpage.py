"""The report's sections of a multi-label run: the verdict (mAP, F1, subset accuracy, Hamming loss with
their intervals, then a table a label), and the top losses a label: for each label the images it was
most confidently wrong about (missed, or given where it does not belong), each with where the network
looked for that label (Grad-CAM of the label's logit)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vggtune.results import analysis
from vggtune.results.html import escape as _e
from vggtune.results.html import img as _img
from vggtune.results.html import jpeg as _jpeg
from vggtune.training.multilabel import label_losses

if TYPE_CHECKING:  # annotations only
    from vggtune.deploy.predict import Predictor
    from vggtune.results.evaluated import Evaluated

TOP_LOSSES_A_LABEL = 4  # the most confidently wrong images shown for each label


def verdict(evaluated: Evaluated, findings: list[str]) -> str:
    result = evaluated.multilabel_figures
    body = "".join(
        f"<tr><td>{_e(row.name)}</td><td class='n'>{row.value:.4f}</td>"
        f"<td>{_e(analysis.describe_interval(row.interval))}</td></tr>"
        for row in analysis.multilabel_headline(result)
    )
    labels = "".join(_label_row(name, row) for name, row in result.per_label.items())
    said = "".join(f"<p class='warn'>{_e(sentence)}.</p>" for sentence in findings)
    return (
        f"<section id='verdict'><h2>Verdict</h2><p>{result.n} images of {_e(evaluated.data)}, each carrying any "
        f"set of {len(result.classes)} labels; a label is given where its probability passes its threshold "
        "(chosen on the validation split).</p>"
        f"<table><tr><th>metric</th><th>value</th><th>95% interval</th></tr>{body}</table>{said}"
        "<h3>Per label</h3><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th>"
        f"<th>average precision</th><th>images</th><th>threshold</th></tr>{labels}</table></section>"
    )


def _label_row(name: str, row) -> str:
    average = "-" if row.average_precision is None else f"{row.average_precision:.3f}"
    numbers = (f"{row.precision:.3f}", f"{row.recall:.3f}", f"{row.f1:.3f}", average, row.support)
    cells = "".join(f"<td class='n'>{value}</td>" for value in (*numbers, f"{row.threshold:.3f}"))
    return f"<tr><td>{_e(name)}</td>{cells}</tr>"


def top_losses(evaluated: Evaluated, predictor: Predictor) -> str:
    """For each label, the images most confidently wrong about it, with Grad-CAM of that label."""
    targets, probabilities = evaluated.labels, evaluated.probabilities
    thresholds = np.asarray(evaluated.thresholds)
    wrong = (probabilities > thresholds) != (targets == 1)
    losses = label_losses(targets, probabilities)
    parts = []
    for column, name in enumerate(evaluated.classes):
        rows = np.flatnonzero(wrong[:, column])
        worst = rows[np.argsort(-losses[rows, column], kind="stable")][:TOP_LOSSES_A_LABEL]
        tiles = _tiles(evaluated, predictor, worst, name, column, targets, probabilities) if len(worst) else ""
        parts.append(
            f"<h3>{_e(name)}: {len(rows)} wrong of {len(targets)}</h3>"
            + (tiles or "<p>No image wrong about this label.</p>")
        )
    return (
        "<section id='top-losses'><h2>Top losses, a label</h2><p>For each label, the images it was most "
        "confidently wrong about (missed, or given where it does not belong), with where the network looked "
        "for that label (Grad-CAM of its logit on the last convolution).</p>"
        f"{''.join(parts)}</section>"
    )


def _tiles(evaluated: Evaluated, predictor: Predictor, indices, name: str, column: int, targets, probabilities) -> str:
    rows = [evaluated.rows[i] for i in indices]
    explanations, _ = predictor.explain([row.path for row in rows], target=name)
    by_path = {e.name: e for e in explanations}
    tiles = []
    for row, i in zip(rows, indices):
        shown = by_path.get(row.path)
        picture = (
            _img(_jpeg(shown.overlay()), f"Grad-CAM of {Path(row.path).name} for {name}", "image/jpeg")
            if shown
            else "<p class='muted'>(image no longer readable)</p>"
        )
        carried = "carries" if targets[i, column] else "does not carry"
        tiles.append(
            f"<figure class='tile wrong' data-path='{_e(row.path)}'>{picture}<figcaption>"
            f"<b>{_e(Path(row.path).name)}</b><br>{carried} {_e(name)}; P({_e(name)}) "
            f"{probabilities[i, column]:.3f}<br>labels: {_e(row.label or '(none)')}</figcaption></figure>"
        )
    return f"<div class='grid'>{''.join(tiles)}</div>"
