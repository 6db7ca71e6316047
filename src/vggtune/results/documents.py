"""A run's documents: report.html (of its own test split, or of a labelled folder) and the model card README.md,
written at the end of training and by `vggtune report`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vggtune.deploy.predict import Predictor
from vggtune.progress import say
from vggtune.results.evaluated import from_training, score
from vggtune.results.modelcard import write_model_card
from vggtune.results.reportpage import write_report

if TYPE_CHECKING:  # annotations only
    from vggtune.features.engine import Engine
    from vggtune.training.rundir import RunDir


def write_documents(
    folder: RunDir, data: str | None = None, out: str | Path | None = None, engine: str | Engine = "auto"
) -> tuple[Path, Path | None]:
    """The report (of the run's own test split, or of a labelled folder `data`) and, for the run's own
    split, the model card README.md. Returns their paths (no card for another folder)."""
    predictor = Predictor(folder.path, engine=engine)
    if data:
        return write_report(folder, score(predictor, folder, data), predictor, out), None
    evaluated = from_training(folder, predictor)
    return write_report(folder, evaluated, predictor, out), write_model_card(folder, evaluated)


def write_documents_or_warn(folder: RunDir, engine: str | Engine = "auto") -> None:
    """report.html and README.md at the end of training; a failure here leaves the trained run intact."""
    try:
        write_documents(folder, engine=engine)
    except Exception as exc:  # noqa: BLE001 - the model and metrics are saved; say what went wrong
        say(f"warning: report.html not written ({type(exc).__name__}: {exc}); `vggtune report RUN` retries")
