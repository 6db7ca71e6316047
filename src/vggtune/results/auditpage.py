"""audit.html: one self-contained page of an audit (thumbnails inline, nothing fetched): each flagged
image with its given and suggested label, the out-of-fold confidence and a Grad-CAM overlay by the
model that never saw it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vggtune.fsutil import atomic_write_text, display_path
from vggtune.results.auditrecords import METHOD
from vggtune.results.html import escape as _e
from vggtune.results.html import img as _img
from vggtune.results.html import jpeg as _jpeg
from vggtune.results.html import page
from vggtune.results.html import table as _table

if TYPE_CHECKING:  # annotations only
    from vggtune.results.auditrecords import AuditResult, Finding
    from vggtune.results.auditscores import FoldModels

SHOWN = 120  # tiles on the page at most; issues.csv lists every finding
THUMBNAIL = 256  # pixels, the longer side


def write_page(path: Path, summary: AuditResult, findings: list[Finding], models: FoldModels) -> Path:
    overlays = grad_cam_thumbnails(findings[:SHOWN], models)
    tiles = "".join(
        _tile(rank, finding, overlays.get(finding.path)) for rank, finding in enumerate(findings[:SHOWN], 1)
    )
    more = (
        f"<p class='muted'>The first {SHOWN} of {len(findings)} are shown; issues.csv lists them all.</p>"
        if len(findings) > SHOWN
        else ""
    )
    counts, methods = summary.by_issue, METHOD
    title = f"vggtune audit: {display_path(summary.data)}"
    body = (
        f"<p><b>{summary.flagged}</b> of {summary.images} images flagged, each judged by the model of "
        f"the {summary.folds}-fold cross-validation that did not train on it (out-of-fold accuracy "
        f"{summary.accuracy_out_of_fold:.4f}, against {summary.majority_share:.4f} for always answering "
        f"{_e(summary.majority_class)}; binomial p = {summary.beats_majority_p:.2g}).</p>"
        + (
            ""
            if summary.label_issues_trusted
            else "<p class='warn'>The fold models do not beat always "
            "answering the largest class beyond noise, so no label issues are flagged: their disagreements "
            "with a label say nothing about it.</p>"
        )
        + _table(
            ["issue", "images", "found by"],
            [
                (kind, counts[kind], methods[key])
                for kind, key in (
                    ("label", "label"),
                    ("out-of-distribution", "out_of_distribution"),
                    ("cross-class-duplicate", "cross_class_duplicate"),
                )
            ],
        )
        + "<p class='muted'>Given: the label in the data. Suggested: the out-of-fold model's class. "
        "Confidence: the probability that model gives the given label (low: probably mislabelled). "
        "The overlay is Grad-CAM for the suggested class.</p>"
        + (f"<div class='grid'>{tiles}</div>{more}" if findings else "<p>Nothing flagged.</p>")
    )
    flagged = f"<section id='flagged'><h2>Flagged images</h2>{body}</section>"
    atomic_write_text(path, page(title, f"{len(summary.classes)} classes", flagged))
    return path


def grad_cam_thumbnails(findings: list[Finding], models: FoldModels) -> dict[str, bytes]:
    """JPEG thumbnails of the Grad-CAM overlays, each by the model of the fold that tested the image."""
    thumbnails = {}
    for fold in sorted({finding.fold for finding in findings}):
        predictor = models[fold]
        for target in sorted({f.suggested for f in findings if f.fold == fold}):
            paths = [f.path for f in findings if f.fold == fold and f.suggested == target]
            explanations, _ = predictor.explain(paths, target)
            for explanation in explanations:
                picture = explanation.overlay()
                picture.thumbnail((THUMBNAIL, THUMBNAIL))
                thumbnails[explanation.name] = _jpeg(picture)
    return thumbnails


def _tile(rank: int, finding: Finding, thumbnail: bytes | None) -> str:
    picture = (
        _img(thumbnail, f"Grad-CAM of {Path(finding.path).name}", "image/jpeg")
        if thumbnail
        else "<p class='muted'>(image no longer readable)</p>"
    )
    note = f"<br>{_e(finding.note)}" if finding.note else ""
    return (
        f"<figure class='tile' data-path='{_e(finding.path)}'>{picture}<figcaption><b>{rank}. "
        f"{_e(Path(finding.path).name)}</b><br>given <b>{_e(finding.given)}</b>, suggested "
        f"{_e(finding.suggested)}<br>confidence in the given label {finding.given_probability:.3f}<br>"
        f"{_e(', '.join(finding.issues))} ({_e(finding.fold)}){note}</figcaption></figure>"
    )
