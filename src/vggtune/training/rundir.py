"""The run directory: everything needed to use or continue a run, in safetensors, JSON and YAML.

`config.yaml` (the resolved config), `metrics.jsonl` (one line per epoch), `metrics.json`,
`model.safetensors` + `model.json`, `rejected.csv`, `near_duplicates.csv`, `splits.json`,
`predictions.csv` (each val and test image's probabilities), `report.html`, `README.md` (the model card),
and `state/` (per-stage checkpoints and the int8 calibration) while a run can be resumed.
Every file is written under a temporary name and renamed (fsutil.atomic_file).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from vggtune import runfiles
from vggtune.data import similar
from vggtune.data.items import IN_DATA, KINDS, UNREADABLE, WHERE, Rejected
from vggtune.errors import UserError
from vggtune.fsutil import (
    atomic_write_json,
    atomic_write_text,
    display_path,
    load_tensors,
    remove_stale_temporaries,
    save_tensors,
    write_csv,
)
from vggtune.model.spec import ModelSpec
from vggtune.training import figures
from vggtune.training.config import TrainConfig, load_config, save_config


@dataclass(frozen=True)
class PredictionRow:
    """One scored image: its split, path, true class and the probability of each class."""

    split: str
    path: str
    label: str
    probabilities: list[float]


def write_predictions(path: Path, rows: list[PredictionRow], spec: ModelSpec) -> None:
    """predictions.csv: each image's split, path, true class, the class the model's rule in force gives it (two
    classes: at its threshold, not the larger probability) and every class's probability; for a multi-label
    model the true and predicted labels (past each label's threshold) joined by ";"."""
    classes = list(spec.classes)
    probabilities = np.asarray([row.probabilities for row in rows], dtype=np.float64).reshape(-1, len(classes))
    decided = spec.decide(probabilities)
    write_csv(
        path,
        ["split", "path", "label", "predicted", *classes],
        (
            [
                row.split,
                row.path,
                row.label,
                figures.label_text(classes, given),
                *(f"{p:.9g}" for p in row.probabilities),
            ]
            for row, given in zip(rows, decided)
        ),
    )


def write_rejected_csv(path: Path, rejected: Sequence[tuple[str, str]]) -> None:
    """rejected.csv (and `data check --output`): path, the reason a person reads, its kind (items.KINDS) for
    programs, and the folder it was in (DATA, or a given val or test folder)."""
    rows = map(Rejected.of, rejected)
    write_csv(path, ["path", "reason", "kind", "folder"], ([display_path(r[0]), r[1], r.kind, r.where] for r in rows))


def read_predictions(path: Path, classes: list[str]) -> list[PredictionRow]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return [
            PredictionRow(row["split"], row["path"], row["label"], [float(row[c]) for c in classes])
            for row in csv.DictReader(handle)
        ]


@dataclass(frozen=True)
class SplitItem:
    path: str
    label: int  # the index of its class in RunSplits.classes (multi-label: its stratum)
    sha256: str
    targets: tuple[int, ...] | None = None  # multi-label: the indexes of its labels


def _split_row(item) -> dict:
    """splits.json's row of an item: a multi-label item's labels beside its stratum."""
    row = {"path": item.path, "label": item.label, "sha256": item.sha256}
    if item.targets is not None:
        row["labels"] = list(item.targets)
    return row


@dataclass(frozen=True)
class RunSplits:
    """splits.json: the classes, and the images each split kept (those that gave features)."""

    classes: list[str]
    train: list[SplitItem]
    val: list[SplitItem]
    test: list[SplitItem]

    def counts(self, split: str) -> list[int]:
        """Images of each class in `split` (multi-label: carrying each label)."""
        counts = [0] * len(self.classes)
        for item in getattr(self, split):
            for label in item.targets if item.targets is not None else (item.label,):
                counts[label] += 1
        return counts


@dataclass(frozen=True)
class NearDuplicate:
    path: str
    split: str
    other: str
    other_split: str
    distance: int
    label_conflict: bool = False  # filed under two classes and alike in pixels: one image with two labels

    @property
    def across(self) -> bool:
        """The pair straddles two splits: a split sees (almost) its own images."""
        return self.split != self.other_split


@dataclass(frozen=True)
class Timing:
    """The seconds each part of a run took (metrics.json's `timing`), by step name in the order measured:
    `features_s` and `features_<split>_s`, `<stage>_s`, `score_<split>_s`, `this_call_s` (the whole call),
    and `damaged_cache_shards` (a count of cache shards computed again)."""

    steps: dict[str, float]

    @property
    def whole_call_s(self) -> float | None:
        """The training call from start to scores."""
        return self.steps.get("this_call_s")

    def to_dict(self) -> dict[str, float]:
        return dict(self.steps)

    @classmethod
    def from_dict(cls, values: dict | None) -> Timing:
        return cls(dict(values or {}))


@dataclass(frozen=True)
class Environment:
    """What a reader of the results needs to reproduce them (metrics.json's `environment`): versions, the
    device and processor, the weights and where they came from, the precision, the engine of the frozen
    blocks, the processes, and the feature cache's use (views wanted and computed). A field an older
    metrics.json lacks is None."""

    vggtune: str | None = None
    torch: str | None = None
    torchvision: str | None = None
    numpy: str | None = None
    python: str | None = None
    device: str | None = None
    processor: str | None = None
    weights: str | None = None
    weights_source: str | None = None
    precision: str | None = None
    engine: str | None = None
    processes: int | None = None
    feature_cache: dict[str, int] | None = None  # views_wanted, views_computed

    def facts(self) -> list[tuple[str, object]]:
        """(name, value) of every recorded field but the cache's, for a reader's table."""
        recorded = [(f.name, getattr(self, f.name)) for f in fields(self) if f.name != "feature_cache"]
        return [(name, value) for name, value in recorded if value is not None]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict | None) -> Environment:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in (values or {}).items() if key in known})


