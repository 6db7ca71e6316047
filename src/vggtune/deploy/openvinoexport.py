"""OpenVINO IR (model.xml + model.bin): the engine of Intel CPUs, GPUs and NPUs and of edge devices.

Converted by OpenVINO's own converter from the ONNX graph (onnxexport.py), so both formats take the
same input and the int8 variant is ONNX Runtime's QDQ quantization, which OpenVINO runs in int8. The
metadata is in the IR's rt_info (`vggtune`) as well as beside it. Checked at fp32 inference precision:
on processors with bf16 OpenVINO would otherwise choose bf16, whose probabilities differ by ~1e-2.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from vggtune import openvinoload
from vggtune.deploy import onnxexport
from vggtune.deploy.exporting import ExportGraph
from vggtune.model.spec import ModelSpec
from vggtune.training.rundir import RunDir

CHECKED_AS = {"INFERENCE_PRECISION_HINT": "f32"}


def write(
    graph: ExportGraph, spec: ModelSpec, images: np.ndarray, target: Path, run: RunDir, precision: str, values: dict
) -> None:
    openvino = openvinoload.openvino()

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".onnx-") as folder:
        onnx_file = Path(folder) / "model.onnx"
        onnx_export = onnxexport.write if precision == "int8" else _fp32_onnx
        onnx_export(graph, spec, images, onnx_file, run, precision, values)
        model = openvino.convert_model(str(onnx_file))
    model.set_rt_info(json.dumps(values), "vggtune")
    openvino.save_model(model, str(target), compress_to_fp16=False)  # target.xml and target.bin


def _fp32_onnx(graph, spec, images, target, run, precision, values) -> None:
    onnxexport.write_onnx(graph, images, target)


def runner(path: Path):
    openvino = openvinoload.openvino()

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path), str(path.with_suffix(".bin"))), "CPU", CHECKED_AS)
    output = compiled.output(0)
    return lambda images: np.concatenate([compiled(images[i : i + 16])[output] for i in range(0, len(images), 16)])
