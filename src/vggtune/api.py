"""The Python API: the same verbs as the command line, arguments named like its flags.
The command line (cli/) calls these, and cliapi.py for what only it needs.

Importing this module imports no torch: each verb imports what it runs, so the command line
answers `--help` at once. `Predictor`, `load` and `expand_paths` are imported on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from vggtune import runfiles
from vggtune.errors import UserError, python_words
from vggtune.features.settings import AugmentConfig
from vggtune.fsutil import display_path
from vggtune.training.config import RunSettings, TrainConfig, check_option_names
from vggtune.version import __version__

if TYPE_CHECKING:  # annotations only: importing the API imports no torch
    from vggtune.data.check import DataCheck
    from vggtune.deploy.predict import Explained, Predictions
    from vggtune.results.auditrecords import AuditResult
    from vggtune.results.calibration import Calibration
    from vggtune.results.crossval import CrossValidation
    from vggtune.results.evaluation import Evaluation
    from vggtune.results.runs import RunRow
    from vggtune.results.tuning import TuneResult
    from vggtune.training.metrics import Metrics
    from vggtune.training.schedule import TrainResult

_LAZY = {
    "Predictor": "vggtune.deploy.predict",
    "load": "vggtune.deploy.predict",
    "expand_paths": "vggtune.deploy.inputs",
    "ExportCheckFailed": "vggtune.deploy.exporting",
    # the records the verbs return
    "Metrics": "vggtune.training.metrics",
    "ClassScores": "vggtune.training.metrics",
    "Interval": "vggtune.training.metrics",
    "MultiLabelMetrics": "vggtune.training.multilabel",
    "LabelScores": "vggtune.training.multilabel",
    "Intervals": "vggtune.results.analysis",
    "TuneResult": "vggtune.results.tuning",
    "TrialResult": "vggtune.results.tuning",
    "TrainResult": "vggtune.training.schedule",
    "Evaluation": "vggtune.results.evaluation",
    "Calibration": "vggtune.results.calibration",
    "CrossValidation": "vggtune.results.crossval",
    "FoldResult": "vggtune.results.crossval",
    "AuditResult": "vggtune.results.audit",
    "DataCheck": "vggtune.data.check",
    "RunRow": "vggtune.results.runs",
    "Predictions": "vggtune.deploy.predict",
    "Explained": "vggtune.deploy.predict",
    "FolderCheck": "vggtune.data.check",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vggtune.api' has no attribute {name!r}")


@python_words
def train(
    data: str | None = None,
    out: str | None = None,
    resume: bool = False,
    config: TrainConfig | None = None,
    **options,
) -> TrainResult:
    """Train on a folder of labelled images; returns the run's validation and test Metrics (`.val`, `.test`;
    `.to_dict()` for JSON).

    Options are the `vggtune train` flags with underscores: recipe ("vggtune", or "classic"
    for the textbook recipe; the options given beside it win), arch, epochs, finetune_epochs,
    finetune_blocks, lr, finetune_lr, batch_size, size, crop, head, hidden, dropout, views, label_smoothing, mixup,
    l2sp, block_lr_ratio, swa, tta, calibrate, mlflow (a tracking URI the finished run is sent to),
    val_split, test_split, seed, patience, precision, device, no_cache, quiet, val_data,
    test_data, weights, augment (an AugmentConfig or a dict). With `resume=True` the run in
    `out` continues with the config saved in it (only `quiet` may be given). Under torchrun
    (`torchrun --nproc-per-node N script.py`) each process is one rank of the job. Or give the whole
    recipe as `config=TrainConfig(...)` (then nothing else). A misspelt option is a `UserError` that
    names the closest one.
    """
    if config is not None:
        if data is not None or options or resume:
            raise UserError(
                "train: received config= with other arguments; allowed: train(config=TrainConfig(...)) alone"
            )
        return train_with(config)
    return train_with(train_config(data, out or runfiles.default_run(resume), resume, options), resume)


@python_words
def train_with(config: TrainConfig, resume: bool = False) -> TrainResult:
    """`train` from a TrainConfig: the run, then its report and model card (unless config.run.no_report)."""
    from vggtune.distributed import alone, is_main, join
    from vggtune.results.documents import write_documents_or_warn
    from vggtune.training.rundir import RunDir
    from vggtune.training.schedule import train_run

    join(config.run.device)  # under torchrun: this process is one rank of the job
    trained = train_run(config, resume=resume)
    if not is_main():
        return trained.results
    with alone():  # rank 0 alone from here: the others wait at the job's last barrier
        if not config.run.no_report:
            write_documents_or_warn(RunDir(config.run.out), trained.engine)
        if config.run.mlflow:
            from vggtune.results.mlflowlog import log_run

            log_run(RunDir(config.run.out), config.run.mlflow)
    return trained.results


def train_config(data: str | None, out: str, resume: bool, options: dict) -> TrainConfig:
    """The TrainConfig `train` runs: from DATA, --out and the options, or with `resume` the one saved in --out."""
    if resume:
        from vggtune.training.rundir import RunDir

        check_option_names(options)
        config = RunDir.existing(out).config()  # the folder as it is now, wherever it was made
        # What the saved config already says may be repeated; anything else would be silently ignored.
        changed = [
            f"--{name.replace('_', '-')} {value}"
            for name, value in options.items()
            if name != "quiet" and config.option(name) != value
        ]
        if data and os.path.abspath(os.fspath(data)) != config.data:
            changed.insert(0, f"DATA {data}")
        if changed:
            raise UserError(
                f"--resume: continues the run with the config saved in {display_path(out)}; received "
                f"{', '.join(changed)}, which it cannot change; allowed: --resume --out RUN [--quiet], "
                "or a new run in another --out"
            )
        return config.with_run(out=str(out), quiet=options.get("quiet", config.run.quiet))
    if not data:
        raise UserError("train: no DATA folder given; allowed: vggtune train FOLDER [--out RUN]")
    if options.get("mlflow"):
        from vggtune.results.mlflowlog import require

        require()  # before any image is read
    return TrainConfig.from_recipe(data=str(data), out=str(out), **options)


@python_words
def cv(data: str, out: str = "runs/cv", folds: int = 5, **options) -> CrossValidation:
    """Cross-validation: the recipe (`train`'s options) trained on each of `folds` folds in out/fold-K, scored
    on the images each left out; returns a CrossValidation (per fold, and pooled with 95 % intervals; `.to_dict()`
    is cv.json).
    Folds share the feature cache; finished folds are kept, so a stopped run continues."""
    from vggtune.launcher import launched_size
    from vggtune.results.crossval import cross_validate

    if launched_size() > 1:
        raise UserError(
            "cv: runs as one process (its folds are written by every rank otherwise); "
            "allowed: vggtune cv without torchrun, or vggtune train under torchrun"
        )
    if not data:
        raise UserError("cv: no DATA folder given; allowed: vggtune cv FOLDER [--folds 5] [--out RUN]")
    return cross_validate(TrainConfig.from_recipe(data=str(data), out=str(out), **options), folds)


@python_words
def tune(data: str, out: str = "runs/tune", trials: int = 20, timeout: float | None = None, **options) -> TuneResult:
    """A search over the recipe's levers (head, rates, dropout, class weights, fine-tune depth and epochs,
    views) with Optuna around `train`'s options: each trial trained and scored on the validation split,
    hopeless ones pruned, the study kept in out/study.db so an interrupted search resumes; the best setting
    trained into out/best. Returns a TuneResult (every trial, the best, its run's test Metrics; `.to_dict()` is
    out/tune.json)."""
    from vggtune.launcher import launched_size
    from vggtune.results.tuning import tune as _tune

    if launched_size() > 1:
        raise UserError("tune: runs as one process; allowed: vggtune tune without torchrun")
    if not data:
        raise UserError("tune: no DATA folder given; allowed: vggtune tune FOLDER --trials N [--out TUNE]")
    _refuse_several_labels(data, "tune")
    return _tune(TrainConfig.from_recipe(data=str(data), out=str(out), **options), trials, timeout)


@python_words
def audit(
    data: str,
    out: str = "runs/audit",
    folds: int = 5,
    cv: str | None = None,
    write_manifest: str | None = None,
    relabel: bool = False,
    **options,
) -> AuditResult:
    """The images whose label is probably wrong: `cv` (default out/cv; kept when its options match) scores
    every image with a model that never saw it, cleanlab ranks the label issues; images unlike all others and
    near-duplicates under two classes are flagged too. Writes out/issues.csv, out/audit.html, out/audit.json
    and, given `write_manifest`, a manifest without the flagged images (`relabel`: label issues relabelled
    instead). Options are `train`'s; returns an AuditResult (`.to_dict()` is audit.json)."""
    from vggtune.results.audit import audit as _audit

    if not data:
        raise UserError(
            "data audit: no DATA folder given; allowed: vggtune data audit FOLDER [--folds 5] [--out AUDIT]"
        )
    _refuse_several_labels(data, "data audit")
    cv_folder = cv or os.path.join(out, "cv")
    config = TrainConfig.from_recipe(data=str(data), out=str(cv_folder), **options)
    return _audit(config, folds, Path(out), Path(write_manifest) if write_manifest else None, relabel)


