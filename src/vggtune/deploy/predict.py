"""Predictor: a run directory in, labels and class probabilities out, no training data needed."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vggtune import distributed
from vggtune.data.dataset import walk_files
from vggtune.errors import UserError
from vggtune.deploy.gradcam import Explanation, frame_or_reason, full_heatmap, grad_cam
from vggtune.features.extract import decode_clean, prefetch
from vggtune.fsutil import display_path, load_tensors
from vggtune.progress import progress
from vggtune.model.runtime import Runtime, choose_runtime
from vggtune.model.spec import ModelSpec, build_classifier
from vggtune.features.transforms import normalise


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]


class Predictor:
    """Loads model.json + model.safetensors and classifies image files."""

    def __init__(self, run: str | Path, device: str = "auto", precision: str = "auto", batch_size: int = 32):
        self.run = Path(run)
        self.spec = ModelSpec.load(self.run)
        self.classes, self.preprocessing = list(self.spec.classes), self.spec.preprocessing
        self.runtime = _runtime_for(self.run, self.spec, device, precision)
        tensors, _ = load_tensors(self.run / "model.safetensors")
        self.model = build_classifier(self.spec, tensors, self.runtime,
                                      origin=display_path(self.run / "model.safetensors")).eval()
        self.batch_size = batch_size

    def predict(self, inputs: list) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predictions for the readable inputs, and (name, reason) for the others. An input is a path,
        bytes, a binary file object, a PIL image or a uint8 numpy array; a prediction's `path` is the
        path as given, or a name like "<PIL image 3>" for the others. Under torchrun each rank predicts its
        share of the inputs and every rank gets them all, in the order given."""
        predictions, rejected = [], []
        batch_names, batch_views = [], []
        all_names = [_name(source, i) for i, source in enumerate(inputs)]
        names, inputs = distributed.share(all_names), distributed.share(list(inputs))
        decoded = prefetch(lambda source: decode_clean(source, self.preprocessing), inputs, 2, 2 * self.batch_size)
        bar = progress(total=len(names), desc="predicting", unit="image")
        for name, (view, reason) in zip(names, decoded):
            bar.update()
            if reason:
                rejected.append((name, reason))
                continue
            batch_names.append(name)
            batch_views.append(view)
            if len(batch_names) == self.batch_size:
                predictions += self._classify(batch_names, batch_views)
                batch_names, batch_views = [], []
        if batch_names:
            predictions += self._classify(batch_names, batch_views)
        bar.close()
        if distributed.world().size > 1:
            order = {name: position for position, name in enumerate(all_names)}
            predictions = sorted(distributed.concat(predictions), key=lambda p: order[p.path])
            rejected = sorted(distributed.concat(rejected), key=lambda row: order[row[0]])
        return predictions, rejected

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch of uint8 RGB clean views (N, 3, size, size)."""
        x = self.runtime.to_input(normalise(images, self.preprocessing))
        with torch.inference_mode(), self.runtime.autocast():
            return self.spec.scoring.classify(self.model, x, self.spec.head).cpu()

    def explain(self, inputs: list, target: str | None = None) -> tuple[list[Explanation], list[tuple[str, str]]]:
        """Grad-CAM maps (gradcam.py) of the readable inputs, for the class `target` or else each
        one's predicted class, and (name, reason) for the inputs that could not be read."""
        if target is not None and target not in self.classes:
            raise UserError(f"--class: received {target!r}; allowed: one of the model's classes {self.classes}")
        explanations, rejected = [], []
        names = [_name(source, i) for i, source in enumerate(inputs)]
        for start in range(0, len(inputs), self.batch_size):
            framed = [(name, *frame_or_reason(source, self.preprocessing))
                      for name, source in zip(names[start:start + self.batch_size], inputs[start:start + self.batch_size])]
            rejected += [(name, reason) for name, _, reason in framed if reason]
            good = [(name, item) for name, item, _ in framed if item is not None]
            if not good:
                continue
            views = torch.stack([item.view for _, item in good])
            probabilities = self.probabilities(views)
            targets = [self.classes.index(target) if target else int(row.argmax()) for row in probabilities]
            maps = grad_cam(self.model, self.runtime, views, self.preprocessing, targets)
            for (name, item), row, chosen, cam in zip(good, probabilities, targets, maps):
                explanations.append(Explanation(
                    name, self.classes[int(row.argmax())], self.classes[chosen],
                    {c: float(v) for c, v in zip(self.classes, row)}, full_heatmap(cam, item),
                    item.image.permute(1, 2, 0).numpy(), item.box))
        return explanations, rejected

    def _classify(self, paths, views) -> list[Prediction]:
        probs = self.probabilities(torch.stack(views))
        return [Prediction(path, self.classes[int(row.argmax())], {c: float(v) for c, v in zip(self.classes, row)})
                for path, row in zip(paths, probs)]


def _name(source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    kind = {bytes: "bytes", bytearray: "bytes", memoryview: "bytes"}.get(type(source))
    kind = kind or ("file object" if hasattr(source, "read") else "PIL image" if hasattr(source, "getbands")
                    else "numpy array" if hasattr(source, "dtype") else type(source).__name__)
    return f"<{kind} {index}>"


def _runtime_for(run: Path, spec: ModelSpec, device: str, precision: str) -> Runtime:
    """A model trained on int8 features predicts through the same int8 blocks, on the CPU."""
    if spec.int8 is not None and device == "cuda":
        raise UserError(f"{display_path(run)}: this model's frozen blocks run in int8 on the CPU, "
                        "received --device cuda; allowed: auto, cpu")
    if spec.int8 is None and precision == "int8":
        raise UserError(f"{display_path(run)}: --precision int8, but this model was trained without it; "
                        "allowed: auto, bf16, fp32 (int8 is chosen when training)")
    if spec.int8 is not None:
        return choose_runtime("cpu", "int8" if precision == "auto" else precision)
    return choose_runtime(device, precision)


def expand_paths(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files as given, folders walked for image files; missing paths are reported, not fatal."""
    files, rejected = [], []
    for path in paths:
        if os.path.isdir(path):
            for found, reason in walk_files(Path(path)):
                (rejected.append((found, reason)) if reason else files.append(found))
        elif os.path.isfile(path):
            files.append(path)
        else:
            rejected.append((path, "no such file or folder"))
    return files, rejected


def load(run: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
    """A Predictor for a finished run directory."""
    return Predictor(run, device=device, precision=precision)


__all__ = ["Explanation", "Prediction", "Predictor", "expand_paths", "load"]
