"""Predictor: a run directory in, labels and class probabilities out, no training data needed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vggtune import distributed
from vggtune.deploy.gradcam import Explanation, explain
from vggtune.deploy.inputs import expand_paths
from vggtune.features.choice import resolve
from vggtune.features.extract import decode_clean, normalise, prefetch
from vggtune.model.runtime import runtime_for
from vggtune.model.spec import ModelSpec, load_classifier
from vggtune.progress import progress

if TYPE_CHECKING:  # annotations only
    from vggtune.features.engine import Engine


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the path as given (or a name like "<PIL image 3>"), the decided class and every
    class's probability. A multi-label model's: `labels`, the labels whose probability passes their threshold
    (each label's own probability; they need not sum to 1), and `label` those joined by ";" ("" for none)."""

    path: str
    label: str
    probabilities: dict[str, float]
    labels: list[str] | None = None


@dataclass(frozen=True)
class Predictions:
    """What `vggtune.predict` returns: the model's classes, a Prediction per readable input in the order
    given, (input, reason) for each input that could not be read, and the decision rule that gave the labels."""

    classes: list[str]
    predictions: list[Prediction]
    rejected: list[tuple[str, str]]
    rule: str = ""  # in words: "PNEUMONIA where P(PNEUMONIA) > 0.95, else NORMAL"
    shift: str | None = None  # the warning where the images differ from the training images (results/shift.py)


@dataclass(frozen=True)
class Explained:
    """What `vggtune.explain` returns: an Explanation per readable input, the overlay PNG written for
    each (in the same order), and (input, reason) for each input that could not be read."""

    explanations: list[Explanation]
    files: list[Path]
    rejected: list[tuple[str, str]]


