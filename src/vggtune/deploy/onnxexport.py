"""ONNX export of the whole classifier (VGG16 and the trained head), with a parity check.

The graph takes what any program can make without vggtune: uint8 RGB images, batch x size x
size x 3 (NHWC, as PIL or numpy hold a picture), already resized (shorter side to `resize`)
and centre-cropped; the normalisation and the softmax (or sigmoid) are inside. It returns
each class's probability. The classes, the preprocessing and the weights id travel in the
file's metadata (`vggtune` key) and in a JSON file beside it.

The parity check runs ONNX Runtime and PyTorch (fp32) on the run's own test images: fp32
must agree to 1e-4 in every probability; int8 (ONNX Runtime's static QDQ quantization,
calibrated on training images) must give the same label on at least 99 % of them and the
run's test accuracy within half a point. A failed check deletes the file.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vggtune.version import __version__
from vggtune.errors import UserError
from vggtune.deploy.inputs import labelled_files
from vggtune.features.extract import decode_clean
from vggtune.fsutil import atomic_path, atomic_write_json, display_path
from vggtune.training.rundir import RunDir
from vggtune.model.spec import ModelSpec, load_classifier

PARITY_IMAGES = 64
FP32_TOLERANCE = 1e-4
INT8_AGREEMENT = 0.99
INT8_ACCURACY_POINTS = 0.5
CALIBRATION_IMAGES = 32
PRECISIONS = ("fp32", "int8")


class ExportGraph(nn.Module):
    """uint8 NHWC RGB in, class probabilities out: the weights' normalisation inside."""

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
        return self.scoring.classify(self.model, (x - self.mean) / self.std, self.head)


@dataclass(frozen=True)
class Exported:
    path: Path
    precision: str
    images_checked: int
    max_difference: float           # largest |ONNX - PyTorch| probability
    label_agreement: float          # share of images with the same label
    accuracy_onnx: float | None     # on the run's test split (int8 only)
    accuracy_run: float | None


def metadata(spec: ModelSpec, precision: str) -> dict:
    prep = spec.preprocessing
    return {"format": "vggtune-onnx/1", "vggtune": __version__, "classes": list(spec.classes),
            "weights": spec.weights, "precision": precision, "head": spec.head.kind,
            "temperature": spec.scoring.temperature, "tta": spec.scoring.tta,
            "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                      "shape": ["batch", prep.size, prep.size, 3],
                      "resize": prep.resize, "crop": prep.size,
                      "how": f"resize the shorter side to {prep.resize} px (bilinear, antialiased), "
                             f"centre-crop {prep.size} x {prep.size}; normalisation is inside the graph"},
            "normalisation": {"mean": list(prep.mean), "std": list(prep.std), "channel_order": prep.channel_order},
            "output": {"name": "probabilities", "shape": ["batch", len(spec.classes)]}}


def float_model(run: Path, spec: ModelSpec) -> ExportGraph:
    """The run's classifier in fp32 on the CPU (an int8-trained run exports its float weights)."""
    model = load_classifier(run, dataclasses.replace(spec, int8=None))
    return ExportGraph(model.eval().to(memory_format=torch.contiguous_format), spec).eval()


def export(run: str | Path, out: str | Path | None = None, precision: str = "fp32") -> Exported:
    if precision not in PRECISIONS:
        raise UserError(f"--precision: received {precision!r}; allowed: {', '.join(PRECISIONS)}")
    run = Path(run)
    spec = ModelSpec.load(run)
    target = Path(out) if out else run / ("model.onnx" if precision == "fp32" else "model-int8.onnx")
    graph = float_model(run, spec)
    paths, labels, _ = labelled_files(run, list(spec.classes), None)
    images, kept = _views(paths[:PARITY_IMAGES], spec)
    if not len(images):
        raise UserError(f"export: none of the run's test images could be read; allowed: a run whose "
                        f"test images are in place ({display_path(run)}/splits.json lists them)")
    with atomic_path(target) as temporary:
        _write_onnx(graph, spec, images, Path(temporary))
        if precision == "int8":
            _quantize(Path(temporary), run, spec)
        _add_metadata(Path(temporary), metadata(spec, precision))
        result = check(Path(temporary), graph, images, precision, run, spec, paths, labels)
    atomic_write_json(target.with_name(target.name + ".json"), metadata(spec, precision))   # model.onnx.json
    return dataclasses.replace(result, path=target)


