"""What a trained classifier is (`model.json`), written and read here, and the one function
that builds a classifier from that description and its tensors.

A run directory's `model.json` + `model.safetensors` are enough to rebuild the model
anywhere: classes, head, preprocessing, weights id, architecture and block layout, precision,
the scoring policy (temperature, test-time augmentation, the two-class decision threshold) and, for an int8
run, the activation scales of its frozen blocks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vggtune.errors import UserError
from vggtune.fsutil import atomic_write_json, display_path, load_tensors
from vggtune.model import arch as archs
from vggtune.model import quantize
from vggtune.model.arch import Arch
from vggtune.model.classifier import Classifier
from vggtune.model.heads import HEADS, HeadSpec
from vggtune.model.policy import ScoringPolicy
from vggtune.model.weights import LoadedWeights, Preprocessing

if TYPE_CHECKING:  # annotations only
    from vggtune.model.runtime import Runtime
    from vggtune.tasks import Task

MODEL_FORMAT = "vggtune-model/1"
# The model's two files in a run folder, read and written here alone (runfiles.py names them for the rest).
MODEL_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    classes: tuple[str, ...]
    head: HeadSpec
    preprocessing: Preprocessing
    weights: str  # the id of the pretrained weights the backbone started from
    arch: Arch  # the backbone, with the conv widths its tensors have
    precision: str  # fp32, bf16 or int8 (frozen blocks), as trained
    int8: dict | None = None  # quantize calibration: {"upto", "scales"}
    scoring: ScoringPolicy = ScoringPolicy()  # temperature, and the views averaged (test-time augmentation)
    # `vggtune calibrate`: the rules in force before, by name ("trained": the one training chose), and the sample
    # the rule in force was fitted on (its folder, images a class, the figures before and after)
    earlier_rules: tuple[tuple[str, ScoringPolicy], ...] = ()
    calibration: dict | None = None

    @classmethod
    def for_training(
        cls,
        config,
        classes: list[str],
        loaded: LoadedWeights,
        precision: str,
        size: int,
        task: Task,
    ) -> ModelSpec:
        """What model.json will say of the classifier a TrainConfig trains on these weights and classes (labels,
        several an image, for the multi-label task), at the input side `size` (config.size resolved:
        config.input_size)."""
        kind = config.for_task("head", task.several)
        head = HeadSpec(kind, len(classes), config.hidden, config.dropout, task.several)
        return cls(
            tuple(classes),
            head,
            loaded.record.preprocessing.at_size(size, config.crop, config.for_task("fit", task.several)),
            loaded.id,
            archs.from_state_dict(config.architecture, loaded.state_dict),
            precision,
            scoring=ScoringPolicy.of(config.tta),
        )

    def to_dict(self) -> dict:
        values = {
            "classes": list(self.classes),
            "head": self.head.to_dict(),
            "size": self.preprocessing.size,
            "preprocessing": self.preprocessing.to_dict(),
            "weights": self.weights,
            "arch": self.arch.name,
            "blocks": {name: list(widths) for name, widths in self.arch.blocks},
            "precision": self.precision,
            **self.rule_dict(self.scoring),
        }
        if self.int8 is not None:
            values["int8"] = self.int8
        if self.earlier_rules:
            values["earlier_rules"] = {name: self.rule_dict(policy) for name, policy in self.earlier_rules}
        if self.calibration is not None:
            values["calibration"] = self.calibration
        return dict(values, format=MODEL_FORMAT)

    def rule_dict(self, policy: ScoringPolicy) -> dict:
        """A scoring policy as model.json holds it: temperature, views, the threshold on the second class's
        probability, the task's rule fields (positive class, thresholds, the rule in words), a recalibration."""
        values: dict = {"temperature": policy.temperature, "tta": policy.tta, "threshold": policy.threshold}
        values.update(self.task.rule_fields(self.classes, policy))
        if policy.recalibrated_here:
            values.update(scale=policy.scale, offsets=dict(zip(self.classes, policy.offsets)))
        return values

    @classmethod
    def from_dict(cls, values: dict, origin: str = MODEL_FILE) -> ModelSpec:
        if not isinstance(values, dict) or values.get("format") != MODEL_FORMAT:
            received = values.get("format") if isinstance(values, dict) else None
            raise UserError(f"{origin}: format {received!r}; allowed: {MODEL_FORMAT}")
        try:
            widths = {name: tuple(int(w) for w in convs) for name, convs in values["blocks"].items()}
            spec = cls(
                classes=tuple(str(c) for c in values["classes"]),
                head=HeadSpec(**values["head"]),
                preprocessing=Preprocessing.from_dict(values["preprocessing"]),
                weights=str(values["weights"]),
                arch=archs.get(str(values.get("arch", "vgg16"))).with_widths(widths),
                precision=str(values.get("precision", "fp32")),
                int8=values.get("int8"),
                scoring=_scoring(values),
                earlier_rules=tuple(
                    (str(name), _scoring({**rule, "classes": values["classes"]}))
                    for name, rule in (values.get("earlier_rules") or {}).items()
                ),
                calibration=values.get("calibration"),
            )
        except UserError as exc:
            raise UserError(f"{origin}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(
                f"{origin}: missing or malformed field ({exc}); allowed: model.json as training wrote it"
            ) from None
        spec.check(origin)
        return spec

    @property
    def task(self) -> Task:
        """What the model is asked (tasks.py): one class an image, or any set of labels."""
        return self.head.task

    @property
    def rule(self) -> str:
        """The decision rule in force, in words (every output says it so)."""
        return self.task.words(self.classes, self.scoring)

    def deciding_at(self, threshold: float) -> ModelSpec:
        """This model deciding at another two-class threshold (predict's and evaluate's --threshold); a
        multi-label model at this threshold for every label."""
        return dataclasses.replace(self, scoring=self.task.rule_at(self.scoring, threshold, self.classes))

    def ruled_by(self, policy: ScoringPolicy, calibration: dict) -> ModelSpec:
        """This model under a rule `vggtune calibrate` fitted (`calibration` describes the sample and names the
        rule); the rule in force until now is kept among the earlier rules, by its name ("trained": training's)."""
        kept = dict(self.earlier_rules)
        kept.setdefault(self.rule_name, self.scoring)
        return dataclasses.replace(self, scoring=policy, earlier_rules=tuple(kept.items()), calibration=calibration)

    @property
    def rule_name(self) -> str:
        """The name of the rule in force: its calibration's, or "trained"."""
        return "trained" if self.calibration is None else str(self.calibration["name"])

    def restoring(self, name: str) -> ModelSpec:
        """This model under an earlier rule again (`vggtune calibrate --restore NAME`); the one in force is kept."""
        kept = dict(self.earlier_rules)
        if name == self.rule_name:
            return self  # in force already
        if name not in kept:
            raise UserError(f"--restore: received {name!r}; allowed: {', '.join(kept) or 'none (no earlier rule)'}")
        kept.setdefault(self.rule_name, self.scoring)
        restored = kept.pop(name)
        calibration = None if name == "trained" else {"name": name, "restored": True}
        return dataclasses.replace(self, scoring=restored, earlier_rules=tuple(kept.items()), calibration=calibration)

    def with_positive(self, name: str) -> ModelSpec:
        """This model's rule said and set in terms of the class `name` (--positive-class)."""
        if self.task.several or len(self.classes) != 2 or name not in self.classes:
            allowed = (
                f"one of its two classes: {', '.join(self.classes)}"
                if len(self.classes) == 2 and not self.task.several
                else "a two-class model only"
            )
            raise UserError(
                f"--positive-class: received {name!r} for a model of {len(self.classes)} "
                f"{self.task.noun}; allowed: {allowed}"
            )
        return dataclasses.replace(self, scoring=self.scoring.with_positive(self.classes.index(name)))

    def decide(self, probabilities) -> np.ndarray:
        """The rule in force: each image's class index, or (image, label) True where a label is given."""
        return self.task.decide(self.scoring, probabilities)

    def check(self, origin: str) -> None:
        head = self.head
        if len(self.classes) < 2 or head.n_classes != len(self.classes) or head.kind not in HEADS:
            raise UserError(
                f"{origin}: {len(self.classes)} classes for a {head.kind!r} head "
                f"of {head.n_classes}; allowed: at least 2 classes matching the head"
            )
        if self.preprocessing.size % 32 or self.preprocessing.size < 32:
            raise UserError(f"{origin}: input size {self.preprocessing.size}; allowed: a multiple of 32")

    def save(self, folder: Path) -> None:
        atomic_write_json(Path(folder) / MODEL_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: Path) -> ModelSpec:
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise UserError(f"run: {display_path(folder)} holds no {MODEL_FILE}; allowed: a finished run directory")
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{display_path(path)}: not valid JSON ({exc})") from None
        return cls.from_dict(values, display_path(path))


