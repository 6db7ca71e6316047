"""The network: a backbone built from its `Arch` record, a head on it, and freezing by block name.

`Backbone` runs any contiguous range of its named blocks, so the frozen part and the part that
trains are the same modules cut at a block; `Classifier` adds the head and continues from
features cached at a cut (`from_features`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import torch
from torch import nn

from vggtune.model.arch import VGG16, Arch
from vggtune.model.heads import HeadSpec


class FrozenPrefix(Protocol):
    """Blocks from the image up to `upto` run some other way (quantize.py's Int8Frozen: in int8), images
    in, features out; `calibration` names what it was built from (a new one is a new network)."""

    upto: str
    calibration: dict

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class Backbone(nn.Module):
    """The architecture's blocks, each convs (+ batch norms) + ReLUs + a 2x2 max-pool."""

    def __init__(self, arch: Arch = VGG16):
        super().__init__()
        self.arch = arch
        in_channels = 3
        for name, widths in arch.blocks:
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for i, out_channels in enumerate(widths):
                layers[f"conv{i + 1}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
                if arch.batch_norm:
                    layers[f"bn{i + 1}"] = nn.BatchNorm2d(out_channels)
                layers[f"relu{i + 1}"] = nn.ReLU(inplace=True)
                in_channels = out_channels
            layers["pool"] = nn.MaxPool2d(2, 2)
            self.add_module(name, nn.Sequential(layers))

    def run(self, x: torch.Tensor, after: str | None = None, upto: str | None = None) -> torch.Tensor:
        for name in self.arch.between(after, upto):
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


class Classifier(nn.Module):
    """Backbone + head; `from_features` continues from a cached cut point. How its logits become
    probabilities is the `ScoringPolicy` of its ModelSpec, not part of the module."""

    def __init__(self, head: HeadSpec, size: int = 224, arch: Arch = VGG16):
        super().__init__()
        self.arch = arch
        self.backbone = Backbone(arch)
        self.head_spec = head
        self.size = size
        last = arch.last_block
        self.head = head.build(arch.channels(last), size // arch.reduction(last))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images, self.arch.last_block))

    def from_features(self, features: torch.Tensor, cut: str) -> torch.Tensor:
        return self.head(self.backbone.run(features, after=cut))

    def features(self, images: torch.Tensor, cut: str) -> torch.Tensor:
        int8 = self.int8_frozen
        if int8 is None:
            return self.backbone.run(images, upto=cut)
        names = self.arch.block_names
        if names.index(cut) < names.index(int8.upto):
            raise ValueError(f"features at {cut}, inside the int8 blocks (up to {int8.upto})")
        return self.backbone.run(int8(images), after=int8.upto, upto=cut)

    def set_trainable(self, blocks: tuple[str, ...] | list[str]) -> None:
        """The head and the named blocks learn; every other block is frozen."""
        for name in blocks:
            self.arch.check_block(name)
        for name in self.arch.block_names:
            for parameter in getattr(self.backbone, name).parameters():
                parameter.requires_grad_(name in blocks)
        for parameter in self.head.parameters():
            parameter.requires_grad_(True)

    @property
    def int8_frozen(self) -> FrozenPrefix | None:
        return self.__dict__.get("_int8_frozen")

    def use_int8_frozen(self, frozen: FrozenPrefix | None) -> None:
        """Run the first blocks through `frozen` (quantize.Int8Frozen). Kept out of the module tree
        on purpose: state_dict and model.safetensors hold the float weights it is rebuilt from."""
        self.__dict__["_int8_frozen"] = frozen
