"""The names of a run folder's files, and the questions asked of a folder before it is opened: is it a
run, and is it finished. `RunDir` (training/rundir.py) reads and writes the files and `ModelSpec`
(model/spec.py) the model's two; this module sits in the foundation so that discovery (data/), which
comes before them, can tell a run folder from a class of images. No other module spells these names
(tests/test_architecture.py)."""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"  # the resolved TrainConfig: a run started here
MODEL = "model.json"  # what the model is (ModelSpec)
WEIGHTS = "model.safetensors"  # its tensors
METRICS = "metrics.json"  # validation and test metrics, timings, environment: written when a run finishes
HISTORY = "metrics.jsonl"  # one line an epoch
SPLITS = "splits.json"  # which file went where
REJECTED = "rejected.csv"  # every file left out, why, its kind and folder
NEAR_DUPLICATES = "near_duplicates.csv"
PREDICTIONS = "predictions.csv"  # each validation and test image's probabilities
EVALUATION = "evaluation.json"  # `vggtune evaluate`'s result (its CSV and page beside it)
REPORT = "report.html"
MODEL_CARD = "README.md"
STATE = "state"  # the checkpoints of an unfinished run
INT8 = "int8.json"  # in STATE: the int8 blocks' calibration while the run trains
TENSORBOARD = "tensorboard"  # TensorBoard's event files
# embeddings of a sample of the training images: the fence new images are measured against (results/shift.py);
# written on the first check of a batch, while the training images are at hand
SHIFT_REFERENCE = "shift_reference.safetensors"
EXPLAIN = "explain"  # `vggtune explain`'s overlays, where no --out is given
# `vggtune export`'s files, by format ("" for fp32, "-int8"): exporting.py's registry names them from here
EXPORTS = {"onnx": "model{}.onnx", "openvino": "model{}.xml", "tflite": "model{}.tflite"}

# `vggtune data audit`'s folder (not a run folder): the findings, their page and the summary
AUDIT_ISSUES = "issues.csv"
AUDIT_PAGE = "audit.html"
AUDIT_SUMMARY = "audit.json"

NAMES = (
    CONFIG,
    MODEL,
    WEIGHTS,
    METRICS,
    HISTORY,
    SPLITS,
    REJECTED,
    NEAR_DUPLICATES,
    PREDICTIONS,
    EVALUATION,
    REPORT,
    MODEL_CARD,
    SHIFT_REFERENCE,
)


RUNS = "runs"  # where `vggtune train` writes without --out: runs/train, then runs/train2, runs/train3, ...
FIRST_RUN = "train"


def default_run(resume: bool = False, root: str | Path = RUNS) -> str:
    """Where `vggtune train` writes when no --out is given, as Ultralytics does: runs/train, or the first of
    runs/train2, runs/train3, ... that is new or empty; with `resume`, the last of them a run started in."""
    root = Path(root)
    candidates = [root / FIRST_RUN] + [root / f"{FIRST_RUN}{n}" for n in range(2, 10_000)]
    if resume:
        started = [path for path in candidates[: _numbered(root) + 1] if is_started(path)]
        return str(started[-1] if started else candidates[0])
    for path in candidates:
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return str(path)
    raise RuntimeError(f"{root}: 10,000 runs; give --out")


def _numbered(root: Path) -> int:
    """The highest n of root/train<n> there is (1 for root/train alone, 0 for none)."""
    if not root.is_dir():
        return 0
    found = [0]
    for entry in root.iterdir():
        suffix = entry.name[len(FIRST_RUN) :]
        if entry.name.startswith(FIRST_RUN) and (suffix == "" or suffix.isdigit()):
            found.append(int(suffix or 1))
    return max(found)


def is_started(path: Path) -> bool:
    """A run began in `path`: its config is saved (what --resume and cv's kept folds need)."""
    return (path / CONFIG).is_file()


def is_run(path: Path) -> bool:
    """What `vggtune train` wrote, started or finished: its config beside a model, checkpoints or epochs."""
    return is_started(path) and any((path / name).exists() for name in (MODEL, STATE, HISTORY))


def is_finished(path: Path) -> bool:
    """A run that ended: its config, model and final metrics are there."""
    return is_started(path) and (path / METRICS).is_file() and (path / MODEL).is_file()
