"""report.html: one self-contained page of a run (figures inline, nothing fetched), in the order
a reader asks: the verdict, training curves, confusions, calibration, the worst mistakes with
where the network looked, the data's own problems, and how the run was made."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only
    from vggtune.deploy.predict import Predictor
    from vggtune.model.spec import ModelSpec

from vggtune.fsutil import atomic_write_text, display_path
from vggtune.results import analysis, multilabelpage, plots
from vggtune.results.datasection import data_section, shift
from vggtune.results.evaluated import Evaluated
from vggtune.results.html import count as _count
from vggtune.results.html import escape as _e
from vggtune.results.html import img as _img
from vggtune.results.html import jpeg as _jpeg
from vggtune.results.html import page
from vggtune.results.html import table as _table
from vggtune.training.rundir import Environment, RunDir

TOP_LOSSES = 12  # the most confidently wrong images shown
LEAST_CERTAIN = 6  # and the correct ones the model was least sure of


def write_report(
    folder: RunDir, evaluated: Evaluated | None, predictor: Predictor, out: str | Path | None = None
) -> Path:
    """Writes the report of `evaluated` (None: a run that held no images out) to `out` (default RUN/report.html)."""
    spec = predictor.spec
    target = Path(out) if out else folder.report_file()
    judged = _judged(evaluated, folder, predictor)
    sections = judged + [data_section(folder, evaluated), run_section(folder, spec)]
    title = f"vggtune report: {display_path(folder.path)}"
    judged_on = f"judged on {_e(evaluated.data)}" if evaluated else "no held-out images"
    about = f"{len(spec.classes)} classes, {spec.head.kind} head on {_e(spec.weights)}, {judged_on}"
    atomic_write_text(target, page(title, about, "".join(sections)))
    return target


def _judged(evaluated: Evaluated | None, folder: RunDir, predictor: Predictor) -> list[str]:
    """The sections that judge the model: a multi-label run's own (multilabelpage.py), else the verdict,
    curves, confusions, calibration and the worst mistakes."""
    if evaluated is None:
        return [
            "<section id='verdict'><h2>Verdict</h2><p>This run held out no images to judge it on: "
            "run <code>vggtune report RUN --data FOLDER</code> with a labelled folder.</p></section>",
            curves(folder),
        ]
    if evaluated.task.several:
        return [
            multilabelpage.verdict(evaluated, evaluated.findings(folder)),
            curves(folder),
            multilabelpage.top_losses(evaluated, predictor),
        ]
    return [
        verdict(evaluated, folder) + shift(evaluated, folder, predictor),
        curves(folder),
        confusions(evaluated),
        calibration(evaluated),
        examples(evaluated, predictor),
    ]


def verdict(evaluated: Evaluated, folder: RunDir) -> str:
    body = "".join(
        f"<tr><td>{_e(row.name)}</td><td class='n'>{_number(row.value)}</td><td>{_interval(row.interval)}</td></tr>"
        for row in evaluated.headline
    )
    n, (low, high) = len(evaluated.rows), evaluated.metrics.accuracy_95  # Wilson's, as the headline's
    warning = (
        f"<p class='warn'>Only {n} images: the accuracy could be anywhere from {low:.3f} to "
        f"{high:.3f}. More test images narrow it.</p>"
        if high - low > 0.1
        else ""
    )
    findings = "".join(f"<p class='warn'>{_e(sentence)}.</p>" for sentence in evaluated.findings(folder))
    title, classes = analysis.per_class_rows(evaluated.metrics)
    per_class = f"<h3>{_e(title[0].upper() + title[1:])}</h3>" + _table(
        ["class", "precision", "recall", "F1", "images"],
        [(name, f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", support) for name, p, r, f, support in classes],
    )
    return (
        f"<section id='verdict'><h2>Verdict</h2><p><b>{n}</b> images of {_e(evaluated.data)}, "
        f"{len(evaluated.rejected)} left out.</p>{warning}{findings}<table><tr><th>metric</th><th>value</th>"
        f"<th>95% interval</th></tr>{body}</table>{per_class}<p class='muted'>Intervals: Wilson for accuracy; "
        f"percentile bootstrap over the images, resampled within each class ({analysis.BOOTSTRAP_DRAWS} draws), "
        f"for the others. Balanced accuracy is the mean of the classes' recalls.</p></section>"
    )


def curves(folder: RunDir) -> str:
    history = folder.history()
    metrics = folder.metrics()
    kept_epochs = metrics.kept_epochs if metrics else {}
    stages = list(dict.fromkeys(row.stage for row in history))
    parts = []
    for stage in stages:
        rows = [row for row in history if row.stage == stage]
        kept = kept_epochs.get(stage)
        last = (
            "<p class='warn'>The stage kept its last epoch: its validation loss was still falling, so the "
            "epochs may be too few.</p>"
            if kept and len(rows) > 1 and kept == len(rows)
            else ""
        )
        parts.append(
            f"<h3>{_e(stage)}</h3>{_img(plots.training_curves(rows, stage, kept), f'{stage} curves')}"
            f"<p>{_count(len(rows), 'epoch')}; kept epoch {kept if kept else 'not recorded'}.</p>{last}"
        )
    return f"<section id='curves'><h2>Training curves</h2>{''.join(parts) or '<p>No epochs recorded.</p>'}</section>"


def confusions(evaluated: Evaluated) -> str:
    matrix = evaluated.metrics.confusion_matrix
    pairs = analysis.most_confused(matrix, evaluated.classes)
    table = "".join(f"<tr><td>{_e(a)}</td><td>{_e(b)}</td><td class='n'>{n}</td></tr>" for a, b, n in pairs)
    return (
        "<section id='confusion'><h2>Confusion matrix</h2>"
        f"{_img(plots.confusion(matrix, evaluated.classes), 'confusion matrix')}"
        f"<h3>Most confused pairs</h3>"
        + (
            f"<table><tr><th>true</th><th>predicted as</th><th>images</th></tr>{table}</table>"
            if pairs
            else "<p>No confusions.</p>"
        )
        + "</section>"
    )


def calibration(evaluated: Evaluated) -> str:
    labels, probabilities = evaluated.labels, evaluated.probabilities
    parts = []
    if len(evaluated.classes) == 2 and len(set(labels.tolist())) == 2:
        auc = evaluated.metrics.roc_auc
        parts.append(
            _img(plots.roc_and_pr(labels, probabilities[:, 1], evaluated.classes[1], auc), "ROC and PR curves")
        )
    reliability = analysis.reliability(labels, probabilities)
    parts.append(_img(plots.reliability(reliability), "reliability diagram"))
    parts.append(
        f"<p>Expected calibration error: <b>{reliability['ece']:.4f}</b> (10 bins of the largest "
        "probability; 0 is perfectly calibrated).</p>"
    )
    return f"<section id='calibration'><h2>ROC, precision-recall and calibration</h2>{''.join(parts)}</section>"


def examples(evaluated: Evaluated, predictor: Predictor) -> str:
    """The most confidently wrong images and the least certain correct ones, with Grad-CAM overlays."""
    labels, probabilities = evaluated.labels, evaluated.probabilities
    losses = analysis.image_losses(labels, probabilities)
    decided = analysis.predicted(probabilities, evaluated.threshold)
    wrong = np.nonzero(decided != labels)[0]
    right = np.nonzero(decided == labels)[0]
    worst = wrong[np.argsort(-losses[wrong], kind="stable")][:TOP_LOSSES]
    unsure = right[np.argsort(probabilities[right].max(1), kind="stable")][:LEAST_CERTAIN]
    shown = (
        f"The {_count(len(worst), 'most confidently wrong image')} of {_count(len(wrong), 'mistake')}"
        if len(wrong)
        else f"No mistakes on the {len(labels)} test images"
    )
    return (
        f"<section id='top-losses'><h2>Top losses</h2><p>{shown}, with where the network looked for its "
        "prediction (Grad-CAM on the last convolution; dimmed: outside the centre crop the network sees).</p>"
        f"{_tiles(evaluated, predictor, worst, 'wrong', losses) if len(wrong) else ''}"
        f"<h3>Least certain correct</h3>{_tiles(evaluated, predictor, unsure, 'unsure', losses)}</section>"
    )


def _tiles(evaluated: Evaluated, predictor: Predictor, indices, kind: str, losses) -> str:
    if not len(indices):
        return "<p>None.</p>"
    rows = [evaluated.rows[i] for i in indices]
    explanations, _ = predictor.explain([row.path for row in rows])
    by_path = {e.name: e for e in explanations}
    tiles = []
    for row, i in zip(rows, indices):
        predicted = evaluated.classes[int(analysis.predicted([row.probabilities], evaluated.threshold)[0])]
        shown = by_path.get(row.path)
        picture = (
            _img(_jpeg(shown.overlay()), f"Grad-CAM of {Path(row.path).name}", "image/jpeg")
            if shown
            else "<p class='muted'>(image no longer readable)</p>"
        )
        tiles.append(
            f"<figure class='tile {kind}' data-path='{_e(row.path)}'>{picture}<figcaption>"
            f"<b>{_e(Path(row.path).name)}</b><br>true {_e(row.label)}, predicted {_e(predicted)} "
            f"({max(row.probabilities):.3f})<br>loss {losses[i]:.3f}</figcaption></figure>"
        )
    return f"<div class='grid'>{''.join(tiles)}</div>"


def run_section(folder: RunDir, spec: ModelSpec) -> str:
    config = folder.config()
    metrics = folder.metrics()
    environment = metrics.environment if metrics else Environment()
    timing = metrics.timing.steps if metrics else {}
    cache = environment.feature_cache or {}
    reuse = (
        f"{cache['views_wanted'] - cache['views_computed']} of {cache['views_wanted']} views came from the "
        f"feature cache, {cache['views_computed']} were computed."
        if cache.get("views_wanted")
        else "Not recorded (a run made without the cache, or by an earlier vggtune)."
    )
    facts = [("weights", spec.weights), ("precision", spec.precision), ("image size", spec.preprocessing.size)]
    facts += [(key, value) for key, value in environment.facts() if key not in {name for name, _ in facts}]
    config_rows = [(name, value) for name, value in config.options().items() if name != "augment"]
    config_rows += [(f"augment.{key}", value) for key, value in dataclasses.asdict(config.augment).items()]
    return (
        "<section id='run'><h2>The run</h2><h3>Model and machine</h3>"
        + _table(["", ""], facts)
        + "<h3>Timings (seconds)</h3>"
        + _table(["step", "seconds"], [(TIMING_NAMES.get(key, key), value) for key, value in timing.items()])
        + f"<h3>Feature cache</h3><p>{_e(reuse)}</p><h3>Configuration</h3>"
        + _table(["option", "value"], config_rows)
        + "</section>"
    )


# metrics.json's timing keys, as a reader names the steps
TIMING_NAMES = {
    "features_s": "features, all splits",
    "features_train_s": "features of the training views",
    "features_val_s": "features of the validation views",
    "features_test_s": "features of the test views",
    "head_s": "head stage",
    "finetune_s": "fine-tune stage",
    "score_val_s": "scoring the validation split",
    "score_test_s": "scoring the test split",
    "this_call_s": "the whole call (start to scores)",
    "damaged_cache_shards": "damaged cache shards computed again (a count)",
}


def _number(value) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _interval(bound) -> str:
    return _e(analysis.describe_interval(bound))
