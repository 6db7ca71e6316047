"""The frozen blocks in int8: post-training static quantization, calibrated on the run's own images.

Frozen blocks only ever run forward, so their convolutions can use the CPU's int8 units
(AMX or VNNI: two to three times bf16's throughput here). Weights are quantized per output
channel from the float weights, which makes them a function of the weights alone; the
activations' scales come from a calibration pass over a few clean training views and are
saved with the run (`model.json`), so prediction rebuilds exactly the network that filled
the cache. The blocks that train stay in bf16 or fp32.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

try:
    import torch.ao.quantization as tq
except ImportError:  # torch deprecates it (its warning says for removal); check_available() reports it
    tq = None  # type: ignore[assignment]

from vggtune.errors import UserError
from vggtune.model.classifier import Backbone, Classifier

ENGINE = "onednn"
CALIBRATION_IMAGES = 16


def check_available() -> None:
    """Eager int8 needs torch's quantized tensors and the oneDNN engine (both in torch 2.14)."""
    engines = torch.backends.quantized.supported_engines
    if tq is None or ENGINE not in engines or not hasattr(torch, "quantize_per_channel"):
        raise UserError(
            f"--precision int8: this torch ({torch.__version__}, quantized engines {engines}) "
            f"cannot run eager int8 with {ENGINE!r}; allowed: auto, bf16, fp32"
        )


class Int8Frozen(nn.Module):
    """Blocks from the image up to and including `upto`, in int8: float images in, float features out."""

    def __init__(self, backbone: Backbone, upto: str):
        super().__init__()
        self.upto = upto
        self.calibration: dict = {}  # {"upto", "scales": {layer: [scale, zero_point]}}, set by calibration
        layers: OrderedDict[str, nn.Module] = OrderedDict(quant=tq.QuantStub())
        for name in backbone.arch.between(upto=upto):
            block = copy.deepcopy(getattr(backbone, name)).eval()
            layers[name] = tq.fuse_modules(block, backbone.arch.fusion_groups(name))
        layers["dequant"] = tq.DeQuantStub()
        self.net = nn.Sequential(layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float())


@contextlib.contextmanager
def _without_deprecation_warnings():
    """torch deprecates eager quantization and says so on every use; the warnings would reach every
    user of --precision int8. check_available() says so in one line if it goes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        yield


def _convert(prepared: Int8Frozen) -> Int8Frozen:
    with _without_deprecation_warnings():
        return tq.convert(prepared)


class _MemoryOrderMinMax(tq.MinMaxObserver if tq else object):  # type: ignore[misc]
    """MinMaxObserver reading activations in memory order: its own forward copies a channels-last
    bf16 activation twice (to float32, then to contiguous), which took 3/4 of calibration's time."""

    def forward(self, x_orig):
        x = x_orig.detach()
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            x = x.permute(0, 2, 3, 1)  # the same elements, now contiguous
        if x.numel():
            low, high = torch.aminmax(x.reshape(-1))
            self.min_val.copy_(torch.min(low.float(), self.min_val))
            self.max_val.copy_(torch.max(high.float(), self.max_val))
        return x_orig


def _prepared(backbone: Backbone, upto: str) -> Int8Frozen:
    torch.backends.quantized.engine = ENGINE
    frozen = Int8Frozen(backbone, upto).eval().to(memory_format=torch.channels_last)
    # nn.Module types its attributes as tensors or modules; a qconfig is neither, and quantization reads it here
    frozen.qconfig = tq.QConfig(
        activation=_MemoryOrderMinMax.with_args(reduce_range=False),  # type: ignore[assignment]
        weight=tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    with _without_deprecation_warnings():
        return tq.prepare(frozen)


def _activation_layers(frozen: Int8Frozen) -> dict[str, Any]:  # quantized layers: scale, zero_point
    """The quantizing input and every convolution: the layers whose output scale calibration sets."""
    return {
        name: module
        for name, module in frozen.net.named_modules()
        if hasattr(module, "scale") and hasattr(module, "zero_point")
    }


def calibrate(backbone: Backbone, upto: str, images: torch.Tensor, autocast) -> Int8Frozen:
    """The int8 blocks, their activation scales (`.calibration`) set from normalised clean views."""
    prepared = _prepared(backbone, upto)
    with torch.inference_mode(), autocast():
        prepared(images.contiguous(memory_format=torch.channels_last))
    frozen = _convert(prepared)
    scales = {
        name: [float(module.scale), int(module.zero_point)] for name, module in _activation_layers(frozen).items()
    }
    frozen.calibration = {"upto": upto, "scales": scales}
    return frozen


def rebuild(backbone: Backbone, calibration: dict) -> Int8Frozen:
    """The int8 blocks a run used, from the float weights and its saved activation scales."""
    prepared = _prepared(backbone, calibration["upto"])
    with torch.inference_mode():  # observers need one pass before convert; its scales are replaced
        prepared(torch.zeros(1, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    frozen = _convert(prepared)
    layers = _activation_layers(frozen)
    if set(layers) != set(calibration["scales"]):
        raise ValueError(f"int8 calibration names {sorted(calibration['scales'])}; the blocks have {sorted(layers)}")
    for name, (scale, zero_point) in calibration["scales"].items():
        module = layers[name]
        if isinstance(module.scale, torch.Tensor):
            module.scale.fill_(scale)
            module.zero_point.fill_(zero_point)
        else:
            module.scale, module.zero_point = float(scale), int(zero_point)
    frozen.calibration = calibration
    return frozen


def calibrate_model(model: Classifier, upto: str, images: torch.Tensor, autocast) -> dict:
    """Runs `model`'s blocks up to `upto` in int8 from now on, calibrated on `images` (normalised
    clean views); returns the calibration to save with the run."""
    if not len(images):
        raise UserError(
            "--precision int8: no readable training image to calibrate on; "
            "allowed: int8 with a training split, or bf16/fp32"
        )
    frozen = calibrate(model.backbone, upto, images, autocast)
    model.use_int8_frozen(frozen)
    return frozen.calibration


def attach(model: Classifier, calibration: dict) -> None:
    """Runs `model`'s frozen blocks through the int8 network a saved calibration describes."""
    model.use_int8_frozen(rebuild(model.backbone, calibration))


def probe(model: Classifier, upto: str, images: torch.Tensor, autocast) -> Classifier:
    """A model of the same layout with int8 blocks up to `upto`, calibrated on `images`: what the engines'
    measurement times, since a run's own calibration comes after its engine is chosen and the speed of
    int8 blocks does not depend on their values."""
    copy_of_layout = Classifier(model.head_spec, model.size, model.arch).eval().to(memory_format=torch.channels_last)
    calibrate_model(copy_of_layout, upto, images, autocast)
    return copy_of_layout
