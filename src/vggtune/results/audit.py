"""`vggtune data audit`: the images whose label is probably wrong, each judged by a model that never saw it.

    cross_validate(config, folds)               # every image scored out of fold (AUDIT/cv, kept when it matches)
    label issues  = cleanlab's find_label_issues(labels, out-of-fold probabilities), by self-confidence
    off-topic     = cleanlab's OutOfDistribution on each image's embedding by its fold's model,
                    flagged far out from the rest (Tukey's far-out fence on -log of the scores)
    conflicts     = near-duplicates filed under two classes (perceptual hashes, data/similar.py)
    -> AUDIT/issues.csv, AUDIT/audit.json, AUDIT/audit.html and, on request, a cleaned manifest

cleanlab ranks by self-confidence, the probability the out-of-fold model gives the image's own label:
the images it is surest are mislabelled come first.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vggtune import runfiles
from vggtune.errors import UserError
from vggtune.fsutil import atomic_write_json, display_path, write_csv
from vggtune.progress import say, verbosity
from vggtune.results.auditrecords import (
    CONFLICT,
    LABEL,
    OFF_TOPIC,
    AuditResult,
    CleanedManifest,
    Finding,
    Scored,
)
from vggtune.results.auditscores import (
    FoldModels,
    Strength,
    cross_class_duplicates,
    far_below,
    label_issues,
    off_topic_scores,
    strength,
)
from vggtune.results.crossval import cross_validate, out_of_fold

if TYPE_CHECKING:  # annotations only
    from vggtune.training.config import TrainConfig


def audit(
    config: TrainConfig, folds: int, out: Path, manifest: Path | None = None, relabel: bool = False
) -> AuditResult:
    """Cross-validates `config` (its `out` is the cv folder), ranks the issues and writes the audit to `out`;
    returns an AuditResult, which audit.json holds."""
    if relabel and manifest is None:
        raise UserError(
            "--relabel: changes the labels written by --write-manifest; received no --write-manifest; "
            "allowed: --write-manifest clean.csv --relabel"
        )
    if manifest is not None and not manifest.absolute().parent.is_dir():
        raise UserError(
            f"--write-manifest: the folder of {display_path(manifest)} does not exist; allowed: a CSV "
            "file in an existing folder"
        )
    with verbosity(config.run.quiet):
        cross_validate(config, folds)
        scored = read_scored(Path(config.run.out))
        weak_or_strong = strength(scored)
        say(f"audit: {weak_or_strong.describe()}")
        if weak_or_strong.trusted:
            say(f"audit: ranking label issues of {len(scored.rows)} images with cleanlab")
            ranked = label_issues(scored)
        else:
            say(
                "warning: audit: the fold models do not beat always answering the largest class beyond noise, "
                "so their disagreements with a label say nothing about it: no label issues flagged (more "
                "epochs, or data the frozen features can tell apart, first)"
            )
            ranked = np.zeros(0, dtype=np.int64)
        models = FoldModels(Path(config.run.out))
        ood_scores = off_topic_scores(scored, models)
        conflicts = cross_class_duplicates(config)
        findings = collect(scored, ranked, ood_scores, conflicts)
        summary = write_audit(out, scored, findings, config, folds, models, weak_or_strong)
        if manifest is not None:
            summary = dataclasses.replace(summary, manifest=write_manifest(manifest, scored, findings, relabel))
        atomic_write_json(out / runfiles.AUDIT_SUMMARY, summary.to_dict())
    return summary


def read_scored(cv_folder: Path) -> Scored:
    classes, rows = out_of_fold(cv_folder)
    labels = np.array([classes.index(row.label) for row in rows], dtype=np.int64)
    probabilities = np.asarray([row.probabilities for row in rows], dtype=np.float64).reshape(-1, len(classes))
    return Scored(classes, rows, labels, probabilities)


def collect(
    scored: Scored, ranked: np.ndarray, ood_scores: np.ndarray, conflicts: list[tuple[str, str, int]]
) -> list[Finding]:
    """Every flagged image once: label issues in cleanlab's order, then the others by self-confidence."""
    issues: dict[int, list[str]] = {int(i): [LABEL] for i in ranked}
    for i in far_below(ood_scores):
        issues.setdefault(int(i), []).append(OFF_TOPIC)
    position = {row.path: i for i, row in enumerate(scored.rows)}
    notes = {}
    for path, other, distance in conflicts:
        if path in position:
            issues.setdefault(position[path], []).append(CONFLICT)
            notes[position[path]] = f"near-duplicate (hash distance {distance}) of {display_path(other)}"
    self_confidence = scored.probabilities[np.arange(len(scored.labels)), scored.labels]
    order = list(dict.fromkeys([int(i) for i in ranked] + sorted(issues, key=lambda i: self_confidence[i])))
    return [
        Finding(
            scored.rows[i].path,
            scored.rows[i].label,
            scored.classes[int(scored.probabilities[i].argmax())],
            float(self_confidence[i]),
            tuple(dict.fromkeys(issues[i])),
            float(ood_scores[i]),
            scored.rows[i].split,
            notes.get(i, ""),
        )
        for i in order
    ]