@dataclass(frozen=True)
class RunMetrics:
    """metrics.json: the final scores, what each part took, the machine, and the epoch each stage kept."""

    val: figures.Figures | None  # Metrics, or a multi-label run's MultiLabelMetrics
    test: figures.Figures | None
    timing: Timing
    environment: Environment
    kept_epochs: dict[str, int]  # stage -> the epoch whose parameters it kept (lowest validation loss)


def _targets(row: dict) -> tuple[int, ...] | None:
    return tuple(int(label) for label in row["labels"]) if "labels" in row else None


def _known(value: str | None, allowed: tuple[str, ...], otherwise: str) -> str:
    """A CSV cell that names one of `allowed`, else `otherwise` (a file written before the column was)."""
    return value if value is not None and value in allowed else otherwise


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def finished_under(cls, root: Path) -> list[RunDir]:
        """Each folder under `root` (or itself) holding a finished run, in the order of a sorted walk."""
        if not root.is_dir():
            what = "is a file" if root.exists() else "does not exist"
            raise UserError(f"runs: {display_path(root)} {what}; allowed: a folder of run directories (default runs)")
        found = []
        for current, subfolders, _files in os.walk(root):
            subfolders[:] = sorted(name for name in subfolders if name not in (runfiles.STATE, runfiles.TENSORBOARD))
            if runfiles.is_finished(Path(current)):
                found.append(cls(current))
        return found

    @classmethod
    def prepared(cls, path: str | Path, resume: bool) -> RunDir:
        """The folder a run is about to use, checked (`prepare`): unused for a new run, a started run's for
        --resume."""
        folder = cls(path)
        folder.prepare(resume)
        return folder

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """A folder a run started in (it holds config.yaml): the one check for "is this a run"."""
        run = cls(path)
        if not run.is_started():
            raise UserError(
                f"--resume: {display_path(run.path)} is not a vggtune run (no config.yaml); "
                "allowed: the --out folder of an earlier run"
            )
        return run

    def is_started(self) -> bool:
        return runfiles.is_started(self.path)

    def is_finished(self) -> bool:
        return runfiles.is_finished(self.path)

    # The files whose writers own their formats (the report page, the model card, evaluate's result) are
    # written there; the run folder says where.
    def report_file(self) -> Path:
        return self.path / runfiles.REPORT

    def model_card_file(self) -> Path:
        return self.path / runfiles.MODEL_CARD

    def evaluation_file(self) -> Path:
        return self.path / runfiles.EVALUATION

    def config(self) -> TrainConfig:
        return load_config(self.path / runfiles.CONFIG)

    def prepare(self, resume: bool) -> None:
        """A new run needs an unused folder; --resume needs a folder a run started in."""
        if resume:
            RunDir.existing(self.path)
            if (self.path / runfiles.MODEL).is_file() and not (self.path / runfiles.STATE).is_dir():
                raise UserError(
                    f"--resume: {display_path(self.path)} is a finished run; allowed: vggtune evaluate "
                    "or predict with it, or train into a new --out (--keep-state keeps a run resumable)"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise UserError(
                f"--out: {display_path(self.path)} already holds files; allowed: a new or empty folder, "
                "or --resume to continue the run in it"
            )

    def make(self) -> None:
        try:
            (self.path / runfiles.STATE).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"--out: cannot create {display_path(self.path)}: {exc.strerror}; allowed: a writable folder"
            ) from None
        if not os.access(self.path, os.W_OK):
            raise UserError(f"--out: {display_path(self.path)} is not writable; allowed: a writable folder")
        for folder in (self.path, self.path / runfiles.STATE):  # checkpoints cut short by a kill -9
            remove_stale_temporaries(folder)

    def write_config(self, config: TrainConfig) -> None:
        save_config(config, self.path / runfiles.CONFIG)

    def write_rejected(self, rejected: list[tuple[str, str]]) -> None:
        write_rejected_csv(self.path / runfiles.REJECTED, rejected)

    def write_near_duplicates(self, rows: list, conflicts: Sequence = ()) -> None:
        """near_duplicates.csv: each pair by perceptual hash, and whether it is a label conflict (`conflicts`:
        similar.report's, filed under two classes with their pixels alike)."""
        conflicting = {(a, b) for a, _, b, _, _ in conflicts}
        write_csv(
            self.path / runfiles.NEAR_DUPLICATES,
            ["path", "split", "near_duplicate_of", "its_split", "dhash_distance", "label_conflict"],
            (
                [display_path(a), split_a, display_path(b), split_b, d, "yes" if (a, b) in conflicting else ""]
                for a, split_a, b, split_b, d in rows
            ),
        )

    def write_data_reports(self, splits, rejected: list) -> tuple[int, int]:
        """rejected.csv and near_duplicates.csv: (near-duplicate pairs that fall in two splits, pairs filed
        under two classes)."""
        rows, conflicts = similar.report(splits)
        self.write_rejected(rejected)
        self.write_near_duplicates(rows, conflicts)
        return sum(1 for row in rows if row[1] != row[3]), len(conflicts)

    def write_splits(self, classes: list[str], splits: dict) -> None:
        atomic_write_json(
            self.path / runfiles.SPLITS,
            {
                "classes": classes,
                **{
                    # The path as Python holds it: JSON escapes undecodable bytes, so it opens again.
                    name: [_split_row(i) for i in items]
                    for name, items in splits.items()
                },
            },
        )

    def write_history(self, rows: list[figures.EpochRow]) -> None:
        atomic_write_text(self.path / runfiles.HISTORY, "".join(json.dumps(row.to_dict()) + "\n" for row in rows))

    def write_metrics(
        self,
        results: dict,
        timing: Timing,
        environment: Environment | None = None,
        kept_epochs: dict[str, int] | None = None,
        blend: figures.Blend | None = None,
    ) -> None:
        atomic_write_json(
            self.path / runfiles.METRICS,
            {
                **results,
                "timing": timing.to_dict(),
                "kept_epochs": kept_epochs or {},
                **({"blend": blend.to_dict()} if blend else {}),
                **({"environment": environment.to_dict()} if environment else {}),
            },
        )

    def write_predictions(self, rows: list[tuple], spec: ModelSpec) -> None:
        """rows: (split, path, true class, probabilities) of each scored image, decided by `spec`'s rule."""
        write_predictions(self.path / runfiles.PREDICTIONS, [PredictionRow(*row) for row in rows], spec)

    def predictions(self, classes: list[str]) -> list[PredictionRow] | None:
        """predictions.csv: each validation and test image's row; None for a run made before it was written."""
        path = self.path / runfiles.PREDICTIONS
        return read_predictions(path, classes) if path.is_file() else None

    def shift_reference(self) -> np.ndarray | None:
        """The training images' embeddings the shift check measures new images against; None before the first."""
        path = self.path / runfiles.SHIFT_REFERENCE
        return load_tensors(path)[0]["embeddings"].float().numpy() if path.is_file() else None

    def write_shift_reference(self, embeddings: np.ndarray, paths: int) -> None:
        save_tensors(
            self.path / runfiles.SHIFT_REFERENCE,
            {"embeddings": torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))},
            {"images": str(paths)},
        )

    def splits(self) -> RunSplits | None:
        values = self._json(runfiles.SPLITS)
        if values is None:
            return None
        items = {
            name: [
                SplitItem(row["path"], int(row["label"]), row["sha256"], _targets(row)) for row in values.get(name, [])
            ]
            for name in ("train", "val", "test")
        }
        return RunSplits(list(values["classes"]), **items)

    def saved_splits(self) -> RunSplits:
        """splits.json, which every run that got past its data check has."""
        splits = self.splits()
        if splits is None:
            raise UserError(f"{display_path(self.path)} has no splits.json; allowed: a run folder vggtune train wrote")
        return splits

    def rejected(self) -> list[Rejected]:
        """rejected.csv's files with reason, kind and folder (a run from before kinds or folders were written:
        "unreadable", in DATA)."""
        return [
            Rejected(
                row["path"],
                row["reason"],
                _known(row.get("kind"), KINDS, UNREADABLE),
                _known(row.get("folder"), WHERE, IN_DATA),
            )
            for row in self._csv(runfiles.REJECTED)
        ]

    def near_duplicates(self) -> list[NearDuplicate]:
        return [
            NearDuplicate(
                row["path"],
                row["split"],
                row["near_duplicate_of"],
                row["its_split"],
                int(row["dhash_distance"]),
                row.get("label_conflict") == "yes",
            )
            for row in self._csv(runfiles.NEAR_DUPLICATES)
        ]

    def metrics(self) -> RunMetrics | None:
        values = self._json(runfiles.METRICS)
        if values is None:
            return None
        return RunMetrics(
            figures.from_dict(values.get("val")),
            figures.from_dict(values.get("test")),
            Timing.from_dict(values.get("timing")),
            Environment.from_dict(values.get("environment")),
            {k: int(v) for k, v in (values.get("kept_epochs") or {}).items()},
        )

    def finished_metrics(self) -> RunMetrics:
        """metrics.json of a finished run."""
        metrics = self.metrics()
        if metrics is None:
            raise UserError(f"{display_path(self.path)} has no metrics.json; allowed: a finished run's folder")
        return metrics

    def history(self) -> list[figures.EpochRow]:
        """metrics.jsonl: one row per epoch (stage, epoch, train_loss, train_accuracy, val_loss, val_accuracy)."""
        path = self.path / runfiles.HISTORY
        if not path.is_file():
            return []
        return [figures.EpochRow.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]

    def _json(self, name: str):
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def _csv(self, name: str) -> list[dict]:
        path = self.path / name
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            return list(csv.DictReader(handle))

    def save_model(self, model: torch.nn.Module, spec: ModelSpec) -> None:
        save_tensors(self.path / runfiles.WEIGHTS, model.state_dict())
        spec.save(self.path)

    def model_spec(self) -> ModelSpec:
        """The description of the model this run saved (model.json)."""
        return ModelSpec.load(self.path)

    def state(self, stage: str, which: str) -> Path:
        """A stage's checkpoint: "last" (to resume) or "best" (what the stage keeps)."""
        return self.path / runfiles.STATE / f"{stage}-{which}.safetensors"

    def remove_state(self) -> None:
        """The checkpoints only a resume needs: a finished run keeps model, metrics and data reports."""
        shutil.rmtree(self.path / runfiles.STATE, ignore_errors=True)

    def save_calibration(self, calibration: dict) -> None:
        atomic_write_json(self.path / runfiles.STATE / runfiles.INT8, calibration)

    def calibration(self) -> dict | None:
        """The int8 calibration an interrupted run made, so that its resume uses the same scales."""
        path = self.path / runfiles.STATE / runfiles.INT8
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError) as exc:
            raise UserError(f"{display_path(path)}: unreadable ({exc}); allowed: the file training wrote") from None
