"""Engines for the frozen network: the blocks that never train, run forward by the fastest runtime
the machine has.

A frozen range of blocks (from the image, or from a cut, up to a cut) is all an engine runs: a
batch of normalised views or features in (N, C, H, W), float32 features out. `torch` is PyTorch
itself (CUDA, the CPU, int8 frozen blocks); `openvino` and `onnxruntime` are inference runtimes
whose CPU kernels run the same convolutions faster (BENCHMARKS.md section 17). Each is built from
the weights already in memory, compiled once per process for a range and reused while those
weights stay unchanged, with the batch and image sizes left free. OpenVINO also runs a run's int8
blocks: it converts the very network quantize.py calibrated (its weights and activation scales),
so the two engines compute the same int8 features up to rounding and a run's cache, head and
saved calibration serve either.

Which engine a name means (`--engine auto` from a measurement kept per machine) is choice.py's.
Gradients (training, Grad-CAM) always run in PyTorch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from vggtune import interrupts, openvinoload
from vggtune.errors import choice_error
from vggtune.features.settings import ENGINES

if TYPE_CHECKING:  # annotations only
    from vggtune.model.classifier import Classifier
    from vggtune.model.runtime import Runtime


@dataclass(frozen=True)
class Engine:
    """An engine and the precision its convolutions run in (fp32, bf16, int8)."""

    name: str
    precision: str

    def describe(self) -> str:
        return f"{self.name} {self.precision}"

    def to_dict(self) -> dict:
        return {"name": self.name, "precision": self.precision}

    def blocks(self, model: Classifier, runtime: Runtime, after: str | None = None, upto: str | None = None):
        """`frozen` on this engine: the blocks (after, upto] of `model`, compiled once."""
        return frozen(model, runtime, self, after, upto)


def installed(name: str) -> bool:
    package = KINDS[name].package if name in KINDS else None
    return package is None or importlib.util.find_spec(package) is not None


def check(name: str) -> str:
    if name not in ENGINES:
        raise choice_error("--engine", name, ENGINES)
    return name


# ---- the frozen range, compiled ------------------------------------------------------------------


class _Range(nn.Module):
    """Blocks (after, upto] of a model as one module: what an inference runtime converts. From the image
    it is what the model's features are, through its int8 blocks where it has them."""

    def __init__(self, model: Classifier, after: str | None, upto: str):
        super().__init__()
        self.backbone = model.backbone
        self.after: str | None = after
        self.upto: str = upto
        self.int8 = model.int8_frozen if after is None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8 is not None:
            x = self.int8(x)
            return x if self.int8.upto == self.upto else self.backbone.run(x, after=self.int8.upto, upto=self.upto)
        return self.backbone.run(x, after=self.after, upto=self.upto)


class FrozenBlocks(Protocol):
    """What an engine builds for a range of frozen blocks: normalised (N, C, H, W) inputs in, float32
    features out (on the CPU; on the runtime's device for torch)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class TorchFrozen:
    """PyTorch's own kernels: today's path, autocast and the int8 frozen blocks included."""

    def __init__(self, model: Classifier, runtime: Runtime, after: str | None, upto: str, precision: str):
        self.model, self.runtime, self.after, self.upto = model, runtime, after, upto

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # no_grad, not inference_mode: live features feed a stage that trains, and autograd refuses inference tensors.
        x = self.runtime.to_input(x)
        with torch.no_grad(), self.runtime.autocast():
            if self.after is None:
                return self.model.features(x, self.upto).float()
            return self.model.backbone.run(x, after=self.after, upto=self.upto).float()


class OpenVinoFrozen:
    """OpenVINO's CPU plugin: bf16 where asked (its AMX or AVX512-BF16 kernels), f32 otherwise; int8 blocks
    as quantize.py calibrated them (OpenVINO runs their quantize-dequantize pairs as u8/i8 convolutions),
    the float blocks after them as the runtime's float precision says. One stream on every core the
    process may use, so a batch's latency is what it optimises."""

    def __init__(self, model: Classifier, runtime: Runtime, after: str | None, upto: str, precision: str):
        openvino = openvinoload.openvino()
        module, example = _module_and_example(model, after, upto)
        with _quiet(), _evaluating(module):
            converted = openvino.convert_model(
                module, example_input=example, input=[openvino.PartialShape([-1, example.shape[1], -1, -1])]
            )
        floats = "bf16" if precision == "bf16" or (precision == "int8" and runtime.bf16) else "f32"
        config = {"INFERENCE_PRECISION_HINT": floats, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads()}
        self.request = openvino.Core().compile_model(converted, "CPU", config).create_infer_request()
        self.lock = threading.Lock()  # one infer request: a server's threads take turns

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            out = self.request.infer({0: x.float().contiguous().numpy()})[0]
        return torch.from_numpy(out.copy())


