"""report.html: one self-contained page of a run (figures inline, nothing fetched), in the order
a reader asks: the verdict, training curves, confusions, calibration, the worst mistakes with
where the network looked, the data's own problems, and how the run was made."""
from __future__ import annotations

import base64
import datetime
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vggtune.version import __version__

if TYPE_CHECKING:                      # annotations only
    from vggtune.deploy.predict import Predictor
    from vggtune.model.spec import ModelSpec

from vggtune.results import analysis

from vggtune.results import plots
from vggtune.data.items import LABEL_CONFLICT, Rejected
from vggtune.results.evaluated import TEST_SPLIT, VAL_SPLIT, Evaluated
from vggtune.fsutil import atomic_write_text, display_path
from vggtune.training.rundir import RunDir

TOP_LOSSES = 12                 # the most confidently wrong images shown
LEAST_CERTAIN = 6               # and the correct ones the model was least sure of
STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right}img{max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px;background:#fafafa}
figure img{display:block;margin:0 auto;max-height:240px;width:auto}figcaption{font-size:13px;word-break:break-all}
.wrong figcaption b{color:#b00}.warn{background:#fff4d6;padding:.5em;border-left:4px solid #e0a800}
.muted{color:#666}details{margin:.5em 0}
"""


def write_report(run: str | Path, evaluated: Evaluated | None, predictor: Predictor,
                 out: str | Path | None = None) -> Path:
    """Writes the report of `evaluated` (None: a run that held no images out) to `out` (default RUN/report.html)."""
    folder = RunDir(run)
    spec = predictor.spec
    target = Path(out) if out else folder.path / "report.html"
    judged = [verdict(evaluated), curves(folder), confusions(evaluated), calibration(evaluated),
              examples(evaluated, predictor)] if evaluated else [
        "<section id='verdict'><h2>Verdict</h2><p>This run held out no images to judge it on: "
        "run <code>vggtune report RUN --data FOLDER</code> with a labelled folder.</p></section>", curves(folder)]
    sections = judged + [data_section(folder, evaluated), run_section(folder, spec)]
    title = f"vggtune report: {display_path(folder.path)}"
    judged_on = f"judged on {_e(evaluated.data)}" if evaluated else "no held-out images"
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>"
            f"<p class='muted'>{len(spec.classes)} classes, {spec.head.kind} head on {_e(spec.weights)}, "
            f"{judged_on}; written {datetime.datetime.now():%Y-%m-%d %H:%M} by vggtune "
            f"{__version__}</p>{''.join(sections)}</body></html>\n")
    atomic_write_text(target, page)
    return target


def verdict(evaluated: Evaluated) -> str:
    rows = evaluated.headline
    body = "".join(f"<tr><td>{_e(name)}</td><td class='n'>{_number(value)}</td><td>{_interval(bound)}</td></tr>"
                   for _, name, value, bound in rows)
    n, (low, high) = len(evaluated.rows), rows[0][3]
    warning = (f"<p class='warn'>Only {n} images: the accuracy could be anywhere from {low:.3f} to "
               f"{high:.3f}. More test images narrow it.</p>" if high - low > 0.1 else "")
    return (f"<section id='verdict'><h2>Verdict</h2><p><b>{n}</b> images of {_e(evaluated.data)}, "
            f"{len(evaluated.rejected)} unreadable.</p>{warning}<table><tr><th>metric</th><th>value</th>"
            f"<th>95% interval</th></tr>{body}</table><p class='muted'>Intervals: Wilson for accuracy; "
            f"percentile bootstrap over the images, resampled within each class ({analysis.BOOTSTRAP_DRAWS} draws), "
            f"for the others.</p></section>")


def curves(folder: RunDir) -> str:
    history = folder.history()
    metrics = folder.metrics()
    kept_epochs = metrics.kept_epochs if metrics else {}
    stages = list(dict.fromkeys(row["stage"] for row in history))
    parts = []
    for stage in stages:
        rows = [row for row in history if row["stage"] == stage]
        kept = kept_epochs.get(stage)
        parts.append(f"<h3>{_e(stage)}</h3>{_img(plots.training_curves(rows, stage, kept), f'{stage} curves')}"
                     f"<p>{_count(len(rows), 'epoch')}; kept epoch {kept if kept else 'not recorded'}.</p>")
    return f"<section id='curves'><h2>Training curves</h2>{''.join(parts) or '<p>No epochs recorded.</p>'}</section>"


def confusions(evaluated: Evaluated) -> str:
    matrix = evaluated.metrics()["confusion_matrix"]
    pairs = analysis.most_confused(matrix, evaluated.classes)
    table = "".join(f"<tr><td>{_e(a)}</td><td>{_e(b)}</td><td class='n'>{n}</td></tr>" for a, b, n in pairs)
    return (f"<section id='confusion'><h2>Confusion matrix</h2>{_img(plots.confusion(matrix, evaluated.classes), 'confusion matrix')}"
            f"<h3>Most confused pairs</h3>" + (f"<table><tr><th>true</th><th>predicted as</th><th>images</th></tr>"
                                               f"{table}</table>" if pairs else "<p>No confusions.</p>") + "</section>")


def calibration(evaluated: Evaluated) -> str:
    labels, probabilities = evaluated.labels, evaluated.probabilities
    parts = []
    if len(evaluated.classes) == 2 and len(set(labels.tolist())) == 2:
        auc = evaluated.metrics()["roc_auc"]
        parts.append(_img(plots.roc_and_pr(labels, probabilities[:, 1], evaluated.classes[1], auc), "ROC and PR curves"))
    reliability = analysis.reliability(labels, probabilities)
    parts.append(_img(plots.reliability(reliability), "reliability diagram"))
    parts.append(f"<p>Expected calibration error: <b>{reliability['ece']:.4f}</b> (10 bins of the largest "
                 "probability; 0 is perfectly calibrated).</p>")
    return f"<section id='calibration'><h2>ROC, precision-recall and calibration</h2>{''.join(parts)}</section>"


def examples(evaluated: Evaluated, predictor: Predictor) -> str:
    """The most confidently wrong images and the least certain correct ones, with Grad-CAM overlays."""
    labels, probabilities = evaluated.labels, evaluated.probabilities
    losses = analysis.image_losses(labels, probabilities)
    wrong = np.nonzero(probabilities.argmax(1) != labels)[0]
    right = np.nonzero(probabilities.argmax(1) == labels)[0]
    worst = wrong[np.argsort(-losses[wrong], kind="stable")][:TOP_LOSSES]
    unsure = right[np.argsort(probabilities[right].max(1), kind="stable")][:LEAST_CERTAIN]
    shown = (f"The {_count(len(worst), 'most confidently wrong image')} of {_count(len(wrong), 'mistake')}"
             if len(wrong) else f"No mistakes on the {len(labels)} test images")
    return (f"<section id='top-losses'><h2>Top losses</h2><p>{shown}, with where the network looked for its "
            "prediction (Grad-CAM on the last convolution; dimmed: outside the centre crop the network sees).</p>"
            f"{_tiles(evaluated, predictor, worst, 'wrong', losses) if len(wrong) else ''}"
            f"<h3>Least certain correct</h3>{_tiles(evaluated, predictor, unsure, 'unsure', losses)}</section>")


def _tiles(evaluated: Evaluated, predictor: Predictor, indices, kind: str, losses) -> str:
    if not len(indices):
        return "<p>None.</p>"
    rows = [evaluated.rows[i] for i in indices]
    explanations, _ = predictor.explain([row.path for row in rows])
    by_path = {e.name: e for e in explanations}
    tiles = []
    for row, i in zip(rows, indices):
        predicted = evaluated.classes[int(np.argmax(row.probabilities))]
        shown = by_path.get(row.path)
        picture = (_img(_jpeg(shown.overlay()), f"Grad-CAM of {Path(row.path).name}", "image/jpeg") if shown
                   else "<p class='muted'>(image no longer readable)</p>")
        tiles.append(f"<figure class='tile {kind}' data-path='{_e(row.path)}'>{picture}<figcaption>"
                     f"<b>{_e(Path(row.path).name)}</b><br>true {_e(row.label)}, predicted {_e(predicted)} "
                     f"({max(row.probabilities):.3f})<br>loss {losses[i]:.3f}</figcaption></figure>")
    return f"<div class='grid'>{''.join(tiles)}</div>"


def data_section(folder: RunDir, evaluated: Evaluated | None) -> str:
    splits = folder.splits()
    classes = splits.classes if splits else []
    names = ("train", "val", "test") if splits else ()
    counts = {name: splits.counts(name) for name in names}
    body = "".join(f"<tr><td>{_e(c)}</td>" + "".join(f"<td class='n'>{counts[n][i]}</td>" for n in names)
                   + f"<td class='n'>{sum(counts[n][i] for n in names)}</td></tr>" for i, c in enumerate(classes))
    parts = ["<h3>Images per class and split</h3><table><tr><th>class</th>"
             + "".join(f"<th>{n}</th>" for n in names) + f"<th>total</th></tr>{body}</table>"]
    if evaluated and evaluated.data not in (TEST_SPLIT, VAL_SPLIT):
        per_class = np.bincount(evaluated.labels, minlength=len(evaluated.classes))
        parts.append(f"<h3>Evaluated: {_e(evaluated.data)}</h3>" + _table(
            ["class", "images"], [(c, per_class[i]) for i, c in enumerate(evaluated.classes)]))
        parts.append(_rejected(f"Unreadable in {evaluated.data}", evaluated.rejected))
    rejected = folder.rejected()
    parts.append(_rejected("Rejected files in the training data", rejected))
    conflicts = [(row.path, row.reason) for row in rejected if row.kind == LABEL_CONFLICT]
    parts.append("<h3>Label conflicts</h3>" + (_table(["file", "why"], conflicts) if conflicts
                                              else "<p>None: no image content is filed under two classes.</p>"))
    pairs = folder.near_duplicates()
    across = sum(1 for pair in pairs if pair.across)
    parts.append(f"<h3>Near-duplicates</h3><p>{len(pairs)} pairs by perceptual hash, {across} of them across "
                 "splits (those let a split see its own images).</p>" + (_table(
                     ["file", "split", "near-duplicate of", "its split", "distance"],
                     [(p.path, p.split, p.other, p.other_split, p.distance) for p in pairs]) if pairs else ""))
    return f"<section id='data'><h2>Data</h2>{''.join(parts)}</section>"


def _rejected(title: str, rejected: list[tuple[str, str]]) -> str:
    if not rejected:
        return f"<h3>{_e(title)}</h3><p>None.</p>"
    kinds: dict[str, int] = {}
    for row in map(Rejected.of, rejected):
        kinds[row.kind] = kinds.get(row.kind, 0) + 1
    return (f"<h3>{_e(title)}: {len(rejected)}</h3>" + _table(["kind", "files"], sorted(kinds.items()))
            + f"<details><summary>every file and why</summary>{_table(['file', 'reason'], rejected)}</details>")


def run_section(folder: RunDir, spec: ModelSpec) -> str:
    config = folder.config().to_dict()
    metrics = folder.metrics()
    environment = metrics.environment if metrics else {}
    timing = metrics.timing if metrics else {}
    cache = environment.get("feature_cache") or {}
    reuse = (f"{cache['views_wanted'] - cache['views_computed']} of {cache['views_wanted']} views came from the "
             f"feature cache, {cache['views_computed']} were computed." if cache.get("views_wanted")
             else "Not recorded (a run made without the cache, or by an earlier vggtune).")
    facts = [("weights", spec.weights), ("precision", spec.precision), ("image size", spec.preprocessing.size)]
    facts += [(key, value) for key, value in environment.items()
              if key != "feature_cache" and key not in {name for name, _ in facts}]
    config_rows = [(key, value) for key, value in config.items() if key != "augment"]
    config_rows += [(f"augment.{key}", value) for key, value in (config.get("augment") or {}).items()]
    return ("<section id='run'><h2>The run</h2><h3>Model and machine</h3>" + _table(["", ""], facts)
            + "<h3>Timings (seconds)</h3>" + _table(["step", "seconds"], [(TIMING_NAMES.get(key, key), value)
                                                                         for key, value in timing.items()])
            + f"<h3>Feature cache</h3><p>{_e(reuse)}</p><h3>Configuration</h3>" + _table(["option", "value"], config_rows)
            + "</section>")


# metrics.json's timing keys, as a reader names the steps
TIMING_NAMES = {"features_s": "features, all splits", "features_train_s": "features of the training views",
                "features_val_s": "features of the validation views", "features_test_s": "features of the test views",
                "head_s": "head stage", "finetune_s": "fine-tune stage", "score_val_s": "scoring the validation split",
                "score_test_s": "scoring the test split", "this_call_s": "the whole call (start to scores)",
                "damaged_cache_shards": "damaged cache shards computed again (a count)"}


def _count(n: int, noun: str) -> str:
    """"1 epoch", "2 epochs"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


TABLE_ROWS = 200               # longer lists are cut here; the CSV files in the run hold them all


def _table(header: list[str] | None, rows) -> str:
    rows = list(rows)
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(value)}</td>" for value in row) + "</tr>" for row in rows[:TABLE_ROWS])
    more = f"<p class='muted'>... and {len(rows) - TABLE_ROWS} more.</p>" if len(rows) > TABLE_ROWS else ""
    return f"<table>{head}{body}</table>{more}"


def _img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f"<img src='data:{mime};base64,{base64.b64encode(data).decode()}' alt='{_e(alt)}'>"


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _e(value) -> str:
    """Escaped for HTML; a file name that is not UTF-8 shows its odd bytes as \\x.. escapes."""
    return html.escape(display_path(str(value)), quote=True)


def _number(value) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _interval(bound) -> str:
    return _e(analysis.describe_interval(bound))