class ExportCheckFailed(Exception):
    """The exported graph disagrees with PyTorch beyond the tolerance; the file was not kept."""


def _views(paths: list[str], spec: ModelSpec) -> tuple[np.ndarray, list[int]]:
    """uint8 NHWC clean views of the readable paths, and their positions in `paths`."""
    views, kept = [], []
    for i, path in enumerate(paths):
        view, reason = decode_clean(path, spec.preprocessing)
        if view is not None:
            views.append(view.permute(1, 2, 0).numpy())
            kept.append(i)
    return (np.stack(views) if views else np.zeros((0, 0, 0, 3), np.uint8)), kept


def _write_onnx(graph: ExportGraph, spec: ModelSpec, images: np.ndarray, target: Path) -> None:
    """torch.onnx's dynamo exporter (torch.export + onnxscript), the batch dimension left free."""
    import warnings
    example = torch.from_numpy(images[:2])
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(target), dynamo=True, input_names=["images"],
                          output_names=["probabilities"], dynamic_shapes={"images": {0: batch}},
                          external_data=False, verbose=False)


def _add_metadata(path: Path, values: dict) -> None:
    import onnx
    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "vggtune", json.dumps(values)
    onnx.save(model, str(path))


def _quantize(path: Path, run: Path, spec: ModelSpec) -> None:
    """Static int8 (QDQ, per-channel weights) calibrated on the run's training images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    train = [item.path for item in RunDir(run).splits().train]
    step = max(1, len(train) // CALIBRATION_IMAGES)
    images, _ = _views(train[::step][:CALIBRATION_IMAGES], spec)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": images[i:i + 8]} for i in range(0, len(images), 8)])

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_name(path.name + ".pre")
    try:
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


def session(path: Path):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(onnx_session, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return np.concatenate([onnx_session.run(None, {"images": images[i:i + batch_size]})[0]
                           for i in range(0, len(images), batch_size)])


def check(path: Path, graph: ExportGraph, images: np.ndarray, precision: str, run: Path, spec: ModelSpec,
          paths: list[str], labels: list[int]) -> Exported:
    """ONNX Runtime against PyTorch fp32 on the run's test images; raises ExportCheckFailed."""
    onnx_session = session(path)
    onnx_probabilities = run_onnx(onnx_session, images)
    with torch.inference_mode():
        torch_probabilities = np.concatenate([graph(torch.from_numpy(images[i:i + 16])).numpy()
                                              for i in range(0, len(images), 16)])
    difference = float(np.abs(onnx_probabilities - torch_probabilities).max())
    agreement = float((onnx_probabilities.argmax(1) == torch_probabilities.argmax(1)).mean())
    if precision == "fp32":
        if difference > FP32_TOLERANCE or agreement < 1:
            raise ExportCheckFailed(f"ONNX and PyTorch differ by {difference:.2e} (allowed {FP32_TOLERANCE:.0e}) "
                                    f"and agree on {agreement:.1%} of labels; the file was not kept")
        return Exported(path, precision, len(images), difference, agreement, None, None)
    accuracy_run = _run_accuracy(run)
    all_images, kept = _views(paths, spec)
    predicted = run_onnx(onnx_session, all_images).argmax(1)
    accuracy_onnx = float((predicted == np.asarray(labels)[kept]).mean())
    if agreement < INT8_AGREEMENT or abs(accuracy_onnx - accuracy_run) * 100 > INT8_ACCURACY_POINTS:
        raise ExportCheckFailed(f"int8 ONNX agrees with PyTorch on {agreement:.1%} of labels (allowed: "
                                f"{INT8_AGREEMENT:.0%}) and scores {accuracy_onnx:.4f} against the run's "
                                f"{accuracy_run:.4f} (allowed: {INT8_ACCURACY_POINTS} points); the file was not kept")
    return Exported(path, precision, len(images), difference, agreement, accuracy_onnx, accuracy_run)


def _run_accuracy(run: Path) -> float:
    return float(RunDir(run).metrics().test["accuracy"])
