"""VGG16 with named blocks, the heads we put on it, and freezing by block name.

The architecture's facts are declared once, here: the blocks in order with their widths
(`VGG16_BLOCKS`), and from them the cut points (`block_names`, `cut_before`, `earliest_cut`).
A layout with other widths (a tiny one in tests) keeps the same block names.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .config import HEADS as HEAD_KINDS

VGG16_BLOCKS: dict[str, tuple[int, ...]] = {
    "block1": (64, 64),
    "block2": (128, 128),
    "block3": (256, 256, 256),
    "block4": (512, 512, 512),
    "block5": (512, 512, 512),
}
BLOCK_NAMES = tuple(VGG16_BLOCKS)
LAST_BLOCK = BLOCK_NAMES[-1]


def block_names(after: str | None = None, upto: str = LAST_BLOCK) -> tuple[str, ...]:
    """Blocks strictly after `after` (None: from the image) up to and including `upto`."""
    start = 0 if after is None else BLOCK_NAMES.index(after) + 1
    return BLOCK_NAMES[start:BLOCK_NAMES.index(upto) + 1]


def last_blocks(count: int) -> tuple[str, ...]:
    return BLOCK_NAMES[-count:] if count else ()


def cut_before(blocks: tuple[str, ...]) -> str:
    """The last frozen block: where cached features stop when `blocks` are trainable."""
    if not blocks:
        return LAST_BLOCK
    return BLOCK_NAMES[BLOCK_NAMES.index(blocks[0]) - 1]


def earliest_cut(cuts) -> str:
    """Images go through the network once, to this cut; later cuts are derived from it."""
    return min(cuts, key=BLOCK_NAMES.index)


def conv_names(blocks=VGG16_BLOCKS) -> list[str]:
    return [f"{block}.conv{i + 1}" for block, widths in blocks.items() for i in range(len(widths))]


class Backbone(nn.Module):
    """block1..block5, each convs + ReLUs + a 2x2 max-pool; runs any contiguous range of blocks."""

    def __init__(self, blocks: dict[str, tuple[int, ...]] = VGG16_BLOCKS):
        super().__init__()
        if tuple(blocks) != BLOCK_NAMES:
            raise ValueError(f"blocks {list(blocks)}; allowed: {list(BLOCK_NAMES)}")
        self.widths = {name: tuple(widths) for name, widths in blocks.items()}
        in_channels = 3
        for name, widths in self.widths.items():
            layers = OrderedDict()
            for i, out_channels in enumerate(widths):
                layers[f"conv{i + 1}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
                layers[f"relu{i + 1}"] = nn.ReLU(inplace=True)
                in_channels = out_channels
            layers["pool"] = nn.MaxPool2d(2, 2)
            self.add_module(name, nn.Sequential(layers))

    def run(self, x: torch.Tensor, after: str | None = None, upto: str = LAST_BLOCK) -> torch.Tensor:
        for name in block_names(after, upto):
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def output_channels(self, block: str = LAST_BLOCK) -> int:
        return self.widths[block][-1]


@dataclass(frozen=True)
class HeadSpec:
    kind: str             # "flatten" (the reference) or "gap"
    n_classes: int
    hidden: int = 256
    dropout: float = 0.0

    @property
    def n_outputs(self) -> int:
        """One sigmoid unit for two classes, one softmax unit a class otherwise."""
        return 1 if self.n_classes == 2 else self.n_classes

    def to_dict(self) -> dict:
        return asdict(self)


def build_head(spec: HeadSpec, channels: int, grid: int) -> nn.Module:
    if spec.kind == "flatten":
        return nn.Sequential(OrderedDict(
            flatten=nn.Flatten(), dense=nn.Linear(channels * grid * grid, spec.hidden), relu=nn.ReLU(),
            dropout=nn.Dropout(spec.dropout), out=nn.Linear(spec.hidden, spec.n_outputs)))
    if spec.kind == "gap":
        return nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), dropout=nn.Dropout(spec.dropout),
            out=nn.Linear(channels, spec.n_outputs)))
    raise ValueError(f"head kind {spec.kind!r}; allowed: flatten, gap")


class Classifier(nn.Module):
    """Backbone + head; `from_features` continues from a cached cut point.

    How logits become probabilities is part of the model (model.json holds both): `temperature`
    divides the logits (1: as trained; fitted on validation data by --calibrate), and with `tta`
    an image's probabilities are the mean of its own and its mirror image's."""

    def __init__(self, head: HeadSpec, size: int = 224, blocks=VGG16_BLOCKS):
        super().__init__()
        self.backbone = Backbone(blocks)
        self.head_spec = head
        self.size = size
        self.temperature, self.tta = 1.0, False
        grid = size // 2 ** len(blocks)
        self.head = build_head(head, self.backbone.output_channels(), grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images, LAST_BLOCK))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities: the sigmoid unit gives P(second class) for two classes."""
        logits = logits / self.temperature
        if self.head_spec.n_outputs == 1:
            p = torch.sigmoid(logits[:, 0])
            return torch.stack([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities of normalised images (N, 3, H, W): with `tta`, averaged with their mirror images."""
        views = (images, images.flip(-1)) if self.tta else (images,)
        return torch.stack([self.probabilities(self(view).float()) for view in views]).mean(0)

    def from_features(self, features: torch.Tensor, cut: str) -> torch.Tensor:
        return self.head(self.backbone.run(features, after=cut))

    def features(self, images: torch.Tensor, cut: str) -> torch.Tensor:
        int8 = self.int8_frozen
        if int8 is None:
            return self.backbone.run(images, upto=cut)
        if BLOCK_NAMES.index(cut) < BLOCK_NAMES.index(int8.upto):
            raise ValueError(f"features at {cut}, inside the int8 blocks (up to {int8.upto})")
        return self.backbone.run(int8(images), after=int8.upto, upto=cut)

    @property
    def int8_frozen(self) -> nn.Module | None:
        return self.__dict__.get("_int8_frozen")

    def use_int8_frozen(self, frozen: nn.Module | None) -> None:
        """Run the first blocks through `frozen` (quantize.Int8Frozen). Kept out of the module tree
        on purpose: state_dict and model.safetensors hold the float weights it is rebuilt from."""
        self.__dict__["_int8_frozen"] = frozen


def set_trainable(model: Classifier, blocks: tuple[str, ...] | list[str]) -> None:
    """The head and the named blocks learn; every other block is frozen (and in eval mode)."""
    unknown = set(blocks) - set(BLOCK_NAMES)
    if unknown:
        raise ValueError(f"unknown blocks {sorted(unknown)}; allowed: {list(BLOCK_NAMES)}")
    for name in BLOCK_NAMES:
        for parameter in getattr(model.backbone, name).parameters():
            parameter.requires_grad_(name in blocks)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)


def blocks_from_state_dict(state_dict: dict) -> dict[str, tuple[int, ...]]:
    """The block layout the weights describe (VGG16's, or a tiny one in tests)."""
    blocks: dict[str, list[int]] = {}
    for name in BLOCK_NAMES:
        i = 1
        while f"{name}.conv{i}.weight" in state_dict:
            blocks.setdefault(name, []).append(int(state_dict[f"{name}.conv{i}.weight"].shape[0]))
            i += 1
    return {name: tuple(widths) for name, widths in blocks.items()}
