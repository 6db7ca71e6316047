"""TFLite / LiteRT (model.tflite): phones and microcontrollers. Converted by Google's litert-torch
(`litert_torch.convert`) straight from the PyTorch graph and run by ai-edge-litert's interpreter.

fp32 only, and one image per call: LiteRT models have a fixed input shape (1 x size x size x 3 here;
an app resizes the input tensor, or calls once per image, as phones do). The metadata is in the JSON
file beside it. The optional extra `vggtune[tflite]`: litert-torch pins typing-extensions below
4.13, which Selenium and Jupyter refuse, so it lives in an environment of its own (README).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vggtune.deploy.exporting import ExportGraph
from vggtune.model.spec import ModelSpec
from vggtune.training.rundir import RunDir


def write(
    graph: ExportGraph, spec: ModelSpec, images: np.ndarray, target: Path, run: RunDir, precision: str, values: dict
) -> None:
    import litert_torch

    litert_torch.convert(graph, (torch.from_numpy(images[:1]),)).export(str(target))


def runner(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    given, returned = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def run(images: np.ndarray) -> np.ndarray:
        rows = []
        for image in images:
            interpreter.set_tensor(given, image[None])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(returned)[0].copy())
        return np.stack(rows)

    return run
