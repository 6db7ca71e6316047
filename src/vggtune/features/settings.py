"""The feature settings a run's config names: how training views are augmented, how features are stored,
which engine computes them.
Plain values without torch, so the command line can offer them before torch is imported."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from vggtune.errors import UserError

STORAGES = ("float16", "uint8")  # cached features: 2 bytes a value, or 1 with each view's own scale
ENGINES = ("auto", "torch", "openvino", "onnxruntime")  # what runs the frozen blocks (features/engine.py)
# How an image comes to the square input (model/weights.py Preprocessing.fit): crop, its shorter side resized and
# the centre kept, as ImageNet's weights were trained (the sides of a wide image are cut off); pad, the whole image
# with its longer side resized, on a square of the mean colour, so that an object at the edge stays in the picture
# and keeps its shape (several labels an image: BENCHMARKS.md section 31). The centre crop's share (--crop)
# applies to both.
FITS = ("crop", "pad")


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes applied to training views; each value is its strength (0 turns it off)."""

    flip: bool = True
    rotation: float = 10.0  # degrees, either way
    zoom: float = 0.2  # crop keeps between 1-zoom and 1 of the image area
    shift: float = 0.1  # fraction of width/height, either way
    colour: float = 0.2  # brightness/contrast/saturation jitter

    def __post_init__(self):
        for name in ("rotation", "zoom", "shift", "colour"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"augment.{name}: received {value!r}; allowed: a number >= 0")
        if self.zoom >= 1 or self.shift >= 1:
            raise UserError(f"augment zoom/shift: received {self.zoom}/{self.shift}; allowed: below 1")

    def digest(self) -> str:
        """Names these settings in view seeds and cache entries."""
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]


RESAMPLING = (
    "pillow-bilinear"  # how views are resized (transforms.resized): in the cache key, as it changes the features
)
