"""Export of the whole classifier (VGG16 and the trained head) to where models run, each format
parity-checked against PyTorch before its file is kept.

    ONNX      model.onnx      onnxruntime           (onnxexport.py; fp32, or int8 by static quantization)
    OpenVINO  model.xml/.bin  openvino              (openvinoexport.py; from the ONNX graph, fp32 or int8)
    TFLite    model.tflite    ai-edge-litert        (tfliteexport.py; litert-torch, fp32, batch 1)

Every graph takes what any program can make without vggtune: uint8 RGB images, batch x size x
size x 3 (NHWC, as PIL or numpy hold a picture), already resized (shorter side to `resize`)
and centre-cropped; the normalisation and the softmax (or sigmoid) are inside. It returns
each class's probability. The classes, the preprocessing and the weights id travel in a JSON
file beside it (model.onnx.json, model.xml.json, model.tflite.json) and, where the format has
a place for them, in the file (ONNX's metadata, OpenVINO's rt_info).

The parity check runs the format's own runtime and PyTorch (fp32) on up to 64 of the run's own
test images: fp32 must agree to 1e-4 in every probability; int8 must give the same label on at
least 99 % of them and the run's test accuracy within half a point. A failed check keeps no file.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from vggtune import runfiles
from vggtune.deploy.inputs import labelled_files
from vggtune.errors import UserError
from vggtune.features.extract import decode_clean
from vggtune.fsutil import atomic_write_json, display_path
from vggtune.model.spec import ModelSpec, load_classifier
from vggtune.training.rundir import RunDir
from vggtune.version import __version__

PARITY_IMAGES = 64
FP32_TOLERANCE = 1e-4
INT8_AGREEMENT = 0.99
INT8_ACCURACY_POINTS = 0.5
PRECISIONS = ("fp32", "int8")


class FormatWriter(Protocol):
    """What a format's module offers (onnxexport, openvinoexport, tfliteexport): `write` the graph with its
    metadata `values` to `target`, and a `runner` of the written file (uint8 NHWC images in, probabilities out)."""

    def write(
        self,
        graph: ExportGraph,
        spec: ModelSpec,
        images: np.ndarray,
        target: Path,
        run: RunDir,
        precision: str,
        values: dict,
    ) -> None: ...

    def runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]: ...


@dataclass(frozen=True)
class ExportFormat:
    """One export format: the module that writes and runs it (a FormatWriter), its file in the run
    (`{}` is "" or "-int8"), the precisions it takes and the package its runtime needs."""

    name: str
    module: str
    file_name: str
    precisions: tuple[str, ...]
    package: str


# The registry: one line a format, named as api.EXPORT_FORMATS names them.
FORMATS = {
    kind.name: kind
    for kind in (
        ExportFormat("onnx", "vggtune.deploy.onnxexport", runfiles.EXPORTS["onnx"], PRECISIONS, "onnxruntime"),
        ExportFormat("openvino", "vggtune.deploy.openvinoexport", runfiles.EXPORTS["openvino"], PRECISIONS, "openvino"),
        ExportFormat("tflite", "vggtune.deploy.tfliteexport", runfiles.EXPORTS["tflite"], ("fp32",), "litert_torch"),
    )
}


class ExportGraph(nn.Module):
    """uint8 NHWC RGB in, class probabilities out: the weights' normalisation inside."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        prep = spec.preprocessing
        self.model, self.scoring, self.head = model, spec.scoring, spec.head
        self.bgr = prep.channel_order == "BGR"
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        if self.bgr:
            x = x.flip(1)
        # float32 throughout: TFLite has no float64 kernels (vggtune itself scores in float64, for the log loss)
        return self.scoring.classify(self.model, (x - self.mean) / self.std, self.head, torch.float32)


@dataclass(frozen=True)
class Exported:
    path: Path
    precision: str
    images_checked: int
    max_difference: float  # largest |exported - PyTorch| probability
    label_agreement: float  # share of images with the same label
    accuracy_exported: float | None  # on the run's test split (int8 only)
    accuracy_run: float | None


def metadata(spec: ModelSpec, precision: str, file_format: str = "onnx") -> dict:
    prep = spec.preprocessing
    return {
        "format": f"vggtune-{file_format}/1",
        "vggtune": __version__,
        "classes": list(spec.classes),
        "weights": spec.weights,
        "precision": precision,
        "head": spec.head.kind,
        "temperature": spec.scoring.temperature,
        "tta": spec.scoring.tta,
        # two classes: the label is the second class where its probability exceeds this (not the larger one)
        "threshold": spec.scoring.threshold,
        "input": {
            "name": "images",
            "dtype": "uint8",
            "layout": "NHWC",
            "channels": "RGB",
            "shape": ["batch", prep.size, prep.size, 3],
            "resize": prep.resize,
            "crop": prep.size,
            "fit": prep.fit,
            "fill": list(prep.fill),
            "how": f"{prep.resizing()} (bilinear, antialiased; `fill` the margins' colour), then the centre "
            f"{prep.size} x {prep.size} kept; normalisation is inside the graph",
        },
        "normalisation": {"mean": list(prep.mean), "std": list(prep.std), "channel_order": prep.channel_order},
        "output": {"name": "probabilities", "shape": ["batch", len(spec.classes)]},
        **spec.task.metadata(spec.classes, spec.scoring),  # how the outputs are read, where the task adds to it
    }


def float_model(run: Path, spec: ModelSpec) -> ExportGraph:
    """The run's classifier in fp32 on the CPU (an int8-trained run exports its float weights)."""
    model = load_classifier(run, dataclasses.replace(spec, int8=None))
    return ExportGraph(model.eval().to(memory_format=torch.contiguous_format), spec).eval()


