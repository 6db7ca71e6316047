"""Cross-validation: the configured recipe trained once per fold, each fold's model scored on the
images it left out, and those out-of-fold predictions pooled, so every image is a test image once.

    for k in 1..n:  fit(config with fold k of n)    # RUN/fold-k: an ordinary run folder
    pool the folds' test predictions                 # RUN/cv.json, RUN/cv_predictions.csv

The folds share the feature cache (its key is the image's content and the view), so each view is
extracted by the first fold that needs it and read from the cache by the others. A fold folder
that finished earlier is kept, and one that was interrupted is resumed, so a stopped
cross-validation continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vggtune.errors import UserError
from vggtune.fsutil import atomic_write_json, display_path
from vggtune.progress import say, verbosity
from vggtune.results.analysis import Intervals, intervals
from vggtune.training import figures
from vggtune.training.rundir import PredictionRow, RunDir, read_predictions, write_predictions

if TYPE_CHECKING:  # annotations only
    from vggtune.tasks import Task
    from vggtune.training.config import TrainConfig


@dataclass(frozen=True)
class FoldResult:
    """One fold: its number, the metrics of the images it left out, the seconds it took (None: unknown)."""

    fold: int
    metrics: figures.Figures
    seconds: float | None

    def to_dict(self) -> dict:
        return {"fold": self.fold, **figures.summary(self.metrics), "seconds": self.seconds}


@dataclass(frozen=True)
class CrossValidation:
    """What `vggtune cv` returns: each fold's figures, and the pooled out-of-fold figures with their 95 %
    intervals (Wilson for accuracy, a stratified bootstrap for the others). `to_dict()` is cv.json."""

    classes: list[str]
    pooled: figures.Figures  # Metrics, or MultiLabelMetrics for multi-label data
    intervals_95: Intervals
    per_fold: tuple[FoldResult, ...]
    config: dict  # the resolved TrainConfig every fold was trained with (its out: the cv folder)

    @property
    def folds(self) -> int:
        return len(self.per_fold)

    def to_dict(self) -> dict:
        bounds = self.intervals_95.to_dict()
        bounds.update({key: list(bound) for key, bound in self.pooled.own_intervals().items()})  # multi-label: mAP's...
        return {
            "folds": self.folds,
            "classes": self.classes,
            "pooled": {**figures.summary(self.pooled), "intervals_95": bounds},
            "per_fold": [fold.to_dict() for fold in self.per_fold],
            "config": self.config,
        }


def fold_config(config: TrainConfig, fold: int, folds: int) -> TrainConfig:
    return config.with_run(out=str(Path(config.run.out) / f"fold-{fold}"), cv_folds=folds, cv_fold=fold, no_report=True)


def cross_validate(config: TrainConfig, folds: int) -> CrossValidation:
    """Trains `config` on each of `folds` folds in config.run.out; writes cv.json and cv_predictions.csv."""
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise UserError(f"--folds: received {folds!r}; allowed: a whole number >= 2")
    configs = [fold_config(config, k, folds) for k in range(1, folds + 1)]  # checks the options first
    config.check_out()
    _check_folds(config.data, folds)
    earlier = {row["fold"]: row["seconds"] for row in (_read_cv(Path(config.run.out)) or {}).get("per_fold", [])}
    seconds = []
    with verbosity(config.run.quiet):
        for fold_config_k in configs:
            started = time.perf_counter()
            trained = _fit_fold(fold_config_k)
            # A kept fold's time is the one the earlier call measured: in cv.json, else in the fold's metrics.
            seconds.append(
                round(time.perf_counter() - started, 1)
                if trained
                else earlier.get(fold_config_k.run.cv_fold) or _fold_seconds(fold_config_k)
            )
    return pool(Path(config.run.out), configs, seconds)


def _fold_seconds(config: TrainConfig) -> float | None:
    """The seconds the finished fold's last training call took, from its metrics.json."""
    try:
        metrics = RunDir(config.run.out).metrics()
    except (OSError, ValueError):
        return None
    return metrics.timing.whole_call_s if metrics else None


def _check_folds(data: str, folds: int) -> None:
    """Each fold must test every class: no class may have fewer images than there are folds (counted
    from the files found, before any is read, so that nothing trains first)."""
    from vggtune.data.discovery import discover

    counts = discover(data).counts()
    smallest = min(counts, key=lambda name: counts[name])
    if folds > counts[smallest]:
        raise UserError(
            f"--folds: received {folds}, but class {smallest!r} has {counts[smallest]} images; "
            f"allowed: at most {counts[smallest]} folds, so that each fold tests every class"
        )


