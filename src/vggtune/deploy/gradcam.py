"""Grad-CAM (Selvaraju et al., 2017): where the network looked for a class.

The map is taken where the architecture says (`Arch.gradcam_layer`: the last convolution of the
last block, after its ReLU; block5's conv3 in VGG16): each channel weighted by the mean gradient
of the class score (`HeadSpec.class_scores`) over the grid, summed, rectified, scaled to [0, 1].

A dozen lines with torch.autograd, rather than the `grad-cam` package or captum: both
wrap the model in hooks on modules, which VGG's in-place ReLUs and our int8 frozen blocks
make fragile, and neither knows our one-unit sigmoid head.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vggtune.data.images import ImageRejected, open_any
from vggtune.errors import UserError
from vggtune.features.engine import Engine, frozen
from vggtune.features.transforms import centre_box, normalise, resized
from vggtune.fsutil import atomic_write_bytes
from vggtune.model.classifier import Classifier
from vggtune.model.runtime import Runtime
from vggtune.model.weights import Preprocessing

OUTSIDE_DIM = 0.35  # the part of the image the network did not see (outside the centre crop)


@dataclass(frozen=True)
class Explanation:
    name: str
    label: str  # the predicted class
    target: str  # the class the map explains
    probabilities: dict[str, float]
    heatmap: np.ndarray  # float32, H x W in [0, 1]: the image's own size, 0 outside the crop
    image: np.ndarray  # uint8 H x W x 3: the image as decoded, EXIF orientation applied
    box: tuple[int, int, int, int]  # (left, top, right, bottom) of the crop the network saw, in the image

    def overlay(self, alpha: float = 0.45) -> Image.Image:
        """The map in colour over the crop the network saw; outside it the image is dimmed. The image's size."""
        from matplotlib import colormaps

        picture = self.image.astype(np.float32)
        colours = colormaps["jet"](self.heatmap)[..., :3].astype(np.float32) * 255
        shown = picture * OUTSIDE_DIM
        left, top, right, bottom = self.box
        shown[top:bottom, left:right] = ((1 - alpha) * picture + alpha * colours)[top:bottom, left:right]
        result = Image.fromarray(shown.clip(0, 255).astype(np.uint8))
        ImageDraw.Draw(result).rectangle((left, top, right - 1, bottom - 1), outline=(255, 255, 255), width=2)
        return result


@dataclass(frozen=True)
class Framed:
    """One decoded input: the resized image, the crop the network takes and where that crop lies, and the
    image at its own size (the network's input is decoded as `predict` decodes it: large JPEGs at a reduced
    scale, so the two are decoded apart)."""

    image: torch.Tensor  # uint8 3 x H x W, shorter side at the resize
    view: torch.Tensor  # uint8 3 x size x size
    box: tuple[int, int, int, int]
    original: np.ndarray  # uint8 H0 x W0 x 3


def frame(source, prep: Preprocessing) -> Framed:
    if hasattr(source, "read"):  # a file object can be read once: keep its bytes for both decodes
        source = source.read()
    image = resized(open_any(source, short_side=prep.resize), prep)
    box = centre_box(image.shape[-2], image.shape[-1], prep.size)
    left, top, right, bottom = box
    return Framed(image, image[:, top:bottom, left:right], box, np.asarray(open_any(source)))


def frame_or_reason(source, prep: Preprocessing) -> tuple[Framed | None, str | None]:
    try:
        return frame(source, prep), None
    except ImageRejected as exc:
        return None, str(exc)


