"""The verb that judges a finished run on labelled images and writes what it finds: `evaluate` (metrics as
JSON, each image's probabilities as CSV, the report, and a warning where the images differ from the training
images). The report and the model card of a run are documents.py's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vggtune import distributed
from vggtune.deploy.predict import Predictor
from vggtune.fsutil import atomic_write_json, display_path
from vggtune.results import shift
from vggtune.results.evaluated import score, validation_gap
from vggtune.results.reportpage import write_report
from vggtune.training.rundir import write_predictions

if TYPE_CHECKING:  # annotations only
    from vggtune.features.engine import Engine
    from vggtune.training.figures import Figures
    from vggtune.training.rundir import RunDir


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` found on a set of labelled images: its metrics, the files it could not read, which
    set it was (the run's test split, or a folder), and the sentence said where its accuracy falls below
    the validation split's interval. `to_dict()` is evaluation.json."""

    metrics: Figures  # Metrics, or a multi-label model's MultiLabelMetrics
    rejected: list[tuple[str, str]]
    data: str
    validation_gap: str | None
    shift: str | None = None  # the warning where the images differ from the training images (results/shift.py)

    def to_dict(self) -> dict:
        return {
            **self.metrics.to_dict(),
            "rejected": [{"path": display_path(path), "reason": reason} for path, reason in self.rejected],
            "data": self.data,
            "validation_gap": self.validation_gap,
            "shift": self.shift,
        }


def evaluate(
    folder: RunDir,
    data_dir: str | None = None,
    output: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    report: bool = True,
    engine: str | Engine = "auto",
    threshold: float | None = None,
    positive_class: str | None = None,
) -> Evaluation:
    """Metrics of a run's model on labelled images, written as JSON (default RUN/evaluation.json), with
    each image's probabilities (*.predictions.csv) and the report (*.html) beside it. Under torchrun each
    rank scores its share of the images. `threshold`: a two-class decision threshold instead of model.json's."""
    predictor = Predictor(
        folder.path,
        device=device,
        precision=precision,
        engine=engine,
        threshold=threshold,
        positive_class=positive_class,
    )
    embedded: list = []  # the images' embeddings, as the prediction computes them: the shift check's
    evaluated = score(predictor, folder, data_dir, embedded)
    metrics = evaluated.figures
    gap = validation_gap(folder, metrics, evaluated.data)
    result = Evaluation(metrics, list(evaluated.rejected), evaluated.data, gap)
    if not distributed.is_main():  # under torchrun, rank 0 writes
        return result
    target = Path(output) if output else folder.evaluation_file()
    with distributed.alone():  # the other ranks wait at the job's last barrier
        # the run's own test split is the training source by construction: only another folder is checked
        if data_dir:
            given = [
                predictor.spec.task.answer(predictor.classes, row)[0]
                for row in predictor.spec.decide(evaluated.probabilities)
            ]
            found = shift.check(folder, predictor, [row.path for row in evaluated.rows], given, embedded)
            result = dataclasses.replace(result, shift=found.warning if found else None)
        atomic_write_json(target, result.to_dict())
        write_predictions(target.with_suffix(".predictions.csv"), evaluated.rows, predictor.spec)
        if report:
            write_report(folder, evaluated, predictor, target.with_suffix(".html"))
    return result
