"""`vggtune evaluate`: a finished run's model judged on its test split or a labelled folder, written as
JSON, each image's probabilities (CSV) and the report."""
from __future__ import annotations

from pathlib import Path

from vggtune import distributed
from vggtune.deploy.predict import Predictor
from vggtune.fsutil import atomic_write_json, display_path
from vggtune.results.evaluated import score
from vggtune.results.reportpage import write_report
from vggtune.training.rundir import write_predictions


def evaluate(run: str | Path, data_dir: str | None = None, output: str | None = None,
             device: str = "auto", precision: str = "auto", report: bool = True) -> dict:
    """Metrics of a run's model on labelled images, written as JSON (default RUN/evaluation.json), with
    each image's probabilities (*.predictions.csv) and the report (*.html) beside it. Under torchrun each
    rank scores its share of the images."""
    predictor = Predictor(run, device=device, precision=precision)
    evaluated = score(predictor, Path(run), data_dir)
    result = evaluated.metrics()
    result["rejected"] = [{"path": display_path(p), "reason": r} for p, r in evaluated.rejected]
    result["data"] = evaluated.data
    if not distributed.is_main():          # under torchrun, rank 0 writes
        return result
    target = Path(output) if output else Path(run) / "evaluation.json"
    atomic_write_json(target, result)
    write_predictions(target.with_suffix(".predictions.csv"), predictor.classes, evaluated.rows)
    if report:
        write_report(run, evaluated, predictor, target.with_suffix(".html"))
    return result