def export(
    folder: RunDir, out: str | Path | None = None, precision: str = "fp32", file_format: str = "onnx"
) -> Exported:
    if file_format not in FORMATS:
        raise UserError(f"--format: received {file_format!r}; allowed: {', '.join(FORMATS)}")
    kind = FORMATS[file_format]
    if precision not in kind.precisions:
        raise UserError(f"--precision: received {precision!r} for {file_format}; allowed: {', '.join(kind.precisions)}")
    writer = _writer(kind)
    file_name = kind.file_name
    run = folder.path
    spec = ModelSpec.load(run)
    target = Path(out) if out else run / file_name.format("" if precision == "fp32" else "-int8")
    if target.suffix != Path(file_name).suffix:
        raise UserError(
            f"--out: received {display_path(target)} for --format {file_format}; allowed: a file name "
            f"ending in {Path(file_name).suffix}"
        )
    graph = float_model(run, spec)
    paths, names, _ = labelled_files(folder, list(spec.classes), None)
    labels = _truth(names, spec)
    images, kept = views_of(paths[:PARITY_IMAGES], spec)
    if not len(images):
        raise UserError(
            f"export: none of the run's test images could be read; allowed: a run whose "
            f"test images are in place ({display_path(run)}/splits.json lists them)"
        )
    values = metadata(spec, precision, file_format)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written and checked in a folder beside the target, then renamed into place: complete files or none.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        written = Path(scratch) / target.name
        writer.write(graph, spec, images, written, folder, precision, values)
        result = check(writer.runner(written), graph, images, precision, folder, spec, paths, labels)
        for path in sorted(Path(scratch).iterdir()):  # OpenVINO's .bin beside its .xml
            os.replace(path, target.parent / (target.name if path == written else target.stem + path.suffix))
    atomic_write_json(target.with_name(target.name + ".json"), values)  # model.onnx.json
    return dataclasses.replace(result, path=target)


def _writer(kind: ExportFormat) -> FormatWriter:
    package, file_format = kind.package, kind.name
    try:
        importlib.import_module(package)
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == package
        why = "is not installed" if missing else f"does not import here ({exc})"
        raise UserError(
            f"--format {file_format}: needs the {package.replace('_', '-')} package, which {why}; "
            f"allowed: pip install 'vggtune[{file_format}]' in an environment of its own"
        ) from None
    writer: FormatWriter = importlib.import_module(kind.module)
    return writer


class ExportCheckFailed(Exception):
    """The exported graph disagrees with PyTorch beyond the tolerance; the file was not kept."""


def views_of(paths: list[str], spec: ModelSpec) -> tuple[np.ndarray, list[int]]:
    """uint8 NHWC clean views of the readable paths, and their positions in `paths`."""
    views, kept = [], []
    for i, path in enumerate(paths):
        view, reason = decode_clean(path, spec.preprocessing)
        if view is not None:
            views.append(view.permute(1, 2, 0).numpy())
            kept.append(i)
    return (np.stack(views) if views else np.zeros((0, 0, 0, 3), np.uint8)), kept


def check(
    runner,
    graph: ExportGraph,
    images: np.ndarray,
    precision: str,
    folder: RunDir,
    spec: ModelSpec,
    paths: list[str],
    labels: np.ndarray,
) -> Exported:
    """The format's runtime (`runner`: uint8 NHWC images -> probabilities) against PyTorch fp32 on the
    run's test images; raises ExportCheckFailed."""
    exported_probabilities = runner(images)
    with torch.inference_mode():
        torch_probabilities = np.concatenate(
            [graph(torch.from_numpy(images[i : i + 16])).numpy() for i in range(0, len(images), 16)]
        )
    difference = float(np.abs(exported_probabilities - torch_probabilities).max())
    agreement = _agreeing(_decided(exported_probabilities, spec), _decided(torch_probabilities, spec))
    if precision == "fp32":
        if difference > FP32_TOLERANCE or agreement < 1:
            raise ExportCheckFailed(
                f"the exported model and PyTorch differ by {difference:.2e} (allowed "
                f"{FP32_TOLERANCE:.0e}) and agree on {agreement:.1%} of labels; the file was not kept"
            )
        return Exported(Path(), precision, len(images), difference, agreement, None, None)
    tested = folder.finished_metrics().test
    accuracy_run = float(tested.accuracy) if tested and tested.accuracy is not None else float("nan")
    all_images, kept = views_of(paths, spec)
    accuracy_exported = _agreeing(_decided(runner(all_images), spec), labels[kept])
    if agreement < INT8_AGREEMENT or abs(accuracy_exported - accuracy_run) * 100 > INT8_ACCURACY_POINTS:
        raise ExportCheckFailed(
            f"int8 agrees with PyTorch on {agreement:.1%} of labels (allowed: "
            f"{INT8_AGREEMENT:.0%}) and scores {accuracy_exported:.4f} against the run's "
            f"{accuracy_run:.4f} (allowed: {INT8_ACCURACY_POINTS} points); the file was not kept"
        )
    return Exported(Path(), precision, len(images), difference, agreement, accuracy_exported, accuracy_run)


def _truth(names: list[str], spec: ModelSpec) -> np.ndarray:
    """The test images' classes as indexes; a multi-label model's as (image, label) 0/1."""
    return spec.task.truth(names, spec.classes)


def _decided(probabilities: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Each image's class, or a multi-label model's (image, label) decisions at its thresholds."""
    return spec.decide(probabilities)


def _agreeing(first: np.ndarray, second: np.ndarray) -> float:
    """The share of images decided alike (multi-label: every label alike)."""
    return float((first == second).reshape(len(first), -1).all(axis=1).mean()) if len(first) else 1.0
