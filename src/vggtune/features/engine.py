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

`choose` resolves `--engine auto` from evidence: a short measurement of each installed engine on
VGG16's first four blocks, made once per machine and kept in `$VGGTUNE_HOME/engines.json`.
Gradients (training, Grad-CAM) always run in PyTorch.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import importlib.metadata
import io
import json
import os
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from vggtune import distributed
from vggtune.errors import UserError, choice_error
from vggtune.features.settings import ENGINES
from vggtune.fsutil import atomic_write_json
from vggtune.model import quantize, weights
from vggtune.model.runtime import Runtime, cpuinfo_fields
from vggtune.progress import say

if TYPE_CHECKING:                      # annotations only
    from vggtune.model.classifier import Classifier

ENGINE_VARIABLE = "VGGTUNE_ENGINE"      # what `auto` means, where a user (or the test suite) pins it
RUNTIMES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}      # engine -> the package it needs


@dataclass(frozen=True)
class Engine:
    """An engine and the precision its convolutions run in (fp32, bf16, int8)."""
    name: str
    precision: str

    def describe(self) -> str:
        return f"{self.name} {self.precision}"

    def to_dict(self) -> dict:
        return {"name": self.name, "precision": self.precision}


def installed(name: str) -> bool:
    package = RUNTIMES.get(name)
    return package is None or importlib.util.find_spec(package) is not None


def check(name: str) -> str:
    if name not in ENGINES:
        raise choice_error("--engine", name, ENGINES)
    return name


def resolve(name: str, runtime: Runtime, model: Classifier) -> Engine:
    """The engine `--engine name` means for `model` on this runtime. PyTorch keeps CUDA; ONNX Runtime's CPU
    convolutions are fp32 only, so it runs fp32 where bf16 was asked for, and int8 blocks are PyTorch's
    or OpenVINO's."""
    check(name)
    torch_engine = Engine("torch", runtime.precision)
    if name == "torch":
        return torch_engine
    if runtime.device.type != "cpu":
        if name != "auto":
            raise UserError(f"--engine: received {name!r} on {runtime.describe()}; allowed: auto or torch "
                            "(the inference runtimes run the frozen blocks on the CPU)")
        return torch_engine
    if runtime.int8 and name == "onnxruntime":
        raise UserError(f"--engine: received 'onnxruntime' on {runtime.describe()}; allowed: auto, torch, openvino "
                        "(int8 blocks run on PyTorch or OpenVINO)")
    if name == "auto" and os.environ.get(ENGINE_VARIABLE, "auto") != "auto":
        return resolve(_pinned(), runtime, model)
    if name == "auto":
        return choose(runtime, model)
    if not installed(name):
        raise UserError(f"--engine: received {name!r} but the package {RUNTIMES[name]!r} is not installed; "
                        f"allowed: auto, torch, or `pip install {RUNTIMES[name]}`")
    return Engine(name, "fp32" if name == "onnxruntime" else runtime.precision)


def _pinned() -> str:
    name = os.environ[ENGINE_VARIABLE]
    if name not in ENGINES:
        raise UserError(f"{ENGINE_VARIABLE}: received {name!r}; allowed: {', '.join(ENGINES)}")
    return name


def candidates(runtime: Runtime, model: Classifier) -> list[Engine]:
    """The engines `auto` compares on a CPU: each installed one at the precision it would run."""
    return [resolve(name, runtime, model) for name in ENGINES[1:]
            if installed(name) and not (runtime.int8 and name == "onnxruntime")]


# ---- the frozen range, compiled ------------------------------------------------------------------

class _Range(nn.Module):
    """Blocks (after, upto] of a model as one module: what an inference runtime converts. From the image
    it is what the model's features are, through its int8 blocks where it has them."""

    def __init__(self, model: Classifier, after: str | None, upto: str):
        super().__init__()
        self.backbone, self.after, self.upto = model.backbone, after, upto
        self.int8 = model.int8_frozen if after is None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8 is not None:
            x = self.int8(x)
            return x if self.int8.upto == self.upto else self.backbone.run(x, after=self.int8.upto, upto=self.upto)
        return self.backbone.run(x, after=self.after, upto=self.upto)


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
        import openvino
        module, example = _module_and_example(model, after, upto)
        with _quiet(), _evaluating(module):
            converted = openvino.convert_model(module, example_input=example,
                                               input=[openvino.PartialShape([-1, example.shape[1], -1, -1])])
        floats = "bf16" if precision == "bf16" or (precision == "int8" and runtime.bf16) else "f32"
        config = {"INFERENCE_PRECISION_HINT": floats,
                  "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": _threads()}
        self.request = openvino.Core().compile_model(converted, "CPU", config).create_infer_request()
        self.lock = threading.Lock()           # one infer request: a server's threads take turns

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
            torch.onnx.export(module, (example,), buffer, dynamo=False, input_names=["x"], output_names=["features"],
                              dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}})
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = _threads()
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.float().contiguous().numpy()})[0])