def write_audit(
    out: Path,
    scored: Scored,
    findings: list[Finding],
    config: TrainConfig,
    folds: int,
    models: FoldModels,
    weak_or_strong: Strength,
) -> AuditResult:
    from vggtune.results.auditpage import write_page

    out.mkdir(parents=True, exist_ok=True)
    write_issues_csv(out / runfiles.AUDIT_ISSUES, findings)
    counts = {kind: sum(kind in f.issues for f in findings) for kind in (LABEL, OFF_TOPIC, CONFLICT)}
    summary = AuditResult(
        data=config.data,
        images=len(scored.rows),
        classes=scored.classes,
        folds=folds,
        cv=config.run.out,
        flagged=len(findings),
        by_issue=counts,
        accuracy_out_of_fold=weak_or_strong.accuracy if len(scored.rows) else None,
        majority_class=weak_or_strong.majority_class,
        majority_share=weak_or_strong.majority_share,
        beats_majority_p=weak_or_strong.p,
        label_issues_trusted=weak_or_strong.trusted,
    )
    write_page(out / runfiles.AUDIT_PAGE, summary, findings, models)
    say(
        f"audit: {len(findings)} of {len(scored.rows)} images flagged ({counts[LABEL]} label, {counts[OFF_TOPIC]} "
        f"out of distribution, {counts[CONFLICT]} cross-class duplicates) -> {display_path(out)}"
    )
    return summary


ISSUE_COLUMNS = (
    "rank",
    "path",
    "given_label",
    "suggested_label",
    "given_label_probability",
    "issues",
    "ood_score",
    "fold",
    "note",
)


def write_issues_csv(path: Path, findings: list[Finding]) -> None:
    write_csv(
        path,
        ISSUE_COLUMNS,
        (
            [
                rank,
                f.path,
                f.given,
                f.suggested,
                f"{f.given_probability:.6f}",
                "+".join(f.issues),
                "" if np.isnan(f.ood_score) else f"{f.ood_score:.6f}",
                f.fold,
                f.note,
            ]
            for rank, f in enumerate(findings, 1)
        ),
    )


def write_manifest(path: Path, scored: Scored, findings: list[Finding], relabel: bool) -> CleanedManifest:
    """A manifest (path,label) of the audited images without the flagged ones; with `relabel`, an image
    flagged only for its label stays, with the suggested label."""
    flagged = {f.path: f for f in findings}
    rows, relabelled = [], 0
    for row in scored.rows:
        finding = flagged.get(row.path)
        if finding is None:
            rows.append([os.path.abspath(row.path), row.label])
        elif relabel and finding.issues == (LABEL,) and finding.suggested != row.label:
            rows.append([os.path.abspath(row.path), finding.suggested])
            relabelled += 1
    write_csv(path, ["path", "label"], rows)
    kept = len(rows)
    say(
        f"audit: manifest {display_path(path)}: {kept} images ({relabelled} relabelled, "
        f"{len(scored.rows) - kept} left out); `vggtune train {display_path(path)}` trains on it"
    )
    return CleanedManifest(str(path), kept, relabelled, len(scored.rows) - kept)