def grad_cam(
    model: Classifier,
    runtime: Runtime,
    views: torch.Tensor,
    prep: Preprocessing,
    targets: list[int],
    engine: Engine | None = None,
) -> np.ndarray:
    """(N, size, size) maps in [0, 1] for uint8 views (N, 3, size, size) and each one's target class.
    The blocks before the map's run on `engine`; the last block and the head in PyTorch, for the gradients."""
    model.eval()
    block_name, layer_name = model.arch.gradcam_layer
    before = model.arch.cut_before((block_name,))
    if engine is not None and engine.name != "torch" and not runtime.int8:
        features = frozen(model, runtime, engine, upto=before)(normalise(views, prep)).to(runtime.device)
    else:
        # The float blocks, also for a model that predicts through int8 ones: those may reach into the
        # last block (a head-only int8 run), and the map needs its float activations and gradients.
        with torch.no_grad(), runtime.autocast():
            features = model.backbone.run(runtime.to_input(normalise(views, prep)), upto=before).float()
    block = getattr(model.backbone, block_name)
    with torch.enable_grad():
        activation = None
        for name, layer in block.named_children():
            features = layer(features)
            if name == layer_name:
                activation = features
        if activation is None:
            raise ValueError(f"{block_name} has no layer {layer_name!r}; the architecture's record names it")
        features = model.backbone.run(features, after=block_name)
        logits = model.head(features).float()
        score = model.head_spec.class_scores(logits, torch.as_tensor(targets, device=logits.device))
        (gradients,) = torch.autograd.grad(score.sum(), activation)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=views.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu().numpy().astype(np.float32)


def full_heatmap(cam: np.ndarray, framed: Framed) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A crop's map placed in the whole image at its own size (the network saw nothing outside the crop),
    and where the crop lies there."""
    height, width = framed.original.shape[:2]
    scale = min(height, width) / min(framed.image.shape[-2:])  # the resize, one scale for both sides
    side = min(round(framed.view.shape[-1] * scale), height, width)
    top, left = round((height - side) / 2), round((width - side) / 2)
    box = (left, top, left + side, top + side)
    crop = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    crop = torch.nn.functional.interpolate(
        crop, size=(box[3] - box[1], box[2] - box[0]), mode="bilinear", align_corners=False
    )[0, 0].clamp(0, 1)
    heatmap = np.zeros((height, width), dtype=np.float32)
    heatmap[box[1] : box[3], box[0] : box[2]] = crop.numpy()
    return heatmap, box


def explain(predictor, inputs: list, names: list[str], target: str | None = None):
    """Grad-CAM maps of a Predictor's model for the readable inputs (called `names`), for the class `target`
    or else each one's predicted class: ([Explanation], [(name, reason)] for the inputs that could not be read)."""
    if target is not None and target not in predictor.classes:
        raise UserError(f"--class: received {target!r}; allowed: one of the model's classes {predictor.classes}")
    explanations, rejected = [], []
    for start in range(0, len(inputs), predictor.batch_size):
        framed = [
            (name, *frame_or_reason(source, predictor.preprocessing))
            for name, source in zip(
                names[start : start + predictor.batch_size], inputs[start : start + predictor.batch_size]
            )
        ]
        rejected += [(name, reason) for name, _, reason in framed if reason]
        good = [(name, item) for name, item, _ in framed if item is not None]
        if not good:
            continue
        views = torch.stack([item.view for _, item in good])
        probabilities = predictor.probabilities(views)
        decided = predictor.spec.scoring.decide(probabilities)
        targets = [predictor.classes.index(target) if target else int(label) for label in decided]
        maps = grad_cam(predictor.model, predictor.runtime, views, predictor.preprocessing, targets, predictor.engine)
        for (name, item), row, label, chosen, cam in zip(good, probabilities, decided, targets, maps):
            heatmap, box = full_heatmap(cam, item)
            explanations.append(
                Explanation(
                    name,
                    predictor.classes[int(label)],
                    predictor.classes[chosen],
                    {c: float(v) for c, v in zip(predictor.classes, row)},
                    heatmap,
                    item.original,
                    box,
                )
            )
    return explanations, rejected


def write_overlays(explanations: list[Explanation], folder: Path) -> list[Path]:
    """Each explanation's overlay as FOLDER/<file stem>.gradcam.png (numbered when two stems are the same)."""
    folder.mkdir(parents=True, exist_ok=True)
    written, taken = [], set()
    for explanation in explanations:
        stem = Path(explanation.name).stem if not explanation.name.startswith("<") else "image"
        name, count = f"{stem}.gradcam.png", 1
        while name in taken:
            count += 1
            name = f"{stem}-{count}.gradcam.png"
        taken.add(name)
        buffer = io.BytesIO()
        explanation.overlay().save(buffer, format="PNG")
        atomic_write_bytes(folder / name, buffer.getvalue())
        written.append(folder / name)
    return written