class Predictor:
    """Loads model.json + model.safetensors and classifies image files: the blocks on `engine` (compiled
    once, on first use), the head in PyTorch."""

    def __init__(
        self,
        run: str | Path,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 32,
        engine: str | Engine = "auto",
        threshold: float | None = None,
        positive_class: str | None = None,
    ):
        self.run = Path(run)
        self.spec = ModelSpec.load(self.run)
        if positive_class is not None:  # the rule said (and a threshold given) in terms of this class
            self.spec = self.spec.with_positive(positive_class)
        if threshold is not None:  # the caller's decision threshold instead of model.json's
            self.spec = self.spec.deciding_at(threshold)
        self.classes, self.preprocessing = list(self.spec.classes), self.spec.preprocessing
        self.runtime = runtime_for(self.spec.int8 is not None, device, precision, self.run)
        self.model = load_classifier(self.run, self.spec, self.runtime).eval()
        self.batch_size = batch_size
        self.engine = resolve(engine, self.runtime, self.model)

    def predict(self, inputs: list, embeddings: list | None = None) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predictions for the readable inputs, and (name, reason) for the others. An input is a path,
        bytes, a binary file object, a PIL image or a uint8 numpy array; a prediction's `path` is the
        path as given, or a name like "<PIL image 3>" for the others; a folder stands for the image files
        under it, as on the command line. Under torchrun each rank predicts its share of the inputs and every
        rank gets them all, in the order given. One input alone (a path, a PIL image...) may be given
        without a list. `embeddings`, a list, receives each prediction's clean-view embedding (what `embeddings`
        computes) as the prediction is made, in one process (the shift check's, at no extra pass)."""
        inputs, skipped = walk_folders(_as_list(inputs))
        predictions, rejected = [], []
        batch_names, batch_views = [], []
        all_names = [name_of(source, i) for i, source in enumerate(inputs)]
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
                predictions += self._classify(batch_names, batch_views, embeddings)
                batch_names, batch_views = [], []
        if batch_names:
            predictions += self._classify(batch_names, batch_views, embeddings)
        bar.close()
        if distributed.world().size > 1:
            order = {name: position for position, name in enumerate(all_names)}
            predictions = sorted(distributed.concat(predictions), key=lambda p: order[p.path])
            rejected = sorted(distributed.concat(rejected), key=lambda row: order[row[0]])
        return predictions, skipped + rejected

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch of uint8 RGB clean views (N, 3, size, size)."""
        return self.scored(images)[0]

    def scored(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class probabilities, the clean view's embedding) of a batch of uint8 RGB clean views."""
        blocks = self.engine.blocks(self.model, self.runtime)
        seen: list[torch.Tensor] = []

        def logits_of(views: torch.Tensor) -> torch.Tensor:
            features = blocks(views).to(self.runtime.device)
            if not seen:  # the policy's first view is the clean one
                seen.append(features.float().mean(dim=(2, 3)).cpu())
            with self.runtime.autocast():
                return self.model.head(features)

        with torch.inference_mode():
            probabilities = self.spec.scoring.classify(
                logits_of, normalise(images, self.preprocessing), self.spec.head
            ).cpu()
        return probabilities, seen[0]

    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """What the head receives, averaged over its grid: one vector per uint8 RGB clean view (N, 3, size,
        size) -> (N, channels). Images the classifier sees as alike lie close together here."""
        blocks = self.engine.blocks(self.model, self.runtime)
        with torch.inference_mode():
            return blocks(normalise(images, self.preprocessing)).float().mean(dim=(2, 3)).cpu()

    def explain(self, inputs: list, target: str | None = None) -> tuple[list[Explanation], list[tuple[str, str]]]:
        """Grad-CAM maps (gradcam.py) of the readable inputs, for the class `target` or else each
        one's predicted class, and (name, reason) for the inputs that could not be read."""
        return explain(self, inputs, [name_of(source, i) for i, source in enumerate(inputs)], target)

    def _classify(self, paths, views, embeddings: list | None = None) -> list[Prediction]:
        probs, embedded = self.scored(torch.stack(views))
        if embeddings is not None:
            embeddings.extend(embedded.numpy())
        answers = [self.spec.task.answer(self.classes, decided) for decided in self.spec.decide(probs.numpy())]
        return [
            Prediction(path, label, {c: float(v) for c, v in zip(self.classes, row)}, labels)
            for path, (label, labels), row in zip(paths, answers, probs)
        ]


def walk_folders(inputs: list) -> tuple[list, list[tuple[str, str]]]:
    """The inputs with each folder replaced by the image files under it, and the files there that are
    not images, with why."""
    walked, skipped = [], []
    for source in inputs:
        if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
            files, not_images = expand_paths([str(source)])
            walked += files
            skipped += not_images
        else:
            walked.append(source)
    return walked, skipped


def name_of(source, index: int) -> str:
    """The name a prediction or explanation of an input carries: its path, or <kind N>."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    kinds: dict[type, str] = {bytes: "bytes", bytearray: "bytes", memoryview: "bytes"}
    kind = kinds.get(type(source))
    kind = kind or (
        "file object"
        if hasattr(source, "read")
        else "PIL image"
        if hasattr(source, "getbands")
        else "numpy array"
        if hasattr(source, "dtype")
        else type(source).__name__
    )
    return f"<{kind} {index}>"


def load(
    run: str | Path,
    device: str = "auto",
    precision: str = "auto",
    engine: str | Engine = "auto",
    threshold: float | None = None,
    positive_class: str | None = None,
) -> Predictor:
    """A Predictor for a finished run directory (`threshold`: a two-class decision threshold on the positive
    class's probability instead of the one model.json holds; `positive_class`: the class it is on)."""
    return Predictor(
        run, device=device, precision=precision, engine=engine, threshold=threshold, positive_class=positive_class
    )


__all__ = ["Explanation", "Prediction", "Predictor", "load"]


def _as_list(inputs) -> list:
    """A single input as a list of one; a string is a path, never a sequence of characters."""
    import numpy as np
    from PIL import Image

    if isinstance(inputs, (str, bytes, os.PathLike, Image.Image, np.ndarray)) or hasattr(inputs, "read"):
        return [inputs]
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    raise TypeError(
        f"predict: received {type(inputs).__name__}; allowed: a path, bytes, a file object, a PIL image, "
        "a uint8 numpy array, or a list of them"
    )
