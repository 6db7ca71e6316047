"""Architectures as values: one `Arch` record per backbone, in the spirit of timm's `feature_info`.

A record holds every fact the rest of vggtune needs about a backbone: its blocks in order with
their convolution widths, whether each convolution has a batch norm, how far each block reduces
the image, where the frozen part can be cut, which layer Grad-CAM reads, and how torchvision
numbers its layers (so its state dicts convert to our names). Nothing else names a block.

`ARCHS` is the registry; `model.json`'s `arch` picks one. A layout with other widths (a tiny
random-init one in tests) is the same record `with_widths` those widths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vggtune.errors import choice_error


@dataclass(frozen=True)
class Arch:
    name: str
    blocks: tuple[tuple[str, tuple[int, ...]], ...]  # (block name, conv widths) in order
    batch_norm: bool = False  # conv -> BatchNorm -> ReLU in every block

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.blocks)

    @property
    def widths(self) -> dict[str, tuple[int, ...]]:
        return dict(self.blocks)

    @property
    def last_block(self) -> str:
        return self.block_names[-1]

    def with_widths(self, widths: dict[str, tuple[int, ...]]) -> Arch:
        """The same architecture with other conv widths (the same block names in the same order)."""
        if tuple(widths) != self.block_names:
            raise ValueError(f"blocks {list(widths)}; allowed: {list(self.block_names)} for {self.name}")
        return dataclasses.replace(self, blocks=tuple((name, tuple(w)) for name, w in widths.items()))

    def check_block(self, name: str) -> str:
        if name not in self.block_names:
            raise choice_error("block", name, self.block_names)
        return name

    def between(self, after: str | None = None, upto: str | None = None) -> tuple[str, ...]:
        """Blocks strictly after `after` (None: from the image) up to and including `upto` (None: the last)."""
        names = self.block_names
        start = 0 if after is None else names.index(self.check_block(after)) + 1
        return names[start : names.index(self.check_block(upto or self.last_block)) + 1]

    def last(self, count: int) -> tuple[str, ...]:
        """The last `count` blocks: those fine-tuning trains."""
        if not 0 <= count < len(self.blocks):
            raise choice_error("--finetune-blocks", count, range(len(self.blocks)))
        return self.block_names[len(self.blocks) - count :]

    def cut_before(self, trainable: tuple[str, ...]) -> str:
        """The last frozen block: where cached features stop when `trainable` blocks learn."""
        if not trainable:
            return self.last_block
        return self.block_names[self.block_names.index(self.check_block(trainable[0])) - 1]

    def earliest(self, cuts) -> str:
        """Images go through the network once, to this cut; later cuts are derived from it."""
        return min(cuts, key=self.block_names.index)

    def reduction(self, block: str) -> int:
        """How many times smaller than the image the output of `block` is (each block halves it)."""
        return 2 ** (self.block_names.index(self.check_block(block)) + 1)

    def channels(self, block: str) -> int:
        return self.widths[self.check_block(block)][-1]

    def layer_names(self, block: str) -> list[str]:
        """The layers of one block in order, as the backbone names them (conv1, bn1, relu1, ..., pool)."""
        layers = []
        for i in range(len(self.widths[block])):
            layers += [f"conv{i + 1}"] + ([f"bn{i + 1}"] if self.batch_norm else []) + [f"relu{i + 1}"]
        return layers + ["pool"]

    def fusion_groups(self, block: str) -> list[list[str]]:
        """The layers int8 fuses into one quantized convolution: conv (+ bn) + relu."""
        layers = self.layer_names(block)[:-1]
        step = 3 if self.batch_norm else 2
        return [layers[i : i + step] for i in range(0, len(layers), step)]

    def conv_names(self) -> list[str]:
        return [f"{block}.conv{i + 1}" for block, widths in self.blocks for i in range(len(widths))]

    @property
    def gradcam_layer(self) -> tuple[str, str]:
        """(block, layer) where Grad-CAM takes its map: the last block's last convolution, after its ReLU."""
        return self.last_block, f"relu{len(self.widths[self.last_block])}"

    def torchvision_names(self) -> dict[str, str]:
        """Our layer names -> torchvision's `features.N` for the same layer (its nn.Sequential index)."""
        names, index = {}, 0
        for block in self.block_names:
            for layer in self.layer_names(block):
                if layer.startswith(("conv", "bn")):  # the layers with tensors; ReLUs and pools count places
                    names[f"{block}.{layer}"] = f"features.{index}"
                index += 1
        return names

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the backbone's state dict holds, with its shape."""
        shapes: dict[str, tuple[int, ...]] = {}
        in_channels = 3
        for block, widths in self.blocks:
            for i, out in enumerate(widths):
                shapes[f"{block}.conv{i + 1}.weight"] = (out, in_channels, 3, 3)
                shapes[f"{block}.conv{i + 1}.bias"] = (out,)
                if self.batch_norm:
                    for part in ("weight", "bias", "running_mean", "running_var"):
                        shapes[f"{block}.bn{i + 1}.{part}"] = (out,)
                    shapes[f"{block}.bn{i + 1}.num_batches_tracked"] = ()
                in_channels = out
        return shapes


def _vgg(name: str, convs: tuple[int, ...], batch_norm: bool = False) -> Arch:
    """torchvision's `_vgg` configurations: convs per block, widths 64, 128, 256, 512, 512."""
    widths = (64, 128, 256, 512, 512)
    return Arch(
        name,
        tuple((f"block{i + 1}", (width,) * count) for i, (width, count) in enumerate(zip(widths, convs))),
        batch_norm,
    )


VGG16 = _vgg("vgg16", (2, 2, 3, 3, 3))
VGG19 = _vgg("vgg19", (2, 2, 4, 4, 4))
VGG16_BN = _vgg("vgg16_bn", (2, 2, 3, 3, 3), batch_norm=True)
ARCHS = {arch.name: arch for arch in (VGG16, VGG19, VGG16_BN)}


def get(name: str) -> Arch:
    if name not in ARCHS:
        raise choice_error("--arch", name, ARCHS)
    return ARCHS[name]


def from_state_dict(arch: Arch, state_dict: dict) -> Arch:
    """`arch` with the conv widths the weights describe (the real ones, or a tiny layout in tests)."""
    widths = {}
    for block, convs in arch.blocks:
        widths[block] = tuple(
            int(state_dict[f"{block}.conv{i + 1}.weight"].shape[0])
            for i in range(len(convs))
            if f"{block}.conv{i + 1}.weight" in state_dict
        )
    return arch.with_widths(widths)