def _refuse_several_labels(data: str, command: str) -> None:
    """tune and the audit take one label per image: a multi-label manifest is refused before anything runs."""
    from vggtune.data.manifest import task_of

    if task_of(data).several:
        raise UserError(
            f"{command}: {display_path(data)} gives several labels per image (a labels column); allowed: one label "
            "per image for this command (train, cv, evaluate, predict, report, explain, serve and export take both)"
        )


@python_words
def runs(folder: str = "runs", sort: str = "run") -> list[RunRow]:
    """A row per finished run under `folder` (data, head, epochs, precision, test accuracy with its 95 %
    interval, log loss, wall time), sorted by the column `sort` (accuracy and images: best first)."""
    from vggtune.results.runs import table

    return table(folder, sort)


@python_words
def evaluate(run: str, data: str | None = None, output: str | None = None, **options) -> Evaluation:
    """Metrics of a trained run on its test split, or on a labelled folder `data`: an Evaluation (`.metrics`,
    `.rejected`, `.data`, `.validation_gap`; `.to_dict()` is evaluation.json)."""
    from vggtune.distributed import join
    from vggtune.results.evaluation import evaluate as _evaluate
    from vggtune.training.rundir import RunDir

    join(options.get("device", "auto"))
    return _evaluate(RunDir(run), data, output, **options)


