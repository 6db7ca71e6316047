"""Eval and train transforms, built from the weights' preprocessing.

Training views are drawn from a generator seeded by (image, view), so the same view is
the same tensor on every run, in any thread, and can be cached.
"""

from __future__ import annotations

import hashlib
import math

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vggtune.features.settings import AugmentConfig
from vggtune.model.policy import CLEAN, CORNERS, MIRROR, TEN_CROP
from vggtune.model.weights import Preprocessing


def normalise(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 CHW (or NCHW) RGB -> float input in the weights' channel order and scale."""
    x = images.to(torch.float32)
    if prep.channel_order == "BGR":
        x = x.flip(-3)
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def eval_view(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """The clean view: resize the shorter side, centre crop (the box Grad-CAM draws too); uint8 CHW."""
    whole = resized(image, prep)
    left, top, right, bottom = centre_box(whole.shape[-2], whole.shape[-1], prep.size)
    return whole[:, top:bottom, left:right]


def resized(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """The whole image with its shorter side at `prep.resize`, before the crop; or, padded, its longer side at
    `prep.resize`, centred on a square of the mean colour; uint8 CHW. Pillow resizes it (antialiased bilinear,
    as torchvision resizes a PIL image), so that a program with Pillow alone (the docs' onnxruntime example)
    gives the same pixels; torchvision's tensor kernel rounds differently."""
    if prep.fit != "pad":
        return F.pil_to_tensor(F.resize(image, [prep.resize], interpolation=v2.InterpolationMode.BILINEAR))
    width, height = (max(1, round(side * prep.resize / max(image.size))) for side in image.size)
    inner = F.pil_to_tensor(F.resize(image, [height, width], interpolation=v2.InterpolationMode.BILINEAR))
    square = torch.tensor(prep.fill, dtype=torch.uint8).view(3, 1, 1).repeat(1, prep.resize, prep.resize)
    top, left = (prep.resize - height) // 2, (prep.resize - width) // 2
    square[:, top : top + height, left : left + width] = inner
    return square


def centre_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the size x size centre crop of a height x width image (rounded as
    torchvision's center_crop rounds); the resize keeps both sides at least `size`."""
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def corner_view(image: Image.Image, prep: Preprocessing, view: int) -> torch.Tensor:
    """One of the four corner crops of the resized image (TEN_CROP's views -2..-9), mirrored from -6 on."""
    corner = (CORNERS[0] - view) % len(CORNERS)
    crop = F.five_crop(resized(image, prep), [prep.size, prep.size])[corner]
    return F.horizontal_flip(crop) if view < CORNERS[-1] else crop


def train_view(image: Image.Image, prep: Preprocessing, aug: AugmentConfig, seed: int) -> torch.Tensor:
    """One augmented view: rotation, zoom, shift, flip and colour drawn from `seed` alone."""
    rng = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=rng).item()

    x = resized(image, prep)
    height, width = x.shape[-2:]
    angle = uniform(-aug.rotation, aug.rotation)
    shift = [round(uniform(-aug.shift, aug.shift) * width), round(uniform(-aug.shift, aug.shift) * height)]
    zoom = math.exp(uniform(math.log(1 - aug.zoom), -math.log(1 - aug.zoom))) if aug.zoom else 1.0
    x = F.affine(
        x, angle=angle, translate=shift, scale=zoom, shear=[0.0, 0.0], interpolation=v2.InterpolationMode.BILINEAR
    )
    x = F.center_crop(x, [prep.size, prep.size])
    if aug.flip and uniform(0, 1) < 0.5:
        x = F.horizontal_flip(x)
    if aug.colour:
        x = F.adjust_brightness(x, uniform(1 - aug.colour, 1 + aug.colour))
        x = F.adjust_contrast(x, uniform(1 - aug.colour, 1 + aug.colour))
        x = F.adjust_saturation(x, uniform(1 - aug.colour, 1 + aug.colour))
    return x


def view_seed(sha256: str, view: int, aug: AugmentConfig) -> int:
    """Depends on the image content, the view index and the augmentation settings only."""
    text = f"{sha256}:{view}:{aug.digest()}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def make_view(
    image: Image.Image, prep: Preprocessing, aug: AugmentConfig | None, sha256: str, view: int
) -> torch.Tensor:
    """View 0 (CLEAN) is the clean view, MIRROR its mirror image; views 1.. are augmented.

    The affine warp computes in floating point, which a caller's bf16 autocast region would
    lower to bf16 and so change the pixels; views are always made in float32."""
    with torch.autocast(device_type="cpu", enabled=False):
        if view == CLEAN:
            return eval_view(image, prep)
        if view == MIRROR:
            return F.horizontal_flip(eval_view(image, prep))
        if view in TEN_CROP:
            return corner_view(image, prep, view)
        if aug is None:
            raise ValueError(f"view {view} is an augmented view: it needs an AugmentConfig")
        return train_view(image, prep, aug, view_seed(sha256, view, aug))
