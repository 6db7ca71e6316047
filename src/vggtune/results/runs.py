"""`vggtune runs`: the finished runs under a folder, one row each, from their own files (config.yaml,
metrics.json): what they trained on and with, and how they scored on their test split (else validation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vggtune.errors import UserError
from vggtune.fsutil import display_path

if TYPE_CHECKING:  # annotations only: `vggtune runs --help` imports no torch or scikit-learn
    from vggtune.training.metrics import Interval
    from vggtune.training.rundir import RunDir


@dataclass(frozen=True)
class RunRow:
    """One finished run: where it is (relative to the folder listed), what it trained on and with, and how
    it scored on its test split (else validation; `split` None: neither). `to_dict()` is `--format json`'s row."""

    run: str
    data: str
    head: str
    epochs: int
    precision: str
    split: str | None
    images: int | None
    accuracy: float | None
    accuracy_95: Interval | None
    balanced_accuracy: float | None
    log_loss: float | None
    wall_s: float | None

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["accuracy_95"] = list(self.accuracy_95) if self.accuracy_95 else None
        return values


COLUMNS = tuple(field.name for field in dataclasses.fields(RunRow))
SORT_COLUMNS = tuple(column for column in COLUMNS if column != "accuracy_95")
DESCENDING = {"accuracy", "balanced_accuracy", "images"}  # sorted best first; every other column ascending


def row(folder: RunDir, root: Path) -> RunRow:
    run = folder.path
    config, metrics = folder.config(), folder.finished_metrics()
    split = "test" if metrics.test else "val" if metrics.val else None
    scores = metrics.test or metrics.val
    epochs = config.epochs + config.finetune_epochs
    return RunRow(
        run=display_path(run.relative_to(root)) if run != root else display_path(run.name),
        data=display_path(Path(config.data).name),
        head=folder.model_spec().head.kind,  # the head built (--head auto: the task's)
        epochs=epochs,
        precision=metrics.environment.precision or config.precision,
        split=split,
        images=scores.n if scores else None,
        accuracy=scores.accuracy if scores else None,
        accuracy_95=scores.accuracy_95 if scores else None,
        balanced_accuracy=scores.balanced_accuracy if scores else None,
        log_loss=scores.log_loss if scores else None,
        wall_s=metrics.timing.whole_call_s,
    )


def table(folder: str | Path, sort: str = "run") -> list[RunRow]:
    """A row per finished run under `folder`, sorted by the column `sort` (missing values last)."""
    if sort not in SORT_COLUMNS:
        raise UserError(f"--sort: received {sort!r}; allowed: {', '.join(SORT_COLUMNS)}")
    from vggtune.training.rundir import RunDir  # torch: not imported for the command line's --help

    root = Path(folder)
    rows = [row(run, root) for run in RunDir.finished_under(root)]
    present = [r for r in rows if getattr(r, sort) is not None]
    present.sort(key=lambda r: getattr(r, sort), reverse=sort in DESCENDING)
    return present + [r for r in rows if getattr(r, sort) is None]