@python_words
def calibrate(run: str, data: str, name: str | None = None, engine: str = "auto") -> Calibration:
    """Refits the run's decision rule on `data`, a few labelled images (tens) of the source the model is used on:
    for one class an image a recalibration of the probabilities (shrunk toward the rule in force), for several
    labels each label's threshold. Writes it into model.json (predict, evaluate, serve and export use it from
    then on), keeps the rule it replaced by name, and returns a Calibration: the figures before and after (out of
    sample), the rules in words, how far the new one could move."""
    from vggtune.results.calibration import calibrate as _calibrate
    from vggtune.training.rundir import RunDir

    if not data:
        raise UserError("calibrate: no DATA given; allowed: calibrate(RUN, DATA)")
    return _calibrate(RunDir.existing(run), data, name, engine)


@python_words
def restore_rule(run: str, name: str) -> str:
    """Puts an earlier decision rule of the run back in force ("trained": the one training chose); returns it in
    words."""
    from vggtune.results.calibration import restore
    from vggtune.training.rundir import RunDir

    return restore(RunDir.existing(run), name)


@python_words
def predict(
    run: str,
    paths: list[str],
    kaggle: bool = False,
    engine: str = "auto",
    threshold: float | None = None,
    positive_class: str | None = None,
) -> Predictions:
    """Predictions for image files and folders: a Predictions record (`.classes`, `.predictions`, `.rejected`:
    (input, reason) for the inputs that could not be read; `.rule`: the decision rule in force, in words).
    `kaggle`: the model must have two classes (Kaggle's id,label submission is the second class's
    probability). `threshold`: a two-class decision threshold on the positive class's probability instead of
    the one model.json holds; `positive_class`: the class the rule is said and set in terms of."""
    from vggtune.deploy.inputs import expand_paths
    from vggtune.deploy.predict import Predictions, load

    predictor = load(run, engine=engine, threshold=threshold, positive_class=positive_class)
    if kaggle and (len(predictor.classes) != 2 or predictor.spec.task.several):
        raise UserError(
            f"--kaggle writes the second class's probability of a two-class model; this model has "
            f"{len(predictor.classes)} classes; allowed: --format csv or json without --kaggle"
        )
    from vggtune.results import shift
    from vggtune.training.rundir import RunDir

    files, missing = expand_paths([str(path) for path in paths])
    embedded: list = []
    predictions, unreadable = predictor.predict(files, embeddings=embedded)
    paths, labels = [p.path for p in predictions], [p.label for p in predictions]
    found = shift.check(RunDir(run), predictor, paths, labels, embedded)
    warning = found.warning if found else None
    return Predictions(predictor.classes, predictions, missing + unreadable, predictor.spec.rule, warning)


@python_words
def report(run: str, data: str | None = None, out: str | None = None, engine: str = "auto") -> tuple[Path, Path | None]:
    """Writes report.html (of the run's test split, or of the labelled folder `data`) and, for the run's
    own split, the model card README.md; returns their paths."""
    from vggtune.results.documents import write_documents
    from vggtune.training.rundir import RunDir

    return write_documents(RunDir(run), data, out, engine)