class OnnxRuntimeFrozen:
    """ONNX Runtime's CPU execution provider, fp32; the graph exported in memory, never written."""

    def __init__(self, model: Classifier, runtime: Runtime, after: str | None, upto: str, precision: str):
        import onnxruntime

        module, example = _module_and_example(model, after, upto)
        buffer = io.BytesIO()
        with _quiet(), _evaluating(module):
            # torch's annotation names paths only; the exporter writes any binary file object
            torch.onnx.export(
                module,
                (example,),
                buffer,  # type: ignore[arg-type]
                dynamo=False,
                input_names=["x"],
                output_names=["features"],
                dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}},
            )
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads()
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.float().contiguous().numpy()})[0])


def _module_and_example(model: Classifier, after: str | None, upto: str) -> tuple[nn.Module, torch.Tensor]:
    """The range as a module, and an input of its shape (64 px at the image)."""
    module = _Range(model, after, upto)
    channels = 3 if after is None else model.arch.channels(after)
    side = 64 if after is None else max(2, 64 // model.arch.reduction(after))
    return module, torch.zeros(1, channels, side, side)


def threads() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _evaluating(module: nn.Module):
    """The module in eval mode while it is converted (batch norms with their running statistics), then
    each of its layers back in the mode it was: the blocks after the cut may be training."""
    modes = {layer: layer.training for layer in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for layer, training in modes.items():
            layer.training = training


@contextlib.contextmanager
def _quiet():
    """The converters warn about tracing on every build; the results are checked by the golden tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# Compiled ranges, per model: a runtime holds a copy of the weights, so a range is compiled again
# when any of its parameters changed in place since (each tensor's version counter says so).
_COMPILED: weakref.WeakKeyDictionary[Classifier, dict] = weakref.WeakKeyDictionary()


def frozen(model: Classifier, runtime: Runtime, engine: Engine, after: str | None = None, upto: str | None = None):
    """The blocks (after, upto] of `model` on `engine`: a callable from (N, C, H, W) float inputs to
    float32 features on the CPU (on the runtime's device for torch)."""
    upto = upto or model.arch.last_block
    if engine.name == "torch":  # nothing to compile: PyTorch runs the module itself
        return TorchFrozen(model, runtime, after, upto, engine.precision)
    blocks = model.arch.between(after, upto)
    versions = tuple(p._version for name in blocks for p in getattr(model.backbone, name).parameters())
    if after is None and model.int8_frozen is not None:  # a new calibration is a new network
        versions += (json.dumps(model.int8_frozen.calibration, sort_keys=True),)
    key = (engine, after, upto)
    compiled = _COMPILED.setdefault(model, {})
    if key not in compiled or compiled[key][0] != versions:
        with interrupts.held():  # a converter's callbacks cannot pass a KeyboardInterrupt on: SIGABRT
            compiled[key] = (versions, KINDS[engine.name].build(model, runtime, after, upto, engine.precision))
    return compiled[key][1]


@dataclass(frozen=True)
class EngineKind:
    """One engine: the package its runtime comes in (None: PyTorch itself) and what builds a range of
    blocks on it, called as (model, runtime, after, upto, precision)."""

    name: str
    package: str | None
    build: Callable[[Classifier, Runtime, str | None, str, str], FrozenBlocks]


# The registry: one line an engine, named as settings.ENGINES names them (after "auto").
KINDS = {
    kind.name: kind
    for kind in (
        EngineKind("torch", None, TorchFrozen),
        EngineKind("openvino", "openvino", OpenVinoFrozen),
        EngineKind("onnxruntime", "onnxruntime", OnnxRuntimeFrozen),
    )
}
