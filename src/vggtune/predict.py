"""Predictor: a run directory in, labels and class probabilities out, no training data needed."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import quantize
from .config import AugmentConfig
from .data import walk_files
from .errors import UserError
from .extract import ImageJob, decode_views, prefetch
from .fsutil import display_path
from .model import HEAD_KINDS, Classifier, HeadSpec, logits_to_probabilities
from .rundir import load_tensors, read_model_description
from .runtime import choose_runtime
from .transforms import normalise
from .weights import Preprocessing


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]


class Predictor:
    """Loads model.json + model.safetensors and classifies image files."""

    def __init__(self, run: str | Path, device: str = "auto", precision: str = "auto", batch_size: int = 32):
        self.run = Path(run)
        description = read_model_description(self.run)
        self.classes, head, self.preprocessing, blocks = _parse_description(self.run, description)
        int8 = "int8" in description
        if int8 and device == "cuda":
            raise UserError(f"{display_path(self.run)}: this model's frozen blocks run in int8 on the CPU, "
                            "received --device cuda; allowed: auto, cpu")
        self.runtime = choose_runtime("cpu" if int8 else device, "int8" if int8 and precision == "auto" else precision)
        self.model = Classifier(head, size=self.preprocessing.size, blocks=blocks)
        tensors, _ = load_tensors(self.run / "model.safetensors")
        try:
            self.model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise UserError(f"{display_path(self.run)}: model.safetensors does not match model.json ({first}); "
                            "allowed: the files one training run wrote") from None
        self.model.to(self.runtime.device).to(memory_format=torch.channels_last).eval()
        self._use_int8(description)
        self.batch_size = batch_size
        self.description = description

    def _use_int8(self, description: dict) -> None:
        """A model trained on int8 features predicts through the same int8 blocks."""
        if "int8" not in description:
            if self.runtime.int8:
                raise UserError(f"{display_path(self.run)}: --precision int8, but this model was trained without it; "
                                "allowed: auto, bf16, fp32 (int8 is chosen when training)")
            return
        try:
            self.model.use_int8_frozen(quantize.rebuild(self.model.backbone, description["int8"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{display_path(self.run / 'model.json')}: malformed int8 calibration ({exc}); "
                            "allowed: model.json as training wrote it") from None

    def predict(self, paths: list[str]) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predictions for the readable files, and (path, reason) for the others."""
        predictions, rejected = [], []
        batch_paths, batch_views = [], []
        jobs = [ImageJob(str(p), "", (0,)) for p in paths]
        decoded = prefetch(lambda job: decode_views(job, self.preprocessing, AugmentConfig()), jobs, 2, 2 * self.batch_size)
        for job, tensors, reason in decoded:
            if reason:
                rejected.append((job.path, reason))
                continue
            batch_paths.append(job.path)
            batch_views.append(tensors[0])
            if len(batch_paths) == self.batch_size:
                predictions += self._classify(batch_paths, batch_views)
                batch_paths, batch_views = [], []
        if batch_paths:
            predictions += self._classify(batch_paths, batch_views)
        return predictions, rejected

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch of uint8 RGB clean views (N, 3, size, size)."""
        x = normalise(images, self.preprocessing).to(self.runtime.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.runtime.autocast():
            logits = self.model(x).float()
        return logits_to_probabilities(logits, len(self.classes) == 2).cpu()

    def _classify(self, paths, views) -> list[Prediction]:
        probs = self.probabilities(torch.stack(views))
        return [Prediction(path, self.classes[int(row.argmax())], {c: float(v) for c, v in zip(self.classes, row)})
                for path, row in zip(paths, probs)]


def _parse_description(run: Path, description: dict):
    try:
        classes = [str(c) for c in description["classes"]]
        head = HeadSpec(**description["head"])
        prep = Preprocessing.from_dict(description["preprocessing"])
        blocks = {name: tuple(int(w) for w in widths) for name, widths in description["blocks"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{display_path(run / 'model.json')}: missing or malformed field ({exc}); "
                        "allowed: model.json as training wrote it") from None
    if len(classes) < 2 or head.n_classes != len(classes) or head.kind not in HEAD_KINDS:
        raise UserError(f"{display_path(run / 'model.json')}: {len(classes)} classes for a {head.kind!r} head "
                        f"of {head.n_classes}; allowed: at least 2 classes matching the head")
    if prep.size % 32 or prep.size < 32:
        raise UserError(f"{display_path(run / 'model.json')}: input size {prep.size}; allowed: a multiple of 32")
    return classes, head, prep, blocks


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


__all__ = ["Prediction", "Predictor", "expand_paths", "load"]