@python_words
def explain(
    run: str, images: list, target: str | None = None, out: str | None = None, engine: str = "auto"
) -> Explained:
    """Grad-CAM overlays of image files or folders, as PNG files in `out` (default RUN/explain): an Explained
    record (`.explanations`, `.files` written, `.rejected`: (input, reason) for inputs that could not be read)."""
    from vggtune.deploy.gradcam import write_overlays
    from vggtune.deploy.inputs import expand_paths
    from vggtune.deploy.predict import Explained, load

    predictor = load(run, engine=engine)
    files, missing = expand_paths([str(image) for image in images])
    explanations, unreadable = predictor.explain(files, target)
    written = write_overlays(explanations, Path(out) if out else Path(run) / runfiles.EXPLAIN)
    return Explained(explanations, written, missing + unreadable)


@python_words
def export(run: str, out: str | None = None, precision: str = "fp32", format: str = "onnx"):
    """The whole classifier as ONNX (default RUN/model.onnx), OpenVINO IR (RUN/model.xml + .bin) or TFLite
    (RUN/model.tflite; fp32), int8 files named model-int8.*, with the metadata beside it (model.onnx.json, ...);
    checked against PyTorch on the run's test images before it is kept; returns the check's figures."""
    from vggtune.deploy.exporting import export as _export
    from vggtune.training.rundir import RunDir

    return _export(RunDir(run), out, precision, format)


@python_words
def serve(run: str, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Serves the run's model over HTTP until interrupted. Options: max_upload_mb, max_batch, wait_ms,
    token, no_auth, engine (see `vggtune serve --help`)."""
    from vggtune.deploy.service import ServeConfig
    from vggtune.deploy.webapp import serve as _serve
    from vggtune.results.watch import Watch

    _serve(ServeConfig(str(run), host, port, **options), watch=Watch.of_service)


@python_words
def check_data(
    folder: str, val_data: str | None = None, test_data: str | None = None, output: str | None = None
) -> DataCheck:
    """Scan a dataset as training would: a DataCheck (`.folders`, each with its images per class and rejected
    files; `.rejected`, every unusable file and why; `.near_duplicates`; `.conflicts`, near-duplicates under
    two classes); `output`: the unusable files written there as CSV (path, reason, kind)."""
    from vggtune.data.check import check
    from vggtune.training.rundir import write_rejected_csv

    result = check(folder, val_data, test_data)
    if output:
        write_rejected_csv(Path(output), result.rejected)
    return result


@python_words
def weights_sources() -> list[tuple[str, str]]:
    """Where the ImageNet weights come from, in order, and what each holds now."""
    from vggtune.model import weights

    return weights.describe_sources()


@python_words
def verify_weights(file: str | None = None):
    """The weights as a run would load them (from `file`, else the first source that answers)."""
    from vggtune.model import weights

    return weights.resolve(user_file=file, flag="--file")


@python_words
def convert_weights(file: str | None = None) -> tuple[str, Path]:
    """Converts weights (from `file`, else the first source) into the cache: (origin, cached path)."""
    from vggtune.model import weights

    loaded = weights.resolve(user_file=file, flag="--file")
    return loaded.source, weights.write_cache(loaded.record, loaded.state_dict, loaded.source)


@python_words
def cache_summary() -> tuple[Path, list[dict]]:
    """The feature cache's folder and, per key folder, its cut, views stored and bytes."""
    from vggtune.features import cache
    from vggtune.model import weights

    root = weights.home() / "features"
    return root, cache.summary(root)


@python_words
def clear_cache() -> tuple[Path, int]:
    """Deletes every cached feature (runs and converted weights stay); returns the folder and bytes freed."""
    from vggtune.features import cache
    from vggtune.model import weights

    root = weights.home() / "features"
    return root, cache.clear(root)


# The verbs and records users call and get back; what the command line needs beyond them is cliapi.py's.
__all__ = [
    "train",
    "train_with",
    "cv",
    "tune",
    "audit",
    "runs",
    "evaluate",
    "calibrate",
    "restore_rule",
    "predict",
    "report",
    "explain",
    "export",
    "serve",
    "load",
    "Predictor",
    "check_data",
    "weights_sources",
    "verify_weights",
    "convert_weights",
    "cache_summary",
    "clear_cache",
    "TrainConfig",
    "RunSettings",
    "AugmentConfig",
    "UserError",
    "ExportCheckFailed",
    "TrainResult",
    "Evaluation",
    "Calibration",
    "CrossValidation",
    "FoldResult",
    "AuditResult",
    "DataCheck",
    "FolderCheck",
    "RunRow",
    "Predictions",
    "Explained",
    "Metrics",
    "ClassScores",
    "Interval",
    "Intervals",
    "MultiLabelMetrics",
    "LabelScores",
    "TuneResult",
    "TrialResult",
    "__version__",
]
