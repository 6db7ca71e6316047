"""Which engine runs the frozen blocks: what `--engine NAME` means for a model on a runtime (`resolve`),
and `auto` decided from evidence: a short measurement of each installed engine on the backbone's first
four blocks, made once per machine and kept in `$VGGTUNE_HOME/engines.json` (`choose`).

Under torchrun the ranks choose together, once, where a run starts: rank 0 measures and every rank
takes its answer. What then runs on one rank alone (the report) is handed the chosen `Engine`, so that
no collective waits there for ranks that never come (issue #38).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import time
from typing import TYPE_CHECKING

import torch

from vggtune import distributed
from vggtune.errors import UserError
from vggtune.features.engine import ENGINES, KINDS, Engine, check, frozen, installed, threads
from vggtune.fsutil import atomic_write_json
from vggtune.model import quantize, weights
from vggtune.model.runtime import cpuinfo_fields
from vggtune.progress import say

if TYPE_CHECKING:  # annotations only
    from vggtune.model.classifier import Classifier
    from vggtune.model.runtime import Runtime

ENGINE_VARIABLE = "VGGTUNE_ENGINE"  # what `auto` means, where a user (or the test suite) pins it


def resolve(name: str | Engine, runtime: Runtime, model: Classifier) -> Engine:
    """The engine `--engine name` means for `model` on this runtime. PyTorch keeps CUDA; ONNX Runtime's CPU
    convolutions are fp32 only, so it runs fp32 where bf16 was asked for, and int8 blocks are PyTorch's
    or OpenVINO's. An Engine already chosen (by the ranks together, before one of them went on alone)
    is kept as it is."""
    if isinstance(name, Engine):
        return name
    check(name)
    torch_engine = Engine("torch", runtime.precision)
    if name == "torch":
        return torch_engine
    if runtime.device.type != "cpu":
        if name != "auto":
            raise UserError(
                f"--engine: received {name!r} on {runtime.describe()}; allowed: auto or torch "
                "(the inference runtimes run the frozen blocks on the CPU)"
            )
        return torch_engine
    if runtime.int8 and name == "onnxruntime":
        raise UserError(
            f"--engine: received 'onnxruntime' on {runtime.describe()}; allowed: auto, torch, openvino "
            "(int8 blocks run on PyTorch or OpenVINO)"
        )
    if name == "auto" and os.environ.get(ENGINE_VARIABLE, "auto") != "auto":
        return resolve(_pinned(), runtime, model)
    if name == "auto":
        return choose(runtime, model)
    if not installed(name):
        raise UserError(
            f"--engine: received {name!r} but the package {KINDS[name].package!r} is not installed; "
            f"allowed: auto, torch, or `pip install {KINDS[name].package}`"
        )
    return Engine(name, "fp32" if name == "onnxruntime" else runtime.precision)


def _pinned() -> str:
    name = os.environ[ENGINE_VARIABLE]
    if name not in ENGINES:
        raise UserError(f"{ENGINE_VARIABLE}: received {name!r}; allowed: {', '.join(ENGINES)}")
    return name


def candidates(runtime: Runtime, model: Classifier) -> list[Engine]:
    """The engines `auto` compares on a CPU: each installed one at the precision it would run."""
    return [
        resolve(name, runtime, model)
        for name in ENGINES[1:]
        if installed(name) and not (runtime.int8 and name == "onnxruntime")
    ]


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
    versions = {"torch": str(torch.__version__)}
    for package in (kind.package for kind in KINDS.values() if kind.package):
        if importlib.util.find_spec(package) is not None:
            versions[package] = importlib.metadata.version(package)
    layout = [model.arch.batch_norm, *model.arch.blocks]
    described = json.dumps([fields.get("model name"), fields.get("flags"), threads(), versions, precision, layout])
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def measure(runtime: Runtime, model: Classifier) -> dict:
    """Images per second of each candidate on the model's blocks up to block4 (the range extraction runs;
    compiled here once, then reused), best of three batches of 224 px views after a warm-up;
    {"best": engine, "images_per_s": {...}}."""
    x = torch.randn(MEASURE_BATCH, 3, MEASURE_SIDE, MEASURE_SIDE)
    cut = model.arch.block_names[min(MEASURE_BLOCKS, len(model.arch.blocks)) - 1]
    if runtime.int8:
        model = quantize.probe(model, cut, x, runtime.autocast)
    rates, best = {}, Engine("torch", runtime.precision)
    for engine in candidates(runtime, model):
        try:
            run = frozen(model, runtime, engine, upto=cut)
            run(x)
            seconds = min(_timed(run, x) for _ in range(3))
        except Exception as exc:  # noqa: BLE001 -- a runtime that cannot run here is left out, not fatal
            say(f"engine {engine.describe()}: cannot run here ({type(exc).__name__}: {str(exc)[:120]}); left out")
            continue
        rates[engine.describe()] = round(MEASURE_BATCH / seconds, 2)
        if rates[engine.describe()] > rates.get(best.describe(), 0):
            best = engine
    say(
        f"engines measured on this machine ({model.arch.name} blocks up to {cut}, images/s): {rates}; "
        f"auto uses {best.describe()}"
    )
    return {"best": best.to_dict(), "images_per_s": rates, "processor": cpuinfo_fields().get("model name")}


def _timed(run, x: torch.Tensor) -> float:
    started = time.perf_counter()
    run(x)
    return time.perf_counter() - started


def _write_json(path, values: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, values)