def _fit_fold(config: TrainConfig) -> bool:
    """Trains one fold, or resumes it, or keeps it when it finished earlier with the same config (False)."""
    from vggtune.training.schedule import fit

    folder = RunDir(config.run.out)
    label = f"fold {config.run.cv_fold}/{config.run.cv_folds}"
    if folder.is_started():
        saved = folder.config()
        if saved.with_run(quiet=config.run.quiet) != config:  # quiet changes no result
            raise UserError(
                f"cv: {display_path(folder.path)} was trained with other options; "
                "allowed: the same options as before, or a new --out"
            )
        if folder.is_finished():
            say(f"{label}: finished earlier, kept")
            return False
        say(f"{label}: resuming")
        fit(config, resume=True)
        return True
    say(f"{label}: training")
    fit(config)
    return True


def pool(root: Path, configs: list[TrainConfig], seconds: list[float | None]) -> CrossValidation:
    """Per-fold and pooled metrics (with 95 % intervals) of the folds' test predictions."""
    classes = RunDir(configs[0].run.out).saved_splits().classes
    first = RunDir(configs[0].run.out).model_spec()
    task, positive = first.task, first.scoring.positive  # the same options, so the same task and positive class
    rows: list[PredictionRow] = []
    per_fold: list[FoldResult] = []
    image_thresholds: list[float] = []  # each image's fold's two-class threshold
    fold_thresholds: list[tuple[float, ...]] = []  # multi-label: each fold's, one a label
    for config, fold_seconds in zip(configs, seconds):
        tested = [row for row in RunDir(config.run.out).predictions(classes) or [] if row.split == "test"]
        scoring = RunDir(config.run.out).model_spec().scoring  # each fold decides at its own threshold(s)
        image_thresholds += [scoring.threshold] * len(tested)
        fold_thresholds.append(scoring.thresholds)
        metrics = _scored(task, tested, classes, scoring.threshold, scoring.thresholds, positive=positive)
        per_fold.append(FoldResult(config.run.cv_fold, metrics, fold_seconds))
        rows += [PredictionRow(f"fold-{config.run.cv_fold}", row.path, row.label, row.probabilities) for row in tested]
    # Pooled at one threshold: the folds' own where they agree (0.5 unless --threshold), else their median;
    # multi-label: each label's median over the folds.
    pooled_thresholds = tuple(np.median(fold_thresholds, axis=0).tolist()) if task.several else ()
    threshold = float(np.median(image_thresholds)) if image_thresholds else 0.5
    pooled = _scored(task, rows, classes, threshold, pooled_thresholds, intervals=True, positive=positive)
    base = configs[0].with_run(out=str(root), cv_folds=0, cv_fold=0, no_report=False)
    result = CrossValidation(
        classes, pooled, _intervals(rows, classes, pooled, threshold, positive), tuple(per_fold), base.to_dict()
    )
    pooled_rule = first.scoring.on_second(threshold).labelling_at(pooled_thresholds)
    write_predictions(root / "cv_predictions.csv", rows, dataclasses.replace(first, scoring=pooled_rule))
    atomic_write_json(root / "cv.json", result.to_dict())
    return result


def _scored(
    task: Task,
    rows: list[PredictionRow],
    classes: list[str],
    threshold: float,
    thresholds: tuple[float, ...],
    intervals: bool = False,
    positive: int = 1,
) -> figures.Figures:
    """The task's figures of scored rows: Metrics, or MultiLabelMetrics at `thresholds` (one a label)."""
    probabilities = np.asarray([row.probabilities for row in rows]).reshape(-1, len(classes))
    truth = figures.truth(task, [row.label for row in rows], classes)
    return figures.figures(task, truth, probabilities, classes, threshold, thresholds, intervals, positive)


def _intervals(
    rows: list[PredictionRow], classes: list[str], pooled: figures.Figures, threshold: float, positive: int
) -> Intervals:
    """The pooled figures' 95 % intervals: Wilson for accuracy, a stratified bootstrap for the others;
    multi-label: subset accuracy's Wilson interval and macro F1's (mAP's and micro F1's are the pooled
    record's own `intervals_95`)."""
    own = pooled.own_intervals()
    if own:  # a multi-label record's bootstrap intervals: its subset accuracy's Wilson beside them
        return Intervals(pooled.accuracy_95, f1_macro=own.get("f1_macro"))
    labels = [classes.index(row.label) for row in rows]
    probabilities = np.asarray([row.probabilities for row in rows]).reshape(-1, len(classes))
    return intervals(labels, probabilities, classes, threshold=threshold, positive=positive)


def out_of_fold(root: Path) -> tuple[list[str], list[PredictionRow]]:
    """The classes and every image's out-of-fold row (cv_predictions.csv) of a finished `vggtune cv` in `root`:
    what the audit ranks. The cv folder's files are written and read here alone."""
    summary = _read_cv(root)
    if summary is None:
        raise UserError(f"{display_path(root)} holds no cv.json; allowed: a folder `vggtune cv` finished in")
    classes = list(summary["classes"])
    return classes, read_predictions(root / "cv_predictions.csv", classes)


def _read_cv(root: Path) -> dict | None:
    """cv.json as an earlier `vggtune cv` in this folder wrote it, if any."""
    path = root / "cv.json"
    return json.loads(path.read_text()) if path.is_file() else None