def _module_and_example(model: Classifier, after: str | None, upto: str) -> tuple[nn.Module, torch.Tensor]:
    """The range as a module, and an input of its shape (64 px at the image)."""
    module = _Range(model, after, upto)
    channels = 3 if after is None else model.arch.channels(after)
    side = 64 if after is None else max(2, 64 // model.arch.reduction(after))
    return module, torch.zeros(1, channels, side, side)


def _threads() -> int:
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
_COMPILED: "weakref.WeakKeyDictionary[Classifier, dict]" = weakref.WeakKeyDictionary()


def frozen(model: Classifier, runtime: Runtime, engine: Engine, after: str | None = None, upto: str | None = None):
    """The blocks (after, upto] of `model` on `engine`: a callable from (N, C, H, W) float inputs to
    float32 features on the CPU (on the runtime's device for torch)."""
    upto = upto or model.arch.last_block
    if engine.name == "torch":                 # nothing to compile: PyTorch runs the module itself
        return TorchFrozen(model, runtime, after, upto, engine.precision)
    blocks = model.arch.between(after, upto)
    versions = tuple(p._version for name in blocks for p in getattr(model.backbone, name).parameters())
    if after is None and model.int8_frozen is not None:       # a new calibration is a new network
        versions += (json.dumps(model.int8_frozen.calibration, sort_keys=True),)
    key = (engine, after, upto)
    compiled = _COMPILED.setdefault(model, {})
    if key not in compiled or compiled[key][0] != versions:
        compiled[key] = (versions, BUILDERS[engine.name](model, runtime, after, upto, engine.precision))
    return compiled[key][1]


# One line per engine: its class, built as (model, runtime, after, upto, precision).
BUILDERS = {"torch": TorchFrozen, "openvino": OpenVinoFrozen, "onnxruntime": OnnxRuntimeFrozen}


# ---- auto: measured once per machine ---------------------------------------------------------------

MEASURE_BATCH, MEASURE_SIDE, MEASURE_BLOCKS = 4, 224, 4


def choose(runtime: Runtime, model: Classifier) -> Engine:
    """The fastest installed engine for this CPU and precision, from `engines.json` in the vggtune home,
    measured first where this machine has no entry yet. A runtime that fails to build or run is left
    out with one line in the log, and PyTorch remains. Under torchrun rank 0 chooses for every rank."""
    if distributed.world().size > 1:
        return Engine(**distributed.from_main(_chosen(runtime, model).to_dict() if distributed.is_main() else None))
    return _chosen(runtime, model)


def _chosen(runtime: Runtime, model: Classifier) -> Engine:
    path = weights.home() / "engines.json"
    key = machine_key(runtime.precision, model)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure(runtime, model)
        _write_json(path, known)
    best = known[key]["best"]
    return Engine(best["name"], best["precision"])


def machine_key(precision: str, model: Classifier) -> str:
    """What decides which engine is fastest: the processor and its flags (a hypervisor can hide AMX from the
    same model), the cores, the packages' versions, the precision, the backbone's layout."""
    fields = cpuinfo_fields()
    versions = {"torch": torch.__version__}
    for package in RUNTIMES.values():
        if importlib.util.find_spec(package) is not None:
            versions[package] = importlib.metadata.version(package)
    layout = [model.arch.batch_norm, *model.arch.blocks]
    described = json.dumps([fields.get("model name"), fields.get("flags"), _threads(), versions, precision, layout])
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def measure(runtime: Runtime, model: Classifier) -> dict:
    """Images per second of each candidate on the model's blocks up to block4 (the range extraction runs;
    compiled here once, then reused), best of three batches of 224 px views after a warm-up;
    {"best": engine, "images_per_s": {...}}."""
    x = torch.randn(MEASURE_BATCH, 3, MEASURE_SIDE, MEASURE_SIDE)
    cut = model.arch.block_names[min(MEASURE_BLOCKS, len(model.arch.blocks)) - 1]
    if runtime.int8:
        model = _int8_probe(model, runtime, cut, x)
    rates, best = {}, Engine("torch", runtime.precision)
    for engine in candidates(runtime, model):
        try:
            run = frozen(model, runtime, engine, upto=cut)
            run(x)
            seconds = min(_timed(run, x) for _ in range(3))
        except Exception as exc:         # noqa: BLE001 -- a runtime that cannot run here is left out, not fatal
            say(f"engine {engine.describe()}: cannot run here ({type(exc).__name__}: {str(exc)[:120]}); left out")
            continue
        rates[engine.describe()] = round(MEASURE_BATCH / seconds, 2)
        if rates[engine.describe()] > rates.get(best.describe(), 0):
            best = engine
    say(f"engines measured on this machine ({model.arch.name} blocks up to {cut}, images/s): {rates}; "
        f"auto uses {best.describe()}")
    return {"best": best.to_dict(), "images_per_s": rates, "processor": cpuinfo_fields().get("model name")}


def _int8_probe(model: Classifier, runtime: Runtime, cut: str, x: torch.Tensor) -> Classifier:
    """A model of the same layout with int8 blocks up to `cut`, calibrated on `x`, to time: a run's own
    calibration comes after its engine is chosen, and speed does not depend on the values."""
    probe = type(model)(model.head_spec, model.size, model.arch).eval().to(memory_format=torch.channels_last)
    quantize.calibrate_model(probe, cut, x, runtime.autocast)
    return probe


def _timed(run, x: torch.Tensor) -> float:
    started = time.perf_counter()
    run(x)
    return time.perf_counter() - started


def _write_json(path, values: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, values)
