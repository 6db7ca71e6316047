"""ONNX: the classifier through PyTorch's recommended exporter (`torch.onnx.export(..., dynamo=True)`),
the batch dimension free, the metadata in the file's `vggtune` key; int8 by ONNX Runtime's static QDQ
quantization (per-channel weights) calibrated on the run's training images; run by ONNX Runtime.
The parity check and what the graph takes are exporting.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vggtune.deploy.exporting import ExportGraph, views_of
from vggtune.model.spec import ModelSpec
from vggtune.training.rundir import RunDir

CALIBRATION_IMAGES = 32


def write(
    graph: ExportGraph, spec: ModelSpec, images: np.ndarray, target: Path, run: RunDir, precision: str, values: dict
) -> None:
    write_onnx(graph, images, target)
    if precision == "int8":
        quantize(target, run, spec)
    _add_metadata(target, values)


def runner(path: Path):
    onnx_session = session(path)
    return lambda images: run_onnx(onnx_session, images)


def write_onnx(graph: ExportGraph, images: np.ndarray, target: Path) -> None:
    """torch.onnx's dynamo exporter (torch.export + onnxscript), the batch dimension left free."""
    import warnings

    example = torch.from_numpy(images[:2])
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(target),
            dynamo=True,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: batch}},
            external_data=False,
            verbose=False,
        )


def _add_metadata(path: Path, values: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "vggtune", json.dumps(values)
    onnx.save(model, str(path))


def quantize(path: Path, run: RunDir, spec: ModelSpec) -> None:
    """Static int8 (QDQ, per-channel weights) calibrated on the run's training images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    train = [item.path for item in run.saved_splits().train]
    step = max(1, len(train) // CALIBRATION_IMAGES)
    images, _ = views_of(train[::step][:CALIBRATION_IMAGES], spec)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": images[i : i + 8]} for i in range(0, len(images), 8)])

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_name(path.name + ".pre")
    try:
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        prepared.unlink(missing_ok=True)


def session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(onnx_session, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return np.concatenate(
        [onnx_session.run(None, {"images": images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    )
