"""What a trained classifier is (`model.json`), written and read here, and the one function
that builds a classifier from that description and its tensors.

A run directory's `model.json` + `model.safetensors` are enough to rebuild the model
anywhere: classes, head, preprocessing, weights id, block layout, precision and, for an
int8 run, the activation scales of its frozen blocks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import quantize
from .errors import UserError
from .fsutil import atomic_write_json, display_path
from .model import HEAD_KINDS, Classifier, HeadSpec
from .runtime import Runtime
from .weights import Preprocessing

MODEL_FORMAT = "vggtune-model/1"


@dataclass(frozen=True)
class ModelSpec:
    classes: tuple[str, ...]
    head: HeadSpec
    preprocessing: Preprocessing
    weights: str                          # the id of the pretrained weights the backbone started from
    blocks: dict[str, tuple[int, ...]]    # the backbone's layout, block -> conv widths
    precision: str                        # fp32, bf16 or int8 (frozen blocks), as trained
    int8: dict | None = None              # quantize calibration: {"upto", "scales"}
    arch: str = "vgg16"
    temperature: float = 1.0              # logits are divided by it (fitted on validation data by --calibrate)
    tta: bool = False                     # probabilities averaged over the image and its mirror image

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def to_dict(self) -> dict:
        values = {"classes": list(self.classes), "head": self.head.to_dict(), "size": self.preprocessing.size,
                  "preprocessing": self.preprocessing.to_dict(), "weights": self.weights, "arch": self.arch,
                  "blocks": {name: list(widths) for name, widths in self.blocks.items()},
                  "precision": self.precision, "temperature": self.temperature, "tta": self.tta}
        if self.int8 is not None:
            values["int8"] = self.int8
        return dict(values, format=MODEL_FORMAT)

    @classmethod
    def from_dict(cls, values: dict, origin: str = "model.json") -> "ModelSpec":
        if not isinstance(values, dict) or values.get("format") != MODEL_FORMAT:
            received = values.get("format") if isinstance(values, dict) else None
            raise UserError(f"{origin}: format {received!r}; allowed: {MODEL_FORMAT}")
        try:
            spec = cls(classes=tuple(str(c) for c in values["classes"]), head=HeadSpec(**values["head"]),
                       preprocessing=Preprocessing.from_dict(values["preprocessing"]), weights=str(values["weights"]),
                       blocks={name: tuple(int(w) for w in widths) for name, widths in values["blocks"].items()},
                       precision=str(values.get("precision", "fp32")), int8=values.get("int8"),
                       arch=str(values.get("arch", "vgg16")), temperature=float(values.get("temperature", 1.0)),
                       tta=bool(values.get("tta", False)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{origin}: missing or malformed field ({exc}); "
                            "allowed: model.json as training wrote it") from None
        spec.check(origin)
        return spec

    def check(self, origin: str) -> None:
        head = self.head
        if len(self.classes) < 2 or head.n_classes != len(self.classes) or head.kind not in HEAD_KINDS:
            raise UserError(f"{origin}: {len(self.classes)} classes for a {head.kind!r} head "
                            f"of {head.n_classes}; allowed: at least 2 classes matching the head")
        if not 0 < self.temperature < float("inf"):
            raise UserError(f"{origin}: temperature {self.temperature}; allowed: a positive number")
        if self.preprocessing.size % 32 or self.preprocessing.size < 32:
            raise UserError(f"{origin}: input size {self.preprocessing.size}; allowed: a multiple of 32")

    def save(self, folder: Path) -> None:
        atomic_write_json(Path(folder) / "model.json", self.to_dict())

    @classmethod
    def load(cls, folder: Path) -> "ModelSpec":
        path = Path(folder) / "model.json"
        if not path.is_file():
            raise UserError(f"run: {display_path(folder)} holds no model.json; allowed: a finished run directory")
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{display_path(path)}: not valid JSON ({exc})") from None
        return cls.from_dict(values, display_path(path))


def build_classifier(spec: ModelSpec, tensors: dict[str, torch.Tensor], runtime: Runtime,
                     origin: str = "weights") -> Classifier:
    """The classifier `spec` describes with `tensors` loaded (the whole model's, or the backbone's
    alone for a new head), on the runtime's device, through the int8 blocks it was trained with."""
    model = Classifier(spec.head, size=spec.preprocessing.size, blocks=spec.blocks)
    whole = any(name.startswith("head.") for name in tensors)
    try:
        (model if whole else model.backbone).load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        raise UserError(f"{origin} does not match model.json ({first}); "
                        "allowed: the files one training run wrote") from None
    model.to(runtime.device).to(memory_format=torch.channels_last)
    model.temperature, model.tta = spec.temperature, spec.tta
    if spec.int8 is not None:
        try:
            quantize.attach(model, spec.int8)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{origin}: malformed int8 calibration ({exc}); "
                            "allowed: model.json as training wrote it") from None
    return model