def _scoring(values: dict) -> ScoringPolicy:
    """model.json's scoring policy: views, temperature, the two-class threshold, a multi-label model's thresholds."""
    policy = ScoringPolicy.of(bool(values.get("tta", False)), float(values.get("temperature", 1.0)))
    policy = policy.on_second(float(values.get("threshold", 0.5)))  # always the second class's probability
    classes, positive = [str(c) for c in values["classes"]], values.get("positive_class")
    if positive is not None and len(classes) == 2:  # the rule's words; the classes' check comes after
        if str(positive) not in classes:
            raise UserError(f"positive_class {positive!r} is not one of the classes {', '.join(classes)}")
        policy = policy.with_positive(classes.index(str(positive)))
    thresholds = values.get("thresholds")
    if values.get("offsets") is not None:
        offsets = tuple(float(values["offsets"][str(c)]) for c in values["classes"])
        policy = policy.recalibrating(float(values.get("scale", 1.0)), offsets)
    return policy.labelling_at(tuple(float(thresholds[str(c)]) for c in values["classes"])) if thresholds else policy


def load_classifier(run: Path, spec: ModelSpec, runtime: Runtime | None = None) -> Classifier:
    """The classifier a finished run saved: model.json's description with model.safetensors loaded."""
    path = Path(run) / WEIGHTS_FILE
    tensors, _ = load_tensors(path)
    return build_classifier(spec, tensors, runtime, origin=display_path(path))


def build_classifier(
    spec: ModelSpec, tensors: dict[str, torch.Tensor], runtime: Runtime | None = None, origin: str = "weights"
) -> Classifier:
    """The classifier `spec` describes with `tensors` loaded (the whole model's, or the backbone's
    alone for a new head), on the runtime's device (default the CPU), through the int8 blocks it was trained with."""
    model = Classifier(spec.head, size=spec.preprocessing.size, arch=spec.arch)
    whole = any(name.startswith("head.") for name in tensors)
    try:
        (model if whole else model.backbone).load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        raise UserError(
            f"{origin} does not match model.json ({first}); allowed: the files one training run wrote"
        ) from None
    model.to(runtime.device if runtime else "cpu").to(memory_format=torch.channels_last)
    if spec.int8 is not None:
        try:
            quantize.attach(model, spec.int8)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{origin}: malformed int8 calibration ({exc}); allowed: model.json as training wrote it"
            ) from None
    return model
